//! `clipstock bench`: images/s of the eval forward pass and the AdamW training step on random
//! weights, and the seconds of the trainer's periodic merge hook, printed as a table with each
//! row's peak RSS. Performance goals live here, never in timed tests.

use std::hint::black_box;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use clap::{Args, ValueEnum};

use clipstock_config::{OptimSection, Precision};
use clipstock_data::loader::Batch;
use clipstock_merge::{MergeOptions, Method, TensorRef};
use clipstock_model::load::{apply_state, module_state};
use clipstock_model::model::{Autocast, ImageClassifier, Init};
use clipstock_model::{BurnDevice, ClipArch, DType, DeviceSpec, HostTensor, StateDict};
use clipstock_train::session::{Run, adamw};
use clipstock_train::state_refs;
use clipstock_train::step::{LossScale, StepRunner};

#[derive(Args)]
pub struct BenchArgs {
    /// Model preset: ViT-B-32, ViT-B-16 or ViT-L-14.
    #[arg(long, default_value = "ViT-B-32")]
    model: String,
    /// Devices to compare, comma separated.
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    device: Vec<DeviceSpec>,
    /// Batch size of the training step.
    #[arg(long, default_value_t = 8)]
    train_batch: usize,
    /// Batch size of the eval forward pass.
    #[arg(long, default_value_t = 32)]
    eval_batch: usize,
    /// Timed iterations (after one untimed warm-up); the table shows their median and best.
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// What to time: `both` is eval + train; `merge` is the trainer's merge hook (two runs,
    /// Model Stock) on the model's weights in memory; `all` is the three.
    #[arg(long, value_enum, default_value = "both")]
    what: What,
    /// Matmul precision of the eval and train rows: f32, bf16 or f16 (as `optim.precision`;
    /// parameters stay f32).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum What {
    Eval,
    Train,
    Both,
    Merge,
    All,
}

impl What {
    fn eval(self) -> bool {
        matches!(self, What::Eval | What::Both | What::All)
    }
    fn train(self) -> bool {
        matches!(self, What::Train | What::Both | What::All)
    }
    fn merge(self) -> bool {
        matches!(self, What::Merge | What::All)
    }
}

struct Row {
    device: String,
    what: String,
    /// Images per iteration; `None` for work that is not per image (the merge).
    batch: Option<usize>,
    /// Seconds of each timed iteration.
    secs: Vec<f64>,
    peak_rss_mib: Option<f64>,
    load: Option<f64>,
}

impl Row {
    fn median(&self) -> f64 {
        let mut s = self.secs.clone();
        s.sort_by(f64::total_cmp);
        match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        }
    }
    fn best(&self) -> f64 {
        self.secs.iter().copied().fold(f64::NAN, f64::min)
    }
}

pub fn run(a: BenchArgs) -> Result<()> {
    // Under mpirun (a build with the mpi feature) the processes share one training step, as
    // the processes of a run with `run.ranks_per_seed` do; rank 0 prints the table.
    let group = crate::train_cmd::distributed();
    let rank = group.as_ref().map_or(0, |g| g.rank());
    let mut arch = ClipArch::preset(&a.model).with_context(|| {
        format!(
            "unknown model `{}` (presets: {})",
            a.model,
            ClipArch::preset_names().join(", ")
        )
    })?;
    // The classifier never runs the text tower; leaving it out matches training memory.
    arch.text = None;
    let iters = a.iters.max(1);
    let ac = clipstock_train::autocast_of(a.precision);
    let (eval_label, train_label) = match a.precision {
        Precision::F32 => ("eval forward", "train step (AdamW)"),
        Precision::Bf16 => ("eval forward (bf16)", "train step (AdamW, bf16)"),
        Precision::F16 => ("eval forward (f16)", "train step (AdamW, f16)"),
    };
    let mut rows = Vec::new();
    // Each closure returns per-iteration seconds; `measure` wraps it with the row's peak RSS.
    for spec in &a.device {
        if let Some(dtype) = ac.dtype()
            && (a.what.eval() || a.what.train())
            && !spec.device()?.supports_dtype(dtype)
        {
            bail!("--precision: device {spec:?} cannot compute in {dtype:?}");
        }
        if a.what.eval() {
            let device = spec.device()?;
            rows.push(measure(spec, eval_label, Some(a.eval_batch), || {
                Ok(time_eval(&arch, a.eval_batch, iters, &device, ac))
            })?);
        }
        if a.what.train() {
            let device = spec.autodiff_device()?;
            let procs = group.as_ref().map_or(1, |g| g.size());
            if !a.train_batch.is_multiple_of(procs) {
                bail!(
                    "--train-batch {} does not split over {procs} processes",
                    a.train_batch
                );
            }
            let label = if procs > 1 {
                format!("{train_label}, 1/{procs} of the batch per process")
            } else {
                train_label.to_owned()
            };
            let mut sync_secs = Vec::new();
            rows.push(measure(spec, &label, Some(a.train_batch), || {
                let (secs, sync) = time_train(
                    &arch,
                    a.train_batch / procs,
                    iters,
                    &device,
                    a.precision,
                    group.clone(),
                );
                sync_secs = sync;
                Ok(secs)
            })?);
            if procs > 1 {
                rows.push(Row {
                    device: spec.to_string(),
                    what: format!("gradient all-reduce in that step ({procs} processes)"),
                    batch: None,
                    secs: sync_secs,
                    peak_rss_mib: None,
                    load: load_average(),
                });
            }
        }
        if a.what.merge() {
            rows.push(measure(
                spec,
                "merge hook (2 runs, Model Stock)",
                None,
                || time_merge(&arch, iters, *spec),
            )?);
        }
    }
    if rank != 0 {
        return Ok(());
    }
    out!(
        "model {} ({} vision params), {} threads available, {} timed iterations per row",
        a.model,
        arch.num_params(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        iters
    );
    out!(
        "| device | work | batch | median s/iter | best s/iter | img/s (median) | peak RSS MiB | load |"
    );
    out!("|---|---|---|---|---|---|---|---|");
    let opt = |v: Option<f64>, prec: usize| v.map_or("–".to_string(), |x| format!("{x:.prec$}"));
    for r in &rows {
        let med = r.median();
        out!(
            "| {} | {} | {} | {:.3} | {:.3} | {} | {} | {} |",
            r.device,
            r.what,
            r.batch.map_or("–".to_string(), |b| b.to_string()),
            med,
            r.best(),
            opt(r.batch.map(|b| b as f64 / med), 2),
            opt(r.peak_rss_mib, 0),
            opt(r.load, 2),
        );
    }
    Ok(())
}

/// Runs one row's timing between a reset and a read of the kernel's peak-RSS counter, so the
/// row reports its own peak (plus whatever earlier rows left resident: run one `--what` per
/// process for clean numbers). `load` is the 1-minute load average when the row ends, because
/// on a shared machine the timings mean little without it.
fn measure(
    spec: &DeviceSpec,
    what: &str,
    batch: Option<usize>,
    time: impl FnOnce() -> Result<Vec<f64>>,
) -> Result<Row> {
    let reset = reset_peak_rss();
    let secs = time()?;
    let peak_rss_mib = if reset { peak_rss_mib() } else { None };
    let load = load_average();
    err!(
        "{spec} {what}: {} s/iter",
        secs.iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(Row {
        device: spec.to_string(),
        what: what.to_owned(),
        batch,
        secs,
        peak_rss_mib,
        load,
    })
}

/// Writing 5 to `clear_refs` resets VmHWM to the current RSS (Linux ≥ 4.0). False elsewhere,
/// and the row then shows no peak rather than an earlier row's.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// VmHWM ("high water mark"): the process's peak resident set since start or the last reset.
/// Host memory only; a GPU's allocations are not in it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn random_classifier(arch: &ClipArch, seed: u64, device: &Device) -> ImageClassifier {
    ImageClassifier::random(arch, 1000, seed, device)
}

fn images(arch: &ClipArch, batch: usize, device: &Device) -> Tensor<4> {
    let s = arch.vision.image_size;
    let data = Init::new(7).normal_vec(batch * 3 * s * s, 1.0);
    Tensor::from_data(TensorData::new(data, [batch, 3, s, s]), device)
}

fn sync(t: Tensor<2>) {
    // Reading one value back forces the queued work to finish on asynchronous backends.
    let _ = t.narrow(0, 0, 1).narrow(1, 0, 1).into_data();
}

/// One untimed warm-up call (first-use allocations, kernel compilation and autotuning on GPU
/// backends), then the seconds of each of `iters` timed calls.
fn timed(iters: usize, mut f: impl FnMut()) -> Vec<f64> {
    f();
    (0..iters)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect()
}

fn time_eval(
    arch: &ClipArch,
    batch: usize,
    iters: usize,
    device: &Device,
    ac: Autocast,
) -> Vec<f64> {
    let model = random_classifier(arch, 1, device);
    let x = images(arch, batch, device);
    timed(iters, || sync(model.forward_with(x.clone(), ac)))
}

/// The trainer's own step ([`StepRunner`]) with the recipe's optimizer settings (AdamW,
/// clipping at global norm 1; f16 with its loss scale), one run, one micro-batch; each timed
/// step ends with the trainer's read-back of loss and gradient norm. With `group`, every
/// process of it takes `batch` images and the gradients are averaged across them, as in a
/// run that `run.ranks_per_seed` processes share; the second list is the seconds of each
/// step spent in that average.
fn time_train(
    arch: &ClipArch,
    batch: usize,
    iters: usize,
    device: &Device,
    precision: Precision,
    group: Option<clipstock_train::dist::Comm>,
) -> (Vec<f64>, Vec<f64>) {
    let optim = OptimSection {
        precision,
        ..OptimSection::default()
    };
    let runner = StepRunner {
        autocast: clipstock_train::autocast_of(precision),
        label_smoothing: optim.label_smoothing,
        grad_clip_norm: optim.grad_clip_norm,
        accumulation_steps: 1,
        per_run_devices: false,
        mixup_alpha: 0.0,
        epoch: 0,
        group,
    };
    let model = random_classifier(arch, 1, device).train();
    let placeholder = model.clone();
    let mut runs = [Run {
        name: clipstock_train::session::RunName {
            seed: 1,
            independent: false,
            number: 1,
        },
        device: device.clone(),
        model,
        optim: adamw(&optim),
    }];
    let mut scales = match precision {
        Precision::F16 => vec![LossScale::default()],
        _ => Vec::new(),
    };
    let s = arch.vision.image_size;
    let pixels = Init::new(7).normal_vec(batch * 3 * s * s, 1.0);
    let labels: Vec<usize> = (0..batch).map(|i| (i * 37) % 1000).collect();
    let mut sync = Vec::new();
    let mut synced = clipstock_train::grad_sync::sync_seconds();
    let secs = timed(iters, || {
        let mut batches = [std::iter::once(Batch::from_parts(
            pixels.clone(),
            labels.clone(),
            s as u32,
        ))];
        // A non-finite loss from random weights would say nothing about speed; the time does.
        let _ = runner.step(&mut runs, &mut batches, optim.lr, &mut scales, &placeholder);
        let now = clipstock_train::grad_sync::sync_seconds();
        sync.push(now - synced);
        synced = now;
    });
    // The first call is the untimed warm-up.
    sync.remove(0);
    (secs, sync)
}

/// The trainer's periodic merge hook (`clipstock_train`'s `Trainer::merge`) without its file
/// writes: host copies of two runs' parameters (`module_state`), Model Stock against an anchor
/// (`merge_tensors`; the anchor's state is computed once, as the trainer keeps w0), the merged
/// weights written back into both runs (`apply_state`), and the report rendered as the hook
/// renders it (JSON, SVG, PNG; not written). Random weights with three seeds: the cosines
/// differ from a real run's, the work does not (every tensor is read, merged and written the
/// same way whatever its values). Phases go to stderr.
fn time_merge(arch: &ClipArch, iters: usize, spec: DeviceSpec) -> Result<Vec<f64>> {
    let eval_device = spec.device()?;
    let train_device = spec.autodiff_device()?;
    let anchor = module_state(&random_classifier(arch, 1, &eval_device));
    // Trained runs live on the autodiff device, like the trainer's.
    let mut runs: Vec<ImageClassifier> = [2, 3]
        .into_iter()
        .map(|seed| random_classifier(arch, seed, &train_device).train())
        .collect();
    let opts = MergeOptions::new(Method::ModelStock { clamp_t: false });
    let mut phases = Vec::new();
    let mut hook = |runs: Vec<ImageClassifier>| -> Result<Vec<ImageClassifier>> {
        let t0 = Instant::now();
        let states: Vec<StateDict> = runs.iter().map(module_state).collect();
        let t1 = Instant::now();
        let anchor_refs = state_refs(&anchor);
        let model_refs: Vec<Vec<TensorRef<'_>>> = states.iter().map(state_refs).collect();
        let model_slices: Vec<&[TensorRef<'_>]> = model_refs.iter().map(Vec::as_slice).collect();
        let (tensors, report) =
            clipstock_merge::merge_tensors(Some(&anchor_refs), &model_slices, &opts)?;
        let mut merged = StateDict::new();
        for t in tensors {
            merged.insert(t.name, HostTensor::new(t.shape, DType::F32, t.data));
        }
        let t2 = Instant::now();
        let runs = runs
            .into_iter()
            .enumerate()
            .map(|(i, m)| apply_state(m, &merged, &format!("run {}", i + 1)))
            .collect::<clipstock_model::Result<Vec<_>>>()?;
        for m in &runs {
            sync(m.classification_head.weight.val());
        }
        let t3 = Instant::now();
        black_box(report.to_json());
        black_box(clipstock_merge::ratio_plot_svg(&report));
        black_box(clipstock_merge::ratio_plot_png(&report));
        let t4 = Instant::now();
        phases.push([t0, t1, t2, t3, t4]);
        Ok(runs)
    };
    let mut secs = Vec::with_capacity(iters);
    runs = hook(runs)?;
    for _ in 0..iters {
        let start = Instant::now();
        runs = hook(runs)?;
        secs.push(start.elapsed().as_secs_f64());
    }
    drop(runs);
    for (i, t) in phases.iter().enumerate().skip(1) {
        let d = |a: usize, b: usize| (t[b] - t[a]).as_secs_f64();
        err!(
            "{spec} merge {i}: module_state ×2 {:.3} s, merge_tensors {:.3} s, apply_state ×2 {:.3} s, report render {:.3} s",
            d(0, 1),
            d(1, 2),
            d(2, 3),
            d(3, 4)
        );
    }
    Ok(secs)
}
