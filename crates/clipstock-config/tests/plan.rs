//! The plan stage: `RunSpec::resolve` (cross-field checks, the path rule, typed devices and
//! sets, the input files) and the schedule readers `MergePlan::due` / `EvalPlan::due`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

mod common;

use clipstock_config::{
    AfterMerge, Anchor, Boundary, ClassFilesDir, ConfigError, DeviceSpec, EvalPlan, EvalSection,
    Generate, HeadPlan, MergeMethod, MergePlan, OptimizerStatePolicy, PathBases, Period, RunPlan,
    SetName, from_str,
};
use common::MINIMAL;

/// A run file's folder and a working directory, each with the files a zero-shot run reads.
struct Tree {
    _tmp: tempfile::TempDir,
    /// Where the run file lives.
    dir: PathBuf,
    /// The working directory of the resolve.
    cwd: PathBuf,
}

fn touch(path: &Path) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, b"x").expect("write");
}

fn tree() -> Tree {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = std::fs::canonicalize(tmp.path()).expect("canonical");
    let dir = root.join("project/configs");
    let cwd = root.join("work");
    for base in [&dir, &cwd] {
        touch(&base.join("w.safetensors"));
        touch(&base.join("data/imagenet_classnames.json"));
        touch(&base.join("data/openai_imagenet_templates.json"));
        touch(&base.join("h.safetensors"));
    }
    touch(&root.join("project/data/shared.safetensors"));
    Tree {
        _tmp: tmp,
        dir,
        cwd,
    }
}

impl Tree {
    fn file(&self) -> PathBuf {
        self.dir.join("run.toml")
    }

    /// `text` with `overrides`, resolved as `load_plan` would from `self.cwd`.
    fn plan(&self, text: &str, overrides: &[&str]) -> Result<RunPlan, ConfigError> {
        let overrides: Vec<String> = overrides.iter().map(|s| (*s).to_owned()).collect();
        let spec = from_str(text, &self.file(), &overrides)?;
        spec.resolve(&self.bases(text, &overrides))
    }

    fn bases(&self, text: &str, overrides: &[String]) -> PathBases {
        let mut bases = PathBases::for_file(&self.file(), text, overrides)
            .unwrap_or_else(|e| panic!("bases: {e}"));
        // The process's working directory is shared by all tests; stand in our own.
        bases.cwd = self.cwd.clone();
        bases
    }

    fn err(&self, text: &str, overrides: &[&str]) -> ConfigError {
        match self.plan(text, overrides) {
            Ok(plan) => panic!("expected an error, got {plan:#?}"),
            Err(e) => e,
        }
    }
}

fn with(extra: &str) -> String {
    format!("{MINIMAL}\n{extra}\n")
}

fn assert_names(e: &ConfigError, file: &Path, key: &str, parts: &[&str]) {
    let m = e.to_string();
    assert_eq!(e.key(), Some(key), "{m}");
    assert!(m.contains(&file.display().to_string()), "no file in: {m}");
    assert!(m.contains(&format!("`{key}`")), "no key in: {m}");
    for part in parts {
        assert!(m.contains(part), "{part:?} not in: {m}");
    }
}

#[test]
fn paths_written_in_the_file_resolve_against_its_directory() {
    let t = tree();
    let plan = t
        .plan(
            &(MINIMAL.replace(
                "root = \"datasets\"",
                "root = \"../datasets\"\nclass_dir = \"./c\"",
            ) + "[model.head]\nfile = \"h.safetensors\"\n"),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.spec.model.weights, t.dir.join("w.safetensors"));
    assert_eq!(plan.weights, t.dir.join("w.safetensors"));
    assert_eq!(plan.head, HeadPlan::File(t.dir.join("h.safetensors")));
    // `..` and `.` are applied, not kept.
    assert_eq!(plan.spec.data.root, t.dir.with_file_name("datasets"));
    assert_eq!(plan.spec.data.class_dir, Some(t.dir.join("c")));
    assert_eq!(plan.class_files_dir, ClassFilesDir::Custom(t.dir.join("c")));
}

#[test]
fn set_paths_resolve_against_the_working_directory() {
    let t = tree();
    let plan = t
        .plan(
            MINIMAL,
            &[
                "model.weights=w.safetensors",
                "data.root=d",
                "model.head={ file = \"h.safetensors\" }",
                "run.output_dir=out/../o",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.weights, t.cwd.join("w.safetensors"));
    assert_eq!(plan.spec.data.root, t.cwd.join("d"));
    assert_eq!(plan.head, HeadPlan::File(t.cwd.join("h.safetensors")));
    assert_eq!(plan.run_dir, t.cwd.join("o/t"));
}

#[test]
fn unset_defaults_resolve_against_the_working_directory() {
    let t = tree();
    let plan = t.plan(MINIMAL, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.run_dir, t.cwd.join("runs/t"));
    assert_eq!(plan.spec.run.output_dir, t.cwd.join("runs"));
    assert_eq!(
        plan.head,
        HeadPlan::ZeroShot {
            classnames: t.cwd.join("data/imagenet_classnames.json"),
            templates: t.cwd.join("data/openai_imagenet_templates.json"),
        }
    );
    assert_eq!(
        plan.class_files_dir,
        ClassFilesDir::ImageNet(t.cwd.join("data"))
    );
    assert_eq!(plan.spec.data.class_dir, None);
    // The same defaults written out in the file are the file's.
    let written = MINIMAL.replace(
        "weights = \"w.safetensors\"",
        "weights = \"w.safetensors\"\nclassnames = \"data/imagenet_classnames.json\"\n\
         templates = \"data/openai_imagenet_templates.json\"",
    );
    let plan = t.plan(&written, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.head,
        HeadPlan::ZeroShot {
            classnames: t.dir.join("data/imagenet_classnames.json"),
            templates: t.dir.join("data/openai_imagenet_templates.json"),
        }
    );
}

#[test]
fn a_set_wins_over_the_file_and_absolute_paths_are_kept() {
    let t = tree();
    let shared = t.dir.with_file_name("data").join("shared.safetensors");
    let plan = t
        .plan(MINIMAL, &[&format!("model.weights={}", shared.display())])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.weights, shared);
    let text = MINIMAL.replace(
        "weights = \"w.safetensors\"",
        &format!(
            "weights = \"{}/../data/shared.safetensors\"",
            t.dir.display()
        ),
    );
    let plan = t.plan(&text, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.weights,
        t.dir.join("../data/shared.safetensors"),
        "an absolute path is used as written"
    );
}

/// What the trainer stores as `runs/NAME/config.toml` resolves to the same plan from anywhere
/// (the `--resume` and `eval --run` case).
#[test]
fn the_resolved_spec_loads_again_to_the_same_plan() {
    let t = tree();
    let plan = t
        .plan(&with("[eval]\nsets = [\"v2\", \"in\"]"), &["data.root=d"])
        .unwrap_or_else(|e| panic!("{e}"));
    let stored = plan.spec.to_toml();
    let elsewhere = PathBases {
        file: t.cwd.join("runs/t/config.toml"),
        file_dir: t.cwd.join("runs/t"),
        cwd: PathBuf::from("/somewhere/else"),
        overridden: BTreeSet::new(),
        written: clipstock_config::PATH_KEYS
            .iter()
            .map(|k| (*k).to_owned())
            .collect(),
    };
    let again = from_str(&stored, &elsewhere.file, &[])
        .and_then(|spec| spec.resolve(&elsewhere))
        .unwrap_or_else(|e| panic!("{e}\n{stored}"));
    assert_eq!(again.spec, plan.spec);
    assert_eq!(again.weights, plan.weights);
    assert_eq!(again.eval.sets, plan.eval.sets);
}

#[test]
fn bases_of_a_file_record_what_it_writes_and_what_set_gives() {
    let t = tree();
    touch(&t.file());
    let overrides = vec!["data.root=x".to_owned(), "optim.lr = 1".to_owned()];
    let text = with("[model.head]\nfile = \"h\"");
    let bases = PathBases::for_file(&t.file(), &text, &overrides).expect("bases");
    assert_eq!(bases.file, t.file());
    assert_eq!(bases.file_dir, t.dir);
    assert_eq!(bases.cwd, std::env::current_dir().expect("cwd"));
    let written: Vec<&str> = bases.written.iter().map(String::as_str).collect();
    assert_eq!(written, ["data.root", "model.head", "model.weights"]);
    let overridden: Vec<&str> = bases.overridden.iter().map(String::as_str).collect();
    assert_eq!(overridden, ["data.root", "optim.lr"]);
}

#[test]
fn the_files_a_run_reads_must_exist() {
    let t = tree();
    let file = t.file();
    let e = t.err(MINIMAL, &["model.weights=/nonexistent/w.safetensors"]);
    assert_names(
        &e,
        &file,
        "model.weights",
        &["/nonexistent/w.safetensors", "not a file"],
    );
    assert!(matches!(e, ConfigError::MissingFile { .. }));

    let e = t.err(MINIMAL, &["model.classnames=nope.json"]);
    assert_names(
        &e,
        &file,
        "model.classnames",
        &[&t.cwd.join("nope.json").display().to_string()],
    );
    let e = t.err(MINIMAL, &["model.templates=nope.json"]);
    assert_names(&e, &file, "model.templates", &["nope.json"]);
    let e = t.err(MINIMAL, &["model.head={ file = \"nope.safetensors\" }"]);
    assert_names(&e, &file, "model.head.file", &["nope.safetensors"]);
    // A folder is not a file.
    let e = t.err(MINIMAL, &["model.weights=data"]);
    assert_names(&e, &file, "model.weights", &[]);

    // With the checkpoint's own head, no class names or templates are read.
    let plan = t
        .plan(
            MINIMAL,
            &["model.head=checkpoint", "model.classnames=nope.json"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.head, HeadPlan::Checkpoint);
}

#[test]
fn cross_field_errors_name_file_and_key() {
    let t = tree();
    let file = t.file();
    let cases: [(&[&str], &str, &[&str]); 11] = [
        (
            &["run.devices=[\"cuda:0\"]"],
            "run.devices",
            &["one device per seed"],
        ),
        (
            &["run.devices=[\"cuda:0\", \"gpu\"]"],
            "run.devices[1]",
            &["\"gpu\"", "cuda:N"],
        ),
        (&["run.device=CUDA"], "run.device", &["\"CUDA\""]),
        (
            &["eval.sets=[\"imagenet\", \"imagenet-c\"]"],
            "eval.sets[1]",
            &["imagenet_v2", "v2"],
        ),
        (
            &["eval.sets=[\"imagenet\", \"in\"]"],
            "eval.sets[1]",
            &["at most once"],
        ),
        (
            &["data.generate=imagenet"],
            "data.generate",
            &["quickstart"],
        ),
        (
            &["optim.batch_size=64", "optim.micro_batch_size=24"],
            "optim.micro_batch_size",
            &["64"],
        ),
        (&["model.arch=ViT-H-14"], "model.arch", &["ViT-B-32"]),
        (
            &["optim.batch_size=64", "run.ranks_per_seed=3"],
            "run.ranks_per_seed",
            &["a divisor of optim.batch_size = 64"],
        ),
        (
            // Shares of 48 images cannot be cut into micro-batches of 32.
            &[
                "optim.batch_size=96",
                "optim.micro_batch_size=32",
                "run.ranks_per_seed=2",
            ],
            "optim.micro_batch_size",
            &["48 images"],
        ),
        (
            &[
                "run.ranks_per_seed=2",
                "run.devices=[\"cuda:0\", \"cuda:1\", \"cuda:2\"]",
            ],
            "run.devices",
            &["per process", "4"],
        ),
    ];
    for (overrides, key, parts) in cases {
        let e = t.err(MINIMAL, overrides);
        assert_names(&e, &file, key, parts);
    }
}

#[test]
fn devices_one_per_seed() {
    let t = tree();
    let plan = t
        .plan(MINIMAL, &["run.seeds=[1,2,3]", "run.device=wgpu"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.devices, [DeviceSpec::Wgpu(0); 3]);
    assert_eq!(plan.eval_device, DeviceSpec::Wgpu(0));
    assert!(!plan.per_run_devices);

    let plan = t
        .plan(MINIMAL, &["run.devices=[\"cuda:1\", \"flex\"]"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.devices, [DeviceSpec::Cuda(1), DeviceSpec::Flex]);
    assert_eq!(plan.eval_device, DeviceSpec::Cpu, "run.device, the default");
    assert!(plan.per_run_devices);
}

#[test]
fn sets_batches_and_generators_are_typed() {
    let t = tree();
    let plan = t
        .plan(
            &with("[eval]\nsets = [\"objectnet\", \"v2\", \"sketch\"]\nevery_epochs = 3"),
            &[
                "optim.batch_size=64",
                "optim.micro_batch_size=16",
                "model.arch=ViT-L-14",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.eval.sets,
        [
            SetName::ObjectNet,
            SetName::ImageNetV2,
            SetName::ImageNetSketch
        ]
    );
    assert_eq!(
        plan.spec.eval.sets,
        ["objectnet", "v2", "sketch"],
        "stored as written"
    );
    assert_eq!(plan.eval.section.every_epochs, 3);
    assert_eq!(plan.accumulation_steps, 4);
    assert_eq!(plan.micro_batch_size, 16);
    assert_eq!(plan.arch, Some(clipstock_config::ArchPreset::VitL14));
    assert_eq!(plan.generate, None);

    let plan = t
        .plan(MINIMAL, &["data.generate=quickstart"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.micro_batch_size, 512);
    assert_eq!(plan.accumulation_steps, 1);
    assert_eq!(
        plan.generate,
        Some(Generate::Quickstart {
            assets: t.cwd.join("data/quickstart")
        })
    );
    let plan = t
        .plan(MINIMAL, &["data.generate=quickstart", "data.class_dir=q"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.generate,
        Some(Generate::Quickstart {
            assets: t.cwd.join("q")
        })
    );
}

fn merge(method: MergeMethod, period: Period) -> MergePlan {
    MergePlan {
        method,
        period,
        anchor: Anchor::Pretrained,
        clamp_t: false,
        optimizer_state: OptimizerStatePolicy::Keep,
        after_merge: AfterMerge::ResetRuns,
    }
}

fn step(global_step: u64) -> Boundary {
    Boundary::Step { global_step }
}

fn end(epoch: u64, global_step: u64, last: bool) -> Boundary {
    Boundary::EpochEnd {
        epoch,
        global_step,
        last,
    }
}

#[test]
fn merges_every_epoch() {
    let m = merge(MergeMethod::ModelStock, Period::Epoch);
    assert!(m.merges());
    assert!((1..=20).all(|s| !m.due(step(s))), "never mid-epoch");
    assert!((1..=5).all(|e| m.due(end(e, e * 7, false))));
    assert!(m.due(end(5, 35, true)));
    assert_eq!(m.report_name(2, 14), "merges/epoch_002");
}

#[test]
fn merges_every_k_epochs_and_at_the_last() {
    let m = merge(MergeMethod::Uniform, Period::Epochs(3));
    assert!((1..=20).all(|s| !m.due(step(s))));
    let due: Vec<u64> = (1..=7).filter(|&e| m.due(end(e, e * 10, false))).collect();
    assert_eq!(due, [3, 6]);
    assert!(m.due(end(7, 70, true)), "the last epoch always merges");
    assert_eq!(m.report_name(6, 60), "merges/epoch_006");
}

#[test]
fn merges_every_k_steps_and_at_epoch_ends_on_a_multiple() {
    let m = merge(MergeMethod::ModelStock, Period::Steps(4));
    let due: Vec<u64> = (1..=12).filter(|&s| m.due(step(s))).collect();
    assert_eq!(due, [4, 8, 12]);
    // 5 steps per epoch: the end of epoch 4 is global step 20, a multiple of 4.
    assert!(!m.due(end(1, 5, false)));
    assert!(!m.due(end(2, 10, false)));
    assert!(m.due(end(4, 20, false)));
    assert!(m.due(end(3, 15, true)), "the last epoch always merges");
    assert_eq!(m.report_name(2, 8), "merges/step_0000008");
}

#[test]
fn method_none_never_merges() {
    for period in [Period::Epoch, Period::Epochs(1), Period::Steps(1)] {
        let m = merge(MergeMethod::None, period);
        assert!(!m.merges());
        assert!(!m.due(step(1)));
        assert!(!m.due(end(1, 1, false)));
        assert!(!m.due(end(1, 1, true)), "not even at the end");
    }
}

#[test]
fn the_plan_carries_the_merge_section() {
    let t = tree();
    let plan = t
        .plan(
            &with("[merge]\nmethod = \"uniform\"\nperiod = { steps = 9 }\nanchor = \"previous_merge\"\noptimizer_state = \"average\"\nafter_merge = \"evaluate_only\"\nclamp_t = true"),
            &[],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plan.merge,
        MergePlan {
            method: MergeMethod::Uniform,
            period: Period::Steps(9),
            anchor: Anchor::PreviousMerge,
            clamp_t: true,
            optimizer_state: OptimizerStatePolicy::Average,
            after_merge: AfterMerge::EvaluateOnly,
        }
    );
}

#[test]
fn evaluation_and_checkpoint_schedules() {
    let eval = |every_epochs| EvalPlan {
        sets: vec![SetName::ImageNet],
        section: EvalSection {
            every_epochs,
            ..EvalSection::default()
        },
    };
    let due: Vec<u64> = (1..=6).filter(|&e| eval(2).due(e, false)).collect();
    assert_eq!(due, [2, 4, 6]);
    assert!(eval(2).due(5, true));
    assert!((1..=6).all(|e| eval(1).due(e, false)));
    assert!(
        (1..=6).all(|e| !eval(0).due(e, false)),
        "0: only at the end"
    );
    assert!(eval(0).due(6, true));

    let t = tree();
    let plan = t
        .plan(MINIMAL, &["run.checkpoint_every_epochs=0"])
        .expect("valid");
    assert!(!plan.checkpoint_due(1, false) && plan.checkpoint_due(3, true));
    let plan = t
        .plan(MINIMAL, &["run.checkpoint_every_epochs=2"])
        .expect("valid");
    assert!(!plan.checkpoint_due(1, false) && plan.checkpoint_due(2, false));
}

/// A process's part of a step under `run.ranks_per_seed`: whole micro-batches when they fit
/// its share, else the share in one micro-batch; `run.devices` may list one per process.
#[test]
fn ranks_per_seed_splits_each_step() {
    let t = tree();
    let share = |o: &[&str]| {
        let plan = t.plan(MINIMAL, o).unwrap_or_else(|e| panic!("{e}"));
        (plan.spec.run.ranks_per_seed, plan.spec.rank_share())
    };
    let b = |n: usize| format!("optim.batch_size={n}");
    let m = |n: usize| format!("optim.micro_batch_size={n}");
    assert_eq!(share(&[&b(64)]), (1, (64, 1)));
    assert_eq!(share(&[&b(64), &m(16)]), (1, (16, 4)));
    assert_eq!(
        share(&[&b(64), &m(16), "run.ranks_per_seed=2"]),
        (2, (16, 2))
    );
    assert_eq!(
        share(&[&b(64), &m(16), "run.ranks_per_seed=8"]),
        (8, (8, 1))
    );
    assert_eq!(share(&[&b(64), "run.ranks_per_seed=4"]), (4, (16, 1)));
    let devices = "run.devices=[\"cuda:0\", \"cuda:1\", \"cuda:2\", \"cuda:3\"]";
    let plan = t
        .plan(MINIMAL, &["run.ranks_per_seed=2", devices])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.devices.len(), 4);
}
