//! What a training session holds: w0 (the pretrained classifier with its head), the N runs on
//! their devices with their optimizers, the training samples and the evaluation sets.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::FloatDType;
use clipstock_config::{
    ClassFilesDir, Generate, HeadSource, OptimSection, Precision, RunPlan, RunSpec,
};
use clipstock_data::classes::{ClassFiles, ClassSpace};
use clipstock_data::holdout::Holdout;
use clipstock_data::layouts::{EvalSet, OpenOptions, Sample, open_eval_set, open_train_set};
use clipstock_data::loader::{Loader, LoaderOptions, epoch_order};
use clipstock_data::preprocess::{DecodeLimits, TrainTransform, Transform};
use clipstock_eval::{EvalOptions, PreparedSet};
use clipstock_model::load::{HEAD_BIAS, apply_state, canonical_of_module_state, module_state};
use clipstock_model::model::Autocast;
use clipstock_model::zeroshot::zeroshot_head_from_files;
use clipstock_model::{BurnDevice, Checkpoint, DeviceSpec, ImageClassifier, StateDict};

use crate::dist::{Collective, Placement};
use crate::error::{Result, TrainError};
use crate::events::{Event, Observer};

/// In-memory preparation of evaluation sets pays off below this size.
const PREPARE_BUDGET_BYTES: usize = 1 << 30;

/// How the trainer names a run: the merged runs are `run N`, the independent baselines
/// `independent N`, both counted from 1 in their own list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunName {
    pub seed: u64,
    /// A `baselines.independent_seeds` run: trained in lockstep, never merged.
    pub independent: bool,
    /// 1-based, within its kind.
    pub number: usize,
}

impl RunName {
    /// Every run of `spec` in session order: `run.seeds`, then `baselines.independent_seeds`.
    pub fn all(spec: &RunSpec) -> Vec<RunName> {
        let merged = spec.run.seeds.iter().enumerate().map(|(i, &seed)| RunName {
            seed,
            independent: false,
            number: i + 1,
        });
        let independent =
            (spec.baselines.independent_seeds.iter().enumerate()).map(|(i, &seed)| RunName {
                seed,
                independent: true,
                number: i + 1,
            });
        merged.chain(independent).collect()
    }

    /// In evaluations, metrics and tables: `run 1 (seed 1)`, `independent 1 (seed 11)`.
    pub fn label(&self) -> String {
        if self.independent {
            format!("independent {} (seed {})", self.number, self.seed)
        } else {
            run_label(self.number - 1, self.seed)
        }
    }

    /// In file and column names: `run_1`, `independent_1`.
    pub fn stem(&self) -> String {
        let kind = if self.independent {
            "independent"
        } else {
            "run"
        };
        format!("{kind}_{}", self.number)
    }
}

/// One fine-tuning run: its seed, device, weights and AdamW state.
pub struct Run {
    /// The run's seed is `name.seed`.
    pub name: RunName,
    /// The run's autodiff device.
    pub device: Device,
    pub model: ImageClassifier,
    pub optim: ModuleOptimizer,
}

impl Run {
    /// A run starting at w0 on `device` (a plain device; the run trains on its autodiff
    /// form). Every run is a clone of w0's module, so all runs carry w0's `ParamId`s: ids are
    /// not unique across runs, only within one. That is harmless because each run has its own
    /// optimizer, and the one place that combines runs' optimizer state
    /// (`merge.optimizer_state = "average"`) matches parameters by module path, not by id.
    pub fn from_w0(w0: &W0, name: RunName, device: &Device, optim: ModuleOptimizer) -> Result<Run> {
        let model = apply_state(w0.base.clone(), &w0.state, "w0")?;
        let model = model.fork(&device.clone().autodiff()).train();
        Ok(Run {
            name,
            device: device.clone().autodiff(),
            model,
            optim,
        })
    }
}

/// The pretrained starting point.
pub struct W0 {
    /// w0 on the evaluation device: the base every evaluated state is written into.
    pub base: ImageClassifier,
    /// w0's canonical state dict (the merge anchor).
    pub state: StateDict,
    /// The checkpoint's tensors the classifier does not hold (text tower, a replaced head),
    /// carried unchanged into the exports.
    pub extras: StateDict,
}

/// The evaluation sets, decoded once into memory when they are small.
pub struct EvalSets {
    pub on_disk: Vec<EvalSet>,
    pub prepared: Vec<PreparedSet>,
}

pub struct Session {
    pub w0: W0,
    /// The merged runs (`run.seeds`), then the independent ones; see [`Session::merged_runs`].
    pub runs: Vec<Run>,
    /// How many of `runs` are merged: the first `run.seeds.len()`.
    pub merged_runs: usize,
    /// The runs this process trains: all of them, or its group's block in a distributed
    /// training (the others are copies, refreshed by [`sync_runs`]).
    pub own: std::ops::Range<usize>,
    /// This process's place among the processes (one process: rank 0 of 1).
    pub place: Placement,
    /// The held-out split, if the run has one: `holdout.txt`'s text.
    pub holdout_list: Option<String>,
    pub eval_device: Device,
    pub train: Arc<[Sample]>,
    /// Count and hash of the training samples (paths and labels): a resume on other images
    /// would draw another data order, so it is refused.
    pub train_images: usize,
    pub train_hash: u64,
    pub eval: EvalSets,
    pub steps_per_epoch: u64,
    pub image_size: u32,
    pub autocast: Autocast,
    /// The last merge, the anchor of `anchor = "previous_merge"` and the model evaluated as
    /// `merged`.
    pub last_merge: Option<StateDict>,
}

impl Session {
    /// `stop` interrupts the long parts (the zero-shot head, decoding the evaluation sets)
    /// with [`TrainError::Interrupted`].
    pub fn build(
        plan: &RunPlan,
        stop: &Arc<AtomicBool>,
        comm: &dyn Collective,
        obs: &mut dyn Observer,
    ) -> Result<Self> {
        let spec = &plan.spec;
        let classes = ClassSpace::load(&class_files(&plan.class_files_dir))?;
        // One writer of the shared image tree; the others find it complete.
        if comm.rank() != 0 {
            comm.barrier();
        }
        match &plan.generate {
            Some(Generate::Quickstart { assets }) => {
                obs.on(Event::Phase(format!(
                    "quickstart image sets in {} (written from the shipped assets on first use)",
                    spec.data.root.display()
                )));
                clipstock_data::quickstart::ensure_quickstart_tree(assets, &spec.data.root)?;
            }
            None => {}
        }
        if comm.rank() == 0 {
            comm.barrier();
        }
        let n_runs = spec.run.seeds.len() + spec.baselines.independent_seeds.len();
        let place = Placement {
            rank: comm.rank(),
            size: comm.size(),
            per_run: if comm.size() > 1 {
                plan.spec.run.ranks_per_seed
            } else {
                1
            },
            runs: n_runs,
        };
        let own = place.own();
        // Distributed, a process computes on one device: its entry of `run.devices` (by its
        // rank on the machine), or `run.device` with a GPU ordinal moved up by that rank
        // (`cuda` is cuda:0 for the first process, cuda:1 for the second…); its copies of the
        // other runs live there too.
        let eval_spec = match (comm.size() > 1, plan.per_run_devices) {
            (false, _) => plan.eval_device,
            (true, true) => plan.devices[comm.local_rank() % plan.devices.len()],
            (true, false) => plan.eval_device.for_local_rank(comm.local_rank()),
        };
        let eval_device = eval_spec.device()?;
        let w0 = build_w0(spec, &classes, &eval_device, Some(stop), obs)?;
        let model_size = w0.base.model.visual.image_size() as u32;
        let image_size = spec.data.image_size.unwrap_or(model_size);
        if image_size != model_size {
            return Err(TrainError::ImageSize {
                configured: image_size,
                model: model_size,
            });
        }

        let autocast = autocast_of(spec.optim.precision);
        let on_cpu = plan
            .devices
            .iter()
            .any(|d| matches!(d, DeviceSpec::Cpu | DeviceSpec::Flex));
        if on_cpu && autocast.dtype().is_some() {
            tracing::warn!(
                "optim.precision = \"{}\" on the CPU: flex gains nothing from 16-bit matmuls \
                 (bf16 is computed through f32, f16 by a slower half-precision GEMM); use it to \
                 try a GPU config, not for speed",
                spec.optim.precision.name()
            );
        }

        obs.on(Event::Phase("indexing the image folders".into()));
        let TrainSamples {
            train,
            holdout,
            holdout_list,
        } = train_samples(spec, &classes)?;
        let mut w0 = w0;
        if spec.model.head == HeadSource::LinearProbe {
            // Rank 0 probes and keeps the head; the others read it once it is there.
            if comm.rank() != 0 {
                comm.barrier();
            }
            // Probed on the images the runs train on: never the held-out ones.
            let state = crate::linear_probe::probed_state(
                &w0.base,
                &w0.state,
                &train,
                spec,
                &eval_device,
                &plan.run_dir.join(crate::linear_probe::PROBE_HEAD),
                stop,
                obs,
            )?;
            if comm.rank() == 0 {
                comm.barrier();
            }
            w0.base = apply_state(w0.base, &state, "w0 with the probed head")?;
            w0.state = state;
        }
        let mut runs = Vec::new();
        for (name, spec_dev) in RunName::all(spec).into_iter().zip(&plan.devices) {
            let device = if plan.per_run_devices && comm.size() == 1 {
                spec_dev.device()?
            } else {
                eval_device.clone()
            };
            runs.push(Run::from_w0(&w0, name, &device, new_optimizer(spec))?);
        }
        let steps_per_epoch = (train.len() / spec.optim.batch_size) as u64;
        if steps_per_epoch == 0 {
            return Err(TrainError::TrainSetTooSmall {
                images: train.len(),
                batch_size: spec.optim.batch_size,
            });
        }
        let eval = open_eval_sets(plan, &classes, holdout, image_size, stop, obs)?;
        Ok(Session {
            w0,
            runs,
            merged_runs: spec.run.seeds.len(),
            own,
            place,
            holdout_list,
            eval_device,
            train_images: train.len(),
            train_hash: samples_hash(&train),
            train: train.into(),
            eval,
            steps_per_epoch,
            image_size,
            autocast,
            last_merge: None,
        })
    }

    /// One loader per run this process trains for `epoch`, starting after `start_step`
    /// steps: each run's data order and augmentation depend only on (seed, epoch, sample
    /// index). A process that shares its runs with others (`run.ranks_per_seed` = K) reads
    /// its share of every step: images `k·B/K .. (k+1)·B/K` of the step's B, k its place in
    /// the group.
    pub fn loaders(
        &self,
        spec: &RunSpec,
        micro: usize,
        epoch: u64,
        start_step: u64,
    ) -> Result<Vec<Loader>> {
        let batch = spec.optim.batch_size;
        let used = (self.steps_per_epoch as usize) * batch;
        let mut loaders = Vec::new();
        for run in &self.runs[self.own.clone()] {
            let mut order = epoch_order(self.train.len(), run.name.seed, epoch);
            order.truncate(used);
            let order = order.split_off(start_step as usize * batch);
            let order = rank_share(order, batch, self.place.per_run, self.place.member());
            let transform = Transform::Train(TrainTransform {
                size: self.image_size,
                scale: (spec.data.augment.scale[0], spec.data.augment.scale[1]),
                ratio: (spec.data.augment.ratio[0], spec.data.augment.ratio[1]),
                hflip: spec.data.augment.hflip,
                randaugment: spec
                    .data
                    .augment
                    .randaugment
                    .map(|r| clipstock_data::randaugment::RandAugment::new(r.n, r.m)),
            });
            loaders.push(Loader::new(
                self.train.clone(),
                order,
                transform,
                LoaderOptions {
                    batch_size: micro,
                    workers: spec.data.workers,
                    prefetch: spec.data.prefetch.max(1),
                    seed: run.name.seed,
                    epoch,
                    limits: DecodeLimits::default(),
                },
            )?);
        }
        Ok(loaders)
    }

    /// Run `i`'s current weights in a copy of w0 on the evaluation device.
    pub fn run_for_eval(&self, i: usize) -> Result<ImageClassifier> {
        let state = module_state(&self.runs[i].model);
        Ok(apply_state(self.w0.base.clone(), &state, "run")?)
    }

    /// The last merge in a copy of w0 on the evaluation device.
    pub fn merged_for_eval(&self) -> Result<Option<ImageClassifier>> {
        match &self.last_merge {
            Some(m) => Ok(Some(apply_state(self.w0.base.clone(), m, "merged")?)),
            None => Ok(None),
        }
    }
}

/// The images a run trains on, and the held-out ones as an evaluation set.
struct TrainSamples {
    train: Vec<Sample>,
    holdout: Option<EvalSet>,
    holdout_list: Option<String>,
}

/// Process `member`'s part of each step of `order` (steps of `batch` samples) when `k`
/// processes share them: the `member`-th of `k` equal contiguous slices of every step.
pub fn rank_share(order: Vec<usize>, batch: usize, k: usize, member: usize) -> Vec<usize> {
    if k <= 1 {
        return order;
    }
    let share = batch / k;
    order
        .chunks(batch)
        .flat_map(|step| step.iter().skip(member * share).take(share).copied())
        .collect()
}

/// Every process's copy of the runs in `range` made its owner's, bit for bit (distributed
/// training; nothing to do in one process). The owner (the lead of the run's group) sends
/// each tensor; the others write it into their copy through `apply_state`, keeping its
/// `ParamId`s. The other members of the run's group already hold the same weights: they
/// check that instead, since processes that drifted apart would no longer average the
/// gradients of one model.
pub fn sync_runs(
    session: &mut Session,
    comm: &dyn Collective,
    range: std::ops::Range<usize>,
) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    for i in range {
        let owner = session.place.owner(i);
        let mut state = module_state(&session.runs[i].model);
        let names: Vec<String> = state.names().map(str::to_string).collect();
        let member = comm.rank() != owner && session.own.contains(&i);
        for name in &names {
            if let Some(t) = state.get_mut(name) {
                let mine = member.then(|| t.data.clone());
                comm.broadcast_f32(owner, &mut t.data);
                if let Some(mine) = mine
                    && !same_bits(&mine, &t.data)
                {
                    return Err(TrainError::Distributed(format!(
                        "{} differs between rank {owner} and rank {} at `{name}`: the \
                         processes of a run no longer take the same steps",
                        session.runs[i].name.label(),
                        comm.rank()
                    )));
                }
            }
        }
        if comm.rank() != owner && !member {
            let run = &mut session.runs[i];
            let model = std::mem::replace(&mut run.model, session.w0.base.clone());
            run.model = apply_state(model, &state, &format!("run {}", i + 1))?;
        }
    }
    Ok(())
}

/// The training folder minus the held-out split (drawn from the whole folder, as model-soups'
/// mask is), then `data.train_limit` of what is left.
fn train_samples(spec: &RunSpec, classes: &ClassSpace) -> Result<TrainSamples> {
    let set = open_train_set(&spec.data.root, classes)?;
    let split = match (&spec.data.holdout_file, spec.data.holdout_per_class) {
        (Some(file), _) => Some(Holdout::read(file, &set.dir, &set.samples)?),
        (None, Some(k)) => Some(Holdout::draw(
            &set.samples,
            &classes.wnids,
            k,
            spec.data.holdout_seed.unwrap_or(0),
        )?),
        (None, None) => None,
    };
    let (mut samples, holdout, holdout_list) = match split {
        Some(h) => {
            let list = h.to_list(&set.dir, &set.samples);
            let (train, held) = h.split(set.samples);
            let eval = clipstock_data::holdout::eval_set(&set.dir, held, classes.num_classes());
            (train, Some(eval), Some(list))
        }
        None => (set.samples, None, None),
    };
    if let Some(limit) = spec.data.train_limit
        && limit < samples.len()
    {
        let n = samples.len();
        samples = (0..limit).map(|i| samples[i * n / limit].clone()).collect();
    }
    Ok(TrainSamples {
        train: samples,
        holdout,
        holdout_list,
    })
}

/// A run's evaluation sets and its held-out split, prepared as the trainer prepares them
/// (the split drawn again: it depends only on the training folder and the config).
pub fn evaluation_sets(
    plan: &RunPlan,
    image_size: u32,
    stop: &Arc<AtomicBool>,
    obs: &mut dyn Observer,
) -> Result<EvalSets> {
    let classes = ClassSpace::load(&class_files(&plan.class_files_dir))?;
    let samples = train_samples(&plan.spec, &classes)?;
    open_eval_sets(plan, &classes, samples.holdout, image_size, stop, obs)
}

fn open_eval_sets(
    plan: &RunPlan,
    classes: &ClassSpace,
    holdout: Option<EvalSet>,
    image_size: u32,
    stop: &Arc<AtomicBool>,
    obs: &mut dyn Observer,
) -> Result<EvalSets> {
    let spec = &plan.spec;
    let open_opts = OpenOptions {
        limit_per_set: spec.eval.limit_per_set,
        objectnet_border_crop: spec.eval.objectnet_border_crop,
        expect_published_sizes: spec.eval.expect_published_sizes,
    };
    let mut on_disk = Vec::new();
    for &name in &plan.eval.sets {
        on_disk.push(open_eval_set(name, &spec.data.root, classes, &open_opts)?);
    }
    // Scored with every evaluation, after the paper's sets.
    on_disk.extend(holdout);
    let bytes_needed: usize = on_disk
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
        for set in on_disk.drain(..) {
            prepared.push(PreparedSet::prepare(set, image_size, &opts).map_err(eval_error)?);
        }
    }
    Ok(EvalSets { on_disk, prepared })
}

/// FNV-1a over every sample's path and label.
fn samples_hash(samples: &[Sample]) -> u64 {
    samples.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, smp| {
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
    })
}

/// The class files of a plan's label space.
pub fn class_files(dir: &ClassFilesDir) -> ClassFiles {
    match dir {
        ClassFilesDir::Custom(d) => ClassFiles::in_dir(d),
        ClassFilesDir::ImageNet(d) => ClassFiles::imagenet(d),
    }
}

/// The matmul precision of `optim.precision`.
pub fn autocast_of(precision: Precision) -> Autocast {
    match precision {
        Precision::F32 => Autocast::OFF,
        Precision::F16 => Autocast::to(FloatDType::F16),
        Precision::Bf16 => Autocast::to(FloatDType::BF16),
    }
}

/// Refuses a reduced precision a device reports no arithmetic for (ndarray; on wgpu it
/// depends on the adapter) before anything is built, instead of failing or computing garbage
/// mid-run. This is the one check of a plan that needs burn.
pub fn check_precision(plan: &RunPlan) -> Result<()> {
    let Some(dtype) = autocast_of(plan.spec.optim.precision).dtype() else {
        return Ok(());
    };
    let keyed: Vec<(String, DeviceSpec)> = if plan.per_run_devices {
        (plan.devices.iter().enumerate())
            .map(|(i, d)| (format!("run.devices[{i}]"), *d))
            .collect()
    } else {
        vec![("run.device".to_string(), plan.eval_device)]
    };
    for (key, spec) in keyed {
        if !spec.device()?.supports_dtype(dtype) {
            return Err(TrainError::PrecisionUnsupported {
                precision: plan.spec.optim.precision.name(),
                key,
                device: spec.to_string(),
                dtype: format!("{dtype:?}"),
            });
        }
    }
    Ok(())
}

/// A cancelled evaluation is a stop request, not an evaluation failure.
pub(crate) fn eval_error(e: clipstock_eval::EvalError) -> TrainError {
    match e {
        clipstock_eval::EvalError::Cancelled => TrainError::Interrupted,
        e => TrainError::Eval(e),
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
) -> Result<W0> {
    obs.on(Event::Phase(format!(
        "loading {}",
        spec.model.weights.display()
    )));
    let ckpt = Checkpoint::read(&spec.model.weights)?;
    let head = match &spec.model.head {
        HeadSource::Checkpoint => None,
        HeadSource::File(p) => Some(StateDict::read(p)?),
        // The probe (in `Session::build`) starts from the zero-shot head.
        HeadSource::ZeroShot | HeadSource::LinearProbe => {
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
                return Err(TrainError::ClassCount {
                    head: format!("model.classnames `{}`", spec.model.classnames.display()),
                    head_classes: n,
                    dataset_classes: classes.num_classes(),
                });
            }
            Some(head)
        }
    };
    let mut base = ckpt.classifier(head.as_ref(), eval_device)?;
    // Fine-tuning trains the image tower and the head; the text tower's only job was the
    // head, so it leaves the model (its tensors are carried to the export as extras).
    base.model.text = None;
    if base.num_classes() != classes.num_classes() {
        return Err(TrainError::ClassCount {
            head: "the head".into(),
            head_classes: base.num_classes(),
            dataset_classes: classes.num_classes(),
        });
    }
    let state = module_state(&base);
    // Everything of the checkpoint the classifier does not hold (the text tower, the
    // checkpoint's own head when another replaces it) travels unchanged into the exports, so
    // they are complete CLIP checkpoints that `clipstock merge` and open_clip can read.
    let used: HashSet<String> = canonical_of_module_state(state.clone())
        .names()
        .map(str::to_string)
        .collect();
    let mut extras = StateDict::new();
    for (name, t) in ckpt.state.iter() {
        if !used.contains(name) && !name.starts_with("classification_head.") {
            extras.insert(name, t.clone());
        }
    }
    Ok(W0 {
        base,
        state,
        extras,
    })
}

/// A run's module record (parameters and their `ParamId`s) applied to `model`.
pub(crate) fn load_run_record(model: ImageClassifier, path: &Path) -> Result<ImageClassifier> {
    let err = |reason: String| TrainError::Checkpoint {
        path: path.to_path_buf(),
        reason,
    };
    check_readable(path)?;
    let record = ModuleRecord::load(path).map_err(|e| err(e.to_string()))?;
    model
        .try_load_record(record)
        .map_err(|e| err(e.to_string()))
}

/// burn reports a file it cannot open as a string holding the OS error; opening it first
/// gives the usual "cannot read `path`: <OS error>" instead.
pub(crate) fn check_readable(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(crate::error::io("read", path))
}

/// How evaluations and the metrics name run `i` (0-based).
pub fn run_label(i: usize, seed: u64) -> String {
    format!("run {} (seed {seed})", i + 1)
}

pub(crate) fn new_optimizer(spec: &RunSpec) -> ModuleOptimizer {
    adamw(&spec.optim)
}

/// AdamW as `[optim]` sets it (burn's defaults differ from PyTorch's: eps and weight decay
/// are always given).
pub fn adamw(o: &OptimSection) -> ModuleOptimizer {
    ModuleOptimizer::from(crate::fused_adamw::FusedAdamW::new(
        o.betas[0] as f32,
        o.betas[1] as f32,
        o.eps as f32,
        o.weight_decay as f32,
    ))
}

pub(crate) fn eval_options(spec: &RunSpec) -> EvalOptions {
    EvalOptions {
        batch_size: spec.eval.batch_size,
        workers: spec.data.workers,
        prefetch: spec.data.prefetch.max(1),
        limits: DecodeLimits::default(),
        cancel: None,
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{ModuleVisitor, Param, ParamId};
    use clipstock_model::ClipArch;

    struct Ids(Vec<ParamId>);

    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }

    fn ids(m: &ImageClassifier) -> Vec<ParamId> {
        let mut v = Ids(Vec::new());
        m.visit(&mut v);
        v.0
    }

    /// The invariant `Run::from_w0` documents (and docs/ARCHITECTURE.md states): runs share
    /// w0's parameter ids, and each still gets an optimizer of its own.
    #[test]
    fn runs_are_clones_of_w0_and_share_its_param_ids() {
        let arch = ClipArch::tiny();
        let device = Device::flex();
        let base = ImageClassifier::random(&arch, 3, 1, &device);
        let w0 = W0 {
            state: module_state(&base),
            base,
            extras: StateDict::new(),
        };
        let spec_optim = OptimSection::default();
        let name = |seed| RunName {
            seed,
            independent: false,
            number: seed as usize,
        };
        let a = Run::from_w0(&w0, name(1), &device, adamw(&spec_optim)).expect("run a");
        let b = Run::from_w0(&w0, name(2), &device, adamw(&spec_optim)).expect("run b");
        let (ia, ib) = (ids(&a.model), ids(&b.model));
        assert!(!ia.is_empty());
        assert_eq!(ia, ib);
        assert_eq!(ia, ids(&w0.base));
        // Distinct within one run: the optimizer's per-id state never mixes two tensors.
        let unique: HashSet<ParamId> = ia.iter().copied().collect();
        assert_eq!(unique.len(), ia.len());
        assert_eq!(module_state(&a.model), w0.state);
    }
}
