//! The training loop: N runs from w0 in lockstep, one optimizer step of every run at a time,
//! the hooks after each step and at each epoch's end (evaluate the runs, merge, evaluate the
//! merge, checkpoint), and the final exports.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clipstock_config::{Precision, Schedule};
use clipstock_data::holdout::HOLDOUT_LIST;
use clipstock_eval::EvalResults;
use tracing::{info, info_span};

use crate::dist::{Collective, Comm};
use crate::error::{Result, TrainError, io};
use crate::events::{Event, Observer};
use crate::hooks::{CheckpointHook, EpochEnd, EpochHook, HookCx, default_hooks, evaluate_model};
use crate::rundir::{
    EpochRow, Record, ResumeRecord, RunDir, StepRecord, TrainerState, summary_csv,
};
use crate::schedule::{constant_lr, cosine_lr};
use crate::session::{Session, check_precision};
use crate::step::{LossScale, NonFinite, StepOutcome, StepRunner};
use clipstock_config::RunPlan;

/// How a training call behaves beyond the config.
#[derive(Clone, Default)]
pub struct TrainOptions {
    /// Continue the run directory's last complete checkpoint.
    pub resume: bool,
    /// Set (e.g. by Ctrl-C) to save a checkpoint at the next step boundary and return.
    pub stop: Arc<AtomicBool>,
    /// The processes of a distributed training (MPI); None: this process alone.
    pub comm: Option<Comm>,
}

/// What a finished (or stopped) call leaves behind.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_dir: PathBuf,
    pub results_markdown: String,
    pub final_merged: Option<PathBuf>,
    pub stopped_early: bool,
}

/// A session in progress: the models and data, where training stands, and its directory.
struct Training {
    session: Session,
    state: TrainerState,
    dir: RunDir,
    comm: Comm,
    /// The processes that share this process's runs (`run.ranks_per_seed`); itself alone
    /// when it trains its runs by itself.
    group: Comm,
}

impl Training {
    fn cx<'a>(
        &'a mut self,
        plan: &'a RunPlan,
        obs: &'a mut dyn Observer,
        stop: &'a Arc<AtomicBool>,
    ) -> HookCx<'a> {
        HookCx {
            plan,
            session: &mut self.session,
            state: &mut self.state,
            dir: &mut self.dir,
            obs,
            stop,
            comm: &*self.comm,
        }
    }
}

/// Trains the N runs of `plan` in lockstep with periodic merging; see the crate docs.
pub fn train(plan: &RunPlan, opts: &TrainOptions, obs: &mut dyn Observer) -> Result<Outcome> {
    // Before the zero-shot head, which can take minutes.
    check_precision(plan)?;
    let stop = &opts.stop;
    let comm = opts.comm.clone().unwrap_or_else(crate::dist::single);
    check_distributed(plan, &*comm)?;
    // Rank 0 creates (or opens) and locks the directory; the others follow once it has.
    let dir = if comm.rank() == 0 {
        open_run_dir(plan, opts.resume)?
    } else {
        RunDir::follower(&plan.run_dir)
    };
    comm.barrier();
    obs.on(Event::Started {
        run_dir: dir.path.clone(),
    });
    // Held past `start`, which consumes the directory: a failed start removes it below, and
    // must do so before another process can take it.
    let _lock = dir.lock();
    let mut t = match start(plan, dir, opts, comm.clone(), obs) {
        Ok(t) => t,
        Err(e) => {
            if !opts.resume && comm.rank() == 0 {
                // Nothing of value was written yet; leave no directory that blocks a retry.
                let _ = std::fs::remove_dir_all(&plan.run_dir);
            }
            return Err(match e {
                TrainError::Interrupted => TrainError::InterruptedBeforeStart {
                    resume: opts.resume,
                },
                e => e,
            });
        }
    };
    if opts.resume {
        CheckpointHook::restore(&mut t.cx(plan, obs, stop))?;
        let s = &t.state;
        obs.on(Event::Phase(format!(
            "resumed at epoch {}, step {} (global step {})",
            s.epoch + 1,
            s.step_in_epoch,
            s.global_step
        )));
        let record = Record::Resume(ResumeRecord {
            epoch: s.epoch,
            step: s.step_in_epoch,
            global_step: s.global_step,
        });
        t.dir.record(&record)?;
    }
    let mut hooks = default_hooks();
    let stopped = match run_loop(plan, &mut t, &mut hooks, stop, obs) {
        Ok(stopped) => stopped,
        // Interrupted inside an evaluation: the state is still the one before it (with
        // `epoch_end_merged` set if the epoch's merge is already done), so a checkpoint now
        // resumes by redoing just that evaluation.
        Err(TrainError::Interrupted) => {
            obs.on(Event::Phase("stopping: saving a checkpoint".into()));
            CheckpointHook::save(&mut t.cx(plan, obs, stop))?;
            true
        }
        Err(e) => return Err(e),
    };
    finish(plan, t, stopped)
}

/// The run directory: a new one (refusing an existing run), or the one to resume, whose
/// config must be the same.
fn open_run_dir(plan: &RunPlan, resume: bool) -> Result<RunDir> {
    let path = &plan.run_dir;
    let config = plan.spec.to_toml();
    if !resume {
        // Check before creating anything on disk.
        if path.exists() && !RunDir::is_abandoned_start(path) {
            return Err(RunDir::refusal(path));
        }
        let dir = RunDir::create(path)?;
        dir.write("config.toml", config.as_bytes())?;
        return Ok(dir);
    }
    let dir = RunDir::open(path)?;
    let stored_path = dir.file("config.toml");
    let stored = std::fs::read_to_string(&stored_path).map_err(io("read", &stored_path))?;
    if stored != config {
        // Compared key by key, so the error can say what changed, and so that the location
        // keys (a moved run directory) and a formatting-only difference do not count.
        let differences = clipstock_config::diff_toml(&stored, &config).map_err(|reason| {
            TrainError::Checkpoint {
                path: stored_path.clone(),
                reason: format!("not valid TOML: {reason}"),
            }
        })?;
        if !differences.is_empty() {
            return Err(TrainError::ConfigChanged {
                stored: stored_path,
                differences,
            });
        }
    }
    Ok(dir)
}

/// Builds the session; a new run gets a first checkpoint before any step, so a full disk or
/// an unwritable folder fails here, not after an epoch of work.
fn start(
    plan: &RunPlan,
    dir: RunDir,
    opts: &TrainOptions,
    comm: Comm,
    obs: &mut dyn Observer,
) -> Result<Training> {
    let session = Session::build(plan, &opts.stop, &*comm, obs)?;
    // Rank 0 writes the split, and checks it on resume.
    if let Some(list) = session.holdout_list.as_ref().filter(|_| dir.is_writer()) {
        let path = dir.file(HOLDOUT_LIST);
        if opts.resume && path.exists() {
            let stored = std::fs::read_to_string(&path).map_err(io("read", &path))?;
            if stored != *list {
                return Err(TrainError::Checkpoint {
                    path,
                    reason: "the held-out split drawn now differs from the one this run \
                             trained with (the training folder or data.holdout_file changed)"
                        .into(),
                });
            }
        } else {
            dir.write(HOLDOUT_LIST, list.as_bytes())?;
        }
    }
    let state = TrainerState::fresh(
        session.train_images,
        session.train_hash,
        match plan.spec.optim.precision {
            Precision::F16 => vec![LossScale::default(); session.runs.len()],
            _ => Vec::new(),
        },
    );
    // Collective: every process joins the communicator of its group.
    let group = if session.place.per_run > 1 {
        comm.split(session.place.group())
    } else {
        crate::dist::single()
    };
    let mut t = Training {
        session,
        state,
        dir,
        comm,
        group,
    };
    if !opts.resume {
        CheckpointHook::save(&mut t.cx(plan, obs, &opts.stop))?;
    }
    Ok(t)
}

fn lr_at(plan: &RunPlan, steps_per_epoch: u64, step: u64) -> f64 {
    let o = &plan.spec.optim;
    match o.schedule {
        Schedule::Cosine => cosine_lr(step, o.lr, o.warmup_steps, steps_per_epoch * o.epochs),
        Schedule::Constant => constant_lr(step, o.lr, o.warmup_steps),
    }
}

/// Zero-shot evaluation, then the epochs. Returns whether it stopped early (after saving a
/// checkpoint).
fn run_loop(
    plan: &RunPlan,
    t: &mut Training,
    hooks: &mut [Box<dyn EpochHook>],
    stop: &Arc<AtomicBool>,
    obs: &mut dyn Observer,
) -> Result<bool> {
    let spec = &plan.spec;
    // Also on resume: a run stopped during the zero-shot evaluation still gets its row.
    if plan.eval.section.zero_shot && !t.state.evals.iter().any(|e| e.model == "zero-shot") {
        let mut cx = t.cx(plan, obs, stop);
        evaluate_model(&mut cx, 0, "zero-shot", 0, |s| Ok(s.w0.base.clone()))?;
        CheckpointHook::save(&mut cx)?;
    }
    let mut runner = StepRunner {
        autocast: t.session.autocast,
        label_smoothing: spec.optim.label_smoothing,
        grad_clip_norm: spec.optim.grad_clip_norm,
        accumulation_steps: plan.spec.rank_share().1,
        per_run_devices: plan.per_run_devices,
        mixup_alpha: spec.optim.mixup_alpha,
        epoch: t.state.epoch,
        group: (t.group.size() > 1).then(|| t.group.clone()),
    };
    let micro_batch = plan.spec.rank_share().0;
    let steps = t.session.steps_per_epoch;
    while t.state.epoch < spec.optim.epochs {
        let epoch = t.state.epoch;
        runner.epoch = epoch;
        let _span = info_span!("epoch", epoch = epoch + 1).entered();
        let epoch_start = Instant::now();
        let start_step = t.state.step_in_epoch;
        obs.on(Event::EpochStart {
            epoch,
            epochs: spec.optim.epochs,
            steps,
            start_step,
        });
        let mut loaders = (t.session).loaders(spec, micro_batch, epoch, start_step)?;
        if start_step == 0 || t.state.epoch_loss_sums.len() != t.session.runs.len() {
            t.state.epoch_loss_sums = vec![0.0; t.session.runs.len()];
            t.state.epoch_loss_steps = 0;
        }
        while t.state.step_in_epoch < steps {
            let step_start = Instant::now();
            let lr = lr_at(plan, steps, t.state.global_step);
            t.state.epoch_lr = lr;
            let s = &mut t.session;
            let own = s.own.clone();
            let scales: &mut [LossScale] = if t.state.loss_scales.is_empty() {
                &mut []
            } else {
                &mut t.state.loss_scales[own.clone()]
            };
            let local = runner.step(
                &mut s.runs[own.clone()],
                &mut loaders,
                lr,
                scales,
                &s.w0.base,
            );
            // The lead of each group speaks for its runs (its group took the same step).
            let (outcomes, stopping) = exchange(
                &*t.comm,
                if s.place.is_lead() { own } else { 0..0 },
                s.runs.len(),
                local,
                &mut t.state.loss_scales,
                stop.load(Ordering::SeqCst),
            );
            let outcomes = outcomes.map_err(|e| non_finite(e, &t.session, &t.state))?;
            let losses: Vec<f64> = outcomes.iter().map(|o| o.loss).collect();
            let images: usize = outcomes.iter().map(|o| o.images).sum();
            for (sum, l) in t.state.epoch_loss_sums.iter_mut().zip(&losses) {
                *sum += l;
            }
            t.state.epoch_loss_steps += 1;
            t.state.step_in_epoch += 1;
            t.state.global_step += 1;
            let ips = images as f64 / step_start.elapsed().as_secs_f64().max(1e-9);
            let step = t.state.step_in_epoch;
            if step.is_multiple_of(spec.run.log_every_steps.max(1)) || step == steps {
                let ls = &t.state.loss_scales;
                let f16 = !ls.is_empty();
                t.dir.record(&Record::Step(StepRecord {
                    epoch: epoch + 1,
                    step,
                    global_step: t.state.global_step,
                    lr,
                    loss: losses.clone(),
                    grad_norm: outcomes.iter().map(|o| o.grad_norm).collect(),
                    images_per_sec: ips,
                    loss_scale: f16.then(|| ls.iter().map(|s| s.scale).collect()),
                    skipped_steps: f16.then(|| ls.iter().map(|s| s.skipped).collect()),
                }))?;
                info!(epoch = epoch + 1, step, lr, ?losses, "step");
            }
            obs.on(Event::Step {
                epoch,
                step,
                global_step: t.state.global_step,
                losses,
                lr,
                images_per_sec: ips,
            });
            if step < steps {
                let global_step = t.state.global_step;
                let mut cx = t.cx(plan, obs, stop);
                for h in hooks.iter_mut() {
                    h.after_step(&mut cx, global_step)?;
                }
            }
            if stopping {
                // Every rank saw a stop request at this step (see `exchange`).
                stop.store(true, Ordering::SeqCst);
                drop(loaders);
                obs.on(Event::Phase("stopping: saving a checkpoint".into()));
                CheckpointHook::save(&mut t.cx(plan, obs, stop))?;
                return Ok(true);
            }
        }
        drop(loaders);

        let last = epoch + 1 == spec.optim.epochs;
        let mut end = EpochEnd {
            epoch: epoch + 1,
            global_step: t.state.global_step,
            last,
            eval_due: plan.eval.due(epoch + 1, last),
            merged_already: t.state.epoch_end_merged,
            mean_t: t.state.epoch_end_mean_t,
            merged_imagenet: None,
            merged_ood_mean: None,
            stopping: false,
        };
        let mut cx = t.cx(plan, obs, stop);
        for h in hooks.iter_mut() {
            h.at_epoch_end(&mut cx, &mut end)?;
        }
        close_epoch(t, &end, epoch_start, spec.optim.epochs)?;
        end.stopping = any(&*t.comm, stop.load(Ordering::SeqCst)) && !last;
        if end.stopping {
            stop.store(true, Ordering::SeqCst);
        }
        let mut cx = t.cx(plan, obs, stop);
        for h in hooks.iter_mut() {
            h.after_epoch(&mut cx, &end)?;
        }
        if end.stopping {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Records the epoch in `summary.csv` and moves the state to the next one.
fn close_epoch(
    t: &mut Training,
    end: &EpochEnd,
    started: Instant,
    total_epochs: u64,
) -> Result<()> {
    let s = &mut t.state;
    s.epochs.push(EpochRow {
        epoch: end.epoch,
        global_step: s.global_step,
        lr: s.epoch_lr,
        loss: (s.epoch_loss_sums.iter())
            .map(|l| l / s.epoch_loss_steps.max(1) as f64)
            .collect(),
        merged_imagenet: end.merged_imagenet,
        merged_ood_mean: end.merged_ood_mean,
        mean_t: end.mean_t,
        seconds: started.elapsed().as_secs_f64(),
    });
    let stems: Vec<String> = t.session.runs.iter().map(|r| r.name.stem()).collect();
    let csv = summary_csv(&s.epochs, &stems);
    t.dir.write("summary.csv", csv.as_bytes())?;
    // Followers draw nothing: only rank 0 writes the directory's files.
    if t.dir.is_writer() {
        let labels: Vec<String> = t.session.runs.iter().map(|r| r.name.label()).collect();
        let name = (t.dir.path.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let svg = crate::figures::curves_svg(&name, &labels, &s.epochs, &s.evals, total_epochs);
        t.dir.write("curves.svg", svg.as_bytes())?;
        t.dir.write(
            "curves.png",
            &crate::figures::png(&svg, &t.dir.file("curves.png"))?,
        )?;
    }
    s.epoch += 1;
    s.step_in_epoch = 0;
    s.epoch_end_merged = false;
    s.epoch_end_mean_t = None;
    if end.last {
        s.finished = true;
    }
    Ok(())
}

/// Whether any rank's `flag` is set (the same answer on every rank).
fn any(comm: &dyn Collective, flag: bool) -> bool {
    let mut v = [f64::from(u8::from(flag))];
    comm.sum_f64(&mut v);
    v[0] > 0.0
}

/// Every rank's step of its own runs, made everyone's: the losses, norms and image counts of
/// all runs, the f16 loss scales, the first non-finite run, and whether any rank was asked
/// to stop. Each slot has one contributor (the run's owner, the lead of its group: `own` is
/// empty on the other members), so the f64 sum is exact and the result is the one-process
/// result.
fn exchange(
    comm: &dyn Collective,
    own: std::ops::Range<usize>,
    runs: usize,
    local: std::result::Result<Vec<StepOutcome>, NonFinite>,
    loss_scales: &mut [LossScale],
    stop: bool,
) -> (std::result::Result<Vec<StepOutcome>, NonFinite>, bool) {
    if comm.size() == 1 {
        return (local, stop);
    }
    const PER_RUN: usize = 7;
    let mut v = vec![0.0f64; runs * PER_RUN + 1];
    match Some(local.as_ref()).filter(|_| !own.is_empty()) {
        None => {}
        Some(Ok(outcomes)) => {
            for (k, o) in outcomes.iter().enumerate() {
                let at = (own.start + k) * PER_RUN;
                v[at] = o.loss;
                v[at + 1] = o.grad_norm;
                v[at + 2] = o.images as f64;
            }
        }
        Some(Err(e)) => {
            let what = if e.what == "the loss" { 1.0 } else { 2.0 };
            v[(own.start + e.run) * PER_RUN + 3] = what;
        }
    }
    if !loss_scales.is_empty() {
        for i in own.clone() {
            let ls = &loss_scales[i];
            let at = i * PER_RUN;
            v[at + 4] = ls.scale;
            v[at + 5] = ls.clean_steps as f64;
            v[at + 6] = ls.skipped as f64;
        }
    }
    v[runs * PER_RUN] = f64::from(u8::from(stop));
    comm.sum_f64(&mut v);
    if !loss_scales.is_empty() {
        for (i, ls) in loss_scales.iter_mut().enumerate() {
            let at = i * PER_RUN;
            *ls = LossScale {
                scale: v[at + 4],
                clean_steps: v[at + 5] as u64,
                skipped: v[at + 6] as u64,
            };
        }
    }
    let stopping = v[runs * PER_RUN] > 0.0;
    if let Some(i) = (0..runs).find(|i| v[i * PER_RUN + 3] != 0.0) {
        let what = if v[i * PER_RUN + 3] == 1.0 {
            "the loss"
        } else {
            "the gradient norm"
        };
        return (Err(NonFinite { run: i, what }), stopping);
    }
    let outcomes = (0..runs)
        .map(|i| StepOutcome {
            loss: v[i * PER_RUN],
            grad_norm: v[i * PER_RUN + 1],
            images: v[i * PER_RUN + 2] as usize,
        })
        .collect();
    (Ok(outcomes), stopping)
}

/// The distributed training this build supports: groups of `run.ranks_per_seed` processes,
/// at most one group per run (each group trains a block of whole runs), and no policy that
/// needs every run's optimizer state in one place.
fn check_distributed(plan: &RunPlan, comm: &dyn Collective) -> Result<()> {
    let k = plan.spec.run.ranks_per_seed;
    let runs = plan.spec.run.seeds.len() + plan.spec.baselines.independent_seeds.len();
    if comm.size() == 1 {
        if k > 1 {
            return Err(TrainError::Distributed(format!(
                "run.ranks_per_seed = {k} shares each run between {k} processes: launch \
                 {} with `mpirun -np {}` (a build with --features mpi), or set it to 1",
                k * runs,
                k * runs
            )));
        }
        return Ok(());
    }
    if !comm.size().is_multiple_of(k) || comm.size() > runs * k {
        return Err(TrainError::Distributed(format!(
            "{} processes for {runs} runs with run.ranks_per_seed = {k}: launch a multiple of \
             {k} processes, at most {} (each group of {k} trains whole runs)",
            comm.size(),
            runs * k
        )));
    }
    if plan.spec.merge.optimizer_state == clipstock_config::OptimizerStatePolicy::Average {
        return Err(TrainError::Distributed(
            "merge.optimizer_state = \"average\" needs every run's AdamW state in one process; \
             use \"keep\" or \"reset\" with MPI"
                .into(),
        ));
    }
    Ok(())
}

fn non_finite(e: NonFinite, session: &Session, state: &TrainerState) -> TrainError {
    TrainError::NonFinite {
        run: session.runs[e.run].name.label(),
        seed: session.runs[e.run].name.seed,
        what: e.what,
        epoch: state.epoch + 1,
        step: state.step_in_epoch + 1,
    }
}

/// `results.md`, and unless stopped early the final exports.
fn finish(plan: &RunPlan, mut t: Training, stopped_early: bool) -> Result<Outcome> {
    let table = results_table(plan, &t.state);
    t.dir.write("results.md", table.as_bytes())?;
    let final_merged = if stopped_early {
        None
    } else {
        // Rank 0 writes every run's export, so it needs every run's weights.
        let n = t.session.runs.len();
        crate::session::sync_runs(&mut t.session, &*t.comm, 0..n)?;
        if t.dir.is_writer() {
            crate::export::final_exports(&t.dir, &t.session)?
        } else {
            None
        }
    };
    t.comm.barrier();
    Ok(Outcome {
        run_dir: t.dir.path.clone(),
        results_markdown: table,
        final_merged,
        stopped_early,
    })
}

/// The paper-style table: the latest evaluation of zero-shot, each run and the merge.
fn results_table(plan: &RunPlan, state: &TrainerState) -> String {
    let mut latest: Vec<(String, &EvalResults)> = Vec::new();
    for e in &state.evals {
        match latest.iter_mut().find(|(m, _)| *m == e.model) {
            Some(slot) => slot.1 = &e.results,
            None => latest.push((e.model.clone(), &e.results)),
        }
    }
    let mut out = format!("# {}\n\n", plan.spec.run.name);
    out.push_str(&clipstock_eval::markdown_table(&latest));
    out
}
