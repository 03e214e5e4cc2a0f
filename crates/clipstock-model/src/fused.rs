//! QuickGELU (`x·σ(1.702x)`) as one backend operation on flex, with its own backward pass.
//!
//! burn runs the activation as three recorded operations (a scalar multiply, the sigmoid, the
//! product), each a single-threaded flex pass into a fresh buffer, and their backward as five
//! more. Here the forward is one threaded pass and the backward another, registered through
//! burn's `#[backend_extension]` with a hand-written `Backward`. Every element goes through
//! exactly the f32 operations burn's decomposition performs, in the same order, so values and
//! gradients keep their bits (the tests below compare both with burn's, and the quickstart's
//! exports are unchanged). The graph keeps only the input, where burn's kept the input, the
//! scaled input and the sigmoid.
//!
//! Other backends never reach this module: the model composes burn's operations for them.

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ActivationOps, FloatTensorOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Flex, backend_extension};
use burn::tensor::{DType, TensorData};

/// The factor in QuickGELU, as f32 (what flex's scalar multiply rounds 1.702 to).
const ALPHA: f32 = 1.702;

/// Below this many elements a pass runs on the calling thread (a thread costs more).
pub const PARALLEL_MIN: usize = 1 << 16;

#[backend_extension(Flex, Autodiff)]
pub trait ClipOps: Backend {
    /// `x·σ(1.702x)`, elementwise.
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl ClipOps for Flex {
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return composed(x);
        }
        let mut x = x;
        let n = x.layout().num_elements();
        // In place when nothing else holds the buffer and it is exactly the tensor.
        if x.layout().contiguous_offsets() == Some((0, n))
            && let Some(v) = x.try_storage_mut::<f32>()
            && v.len() == n
        {
            map_in_place(v, value);
            return x;
        }
        let x = contiguous(&x);
        let src = x.as_slice::<f32>().unwrap_or_default();
        let mut out = vec![0.0f32; src.len()];
        zip_in_place(src, &mut out, |x, _| value(x));
        FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
    }
}

impl<C: CheckpointStrategy> ClipOps for Autodiff<Flex, C> {
    fn quick_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct QuickGeluBackward;

        impl Backward<Flex, 1> for QuickGeluBackward {
            /// The input; the sigmoid is recomputed from it, as burn's own sigmoid does.
            type State = FlexTensor;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [parent] = ops.parents;
                let grad = grads.consume::<Flex>(&ops.node);
                if let Some(parent) = parent {
                    grads.register::<Flex>(parent.id, backward(&ops.state, grad));
                }
            }
        }

        match QuickGeluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let input = x.into_primitive();
                // The state shares the input's buffer, so the forward writes a new one.
                let output = Flex::quick_gelu(input.clone());
                prep.finish(input, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::quick_gelu(x.into_primitive())),
        }
    }
}

/// The input's gradient, written over the upstream gradient's buffer when it is the only
/// holder (it usually is: the graph hands it over).
fn backward(x: &FlexTensor, grad: FlexTensor) -> FlexTensor {
    if x.dtype() != DType::F32
        || grad.dtype() != DType::F32
        || x.layout().shape() != grad.layout().shape()
    {
        return composed_backward(x.clone(), grad);
    }
    let x = contiguous(x);
    let src = x.as_slice::<f32>().unwrap_or_default();
    let mut grad = grad;
    let n = grad.layout().num_elements();
    if grad.layout().contiguous_offsets() == Some((0, n))
        && let Some(g) = grad.try_storage_mut::<f32>()
        && g.len() == n
    {
        zip_in_place(src, g, gradient);
        return grad;
    }
    let grad = contiguous(&grad);
    let mut out = grad.as_slice::<f32>().unwrap_or_default().to_vec();
    zip_in_place(src, &mut out, gradient);
    FlexTensor::from_data(TensorData::new(out, x.layout().shape().clone()))
}

/// burn's backward of the three operations, for what the fused loop does not handle.
fn composed_backward(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
    let s = Flex::sigmoid(Flex::float_mul_scalar(x.clone(), ALPHA.into()));
    let direct = Flex::float_mul(grad.clone(), s.clone());
    let to_sigmoid = Flex::float_mul(grad, x);
    let through = Flex::float_mul_scalar(Flex::sigmoid_backward(s, to_sigmoid), ALPHA.into());
    Flex::float_add(through, direct)
}

/// burn's three operations, for a dtype the fused loop does not handle.
fn composed(x: FlexTensor) -> FlexTensor {
    let scaled = Flex::float_mul_scalar(x.clone(), ALPHA.into());
    Flex::float_mul(x, Flex::sigmoid(scaled))
}

/// flex's `sigmoid_f32`, operation for operation (both branches keep it from overflowing).
#[inline]
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// The forward value: `x * σ(x * 1.702)`, as burn's three passes round it.
#[inline]
fn value(x: f32) -> f32 {
    x * sigmoid(x * ALPHA)
}

/// The input's gradient for upstream gradient `g`, as burn's backward rounds it: the product's
/// two branches (`g·s` to `x`, `g·x` to `s`), the sigmoid's `g·s·(1−s)`, the scalar's `·1.702`,
/// and the sum of the two gradients that reach `x` (addition commutes, so the order in which
/// burn registers them does not matter).
#[inline]
fn gradient(x: f32, g: f32) -> f32 {
    let s = sigmoid(x * ALPHA);
    let direct = g * s;
    let through_sigmoid = (g * x) * s * (1.0 - s) * ALPHA;
    through_sigmoid + direct
}

fn threads_for(len: usize) -> usize {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if len < PARALLEL_MIN { 1 } else { threads }
}

/// `v[i] = f(v[i])` on the host, one chunk per core (also the trainer's squares for the norm).
pub fn map_in_place(v: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    let threads = threads_for(v.len());
    let pass = |part: &mut [f32]| part.iter_mut().for_each(|x| *x = f(*x));
    if threads == 1 {
        return pass(v);
    }
    let chunk = v.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for part in v.chunks_mut(chunk) {
            scope.spawn(|| pass(part));
        }
    });
}

/// `dst[i] = f(src[i], dst[i])`, one chunk per core.
fn zip_in_place(src: &[f32], dst: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    let threads = threads_for(dst.len());
    let pass = |s: &[f32], d: &mut [f32]| {
        for (d, &s) in d.iter_mut().zip(s) {
            *d = f(s, *d);
        }
    };
    if threads == 1 {
        return pass(src, dst);
    }
    let chunk = dst.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (s, d) in src.chunks(chunk).zip(dst.chunks_mut(chunk)) {
            scope.spawn(|| pass(s, d));
        }
    });
}

/// An f32 tensor's elements in logical order: borrowed when its layout is already that,
/// else a contiguous copy.
fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flex(v: Vec<f32>, shape: [usize; 2]) -> FlexTensor {
        FlexTensor::from_data(TensorData::new(v, shape))
    }

    fn bits(t: FlexTensor) -> Vec<u32> {
        let t = contiguous(&t);
        t.as_slice::<f32>()
            .unwrap_or_default()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// The fused backward against burn's five operations on the same primitives, with the
    /// upstream gradient's buffer owned (written in place) and shared (copied), threaded and
    /// not.
    #[test]
    fn backward_is_burns_composed_backward() {
        for n in [7usize, 1 << 17] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 97.0)
                .collect();
            let g: Vec<f32> = (0..n).map(|i| ((i * 31 % 17) as f32 - 8.0) / 5.0).collect();
            let x = flex(x, [1, n]);
            let want = bits(composed_backward(x.clone(), flex(g.clone(), [1, n])));
            assert_eq!(
                bits(backward(&x, flex(g.clone(), [1, n]))),
                want,
                "{n} owned"
            );
            let shared = flex(g, [1, n]);
            let keep = shared.clone();
            assert_eq!(bits(backward(&x, shared)), want, "{n} shared");
            drop(keep);
        }
    }
}
