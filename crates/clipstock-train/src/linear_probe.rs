//! `model.head = "linear_probe"` (LP-FT, as in model-soups' sweep): before fine-tuning, the
//! head alone is trained on the frozen, L2-normalised image features of the training images,
//! starting from the zero-shot head. The features are computed once with the evaluation
//! transform (a linear probe on fixed features, as CLIP's own probes are), then AdamW runs
//! `epochs` passes over them in a seeded order with a per-step cosine to 0. The result is
//! part of w0: the anchor of every merge and the start of every run.
//!
//! A run writes the probed head to `linear_probe_head.safetensors` and a resume reads it back,
//! so the probe (a pass over the whole training set) runs once per run directory.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use clipstock_config::{LinearProbeSection, RunSpec};
use clipstock_data::layouts::Sample;
use clipstock_data::loader::{Loader, LoaderOptions, epoch_order};
use clipstock_data::preprocess::{DecodeLimits, EvalTransform, Transform};
use clipstock_model::load::{HEAD_BIAS, HEAD_WEIGHT};
use clipstock_model::model::{ClipLinear, l2_normalize};
use clipstock_model::{DType, HostTensor, ImageClassifier, StateDict};

use crate::error::{Result, TrainError};
use crate::events::{Event, Observer};
use crate::schedule::cosine_lr;
use crate::step::cross_entropy;

/// The probed head's file in the run directory.
pub const PROBE_HEAD: &str = "linear_probe_head.safetensors";

/// Frozen features of the training images: `[n, dim]`, row-major, with their labels.
pub struct Features {
    pub data: Vec<f32>,
    pub dim: usize,
    pub labels: Vec<usize>,
}

/// How the probe went: the mean training loss of its first and last epochs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeLoss {
    pub first_epoch: f64,
    pub last_epoch: f64,
}

/// The L2-normalised image features of `samples` under the evaluation transform (unreadable
/// images are left out, as in evaluation).
pub fn features(
    model: &ImageClassifier,
    samples: &[Sample],
    spec: &RunSpec,
    device: &Device,
    stop: &AtomicBool,
) -> Result<Features> {
    let size = model.model.visual.image_size() as u32;
    let samples: Arc<[Sample]> = samples.to_vec().into();
    let order: Vec<usize> = (0..samples.len()).collect();
    let loader = Loader::new(
        samples,
        order,
        Transform::Eval(EvalTransform::new(size)),
        LoaderOptions {
            batch_size: spec.eval.batch_size.max(1),
            workers: spec.data.workers,
            prefetch: spec.data.prefetch.max(1),
            seed: 0,
            epoch: 0,
            limits: DecodeLimits::default(),
        },
    )?;
    let mut out = Features {
        data: Vec::new(),
        dim: 0,
        labels: Vec::new(),
    };
    for batch in loader {
        if stop.load(Ordering::SeqCst) {
            return Err(TrainError::Interrupted);
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len();
        let s = batch.size as usize;
        let x = Tensor::<4>::from_data(TensorData::new(batch.images, [n, 3, s, s]), device);
        let f = l2_normalize(model.model.visual.forward(x));
        out.dim = f.dims()[1];
        out.data.extend(f.into_data().iter::<f32>());
        out.labels.extend(batch.labels);
    }
    Ok(out)
}

/// Trains `head` (its `[classes, dim]` weight and `[classes]` bias) on `features` as `lp`
/// says, on `device`'s autodiff form. Deterministic: the order of each epoch depends on
/// `(lp.seed, epoch)` only.
pub fn fit(
    head: &ClipLinear,
    features: &Features,
    lp: &LinearProbeSection,
    device: &Device,
    stop: &AtomicBool,
) -> Result<(ClipLinear, ProbeLoss)> {
    let n = features.labels.len();
    if n == 0 {
        return Err(TrainError::TrainSetTooSmall {
            images: 0,
            batch_size: lp.batch_size,
        });
    }
    let ad = device.clone().autodiff();
    let mut head = head.clone().fork(&ad).train();
    let mut optim = ModuleOptimizer::from(crate::fused_adamw::FusedAdamW::new(
        0.9,
        0.999,
        1e-8,
        lp.weight_decay as f32,
    ));
    let batch = lp.batch_size.min(n);
    let steps_per_epoch = n.div_ceil(batch) as u64;
    let total = steps_per_epoch * lp.epochs;
    let mut step = 0u64;
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for epoch in 0..lp.epochs {
        let order = epoch_order(n, lp.seed, epoch);
        let mut sum = 0.0;
        for chunk in order.chunks(batch) {
            if stop.load(Ordering::SeqCst) {
                return Err(TrainError::Interrupted);
            }
            let b = chunk.len();
            let mut x = Vec::with_capacity(b * features.dim);
            for &i in chunk {
                x.extend_from_slice(&features.data[i * features.dim..(i + 1) * features.dim]);
            }
            let labels: Vec<i64> = chunk.iter().map(|&i| features.labels[i] as i64).collect();
            let x = Tensor::<2>::from_data(TensorData::new(x, [b, features.dim]), &ad);
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), &ad);
            let loss = cross_entropy(head.forward(x), y, 0.0);
            sum += loss
                .clone()
                .into_data()
                .iter::<f64>()
                .next()
                .unwrap_or(f64::NAN);
            let grads = GradientsParams::from_grads(loss.backward(), &head);
            let lr = cosine_lr(step, lp.lr, 0, total);
            head = optim.step(lr, head, grads);
            step += 1;
        }
        let mean = sum / steps_per_epoch as f64;
        if !mean.is_finite() {
            return Err(TrainError::NonFinite {
                run: "the linear probe".into(),
                seed: lp.seed,
                what: "the loss",
                epoch: epoch + 1,
                step,
            });
        }
        if epoch == 0 {
            first = mean;
        }
        last = mean;
    }
    Ok((
        head.valid().fork(device),
        ProbeLoss {
            first_epoch: first,
            last_epoch: last,
        },
    ))
}

/// w0's state with the probed head, read from `cache` when a previous start of this run wrote
/// it there, else probed now and written there.
#[allow(clippy::too_many_arguments)]
pub fn probed_state(
    base: &ImageClassifier,
    state: &StateDict,
    train: &[Sample],
    spec: &RunSpec,
    device: &Device,
    cache: &Path,
    stop: &AtomicBool,
    obs: &mut dyn Observer,
) -> Result<StateDict> {
    let head = if cache.is_file() {
        obs.on(Event::Phase(format!(
            "linear probe: the head of {}",
            cache.display()
        )));
        StateDict::read(cache)?
    } else {
        let lp = spec.model.linear_probe.clone().unwrap_or_default();
        obs.on(Event::Phase(format!(
            "linear probe: features of {} training images",
            train.len()
        )));
        let f = features(base, train, spec, device, stop)?;
        let (head, loss) = fit(&base.classification_head, &f, &lp, device, stop)?;
        obs.on(Event::Phase(format!(
            "linear probe: {} epochs, training loss {:.4} -> {:.4}",
            lp.epochs, loss.first_epoch, loss.last_epoch
        )));
        let mut sd = StateDict::new();
        for (name, t) in [
            (HEAD_WEIGHT, head.weight.val().into_data()),
            (HEAD_BIAS, head.bias.val().into_data()),
        ] {
            let shape = t.shape().to_vec();
            let data: Vec<f32> = t.iter::<f32>().collect();
            sd.insert(name, HostTensor::new(shape, DType::F32, data));
        }
        sd.write_safetensors(cache, Some(DType::F32), None)
            .map_err(clipstock_model::ModelError::from)?;
        sd
    };
    let mut out = state.clone();
    for name in [HEAD_WEIGHT, HEAD_BIAS] {
        let (Some(t), Some(old)) = (head.get(name), state.get(name)) else {
            return Err(TrainError::Checkpoint {
                path: cache.to_path_buf(),
                reason: format!("no `{name}` in the probed head"),
            });
        };
        if t.shape != old.shape {
            return Err(TrainError::Checkpoint {
                path: cache.to_path_buf(),
                reason: format!(
                    "`{name}` has shape {:?}, the model's head {:?}",
                    t.shape, old.shape
                ),
            });
        }
        out.insert(name, t.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clipstock_model::model::ParamSource;

    /// Three separable clusters on the unit circle in 4-D, and a random head: the probe must
    /// lower the training loss, and the same seed must give the same head.
    #[test]
    fn the_probe_lowers_the_training_loss_and_is_deterministic() {
        let device = Device::flex();
        let mut data = Vec::new();
        let mut labels = Vec::new();
        let mut rng = clipstock_tensors::SplitMix64(5);
        for i in 0..60 {
            let c = i % 3;
            let mut v = [0.1f32; 4];
            v[c] = 1.0;
            for x in v.iter_mut() {
                *x += 0.2 * (rng.unit() - 0.5);
            }
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            data.extend(v.iter().map(|x| x / norm));
            labels.push(c);
        }
        let f = Features {
            data,
            dim: 4,
            labels,
        };
        let mut src = ParamSource::random(3, &device);
        let head = ClipLinear::new(4, 3, &mut src, "classification_head");
        let lp = LinearProbeSection {
            epochs: 20,
            lr: 0.05,
            batch_size: 16,
            ..LinearProbeSection::default()
        };
        let stop = AtomicBool::new(false);
        let (probed, loss) = fit(&head, &f, &lp, &device, &stop).expect("fit");
        assert!(
            loss.last_epoch < 0.5 * loss.first_epoch,
            "the loss goes down: {loss:?}"
        );
        let (again, _) = fit(&head, &f, &lp, &device, &stop).expect("fit");
        let w = |h: &ClipLinear| h.weight.val().into_data().iter::<f32>().collect::<Vec<_>>();
        assert_eq!(w(&probed), w(&again));
        assert_ne!(w(&probed), w(&head));
    }
}
