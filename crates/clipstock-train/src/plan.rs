//! TEMPORARY stand-in for clipstock_config::RunPlan while the config helper builds it.
#![allow(dead_code)]

use std::path::PathBuf;

use clipstock_config::{
    AfterMerge, Anchor, EvalSection, MergeMethod, MergeSection, OptimizerStatePolicy, Period,
    RunSpec,
};
use clipstock_data::layouts::SetName;
use clipstock_model::DeviceSpec;

use crate::error::{Result, TrainError};

#[derive(Debug, Clone)]
pub struct RunPlan {
    pub spec: RunSpec,
    pub run_dir: PathBuf,
    pub devices: Vec<DeviceSpec>,
    pub eval_device: DeviceSpec,
    pub per_run_devices: bool,
    pub eval_sets: Vec<SetName>,
    pub accumulation_steps: usize,
    pub micro_batch_size: usize,
    pub merge: MergePlan,
    pub eval: EvalPlan,
}

#[derive(Debug, Clone, Copy)]
pub struct MergePlan {
    pub method: MergeMethod,
    pub period: Period,
    pub anchor: Anchor,
    pub clamp_t: bool,
    pub optimizer_state: OptimizerStatePolicy,
    pub after_merge: AfterMerge,
}

#[derive(Debug, Clone, Copy)]
pub enum Boundary {
    Step {
        global_step: u64,
    },
    EpochEnd {
        epoch: u64,
        global_step: u64,
        last: bool,
    },
}

impl MergePlan {
    pub fn due(&self, b: Boundary) -> bool {
        if self.method == MergeMethod::None {
            return false;
        }
        match b {
            Boundary::Step { global_step } => {
                matches!(self.period, Period::Steps(k) if global_step.is_multiple_of(k.max(1)))
            }
            Boundary::EpochEnd {
                epoch,
                global_step,
                last,
            } => {
                last || match self.period {
                    Period::Epoch => true,
                    Period::Epochs(k) => epoch.is_multiple_of(k.max(1)),
                    Period::Steps(k) => global_step.is_multiple_of(k.max(1)),
                }
            }
        }
    }

    pub fn report_name(&self, epoch: u64, global_step: u64) -> String {
        match self.period {
            Period::Steps(_) => format!("merges/step_{global_step:07}"),
            _ => format!("merges/epoch_{epoch:03}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EvalPlan {
    pub every_epochs: u64,
    pub zero_shot: bool,
    pub runs: bool,
}

impl EvalPlan {
    pub fn due(&self, epoch: u64, last: bool) -> bool {
        last || (self.every_epochs > 0 && epoch.is_multiple_of(self.every_epochs))
    }
}

impl RunPlan {
    pub fn resolve(spec: &RunSpec) -> Result<RunPlan> {
        let parse =
            |s: &str, _key: &str| -> Result<DeviceSpec> { s.parse().map_err(TrainError::Model) };
        if !spec.run.devices.is_empty() && spec.run.devices.len() != spec.run.seeds.len() {
            return Err(TrainError::OptimizerAverage(
                "shim: run.devices count".into(),
            ));
        }
        let mut files = vec![("model.weights", spec.model.weights.clone())];
        if spec.model.head == clipstock_config::HeadSource::ZeroShot {
            files.push(("model.classnames", spec.model.classnames.clone()));
            files.push(("model.templates", spec.model.templates.clone()));
        }
        if let clipstock_config::HeadSource::File(p) = &spec.model.head {
            files.push(("model.head.file", p.clone()));
        }
        for (key, path) in files {
            if !path.is_file() {
                return Err(TrainError::OptimizerAverage(format!(
                    "{key}: `{}` does not exist or is not a file",
                    path.display()
                )));
            }
        }
        let eval_device = parse(&spec.run.device, "run.device")?;
        let devices = if spec.run.devices.is_empty() {
            vec![eval_device; spec.run.seeds.len()]
        } else {
            spec.run
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| parse(d, &format!("run.devices[{i}]")))
                .collect::<Result<_>>()?
        };
        let mut eval_sets = Vec::new();
        for k in &spec.eval.sets {
            eval_sets.push(SetName::parse(k)?);
        }
        let MergeSection {
            method,
            period,
            anchor,
            optimizer_state,
            after_merge,
            clamp_t,
        } = spec.merge;
        let EvalSection {
            every_epochs,
            zero_shot,
            runs,
            ..
        } = spec.eval.clone();
        let accum = spec.accumulation_steps();
        Ok(RunPlan {
            spec: spec.clone(),
            run_dir: spec.run_dir(),
            devices,
            eval_device,
            per_run_devices: !spec.run.devices.is_empty(),
            eval_sets,
            accumulation_steps: accum,
            micro_batch_size: spec.optim.batch_size / accum,
            merge: MergePlan {
                method,
                period,
                anchor,
                clamp_t,
                optimizer_state,
                after_merge,
            },
            eval: EvalPlan {
                every_epochs,
                zero_shot,
                runs,
            },
        })
    }
}
