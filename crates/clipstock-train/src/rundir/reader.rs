//! Reading a run directory back: its config, its last complete checkpoint, its records and its
//! models. `clipstock eval --run` uses it (and so can any tool that compares runs).

use std::fs;
use std::path::{Path, PathBuf};

use burn::prelude::Device;
use clipstock_config::RunPlan;
use clipstock_data::classes::ClassSpace;
use clipstock_data::holdout::{self, HOLDOUT_LIST, Holdout};
use clipstock_data::layouts::{EvalSet, open_train_set};
use clipstock_eval::EvalResults;
use clipstock_model::load::apply_state;
use clipstock_model::{ImageClassifier, StateDict};

use super::records::Record;
use super::{TrainerState, checkpoint_dir, read_latest, write_atomic};
use crate::error::{Result, TrainError, io};
use crate::events::Observer;
use crate::session::{RunName, build_w0, class_files, load_run_record};

/// A run directory opened for reading.
pub struct RunReader {
    pub path: PathBuf,
    /// The plan of the run's stored config (its relative paths resolve against the run
    /// directory, see [`RunSpec::resolve`](clipstock_config::RunSpec::resolve)), with
    /// `run.output_dir`/`run.name` pointing at `path` (the directory may have been moved since
    /// it was written).
    pub plan: RunPlan,
    /// The state of the last complete checkpoint.
    pub state: TrainerState,
}

impl RunReader {
    pub fn open(path: &Path) -> Result<RunReader> {
        let cfg = path.join("config.toml");
        let mut plan = clipstock_config::load_plan(&cfg, &[])?;
        let here = std::path::absolute(path).map_err(io("resolve", path))?;
        if plan.run_dir != here {
            tracing::info!(
                "config names run directory {}; reading {}",
                plan.run_dir.display(),
                path.display()
            );
        }
        if let (Some(parent), Some(name)) = (here.parent(), here.file_name()) {
            plan.spec.run.output_dir = parent.to_path_buf();
            plan.spec.run.name = name.to_string_lossy().to_string();
        }
        plan.run_dir = here;
        if !path.join("checkpoints").join("latest.json").is_file() {
            return Err(TrainError::NothingToResume(path.to_path_buf()));
        }
        let state = read_latest(path)?;
        Ok(RunReader {
            path: path.to_path_buf(),
            plan,
            state,
        })
    }

    /// Every line of `metrics.jsonl`, typed.
    pub fn records(&self) -> Result<Vec<Record>> {
        let p = self.path.join("metrics.jsonl");
        let text = fs::read_to_string(&p).map_err(io("read", &p))?;
        (text.lines().enumerate())
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| {
                serde_json::from_str(l).map_err(|e| TrainError::Checkpoint {
                    path: p.clone(),
                    reason: format!("line {}: {e}", n + 1),
                })
            })
            .collect()
    }

    /// The zero-shot w0, each run (the merged ones, then the independent ones) at the last
    /// complete checkpoint, and the last merge if there was one, on `device`, labelled as the trainer labels them.
    pub fn models(
        &self,
        device: &Device,
        obs: &mut dyn Observer,
    ) -> Result<Vec<(String, ImageClassifier)>> {
        let spec = &self.plan.spec;
        let classes = ClassSpace::load(&class_files(&self.plan.class_files_dir))?;
        let mut w0 = build_w0(spec, &classes, device, None, obs)?;
        if spec.model.head == clipstock_config::HeadSource::LinearProbe {
            let cache = self.path.join(crate::linear_probe::PROBE_HEAD);
            if !cache.is_file() {
                return Err(TrainError::Checkpoint {
                    path: cache,
                    reason: "missing: the run probes its head (model.head = \"linear_probe\") \
                             and keeps it here"
                        .into(),
                });
            }
            let never = std::sync::atomic::AtomicBool::new(false);
            let state = crate::linear_probe::probed_state(
                &w0.base,
                &w0.state,
                &[],
                spec,
                device,
                &cache,
                &never,
                obs,
            )?;
            w0.base = apply_state(w0.base, &state, "w0 with the probed head")?;
        }
        let base = w0.base;
        let ck = checkpoint_dir(&self.path, &self.state);
        let mut out = vec![("zero-shot".to_string(), base.clone())];
        for (i, name) in RunName::all(spec).into_iter().enumerate() {
            let model = load_run_record(base.clone(), &ck.join(format!("run_{}.bpk", i + 1)))?;
            out.push((name.label(), model));
        }
        if self.state.has_merge {
            let merged = StateDict::read(&ck.join("merged.safetensors"))?;
            out.push(("merged".to_string(), apply_state(base, &merged, "merged")?));
        }
        Ok(out)
    }

    /// The run's held-out split (its `holdout.txt` over its training folder) as an evaluation
    /// set: what `clipstock soup --greedy --holdout RUN` selects on.
    pub fn holdout_set(&self) -> Result<EvalSet> {
        let list = self.path.join(HOLDOUT_LIST);
        if !list.is_file() {
            return Err(TrainError::NoHoldout(self.path.clone()));
        }
        let classes = ClassSpace::load(&class_files(&self.plan.class_files_dir))?;
        let train = open_train_set(&self.plan.spec.data.root, &classes)?;
        let split = Holdout::read(&list, &train.dir, &train.samples)?;
        let (_, held) = split.split(train.samples);
        Ok(holdout::eval_set(&train.dir, held, classes.num_classes()))
    }

    /// Writes `eval.json` in the run directory: each model's results JSON under its label.
    pub fn write_eval(&self, results: &[(String, EvalResults)]) -> Result<PathBuf> {
        let map: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(label, r)| (label.clone(), r.to_json()))
            .collect();
        let out = self.path.join("eval.json");
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(map)).map_err(|e| {
            TrainError::Checkpoint {
                path: out.clone(),
                reason: e.to_string(),
            }
        })?;
        write_atomic(&out, text.as_bytes())?;
        Ok(out)
    }
}
