//! One optimizer step of every run: [`StepRunner`] (the trainer's step, which `clipstock
//! bench` times too) and its maths: cross-entropy with label smoothing, global-norm gradient
//! clipping (burn's own clipping is per tensor, PyTorch's `clip_grad_norm_` is global) and
//! f16's dynamic loss scale.

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use clipstock_data::loader::Batch;
use clipstock_model::ImageClassifier;
use clipstock_model::fused::map_in_place;
use clipstock_model::model::Autocast;
use tracing::{info, info_span};

use crate::session::Run;

/// The step's settings, from `[optim]` and `run.devices`.
#[derive(Clone)]
pub struct StepRunner {
    pub autocast: Autocast,
    pub label_smoothing: f64,
    pub grad_clip_norm: Option<f64>,
    /// Micro-batches per optimizer step (the loss is divided by their number).
    pub accumulation_steps: usize,
    /// Every run on its own device: f16's norm read-backs wait until every run's backward is
    /// queued, so the devices keep computing meanwhile. On one shared device that would only
    /// keep more gradient sets alive at once.
    pub per_run_devices: bool,
    /// `optim.mixup_alpha`; 0 = no mixup.
    pub mixup_alpha: f64,
    /// The epoch being trained (0-based): with the run's seed and the batch's first sample it
    /// seeds mixup's λ, so a resumed step mixes as the uninterrupted one did.
    pub epoch: u64,
    /// The processes that share each of this process's runs (`run.ranks_per_seed` > 1 under
    /// MPI): their gradients are averaged before the norm, so each takes the same step.
    pub group: Option<crate::dist::Comm>,
}

/// mixup's λ for one micro-batch: a function of (run seed, epoch, first sample index) only,
/// like every other random choice of a step. The salt keeps it apart from that sample's crop.
pub fn mixup_lambda(alpha: f64, run_seed: u64, epoch: u64, first_sample: usize) -> f32 {
    const SALT: u64 = 0x6D69_7875_705F_6C61; // "mixup_la"
    let seed = clipstock_data::preprocess::sample_seed(run_seed ^ SALT, epoch, first_sample as u64);
    clipstock_tensors::SplitMix64(seed).beta(alpha, alpha) as f32
}

/// timm's batch-mode mixup in place: image `i` becomes `λ·x_i + (1 − λ)·x_{n−1−i}`. Returns
/// the partner labels (the batch reversed); the loss is `λ·CE(y) + (1 − λ)·CE(partner)`,
/// which is the cross-entropy against the mixed targets.
pub fn mixup_batch(images: &mut [f32], labels: &[usize], lambda: f32) -> Vec<usize> {
    let n = labels.len();
    if n == 0 {
        return Vec::new();
    }
    let per = images.len() / n;
    let original = images.to_vec();
    for (i, dst) in images.chunks_exact_mut(per).enumerate() {
        let partner = &original[(n - 1 - i) * per..(n - i) * per];
        for (d, &p) in dst.iter_mut().zip(partner) {
            *d = lambda * *d + (1.0 - lambda) * p;
        }
    }
    labels.iter().rev().copied().collect()
}

/// What one run's step gave, read back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOutcome {
    /// Mean loss over the step's micro-batches; NaN when no image of the step was readable.
    pub loss: f64,
    /// The global gradient norm before clipping; NaN for a skipped step.
    pub grad_norm: f64,
    pub images: usize,
}

/// A run whose loss or gradient norm is not finite: training must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NonFinite {
    /// 0-based run index.
    pub run: usize,
    pub what: &'static str,
}

/// One run's optimizer step, queued on its device and not yet read back.
struct QueuedStep {
    loss_sum: Option<Tensor<1>>,
    /// The mean loss when it had to be read back already (the group's, a shared step).
    loss_read: Option<f64>,
    norm: Option<Tensor<1>>,
    /// The unscaled norm when it had to be read back already (f16 loss scaling).
    norm_read: Option<f64>,
    /// f16 only: the gradients overflowed, the update was not applied.
    skipped: bool,
    /// f16 with one device per run: gradients whose update waits for their norm, read once
    /// every run's backward is queued.
    pending: Option<GradientsParams>,
    micro_batches: usize,
    images: usize,
}

impl StepRunner {
    /// One optimizer step of every run at learning rate `lr`: run `i` takes up to
    /// `accumulation_steps` micro-batches from `batches[i]`. Every run's step is queued first
    /// (forward, backward, clipping and AdamW on its device, nothing read back), then the
    /// losses and norms are read, so runs on several devices compute at the same time.
    /// `loss_scales` is empty except in f16 (one per run). `placeholder` fills a run's slot
    /// while AdamW owns its module.
    pub fn step<I: Iterator<Item = Batch>>(
        &self,
        runs: &mut [Run],
        batches: &mut [I],
        lr: f64,
        loss_scales: &mut [LossScale],
        placeholder: &ImageClassifier,
    ) -> Result<Vec<StepOutcome>, NonFinite> {
        let mut queued = Vec::with_capacity(runs.len());
        for (i, (run, source)) in runs.iter_mut().zip(batches.iter_mut()).enumerate() {
            let _span = info_span!("run", run = i + 1, seed = run.name.seed).entered();
            queued.push(self.queue(i, run, source, lr, loss_scales.get_mut(i), placeholder));
        }
        for (i, q) in queued.iter_mut().enumerate() {
            if let Some(q) = q
                && let Some(grads) = q.pending.take()
                && let Some(ls) = loss_scales.get_mut(i)
            {
                let run = &mut runs[i];
                let _span = info_span!("run", run = i + 1, seed = run.name.seed).entered();
                self.apply_scaled(run, ls, placeholder, q, grads, lr);
            }
        }
        (queued.into_iter().enumerate())
            .map(|(i, q)| match q {
                Some(q) => finish(i, q),
                None => Ok(StepOutcome {
                    loss: f64::NAN,
                    grad_norm: f64::NAN,
                    images: 0,
                }),
            })
            .collect()
    }

    /// Queues one run's step; `None` when none of its images was readable.
    fn queue(
        &self,
        i: usize,
        run: &mut Run,
        source: &mut impl Iterator<Item = Batch>,
        lr: f64,
        loss_scale: Option<&mut LossScale>,
        placeholder: &ImageClassifier,
    ) -> Option<QueuedStep> {
        let accum = self.accumulation_steps;
        let scale = loss_scale.as_ref().map(|s| s.scale);
        let mut acc = GradientsAccumulator::<ImageClassifier>::new();
        let mut loss_sum: Option<Tensor<1>> = None;
        let mut images = 0;
        let mut micro_done = 0;
        for _ in 0..accum {
            let Some(batch) = source.next() else { break };
            if batch.is_empty() {
                continue;
            }
            let s = batch.size as usize;
            let n = batch.len();
            let mut pixels = batch.images;
            let mixed = (self.mixup_alpha > 0.0).then(|| {
                let first = batch.sample_indices.first().copied().unwrap_or(0);
                let lambda = mixup_lambda(self.mixup_alpha, run.name.seed, self.epoch, first);
                (lambda, mixup_batch(&mut pixels, &batch.labels, lambda))
            });
            let x = Tensor::<4>::from_data(TensorData::new(pixels, [n, 3, s, s]), &run.device);
            let int_labels = |labels: &[usize]| {
                let v: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
                Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &run.device)
            };
            let y = int_labels(&batch.labels);
            let logits = run.model.forward_with(x, self.autocast);
            let loss = match mixed {
                Some((lambda, partner)) => {
                    let own = cross_entropy(logits.clone(), y, self.label_smoothing);
                    let other = cross_entropy(logits, int_labels(&partner), self.label_smoothing);
                    own * f64::from(lambda) + other * f64::from(1.0 - lambda)
                }
                None => cross_entropy(logits, y, self.label_smoothing),
            };
            let value = loss.clone().detach();
            loss_sum = Some(match loss_sum.take() {
                Some(t) => t + value,
                None => value,
            });
            let loss = match scale {
                Some(scale) => loss * (scale / accum as f64),
                None => loss / accum as f64,
            };
            let grads = GradientsParams::from_grads(loss.backward(), &run.model);
            acc.accumulate(&run.model, grads);
            images += n;
            micro_done += 1;
        }
        let skipped = || {
            tracing::warn!(
                "run {}: every image of this step was unreadable; the step is skipped",
                i + 1
            );
        };
        let (loss_sum, loss_read, mut grads) = match self.group.as_deref().filter(|g| g.size() > 1)
        {
            None => {
                let Some(loss_sum) = loss_sum else {
                    skipped();
                    return None;
                };
                (Some(loss_sum), None, acc.grads())
            }
            Some(group) => {
                // Every process of the group takes part, with or without images of its own,
                // so none waits for one that skipped the collective.
                let local = loss_sum.map(scalar);
                let totals = crate::grad_sync::group_totals(group, local, micro_done, images);
                if totals.contributors == 0 {
                    skipped();
                    return None;
                }
                images = totals.images;
                micro_done = totals.micro_batches;
                let own = local.is_some().then(|| acc.grads());
                let grads =
                    crate::grad_sync::average_grads(&run.model, own, group, totals.contributors);
                (None, Some(totals.loss()), grads)
            }
        };
        clipstock_tensors::fault::point("train.backward");
        let norm = grad_norm_tensor(&run.model, &grads);
        let mut q = QueuedStep {
            loss_sum,
            loss_read,
            norm,
            norm_read: None,
            skipped: false,
            pending: None,
            micro_batches: micro_done,
            images,
        };
        if let Some(ls) = loss_scale {
            if self.per_run_devices {
                q.pending = Some(grads);
            } else {
                self.apply_scaled(run, ls, placeholder, &mut q, grads, lr);
            }
            return Some(q);
        }
        if let (Some(max), Some(norm)) = (self.grad_clip_norm, &q.norm) {
            if run.device == Device::flex().autodiff() {
                // On flex the factor rides in the fused AdamW's pass (one pass over 88M
                // gradients fewer); reading the norm is free there, flex computes eagerly.
                let factor = clip_factor(scalar(norm.clone()) as f32, max);
                let model = std::mem::replace(&mut run.model, placeholder.clone());
                let optim = &mut run.optim;
                run.model =
                    crate::fused_adamw::with_grad_scale(factor, || optim.step(lr, model, grads));
                return Some(q);
            }
            clip_grads_on_device(&run.model, &mut grads, norm, max);
        }
        let model = std::mem::replace(&mut run.model, placeholder.clone());
        run.model = run.optim.step(lr, model, grads);
        Some(q)
    }

    /// The f16 half of a step: whether the update may be applied depends on the gradients, so
    /// their (scaled) norm is read back here — the price of f16, GradScaler syncs at the same
    /// point. Finite: unscale and clip in one multiplication, then AdamW. Not finite: skip.
    /// Either way the loss scale is updated.
    fn apply_scaled(
        &self,
        run: &mut Run,
        ls: &mut LossScale,
        placeholder: &ImageClassifier,
        q: &mut QueuedStep,
        mut grads: GradientsParams,
        lr: f64,
    ) {
        let scaled = q.norm.take().map_or(0.0, scalar);
        let finite = scaled.is_finite();
        q.norm_read = Some(scaled / ls.scale);
        if finite {
            scale_grads(
                &run.model,
                &mut grads,
                ls.unscale_factor(scaled, self.grad_clip_norm),
            );
            let model = std::mem::replace(&mut run.model, placeholder.clone());
            run.model = run.optim.step(lr, model, grads);
        } else {
            q.skipped = true;
        }
        ls.update(finite);
        if !finite {
            info!(
                loss_scale = ls.scale,
                "f16 gradients overflowed: step skipped, loss scale halved"
            );
        }
    }
}

/// Reads back a queued step's loss and gradient norm; a non-finite one is an error (the last
/// checkpoint predates it).
fn finish(i: usize, q: QueuedStep) -> Result<StepOutcome, NonFinite> {
    let loss = match (q.loss_read, q.loss_sum) {
        (Some(l), _) => l,
        (None, Some(sum)) => scalar(sum) / q.micro_batches.max(1) as f64,
        (None, None) => f64::NAN,
    };
    let norm = q.norm_read.or(q.norm.map(scalar)).unwrap_or(0.0);
    let err = |what| NonFinite { run: i, what };
    if !loss.is_finite() {
        return Err(err("the loss"));
    }
    if q.skipped {
        // f16 overflow: handled by the loss scale, not a divergence.
        return Ok(StepOutcome {
            loss,
            grad_norm: f64::NAN,
            images: q.images,
        });
    }
    if !norm.is_finite() {
        return Err(err("the gradient norm"));
    }
    Ok(StepOutcome {
        loss,
        grad_norm: norm,
        images: q.images,
    })
}

/// A one-element tensor's value (a read-back).
fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().iter::<f64>().next().unwrap_or(f64::NAN)
}

/// Mean cross-entropy of `logits` `[B, C]` against `labels` `[B]`, with PyTorch's label
/// smoothing: `(1 − ε)·nll + ε·mean_c(−log p_c)`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>, smoothing: f64) -> Tensor<1> {
    let [b, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    let nll = logp.clone().gather(1, labels.reshape([b, 1])).mean().neg();
    if smoothing == 0.0 {
        return nll;
    }
    let uniform = logp.mean().neg();
    nll * (1.0 - smoothing) + uniform * smoothing
}

/// Sum of squares of every parameter's gradient, as one scalar tensor (one read-back).
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = squares(g).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

/// `g²` element-wise. On flex, one multi-threaded pass over a host copy: flex's own
/// `powi_scalar(2)` is `g * g` in its generic single-threaded loop into a fresh buffer,
/// about 12% of a batch-8 ViT-B/32 step under perf. The products are the same f32 products
/// and flex's `sum` then reads the same values in the same layout, so the norm keeps its bits.
fn squares<const D: usize>(g: Tensor<D>) -> Tensor<D> {
    let device = g.device();
    // Gradients are never autodiff tensors, but `Device`'s equality would not tell.
    if g.is_autodiff() || device != Device::flex() || g.dtype() != burn::tensor::DType::F32 {
        return g.powi_scalar(2);
    }
    let mut data = g.into_data();
    match data.as_mut_slice::<f32>() {
        Ok(v) => map_in_place(v, |x| x * x),
        Err(_) => return Tensor::<D>::from_data(data, &device).powi_scalar(2),
    }
    Tensor::<D>::from_data(data, &device)
}

/// The global L2 norm of all gradients as a one-element tensor on their device: no read-back,
/// so a step queues all its work without waiting for the device (runs on several GPUs overlap).
pub fn grad_norm_tensor<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut v = SquaredNorm { grads, total: None };
    module.visit(&mut v);
    v.total.map(Tensor::sqrt)
}

/// PyTorch's `clip_grad_norm_` on the device: every gradient times
/// `min(1, max_norm / (norm + 1e-6))` (exactly 1 when the norm is below the limit).
/// `clip_grads_on_device`'s factor, `min(1, max / (norm + 1e-6))`, in the same f32 steps on
/// the host (the scalars rounded to f32 as flex rounds them).
pub fn clip_factor(norm: f32, max_norm: f64) -> f32 {
    ((norm + 1e-6f32).recip() * (max_norm as f32)).min(1.0)
}

pub fn clip_grads_on_device<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    norm: &Tensor<1>,
    max_norm: f64,
) {
    let factor = (norm.clone() + 1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0);
    let mut v = ScaleBy {
        grads,
        factor: Factor::Device(Box::new(factor)),
        ids: Vec::new(),
    };
    module.visit(&mut v);
}

/// Every gradient times `factor` (a value already read back, e.g. f16 loss scaling's
/// `1/scale` folded with the clipping factor).
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, factor: f64) {
    let mut v = ScaleBy {
        grads,
        factor: Factor::Host(factor),
        ids: Vec::new(),
    };
    module.visit(&mut v);
}

enum Factor {
    Device(Box<Tensor<1>>),
    Host(f64),
}

struct ScaleBy<'a> {
    grads: &'a mut GradientsParams,
    factor: Factor,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for ScaleBy<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.ids.contains(&param.id) {
            return;
        }
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let g = match &self.factor {
                Factor::Device(f) => g.mul((**f).clone().reshape([1usize; D])),
                Factor::Host(f) => g.mul_scalar(*f),
            };
            self.grads.register(param.id, g);
            self.ids.push(param.id);
        }
    }
}

/// f16 training's dynamic loss scale, with PyTorch `GradScaler`'s defaults: the loss is
/// multiplied by `scale` before backward so that small gradients survive f16's narrow range;
/// a step whose gradients overflow is skipped and the scale halved, and after 2000 clean
/// steps in a row the scale doubles. bf16 has f32's exponent range and needs none of this.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Clean steps since the last change of `scale`.
    pub clean_steps: u64,
    /// Steps skipped so far because their gradients were not finite.
    pub skipped: u64,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale {
            scale: 65536.0,
            clean_steps: 0,
            skipped: 0,
        }
    }
}

impl LossScale {
    pub const GROWTH_INTERVAL: u64 = 2000;

    /// Records one step's outcome and returns whether its update may be applied.
    pub fn update(&mut self, grads_finite: bool) -> bool {
        if grads_finite {
            self.clean_steps += 1;
            if self.clean_steps == Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.clean_steps = 0;
            self.skipped += 1;
        }
        grads_finite
    }

    /// The factor that turns scaled gradients with (scaled) global norm `scaled_norm` into
    /// unscaled, clipped ones: `min(1, max / (norm + 1e-6)) / scale`, as `clip_grad_norm_`
    /// after `GradScaler.unscale_`.
    pub fn unscale_factor(&self, scaled_norm: f64, max_norm: Option<f64>) -> f64 {
        let inv = 1.0 / self.scale;
        let clip = max_norm.map_or(1.0, |m| (m / (scaled_norm * inv + 1e-6)).min(1.0));
        clip * inv
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clipstock_model::fused::PARALLEL_MIN;

    #[test]
    fn loss_scale_follows_grad_scaler() {
        let mut s = LossScale::default();
        assert_eq!(s.scale, 65536.0);
        assert!(!s.update(false));
        assert_eq!((s.scale, s.skipped, s.clean_steps), (32768.0, 1, 0));
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert_eq!((s.scale, s.clean_steps), (65536.0, 0));
        // An overflow restarts the count towards the next growth.
        for _ in 0..10 {
            s.update(true);
        }
        s.update(false);
        assert_eq!((s.scale, s.clean_steps, s.skipped), (32768.0, 0, 2));
    }

    #[test]
    fn unscale_factor_folds_clipping_into_one_multiplier() {
        let s = LossScale {
            scale: 1024.0,
            ..LossScale::default()
        };
        // True norm 0.5 under a limit of 1: only the unscaling.
        assert_eq!(s.unscale_factor(512.0, Some(1.0)), 1.0 / 1024.0);
        // True norm 4 over a limit of 1: clipped by 1/(4 + 1e-6), then unscaled.
        let f = s.unscale_factor(4096.0, Some(1.0));
        assert!((f - 1.0 / (4.0 + 1e-6) / 1024.0).abs() < 1e-15, "{f}");
        assert_eq!(s.unscale_factor(4096.0, None), 1.0 / 1024.0);
    }

    #[test]
    fn smoothing_matches_the_pytorch_formula() {
        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(vec![2.0f32, 0.0, -1.0, 0.5, 0.5, 3.0], [2, 3]),
            &device,
        );
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
        let value = |t: Tensor<1>| t.into_data().iter::<f64>().next().expect("scalar");
        // By hand: log-softmax rows, nll = −(lp[0,0] + lp[1,2]) / 2, uniform = −mean(all lp).
        let lse = |r: [f64; 3]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
        let r0 = [2.0, 0.0, -1.0];
        let r1 = [0.5, 0.5, 3.0];
        let lp0: Vec<f64> = r0.iter().map(|x| x - lse(r0)).collect();
        let lp1: Vec<f64> = r1.iter().map(|x| x - lse(r1)).collect();
        let nll = -(lp0[0] + lp1[2]) / 2.0;
        let uni = -(lp0.iter().sum::<f64>() + lp1.iter().sum::<f64>()) / 6.0;
        let plain = value(cross_entropy(logits.clone(), labels.clone(), 0.0));
        assert!((plain - nll).abs() < 1e-6, "{plain} vs {nll}");
        let smooth = value(cross_entropy(logits, labels, 0.1));
        assert!((smooth - (0.9 * nll + 0.1 * uni)).abs() < 1e-6);
    }

    /// The mixed images are the convex combination with the reversed batch, and the loss on
    /// the mixed targets equals the cross-entropy against the soft labels λ·y + (1 − λ)·y_rev.
    #[test]
    fn mixup_mixes_images_and_labels_with_the_reversed_batch() {
        let mut images: Vec<f32> = (0..6).map(|v| v as f32).collect(); // 3 images of 2 values
        let labels = [0usize, 1, 2];
        let partner = mixup_batch(&mut images, &labels, 0.75);
        assert_eq!(partner, vec![2, 1, 0]);
        assert_eq!(images, vec![1.0, 2.0, 2.0, 3.0, 3.0, 4.0]);

        let device = Device::flex();
        let logits = Tensor::<2>::from_data(
            TensorData::new(
                vec![2.0f32, 0.0, -1.0, 0.5, 0.5, 3.0, 1.0, -2.0, 0.0],
                [3, 3],
            ),
            &device,
        );
        let lambda = 0.75f64;
        let int = |v: &[usize]| {
            let v: Vec<i64> = v.iter().map(|&l| l as i64).collect();
            Tensor::<1, Int>::from_data(TensorData::new(v, [3]), &device)
        };
        let mixed = cross_entropy(logits.clone(), int(&labels), 0.0) * lambda
            + cross_entropy(logits.clone(), int(&partner), 0.0) * (1.0 - lambda);
        let got = mixed.into_data().iter::<f64>().next().expect("scalar");
        // Soft-target cross-entropy by hand.
        let rows = logits.into_data().iter::<f64>().collect::<Vec<_>>();
        let mut want = 0.0;
        for (i, row) in rows.chunks(3).enumerate() {
            let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            let mut target = [0.0f64; 3];
            target[labels[i]] += lambda;
            target[partner[i]] += 1.0 - lambda;
            want -= (0..3).map(|c| target[c] * (row[c] - lse)).sum::<f64>();
        }
        want /= 3.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn mixup_lambda_depends_only_on_seed_epoch_and_sample() {
        let l = mixup_lambda(0.2, 1, 3, 17);
        assert!((0.0..=1.0).contains(&l));
        assert_eq!(l, mixup_lambda(0.2, 1, 3, 17));
        let others = [
            mixup_lambda(0.2, 2, 3, 17),
            mixup_lambda(0.2, 1, 4, 17),
            mixup_lambda(0.2, 1, 3, 18),
        ];
        assert!(others.iter().all(|&o| o != l), "{l} {others:?}");
    }

    /// The host squares are flex's `powi_scalar(2)`, and their sum its sum, to the bit, at
    /// sizes below and above the threaded threshold and for a non-contiguous gradient.
    #[test]
    fn host_squares_keep_the_norm_bits() {
        let device = Device::flex();
        for &n in &[1usize, 7, 1000, PARALLEL_MIN + 3, 3 * PARALLEL_MIN + 17] {
            let v = clipstock_model::model::Init::new(n as u64).normal_vec(n, 0.3);
            let t = Tensor::<1>::from_data(TensorData::new(v, [n]), &device);
            let want = t.clone().powi_scalar(2).sum().into_data();
            let got = squares(t).sum().into_data();
            let bits = |d: TensorData| d.iter::<f32>().map(f32::to_bits).collect::<Vec<_>>();
            assert_eq!(bits(got), bits(want), "{n} elements");
        }
        let v = clipstock_model::model::Init::new(9).normal_vec(300 * 400, 1.0);
        let t = Tensor::<2>::from_data(TensorData::new(v, [300, 400]), &device).transpose();
        let bits = |d: TensorData| d.iter::<f32>().map(f32::to_bits).collect::<Vec<_>>();
        let want = bits(t.clone().powi_scalar(2).sum().into_data());
        assert_eq!(bits(squares(t).sum().into_data()), want, "transposed");
    }

    /// The host factor is the device factor, bit for bit, over norms below, at and above the
    /// limit.
    #[test]
    fn the_host_clip_factor_is_the_device_factor() {
        let device = Device::flex();
        for &n in &[
            0.0f32, 1e-7, 0.3, 0.999_999, 1.0, 1.000_001, 1.7, 12.345, 3.0e4,
        ] {
            for &max in &[1.0f64, 0.5, 2.0] {
                let t = Tensor::<1>::from_data(TensorData::new(vec![n], [1]), &device);
                let dev = (t + 1e-6).recip().mul_scalar(max).clamp_max(1.0);
                let dev: Vec<f32> = dev.into_data().try_into_vec().expect("f32");
                assert_eq!(
                    dev[0].to_bits(),
                    clip_factor(n, max).to_bits(),
                    "norm {n}, max {max}"
                );
            }
        }
    }

    #[test]
    fn clipping_matches_clip_grad_norm() {
        use clipstock_model::model::{ClipLinear, ParamSource};
        let device = Device::flex().autodiff();
        let mut src = ParamSource::random(1, &device);
        let lin = ClipLinear::new(4, 3, &mut src, "head");
        // d(3·Σw + 2·Σb)/dw = 3 and /db = 2: norm = sqrt(9·12 + 4·3) = sqrt(120).
        let grads_of = || {
            let loss = lin.weight.val().sum() * 3.0 + lin.bias.val().sum() * 2.0;
            GradientsParams::from_grads(loss.backward(), &lin)
        };
        let grads = grads_of();
        let norm = grad_norm_tensor(&lin, &grads).expect("grads");
        let n = norm.clone().into_data().iter::<f64>().next().expect("norm");
        assert!((n - 120f64.sqrt()).abs() < 1e-5, "{n}");
        let read = |g: &GradientsParams| {
            let w = g
                .get::<2>(lin.weight.id)
                .expect("w")
                .into_data()
                .iter::<f64>()
                .next();
            let b = g
                .get::<1>(lin.bias.id)
                .expect("b")
                .into_data()
                .iter::<f64>()
                .next();
            (w.expect("w"), b.expect("b"))
        };
        // Above the limit: scaled by max / (norm + 1e-6).
        let mut clipped = grads_of();
        clip_grads_on_device(&lin, &mut clipped, &norm, 1.0);
        let f = 1.0 / (120f64.sqrt() + 1e-6);
        let (w, b) = read(&clipped);
        assert!(
            (w - 3.0 * f).abs() < 1e-6 && (b - 2.0 * f).abs() < 1e-6,
            "{w} {b}"
        );
        // Below the limit: untouched, bit for bit.
        let mut kept = grads_of();
        clip_grads_on_device(&lin, &mut kept, &norm, 100.0);
        assert_eq!(read(&kept), (3.0, 2.0));
    }
}
