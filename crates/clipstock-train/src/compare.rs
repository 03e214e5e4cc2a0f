//! `clipstock compare`: the paper's comparison in one go, on one run's data, evaluation sets
//! and seeds. The run trains the periodic Model Stock runs and the independent baselines in
//! lockstep (`baselines.independent_seeds`, at least two) with a held-out split; then, from
//! its exports:
//!
//! - zero-shot (w0), each independent fine-tune, and the periodic Model Stock merge;
//! - post-hoc Model Stock, uniform soup and greedy soup of the independent fine-tunes (greedy
//!   selects on the held-out split only, model-soups' rule);
//! - WiSE-FT of the best independent fine-tune (by held-out accuracy) and of the Model Stock
//!   merge, at α = 0, 0.1, …, 1.
//!
//! Everything is merged in memory with the trainer's own merge code and scored with the
//! trainer's evaluation. w0 is read from the run's `w0.safetensors` export, so a run with a
//! linear-probe head is compared against its probed w0. Each finished row is written to `compare/rows.json` at once, so a
//! killed compare resumes where it stopped: the training through the trainer's checkpoints,
//! the rows by skipping those already there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clipstock_config::{MergeMethod, RunPlan};
use clipstock_data::layouts::SetName;
use clipstock_eval::{EvalResults, SetSource, evaluate};
use clipstock_merge::{GreedySoup, MergeOptions, Method, TensorRef, greedy_soup};
use clipstock_model::load::{apply_state, module_state};
use clipstock_model::{BurnDevice, Checkpoint, ImageClassifier, StateDict};
use serde::{Deserialize, Serialize};

use crate::driver::{TrainOptions, train};
use crate::error::{Result, TrainError, io};
use crate::events::{Event, Observer};
use crate::hooks::state_refs;
use crate::rundir::{RunLock, RunReader, write_atomic};
use crate::session::{EvalSets, RunName, eval_error, eval_options};

/// WiSE-FT's mixing coefficients, as in the WiSE-FT paper's curves.
pub const ALPHAS: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// One method's row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodRow {
    /// The row's label in the table and the figure.
    pub method: String,
    /// `zero_shot`, `independent`, `model_stock`, `model_stock_posthoc`, `uniform_soup`,
    /// `greedy_soup`, `wise_ft` or `model_stock_wise_ft`.
    pub family: String,
    pub alpha: Option<f64>,
    /// Fine-tuned models the method needs (the paper's count: WiSE-FT needs one, a soup all
    /// of its candidates, Model Stock its runs).
    pub models: usize,
    pub results: EvalResults,
    /// Greedy soup only: its selection on the held-out split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub greedy: Option<GreedySelection>,
}

/// What greedy soup saw and chose: only held-out scores go into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GreedySelection {
    /// The candidates, and each one's held-out top-1.
    pub candidates: Vec<String>,
    pub holdout_top1: Vec<f64>,
    pub soup: GreedySoup,
}

/// What a compare call leaves.
#[derive(Debug, Clone)]
pub struct CompareOutcome {
    pub dir: PathBuf,
    pub markdown: String,
    pub rows: Vec<MethodRow>,
    pub stopped_early: bool,
}

/// The compare folder inside the run directory.
pub const COMPARE_DIR: &str = "compare";

fn refuse(key: &str, reason: &str) -> TrainError {
    TrainError::Compare(format!("{key}: {reason}"))
}

/// The run's settings that a comparison needs, checked before anything trains.
pub fn check(plan: &RunPlan) -> Result<()> {
    let spec = &plan.spec;
    if spec.baselines.independent_seeds.len() < 2 {
        return Err(refuse(
            "baselines.independent_seeds",
            "compare needs at least two independent fine-tunes (the soups and post-hoc \
             Model Stock merge them)",
        ));
    }
    if spec.data.holdout_per_class.is_none() && spec.data.holdout_file.is_none() {
        return Err(refuse(
            "data.holdout_per_class",
            "compare needs a held-out split (greedy soup selects on it); set \
             data.holdout_per_class (model-soups: 26) or data.holdout_file",
        ));
    }
    if spec.merge.method != MergeMethod::ModelStock {
        return Err(refuse(
            "merge.method",
            "compare's periodic run is Model Stock (\"model_stock\")",
        ));
    }
    Ok(())
}

/// Trains (or resumes) the run, then adds every missing row; see the module docs.
pub fn compare(
    plan: &RunPlan,
    stop: &Arc<AtomicBool>,
    obs: &mut dyn Observer,
) -> Result<CompareOutcome> {
    check(plan)?;
    let dir = plan.run_dir.clone();
    let started = dir.join("checkpoints").join("latest.json").is_file();
    // A run killed after its last checkpoint but before its exports resumes into them.
    let mut exports = vec![
        "w0.safetensors".to_string(),
        "merged_final.safetensors".into(),
    ];
    exports.extend(
        RunName::all(&plan.spec)
            .iter()
            .map(|n| format!("{}_final.safetensors", n.stem())),
    );
    let exported = exports.iter().all(|f| dir.join(f).is_file());
    let finished = started && exported && RunReader::open(&dir)?.state.finished;
    if !finished {
        let opts = TrainOptions {
            resume: started,
            stop: stop.clone(),
            comm: None,
        };
        let outcome = train(plan, &opts, obs)?;
        if outcome.stopped_early {
            return Ok(CompareOutcome {
                dir: dir.join(COMPARE_DIR),
                markdown: String::new(),
                rows: Vec::new(),
                stopped_early: true,
            });
        }
    }
    // Held like the trainer holds it: nobody trains or compares into this directory meanwhile.
    let _lock = RunLock::acquire(&dir)?;
    let reader = RunReader::open(&dir)?;
    let out = dir.join(COMPARE_DIR);
    std::fs::create_dir_all(&out).map_err(io("create", &out))?;
    let mut c = Comparison::open(plan, &reader, &out, stop, obs)?;
    c.run_all(obs)?;
    let markdown = results_markdown(&plan.spec.run.name, &c.rows);
    write_atomic(&out.join("results.md"), markdown.as_bytes())?;
    let json =
        serde_json::to_string_pretty(&c.rows).map_err(|e| TrainError::Compare(e.to_string()))?;
    write_atomic(&out.join("results.json"), json.as_bytes())?;
    let svg = crate::figures::id_vs_ood_svg(&plan.spec.run.name, &c.rows);
    write_atomic(&out.join("id_vs_ood.svg"), svg.as_bytes())?;
    let png = crate::figures::png(&svg, &out.join("id_vs_ood.png"))?;
    write_atomic(&out.join("id_vs_ood.png"), &png)?;
    Ok(CompareOutcome {
        dir: out,
        markdown,
        rows: c.rows,
        stopped_early: false,
    })
}

/// The post-hoc part: the run's exports, its evaluation sets, and the rows so far.
struct Comparison<'a> {
    plan: &'a RunPlan,
    stop: &'a Arc<AtomicBool>,
    rows_path: PathBuf,
    rows: Vec<MethodRow>,
    device: burn::prelude::Device,
    base: ImageClassifier,
    w0: StateDict,
    independents: Vec<(String, StateDict)>,
    merged: StateDict,
    sets: EvalSets,
}

impl<'a> Comparison<'a> {
    fn open(
        plan: &'a RunPlan,
        reader: &RunReader,
        out: &Path,
        stop: &'a Arc<AtomicBool>,
        obs: &mut dyn Observer,
    ) -> Result<Self> {
        let device = plan.eval_device.device()?;
        let dir = &reader.path;
        let load = |name: &str| -> Result<(ImageClassifier, StateDict)> {
            let path = dir.join(name);
            let ckpt = Checkpoint::read(&path)?;
            let mut model = ckpt.classifier(None, &device)?;
            model.model.text = None;
            let state = module_state(&model);
            Ok((model, state))
        };
        obs.on(Event::Phase("compare: loading the run's exports".into()));
        let (base, w0) = load("w0.safetensors")?;
        let mut independents = Vec::new();
        for name in RunName::all(&plan.spec)
            .into_iter()
            .filter(|n| n.independent)
        {
            let (_, state) = load(&format!("{}_final.safetensors", name.stem()))?;
            independents.push((name.label(), state));
        }
        let (_, merged) = load("merged_final.safetensors")?;
        let sets = crate::session::evaluation_sets(
            plan,
            base.model.visual.image_size() as u32,
            stop,
            obs,
        )?;
        let rows_path = out.join("rows.json");
        let rows: Vec<MethodRow> = if rows_path.is_file() {
            let text = std::fs::read_to_string(&rows_path).map_err(io("read", &rows_path))?;
            serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
                path: rows_path.clone(),
                reason: e.to_string(),
            })?
        } else {
            Vec::new()
        };
        Ok(Comparison {
            plan,
            stop,
            rows_path,
            rows,
            device,
            base,
            w0,
            independents,
            merged,
            sets,
        })
    }

    fn has(&self, method: &str) -> bool {
        self.rows.iter().any(|r| r.method == method)
    }

    fn push(&mut self, row: MethodRow) -> Result<()> {
        self.rows.push(row);
        let json = serde_json::to_string_pretty(&self.rows)
            .map_err(|e| TrainError::Compare(e.to_string()))?;
        write_atomic(&self.rows_path, json.as_bytes())
    }

    /// Scores `state` on every set (the paper's and the held-out split), or on the held-out
    /// split alone.
    fn evaluate(
        &self,
        state: &StateDict,
        holdout_only: bool,
        obs: &mut dyn Observer,
        label: &str,
    ) -> Result<EvalResults> {
        let model = apply_state(self.base.clone(), state, label)?;
        let sources: Vec<SetSource<'_>> = if self.sets.prepared.is_empty() {
            self.sets.on_disk.iter().map(SetSource::Disk).collect()
        } else {
            self.sets.prepared.iter().map(SetSource::Prepared).collect()
        };
        let sources: Vec<SetSource<'_>> = sources
            .into_iter()
            .filter(|s| !holdout_only || s.set().name == SetName::ImageNetHoldout)
            .collect();
        let mut opts = eval_options(&self.plan.spec);
        opts.cancel = Some(self.stop.clone());
        let names: Vec<SetName> = sources.iter().map(|s| s.set().name).collect();
        evaluate(
            &model,
            &sources,
            &self.device,
            &opts,
            |p| {
                if let clipstock_eval::Progress::Start { set_index, images } = p {
                    obs.on(Event::EvalSet {
                        model: label.to_string(),
                        set: names[set_index],
                        images,
                    });
                }
            },
            None,
        )
        .map_err(eval_error)
    }

    /// A row scored now, unless it is there already.
    fn scored(
        &mut self,
        obs: &mut dyn Observer,
        (method, family, alpha, models): (&str, &str, Option<f64>, usize),
        state: impl FnOnce(&Self) -> Result<StateDict>,
    ) -> Result<()> {
        if self.has(method) {
            return Ok(());
        }
        let sd = state(self)?;
        let results = self.evaluate(&sd, false, obs, method)?;
        obs.on(Event::EvalDone {
            model: method.to_string(),
            results: results.clone(),
        });
        self.push(MethodRow {
            method: method.to_string(),
            family: family.to_string(),
            alpha,
            models,
            results,
            greedy: None,
        })
    }

    fn run_all(&mut self, obs: &mut dyn Observer) -> Result<()> {
        let k = self.independents.len();
        let n = self.plan.spec.run.seeds.len();
        // Every row is scored here, the run's own rows too: one code path and one set of
        // images for all of them, whatever the run's `eval` section said.
        self.scored(obs, ("zero-shot", "zero_shot", None, 0), |c| {
            Ok(c.w0.clone())
        })?;
        for i in 0..k {
            let label = self.independents[i].0.clone();
            self.scored(obs, (&label, "independent", None, 1), |c| {
                Ok(c.independents[i].1.clone())
            })?;
        }
        self.scored(
            obs,
            ("Model Stock (periodic)", "model_stock", None, n),
            |c| Ok(c.merged.clone()),
        )?;

        self.scored(
            obs,
            ("Model Stock (post-hoc)", "model_stock_posthoc", None, k),
            |c| {
                c.merge(Method::ModelStock {
                    clamp_t: c.plan.spec.merge.clamp_t,
                })
            },
        )?;
        self.scored(obs, ("uniform soup", "uniform_soup", None, k), |c| {
            c.merge(Method::UniformSoup)
        })?;
        self.greedy(obs)?;

        let best = self.best_independent()?;
        let best_state = self.independents[best].1.clone();
        for &alpha in &ALPHAS {
            let name = format!("WiSE-FT α={alpha:.1} ({})", self.independents[best].0);
            self.scored(obs, (&name, "wise_ft", Some(alpha), 1), |c| {
                c.wise(&best_state, alpha)
            })?;
        }
        let merged = self.merged.clone();
        for &alpha in &ALPHAS {
            let name = format!("Model Stock + WiSE-FT α={alpha:.1}");
            self.scored(obs, (&name, "model_stock_wise_ft", Some(alpha), n), |c| {
                c.wise(&merged, alpha)
            })?;
        }
        Ok(())
    }

    /// The independent fine-tune with the best held-out top-1 (model-soups' "best individual
    /// model" is chosen on held-out data too); ties keep the first.
    fn best_independent(&self) -> Result<usize> {
        let scores = self.holdout_scores()?;
        let mut best = 0;
        for (i, s) in scores.iter().enumerate() {
            if *s > scores[best] {
                best = i;
            }
        }
        Ok(best)
    }

    fn holdout_scores(&self) -> Result<Vec<f64>> {
        self.independents
            .iter()
            .map(|(label, _)| {
                let row = self.rows.iter().find(|r| &r.method == label);
                row.and_then(|r| r.results.get(SetName::ImageNetHoldout))
                    .map(|s| s.top1)
                    .ok_or_else(|| TrainError::Compare(format!("no held-out score for {label}")))
            })
            .collect()
    }

    fn merge_of(
        &self,
        anchor: Option<&StateDict>,
        models: &[&StateDict],
        method: Method,
    ) -> Result<StateDict> {
        let anchor_refs = anchor.map(state_refs);
        let refs: Vec<Vec<TensorRef<'_>>> = models.iter().map(|m| state_refs(m)).collect();
        let slices: Vec<&[TensorRef<'_>]> = refs.iter().map(Vec::as_slice).collect();
        let (tensors, _) = clipstock_merge::merge_tensors(
            anchor_refs.as_deref(),
            &slices,
            &MergeOptions::new(method),
        )?;
        let mut sd = StateDict::new();
        for t in tensors {
            sd.insert(
                t.name,
                clipstock_model::HostTensor::new(t.shape, clipstock_model::DType::F32, t.data),
            );
        }
        Ok(sd)
    }

    fn merge(&self, method: Method) -> Result<StateDict> {
        let models: Vec<&StateDict> = self.independents.iter().map(|(_, s)| s).collect();
        let anchor = match method {
            Method::UniformSoup => None,
            _ => Some(&self.w0),
        };
        self.merge_of(anchor, &models, method)
    }

    fn wise(&self, model: &StateDict, alpha: f64) -> Result<StateDict> {
        self.merge_of(Some(&self.w0), &[model], Method::WiseFt { alpha })
    }

    /// model-soups' greedy soup of the independent fine-tunes, on held-out scores only; the
    /// chosen soup is then scored on every set.
    fn greedy(&mut self, obs: &mut dyn Observer) -> Result<()> {
        const METHOD: &str = "greedy soup";
        if self.has(METHOD) {
            return Ok(());
        }
        let scores = self.holdout_scores()?;
        let soup = greedy_soup(&scores, |cand| -> Result<f64> {
            let members: Vec<&StateDict> = cand
                .ingredients
                .iter()
                .map(|&i| &self.independents[i].1)
                .collect();
            let sd = self.merge_of(None, &members, Method::UniformSoup)?;
            let label = format!("greedy soup candidate {:?}", cand.ingredients);
            let r = self.evaluate(&sd, true, obs, &label)?;
            r.get(SetName::ImageNetHoldout)
                .map(|s| s.top1)
                .ok_or_else(|| TrainError::Compare("no held-out score".into()))
        })?;
        let members: Vec<&StateDict> = soup
            .ingredients
            .iter()
            .map(|&i| &self.independents[i].1)
            .collect();
        let sd = self.merge_of(None, &members, Method::UniformSoup)?;
        let results = self.evaluate(&sd, false, obs, METHOD)?;
        let selection = GreedySelection {
            candidates: self.independents.iter().map(|(l, _)| l.clone()).collect(),
            holdout_top1: scores,
            soup,
        };
        let k = self.independents.len();
        self.push(MethodRow {
            method: METHOD.into(),
            family: "greedy_soup".into(),
            alpha: None,
            models: k,
            results,
            greedy: Some(selection),
        })
    }
}

/// The comparison table: the paper's columns, the held-out split, the models each method
/// needs.
pub fn results_markdown(name: &str, rows: &[MethodRow]) -> String {
    let cols: Vec<SetName> = SetName::ALL
        .into_iter()
        .filter(|s| rows.iter().any(|r| r.results.get(*s).is_some()))
        .collect();
    let mut out = format!("# {name}: comparison\n\n| method |");
    for c in &cols {
        out.push_str(&format!(" {} |", c.title()));
    }
    out.push_str(" avg shifts | held-out | models |\n|---|");
    out.push_str(&"---|".repeat(cols.len() + 3));
    out.push('\n');
    let cell = |v: Option<f64>| v.map_or(" – |".to_string(), |v| format!(" {v:.2} |"));
    for r in rows {
        out.push_str(&format!("| {} |", r.method));
        for c in &cols {
            out.push_str(&cell(r.results.get(*c).map(|s| s.top1)));
        }
        out.push_str(&cell(r.results.ood_mean().map(|m| m.0)));
        out.push_str(&cell(
            r.results.get(SetName::ImageNetHoldout).map(|s| s.top1),
        ));
        out.push_str(&format!(" {} |\n", r.models));
    }
    out
}
