//! `clipstock train`: a config file in, a run directory out; progress bars on a terminal,
//! plain periodic lines otherwise; Ctrl-C, SIGTERM and SIGHUP save a checkpoint and exit
//! 128 + the signal's number.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use clipstock_train::{Event, Observer, TrainOptions};

use crate::logfile;

#[derive(Args)]
pub struct TrainArgs {
    /// The run file (see configs/README.md).
    #[arg(long, required_unless_present = "run", conflicts_with = "run")]
    config: Option<PathBuf>,
    /// With --resume: the run directory to continue, wherever it is now (moved or renamed);
    /// its own config.toml is the config.
    #[arg(long, requires = "resume", value_name = "DIR")]
    run: Option<PathBuf>,
    /// Override any key: `--set optim.lr=1e-5 --set run.seeds=[1,2,3]`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Continue the run directory's last complete checkpoint (same config and overrides).
    #[arg(long)]
    resume: bool,
}

pub fn run(a: TrainArgs) -> Result<()> {
    // The plan resolves the paths (file-relative or working-directory-relative, see
    // configs/README.md) and checks the input files before anything is created.
    let (config, plan) = load_plan(&a)?;
    let spec = &plan.spec;
    let comm = distributed();
    let rank = comm.as_ref().map_or(0, |c| c.rank());
    let job = comm.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicI32::new(0));
    stop_on_signals(&stop, &signal)?;
    let opts = TrainOptions {
        resume: a.resume,
        stop,
        comm,
    };
    let runs = spec.run.seeds.len() + spec.baselines.independent_seeds.len();
    let mut obs = Progress::new(runs, spec.run.log_every_steps);
    let outcome = if rank == 0 {
        clipstock_train::train(&plan, &opts, &mut obs)
    } else {
        // Rank 0 reports for every process; the others keep quiet (their warnings still reach
        // stderr).
        clipstock_train::train(&plan, &opts, &mut clipstock_train::Quiet)
    };
    obs.clear();
    if let (Some(job), Err(e)) = (&job, &outcome)
        && !matches!(
            e,
            clipstock_train::TrainError::InterruptedBeforeStart { .. }
        )
    {
        // A process that failed must not leave the others waiting in a collective (nor wait
        // for them in MPI's finalisation): its error, then the whole job ends.
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        err!("rank {rank}: error: {text}");
        job.abort(1);
    }
    if rank != 0 {
        return match outcome {
            Ok(o) if o.stopped_early => std::process::exit(signal_exit_code(&signal)),
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    let outcome = match outcome {
        Err(e @ clipstock_train::TrainError::InterruptedBeforeStart { .. }) => {
            err!("{e}");
            std::process::exit(signal_exit_code(&signal));
        }
        o => o?,
    };
    out!("{}", outcome.results_markdown);
    if outcome.stopped_early {
        let mut cmd = format!("clipstock train --config {}", config.display());
        for s in &a.set {
            cmd.push_str(&format!(" --set '{s}'"));
        }
        out!("stopped early; continue with: {cmd} --resume");
    }
    out!("run directory: {}", outcome.run_dir.display());
    if let Some(p) = outcome.final_merged {
        out!("merged model: {}", p.display());
    }
    if outcome.stopped_early {
        // Non-zero, as shells expect of a job a signal stopped: `train && next` must not go on
        // with an unfinished run. The checkpoint is on disk and everything is printed.
        std::process::exit(signal_exit_code(&signal));
    }
    Ok(())
}

#[derive(Args)]
pub struct CompareArgs {
    /// The run file: a run with `baselines.independent_seeds` (two or more) and a held-out
    /// split (`data.holdout_per_class`), e.g. configs/quickstart_compare.toml.
    #[arg(long)]
    config: PathBuf,
    /// Override any key, as for `train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// `clipstock compare`: trains the run (or resumes it, or finds it finished), then scores
/// every method of the paper's comparison that is not scored yet; a second call after a stop
/// continues where the first stopped.
pub fn run_compare(a: CompareArgs) -> Result<()> {
    let plan = clipstock_config::load_plan(&a.config, &a.set)?;
    clipstock_train::compare::check(&plan)?;
    let spec = &plan.spec;
    let stop = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicI32::new(0));
    stop_on_signals(&stop, &signal)?;
    let runs = spec.run.seeds.len() + spec.baselines.independent_seeds.len();
    let mut obs = Progress::new(runs, spec.run.log_every_steps);
    let outcome = clipstock_train::compare::compare(&plan, &stop, &mut obs);
    obs.clear();
    let outcome = match outcome {
        Err(
            e @ (clipstock_train::TrainError::InterruptedBeforeStart { .. }
            | clipstock_train::TrainError::Interrupted),
        ) => {
            err!("{e}");
            std::process::exit(signal_exit_code(&signal));
        }
        o => o?,
    };
    if outcome.stopped_early {
        let mut cmd = format!("clipstock compare --config {}", a.config.display());
        for s in &a.set {
            cmd.push_str(&format!(" --set '{s}'"));
        }
        out!("stopped early; continue with: {cmd}");
        std::process::exit(signal_exit_code(&signal));
    }
    out!("{}", outcome.markdown);
    out!(
        "comparison: {} (results.md, results.json, id_vs_ood.png, id_vs_ood.svg)",
        outcome.dir.display()
    );
    Ok(())
}

/// The processes of an MPI launch (`mpirun`/`srun`, built with `--features mpi`); None when
/// this is a training of its own.
#[cfg(feature = "mpi")]
pub(crate) fn distributed() -> Option<clipstock_train::dist::Comm> {
    let comm = crate::mpi_comm::init()?;
    use clipstock_train::dist::Collective;
    if comm.size() == 1 {
        return None;
    }
    Some(std::rc::Rc::new(comm))
}

#[cfg(not(feature = "mpi"))]
pub(crate) fn distributed() -> Option<clipstock_train::dist::Comm> {
    None
}

/// The config file and the plan. A resumed run directory is wherever it is now: `--run DIR`,
/// or `--config DIR/config.toml` naming a run's own config, resumes DIR even if it was moved
/// since the run started (see configs/README.md, "Resuming").
fn load_plan(a: &TrainArgs) -> Result<(PathBuf, clipstock_config::RunPlan)> {
    let (config, run_dir) = match (&a.run, &a.config) {
        (Some(dir), _) => (dir.join("config.toml"), Some(dir.clone())),
        (None, Some(config)) => {
            let own = config
                .parent()
                .filter(|_| a.resume && config.file_name() == Some("config.toml".as_ref()))
                .filter(|dir| dir.join("checkpoints").join("latest.json").is_file())
                .map(|dir| dir.to_path_buf());
            (config.clone(), own)
        }
        (None, None) => anyhow::bail!("give --config, or --resume --run DIR"),
    };
    let plan = clipstock_config::load_plan(&config, &a.set)?;
    let plan = match run_dir {
        Some(dir) => plan.at_run_dir(&dir)?,
        None => plan,
    };
    Ok((config, plan))
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP (what Slurm, Kubernetes and a closed terminal send)
/// all stop the run the same way: the first sets `stop`, so the trainer saves a checkpoint at
/// the next step boundary and returns; a second one exits at once without a checkpoint. The
/// first signal's number is kept in `signal` for the exit code.
fn stop_on_signals(stop: &Arc<AtomicBool>, signal: &Arc<AtomicI32>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot install the signal handlers")?;
    let (stop, signal) = (stop.clone(), signal.clone());
    // A thread rather than a handler: printing is not async-signal-safe.
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let name = signal_name(sig);
                if stop.swap(true, Ordering::SeqCst) {
                    err!("\n{name} again: exiting without a checkpoint");
                    std::process::exit(128 + sig);
                }
                signal.store(sig, Ordering::SeqCst);
                err!(
                    "\n{name}: stopping at the next safe point and saving a checkpoint (Ctrl-C \
                     again to abort)"
                );
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "interrupt (SIGINT)",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// 128 + the number of the signal that stopped the run (130 if none was recorded).
fn signal_exit_code(signal: &AtomicI32) -> i32 {
    match signal.load(Ordering::SeqCst) {
        0 => 130,
        sig => 128 + sig,
    }
}

/// Draws bars on a terminal, prints lines otherwise.
pub struct Progress {
    tty: bool,
    runs: usize,
    log_every: u64,
    bars: MultiProgress,
    epoch_bar: Option<ProgressBar>,
    eval_bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    pub fn new(runs: usize, log_every: u64) -> Self {
        Progress {
            tty: std::io::stderr().is_terminal(),
            runs,
            log_every: log_every.max(1),
            bars: MultiProgress::new(),
            epoch_bar: None,
            eval_bar: None,
            started: Instant::now(),
        }
    }

    fn line(&self, msg: &str) {
        if self.tty {
            let _ = self.bars.println(msg);
        } else {
            err!("[{:>7.1}s] {msg}", self.started.elapsed().as_secs_f64());
        }
    }

    pub fn clear(&mut self) {
        if let Some(b) = self.epoch_bar.take() {
            b.finish_and_clear();
        }
        if let Some(b) = self.eval_bar.take() {
            b.finish_and_clear();
        }
    }

    fn bar(&self, len: u64, template: &str) -> ProgressBar {
        let pb = if self.tty {
            self.bars.add(ProgressBar::new(len))
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb
    }
}

impl Observer for Progress {
    fn on(&mut self, event: Event) {
        match event {
            // The trainer's own tracing lines go into the run directory's log from here on.
            Event::Started { run_dir } => {
                logfile::open(&run_dir.join(clipstock_train::rundir::TRAIN_LOG))
            }
            Event::Phase(msg) => self.line(&msg),
            Event::EpochStart {
                epoch,
                epochs,
                steps,
                start_step,
            } => {
                self.clear();
                let pb = self.bar(
                    steps,
                    "epoch {prefix} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}",
                );
                pb.set_prefix(format!("{}/{epochs}", epoch + 1));
                pb.set_position(start_step);
                self.epoch_bar = Some(pb);
                self.line(&format!(
                    "epoch {}/{epochs}: {steps} steps × {} runs",
                    epoch + 1,
                    self.runs
                ));
            }
            Event::Step {
                epoch,
                step,
                global_step,
                losses,
                lr,
                images_per_sec,
            } => {
                let loss: Vec<String> = losses.iter().map(|l| format!("{l:.4}")).collect();
                let msg = format!(
                    "loss [{}]  lr {lr:.2e}  {images_per_sec:.1} img/s",
                    loss.join(", ")
                );
                if let Some(b) = &self.epoch_bar {
                    b.set_position(step);
                    b.set_message(msg.clone());
                }
                if !self.tty && step % self.log_every == 0 {
                    self.line(&format!(
                        "epoch {} step {step} (global {global_step}): {msg}",
                        epoch + 1
                    ));
                }
            }
            Event::EvalSet { model, set, images } => {
                if let Some(b) = self.eval_bar.take() {
                    b.finish_and_clear();
                }
                let pb = self.bar(
                    images as u64,
                    "eval {prefix} [{bar:30}] {pos}/{len} ({per_sec})",
                );
                pb.set_prefix(format!("{model} · {}", set.key()));
                self.eval_bar = Some(pb);
                if !self.tty {
                    self.line(&format!("eval {model} · {} ({images} images)", set.key()));
                }
            }
            Event::EvalProgress { done } => {
                if let Some(b) = &self.eval_bar {
                    b.set_position(done as u64);
                }
            }
            Event::EvalDone { model, results } => {
                if let Some(b) = self.eval_bar.take() {
                    b.finish_and_clear();
                }
                let row = clipstock_eval::markdown_row(&model, &results);
                self.line(&format!("eval {model}: {row}"));
            }
            Event::Merged { epoch, summary: sm } => {
                let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into());
                self.line(&format!(
                    "merge after epoch {epoch}: {} of {} runs, {} tensors merged, t min {} / mean \
                     {} / max {}, {} with cos ≤ 0",
                    sm.method,
                    sm.n_models,
                    sm.merged,
                    f(sm.t_min),
                    f(sm.t_mean),
                    f(sm.t_max),
                    sm.cos_le_zero
                ));
            }
            Event::Checkpoint(p) => {
                tracing::info!("checkpoint {}", p.display());
            }
        }
    }
}
