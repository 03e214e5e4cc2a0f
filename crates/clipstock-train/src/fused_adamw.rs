//! AdamW as one pass per parameter tensor on the CPU backends.
//!
//! burn-optim 0.22.1's AdamW is about fifteen tensor operations per parameter (moments,
//! bias corrections, square root, decay, update), and on flex each allocating element-wise op is
//! one single-threaded pass over memory: for ViT-B/32's 88M parameters that was ~12% of a
//! batch-8 step (docs/PERFORMANCE.md). Here, on flex, the parameter, its gradient
//! and both moments are taken to host vectors, updated in one multi-threaded loop, and handed
//! back; on GPU backends the step is burn's own.
//!
//! The per-element arithmetic is burn's, operation for operation in f32 (scalars rounded to f32
//! as flex's `scalar_op` rounds them, no fused multiply-add), so results are bit-identical to
//! burn's AdamW; the state type is burn's `AdamWState`, so checkpoints and
//! `merge.optimizer_state = "average"` see the same records as before.

use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::prelude::*;
use burn::tensor::DType as BurnDType;
#[cfg(test)]
use std::sync::atomic::{AtomicUsize, Ordering};

/// Below this many elements a tensor is updated on the calling thread (a thread costs more).
const PARALLEL_MIN: usize = 1 << 16;

thread_local! {
    /// The factor every gradient is multiplied by inside the update, set around one
    /// optimizer step by [`with_grad_scale`]. burn's `Optimizer::step` has no per-step
    /// argument for it, and `ModuleOptimizer` steps every parameter on the calling thread.
    static GRAD_SCALE: std::cell::Cell<Option<f32>> = const { std::cell::Cell::new(None) };
}

/// Runs `step` (a `ModuleOptimizer::step` of a FusedAdamW) with every gradient multiplied by
/// `factor` first: the global-norm clipping factor rides in AdamW's own pass instead of a
/// pass of its own over all the gradients. `g * factor` is computed in f32, as
/// `clip_grads_on_device`'s multiplication by its one-element factor is.
pub fn with_grad_scale<R>(factor: f32, step: impl FnOnce() -> R) -> R {
    let previous = GRAD_SCALE.replace(Some(factor));
    let out = step();
    GRAD_SCALE.set(previous);
    out
}

#[derive(Clone)]
pub struct FusedAdamW {
    /// burn's AdamW with the same settings: the step on devices without a host path.
    inner: AdamW,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
}

impl FusedAdamW {
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> Self {
        let inner = AdamWConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay)
            .build();
        FusedAdamW {
            inner,
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        }
    }

    /// The scalars of one step, rounded as burn rounds them.
    fn scalars(&self, lr: LearningRate, time: usize, grad_scale: Option<f32>) -> Scalars {
        let time = time as i32;
        let decay_rate = lr * (self.weight_decay as f64);
        Scalars {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            factor_1: 1.0 - self.beta_1,
            factor_2: 1.0 - self.beta_2,
            correction_1: 1f32 - self.beta_1.powi(time),
            correction_2: 1f32 - self.beta_2.powi(time),
            epsilon: self.epsilon,
            decay: (decay_rate != 0.0).then_some((1.0 - decay_rate) as f32),
            lr: lr as f32,
            grad_scale,
        }
    }
}

#[derive(Clone, Copy)]
struct Scalars {
    beta_1: f32,
    beta_2: f32,
    factor_1: f32,
    factor_2: f32,
    correction_1: f32,
    correction_2: f32,
    epsilon: f32,
    decay: Option<f32>,
    lr: f32,
    grad_scale: Option<f32>,
}

/// One element of burn's AdamW, in its order of operations. `first`: no state yet (the moments
/// start from the gradient alone, as burn initialises them).
#[inline(always)]
fn update(p: &mut f32, g: f32, m: &mut f32, v: &mut f32, s: &Scalars, first: bool) {
    let g = match s.grad_scale {
        Some(f) => g * f,
        None => g,
    };
    if first {
        *m = g * s.factor_1;
        *v = (g * g) * s.factor_2;
    } else {
        *m = *m * s.beta_1 + g * s.factor_1;
        *v = *v * s.beta_2 + (g * g) * s.factor_2;
    }
    let m_hat = *m / s.correction_1;
    let v_hat = *v / s.correction_2;
    let delta = m_hat / (v_hat.sqrt() + s.epsilon);
    let decayed = match s.decay {
        Some(d) => *p * d,
        None => *p,
    };
    *p = decayed - delta * s.lr;
}

fn update_slices(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &Scalars, first: bool) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        update(p, g, m, v, s, first);
    }
}

/// The update over whole tensors, split into one contiguous chunk per core.
fn update_all(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: &Scalars, first: bool) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads == 1 || p.len() < PARALLEL_MIN {
        update_slices(p, g, m, v, s, first);
        return;
    }
    let chunk = p.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts = p
            .chunks_mut(chunk)
            .zip(g.chunks(chunk))
            .zip(m.chunks_mut(chunk))
            .zip(v.chunks_mut(chunk));
        for (((p, g), m), v) in parts {
            scope.spawn(move || update_slices(p, g, m, v, s, first));
        }
    });
}

/// Whether the one-pass update applies: flex, the default CPU backend. ndarray (kept for
/// comparison, deprecated by burn) runs burn's step.
fn is_host(device: &Device) -> bool {
    *device == Device::flex()
}

/// The tensor's f32 values, or its data untouched when they are not f32.
fn host_data<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, TensorData> {
    let data = t.into_data();
    if data.as_slice::<f32>().is_err() {
        return Err(data);
    }
    // Cannot fail: `as_slice` has just checked the element type `try_into_vec` checks.
    data.try_into_vec::<f32>()
        .map_err(|_| TensorData::new(Vec::<f32>::new(), [0]))
}

/// Tensors updated by the one-pass path (tests check that the trainer's steps take it).
#[cfg(test)]
static FUSED_TENSORS: AtomicUsize = AtomicUsize::new(0);

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let device = tensor.device();
        let usable = is_host(&device)
            && tensor.dtype() == BurnDType::F32
            && grad.dtype() == BurnDType::F32
            && state.as_ref().is_none_or(|s| {
                s.momentum.max_moment_2.is_none()
                    && s.momentum.moment_1.dtype() == BurnDType::F32
                    && s.momentum.moment_2.dtype() == BurnDType::F32
            });
        let grad_scale = GRAD_SCALE.get();
        if !usable {
            let grad = match grad_scale {
                Some(f) => grad.mul_scalar(f),
                None => grad,
            };
            return self.inner.step(lr, tensor, grad, state);
        }
        let shape = tensor.shape();
        let (time, first, moments) = match state {
            Some(s) => (
                s.momentum.time + 1,
                false,
                Some((s.momentum.moment_1, s.momentum.moment_2)),
            ),
            None => (1, true, None),
        };
        let n = shape.num_elements();
        // Consumed, not cloned: a tensor whose storage nobody else holds leaves flex as its own
        // buffer and comes back the same way, with no copy (measured: 11M floats in < 1 ms).
        let mut p = host_data(tensor);
        let g = host_data(grad);
        let (mut m, mut v) = match moments {
            Some((m, v)) => (host_data(m), host_data(v)),
            None => (Ok(vec![0.0; n]), Ok(vec![0.0; n])),
        };
        let back = |x: Result<Vec<f32>, TensorData>| match x {
            Ok(x) => Tensor::<D>::from_data(TensorData::new(x, shape.clone()), &device),
            Err(d) => Tensor::<D>::from_data(d, &device),
        };
        let (Ok(p_host), Ok(g_host), Ok(m_host), Ok(v_host)) = (&mut p, &g, &mut m, &mut v) else {
            // Not f32 after all (the dtype check above makes this unreachable): burn's step,
            // on the tensors and the state as they were.
            let state = (!first).then(|| AdamWState {
                momentum: AdaptiveMomentumState {
                    time: time - 1,
                    moment_1: back(m),
                    moment_2: back(v),
                    max_moment_2: None,
                },
            });
            let grad = match grad_scale {
                Some(f) => back(g).mul_scalar(f),
                None => back(g),
            };
            return self.inner.step(lr, back(p), grad, state);
        };
        let s = self.scalars(lr, time, grad_scale);
        update_all(p_host, g_host, m_host, v_host, &s, first);
        #[cfg(test)]
        FUSED_TENSORS.fetch_add(1, Ordering::Relaxed);
        drop(g);
        let state = AdamWState {
            momentum: AdaptiveMomentumState {
                time,
                moment_1: back(m),
                moment_2: back(v),
                max_moment_2: None,
            },
        };
        (back(p), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <AdamW as Optimizer>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(v: &[f32], device: &Device) -> Tensor<2> {
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), [2, v.len() / 2]), device)
    }

    fn values(t: Tensor<2>) -> Vec<u32> {
        let v: Vec<f32> = t.into_data().try_into_vec().expect("f32");
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Three steps from no state, with weight decay, on awkward values: every bit as burn's.
    #[test]
    fn matches_burns_adamw_bit_for_bit() {
        let device = Device::flex();
        let n = 2 * (PARALLEL_MIN / 2 + 37); // takes the threaded path
        let mut rng = clipstock_tensors::SplitMix64(7);
        let vals = |rng: &mut clipstock_tensors::SplitMix64, scale: f32| -> Vec<f32> {
            (0..n).map(|_| (rng.range(-1.0, 1.0)) * scale).collect()
        };
        let params = vals(&mut rng, 0.3);
        let fused = FusedAdamW::new(0.9, 0.999, 1e-8, 0.1);
        let burn = fused.inner.clone();
        let (mut a, mut b) = (tensor(&params, &device), tensor(&params, &device));
        let (mut sa, mut sb) = (None, None);
        for (step, lr) in [3e-4, 1e-3, 2.5e-5].into_iter().enumerate() {
            let grad = vals(&mut rng, if step == 1 { 1e-6 } else { 4.0 });
            let (na, nsa) = fused.step(lr, a, tensor(&grad, &device), sa);
            let (nb, nsb) = burn.step(lr, b, tensor(&grad, &device), sb);
            assert_eq!(
                values(na.clone()),
                values(nb.clone()),
                "parameters, step {step}"
            );
            let (ma, mb) = (nsa.clone().expect("state"), nsb.clone().expect("state"));
            assert_eq!(ma.momentum.time, mb.momentum.time);
            assert_eq!(
                values(ma.momentum.moment_1),
                values(mb.momentum.moment_1),
                "first moment, step {step}"
            );
            assert_eq!(
                values(ma.momentum.moment_2),
                values(mb.momentum.moment_2),
                "second moment, step {step}"
            );
            (a, b, sa, sb) = (na, nb, nsa, nsb);
        }
    }

    /// The trainer's optimizer (`session::adamw`) on a module trained under autodiff on flex
    /// takes the one-pass path for every parameter: the comparison above would otherwise hold
    /// trivially, burn against burn.
    #[test]
    fn the_trainers_steps_on_flex_take_the_one_pass_path() {
        use burn::optim::GradientsParams;
        use clipstock_model::model::{ClipLinear, ParamSource};
        let device = Device::flex().autodiff();
        let mut src = ParamSource::random(1, &device);
        let lin = ClipLinear::new(4, 3, &mut src, "head");
        let mut optim = crate::session::adamw(&clipstock_config::OptimSection::default());
        let before = FUSED_TENSORS.load(Ordering::Relaxed);
        let mut lin = lin;
        for _ in 0..2 {
            let loss = lin.weight.val().sum() * 3.0 + lin.bias.val().sum() * 2.0;
            let grads = GradientsParams::from_grads(loss.backward(), &lin);
            lin = optim.step(1e-3, lin, grads);
        }
        assert!(
            FUSED_TENSORS.load(Ordering::Relaxed) >= before + 4,
            "weight and bias, twice"
        );
    }

    /// A gradient scale is `g * f` in f32 before burn's arithmetic.
    #[test]
    fn a_gradient_scale_is_the_update_of_the_scaled_gradient() {
        let device = Device::flex();
        let n = 2 * (PARALLEL_MIN / 2 + 11);
        let mut rng = clipstock_tensors::SplitMix64(3);
        let p: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0)).collect();
        let g: Vec<f32> = (0..n).map(|_| rng.range(-5.0, 5.0)).collect();
        let f = 0.123_456_79f32;
        let scaled: Vec<f32> = g.iter().map(|x| x * f).collect();
        let fused = FusedAdamW::new(0.9, 0.999, 1e-8, 0.1);
        let (x, sx) = with_grad_scale(f, || {
            fused.step(1e-3, tensor(&p, &device), tensor(&g, &device), None)
        });
        let (y, sy) = fused
            .inner
            .step(1e-3, tensor(&p, &device), tensor(&scaled, &device), None);
        assert_eq!(values(x), values(y));
        let (mx, my) = (sx.expect("state"), sy.expect("state"));
        assert_eq!(values(mx.momentum.moment_2), values(my.momentum.moment_2));
        // The scale ends with the call.
        assert_eq!(GRAD_SCALE.get(), None);
    }

    #[test]
    fn without_weight_decay_too() {
        let device = Device::flex();
        let fused = FusedAdamW::new(0.9, 0.98, 1e-6, 0.0);
        let p = [0.5, -0.25, 1e-3, 7.0];
        let g = [1.0, -2.0, 0.0, 1e-4];
        let (x, _) = fused.step(0.01, tensor(&p, &device), tensor(&g, &device), None);
        let (y, _) = fused
            .inner
            .step(0.01, tensor(&p, &device), tensor(&g, &device), None);
        assert_eq!(values(x), values(y));
    }
}
