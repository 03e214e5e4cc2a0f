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

/// The global L2 norm of all gradients as a one-element tensor on their device: no read-back,
/// so a step queues all its work without waiting for the device (runs on several GPUs overlap).
pub fn grad_norm_tensor<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut v = SquaredNorm { grads, total: None };
    module.visit(&mut v);
    v.total.map(Tensor::sqrt)
}

/// PyTorch's `clip_grad_norm_` on the device: every gradient times
/// `min(1, max_norm / (norm + 1e-6))` (exactly 1 when the norm is below the limit).
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
        factor,
        ids: Vec::new(),
    };
    module.visit(&mut v);
}

struct ScaleBy<'a> {
    grads: &'a mut GradientsParams,
    factor: Tensor<1>,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for ScaleBy<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.ids.contains(&param.id) {
            return;
        }
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let f = self.factor.clone().reshape([1usize; D]);
            self.grads.register(param.id, g.mul(f));
            self.ids.push(param.id);
        }
    }
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
