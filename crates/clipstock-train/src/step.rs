//! One optimisation step's maths: cross-entropy with label smoothing and global-norm gradient
//! clipping (burn's own clipping is per tensor, PyTorch's `clip_grad_norm_` is global).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;

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
            let s = g.powi_scalar(2).sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.ids.contains(&param.id) {
            return;
        }
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
            self.ids.push(param.id);
        }
    }
}

/// The global L2 norm of all gradients of `module` (f64; NaN/inf when a gradient is).
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    let mut v = SquaredNorm { grads, total: None };
    module.visit(&mut v);
    match v.total {
        None => 0.0,
        Some(t) => {
            let sq = t.into_data().iter::<f64>().next().unwrap_or(f64::NAN);
            sq.sqrt()
        }
    }
}

/// Scales every gradient by `factor` (clipping: `max_norm / (norm + 1e-6)` when above).
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, factor: f64) {
    let mut v = Scale {
        grads,
        factor,
        ids: Vec::new(),
    };
    module.visit(&mut v);
}

/// PyTorch's `clip_grad_norm_` factor: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn clip_factor_only_shrinks() {
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert!((clip_factor(4.0, 1.0) - 0.25).abs() < 1e-6);
    }
}
