//! The run-file contract: defaults, round trip, overrides, and error messages that name the
//! file and the dotted key.

use std::path::{Path, PathBuf};

mod common;

use clipstock_config::{
    AfterMerge, Anchor, ConfigError, EVAL_SETS, HeadSource, KEYS, MergeMethod,
    OptimizerStatePolicy, Period, Precision, RandAugmentSpec, RunSpec, Schedule, from_str, load,
};
use common::MINIMAL;

/// The lead's quickstart, verbatim from the brief.
const QUICKSTART: &str = r#"
[run]
name = "quickstart"
seeds = [1, 2]
[model]
weights = "data/quickstart/tiny_clip.safetensors"
classnames = "data/quickstart/classnames.json"
templates = "data/quickstart/templates.json"
[data]
root = "target/quickstart-data"
class_dir = "data/quickstart"
generate = "quickstart"
[optim]
epochs = 3
batch_size = 32
lr = 1e-3
warmup_steps = 10
[merge]
period = "epoch"
[eval]
limit_per_set = 100
expect_published_sizes = false
"#;

const FILE: &str = "configs/test_run.toml";

fn parse(text: &str) -> Result<RunSpec, ConfigError> {
    from_str(text, Path::new(FILE), &[])
}

fn parse_with(text: &str, overrides: &[&str]) -> Result<RunSpec, ConfigError> {
    let overrides: Vec<String> = overrides.iter().map(|s| (*s).to_owned()).collect();
    from_str(text, Path::new(FILE), &overrides)
}

fn minimal() -> RunSpec {
    parse(MINIMAL).expect("the minimal file is valid")
}

/// `MINIMAL` plus `extra` appended (a new section, or keys of [data] when it starts bare).
fn with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}\n")
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(spec) => panic!("expected an error, got {spec:#?}"),
        Err(e) => e.to_string(),
    }
}

fn err_with(text: &str, overrides: &[&str]) -> String {
    match parse_with(text, overrides) {
        Ok(spec) => panic!("expected an error, got {spec:#?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(
            message.contains(part),
            "error message lacks {part:?}:\n{message}"
        );
    }
}

#[test]
fn defaults_are_the_spec_recipe() {
    let s = minimal();
    // run
    assert_eq!(s.run.output_dir, PathBuf::from("runs"));
    assert_eq!(s.run.device, "cpu");
    assert!(s.run.devices.is_empty());
    assert_eq!(s.run.log_every_steps, 10);
    assert_eq!(s.run.checkpoint_every_epochs, 1);
    // model
    assert_eq!(s.model.arch, None);
    assert_eq!(s.model.head, HeadSource::ZeroShot);
    assert_eq!(
        s.model.classnames,
        PathBuf::from("data/imagenet_classnames.json")
    );
    assert_eq!(
        s.model.templates,
        PathBuf::from("data/openai_imagenet_templates.json")
    );
    // data: RandomResizedCrop scale 0.9–1.0, torchvision's ratio, no flip (SPEC §4)
    assert_eq!(s.data.class_dir, None);
    assert_eq!(s.data.class_dir_or_default(), PathBuf::from("data"));
    assert_eq!(s.data.generate, None);
    assert_eq!(s.data.train_limit, None);
    assert_eq!(s.data.image_size, None);
    assert_eq!(s.data.workers, 0);
    assert_eq!(s.data.prefetch, 2);
    assert_eq!(s.data.augment.scale, [0.9, 1.0]);
    assert_eq!(s.data.augment.ratio, [0.75, 4.0 / 3.0]);
    assert!(!s.data.augment.hflip);
    // optim: AdamW 0.9/0.999, eps 1e-8, wd 0.1, lr 3e-5, batch 512, 10 epochs, 500 warm-up,
    // cosine, clip 1.0, no label smoothing (SPEC §4)
    assert_eq!(s.optim.epochs, 10);
    assert_eq!(s.optim.batch_size, 512);
    assert_eq!(s.optim.micro_batch_size, None);
    assert_eq!(s.optim.lr, 3e-5);
    assert_eq!(s.optim.betas, [0.9, 0.999]);
    assert_eq!(s.optim.eps, 1e-8);
    assert_eq!(s.optim.weight_decay, 0.1);
    assert_eq!(s.optim.warmup_steps, 500);
    assert_eq!(s.optim.schedule, Schedule::Cosine);
    assert_eq!(s.optim.grad_clip_norm, Some(1.0));
    assert_eq!(s.optim.label_smoothing, 0.0);
    assert_eq!(s.optim.precision, Precision::F32);
    assert_eq!(s.accumulation_steps(), 1);
    // merge: every epoch, anchored at w0, runs continue from wH (SPEC §2)
    assert_eq!(s.merge.method, MergeMethod::ModelStock);
    assert_eq!(s.merge.period, Period::Epoch);
    assert_eq!(s.merge.anchor, Anchor::Pretrained);
    assert_eq!(s.merge.optimizer_state, OptimizerStatePolicy::Keep);
    assert_eq!(s.merge.after_merge, AfterMerge::ResetRuns);
    assert!(!s.merge.clamp_t);
    // eval: all six sets (SPEC §5)
    assert_eq!(s.eval.sets, EVAL_SETS.to_vec());
    assert_eq!(s.eval.every_epochs, 1);
    assert_eq!(s.eval.limit_per_set, None);
    assert_eq!(s.eval.batch_size, 256);
    assert!(s.eval.zero_shot);
    assert!(s.eval.runs);
    assert!(!s.eval.objectnet_border_crop);
    assert!(s.eval.expect_published_sizes);
}

#[test]
fn round_trip_of_defaults() {
    let s = minimal();
    let text = s.to_toml();
    assert_eq!(parse(&text).expect("to_toml output loads"), s, "{text}");
}

#[test]
fn round_trip_of_every_non_default() {
    let text = r#"
[run]
name = "full.run-1"
output_dir = "/abs/runs"
seeds = [7, 8, 9]
device = "wgpu:1"
devices = ["cuda:0", "cuda:1", "cuda"]
log_every_steps = 1
checkpoint_every_epochs = 0

[model]
weights = "w.safetensors"
arch = "ViT-L-14"
head = { file = "head.safetensors" }
classnames = "c.json"
templates = "t.json"

[data]
root = "datasets"
class_dir = "classes"
generate = "quickstart"
train_limit = 1000
image_size = 336
workers = 3
prefetch = 4
augment = { scale = [0.08, 1.0], ratio = [0.5, 2.0], hflip = true }

[optim]
epochs = 4
batch_size = 256
micro_batch_size = 32
lr = 1e-5
betas = [0.8, 0.99]
eps = 1e-6
weight_decay = 0.0
warmup_steps = 0
schedule = "constant"
grad_clip_norm = "off"
label_smoothing = 0.1
precision = "bf16"

[merge]
method = "uniform"
period = { steps = 250 }
anchor = "previous_merge"
optimizer_state = "average"
after_merge = "evaluate_only"
clamp_t = true

[eval]
sets = ["imagenet_a", "imagenet"]
every_epochs = 0
limit_per_set = 10
batch_size = 8
zero_shot = false
runs = false
objectnet_border_crop = true
expect_published_sizes = false
"#;
    let s = parse(text).expect("valid");
    assert_eq!(s.model.head, HeadSource::File("head.safetensors".into()));
    assert_eq!(s.merge.period, Period::Steps(250));
    assert_eq!(s.optim.grad_clip_norm, None);
    assert_eq!(s.accumulation_steps(), 8);
    let again = s.to_toml();
    assert_eq!(parse(&again).expect("to_toml output loads"), s, "{again}");
}

#[test]
fn round_trip_through_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("resolved.toml");
    let s = parse_with(
        MINIMAL,
        &["merge.period={ epochs = 2 }", "model.head=checkpoint"],
    )
    .expect("valid");
    std::fs::write(&path, s.to_toml()).expect("write");
    assert_eq!(load(&path, &[]).expect("reload"), s);
}

#[test]
fn quickstart_example_is_accepted() {
    let s = parse(QUICKSTART).expect("the quickstart parses");
    assert_eq!(s.run.name, "quickstart");
    assert_eq!(s.data.class_dir, Some(PathBuf::from("data/quickstart")));
    assert_eq!(s.data.generate.as_deref(), Some("quickstart"));
    assert_eq!(s.optim.lr, 1e-3);
    assert_eq!(s.optim.batch_size, 32);
    assert_eq!(s.eval.limit_per_set, Some(100));
    assert!(!s.eval.expect_published_sizes);
    assert_eq!(s.run_dir(), PathBuf::from("runs/quickstart"));
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn shipped_configs_load() {
    for name in [
        "vit_b32_imagenet.toml",
        "vit_b16_imagenet.toml",
        "vit_l14_imagenet.toml",
    ] {
        let path = repo_root().join("configs").join(name);
        let s = load(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(s.run.seeds.len(), 2, "{name}");
        assert_eq!(s.optim.batch_size, 512, "{name}: the recipe's batch");
        assert_eq!(s.optim.lr, 3e-5, "{name}");
        let text = std::fs::read_to_string(&path).expect("read");
        // Every key is written out, so the file documents the whole schema.
        for key in KEYS {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            assert!(
                text.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{leaf} ="))
                        || l.trim_start().starts_with(&format!("# {leaf} ="))),
                "{name} does not mention `{key}`"
            );
        }
    }
    let quickstart = repo_root().join("configs/quickstart.toml");
    if quickstart.exists() {
        load(&quickstart, &[]).unwrap_or_else(|e| panic!("quickstart.toml: {e}"));
    }
    // The comparison configs: independent baselines and a held-out split, as compare needs.
    for name in ["quickstart_compare.toml", "vit_b32_imagenet_compare.toml"] {
        let s = load(&repo_root().join("configs").join(name), &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(s.baselines.independent_seeds.len() >= 2, "{name}");
        assert!(s.data.holdout_per_class.is_some(), "{name}");
    }
}

#[test]
fn shipped_configs_differ_by_model() {
    let b32 = load(&repo_root().join("configs/vit_b32_imagenet.toml"), &[]).expect("b32");
    let l14 = load(&repo_root().join("configs/vit_l14_imagenet.toml"), &[]).expect("l14");
    assert_eq!(b32.model.arch.as_deref(), Some("ViT-B-32"));
    assert_eq!(l14.model.arch.as_deref(), Some("ViT-L-14"));
    assert_eq!(l14.data.image_size, Some(224));
    assert!(l14.accumulation_steps() > b32.accumulation_steps());
}

#[test]
fn unknown_top_level_section() {
    let m = err(&format!("{MINIMAL}\n[optimizer]\nlr = 1e-5\n"));
    assert_contains(&m, &[FILE, "`optimizer`", "unknown key"]);
}

#[test]
fn unknown_key_nested() {
    let m = err(&with("[optim]\nlrr = 1e-5"));
    assert_contains(&m, &[FILE, "`optim.lrr`", "unknown key", "`lr`"]);
    let m = err(&with("[data.augment]\nflip = true"));
    assert_contains(&m, &[FILE, "`data.augment.flip`", "hflip"]);
}

#[test]
fn randaugment_is_off_by_default_and_parses_round_trips_and_checks_ranges() {
    assert_eq!(minimal().data.augment.randaugment, None);
    assert!(!minimal().to_toml().contains("randaugment"));
    let s = parse(&with("[data.augment]\nrandaugment = { n = 3, m = 30 }")).expect("valid");
    assert_eq!(
        s.data.augment.randaugment,
        Some(RandAugmentSpec { n: 3, m: 30 })
    );
    let text = s.to_toml();
    assert_eq!(parse(&text).expect("to_toml output loads"), s, "{text}");
    // An empty table is torchvision's RandAugment() defaults.
    let s = parse(&with("[data.augment.randaugment]")).expect("valid");
    assert_eq!(
        s.data.augment.randaugment,
        Some(RandAugmentSpec { n: 2, m: 9 })
    );
    let s = parse_with(MINIMAL, &["data.augment.randaugment={ m = 0 }"]).expect("valid");
    assert_eq!(
        s.data.augment.randaugment,
        Some(RandAugmentSpec { n: 2, m: 0 })
    );
    let m = err(&with("[data.augment]\nrandaugment = { n = 2, m = 31 }"));
    assert_contains(&m, &[FILE, "`data.augment.randaugment.m`", "31", "[0, 30]"]);
    let m = err(&with(
        "[data.augment]\nrandaugment = { n = 2, magnitude = 9 }",
    ));
    assert_contains(
        &m,
        &[FILE, "`data.augment.randaugment.magnitude`", "unknown key"],
    );
}

#[test]
fn unknown_key_error_has_line_and_column() {
    let m = err(&with("[optim]\nlrr = 1e-5"));
    let line = with("[optim]\nlrr = 1e-5")
        .lines()
        .position(|l| l.starts_with("lrr"))
        .expect("line")
        + 1;
    assert_contains(&m, &[&format!("{FILE}:{line}:1")]);
}

#[test]
fn wrong_type_names_key_and_expected_type() {
    let m = err(&with("[optim]\nlr = \"fast\""));
    assert_contains(&m, &[FILE, "`optim.lr`", "string", "f64"]);
    let m = err(&with("[optim]\nepochs = 2.5"));
    assert_contains(&m, &[FILE, "`optim.epochs`", "u64"]);
    let m = err(&with("[eval]\nzero_shot = \"yes\""));
    assert_contains(&m, &[FILE, "`eval.zero_shot`", "bool"]);
    let m = err(&with("[merge]\nmethod = \"soup\""));
    assert_contains(&m, &[FILE, "`merge.method`", "model_stock"]);
}

#[test]
fn missing_required_keys() {
    let m = err("[run]\nname = \"x\"\n[model]\nweights = \"w\"\n[data]\nroot = \"d\"\n");
    assert_contains(&m, &[FILE, "`run.seeds`", "missing"]);
    let m = err("[run]\nname = \"x\"\nseeds = [1, 2]\n[data]\nroot = \"d\"\n");
    assert_contains(&m, &[FILE, "`model`", "missing"]);
}

#[test]
fn syntax_error_names_file_and_line() {
    let m = err("[run\nname = 1\n");
    assert_contains(&m, &[FILE, "not valid TOML", "line 1"]);
}

#[test]
fn seeds_must_be_two_and_distinct() {
    let m = err(&MINIMAL.replace("seeds = [1, 2]", "seeds = [1]"));
    assert_contains(&m, &[FILE, "`run.seeds`", "[1]", "at least two"]);
    let m = err(&MINIMAL.replace("seeds = [1, 2]", "seeds = [3, 4, 3]"));
    assert_contains(&m, &[FILE, "`run.seeds`", "[3, 4, 3]", "distinct"]);
}

#[test]
fn micro_batch_must_divide_batch() {
    let m = err(&with("[optim]\nbatch_size = 512\nmicro_batch_size = 100"));
    assert_contains(
        &m,
        &[FILE, "`optim.micro_batch_size`", "100", "divisor", "512"],
    );
    let m = err(&with("[optim]\nbatch_size = 64\nmicro_batch_size = 128"));
    assert_contains(&m, &["`optim.micro_batch_size`"]);
    let s = parse(&with("[optim]\nbatch_size = 512\nmicro_batch_size = 64")).expect("valid");
    assert_eq!(s.accumulation_steps(), 8);
}

#[test]
fn device_strings() {
    for good in [
        "cpu", "flex", "ndarray", "wgpu", "wgpu:0", "vulkan", "vulkan:1", "cuda", "cuda:3",
    ] {
        assert!(clipstock_config::is_device_syntax(good), "{good}");
        parse(&MINIMAL.replace(
            "seeds = [1, 2]",
            &format!("seeds = [1, 2]\ndevice = \"{good}\""),
        ))
        .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in [
        "gpu", "cuda:", "cuda:x", "cpu:0", "CUDA", "wgpu:-1", "", "cuda:1:2",
    ] {
        assert!(!clipstock_config::is_device_syntax(bad), "{bad}");
    }
    let m = err(&MINIMAL.replace("seeds = [1, 2]", "seeds = [1, 2]\ndevice = \"gpu\""));
    assert_contains(&m, &[FILE, "`run.device`", "\"gpu\"", "cuda:N"]);
}

#[test]
fn devices_one_per_seed() {
    let ok = MINIMAL.replace(
        "seeds = [1, 2]",
        "seeds = [1, 2]\ndevices = [\"cuda:0\", \"cuda:1\"]",
    );
    assert_eq!(parse(&ok).expect("valid").run.devices, ["cuda:0", "cuda:1"]);
    let m = err(&MINIMAL.replace("seeds = [1, 2]", "seeds = [1, 2]\ndevices = [\"cuda:0\"]"));
    assert_contains(&m, &[FILE, "`run.devices`", "one device per seed"]);
    let m = err(&MINIMAL.replace(
        "seeds = [1, 2]",
        "seeds = [1, 2]\ndevices = [\"cuda:0\", \"tpu\"]",
    ));
    assert_contains(&m, &["`run.devices[1]`", "\"tpu\""]);
}

#[test]
fn run_name_alphabet() {
    let m = err(&MINIMAL.replace("name = \"t\"", "name = \"a/b\""));
    assert_contains(&m, &[FILE, "`run.name`", "\"a/b\""]);
    err(&MINIMAL.replace("name = \"t\"", "name = \"..\""));
    err(&MINIMAL.replace("name = \"t\"", "name = \"\""));
}

#[test]
fn eval_set_names() {
    let m = err(&with("[eval]\nsets = [\"imagenet\", \"imagenet-v2\"]"));
    assert_contains(
        &m,
        &[FILE, "`eval.sets[1]`", "\"imagenet-v2\"", "imagenet_v2"],
    );
    let m = err(&with("[eval]\nsets = [\"imagenet\", \"imagenet\"]"));
    assert_contains(&m, &[FILE, "`eval.sets[1]`", "at most once"]);
}

#[test]
fn label_smoothing_range() {
    let m = err(&with("[optim]\nlabel_smoothing = 1.0"));
    assert_contains(&m, &[FILE, "`optim.label_smoothing`", "1.0", "[0, 1)"]);
    err(&with("[optim]\nlabel_smoothing = -0.1"));
    parse(&with("[optim]\nlabel_smoothing = 0.1")).expect("valid");
}

#[test]
fn other_ranges() {
    let cases = [
        ("[optim]\nlr = 0.0", "optim.lr"),
        ("[optim]\nepochs = 0", "optim.epochs"),
        ("[optim]\nbetas = [0.9, 1.0]", "optim.betas[1]"),
        ("[optim]\nweight_decay = -1.0", "optim.weight_decay"),
        ("[optim]\neps = 0.0", "optim.eps"),
        ("[optim]\ngrad_clip_norm = 0.0", "optim.grad_clip_norm"),
        ("[optim]\nbatch_size = 0", "optim.batch_size"),
        ("[data.augment]\nscale = [0.0, 1.0]", "data.augment.scale"),
        ("[data.augment]\nscale = [0.9, 1.1]", "data.augment.scale"),
        ("[data.augment]\nscale = [1.0, 0.9]", "data.augment.scale"),
        ("[data.augment]\nratio = [1.5, 1.0]", "data.augment.ratio"),
        (
            "[data.augment]\nrandaugment = { n = 2, m = 31 }",
            "data.augment.randaugment.m",
        ),
        (
            "[data.augment]\nrandaugment = { n = 0, m = 9 }",
            "data.augment.randaugment.n",
        ),
        (
            "[data.augment]\nrandaugment = { n = 15 }",
            "data.augment.randaugment.n",
        ),
        ("[merge]\nperiod = { epochs = 0 }", "merge.period.epochs"),
        ("[merge]\nperiod = { steps = 0 }", "merge.period.steps"),
        ("[eval]\nbatch_size = 0", "eval.batch_size"),
        ("[eval]\nlimit_per_set = 0", "eval.limit_per_set"),
    ];
    for (extra, key) in cases {
        let m = err(&with(extra));
        assert_contains(&m, &[FILE, &format!("`{key}`")]);
    }
    let m = err(&MINIMAL.replace("root = \"datasets\"", "root = \"d\"\nprefetch = 0"));
    assert_contains(&m, &["`data.prefetch`"]);
    let m = err(&MINIMAL.replace(
        "root = \"datasets\"",
        "root = \"d\"\ngenerate = \"imagenet\"",
    ));
    assert_contains(&m, &["`data.generate`", "quickstart"]);
    let m = err(&MINIMAL.replace(
        "weights = \"w.safetensors\"",
        "weights = \"w\"\narch = \"ViT-H-14\"",
    ));
    assert_contains(&m, &["`model.arch`", "ViT-B-32"]);
}

#[test]
fn grad_clip_forms() {
    let s = parse(&with("[optim]\ngrad_clip_norm = 2")).expect("integer accepted");
    assert_eq!(s.optim.grad_clip_norm, Some(2.0));
    let s = parse(&with("[optim]\ngrad_clip_norm = \"off\"")).expect("off accepted");
    assert_eq!(s.optim.grad_clip_norm, None);
    let m = err(&with("[optim]\ngrad_clip_norm = \"none\""));
    assert_contains(&m, &["`optim.grad_clip_norm`", "\"off\""]);
}

#[test]
fn head_forms() {
    let s = parse(&MINIMAL.replace(
        "weights = \"w.safetensors\"",
        "weights = \"w\"\nhead = \"checkpoint\"",
    ))
    .expect("valid");
    assert_eq!(s.model.head, HeadSource::Checkpoint);
    let s = parse(&MINIMAL.replace(
        "weights = \"w.safetensors\"",
        "weights = \"w\"\nhead = { file = \"h.st\" }",
    ))
    .expect("valid");
    assert_eq!(s.model.head, HeadSource::File("h.st".into()));
    let m = err(&MINIMAL.replace(
        "weights = \"w.safetensors\"",
        "weights = \"w\"\nhead = \"zero_shot\"",
    ));
    assert_contains(&m, &[FILE, "`model.head`", "zeroshot"]);
    let m = err(&MINIMAL.replace(
        "weights = \"w.safetensors\"",
        "weights = \"w\"\nhead = { path = \"h\" }",
    ));
    assert_contains(&m, &[FILE, "`model.head.path`", "file"]);
}

#[test]
fn period_forms() {
    let cases = [
        ("\"epoch\"", Period::Epoch),
        ("{ epochs = 2 }", Period::Epochs(2)),
        ("{ steps = 500 }", Period::Steps(500)),
    ];
    for (toml, expected) in cases {
        let s = parse(&with(&format!("[merge]\nperiod = {toml}"))).expect(toml);
        assert_eq!(s.merge.period, expected);
        assert_eq!(
            parse(&s.to_toml()).expect("round trip").merge.period,
            expected
        );
    }
    assert_eq!(Period::Epoch.every_epochs(), Some(1));
    assert_eq!(Period::Epochs(3).every_epochs(), Some(3));
    assert_eq!(Period::Steps(9).every_steps(), Some(9));
    assert_eq!(Period::Steps(9).every_epochs(), None);
    let s = parse(&with("[merge.period]\nsteps = 10")).expect("table form");
    assert_eq!(s.merge.period, Period::Steps(10));

    let m = err(&with("[merge]\nperiod = \"steps\""));
    assert_contains(&m, &[FILE, "`merge.period`", "{ steps = N }"]);
    let m = err(&with("[merge]\nperiod = { epoch = 2 }"));
    assert_contains(&m, &[FILE, "`merge.period.epoch`", "epochs"]);
    let m = err(&with("[merge]\nperiod = { epochs = 1, steps = 2 }"));
    assert_contains(&m, &[FILE, "`merge.period`", "not both"]);
    let m = err(&with("[merge]\nperiod = 2"));
    assert_contains(&m, &[FILE, "`merge.period`"]);
}

#[test]
fn override_changes_a_value() {
    let s = parse_with(
        MINIMAL,
        &["optim.lr=1e-5", "model.weights=/x/y.safetensors"],
    )
    .expect("valid");
    assert_eq!(s.optim.lr, 1e-5);
    assert_eq!(s.model.weights, PathBuf::from("/x/y.safetensors"));
    // Later overrides win; a section absent from the file is created.
    let s = parse_with(
        MINIMAL,
        &[
            "merge.method=uniform",
            "merge.method=none",
            "eval.zero_shot=false",
        ],
    )
    .expect("valid");
    assert_eq!(s.merge.method, MergeMethod::None);
    assert!(!s.eval.zero_shot);
}

#[test]
fn override_with_array_and_tables() {
    let s = parse_with(
        MINIMAL,
        &[
            "run.seeds=[1,2,3]",
            "run.devices=[\"cuda:0\", \"cuda:1\", \"cuda:2\"]",
            "merge.period={ steps = 500 }",
            "model.head={ file = \"h.safetensors\" }",
            "data.augment.scale=[0.5, 1.0]",
        ],
    )
    .expect("valid");
    assert_eq!(s.run.seeds, [1, 2, 3]);
    assert_eq!(s.run.devices.len(), 3);
    assert_eq!(s.merge.period, Period::Steps(500));
    assert_eq!(s.model.head, HeadSource::File("h.safetensors".into()));
    assert_eq!(s.data.augment.scale, [0.5, 1.0]);
}

#[test]
fn override_string_keys_stay_strings() {
    let s = parse_with(
        MINIMAL,
        &[
            "run.name=2024-05-01",
            "run.device=cuda:1",
            "data.root=123",
            "optim.grad_clip_norm=off",
        ],
    )
    .expect("valid");
    assert_eq!(s.run.name, "2024-05-01");
    assert_eq!(s.run.device, "cuda:1");
    assert_eq!(s.data.root, PathBuf::from("123"));
    assert_eq!(s.optim.grad_clip_norm, None);
}

#[test]
fn override_of_unknown_key() {
    let m = err_with(MINIMAL, &["optim.lrr=1e-5"]);
    assert_contains(&m, &[FILE, "`optim.lrr`", "unknown key", "lr"]);
    let m = err_with(MINIMAL, &["trainer.lr=1"]);
    assert_contains(&m, &["`trainer.lr`", "run.name"]);
    let m = err_with(MINIMAL, &["optim=3"]);
    assert_contains(&m, &["`optim`"]);
}

#[test]
fn override_is_validated_like_the_file() {
    let m = err_with(MINIMAL, &["optim.label_smoothing=1.5"]);
    assert_contains(&m, &[FILE, "`optim.label_smoothing`", "1.5"]);
    let m = err_with(MINIMAL, &["optim.lr=fast"]);
    assert_contains(&m, &[FILE, "`optim.lr`", "--set", "f64"]);
    let m = err_with(MINIMAL, &["run.seeds=[5, 5]"]);
    assert_contains(&m, &["`run.seeds`", "distinct"]);
}

#[test]
fn malformed_override() {
    let m = err_with(MINIMAL, &["optim.lr"]);
    assert_contains(&m, &["optim.lr", "KEY=VALUE"]);
    let m = err_with(MINIMAL, &["=3"]);
    assert_contains(&m, &["empty"]);
    let m = err_with(&format!("optim = 3\n{MINIMAL}"), &["optim.lr=1"]);
    assert_contains(&m, &["`optim`", "not a table"]);
}

#[test]
fn load_names_a_missing_file() {
    let e = load(Path::new("/nonexistent/run.toml"), &[]).expect_err("missing");
    assert!(matches!(e, ConfigError::Io { .. }));
    assert_contains(&e.to_string(), &["/nonexistent/run.toml"]);
}

#[test]
fn load_reports_the_real_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, with("[optim]\nlrr = 1")).expect("write");
    let e = load(&path, &[]).expect_err("unknown key");
    assert_eq!(e.key(), Some("optim.lrr"));
    assert_contains(
        &e.to_string(),
        &[&path.display().to_string(), "`optim.lrr`"],
    );
}

#[test]
fn resolve_paths_joins_relative_paths_only() {
    let mut s = parse_with(
        MINIMAL,
        &[
            "model.head={ file = \"h.safetensors\" }",
            "data.class_dir=classes",
            "model.templates=/abs/t.json",
        ],
    )
    .expect("valid");
    s.resolve_paths(Path::new("/base"));
    assert_eq!(s.run.output_dir, PathBuf::from("/base/runs"));
    assert_eq!(s.model.weights, PathBuf::from("/base/w.safetensors"));
    assert_eq!(
        s.model.classnames,
        PathBuf::from("/base/data/imagenet_classnames.json")
    );
    assert_eq!(s.model.templates, PathBuf::from("/abs/t.json"));
    assert_eq!(s.model.head, HeadSource::File("/base/h.safetensors".into()));
    assert_eq!(s.data.root, PathBuf::from("/base/datasets"));
    assert_eq!(s.data.class_dir, Some(PathBuf::from("/base/classes")));
    assert_eq!(s.run_dir(), PathBuf::from("/base/runs/t"));
}

/// KEYS drives `--set`; it must list exactly the schema's leaves.
#[test]
fn override_keys_match_the_schema() {
    let full = parse_with(
        MINIMAL,
        &[
            "model.arch=ViT-B-32",
            "data.class_dir=c",
            "data.generate=quickstart",
            "data.train_limit=1",
            "data.image_size=224",
            "optim.micro_batch_size=64",
            "eval.limit_per_set=5",
            "run.ranks_per_seed=2",
            "data.holdout_per_class=26",
            "data.holdout_seed=3",
            "baselines.independent_seeds=[11, 12]",
            "optim.mixup_alpha=0.2",
            "model.head=\"linear_probe\"",
            "model.linear_probe={ epochs = 2 }",
            "data.augment.randaugment={ n = 2, m = 9 }",
        ],
    )
    .expect("valid");
    let table: toml::Table = toml::from_str(&full.to_toml()).expect("parses");
    // `holdout_file` excludes `holdout_per_class`, so it comes from a second spec.
    let with_file = parse_with(MINIMAL, &["data.holdout_file=idx.npy"]).expect("valid");
    let file_table: toml::Table = toml::from_str(&with_file.to_toml()).expect("parses");
    let mut leaves = vec!["data.holdout_file".to_string()];
    assert!(
        file_table["data"].get("holdout_file").is_some(),
        "holdout_file is written"
    );
    for (section, value) in &table {
        let toml::Value::Table(t) = value else {
            panic!("{section} is not a table")
        };
        for (key, value) in t {
            match value {
                // head/period are values that happen to be tables; augment is a section.
                toml::Value::Table(inner) if key == "augment" => {
                    leaves.extend(inner.keys().map(|k| format!("{section}.{key}.{k}")));
                }
                _ => leaves.push(format!("{section}.{key}")),
            }
        }
    }
    leaves.sort();
    let mut keys: Vec<String> = KEYS.iter().map(|k| (*k).to_owned()).collect();
    keys.sort();
    assert_eq!(leaves, keys);
}

#[test]
fn precision_names_are_the_config_spellings_and_parse_back() {
    for p in [Precision::F32, Precision::Bf16, Precision::F16] {
        let s = parse(&with(&format!("[optim]\nprecision = \"{}\"\n", p.name()))).expect("config");
        assert_eq!(s.optim.precision, p);
        assert_eq!(p.name().parse::<Precision>(), Ok(p));
    }
    assert!("fp16".parse::<Precision>().is_err());
}
