//! Mixed precision: under `Autocast` the logits stay close to f32's, the parameters' gradients
//! come back as f32 and point the same way, and parameters never change dtype. (The f32 path
//! itself is checked against open_clip by the parity tests.)

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};

use clipstock_model::ClipArch;
use clipstock_model::model::{Autocast, ImageClassifier, Init};

fn tiny_classifier(device: &Device) -> ImageClassifier {
    // Two blocks of two heads on 16×16 images: enough depth for precision to matter.
    let mut arch = ClipArch::tiny();
    arch.embed_dim = 16;
    let v = &mut arch.vision;
    (v.image_size, v.layers, v.heads, v.mlp_width) = (16, 2, 2, 128);
    ImageClassifier::random(&arch, 5, 7, device)
}

fn images(device: &Device) -> Tensor<4> {
    let x = Init::new(11).normal_vec(4 * 3 * 16 * 16, 1.0);
    Tensor::from_data(TensorData::new(x, [4, 3, 16, 16]), device)
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

#[test]
fn reduced_precision_logits_are_f32_and_close() {
    assert_eq!(Autocast::to(FloatDType::F32), Autocast::OFF);
    let device = Device::flex();
    let m = tiny_classifier(&device);
    let full = values(m.forward(images(&device)));
    // 8 (bf16) and 11 (f16) mantissa bits over two blocks: errors of a few 1e-3 relative to the
    // logits' range are expected; a wrong cast (or none) would be far off or exactly equal.
    for (dtype, tol) in [(FloatDType::BF16, 0.03), (FloatDType::F16, 0.005)] {
        let out = m.forward_with(images(&device), Autocast::to(dtype));
        assert_eq!(
            out.dtype(),
            DType::F32,
            "{dtype:?}: logits must come back as f32"
        );
        let low = values(out);
        let range = full.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = full
            .iter()
            .zip(&low)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(
            worst > 0.0,
            "{dtype:?}: identical to f32, so nothing ran reduced"
        );
        assert!(
            worst <= tol * range,
            "{dtype:?}: max |Δ| {worst} vs logit range {range}"
        );
    }
}

/// Every parameter's gradient, flattened, with its dtype.
struct Collect<'a> {
    grads: &'a GradientsParams,
    out: Vec<(DType, Vec<f32>)>,
    params: Vec<DType>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.params.push(param.val().dtype());
        if let Some(g) = self.grads.get::<D>(param.id) {
            let dtype = g.dtype();
            self.out
                .push((dtype, g.into_data().iter::<f32>().collect()));
        }
    }
}

fn grads_under(ac: Autocast) -> (Vec<(DType, Vec<f32>)>, Vec<DType>) {
    let device = Device::flex().autodiff();
    let m = tiny_classifier(&device);
    let logp = log_softmax(m.forward_with(images(&device), ac), 1);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 4], [4]), &device);
    let loss = logp.gather(1, y.reshape([4, 1])).mean().neg();
    let grads = GradientsParams::from_grads(loss.backward(), &m);
    let mut c = Collect {
        grads: &grads,
        out: Vec::new(),
        params: Vec::new(),
    };
    m.visit(&mut c);
    (c.out, c.params)
}

#[test]
fn gradients_reach_the_f32_parameters_as_f32() {
    let (full, _) = grads_under(Autocast::OFF);
    for dtype in [FloatDType::BF16, FloatDType::F16] {
        let (low, params) = grads_under(Autocast::to(dtype));
        assert!(params.iter().all(|d| *d == DType::F32), "{params:?}");
        assert_eq!(
            low.len(),
            full.len(),
            "{dtype:?}: a parameter lost its gradient"
        );
        for ((d, g), (_, f)) in low.iter().zip(&full) {
            assert_eq!(*d, DType::F32);
            let dot: f64 = g
                .iter()
                .zip(f)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let n = |v: &[f32]| v.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
            let (ng, nf) = (n(g), n(f));
            if nf == 0.0 {
                continue;
            }
            let cos = dot / (ng * nf);
            assert!(cos > 0.999, "{dtype:?}: gradient cosine {cos}");
        }
    }
}
