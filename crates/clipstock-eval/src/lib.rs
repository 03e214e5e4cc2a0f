//! Evaluation of a CLIP classifier on ImageNet and its five distribution shifts, scored the way
//! the paper's code scores them (SPEC.md §5): top-1/top-5 per set after the set's class
//! projection, the plain mean of the shifts present, a results table in the paper's column
//! order, and optional per-image predictions.
//!
//! The model is only read, never changed: [`evaluate`] takes `&ImageClassifier`.

mod error;
mod results;

use std::sync::Arc;
use std::time::Instant;

use burn::prelude::*;
use clipstock_data::classes::{Projection, top_k};
use clipstock_data::layouts::{EvalSet, Sample};
use clipstock_data::loader::{Batch, Loader, LoaderOptions};
use clipstock_data::preprocess::{DecodeLimits, EvalTransform, Transform};
use clipstock_model::ImageClassifier;

pub use error::EvalError;
pub use results::{EvalResults, Prediction, SetResult, markdown_row, markdown_table};

/// How batches are built and reported.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub batch_size: usize,
    /// Decoding threads (0 = all cores).
    pub workers: usize,
    pub prefetch: usize,
    pub limits: DecodeLimits,
    /// Checked between batches: when set, [`evaluate`] stops with [`EvalError::Cancelled`]
    /// (a Ctrl-C must not wait for a 50,000-image set to finish).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            batch_size: 256,
            workers: 0,
            prefetch: 2,
            limits: DecodeLimits::default(),
            cancel: None,
        }
    }
}

/// What a caller hears while a set is evaluated (e.g. to draw a progress bar).
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    Start { set_index: usize, images: usize },
    Batch { set_index: usize, done: usize },
    Finish { set_index: usize },
}

/// An evaluation set decoded and preprocessed once, kept in memory so that several models
/// (zero-shot, each run, the merge) are scored on the same tensors without decoding again.
/// Only worth it for small sets (the quickstart, `limit_per_set` runs): the memory is
/// `3·S²·4` bytes per image.
pub struct PreparedSet {
    pub set: EvalSet,
    batches: Vec<Batch>,
}

impl PreparedSet {
    /// Stops with [`EvalError::Cancelled`] between batches once `opts.cancel` is set.
    pub fn prepare(set: EvalSet, image_size: u32, opts: &EvalOptions) -> Result<Self, EvalError> {
        let mut batches = Vec::new();
        for batch in loader_for(&set, image_size, opts)? {
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
            {
                return Err(EvalError::Cancelled);
            }
            batches.push(batch);
        }
        Ok(PreparedSet { set, batches })
    }
}

/// Either a set read from disk on every evaluation or one prepared in memory.
pub enum SetSource<'a> {
    Disk(&'a EvalSet),
    Prepared(&'a PreparedSet),
}

impl SetSource<'_> {
    pub fn set(&self) -> &EvalSet {
        match self {
            SetSource::Disk(s) => s,
            SetSource::Prepared(p) => &p.set,
        }
    }
}

fn loader_for(set: &EvalSet, image_size: u32, opts: &EvalOptions) -> Result<Loader, EvalError> {
    let samples: Arc<[Sample]> = set.samples.clone().into();
    let order: Vec<usize> = (0..samples.len()).collect();
    let transform = Transform::Eval(EvalTransform {
        size: image_size,
        border_crop: set.border_crop,
    });
    let loader_opts = LoaderOptions {
        batch_size: opts.batch_size.max(1),
        workers: opts.workers,
        prefetch: opts.prefetch.max(1),
        seed: 0,
        epoch: 0,
        limits: opts.limits,
    };
    Loader::new(samples, order, transform, loader_opts).map_err(|source| EvalError::Data {
        set: set.name.key().to_string(),
        source,
    })
}

/// Scores `model` on each set. `on_prediction` receives every image's prediction (for
/// `--predictions`); `progress` is called as batches finish.
pub fn evaluate(
    model: &ImageClassifier,
    sets: &[SetSource<'_>],
    device: &Device,
    opts: &EvalOptions,
    mut progress: impl FnMut(Progress),
    mut on_prediction: Option<&mut dyn FnMut(Prediction)>,
) -> Result<EvalResults, EvalError> {
    let image_size = model.model.visual.image_size() as u32;
    let num_classes = model.num_classes();
    let mut results = Vec::with_capacity(sets.len());
    for (set_index, source) in sets.iter().enumerate() {
        let set = source.set();
        check_projection(&set.projection, num_classes, set)?;
        let start = Instant::now();
        progress(Progress::Start {
            set_index,
            images: set.samples.len(),
        });
        let mut scorer = Scorer::new();
        let mut done = 0;
        let mut score_batch = |batch: &Batch,
                               images: Vec<f32>,
                               scorer: &mut Scorer,
                               on_prediction: &mut Option<&mut dyn FnMut(Prediction)>|
         -> Result<(), EvalError> {
            scorer.skipped.extend(
                batch
                    .skipped
                    .iter()
                    .map(|s| (s.path.display().to_string(), s.reason.clone())),
            );
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
            {
                return Err(EvalError::Cancelled);
            }
            if batch.is_empty() {
                return Ok(());
            }
            let logits = forward(model, images, batch, device, set)?;
            scorer.add(set, batch, &logits, num_classes, on_prediction);
            done += batch.len() + batch.skipped.len();
            progress(Progress::Batch { set_index, done });
            Ok(())
        };
        match source {
            SetSource::Disk(set) => {
                for mut batch in loader_for(set, image_size, opts)? {
                    let images = std::mem::take(&mut batch.images);
                    score_batch(&batch, images, &mut scorer, &mut on_prediction)?;
                }
            }
            SetSource::Prepared(p) => {
                if p.batches.first().is_some_and(|b| b.size != image_size) {
                    return Err(EvalError::Invalid(format!(
                        "set `{}` was prepared at {} px but the model takes {image_size} px",
                        set.name.key(),
                        p.batches[0].size
                    )));
                }
                for batch in &p.batches {
                    score_batch(batch, batch.images.clone(), &mut scorer, &mut on_prediction)?;
                }
            }
        }
        progress(Progress::Finish { set_index });
        if scorer.count == 0 {
            // A 0% row would enter the OOD mean as if the model had failed every image.
            let first = scorer
                .skipped
                .first()
                .map(|(p, why)| format!("; e.g. `{p}`: {why}"))
                .unwrap_or_default();
            return Err(EvalError::Invalid(format!(
                "set `{}` under `{}`: none of its {} images could be read{first}",
                set.name.key(),
                set.dir.display(),
                scorer.skipped.len()
            )));
        }
        results.push(scorer.finish(set, start.elapsed().as_secs_f64()));
    }
    Ok(EvalResults::new(results))
}

fn check_projection(p: &Projection, num_classes: usize, set: &EvalSet) -> Result<(), EvalError> {
    let max_index = match p {
        Projection::Identity => None,
        Projection::Subset(idx) => idx.iter().copied().max(),
        Projection::MaxOver(groups) => groups.iter().flatten().copied().max(),
    };
    if let Some(m) = max_index
        && m >= num_classes
    {
        return Err(EvalError::Invalid(format!(
            "set `{}` needs class index {m} but the head has {num_classes} classes",
            set.name.key()
        )));
    }
    if matches!(p, Projection::Identity) && set.num_labels > num_classes {
        return Err(EvalError::Invalid(format!(
            "set `{}` has {} labels but the head has {num_classes} classes",
            set.name.key(),
            set.num_labels
        )));
    }
    Ok(())
}

fn forward(
    model: &ImageClassifier,
    images: Vec<f32>,
    batch: &Batch,
    device: &Device,
    set: &EvalSet,
) -> Result<Vec<f32>, EvalError> {
    let s = batch.size as usize;
    let x = Tensor::<4>::from_data(TensorData::new(images, [batch.len(), 3, s, s]), device);
    model
        .forward(x)
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| EvalError::Invalid(format!("logits of set `{}`: {e:?}", set.name.key())))
}

/// Running top-1/top-5 counts of one set.
struct Scorer {
    correct1: usize,
    correct5: usize,
    count: usize,
    skipped: Vec<(String, String)>,
    projected: Vec<f32>,
}

impl Scorer {
    fn new() -> Self {
        Scorer {
            correct1: 0,
            correct5: 0,
            count: 0,
            skipped: Vec::new(),
            projected: Vec::new(),
        }
    }

    fn add(
        &mut self,
        set: &EvalSet,
        batch: &Batch,
        logits: &[f32],
        num_classes: usize,
        on_prediction: &mut Option<&mut dyn FnMut(Prediction)>,
    ) {
        for (row, (&label, &sample)) in batch.labels.iter().zip(&batch.sample_indices).enumerate() {
            let l = &logits[row * num_classes..(row + 1) * num_classes];
            set.projection.project(l, &mut self.projected);
            let top = top_k(&self.projected, 5);
            let hit1 = top.first() == Some(&label);
            let hit5 = top.contains(&label);
            self.correct1 += usize::from(hit1);
            self.correct5 += usize::from(hit5);
            self.count += 1;
            if let Some(cb) = on_prediction.as_mut() {
                let path = &set.samples[sample].path;
                let rel = path.strip_prefix(&set.dir).unwrap_or(path);
                cb(Prediction {
                    set: set.name.key().to_string(),
                    path: rel.display().to_string(),
                    label,
                    prediction: top.first().copied().unwrap_or(0),
                    top5: top,
                });
            }
        }
    }

    fn finish(self, set: &EvalSet, seconds: f64) -> SetResult {
        let pct = |c: usize| {
            if self.count == 0 {
                0.0
            } else {
                100.0 * c as f64 / self.count as f64
            }
        };
        SetResult {
            set: set.name,
            top1: pct(self.correct1),
            top5: pct(self.correct5),
            correct1: self.correct1,
            correct5: self.correct5,
            count: self.count,
            skipped: self.skipped,
            num_labels: set.num_labels,
            seconds,
            images_per_sec: if seconds > 0.0 {
                self.count as f64 / seconds
            } else {
                0.0
            },
        }
    }
}
