//! `clipstock soup`: the uniform soup of fine-tuned checkpoints, or model-soups' greedy soup
//! selected on a held-out split (a run's `holdout.txt`, or a folder of class folders).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use clipstock_data::classes::{ClassFiles, ClassSpace};
use clipstock_data::holdout;
use clipstock_data::layouts::SetName;
use clipstock_data::layouts::{EvalSet, open_class_folders};
use clipstock_eval::{EvalOptions, PreparedSet, SetSource, evaluate};
use clipstock_merge::{GreedySoup, MergeOptions, Method, greedy_soup_files, merge_files};
use clipstock_model::{BurnDevice, Checkpoint, DeviceSpec, ImageClassifier};

#[derive(Args)]
pub struct SoupArgs {
    /// The fine-tuned checkpoints (with their classification heads, as a run's
    /// `independent_N_final.safetensors` exports are).
    #[arg(long, num_args = 1.., required = true)]
    models: Vec<PathBuf>,
    /// Greedy soup (model-soups): visit the models by descending held-out accuracy, add one
    /// only if the soup's held-out accuracy goes up. Without it: the uniform soup of all.
    #[arg(long, requires = "holdout")]
    greedy: bool,
    /// The held-out images: a run directory trained with a held-out split (its `holdout.txt`),
    /// or a folder of class folders laid out like ImageNet train.
    #[arg(long)]
    holdout: Option<PathBuf>,
    /// With a folder --holdout: its label space (wnids.txt, ...; default: ImageNet's in data/).
    #[arg(long)]
    class_dir: Option<PathBuf>,
    /// The soup's weights.
    #[arg(long)]
    out: PathBuf,
    /// The selection report (default: the output with `.json`).
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Decoding threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// cpu, flex, ndarray, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// The held-out images of `--holdout`, prepared in memory once: every candidate is scored on
/// the same tensors.
fn holdout_set(a: &SoupArgs, path: &Path) -> Result<EvalSet> {
    if path.join("config.toml").is_file() {
        if a.class_dir.is_some() {
            bail!("--class-dir does not apply to a run directory: its config decides it");
        }
        let reader = clipstock_train::RunReader::open(path)?;
        return Ok(reader.holdout_set()?);
    }
    let files = match &a.class_dir {
        Some(d) => ClassFiles::in_dir(d),
        None => ClassFiles::imagenet(Path::new("data")),
    };
    let classes = ClassSpace::load(&files)?;
    let set = open_class_folders(path, &classes)?;
    Ok(holdout::eval_set(
        &set.dir,
        set.samples,
        classes.num_classes(),
    ))
}

struct Scorer {
    set: PreparedSet,
    device: burn::prelude::Device,
    opts: EvalOptions,
}

impl Scorer {
    /// Held-out top-1 of the checkpoint at `path`.
    fn score(&self, path: &Path) -> Result<f64> {
        let model = load(path, &self.device)?;
        let r = evaluate(
            &model,
            &[SetSource::Prepared(&self.set)],
            &self.device,
            &self.opts,
            |_| {},
            None,
        )?;
        r.get(SetName::ImageNetHoldout)
            .map(|s| s.top1)
            .context("the evaluation returned no held-out score")
    }
}

fn load(path: &Path, device: &burn::prelude::Device) -> Result<ImageClassifier> {
    let ckpt = Checkpoint::read(path)?;
    if !ckpt.has_head() {
        bail!(
            "`{}` has no classification head: a soup averages fine-tuned classifiers, head \
             included",
            path.display()
        );
    }
    let mut model = ckpt.classifier(None, device)?;
    model.model.text = None;
    Ok(model)
}

pub fn run(a: SoupArgs) -> Result<()> {
    let device = a.device.device()?;
    let report_path = a
        .report
        .clone()
        .unwrap_or_else(|| a.out.with_extension("json"));
    let scorer = match &a.holdout {
        Some(p) => {
            let set = holdout_set(&a, p)?;
            err!(
                "held-out split: {} images from {}",
                set.samples.len(),
                set.dir.display()
            );
            let size = load(&a.models[0], &device)?.model.visual.image_size() as u32;
            let opts = EvalOptions {
                batch_size: a.batch_size,
                workers: a.workers,
                prefetch: 2,
                ..EvalOptions::default()
            };
            let set = PreparedSet::prepare(set, size, &opts)?;
            Some(Scorer { set, device, opts })
        }
        None => None,
    };
    let mut scores = Vec::new();
    if let Some(s) = &scorer {
        for m in &a.models {
            let top1 = s.score(m)?;
            err!("{}: held-out top-1 {top1:.2}%", m.display());
            scores.push(top1);
        }
    }
    let opts = MergeOptions::new(Method::UniformSoup);
    let (selection, soup_score): (Option<GreedySoup>, Option<f64>) = match &scorer {
        Some(s) if a.greedy => {
            let candidate = a.out.with_extension("candidate.safetensors");
            let (soup, _) = greedy_soup_files(
                &a.models,
                &scores,
                &candidate,
                &a.out,
                &opts,
                |path, cand| -> Result<f64> {
                    let top1 = s.score(path)?;
                    err!(
                        "adding {}: held-out top-1 {top1:.2}%",
                        a.models[cand.adding].display()
                    );
                    Ok(top1)
                },
            )?;
            let score = soup.score;
            (Some(soup), Some(score))
        }
        _ => {
            merge_files(None, &a.models, &a.out, &opts)?;
            let score = match &scorer {
                Some(s) => Some(s.score(&a.out)?),
                None => None,
            };
            (None, score)
        }
    };
    let names: Vec<String> = a.models.iter().map(|p| p.display().to_string()).collect();
    let ingredients: Vec<usize> = match &selection {
        Some(g) => g.ingredients.clone(),
        None => (0..a.models.len()).collect(),
    };
    let report = serde_json::json!({
        "method": if a.greedy { "greedy_soup" } else { "uniform_soup" },
        "models": names,
        "holdout": a.holdout.as_ref().map(|p| p.display().to_string()),
        "holdout_top1": scores,
        "ingredients": ingredients.iter().map(|&i| &names[i]).collect::<Vec<_>>(),
        "soup_holdout_top1": soup_score,
        "greedy": selection,
        "output": a.out.display().to_string(),
    });
    let text = serde_json::to_string_pretty(&report)?;
    clipstock_model::state::write_atomic(&report_path, text.as_bytes())?;
    out!(
        "{} of {} models: {}",
        ingredients.len(),
        a.models.len(),
        ingredients
            .iter()
            .map(|&i| names[i].as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(s) = soup_score {
        out!("soup held-out top-1: {s:.2}%");
    }
    out!("wrote {} and {}", a.out.display(), report_path.display());
    Ok(())
}
