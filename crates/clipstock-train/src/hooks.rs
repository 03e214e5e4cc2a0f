//! What happens at the boundaries of training, as hooks the driver calls in order: after a
//! step that does not end its epoch, at the end of an epoch (evaluate the runs, merge them,
//! evaluate the merge) and once the epoch is closed (checkpoint). New behaviour (another
//! baseline, a distributed barrier) is a new hook, not a branch in the loop.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use clipstock_config::{AfterMerge, Anchor, MergeMethod, OptimizerStatePolicy};
use clipstock_data::layouts::SetName;
use clipstock_eval::{EvalResults, Progress, SetSource, evaluate};
use clipstock_merge::{MergeOptions, Method, TensorRef};
use clipstock_model::load::{apply_state, module_state};
use clipstock_model::{DType, HostTensor, ImageClassifier, StateDict};
use tracing::{info, info_span};

use crate::dist::Collective;
use crate::error::{Result, TrainError};
use crate::events::{Event, Observer};
use crate::rundir::{EvalRecord, MergeRecord, Record, RunDir, TrainerState};
use crate::session::{Session, eval_error, eval_options, load_run_record, new_optimizer};
use clipstock_config::{Boundary, RunPlan};

/// Everything a hook may read or change.
pub struct HookCx<'a> {
    pub plan: &'a RunPlan,
    pub session: &'a mut Session,
    pub state: &'a mut TrainerState,
    pub dir: &'a mut RunDir,
    pub obs: &'a mut dyn Observer,
    pub stop: &'a Arc<AtomicBool>,
    /// The processes of a distributed training ([`crate::dist::Single`] in one process).
    pub comm: &'a dyn Collective,
}

/// The end of an epoch as the hooks see it; each fills in what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochEnd {
    /// 1-based.
    pub epoch: u64,
    pub global_step: u64,
    pub last: bool,
    /// `eval.every_epochs` (or the last epoch) asks for evaluations now.
    pub eval_due: bool,
    /// Resuming a checkpoint taken during the merged model's evaluation: the runs'
    /// evaluations and the merge are done (the runs may already hold the merge).
    pub merged_already: bool,
    pub mean_t: Option<f64>,
    pub merged_imagenet: Option<f64>,
    pub merged_ood_mean: Option<f64>,
    /// A stop was requested and this is not the last epoch (set before `after_epoch`).
    pub stopping: bool,
}

pub trait EpochHook {
    /// After an optimizer step that does not end its epoch.
    fn after_step(&mut self, _cx: &mut HookCx<'_>, _global_step: u64) -> Result<()> {
        Ok(())
    }

    /// At the end of an epoch, before it is recorded in `summary.csv`.
    fn at_epoch_end(&mut self, _cx: &mut HookCx<'_>, _end: &mut EpochEnd) -> Result<()> {
        Ok(())
    }

    /// Once the epoch is recorded and the state points at the next one.
    fn after_epoch(&mut self, _cx: &mut HookCx<'_>, _end: &EpochEnd) -> Result<()> {
        Ok(())
    }
}

/// The method's hooks, in the order the method describes: evaluate the runs, merge them,
/// evaluate the merge, checkpoint.
pub fn default_hooks() -> Vec<Box<dyn EpochHook>> {
    vec![
        Box::new(EvalHook::Runs),
        Box::new(ModelStockHook),
        Box::new(EvalHook::Merged),
        Box::new(CheckpointHook),
    ]
}

/// Evaluates each run's weights (before the epoch's merge) or the merge (after it).
pub enum EvalHook {
    Runs,
    Merged,
}

impl EpochHook for EvalHook {
    fn at_epoch_end(&mut self, cx: &mut HookCx<'_>, end: &mut EpochEnd) -> Result<()> {
        if !end.eval_due {
            return Ok(());
        }
        match self {
            EvalHook::Runs => {
                if end.merged_already {
                    return Ok(());
                }
                let todo: Vec<(usize, String)> = (0..cx.session.runs.len())
                    .filter_map(|i| {
                        let name = &cx.session.runs[i].name;
                        // The independent runs are there to be compared, so `eval.runs =
                        // false` leaves out only the merged ones.
                        if !name.independent && !cx.plan.eval.section.runs {
                            return None;
                        }
                        let label = name.label();
                        // Done before an interruption of this epoch end: same weights, same
                        // result.
                        let done = |e: &EvalRecord| e.epoch == end.epoch && e.model == label;
                        (!cx.state.evals.iter().any(done)).then_some((i, label))
                    })
                    .collect();
                if cx.comm.size() == 1 {
                    // Each recorded as soon as it is scored: a stop during the next keeps it.
                    for (i, label) in &todo {
                        let model = cx.session.run_for_eval(*i)?;
                        let results = score_model(cx, label, &model)?;
                        record_eval(cx, end.epoch, label, results)?;
                    }
                    return Ok(());
                }
                // The lead of each group scores its runs (the groups at the same time), then
                // the results are recorded in run order by everyone.
                let place = cx.session.place;
                let mut scored: Vec<Option<EvalResults>> = vec![None; todo.len()];
                for (k, (i, label)) in todo.iter().enumerate() {
                    if place.is_lead() && cx.session.own.contains(i) {
                        let model = cx.session.run_for_eval(*i)?;
                        scored[k] = Some(score_model(cx, label, &model)?);
                    }
                }
                for (k, (i, label)) in todo.iter().enumerate() {
                    let owner = place.owner(*i);
                    let results = share_results(cx.comm, owner, scored[k].take())?;
                    record_eval(cx, end.epoch, label, results)?;
                }
            }
            EvalHook::Merged => {
                // Interruptible too: the checkpoint records that the merge is done, so the
                // resume goes straight back to this evaluation.
                if cx.session.last_merge.is_some() {
                    let r = evaluate_model(cx, end.epoch, "merged", 0, |s| {
                        s.merged_for_eval()?
                            .ok_or_else(|| TrainError::Distributed("no merge to evaluate".into()))
                    })?;
                    end.merged_imagenet = r.get(SetName::ImageNet).map(|s| s.top1);
                    end.merged_ood_mean = r.ood_mean().map(|(m, _)| m);
                }
            }
        }
        Ok(())
    }
}

/// Evaluates the model `model` builds on the run's sets as `label` (on process `owner` of a
/// distributed training, which alone builds it and shares the result), records it and tells
/// the observer. A stop request
/// interrupts it with [`TrainError::Interrupted`]; the state it leaves is the one before the
/// evaluation, so a resume redoes just that evaluation.
pub fn evaluate_model(
    cx: &mut HookCx<'_>,
    epoch: u64,
    label: &str,
    owner: usize,
    model: impl FnOnce(&Session) -> Result<ImageClassifier>,
) -> Result<EvalResults> {
    let local = if cx.comm.rank() == owner {
        let model = model(cx.session)?;
        Some(score_model(cx, label, &model)?)
    } else {
        None
    };
    let results = share_results(cx.comm, owner, local)?;
    record_eval(cx, epoch, label, results.clone())?;
    Ok(results)
}

/// `owner`'s evaluation results, on every process.
fn share_results(
    comm: &dyn Collective,
    owner: usize,
    local: Option<EvalResults>,
) -> Result<EvalResults> {
    if comm.size() == 1 {
        return local.ok_or_else(|| TrainError::Distributed("no evaluation to share".into()));
    }
    let mut bytes = local
        .map(|r| floats_as_bits(r.to_json()).to_string().into_bytes())
        .unwrap_or_default();
    comm.broadcast_bytes(owner, &mut bytes);
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        TrainError::Distributed(format!("evaluation results from rank {owner}: {e}"))
    })?;
    EvalResults::from_json(&bits_as_floats(value))
        .map_err(|e| TrainError::Distributed(format!("evaluation results from rank {owner}: {e}")))
}

/// serde_json's float parsing may miss by one ulp, so floats travel as their bit patterns:
/// the processes record exactly the owner's numbers.
fn floats_as_bits(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => Value::String(format!(
            "f64:{:016x}",
            n.as_f64().unwrap_or(f64::NAN).to_bits()
        )),
        Value::Array(a) => Value::Array(a.into_iter().map(floats_as_bits).collect()),
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, floats_as_bits(v))).collect())
        }
        other => other,
    }
}

fn bits_as_floats(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.starts_with("f64:") => u64::from_str_radix(&s[4..], 16)
            .ok()
            .map(f64::from_bits)
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(a) => Value::Array(a.into_iter().map(bits_as_floats).collect()),
        Value::Object(m) => {
            Value::Object(m.into_iter().map(|(k, v)| (k, bits_as_floats(v))).collect())
        }
        other => other,
    }
}

/// Scores `model` on the run's sets (what [`evaluate_model`] records).
fn score_model(cx: &mut HookCx<'_>, label: &str, model: &ImageClassifier) -> Result<EvalResults> {
    let _span = info_span!("eval", model = label).entered();
    let sets = &cx.session.eval;
    let sources: Vec<SetSource<'_>> = if sets.prepared.is_empty() {
        sets.on_disk.iter().map(SetSource::Disk).collect()
    } else {
        sets.prepared.iter().map(SetSource::Prepared).collect()
    };
    let names: Vec<SetName> = sources.iter().map(|s| s.set().name).collect();
    let mut eval_opts = eval_options(&cx.plan.spec);
    // Distributed, every process must stop at the same point: a stop waits for the next
    // step boundary, where the processes agree on it.
    eval_opts.cancel = (cx.comm.size() == 1).then(|| cx.stop.clone());
    let obs = &mut *cx.obs;
    evaluate(
        model,
        &sources,
        &cx.session.eval_device,
        &eval_opts,
        |p| match p {
            Progress::Start { set_index, images } => obs.on(Event::EvalSet {
                model: label.to_string(),
                set: names[set_index],
                images,
            }),
            Progress::Batch { done, .. } => {
                clipstock_tensors::fault::point("eval.batch");
                obs.on(Event::EvalProgress { done })
            }
            Progress::Finish { .. } => {}
        },
        None,
    )
    .map_err(eval_error)
}

/// Records an evaluation (metrics, the trainer state, the observer).
fn record_eval(cx: &mut HookCx<'_>, epoch: u64, label: &str, results: EvalResults) -> Result<()> {
    let record = EvalRecord {
        epoch,
        model: label.to_string(),
        results: results.clone(),
    };
    cx.dir.record(&Record::Eval(record.clone()))?;
    // An evaluation redone after an interrupted epoch end replaces its first attempt.
    cx.state
        .evals
        .retain(|e| !(e.epoch == epoch && e.model == label));
    cx.state.evals.push(record);
    info!(
        model = label,
        "{}",
        clipstock_eval::markdown_row(label, &results)
    );
    cx.obs.on(Event::EvalDone {
        model: label.to_string(),
        results,
    });
    Ok(())
}

/// Model Stock (or the configured method) over the runs' current weights, when
/// `merge.period` says so.
pub struct ModelStockHook;

impl EpochHook for ModelStockHook {
    fn after_step(&mut self, cx: &mut HookCx<'_>, global_step: u64) -> Result<()> {
        if cx.plan.merge.due(Boundary::Step { global_step }) {
            merge_runs(cx, true)?;
        }
        Ok(())
    }

    fn at_epoch_end(&mut self, cx: &mut HookCx<'_>, end: &mut EpochEnd) -> Result<()> {
        let b = Boundary::EpochEnd {
            epoch: end.epoch,
            global_step: end.global_step,
            last: end.last,
        };
        if cx.plan.merge.due(b) && !end.merged_already {
            // After the last merge nothing trains on, so the runs keep their own weights
            // (exported next to the merge).
            end.mean_t = merge_runs(cx, !end.last)?;
            cx.state.epoch_end_merged = true;
            cx.state.epoch_end_mean_t = end.mean_t;
        }
        Ok(())
    }
}

/// Merges the runs against the anchor, writes the report, and with `reset_runs` (and
/// `after_merge = "reset_runs"`) puts the merge into every run. Returns the mean ratio
/// (`None` for a uniform soup).
fn merge_runs(cx: &mut HookCx<'_>, reset_runs: bool) -> Result<Option<f64>> {
    let plan = cx.plan;
    let epoch = cx.state.epoch + 1;
    let step = cx.state.global_step;
    let _span = info_span!("merge", epoch, step).entered();
    let merged_runs = cx.session.merged_runs;
    // Every process merges the same weights with the same code, so all hold the same merge.
    crate::session::sync_runs(cx.session, cx.comm, 0..merged_runs)?;
    let session = &mut *cx.session;
    let states: Vec<StateDict> = session.runs[..merged_runs]
        .iter()
        .map(|r| module_state(&r.model))
        .collect();
    let anchor = match (plan.merge.anchor, &session.last_merge) {
        (Anchor::PreviousMerge, Some(m)) => m,
        _ => &session.w0.state,
    };
    let method = match plan.merge.method {
        MergeMethod::Uniform => Method::UniformSoup,
        MergeMethod::ModelStock => Method::ModelStock {
            clamp_t: plan.merge.clamp_t,
        },
        // `MergePlan::due` is never true for it.
        MergeMethod::None => return Ok(None),
    };
    let anchor_refs = state_refs(anchor);
    let model_refs: Vec<Vec<TensorRef<'_>>> = states.iter().map(state_refs).collect();
    let model_slices: Vec<&[TensorRef<'_>]> = model_refs.iter().map(Vec::as_slice).collect();
    let (tensors, report) = clipstock_merge::merge_tensors(
        Some(&anchor_refs),
        &model_slices,
        &MergeOptions::new(method),
    )
    .map_err(|source| TrainError::Merge {
        epoch,
        step,
        source,
    })?;
    clipstock_tensors::fault::point("merge.computed");
    let mut merged = StateDict::new();
    for t in tensors {
        let dtype = (session.w0.state.get(&t.name))
            .map(|h| h.dtype)
            .unwrap_or(DType::F32);
        merged.insert(t.name, HostTensor::new(t.shape, dtype, t.data));
    }
    cx.state.merges += 1;
    let name = plan.merge.report_name(epoch, step);
    cx.dir
        .write(&format!("{name}.json"), report.to_json().as_bytes())?;
    cx.dir.write(
        &format!("{name}.svg"),
        clipstock_merge::ratio_plot_svg(&report).as_bytes(),
    )?;
    cx.dir.write(
        &format!("{name}.png"),
        &clipstock_merge::ratio_plot_png(&report),
    )?;
    let mean_t = report.summary.t_mean;
    cx.dir.record(&Record::Merge(Box::new(MergeRecord {
        epoch,
        global_step: step,
        merge: cx.state.merges,
        mean_t,
        summary: report.summary.clone(),
    })))?;
    let sm = &report.summary;
    info!(
        "merge {}: t min {:?} mean {:?} max {:?}, {} tensors with cos <= 0",
        cx.state.merges, sm.t_min, sm.t_mean, sm.t_max, sm.cos_le_zero
    );
    cx.obs.on(Event::Merged {
        epoch,
        summary: Box::new(report.summary),
    });
    if reset_runs && plan.merge.after_merge == AfterMerge::ResetRuns {
        let session = &mut *cx.session;
        for (i, run) in session.runs[..merged_runs].iter_mut().enumerate() {
            let model = std::mem::replace(&mut run.model, session.w0.base.clone());
            run.model = apply_state(model, &merged, &format!("run {}", i + 1))?;
            if plan.merge.optimizer_state == OptimizerStatePolicy::Reset {
                run.optim = new_optimizer(&plan.spec);
            }
        }
        if plan.merge.optimizer_state == OptimizerStatePolicy::Average {
            let mut pairs: Vec<(&ImageClassifier, &mut ModuleOptimizer)> = session.runs
                [..merged_runs]
                .iter_mut()
                .map(|r| (&r.model, &mut r.optim))
                .collect();
            crate::optim_state::average(&mut pairs)?;
        }
    }
    cx.session.last_merge = Some(merged);
    Ok(mean_t)
}

/// Borrowed views of a state dict's tensors, as the in-memory merge takes them.
pub fn state_refs(sd: &StateDict) -> Vec<TensorRef<'_>> {
    sd.iter()
        .map(|(name, t)| TensorRef {
            name,
            shape: &t.shape,
            data: &t.data,
        })
        .collect()
}

/// Saves a checkpoint when the epoch is the last, a stop was requested, or
/// `run.checkpoint_every_epochs` says so.
pub struct CheckpointHook;

impl EpochHook for CheckpointHook {
    fn after_epoch(&mut self, cx: &mut HookCx<'_>, end: &EpochEnd) -> Result<()> {
        let every = cx.plan.spec.run.checkpoint_every_epochs;
        if end.last || end.stopping || (every > 0 && end.epoch.is_multiple_of(every)) {
            CheckpointHook::save(cx)?;
        }
        Ok(())
    }
}

impl CheckpointHook {
    /// Saves every run's module and optimizer state, the last merge and the trainer state.
    pub fn save(cx: &mut HookCx<'_>) -> Result<()> {
        let state = &mut *cx.state;
        state.checkpoints += 1;
        state.dir = format!(
            "{:04}_epoch_{:03}_step_{:07}",
            state.checkpoints, state.epoch, state.global_step
        );
        let ckpt_path = cx.dir.path.join("checkpoints").join(&state.dir);
        let err = |reason: String| TrainError::Checkpoint {
            path: ckpt_path.clone(),
            reason,
        };
        state.has_merge = cx.session.last_merge.is_some();
        state.metrics_len = cx.dir.metrics_len();
        let runs = &cx.session.runs;
        // The lead of each group writes its runs (the other members hold the same state);
        // rank 0 the merge.
        let own = if cx.session.place.is_lead() {
            cx.session.own.clone()
        } else {
            0..0
        };
        let writer = cx.dir.is_writer();
        let last_merge = &cx.session.last_merge;
        let write = |tmp: &Path| -> Result<()> {
            for (i, run) in runs.iter().enumerate().filter(|(i, _)| own.contains(i)) {
                run.model
                    .clone()
                    .into_record()
                    .save(tmp.join(format!("run_{}.bpk", i + 1)))
                    .map_err(|e| err(format!("run {}: {e}", i + 1)))?;
                run.optim
                    .save(tmp.join(format!("run_{}.optim.bpk", i + 1)))
                    .map_err(|e| err(format!("run {} optimizer: {e}", i + 1)))?;
            }
            if let Some(m) = last_merge.as_ref().filter(|_| writer) {
                m.write_safetensors(&tmp.join("merged.safetensors"), Some(DType::F32), None)
                    .map_err(clipstock_model::ModelError::from)?;
            }
            Ok(())
        };
        let path = cx.dir.save_checkpoint(state, cx.comm, write)?;
        cx.obs.on(Event::Checkpoint(path));
        Ok(())
    }

    /// Loads the last complete checkpoint into the freshly built runs.
    pub fn restore(cx: &mut HookCx<'_>) -> Result<()> {
        let state = cx.dir.latest()?;
        cx.dir.verify_checkpoint(&state)?;
        let dir = cx.dir.checkpoint_dir(&state);
        let session = &mut *cx.session;
        for (i, run) in session.runs.iter_mut().enumerate() {
            let model = std::mem::replace(&mut run.model, session.w0.base.clone());
            run.model = load_run_record(model, &dir.join(format!("run_{}.bpk", i + 1)))?;
            let p = dir.join(format!("run_{}.optim.bpk", i + 1));
            crate::session::check_readable(&p)?;
            let optim = std::mem::replace(&mut run.optim, new_optimizer(&cx.plan.spec));
            run.optim = optim.load(&p).map_err(|e| TrainError::Checkpoint {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        }
        if state.train_images != session.train_images || state.train_hash != session.train_hash {
            return Err(TrainError::Checkpoint {
                path: dir.clone(),
                reason: format!(
                    "the training images changed since this run started ({} images then, {} now, \
                     or different files): the data order of a resume would differ",
                    state.train_images, session.train_images
                ),
            });
        }
        session.last_merge = if state.has_merge {
            Some(StateDict::read(&dir.join("merged.safetensors"))?)
        } else {
            None
        };
        cx.dir.truncate_metrics(state.metrics_len)?;
        let fresh_scales = std::mem::take(&mut cx.state.loss_scales);
        *cx.state = state;
        if cx.state.loss_scales.len() != fresh_scales.len() {
            // Only a checkpoint written by a build without loss scaling lacks them.
            cx.state.loss_scales = fresh_scales;
        }
        Ok(())
    }
}
