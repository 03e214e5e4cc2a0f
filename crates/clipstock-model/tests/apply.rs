//! The periodic-merge write-back: merged tensors go into a run's module without disturbing its
//! parameter ids, so that run's optimizer state (AdamW moments) keeps applying to it.

use burn::module::list_param_ids;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};

use clipstock_model::load::{apply_state, module_state};
use clipstock_model::model::{ImageClassifier, Init};
use clipstock_model::{BurnDevice, ClipArch, DeviceSpec, HostTensor, StateDict};

fn tiny_arch() -> ClipArch {
    ClipArch::tiny()
}

fn classifier(seed: u64, device: &Device) -> ImageClassifier {
    ImageClassifier::random(&tiny_arch(), 3, seed, device)
}

fn batch(device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
    let x = Init::new(3).normal_vec(2 * 3 * 8 * 8, 1.0);
    (
        Tensor::from_data(TensorData::new(x, [2, 3, 8, 8]), device),
        Tensor::from_data(TensorData::new(vec![0i64, 2], [2]), device),
    )
}

fn step(
    model: ImageClassifier,
    optim: &mut burn::optim::ModuleOptimizer,
    device: &Device,
) -> ImageClassifier {
    let (x, y) = batch(device);
    let logp = log_softmax(model.forward(x), 1);
    let loss = logp.gather(1, y.reshape([2, 1])).mean().neg();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optim.step(1e-2, model, grads)
}

fn average(a: &StateDict, b: &StateDict) -> StateDict {
    let mut out = StateDict::new();
    for (name, ta) in a.iter() {
        let tb = b.get(name).expect("same keys");
        let data = ta
            .data
            .iter()
            .zip(&tb.data)
            .map(|(x, y)| 0.5 * (x + y))
            .collect();
        out.insert(name, HostTensor::new(ta.shape.clone(), ta.dtype, data));
    }
    out
}

#[test]
fn merged_weights_keep_param_ids_and_optimizer_state() {
    let device = DeviceSpec::Flex.autodiff_device().expect("flex");
    let adamw = AdamWConfig::new().with_epsilon(1e-8).with_weight_decay(0.1);
    let (mut opt_a, mut opt_b) = (adamw.init(), adamw.init());
    let a = step(classifier(1, &device), &mut opt_a, &device);
    let b = step(classifier(2, &device), &mut opt_b, &device);
    let ids_b = list_param_ids(&b);

    let merged = average(&module_state(&a), &module_state(&b));
    let b = apply_state(b, &merged, "run b").expect("apply");
    assert_eq!(list_param_ids(&b), ids_b, "run b keeps its parameter ids");
    assert_ne!(
        list_param_ids(&b),
        list_param_ids(&a),
        "and never takes run a's"
    );
    let back = module_state(&b);
    for (name, t) in merged.iter() {
        assert_eq!(back.get(name).map(|x| &x.data), Some(&t.data), "{name}");
    }

    // The same merged weights stepped by run b's optimizer (with its moments) and by a fresh
    // one must differ: run b's state is still attached to its parameters.
    let fresh_copy = apply_state(classifier(9, &device), &merged, "copy").expect("apply");
    let with_state = module_state(&step(b, &mut opt_b, &device));
    let without = module_state(&step(fresh_copy, &mut adamw.init(), &device));
    let w = "classification_head.weight";
    let diff: f32 = with_state
        .get(w)
        .expect("w")
        .data
        .iter()
        .zip(&without.get(w).expect("w").data)
        .map(|(x, y)| (x - y).abs())
        .sum();
    assert!(diff > 1e-6, "optimizer state was lost (diff {diff})");
}

#[test]
fn apply_state_rejects_missing_and_misshaped_tensors() {
    let device = DeviceSpec::Flex.device().expect("flex");
    let c = classifier(1, &device);
    let mut state = module_state(&c);
    state.remove("classification_head.bias");
    let err = apply_state(c, &state, "run a")
        .expect_err("missing")
        .to_string();
    assert!(
        err.contains("run a") && err.contains("classification_head.bias"),
        "{err}"
    );
}
