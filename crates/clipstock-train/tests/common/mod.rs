//! Shared by the trainer's integration tests: the quickstart config made tiny, with absolute
//! paths.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clipstock_train::{RunPlan, TrainOptions};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The quickstart config, tiny, with absolute paths (tests do not share a working directory).
pub fn spec(out: &Path, name: &str, extra: &[String]) -> RunPlan {
    let q = root().join("data/quickstart");
    let mut sets = vec![
        format!("run.name={name}"),
        format!("run.output_dir={}", out.display()),
        format!(
            "model.weights={}",
            q.join("tiny_clip.safetensors").display()
        ),
        format!("model.classnames={}", q.join("classnames.json").display()),
        format!("model.templates={}", q.join("templates.json").display()),
        format!("data.class_dir={}", q.display()),
        format!("data.root={}", out.join("data").display()),
        "data.train_limit=32".into(),
        "optim.epochs=1".into(),
        "optim.batch_size=16".into(),
        "eval.limit_per_set=8".into(),
    ];
    sets.extend_from_slice(extra);
    clipstock_config::load_plan(&root().join("configs/quickstart.toml"), &sets).expect("plan")
}

pub fn options(resume: bool, stop: bool) -> TrainOptions {
    TrainOptions {
        resume,
        stop: Arc::new(AtomicBool::new(stop)),
        comm: None,
    }
}
