//! Parity with open_clip and HF transformers on tiny random CLIPs. The fixtures and the script
//! that made them (`scripts/make_parity_fixtures.py`) are committed; nothing here needs Python.
//!
//! Every test runs on the flex CPU backend, and also on wgpu when `CLIPSTOCK_TEST_WGPU=1`
//! (CI sets it after installing Mesa's lavapipe, so the GPU code path runs on every commit).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use sha2::{Digest, Sha256};

use clipstock_model::load::{Checkpoint, classifier_state, export, module_state, with_dtypes_of};
use clipstock_model::zeroshot::{read_string_list, zeroshot_weights};
use clipstock_model::{BurnDevice, ClipArch, ClipTokenizer, DeviceSpec, Naming, StateDict};

/// f32 on a CPU backend. Features are O(1), so this is close to a relative bound too.
const CPU_TOL: f32 = 1e-4;
/// wgpu (lavapipe or a GPU) may reorder reductions and fuse multiply-adds; measured ~2e-6 on
/// lavapipe, so the same bound holds.
const WGPU_TOL: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn devices() -> Vec<(DeviceSpec, Device, f32)> {
    let mut out = vec![(
        DeviceSpec::Flex,
        DeviceSpec::Flex.device().expect("flex"),
        CPU_TOL,
    )];
    if std::env::var("CLIPSTOCK_TEST_WGPU").is_ok_and(|v| v == "1") {
        let spec = DeviceSpec::Wgpu(0);
        out.push((spec, spec.device().expect("wgpu compiled in"), WGPU_TOL));
    } else {
        eprintln!("note: wgpu parity skipped (set CLIPSTOCK_TEST_WGPU=1 to run it)");
    }
    // The adapter pinned to Vulkan: SPIR-V kernels, never a WGSL fallback. Opt-in twice
    // (feature and variable) because lavapipe crashes compiling them.
    if cfg!(feature = "vulkan") && std::env::var("CLIPSTOCK_TEST_VULKAN").is_ok_and(|v| v == "1") {
        let spec = DeviceSpec::Vulkan(0);
        out.push((spec, spec.device().expect("vulkan compiled in"), WGPU_TOL));
    }
    out
}

fn expected() -> StateDict {
    StateDict::read(&fixtures().join("parity_expected.safetensors")).expect("expected fixture")
}

fn tensor<'a>(sd: &'a StateDict, name: &str) -> &'a clipstock_model::HostTensor {
    sd.get(name)
        .unwrap_or_else(|| panic!("fixture tensor `{name}` missing"))
}

fn images(device: &Device) -> Tensor<4> {
    let e = expected();
    let t = tensor(&e, "images");
    let shape: [usize; 4] = t.shape.clone().try_into().expect("4-d images");
    Tensor::from_data(TensorData::new(t.data.clone(), shape), device)
}

fn prompts() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("parity_prompts.json")).expect("prompts");
    serde_json::from_str(&text).expect("prompts json")
}

fn string_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32 data")
}

/// Max abs difference, with both values printed at the worst index on failure.
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if d > worst || d.is_nan() {
            worst = d;
            at = i;
        }
    }
    eprintln!("{what}: max abs diff {worst:.3e} (tol {tol:.0e})");
    assert!(
        worst <= tol,
        "{what}: max abs diff {worst:.3e} > {tol:.0e} at {at}: got {} want {}",
        got[at],
        want[at]
    );
}

/// open_clip's token ids (int64; the float state-dict reader skips integer tensors).
fn expected_tokens() -> (Vec<i64>, [usize; 2]) {
    let bytes = std::fs::read(fixtures().join("parity_expected.safetensors")).expect("fixture");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let t = st.tensor("tokens").expect("tokens");
    assert_eq!(t.dtype(), safetensors::Dtype::I64);
    let ids = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    (ids, [t.shape()[0], t.shape()[1]])
}

fn tokens(device: &Device) -> Tensor<2, Int> {
    let (ids, shape) = expected_tokens();
    Tensor::from_data(TensorData::new(ids, shape), device)
}

fn check_tower(file: &str, prefix: &str) {
    let ckpt = Checkpoint::read(&fixtures().join(file)).expect("read checkpoint");
    let e = expected();
    for (spec, device, tol) in devices() {
        let model = ckpt.clip(&device).expect("build");
        let f = to_vec(model.encode_image(images(&device)));
        assert_close(
            &format!("{prefix} image features on {spec}"),
            &f,
            &tensor(&e, &format!("{prefix}.image_features")).data,
            tol,
        );
        let t = to_vec(model.encode_text(tokens(&device)).expect("text tower"));
        assert_close(
            &format!("{prefix} text features on {spec}"),
            &t,
            &tensor(&e, &format!("{prefix}.text_features")).data,
            tol,
        );
    }
}

#[test]
fn open_clip_features_match() {
    let ckpt = Checkpoint::read(&fixtures().join("openclip_tiny.safetensors")).expect("read");
    assert_eq!(ckpt.naming, Naming::OpenAi);
    assert_eq!(ckpt.arch.vision.heads, 2);
    check_tower("openclip_tiny.safetensors", "openclip");
}

#[test]
fn hf_features_match() {
    let ckpt = Checkpoint::read(&fixtures().join("hf_tiny.safetensors")).expect("read");
    assert_eq!(ckpt.naming, Naming::Hf);
    check_tower("hf_tiny.safetensors", "hf");
}

#[test]
fn model_soups_pickle_classifier_matches() {
    let ckpt = Checkpoint::read(&fixtures().join("soups_tiny.pt")).expect("read pickle");
    assert_eq!(ckpt.naming, Naming::ModelSoups);
    assert!(ckpt.has_head());
    let e = expected();
    for (spec, device, tol) in devices() {
        let classifier = ckpt.classifier(None, &device).expect("classifier");
        let f = to_vec(classifier.model.encode_image(images(&device)));
        assert_close(
            &format!("soups image features on {spec}"),
            &f,
            &tensor(&e, "soups.image_features").data,
            tol,
        );
        let logits = to_vec(classifier.forward(images(&device)));
        assert_close(
            &format!("soups logits on {spec}"),
            &logits,
            &tensor(&e, "soups.logits").data,
            tol,
        );
    }
}

#[test]
fn tokenizer_matches_open_clip() {
    let p = prompts();
    let texts = string_list(&p["prompts"]);
    let tok = ClipTokenizer::default();
    let (want, [n, ctx]) = expected_tokens();
    assert_eq!(n, texts.len());
    for (i, text) in texts.iter().enumerate() {
        let got = tok.encode(text);
        let row: Vec<u32> = want[i * ctx..(i + 1) * ctx]
            .iter()
            .map(|v| *v as u32)
            .collect();
        assert_eq!(got, row, "prompt {i}: {text:?}");
    }
}

#[test]
fn tokenizer_matches_open_clip_on_all_imagenet_prompts() {
    let p = prompts();
    let root = repo_root();
    let classes = read_string_list(&root.join("data/imagenet_classnames.json")).expect("classes");
    let templates =
        read_string_list(&root.join("data/openai_imagenet_templates.json")).expect("templates");
    let tok = ClipTokenizer::default();
    let mut hasher = Sha256::new();
    for c in &classes {
        for t in &templates {
            for id in tok.encode(&t.replacen("{}", c, 1)) {
                hasher.update((id as i32).to_le_bytes());
            }
        }
    }
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(got, p["tokens_all_sha256"].as_str().expect("hash"));
}

#[test]
fn zeroshot_head_matches_open_clip() {
    let p = prompts();
    let classes = string_list(&p["zeroshot_classes"]);
    let templates = read_string_list(&repo_root().join("data/openai_imagenet_templates.json"))
        .expect("templates");
    let ckpt = Checkpoint::read(&fixtures().join("openclip_tiny.safetensors")).expect("read");
    let e = expected();
    for (spec, device, tol) in devices() {
        let model = ckpt.clip(&device).expect("build");
        let w = zeroshot_weights(
            &model,
            &ClipTokenizer::default(),
            &classes,
            &templates,
            3,
            &device,
            |_| std::ops::ControlFlow::Continue(()),
        )
        .expect("head");
        // The head is 100 × unit vectors: compare at the scale of unit vectors.
        let want = &tensor(&e, "openclip.zeroshot_head").data;
        let got: Vec<f32> = w.iter().map(|v| v / 100.0).collect();
        let want: Vec<f32> = want.iter().map(|v| v / 100.0).collect();
        assert_close(&format!("zero-shot head on {spec}"), &got, &want, tol);
    }
}

#[test]
fn export_round_trips_byte_identical() {
    let src = fixtures().join("openclip_tiny.safetensors");
    let ckpt = Checkpoint::read(&src).expect("read");
    let device = DeviceSpec::Flex.device().expect("flex");
    let model = ckpt.clip(&device).expect("build");
    let state = with_dtypes_of(module_state(&model), &ckpt.state);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("again.safetensors");
    export(&state, Naming::OpenAi, None, &out).expect("export");

    let a = std::fs::read(&src).expect("src");
    let b = std::fs::read(&out).expect("out");
    let a = safetensors::SafeTensors::deserialize(&a).expect("a");
    let b = safetensors::SafeTensors::deserialize(&b).expect("b");
    let mut names = a.names();
    names.sort();
    let mut names_b = b.names();
    names_b.sort();
    assert_eq!(names, names_b, "same keys");
    for n in names {
        let (ta, tb) = (a.tensor(n).expect("a"), b.tensor(n).expect("b"));
        assert_eq!(ta.dtype(), tb.dtype(), "{n} dtype");
        assert_eq!(ta.shape(), tb.shape(), "{n} shape");
        assert!(ta.data() == tb.data(), "{n}: bytes differ");
    }
}

#[test]
fn hf_export_reimports_to_the_same_model() {
    let ckpt = Checkpoint::read(&fixtures().join("openclip_tiny.safetensors")).expect("read");
    let dir = tempfile::tempdir().expect("tempdir");
    for naming in [Naming::Hf, Naming::ModelSoups] {
        let out = dir.path().join(format!("{naming}.safetensors"));
        export(&ckpt.state, naming, None, &out).expect("export");
        let back = Checkpoint::read(&out).expect("reimport");
        assert_eq!(back.naming, naming);
        assert_eq!(back.arch, ckpt.arch);
        for (name, t) in ckpt.state.iter() {
            assert_eq!(back.state.get(name), Some(t), "{naming}: {name}");
        }
    }
}

#[test]
fn classifier_state_uses_model_soups_keys() {
    let ckpt = Checkpoint::read(&fixtures().join("soups_tiny.pt")).expect("read");
    let device = DeviceSpec::Flex.device().expect("flex");
    let c = ckpt.classifier(None, &device).expect("classifier");
    let state = clipstock_model::load::with_extras(classifier_state(&c), &ckpt.extras());
    assert!(
        ckpt.arch.text.is_none(),
        "model-soups drops the text transformer"
    );
    let soups = clipstock_model::naming::from_canonical(&state, Naming::ModelSoups).expect("names");
    let mut want: Vec<&str> = ckpt.state.names().collect();
    want.sort();
    let mut got: Vec<&str> = state.names().collect();
    got.sort();
    assert_eq!(got, want);
    assert!(soups.contains("model.visual.transformer.resblocks.0.attn.in_proj_weight"));
    assert!(soups.contains("classification_head.bias"));
}

fn shape_table(file: &str) -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join(file)).expect("shapes");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v.as_object().expect("object").clone()
}

fn shapes_of(v: &serde_json::Value) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = v
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, s)| {
            let shape = s
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect();
            (k.clone(), shape)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn preset_shapes_match_open_clip_tables() {
    let table = shape_table("shapes_openclip.json");
    for name in ["ViT-B-32", "ViT-B-16", "ViT-L-14"] {
        let want = shapes_of(&table[name]);
        let mut got = ClipArch::preset(name).expect("preset").expected_shapes();
        got.sort();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn preset_shapes_match_hf_tables() {
    let table = shape_table("shapes_hf.json");
    // The full tensors would be allocated by the renaming; B/32 is enough to cover every rule
    // (B/16 and L/14 differ only in sizes, which the open_clip table test covers).
    let arch = ClipArch::preset("ViT-B-32").expect("preset");
    let zeros = StateDict::zeros_like_shapes(&arch.expected_shapes());
    let hf = clipstock_model::naming::from_canonical(&zeros, Naming::Hf).expect("hf");
    let mut got: Vec<(String, Vec<usize>)> = hf
        .iter()
        .map(|(k, t)| (k.to_string(), t.shape.clone()))
        .collect();
    got.sort();
    let want: Vec<(String, Vec<usize>)> = shapes_of(&table["ViT-B-32"])
        .into_iter()
        .filter(|(k, _)| !k.ends_with("position_ids"))
        .collect();
    assert_eq!(got, want);
}
