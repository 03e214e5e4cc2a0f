//! Model Stock and the weight-soup baselines on named tensors.
//!
//! This crate knows nothing about CLIP, burn or optimizers: it merges float tensors by name.
//! Every method has the per-tensor form `w = t·mean_i(w_i) + (1 − t)·w0`:
//!
//! | method | t |
//! |---|---|
//! | Model Stock (SPEC.md §1) | `N·cos / ((N−1)·cos + 1 + 1e-8)`, cos = mean pairwise cosine of the deltas `w_i − w0` |
//! | uniform soup | 1 (no anchor needed) |
//! | WiSE-FT | α |
//! | task arithmetic | λ·N |
//!
//! plus [`greedy_soup`], which drives a caller-supplied evaluator.
//!
//! Entry points:
//! - files: [`merge_files`] (streams over memory-mapped safetensors and writes the output
//!   atomically, about one tensor window of extra memory), [`analyze_files`] (the report only),
//!   [`wise_ft_files`], [`greedy_soup_files`];
//! - memory: [`merge_tensors`] (e.g. the trainer's per-epoch merge of host copies of the
//!   parameters), [`model_stock_tensor`], [`model_stock_group`];
//! - arithmetic: [`model_stock_ratio`], [`DeltaGram`];
//! - distributed: [`allreduce`], Model Stock from an all-reduce of per-process sums.
//!
//! Every call returns a [`MergeReport`]: per tensor the cosine, angle, t, delta norms and flags
//! (unselected, zero deltas, cos ≤ 0, clamped, copied), plus a summary, as JSON or text.

pub mod allreduce;
mod dtype;
mod engine;
mod error;
mod greedy;
mod options;
mod plot;
mod ratio;
mod report;
mod select;
mod simd;
mod source;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use dtype::DType;
pub use error::{MergeError, Result};
pub use greedy::{GreedyCandidate, GreedySoup, GreedyStep, greedy_soup, greedy_soup_files};
pub use options::{MergeOptions, Method, Unselected};
pub use plot::{ratio_plot_png, ratio_plot_svg};
pub use ratio::{COS_EPS, DeltaGram, T_EPS, angle_deg, model_stock_ratio};
pub use report::{Action, Flag, MergeReport, MergeSummary, TensorReport};
pub use select::{GroupRule, MEMBER_CAPTURE, group_tensors};
pub use source::{ReadMode, SafetensorsFile, Source, Tensor, TensorInfo, TensorRef};

use engine::{Inputs, MemorySink};
use source::MemorySource;
use writer::{OutEntry, SafetensorsWriter};

/// Compiles the group patterns of `opts` into a name → group key function.
fn group_fn(opts: &MergeOptions) -> Result<impl Fn(&str) -> Option<String>> {
    let rules = opts
        .groups
        .iter()
        .map(|p| GroupRule::new(p))
        .collect::<Result<Vec<_>>>()?;
    Ok(move |name: &str| rules.iter().find_map(|r| r.key(name)))
}

struct OpenFiles {
    anchor: Option<SafetensorsFile>,
    models: Vec<SafetensorsFile>,
}

impl OpenFiles {
    fn open<P: AsRef<Path>>(anchor: Option<&Path>, models: &[P], mode: ReadMode) -> Result<Self> {
        Ok(OpenFiles {
            anchor: anchor.map(|p| SafetensorsFile::open(p, mode)).transpose()?,
            models: models
                .iter()
                .map(|p| SafetensorsFile::open(p.as_ref(), mode).map_err(MergeError::from))
                .collect::<Result<_>>()?,
        })
    }

    /// Unmaps the inputs in parallel: tearing down the page tables of a few GB of mappings is
    /// single-threaded kernel work per mapping, a noticeable share of a merge on few cores.
    fn close(self) {
        let all: Vec<SafetensorsFile> = self.anchor.into_iter().chain(self.models).collect();
        all.into_par_iter().for_each(drop);
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            anchor: self.anchor.as_ref().map(|a| a as &dyn Source),
            models: self.models.iter().map(|m| m as &dyn Source).collect(),
        }
    }
}

/// Refuses to write over an input: the merge reads the inputs while writing, and even though
/// the rename would leave a mapped inode intact, overwriting a checkpoint is never intended.
fn check_output_not_input<P: AsRef<Path>>(
    output: &Path,
    anchor: Option<&Path>,
    models: &[P],
) -> Result<()> {
    let Ok(out) = output.canonicalize() else {
        // Does not exist (yet): cannot be an input, which all exist.
        return Ok(());
    };
    let inputs = anchor.into_iter().chain(models.iter().map(|p| p.as_ref()));
    for p in inputs {
        if p.canonicalize().is_ok_and(|c| c == out) {
            return Err(MergeError::OutputIsInput {
                path: output.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Merges safetensors checkpoints tensor by tensor and writes the result to `output`
/// atomically (temporary sibling, fsync, rename; on error nothing is left behind).
///
/// `anchor` is w0 (the pretrained weights); it is required by every method except the uniform
/// soup. All inputs must hold the same tensor names and shapes; float dtypes may differ (the
/// merge computes in f32, accumulates in f64, and writes the anchor's dtype unless
/// `opts.output_dtype` says otherwise, except that a 16-bit anchor or inputs whose dtypes
/// differ give f32 floats, as the official notebook's merge does). Output tensor names and
/// order are the anchor's (or the first model's).
pub fn merge_files<P: AsRef<Path>>(
    anchor: Option<&Path>,
    models: &[P],
    output: &Path,
    opts: &MergeOptions,
) -> Result<MergeReport> {
    check_output_not_input(output, anchor, models)?;
    let files = OpenFiles::open(anchor, models, opts.read_mode)?;
    let inputs = files.inputs();
    let group_of = group_fn(opts)?;
    let mut plan = engine::build_plan(&inputs, opts, &group_of)?;

    let reference = files.anchor.as_ref().or(files.models.first());
    let mut metadata: BTreeMap<String, String> =
        reference.map(|r| r.metadata().clone()).unwrap_or_default();
    metadata.insert(
        "clipstock_merge".to_string(),
        serde_json::json!({
            "method": opts.method,
            "anchor": anchor.map(file_name),
            "models": models.iter().map(|m| file_name(m.as_ref())).collect::<Vec<_>>(),
        })
        .to_string(),
    );
    metadata.extend(opts.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    let out_entries: Vec<OutEntry<'_>> = plan
        .entries
        .iter()
        .map(|e| OutEntry {
            name: &e.info.name,
            dtype: e.out_dtype,
            shape: &e.info.shape,
        })
        .collect();
    // The header depends only on the plan, so the (hidden, temporary) file can be written
    // while the statistics are still being computed; on any error it is removed and `output`
    // is never touched.
    let mut w = SafetensorsWriter::create(output, &out_entries, &metadata)?;
    engine::analyze_and_write(&mut plan, &inputs, &mut w)?;
    w.finish()?;
    let report = engine::report(&plan, &inputs, opts, Some(output.display().to_string()));
    drop(inputs);
    files.close();
    Ok(report)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| p.display().to_string())
}

/// Computes the report of [`merge_files`] (cosines, ratios, flags) without writing anything:
/// one streaming pass over the inputs.
pub fn analyze_files<P: AsRef<Path>>(
    anchor: Option<&Path>,
    models: &[P],
    opts: &MergeOptions,
) -> Result<MergeReport> {
    let files = OpenFiles::open(anchor, models, opts.read_mode)?;
    let inputs = files.inputs();
    let group_of = group_fn(opts)?;
    let mut plan = engine::build_plan(&inputs, opts, &group_of)?;
    engine::analyze(&mut plan, &inputs)?;
    let report = engine::report(&plan, &inputs, opts, None);
    drop(inputs);
    files.close();
    Ok(report)
}

/// WiSE-FT for several mixing coefficients: one output file per `(alpha, path)`. `opts`
/// supplies everything but the method.
pub fn wise_ft_files<P: AsRef<Path>>(
    anchor: &Path,
    models: &[P],
    outputs: &[(f64, PathBuf)],
    opts: &MergeOptions,
) -> Result<Vec<MergeReport>> {
    outputs
        .iter()
        .map(|(alpha, path)| {
            let mut o = opts.clone();
            o.method = Method::WiseFt { alpha: *alpha };
            merge_files(Some(anchor), models, path, &o)
        })
        .collect()
}

/// Merges in-memory f32 tensors (e.g. host copies of a model's parameters). Inputs are named
/// `anchor` and `model 1`, `model 2`, … in errors. Returns the merged tensors in the anchor's
/// (else the first model's) order, always as f32 (`opts.output_dtype` and `read_mode` do not
/// apply).
pub fn merge_tensors(
    anchor: Option<&[TensorRef<'_>]>,
    models: &[&[TensorRef<'_>]],
    opts: &MergeOptions,
) -> Result<(Vec<Tensor>, MergeReport)> {
    let mut opts = opts.clone();
    opts.output_dtype = None;
    let anchor = anchor
        .map(|a| MemorySource::new("anchor".to_string(), a))
        .transpose()?;
    let models = models
        .iter()
        .enumerate()
        .map(|(i, m)| MemorySource::new(format!("model {}", i + 1), m))
        .collect::<Result<Vec<_>>>()?;
    let inputs = Inputs {
        anchor: anchor.as_ref().map(|a| a as &dyn Source),
        models: models.iter().map(|m| m as &dyn Source).collect(),
    };
    let group_of = group_fn(&opts)?;
    run_in_memory(&inputs, &opts, &group_of)
}

fn run_in_memory(
    inputs: &Inputs<'_>,
    opts: &MergeOptions,
    group_of: &dyn Fn(&str) -> Option<String>,
) -> Result<(Vec<Tensor>, MergeReport)> {
    let mut plan = engine::build_plan(inputs, opts, group_of)?;
    engine::analyze(&mut plan, inputs)?;
    let mut sink = MemorySink::new(&plan);
    engine::write(&mut plan, inputs, &mut sink)?;
    let report = engine::report(&plan, inputs, opts, None);
    Ok((sink.tensors, report))
}

/// Model Stock of one flat tensor: `anchor` is w0, `models` the N ≥ 2 fine-tuned versions.
/// Returns w_H and the tensor's report line (named `name`).
pub fn model_stock_tensor(
    name: &str,
    anchor: &[f32],
    models: &[&[f32]],
    clamp_t: bool,
) -> Result<(Vec<f32>, TensorReport)> {
    let (mut out, mut reports) = model_stock_group(
        &[GroupMember {
            name,
            anchor,
            models,
        }],
        None,
        clamp_t,
    )?;
    match (out.pop(), reports.pop()) {
        (Some(o), Some(r)) => Ok((o, r)),
        _ => Err(MergeError::InvalidOption(
            "internal error: empty merge result".into(),
        )),
    }
}

/// One tensor of a [`model_stock_group`].
#[derive(Debug, Clone, Copy)]
pub struct GroupMember<'a> {
    pub name: &'a str,
    pub anchor: &'a [f32],
    /// The tensor in each fine-tuned model, same order for every member.
    pub models: &'a [&'a [f32]],
}

/// Model Stock of several flat tensors that share one ratio (their delta dot products and
/// norms are summed before the cosine), e.g. separately stored q/k/v projections. With
/// `group: None` every member gets its own ratio. Returns each member's w_H and report line,
/// in order.
pub fn model_stock_group(
    members: &[GroupMember<'_>],
    group: Option<&str>,
    clamp_t: bool,
) -> Result<(Vec<Vec<f32>>, Vec<TensorReport>)> {
    let n = members.first().map_or(0, |m| m.models.len());
    if let Some(m) = members.iter().find(|m| m.models.len() != n) {
        return Err(MergeError::InvalidOption(format!(
            "group member `{}` has {} models, the first member has {n}",
            m.name,
            m.models.len()
        )));
    }
    let shapes: Vec<[usize; 1]> = members.iter().map(|m| [m.anchor.len()]).collect();
    let anchor: Vec<TensorRef<'_>> = members
        .iter()
        .zip(&shapes)
        .map(|(m, s)| TensorRef {
            name: m.name,
            shape: s,
            data: m.anchor,
        })
        .collect();
    let models: Vec<Vec<TensorRef<'_>>> = (0..n)
        .map(|i| {
            members
                .iter()
                .zip(&shapes)
                .map(|(m, s)| TensorRef {
                    name: m.name,
                    shape: s,
                    data: m.models[i],
                })
                .collect()
        })
        .collect();
    let model_refs: Vec<&[TensorRef<'_>]> = models.iter().map(|m| m.as_slice()).collect();
    let opts = MergeOptions::new(Method::ModelStock { clamp_t });
    let a = MemorySource::new("anchor".to_string(), &anchor)?;
    let ms = model_refs
        .iter()
        .enumerate()
        .map(|(i, m)| MemorySource::new(format!("model {}", i + 1), m))
        .collect::<Result<Vec<_>>>()?;
    let inputs = Inputs {
        anchor: Some(&a),
        models: ms.iter().map(|m| m as &dyn Source).collect(),
    };
    let key = group.map(str::to_string);
    let (tensors, report) = run_in_memory(&inputs, &opts, &|_| key.clone())?;
    Ok((
        tensors.into_iter().map(|t| t.data).collect(),
        report.tensors,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock(anchor: &[f32], models: &[&[f32]]) -> (Vec<f32>, TensorReport) {
        model_stock_tensor("w", anchor, models, false).expect("merge")
    }

    #[test]
    fn identical_models_are_returned_unchanged() {
        let w0 = [0.5f32, -1.0, 2.0, 0.25];
        let w1 = [0.75f32, -0.5, 1.5, 0.5];
        let (out, r) = stock(&w0, &[&w1, &w1, &w1]);
        assert_eq!(out, w1);
        // 1 up to the 1e-8 in the cosine's denominator.
        assert!((r.cos.expect("cos") - 1.0).abs() < 1e-7);
        // All models equal to the anchor: copied, flagged, t = 0.
        let (out, r) = stock(&w0, &[&w0, &w0]);
        assert_eq!(out, w0);
        assert_eq!(r.action, Action::Copied);
        assert!(r.has(Flag::Identical) && r.has(Flag::ZeroNorm));
        assert_eq!(r.t, Some(0.0));
        assert_eq!(r.delta_norms, vec![0.0, 0.0]);
    }

    #[test]
    fn orthogonal_deltas_give_the_anchor() {
        let w0 = [1.0f32, 2.0, 3.0];
        let w1 = [2.0f32, 2.0, 3.0];
        let w2 = [1.0f32, 5.0, 3.0];
        let (out, r) = stock(&w0, &[&w1, &w2]);
        assert_eq!(r.cos, Some(0.0));
        assert_eq!(r.t, Some(0.0));
        assert_eq!(out, w0);
        assert!(r.has(Flag::NegativeCos), "cos <= 0 is reported");
        assert_eq!(r.delta_norms, vec![1.0, 3.0]);
    }

    #[test]
    fn hand_computed_two_by_two() {
        // w0 = [[1, 2], [3, 4]]; d1 = [[1, 0], [0, 0]], d2 = [[1, 1], [0, 0]].
        // cos = 1/√2, t = 2cos/(1 + cos) = 2√2 − 2, mean − w0 = [[1, 0.5], [0, 0]].
        let w0 = [1.0f32, 2.0, 3.0, 4.0];
        let w1 = [2.0f32, 2.0, 3.0, 4.0];
        let w2 = [2.0f32, 3.0, 3.0, 4.0];
        let (out, r) = stock(&w0, &[&w1, &w2]);
        let cos = 1.0 / (2f64.sqrt() + 1e-8);
        let t = 2.0 * cos / (cos + 1.0 + 1e-8);
        assert!((r.cos.expect("cos") - cos).abs() < 1e-15);
        assert!((r.t.expect("t") - t).abs() < 1e-15);
        assert!((t - (2.0 * 2f64.sqrt() - 2.0)).abs() < 1e-7);
        let expect = [1.0 + t, 2.0 + 0.5 * t, 3.0, 4.0];
        for (o, e) in out.iter().zip(expect) {
            assert_eq!(*o, e as f32);
        }
        assert!((r.angle_deg.expect("angle") - 45.0).abs() < 1e-5);
    }

    #[test]
    fn three_models_average_the_pairwise_cosines() {
        let w0 = [0.0f32, 0.0];
        let (w1, w2, w3) = ([1.0f32, 0.0], [0.0f32, 1.0], [1.0f32, 1.0]);
        let (out, r) = stock(&w0, &[&w1, &w2, &w3]);
        let c = 1.0 / (2f64.sqrt() + 1e-8);
        let cos = (0.0 + c + c) / 3.0;
        let t = 3.0 * cos / (2.0 * cos + 1.0 + 1e-8);
        assert!((r.cos.expect("cos") - cos).abs() < 1e-15);
        assert!((r.t.expect("t") - t).abs() < 1e-15);
        assert_eq!(out, vec![(t * 2.0 / 3.0) as f32, (t * 2.0 / 3.0) as f32]);
    }

    #[test]
    fn fewer_than_two_models_is_an_error() {
        let err = model_stock_tensor("w", &[1.0], &[&[2.0]], false).expect_err("N = 1");
        let MergeError::TooFewModels { need, got, .. } = err else {
            panic!("{err}")
        };
        assert_eq!((need, got), (2, 1));
    }

    #[test]
    fn a_group_shares_one_ratio_equal_to_the_concatenation() {
        let w0a = [0.0f32, 1.0, 2.0];
        let w0b = [3.0f32, 4.0];
        let m1 = ([0.5f32, 1.0, 2.5], [3.0f32, 3.0]);
        let m2 = ([0.25f32, 1.5, 2.0], [3.5f32, 4.0]);
        let members = [
            GroupMember {
                name: "a",
                anchor: &w0a,
                models: &[&m1.0, &m2.0],
            },
            GroupMember {
                name: "b",
                anchor: &w0b,
                models: &[&m1.1, &m2.1],
            },
        ];
        let (out, reports) = model_stock_group(&members, Some("ab"), false).expect("group");
        let cat = |x: &[f32], y: &[f32]| [x, y].concat();
        let (fused, fr) = stock(&cat(&w0a, &w0b), &[&cat(&m1.0, &m1.1), &cat(&m2.0, &m2.1)]);
        for r in &reports {
            assert_eq!(r.group.as_deref(), Some("ab"));
            assert!((r.t.expect("t") - fr.t.expect("t")).abs() < 1e-15);
        }
        assert_eq!(cat(&out[0], &out[1]), fused);
    }
}
