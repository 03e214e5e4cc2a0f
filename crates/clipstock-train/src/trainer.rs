//! The N-run lockstep loop with the periodic Model Stock hook.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::FloatDType;
use clipstock_config::{
    AfterMerge, Anchor, HeadSource, MergeMethod, OptimizerStatePolicy, Period, Precision, RunSpec,
    Schedule,
};
use clipstock_data::classes::{ClassFiles, ClassSpace};
use clipstock_data::layouts::{
    EvalSet, OpenOptions, Sample, SetName, open_eval_set, open_train_set,
};
use clipstock_data::loader::{Loader, LoaderOptions, epoch_order};
use clipstock_data::preprocess::{DecodeLimits, TrainTransform, Transform};
use clipstock_eval::{EvalOptions, EvalResults, PreparedSet, Progress, SetSource, evaluate};
use clipstock_merge::{MergeOptions, MergeReport, Method, TensorRef};
use clipstock_model::load::HEAD_BIAS;
use clipstock_model::load::{apply_state, export, module_state};
use clipstock_model::model::Autocast;
use clipstock_model::zeroshot::zeroshot_head_from_files;
use clipstock_model::{Checkpoint, DeviceSpec, ImageClassifier, Naming, StateDict};
use serde_json::{Value, json};
use tracing::{info, info_span};

use crate::error::{Result, TrainError, io};
use crate::rundir::{EpochRow, RunDir, TrainerState, summary_csv};
use crate::schedule::{constant_lr, cosine_lr};
use crate::step::{LossScale, clip_grads_on_device, cross_entropy, grad_norm_tensor, scale_grads};

/// In-memory preparation of evaluation sets pays off below this size.
const PREPARE_BUDGET_BYTES: usize = 1 << 30;

/// How a training call behaves beyond the config.
#[derive(Clone, Default)]
pub struct TrainOptions {
    /// Continue the run directory's last complete checkpoint.
    pub resume: bool,
    /// Set (e.g. by Ctrl-C) to save a checkpoint at the next step boundary and return.
    pub stop: Arc<AtomicBool>,
}

/// What the caller hears, to draw progress (the library never prints).
#[derive(Debug, Clone)]
pub enum Event {
    Phase(String),
    EpochStart {
        epoch: u64,
        epochs: u64,
        steps: u64,
        start_step: u64,
    },
    Step {
        epoch: u64,
        step: u64,
        global_step: u64,
        losses: Vec<f64>,
        lr: f64,
        images_per_sec: f64,
    },
    EvalSet {
        model: String,
        set: SetName,
        images: usize,
    },
    EvalProgress {
        done: usize,
    },
    EvalDone {
        model: String,
        table_row: String,
    },
    Merged {
        epoch: u64,
        summary: String,
    },
    Checkpoint(PathBuf),
}

pub trait Observer {
    fn on(&mut self, event: Event);
}

/// A no-op observer (tests).
pub struct Quiet;

impl Observer for Quiet {
    fn on(&mut self, _event: Event) {}
}

/// What a finished (or stopped) call leaves behind.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub run_dir: PathBuf,
    pub results_markdown: String,
    pub final_merged: Option<PathBuf>,
    pub stopped_early: bool,
}

/// One run's optimizer step, queued on its device and not yet read back.
struct QueuedStep {
    loss_sum: Tensor<1>,
    norm: Option<Tensor<1>>,
    /// The unscaled norm when it had to be read back already (f16 loss scaling).
    norm_read: Option<f64>,
    /// f16 only: the gradients overflowed, the update was not applied.
    skipped: bool,
    /// f16 with one device per run: gradients whose update waits for their norm, read once
    /// every run's backward is queued (see [`Trainer::apply_scaled`]).
    pending: Option<GradientsParams>,
    micro_batches: usize,
    images: usize,
}

struct Run {
    seed: u64,
    device: Device,
    model: ImageClassifier,
    optim: ModuleOptimizer,
}

struct Trainer<'a> {
    spec: &'a RunSpec,
    dir: RunDir,
    runs: Vec<Run>,
    eval_device: Device,
    /// w0 on the evaluation device, the base every evaluated state is written into.
    eval_base: ImageClassifier,
    w0: StateDict,
    last_merge: Option<StateDict>,
    train: Arc<[Sample]>,
    eval_sets: Vec<EvalSet>,
    prepared: Vec<PreparedSet>,
    steps_per_epoch: u64,
    image_size: u32,
    autocast: Autocast,
    state: TrainerState,
    extras: StateDict,
    stop: Option<Arc<AtomicBool>>,
}

/// Trains the N runs of `spec` in lockstep with periodic merging; see the crate docs.
pub fn train(spec: &RunSpec, opts: &TrainOptions, obs: &mut dyn Observer) -> Result<Outcome> {
    check_supported(spec)?;
    let run_path = spec.run_dir();
    let dir = if opts.resume {
        RunDir::open(&run_path)?
    } else {
        // Check the inputs before creating anything on disk.
        if run_path.exists() && !RunDir::is_abandoned_start(&run_path) {
            return Err(TrainError::RunExists(run_path));
        }
        check_inputs(spec)?;
        let dir = RunDir::create(&run_path)?;
        dir.write("config.toml", spec.to_toml().as_bytes())?;
        dir
    };
    if opts.resume {
        let stored_path = dir.file("config.toml");
        let stored = std::fs::read_to_string(&stored_path).map_err(io("read", &stored_path))?;
        if stored != spec.to_toml() {
            return Err(TrainError::Plan(format!(
                "the config differs from the run's `{}`; resume with the same config and --set \
                 overrides (diff the two files to see what changed)",
                stored_path.display()
            )));
        }
    }
    let built = Trainer::build(spec, dir, &opts.stop, obs).and_then(|mut t| {
        if !opts.resume {
            // A first checkpoint before any step: a full disk or an unwritable folder fails
            // here, not after an epoch of work.
            t.checkpoint(obs)?;
        }
        Ok(t)
    });
    let mut t = match built {
        Ok(t) => t,
        Err(e) => {
            if !opts.resume {
                // Nothing of value was written yet; leave no directory that blocks a retry.
                let _ = std::fs::remove_dir_all(&run_path);
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
        t.restore()?;
        obs.on(Event::Phase(format!(
            "resumed at epoch {}, step {} (global step {})",
            t.state.epoch + 1,
            t.state.step_in_epoch,
            t.state.global_step
        )));
        t.dir.metric(&json!({"kind": "resume", "epoch": t.state.epoch, "step": t.state.step_in_epoch, "global_step": t.state.global_step}))?;
    }
    t.stop = Some(opts.stop.clone());
    let stopped = match t.zero_shot_then_loop(opts, obs) {
        Ok(stopped) => stopped,
        // Interrupted inside an evaluation: the state is still the one before it (with
        // `epoch_end_merged` set if the epoch's merge is already done), so a checkpoint now
        // resumes by redoing just that evaluation.
        Err(TrainError::Interrupted) => {
            obs.on(Event::Phase("stopping: saving a checkpoint".into()));
            t.checkpoint(obs)?;
            true
        }
        Err(e) => return Err(e),
    };
    t.finish(stopped)
}

fn check_supported(spec: &RunSpec) -> Result<()> {
    if !spec.run.devices.is_empty() && spec.run.devices.len() != spec.run.seeds.len() {
        return Err(TrainError::Plan(format!(
            "run.devices has {} entries but run.seeds has {}: give one device per run",
            spec.run.devices.len(),
            spec.run.seeds.len()
        )));
    }
    // Before the zero-shot head, which can take minutes.
    let ac = autocast_of(spec.optim.precision);
    if spec.run.devices.is_empty() {
        check_precision(spec, ac, &spec.run.device, "run.device")?;
    }
    for (i, d) in spec.run.devices.iter().enumerate() {
        check_precision(spec, ac, d, &format!("run.devices[{i}]"))?;
    }
    Ok(())
}

/// Files the run needs, checked before the run directory is created.
fn check_inputs(spec: &RunSpec) -> Result<()> {
    let mut files = vec![("model.weights", spec.model.weights.clone())];
    if spec.model.head == HeadSource::ZeroShot {
        files.push(("model.classnames", spec.model.classnames.clone()));
        files.push(("model.templates", spec.model.templates.clone()));
    }
    if let HeadSource::File(p) = &spec.model.head {
        files.push(("model.head.file", p.clone()));
    }
    for (key, path) in files {
        if !path.is_file() {
            return Err(TrainError::Plan(format!(
                "{key}: `{}` does not exist or is not a file",
                path.display()
            )));
        }
    }
    Ok(())
}

/// The models of a run directory, for `clipstock eval --run`: the zero-shot w0, each run at its
/// last complete checkpoint, and the last merge if there was one.
pub fn run_dir_models(
    spec: &RunSpec,
    device: &Device,
    obs: &mut dyn Observer,
) -> Result<Vec<(String, ImageClassifier)>> {
    let classes = ClassSpace::load(&class_files(spec))?;
    let (base, _) = build_w0(spec, &classes, device, None, obs)?;
    let dir = RunDir::open(&spec.run_dir())?;
    let state = dir.latest()?;
    let ck = dir.checkpoint_dir(&state);
    let mut out = vec![("zero-shot".to_string(), base.clone())];
    for (i, &seed) in spec.run.seeds.iter().enumerate() {
        let model = load_run_record(base.clone(), &ck.join(format!("run_{}.bpk", i + 1)))?;
        out.push((run_label(i, seed), model));
    }
    if state.has_merge {
        let merged = StateDict::read(&ck.join("merged.safetensors"))?;
        out.push(("merged".to_string(), apply_state(base, &merged, "merged")?));
    }
    Ok(out)
}

/// The class files a run uses: `data.class_dir` or the ImageNet files under `data/`.
pub fn class_files(spec: &RunSpec) -> ClassFiles {
    match &spec.data.class_dir {
        Some(d) => ClassFiles::in_dir(d),
        None => ClassFiles::imagenet(Path::new("data")),
    }
}

fn parse_device(s: &str, key: &str) -> Result<Device> {
    Ok(parse_device_spec(s, key)?.device()?)
}

fn parse_device_spec(s: &str, key: &str) -> Result<DeviceSpec> {
    s.parse()
        .map_err(|e| TrainError::Plan(format!("{key} = \"{s}\": {e}")))
}

/// The matmul precision of `optim.precision`.
pub fn autocast_of(precision: Precision) -> Autocast {
    match precision {
        Precision::F32 => Autocast::OFF,
        Precision::F16 => Autocast::to(FloatDType::F16),
        Precision::Bf16 => Autocast::to(FloatDType::BF16),
    }
}

/// Refuses a reduced precision the device reports no arithmetic for (ndarray; on wgpu it
/// depends on the adapter) instead of failing or computing garbage mid-run.
fn check_precision(spec: &RunSpec, ac: Autocast, name: &str, key: &str) -> Result<()> {
    let Some(dtype) = ac.dtype() else {
        return Ok(());
    };
    let device_spec = parse_device_spec(name, key)?;
    if !device_spec.device()?.supports_dtype(dtype) {
        return Err(TrainError::Plan(format!(
            "optim.precision = \"{}\": {key} = \"{name}\" reports no {dtype:?} arithmetic; use \
             \"f32\" there, or a device that has it (flex on the CPU; CUDA; wgpu where the \
             adapter supports the type, e.g. f16 with shader-f16)",
            spec.optim.precision.name()
        )));
    }
    Ok(())
}

/// A cancelled evaluation is a stop request, not an evaluation failure.
fn eval_error(e: clipstock_eval::EvalError) -> TrainError {
    match e {
        clipstock_eval::EvalError::Cancelled => TrainError::Interrupted,
        e => TrainError::Eval(e),
    }
}

/// A one-element tensor's value (a read-back).
fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().iter::<f64>().next().unwrap_or(f64::NAN)
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

impl<'a> Trainer<'a> {
    /// `stop` interrupts the long parts (the zero-shot head, decoding the evaluation sets)
    /// with [`TrainError::Interrupted`].
    fn build(
        spec: &'a RunSpec,
        dir: RunDir,
        stop: &Arc<AtomicBool>,
        obs: &mut dyn Observer,
    ) -> Result<Self> {
        let classes = ClassSpace::load(&class_files(spec))?;
        if let Some(kind) = &spec.data.generate {
            if kind != "quickstart" {
                return Err(TrainError::Plan(format!(
                    "data.generate = \"{kind}\": the only generator is \"quickstart\""
                )));
            }
            obs.on(Event::Phase(format!(
                "quickstart image sets in {} (written from the shipped assets on first use)",
                spec.data.root.display()
            )));
            let assets = spec
                .data
                .class_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("data/quickstart"));
            clipstock_data::quickstart::ensure_quickstart_tree(&assets, &spec.data.root)?;
        }

        let eval_device = parse_device(&spec.run.device, "run.device")?;
        let (eval_base, extras) = build_w0(spec, &classes, &eval_device, Some(stop), obs)?;
        let w0 = module_state(&eval_base);
        let model_size = eval_base.model.visual.image_size() as u32;
        let image_size = spec.data.image_size.unwrap_or(model_size);
        if image_size != model_size {
            return Err(TrainError::Plan(format!(
                "data.image_size = {image_size}, but the model's positional embedding is for \
                 {model_size} px inputs; leave data.image_size unset or set it to {model_size}"
            )));
        }

        let autocast = autocast_of(spec.optim.precision);
        let mut runs = Vec::new();
        let mut on_cpu = false;
        for (i, &seed) in spec.run.seeds.iter().enumerate() {
            let device = match spec.run.devices.get(i) {
                Some(d) => {
                    let key = format!("run.devices[{i}]");
                    let ds = parse_device_spec(d, &key)?;
                    on_cpu |= matches!(ds, DeviceSpec::Cpu | DeviceSpec::Flex);
                    ds.device()?
                }
                None => {
                    let ds = parse_device_spec(&spec.run.device, "run.device")?;
                    on_cpu |= matches!(ds, DeviceSpec::Cpu | DeviceSpec::Flex);
                    eval_device.clone()
                }
            };
            let model = apply_state(eval_base.clone(), &w0, "w0")?;
            let model = model.fork(&device.clone().autodiff()).train();
            runs.push(Run {
                seed,
                device: device.autodiff(),
                model,
                optim: new_optimizer(spec),
            });
        }

        if on_cpu && autocast.dtype().is_some() {
            tracing::warn!(
                "optim.precision = \"{}\" on the CPU: flex gains nothing from 16-bit matmuls \
                 (bf16 is computed through f32, f16 by a slower half-precision GEMM); use it to \
                 try a GPU config, not for speed",
                spec.optim.precision.name()
            );
        }

        obs.on(Event::Phase("indexing the image folders".into()));
        let train_set = open_train_set(&spec.data.root, &classes)?;
        let mut train_samples = train_set.samples;
        if let Some(limit) = spec.data.train_limit
            && limit < train_samples.len()
        {
            let n = train_samples.len();
            train_samples = (0..limit)
                .map(|i| train_samples[i * n / limit].clone())
                .collect();
        }
        let steps_per_epoch = (train_samples.len() / spec.optim.batch_size) as u64;
        if steps_per_epoch == 0 {
            return Err(TrainError::Plan(format!(
                "the train set has {} images, fewer than one batch (optim.batch_size = {})",
                train_samples.len(),
                spec.optim.batch_size
            )));
        }
        let open_opts = OpenOptions {
            limit_per_set: spec.eval.limit_per_set,
            objectnet_border_crop: spec.eval.objectnet_border_crop,
            expect_published_sizes: spec.eval.expect_published_sizes,
        };
        let mut eval_sets = Vec::new();
        for key in &spec.eval.sets {
            let name = SetName::parse(key)?;
            let set = open_eval_set(name, &spec.data.root, &classes, &open_opts)?;
            eval_sets.push(set);
        }
        let bytes_needed: usize = eval_sets
            .iter()
            .map(|s| s.samples.len() * 3 * (image_size as usize).pow(2) * 4)
            .sum();
        let mut prepared = Vec::new();
        if bytes_needed <= PREPARE_BUDGET_BYTES {
            obs.on(Event::Phase("decoding the evaluation sets once".into()));
            let opts = EvalOptions {
                cancel: Some(stop.clone()),
                ..eval_options(spec)
            };
            for set in eval_sets.drain(..) {
                prepared.push(PreparedSet::prepare(set, image_size, &opts).map_err(eval_error)?);
            }
        }

        let train_hash = train_samples
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, smp| {
                let mut h = h;
                for b in smp
                    .path
                    .to_string_lossy()
                    .bytes()
                    .chain((smp.label as u64).to_le_bytes())
                {
                    h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
                }
                h
            });
        let state = TrainerState {
            checkpoints: 0,
            train_images: train_samples.len(),
            train_hash,
            epoch_loss_sums: Vec::new(),
            epoch_loss_steps: 0,
            epoch_lr: 0.0,
            metrics_len: 0,
            epoch_end_merged: false,
            epoch_end_mean_t: None,
            loss_scales: match spec.optim.precision {
                Precision::F16 => vec![LossScale::default(); spec.run.seeds.len()],
                _ => Vec::new(),
            },
            epoch: 0,
            step_in_epoch: 0,
            global_step: 0,
            merges: 0,
            finished: false,
            evals: Vec::new(),
            epochs: Vec::new(),
            has_merge: false,
            dir: String::new(),
        };
        Ok(Trainer {
            spec,
            dir,
            runs,
            eval_device,
            eval_base,
            w0,
            last_merge: None,
            train: train_samples.into(),
            eval_sets,
            prepared,
            steps_per_epoch,
            image_size,
            autocast,
            state,
            extras,
            stop: None,
        })
    }

    fn total_steps(&self) -> u64 {
        self.steps_per_epoch * self.spec.optim.epochs
    }

    fn lr(&self, step: u64) -> f64 {
        let o = &self.spec.optim;
        match o.schedule {
            Schedule::Cosine => cosine_lr(step, o.lr, o.warmup_steps, self.total_steps()),
            Schedule::Constant => constant_lr(step, o.lr, o.warmup_steps),
        }
    }

    fn zero_shot_then_loop(&mut self, opts: &TrainOptions, obs: &mut dyn Observer) -> Result<bool> {
        // Also on resume: a run stopped during the zero-shot evaluation still gets its row.
        if self.spec.eval.zero_shot && !self.state.evals.iter().any(|e| e["model"] == "zero-shot") {
            let base = self.eval_base.clone();
            self.evaluate_model(0, "zero-shot", &base, obs)?;
            self.checkpoint(obs)?;
        }
        self.run_loop(opts, obs)
    }

    /// Returns whether it stopped early (after saving a checkpoint).
    fn run_loop(&mut self, opts: &TrainOptions, obs: &mut dyn Observer) -> Result<bool> {
        let spec = self.spec;
        let accum = spec.accumulation_steps();
        let micro = spec.optim.batch_size / accum;
        while self.state.epoch < spec.optim.epochs {
            let epoch = self.state.epoch;
            let _span = info_span!("epoch", epoch = epoch + 1).entered();
            let epoch_start = Instant::now();
            let start_step = self.state.step_in_epoch;
            obs.on(Event::EpochStart {
                epoch,
                epochs: spec.optim.epochs,
                steps: self.steps_per_epoch,
                start_step,
            });
            let used = (self.steps_per_epoch as usize) * spec.optim.batch_size;
            let mut loaders = Vec::new();
            for run in &self.runs {
                let mut order = epoch_order(self.train.len(), run.seed, epoch);
                order.truncate(used);
                let order = order.split_off(start_step as usize * spec.optim.batch_size);
                let transform = Transform::Train(TrainTransform {
                    size: self.image_size,
                    scale: (spec.data.augment.scale[0], spec.data.augment.scale[1]),
                    ratio: (spec.data.augment.ratio[0], spec.data.augment.ratio[1]),
                    hflip: spec.data.augment.hflip,
                });
                loaders.push(Loader::new(
                    self.train.clone(),
                    order,
                    transform,
                    LoaderOptions {
                        batch_size: micro,
                        workers: spec.data.workers,
                        prefetch: spec.data.prefetch.max(1),
                        seed: run.seed,
                        epoch,
                        limits: DecodeLimits::default(),
                    },
                )?);
            }
            if self.state.step_in_epoch == 0 || self.state.epoch_loss_sums.len() != self.runs.len()
            {
                self.state.epoch_loss_sums = vec![0.0; self.runs.len()];
                self.state.epoch_loss_steps = 0;
            }
            while self.state.step_in_epoch < self.steps_per_epoch {
                let step_start = Instant::now();
                let lr = self.lr(self.state.global_step);
                self.state.epoch_lr = lr;
                // Queue every run's step first, then read their losses and norms: on several
                // devices the runs compute at the same time.
                let mut queued = Vec::with_capacity(self.runs.len());
                for (i, loader) in loaders.iter_mut().enumerate() {
                    queued.push(self.step_run(i, loader, accum, lr)?);
                }
                for (i, q) in queued.iter_mut().enumerate() {
                    if let Some(q) = q
                        && let Some(grads) = q.pending.take()
                    {
                        let seed = self.runs[i].seed;
                        let _span = info_span!("run", run = i + 1, seed).entered();
                        let max_norm = spec.optim.grad_clip_norm;
                        if let Some(ls) = self.state.loss_scales.get_mut(i) {
                            Self::apply_scaled(
                                &mut self.runs[i],
                                ls,
                                &self.eval_base,
                                q,
                                grads,
                                lr,
                                max_norm,
                            );
                        }
                    }
                }
                let mut losses = Vec::with_capacity(self.runs.len());
                let mut norms = Vec::with_capacity(self.runs.len());
                let mut images = 0usize;
                for (i, q) in queued.into_iter().enumerate() {
                    let (loss, norm, n) = match q {
                        Some(q) => self.finish_step(i, q)?,
                        None => (f64::NAN, f64::NAN, 0),
                    };
                    losses.push(loss);
                    norms.push(norm);
                    images += n;
                }
                for (s, l) in self.state.epoch_loss_sums.iter_mut().zip(&losses) {
                    *s += l;
                }
                self.state.epoch_loss_steps += 1;
                self.state.step_in_epoch += 1;
                self.state.global_step += 1;
                let ips = images as f64 / step_start.elapsed().as_secs_f64().max(1e-9);
                let step = self.state.step_in_epoch;
                if step.is_multiple_of(spec.run.log_every_steps.max(1))
                    || step == self.steps_per_epoch
                {
                    let mut record = json!({
                        "kind": "step", "epoch": epoch + 1, "step": step,
                        "global_step": self.state.global_step, "lr": lr,
                        "loss": losses, "grad_norm": norms, "images_per_sec": ips,
                    });
                    if !self.state.loss_scales.is_empty() {
                        let ls = &self.state.loss_scales;
                        record["loss_scale"] =
                            json!(ls.iter().map(|s| s.scale).collect::<Vec<_>>());
                        record["skipped_steps"] =
                            json!(ls.iter().map(|s| s.skipped).collect::<Vec<_>>());
                    }
                    self.dir.metric(&record)?;
                    info!(epoch = epoch + 1, step, lr, ?losses, "step");
                }
                obs.on(Event::Step {
                    epoch,
                    step,
                    global_step: self.state.global_step,
                    losses,
                    lr,
                    images_per_sec: ips,
                });
                if let Period::Steps(k) = spec.merge.period
                    && spec.merge.method != MergeMethod::None
                    && self.state.global_step.is_multiple_of(k.max(1))
                    && self.state.step_in_epoch < self.steps_per_epoch
                {
                    self.merge(true, obs)?;
                }
                if opts.stop.load(Ordering::SeqCst) {
                    drop(loaders);
                    obs.on(Event::Phase("stopping: saving a checkpoint".into()));
                    self.checkpoint(obs)?;
                    return Ok(true);
                }
            }
            drop(loaders);

            let is_last = epoch + 1 == spec.optim.epochs;
            let merge_now = match spec.merge.period {
                Period::Epoch => true,
                Period::Epochs(k) => (epoch + 1).is_multiple_of(k.max(1)),
                Period::Steps(k) => self.state.global_step.is_multiple_of(k.max(1)),
            } || is_last;
            let eval_now = is_last
                || (spec.eval.every_epochs > 0
                    && (epoch + 1).is_multiple_of(spec.eval.every_epochs));
            // Resuming a checkpoint taken during the merged model's evaluation: the runs'
            // evaluations and the merge are done (the runs may already hold the merge).
            let merged_already = self.state.epoch_end_merged;
            if eval_now && spec.eval.runs && !merged_already {
                for i in 0..self.runs.len() {
                    let label = run_label(i, self.runs[i].seed);
                    // Done before an interruption of this epoch end: same weights, same result.
                    let done = |e: &Value| e["epoch"] == epoch + 1 && e["model"] == label.as_str();
                    if self.state.evals.iter().any(done) {
                        continue;
                    }
                    let model = self.eval_model_of_run(i)?;
                    self.evaluate_model(epoch + 1, &label, &model, obs)?;
                }
            }
            let mut mean_t = self.state.epoch_end_mean_t;
            if merge_now && spec.merge.method != MergeMethod::None && !merged_already {
                // After the last merge nothing trains on, so the runs keep their own weights (exported
                // next to the merge).
                mean_t = self.merge(!is_last, obs)?;
                self.state.epoch_end_merged = true;
                self.state.epoch_end_mean_t = mean_t;
            }
            let (mut merged_in, mut merged_ood) = (None, None);
            if eval_now && let Some(m) = self.last_merge.clone() {
                let model = apply_state(self.eval_base.clone(), &m, "merged")?;
                // Interruptible too: the checkpoint records that the merge is done, so the
                // resume goes straight back to this evaluation.
                let r = self.evaluate_model(epoch + 1, "merged", &model, obs)?;
                merged_in = r.get(SetName::ImageNet).map(|s| s.top1);
                merged_ood = r.ood_mean().map(|(m, _)| m);
            }
            self.state.epochs.push(EpochRow {
                epoch: epoch + 1,
                global_step: self.state.global_step,
                lr: self.state.epoch_lr,
                loss: self
                    .state
                    .epoch_loss_sums
                    .iter()
                    .map(|s| s / self.state.epoch_loss_steps.max(1) as f64)
                    .collect(),
                merged_imagenet: merged_in,
                merged_ood_mean: merged_ood,
                mean_t,
                seconds: epoch_start.elapsed().as_secs_f64(),
            });
            self.dir.write(
                "summary.csv",
                summary_csv(&self.state.epochs, self.runs.len()).as_bytes(),
            )?;
            self.state.epoch += 1;
            self.state.step_in_epoch = 0;
            self.state.epoch_end_merged = false;
            self.state.epoch_end_mean_t = None;
            if is_last {
                self.state.finished = true;
            }
            let stopping = opts.stop.load(Ordering::SeqCst) && !is_last;
            if is_last
                || stopping
                || (spec.run.checkpoint_every_epochs > 0
                    && (epoch + 1).is_multiple_of(spec.run.checkpoint_every_epochs))
            {
                self.checkpoint(obs)?;
            }
            if stopping {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// One optimizer step of run `i`: `accum` micro-batches, global-norm clipping, AdamW.
    /// Returns the mean loss and the number of images used.
    /// Queues one optimizer step of run `i`: `accum` micro-batches, global-norm clipping and
    /// AdamW, all on the run's device with no read-back, so the next run's step can be queued
    /// while this one computes. Returns the step's summed loss and gradient norm as device
    /// tensors (read and checked by the caller once every run is queued), the number of
    /// micro-batches and of images.
    fn step_run(
        &mut self,
        i: usize,
        loader: &mut Loader,
        accum: usize,
        lr: f64,
    ) -> Result<Option<QueuedStep>> {
        let spec = self.spec;
        let autocast = self.autocast;
        let loss_scale = self.state.loss_scales.get(i).map(|s| s.scale);
        let run = &mut self.runs[i];
        let _span = info_span!("run", run = i + 1, seed = run.seed).entered();
        let mut acc = GradientsAccumulator::<ImageClassifier>::new();
        let mut loss_sum: Option<Tensor<1>> = None;
        let mut images = 0;
        let mut micro_done = 0;
        for _ in 0..accum {
            let Some(batch) = loader.next() else { break };
            if batch.is_empty() {
                continue;
            }
            let s = batch.size as usize;
            let n = batch.len();
            let x =
                Tensor::<4>::from_data(TensorData::new(batch.images, [n, 3, s, s]), &run.device);
            let labels: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &run.device);
            let logits = run.model.forward_with(x, autocast);
            let loss = cross_entropy(logits, y, spec.optim.label_smoothing);
            let value = loss.clone().detach();
            loss_sum = Some(match loss_sum.take() {
                Some(t) => t + value,
                None => value,
            });
            let loss = match loss_scale {
                Some(scale) => loss * (scale / accum as f64),
                None => loss / accum as f64,
            };
            let grads = GradientsParams::from_grads(loss.backward(), &run.model);
            acc.accumulate(&run.model, grads);
            images += n;
            micro_done += 1;
        }
        let Some(loss_sum) = loss_sum else {
            tracing::warn!(
                "run {}: every image of this step was unreadable; the step is skipped",
                i + 1
            );
            return Ok(None);
        };
        let mut grads = acc.grads();
        let norm = grad_norm_tensor(&run.model, &grads);
        let mut q = QueuedStep {
            loss_sum,
            norm,
            norm_read: None,
            skipped: false,
            pending: None,
            micro_batches: micro_done,
            images,
        };
        if let Some(ls) = self.state.loss_scales.get_mut(i) {
            if spec.run.devices.is_empty() {
                let max_norm = spec.optim.grad_clip_norm;
                Self::apply_scaled(run, ls, &self.eval_base, &mut q, grads, lr, max_norm);
            } else {
                // Runs on the devices the user gave them (`run.devices`): read this norm only
                // after the other runs' backward passes are queued, so the devices keep
                // computing meanwhile. On the shared device that would only keep more
                // gradient sets alive at once.
                q.pending = Some(grads);
            }
            return Ok(Some(q));
        }
        if let (Some(max), Some(norm)) = (spec.optim.grad_clip_norm, &q.norm) {
            clip_grads_on_device(&run.model, &mut grads, norm, max);
        }
        let model = std::mem::replace(&mut run.model, self.eval_base.clone());
        run.model = run.optim.step(lr, model, grads);
        Ok(Some(q))
    }

    /// The f16 half of a step: whether the update may be applied depends on the gradients, so
    /// their (scaled) norm is read back here — the price of f16, GradScaler syncs at the same
    /// point. Finite: unscale and clip in one multiplication, then AdamW. Not finite: skip.
    /// Either way the loss scale is updated. (`placeholder` fills the run's slot while AdamW
    /// owns its module.)
    fn apply_scaled(
        run: &mut Run,
        ls: &mut LossScale,
        placeholder: &ImageClassifier,
        q: &mut QueuedStep,
        mut grads: GradientsParams,
        lr: f64,
        max_norm: Option<f64>,
    ) {
        let scaled = q.norm.take().map_or(0.0, scalar);
        let finite = scaled.is_finite();
        q.norm_read = Some(scaled / ls.scale);
        if finite {
            scale_grads(&run.model, &mut grads, ls.unscale_factor(scaled, max_norm));
            let model = std::mem::replace(&mut run.model, placeholder.clone());
            run.model = run.optim.step(lr, model, grads);
        } else {
            q.skipped = true;
        }
        ls.update(finite);
        if !finite {
            info!(
                loss_scale = ls.scale,
                "f16 gradients overflowed: step skipped, loss scale halved"
            );
        }
    }

    /// Reads back a queued step's loss and gradient norm; a non-finite one stops training
    /// (the last checkpoint predates it).
    fn finish_step(&self, i: usize, q: QueuedStep) -> Result<(f64, f64, usize)> {
        let loss = scalar(q.loss_sum) / q.micro_batches.max(1) as f64;
        let norm = q.norm_read.or(q.norm.map(scalar)).unwrap_or(0.0);
        let err = |what| TrainError::NonFinite {
            run: i + 1,
            seed: self.runs[i].seed,
            what,
            epoch: self.state.epoch + 1,
            step: self.state.step_in_epoch + 1,
        };
        if !loss.is_finite() {
            return Err(err("the loss"));
        }
        if q.skipped {
            // f16 overflow: handled by the loss scale, not a divergence.
            return Ok((loss, f64::NAN, q.images));
        }
        if !norm.is_finite() {
            return Err(err("the gradient norm"));
        }
        Ok((loss, norm, q.images))
    }

    fn eval_model_of_run(&self, i: usize) -> Result<ImageClassifier> {
        let state = module_state(&self.runs[i].model);
        Ok(apply_state(self.eval_base.clone(), &state, "run")?)
    }

    /// Model Stock (or the configured method) over the runs' current weights; writes the
    /// report, and resets the runs to the merge when configured and `reset_runs`. Returns the
    /// mean ratio (`None` for a uniform soup).
    fn merge(&mut self, reset_runs: bool, obs: &mut dyn Observer) -> Result<Option<f64>> {
        let spec = self.spec;
        let epoch = self.state.epoch + 1;
        let step = self.state.global_step;
        let _span = info_span!("merge", epoch, step).entered();
        let states: Vec<StateDict> = self.runs.iter().map(|r| module_state(&r.model)).collect();
        let anchor = match (spec.merge.anchor, &self.last_merge) {
            (Anchor::PreviousMerge, Some(m)) => m,
            _ => &self.w0,
        };
        let method = match spec.merge.method {
            MergeMethod::Uniform => Method::UniformSoup,
            MergeMethod::ModelStock => Method::ModelStock {
                clamp_t: spec.merge.clamp_t,
            },
            MergeMethod::None => {
                return Err(TrainError::Plan(
                    "internal: a merge was requested with merge.method = \"none\"".into(),
                ));
            }
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
        let mut merged = StateDict::new();
        for t in tensors {
            let dtype = self
                .w0
                .get(&t.name)
                .map(|h| h.dtype)
                .unwrap_or(clipstock_model::DType::F32);
            merged.insert(
                t.name,
                clipstock_model::HostTensor::new(t.shape, dtype, t.data),
            );
        }
        self.state.merges += 1;
        let name = match spec.merge.period {
            Period::Steps(_) => format!("merges/step_{step:07}"),
            _ => format!("merges/epoch_{epoch:03}"),
        };
        self.dir
            .write(&format!("{name}.json"), report.to_json().as_bytes())?;
        self.dir.write(
            &format!("{name}.svg"),
            clipstock_merge::ratio_plot_svg(&report).as_bytes(),
        )?;
        self.dir.write(
            &format!("{name}.png"),
            &clipstock_merge::ratio_plot_png(&report),
        )?;
        let mean_t = mean_ratio(&report);
        self.dir.metric(&json!({
            "kind": "merge", "epoch": epoch, "global_step": step, "merge": self.state.merges,
            "mean_t": mean_t, "summary": serde_json::to_value(&report.summary).unwrap_or(Value::Null),
        }))?;
        let sm = &report.summary;
        info!(
            "merge {}: t min {:?} mean {:?} max {:?}, {} tensors with cos <= 0",
            self.state.merges, sm.t_min, sm.t_mean, sm.t_max, sm.cos_le_zero
        );
        let f = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into());
        obs.on(Event::Merged {
            epoch,
            summary: format!(
                "{} of {} runs, {} tensors merged, t min {} / mean {} / max {}, {} with cos ≤ 0",
                sm.method,
                sm.n_models,
                sm.merged,
                f(sm.t_min),
                f(sm.t_mean),
                f(sm.t_max),
                sm.cos_le_zero
            ),
        });
        if reset_runs && spec.merge.after_merge == AfterMerge::ResetRuns {
            for (i, run) in self.runs.iter_mut().enumerate() {
                let model = std::mem::replace(&mut run.model, self.eval_base.clone());
                run.model = apply_state(model, &merged, &format!("run {}", i + 1))?;
                if spec.merge.optimizer_state == OptimizerStatePolicy::Reset {
                    run.optim = new_optimizer(spec);
                }
            }
            if spec.merge.optimizer_state == OptimizerStatePolicy::Average {
                let mut pairs: Vec<(&ImageClassifier, &mut ModuleOptimizer)> = self
                    .runs
                    .iter_mut()
                    .map(|r| (&r.model, &mut r.optim))
                    .collect();
                crate::optim_state::average(&mut pairs)?;
            }
        }
        self.last_merge = Some(merged);
        Ok(mean_t)
    }

    /// A stop request interrupts it with [`TrainError::Interrupted`]; the state it leaves is
    /// the one before the evaluation (the runs' evaluations come before the epoch's merge, and
    /// `epoch_end_merged` marks the merged model's), so a resume redoes just that evaluation.
    fn evaluate_model(
        &mut self,
        epoch: u64,
        label: &str,
        model: &ImageClassifier,
        obs: &mut dyn Observer,
    ) -> Result<EvalResults> {
        let _span = info_span!("eval", model = label).entered();
        let sources: Vec<SetSource<'_>> = if self.prepared.is_empty() {
            self.eval_sets.iter().map(SetSource::Disk).collect()
        } else {
            self.prepared.iter().map(SetSource::Prepared).collect()
        };
        let names: Vec<SetName> = sources.iter().map(|s| s.set().name).collect();
        let label_owned = label.to_string();
        let mut eval_opts = eval_options(self.spec);
        eval_opts.cancel = self.stop.clone();
        let results = evaluate(
            model,
            &sources,
            &self.eval_device,
            &eval_opts,
            |p| match p {
                Progress::Start { set_index, images } => obs.on(Event::EvalSet {
                    model: label_owned.clone(),
                    set: names[set_index],
                    images,
                }),
                Progress::Batch { done, .. } => obs.on(Event::EvalProgress { done }),
                Progress::Finish { .. } => {}
            },
            None,
        )
        .map_err(eval_error)?;
        let record = json!({"epoch": epoch, "model": label, "results": results.to_json()});
        self.dir.metric(
            &json!({"kind": "eval", "epoch": epoch, "model": label, "results": results.to_json()}),
        )?;
        // An evaluation redone after an interrupted epoch end replaces its first attempt.
        self.state
            .evals
            .retain(|e| !(e["epoch"] == epoch && e["model"] == label));
        self.state.evals.push(record);
        let row = clipstock_eval::markdown_table(&[(label.to_string(), &results)]);
        info!(model = label, "{}", row.lines().nth(2).unwrap_or_default());
        obs.on(Event::EvalDone {
            model: label.to_string(),
            table_row: row,
        });
        Ok(results)
    }

    /// Saves every run's module and optimizer state, the last merge and the trainer state.
    fn checkpoint(&mut self, obs: &mut dyn Observer) -> Result<()> {
        self.state.checkpoints += 1;
        self.state.dir = format!(
            "{:04}_epoch_{:03}_step_{:07}",
            self.state.checkpoints, self.state.epoch, self.state.global_step
        );
        let ckpt_path = self.dir.path.join("checkpoints").join(&self.state.dir);
        let err = |reason: String| TrainError::Checkpoint {
            path: ckpt_path.clone(),
            reason,
        };
        self.state.has_merge = self.last_merge.is_some();
        self.state.metrics_len = self.dir.metrics_len();
        let runs = &self.runs;
        let last_merge = &self.last_merge;
        let write = |tmp: &Path| -> Result<()> {
            for (i, run) in runs.iter().enumerate() {
                run.model
                    .clone()
                    .into_record()
                    .save(tmp.join(format!("run_{}.bpk", i + 1)))
                    .map_err(|e| err(format!("run {}: {e:?}", i + 1)))?;
                run.optim
                    .save(tmp.join(format!("run_{}.optim.bpk", i + 1)))
                    .map_err(|e| err(format!("run {} optimizer: {e:?}", i + 1)))?;
            }
            if let Some(m) = last_merge {
                m.write_safetensors(
                    &tmp.join("merged.safetensors"),
                    Some(clipstock_model::DType::F32),
                    None,
                )?;
            }
            Ok(())
        };
        let path = self.dir.save_checkpoint(&self.state, write)?;
        obs.on(Event::Checkpoint(path));
        Ok(())
    }

    /// Loads the last complete checkpoint into the freshly built runs.
    fn restore(&mut self) -> Result<()> {
        let state = self.dir.latest()?;
        let dir = self.dir.checkpoint_dir(&state);
        let err = |reason: String| TrainError::Checkpoint {
            path: dir.clone(),
            reason,
        };
        for (i, run) in self.runs.iter_mut().enumerate() {
            let model = std::mem::replace(&mut run.model, self.eval_base.clone());
            run.model = load_run_record(model, &dir.join(format!("run_{}.bpk", i + 1)))?;
            let p = dir.join(format!("run_{}.optim.bpk", i + 1));
            let optim = std::mem::replace(&mut run.optim, new_optimizer(self.spec));
            run.optim = optim
                .load(&p)
                .map_err(|e| err(format!("{}: {e:?}", p.display())))?;
        }
        if state.train_images != self.state.train_images
            || state.train_hash != self.state.train_hash
        {
            return Err(TrainError::Checkpoint {
                path: dir.clone(),
                reason: format!(
                    "the training images changed since this run started ({} images then, {} now, \
                     or different files): the data order of a resume would differ",
                    state.train_images, self.state.train_images
                ),
            });
        }
        self.last_merge = if state.has_merge {
            Some(StateDict::read(&dir.join("merged.safetensors"))?)
        } else {
            None
        };
        self.dir.truncate_metrics(state.metrics_len)?;
        let fresh_scales = std::mem::take(&mut self.state.loss_scales);
        self.state = state;
        if self.state.loss_scales.len() != fresh_scales.len() {
            // Only a checkpoint written by a build without loss scaling lacks them.
            self.state.loss_scales = fresh_scales;
        }
        Ok(())
    }

    fn finish(self, stopped_early: bool) -> Result<Outcome> {
        let table = self.results_table();
        self.dir.write("results.md", table.as_bytes())?;
        let mut final_merged = None;
        if !stopped_early && let Some(m) = &self.last_merge {
            let path = self.dir.file("merged_final.safetensors");
            let canonical = m
                .clone()
                .rename(|k| Some(k.strip_prefix("model.").unwrap_or(k).to_string()));
            let full = clipstock_model::load::with_extras(canonical, &self.extras);
            export(&full, Naming::ModelSoups, None, &path)?;
            final_merged = Some(path);
        }
        if !stopped_early {
            // w0 (with its head) and the individual fine-tuned runs too: the inputs of any
            // later soup or merge, e.g. `clipstock merge --anchor w0 --models run_*_final`.
            let path = self.dir.file("w0.safetensors");
            let canonical = self
                .w0
                .clone()
                .rename(|k| Some(k.strip_prefix("model.").unwrap_or(k).to_string()));
            let full = clipstock_model::load::with_extras(canonical, &self.extras);
            export(&full, Naming::ModelSoups, None, &path)?;
            for (i, run) in self.runs.iter().enumerate() {
                let path = self.dir.file(&format!("run_{}_final.safetensors", i + 1));
                let canonical = module_state(&run.model)
                    .rename(|k| Some(k.strip_prefix("model.").unwrap_or(k).to_string()));
                let full = clipstock_model::load::with_extras(canonical, &self.extras);
                export(&full, Naming::ModelSoups, None, &path)?;
            }
        }
        Ok(Outcome {
            run_dir: self.dir.path.clone(),
            results_markdown: table,
            final_merged,
            stopped_early,
        })
    }

    /// The paper-style table: the latest evaluation of zero-shot, each run and the merge.
    fn results_table(&self) -> String {
        let mut latest: Vec<(String, EvalResults)> = Vec::new();
        for e in &self.state.evals {
            let (Some(model), Some(results)) = (e["model"].as_str(), e.get("results")) else {
                continue;
            };
            let r = results_from_json(results);
            match latest.iter_mut().find(|(m, _)| m == model) {
                Some(slot) => slot.1 = r,
                None => latest.push((model.to_string(), r)),
            }
        }
        let rows: Vec<(String, &EvalResults)> =
            latest.iter().map(|(m, r)| (m.clone(), r)).collect();
        let mut out = format!("# {}\n\n", self.spec.run.name);
        out.push_str(&clipstock_eval::markdown_table(&rows));
        out
    }
}

/// w0: the pretrained image tower with its head (zero-shot from the text tower, the
/// checkpoint's own, or a file), text tower removed, on `eval_device`; plus the checkpoint's
/// unused tensors (carried into exports).
pub fn build_w0(
    spec: &RunSpec,
    classes: &ClassSpace,
    eval_device: &Device,
    cancel: Option<&AtomicBool>,
    obs: &mut dyn Observer,
) -> Result<(ImageClassifier, StateDict)> {
    obs.on(Event::Phase(format!(
        "loading {}",
        spec.model.weights.display()
    )));
    let ckpt = Checkpoint::read(&spec.model.weights)?;
    let head = match &spec.model.head {
        HeadSource::Checkpoint => None,
        HeadSource::File(p) => Some(StateDict::read(p)?),
        HeadSource::ZeroShot => {
            obs.on(Event::Phase("building the zero-shot head".into()));
            let head = zeroshot_head_from_files(
                &ckpt,
                &spec.model.classnames,
                &spec.model.templates,
                eval_device,
                cancel,
            )
            .map_err(|e| match e {
                clipstock_model::ModelError::Cancelled => TrainError::Interrupted,
                e => e.into(),
            })?;
            let n = head.get(HEAD_BIAS).map(|t| t.numel()).unwrap_or(0);
            if n != classes.num_classes() {
                return Err(TrainError::Plan(format!(
                    "model.classnames `{}` has {n} classes but the dataset's class list has {}",
                    spec.model.classnames.display(),
                    classes.num_classes()
                )));
            }
            Some(head)
        }
    };
    let mut eval_base = ckpt.classifier(head.as_ref(), eval_device)?;
    // Fine-tuning trains the image tower and the head; the text tower's only job was the
    // head, so it leaves the model (its tensors are carried to the export as extras).
    eval_base.model.text = None;
    if eval_base.num_classes() != classes.num_classes() {
        return Err(TrainError::Plan(format!(
            "the head has {} classes but the dataset's class list has {}",
            eval_base.num_classes(),
            classes.num_classes()
        )));
    }
    // Everything of the checkpoint the classifier does not hold (the text tower, the
    // checkpoint's own head when another replaces it) travels unchanged into the exports, so
    // they are complete CLIP checkpoints that `clipstock merge` and open_clip can read.
    let used: std::collections::HashSet<String> = module_state(&eval_base)
        .names()
        .map(|k| k.strip_prefix("model.").unwrap_or(k).to_string())
        .collect();
    let mut extras = StateDict::new();
    for (name, t) in ckpt.state.iter() {
        if !used.contains(name) && !name.starts_with("classification_head.") {
            extras.insert(name, t.clone());
        }
    }
    Ok((eval_base, extras))
}

/// A run's module record (parameters and their `ParamId`s) applied to `model`.
fn load_run_record(model: ImageClassifier, path: &Path) -> Result<ImageClassifier> {
    let err = |reason: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    let record = ModuleRecord::load(path).map_err(|e| err(format!("{e:?}")))?;
    model
        .try_load_record(record)
        .map_err(|e| err(format!("{e:?}")))
}

fn run_label(i: usize, seed: u64) -> String {
    format!("run {} (seed {seed})", i + 1)
}

fn new_optimizer(spec: &RunSpec) -> ModuleOptimizer {
    let o = &spec.optim;
    AdamWConfig::new()
        .with_beta_1(o.betas[0] as f32)
        .with_beta_2(o.betas[1] as f32)
        .with_epsilon(o.eps as f32)
        .with_weight_decay(o.weight_decay as f32)
        .init()
}

fn eval_options(spec: &RunSpec) -> EvalOptions {
    EvalOptions {
        batch_size: spec.eval.batch_size,
        workers: spec.data.workers,
        prefetch: spec.data.prefetch.max(1),
        limits: DecodeLimits::default(),
        cancel: None,
    }
}

/// `None` for merges without a ratio (uniform).
fn mean_ratio(report: &MergeReport) -> Option<f64> {
    report.summary.t_mean
}

/// Rebuilds the per-set accuracies stored in the trainer state (for `results.md` after a
/// resume).
fn results_from_json(v: &Value) -> EvalResults {
    let mut sets = Vec::new();
    for name in SetName::ALL {
        if let Some(r) = v.get(name.key()) {
            sets.push(clipstock_eval::SetResult {
                set: name,
                top1: r["top1"].as_f64().unwrap_or(f64::NAN),
                top5: r["top5"].as_f64().unwrap_or(f64::NAN),
                correct1: r["correct1"].as_u64().unwrap_or(0) as usize,
                correct5: r["correct5"].as_u64().unwrap_or(0) as usize,
                count: r["count"].as_u64().unwrap_or(0) as usize,
                skipped: Vec::new(),
                num_labels: r["num_labels"].as_u64().unwrap_or(0) as usize,
                seconds: r["seconds"].as_f64().unwrap_or(0.0),
                images_per_sec: r["images_per_sec"].as_f64().unwrap_or(0.0),
            });
        }
    }
    EvalResults::new(sets)
}
