//! `clipstock eval`: one checkpoint, or every model of a run directory, on ImageNet and its
//! shifts; results JSON, a Markdown table in the paper's order, optional per-image predictions.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use clipstock_data::classes::{ClassFiles, ClassSpace};
use clipstock_data::layouts::{EvalSet, OpenOptions, SetName, open_eval_set};
use clipstock_eval::{EvalOptions, EvalResults, Prediction, Progress, SetSource, evaluate};
use clipstock_model::zeroshot::zeroshot_head_from_files;
use clipstock_model::{BurnDevice, Checkpoint, DeviceSpec, ImageClassifier, StateDict};
use clipstock_train::Quiet;

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint to evaluate (any naming; with or without a classification head).
    #[arg(long, conflicts_with = "run", required_unless_present = "run")]
    weights: Option<PathBuf>,
    /// Head file (`classification_head.*`); default: the checkpoint's head, else the zero-shot
    /// head built from --classnames × --templates.
    #[arg(long)]
    head: Option<PathBuf>,
    /// A run directory (`runs/<name>`): evaluate its zero-shot model, every run at its last
    /// checkpoint and the last merge, with the run's config.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Folder holding the datasets (see docs/DATASETS.md); default with --run: the run's.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Comma-separated: imagenet, imagenet_v2, imagenet_sketch, imagenet_r, imagenet_a, objectnet.
    #[arg(long, value_delimiter = ',')]
    sets: Vec<SetName>,
    #[arg(long, default_value_t = 256, value_parser = positive)]
    batch_size: usize,
    /// Evaluate an evenly spaced subset of K images per set.
    #[arg(long, value_parser = positive)]
    limit_per_set: Option<usize>,
    /// Folder with wnids.txt, classnames.json, r_subset.json, a_subset.json, objectnet.json
    /// (default: the ImageNet files in data/).
    #[arg(long)]
    class_dir: Option<PathBuf>,
    #[arg(long)]
    classnames: Option<PathBuf>,
    #[arg(long, default_value = "data/openai_imagenet_templates.json")]
    templates: PathBuf,
    /// Decoding threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Remove 2 pixels from each ObjectNet border (model-soups defines but never applies it).
    #[arg(long)]
    objectnet_border_crop: bool,
    /// Accept a set whose image count differs from the published size (refused by default:
    /// an incomplete download would silently change the reported accuracy).
    #[arg(long)]
    no_size_check: bool,
    /// Results JSON (default with --run: <run>/eval.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Per-image predictions, one JSON object per line.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// cpu, flex, ndarray, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// A count that must be at least 1. A clap parser, so a 0 is a usage error (exit 2, clap's
/// message naming the flag) like any other malformed argument, before a model is loaded.
fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    let device = a.device.device()?;
    // With --run, the run's own evaluation settings apply unless a flag says otherwise.
    let mut limit_per_set = a.limit_per_set;
    let mut border_crop = a.objectnet_border_crop;
    let mut size_check = !a.no_size_check;
    let (models, data_root, class_files, mut sets_wanted, run_reader) = match &a.run {
        Some(run_dir) => {
            let reader = clipstock_train::RunReader::open(run_dir)?;
            let spec = &reader.plan.spec;
            if a.class_dir.is_some() || a.head.is_some() || a.classnames.is_some() {
                bail!(
                    "--class-dir, --head and --classnames do not apply with --run: the run's \
                     config decides them"
                );
            }
            limit_per_set = limit_per_set.or(spec.eval.limit_per_set);
            border_crop |= spec.eval.objectnet_border_crop;
            size_check &= spec.eval.expect_published_sizes;
            err!("loading the models of {}", run_dir.display());
            let models = reader.models(&device, &mut Quiet)?;
            let root = a.data_root.clone().unwrap_or(spec.data.root.clone());
            let files = clipstock_train::class_files(&reader.plan.class_files_dir);
            let sets = reader.plan.eval.sets.clone();
            (models, root, files, sets, Some(reader))
        }
        None => {
            let Some(weights) = &a.weights else {
                bail!("give --weights or --run");
            };
            let Some(root) = a.data_root.clone() else {
                bail!("--data-root is required with --weights");
            };
            let files = match &a.class_dir {
                Some(d) => ClassFiles::in_dir(d),
                None => ClassFiles::imagenet(Path::new("data")),
            };
            let model = load_classifier(&a, weights, &files, &device)?;
            (
                vec![("model".to_string(), model)],
                root,
                files,
                Vec::new(),
                None,
            )
        }
    };
    if !a.sets.is_empty() {
        sets_wanted = a.sets.clone();
    }
    if sets_wanted.is_empty() {
        sets_wanted = SetName::ALL.to_vec();
    }
    if !data_root.is_dir() {
        bail!("data root `{}` is not a folder", data_root.display());
    }
    let classes = ClassSpace::load(&class_files)?;
    let opts = OpenOptions {
        limit_per_set,
        objectnet_border_crop: border_crop,
        expect_published_sizes: size_check,
    };
    let mut sets: Vec<EvalSet> = Vec::new();
    for &name in &sets_wanted {
        let set = open_eval_set(name, &data_root, &classes, &opts)?;
        sets.push(set);
    }
    let eval_opts = EvalOptions {
        batch_size: a.batch_size,
        workers: a.workers,
        prefetch: 2,
        ..EvalOptions::default()
    };
    let mut preds: Option<BufWriter<File>> = match &a.predictions {
        Some(p) => {
            Some(BufWriter::new(File::create(p).with_context(|| {
                format!("cannot create `{}`", p.display())
            })?))
        }
        None => None,
    };
    let mut all: Vec<(String, EvalResults)> = Vec::new();
    let tty = std::io::stderr().is_terminal();
    for (label, model) in &models {
        let sources: Vec<SetSource<'_>> = sets.iter().map(SetSource::Disk).collect();
        let mut bar: Option<ProgressBar> = None;
        let mut write_err: Option<std::io::Error> = None;
        let multi = models.len() > 1;
        let mut sink = |p: Prediction| {
            if let Some(w) = preds.as_mut() {
                let mut v = serde_json::to_value(&p).unwrap_or_default();
                if multi && let Some(o) = v.as_object_mut() {
                    o.insert("model".into(), serde_json::Value::String(label.clone()));
                }
                if let Err(e) = writeln!(w, "{v}") {
                    write_err.get_or_insert(e);
                }
            }
        };
        let results = evaluate(
            model,
            &sources,
            &device,
            &eval_opts,
            |p| match p {
                Progress::Start { set_index, images } => {
                    let pb = if tty {
                        ProgressBar::new(images as u64)
                    } else {
                        ProgressBar::hidden()
                    };
                    pb.set_style(
                        ProgressStyle::with_template(
                            "{prefix} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    );
                    pb.set_prefix(format!("{label} · {}", sets[set_index].name.key()));
                    if !tty {
                        err!("{label}: {} ({images} images)", sets[set_index].name.key());
                    }
                    bar = Some(pb);
                }
                Progress::Batch { done, .. } => {
                    if let Some(b) = &bar {
                        b.set_position(done as u64);
                    }
                }
                Progress::Finish { .. } => {
                    if let Some(b) = bar.take() {
                        b.finish_and_clear();
                    }
                }
            },
            Some(&mut sink),
        )?;
        if let Some(e) = write_err {
            return Err(e).context("cannot write the predictions file");
        }
        for r in &results.sets {
            err!(
                "{label} · {}: top-1 {:.2}%  top-5 {:.2}%  ({} images, {} unreadable, {:.1} img/s)",
                r.set.key(),
                r.top1,
                r.top5,
                r.count,
                r.skipped.len(),
                r.images_per_sec
            );
        }
        all.push((label.clone(), results));
    }
    if let Some(mut w) = preds {
        w.flush().context("cannot write the predictions file")?;
    }
    let json = if all.len() == 1 && a.run.is_none() {
        all[0].1.to_json()
    } else {
        let mut map = serde_json::Map::new();
        for (label, r) in &all {
            map.insert(label.clone(), r.to_json());
        }
        serde_json::Value::Object(map)
    };
    match (&a.out, &run_reader) {
        (Some(out), _) => {
            let text = serde_json::to_string_pretty(&json)?;
            clipstock_model::state::write_atomic(out, text.as_bytes())?;
            err!("results: {}", out.display());
        }
        (None, Some(reader)) => {
            let out = reader.write_eval(&all)?;
            err!("results: {}", out.display());
        }
        (None, None) => {}
    }
    let rows: Vec<(String, &EvalResults)> = all.iter().map(|(l, r)| (l.clone(), r)).collect();
    out!("{}", clipstock_eval::markdown_table(&rows));
    if let Some((_, r)) = all.first()
        && let Some((_, n)) = r.ood_mean()
        && n < 5
    {
        out!("avg shifts is the mean over {n} of the 5 shifts evaluated");
    }
    Ok(())
}

fn load_classifier(
    a: &EvalArgs,
    weights: &Path,
    files: &ClassFiles,
    device: &burn::prelude::Device,
) -> Result<ImageClassifier> {
    let ckpt = Checkpoint::read(weights)?;
    let head = match &a.head {
        Some(h) => Some(StateDict::read(h)?),
        None if ckpt.has_head() => None,
        None => {
            let classnames_path = a
                .classnames
                .clone()
                .unwrap_or_else(|| files.classnames.clone());
            err!(
                "no head in {} and no --head: building the zero-shot head from {} × {}",
                weights.display(),
                classnames_path.display(),
                a.templates.display()
            );
            Some(zeroshot_head_from_files(
                &ckpt,
                &classnames_path,
                &a.templates,
                device,
                None,
            )?)
        }
    };
    let mut model = ckpt.classifier(head.as_ref(), device)?;
    model.model.text = None;
    Ok(model)
}
