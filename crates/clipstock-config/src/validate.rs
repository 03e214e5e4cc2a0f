//! Range checks that serde's types cannot express. The first violation is reported.

use std::collections::HashSet;
use std::fmt::Debug;
use std::path::Path;

use crate::schema::{GENERATORS, HeadSource, Period, RunSpec};
use crate::{ARCHS, ArchPreset, ConfigError, DeviceSpec, SetName};

struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn fail(&self, key: &str, value: impl Debug, allowed: &str) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.to_owned(),
            value: format!("{value:?}"),
            allowed: allowed.to_owned(),
        }
    }

    fn check(
        &self,
        ok: bool,
        key: &str,
        value: impl Debug,
        allowed: &str,
    ) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(self.fail(key, value, allowed))
        }
    }
}

/// Whether `s` is `cpu`, `flex`, `ndarray`, `wgpu[:N]` or `cuda[:N]` ([`DeviceSpec`]'s
/// spelling).
///
/// Only the syntax: whether the backend is compiled in and the ordinal exists is the model
/// crate's business at run time.
pub fn is_device_syntax(s: &str) -> bool {
    s.parse::<DeviceSpec>().is_ok()
}

const DEVICE_ALLOWED: &str = DeviceSpec::EXPECTED;

/// As many ops as RandAugment has: they are drawn with replacement, so more is allowed by
/// torchvision, but past this the image is mostly noise and the key is likely a typo.
const RANDAUGMENT_MAX_OPS: u32 = 14;
/// The last of torchvision's 31 magnitude bins.
const RANDAUGMENT_MAX_MAGNITUDE: u32 = 30;

pub(crate) fn validate(spec: &RunSpec, file: &Path) -> Result<(), ConfigError> {
    let c = Checker { file };
    let run = &spec.run;
    let name_ok = !run.name.is_empty()
        && run.name != "."
        && run.name != ".."
        && run
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    c.check(
        name_ok,
        "run.name",
        &run.name,
        "a non-empty name of A-Z a-z 0-9 . _ - (it names the run directory)",
    )?;
    c.check(
        run.seeds.len() >= 2,
        "run.seeds",
        &run.seeds,
        "at least two seeds (Model Stock merges two or more runs)",
    )?;
    let distinct: HashSet<u64> = run.seeds.iter().copied().collect();
    c.check(
        distinct.len() == run.seeds.len(),
        "run.seeds",
        &run.seeds,
        "distinct seeds (equal seeds give identical runs)",
    )?;
    // TOML integers are i64: a larger seed (only possible in code) could not be written back.
    for (i, seed) in run.seeds.iter().enumerate() {
        c.check(
            i64::try_from(*seed).is_ok(),
            &format!("run.seeds[{i}]"),
            seed,
            "an integer in [0, 2^63)",
        )?;
    }
    c.check(
        is_device_syntax(&run.device),
        "run.device",
        &run.device,
        DEVICE_ALLOWED,
    )?;
    let independent = &spec.baselines.independent_seeds;
    let distinct: HashSet<u64> = independent.iter().copied().collect();
    c.check(
        distinct.len() == independent.len(),
        "baselines.independent_seeds",
        independent,
        "distinct seeds (equal seeds give identical runs)",
    )?;
    for (i, seed) in independent.iter().enumerate() {
        c.check(
            i64::try_from(*seed).is_ok(),
            &format!("baselines.independent_seeds[{i}]"),
            seed,
            "an integer in [0, 2^63)",
        )?;
    }
    if !run.devices.is_empty() {
        let runs = run.seeds.len() + independent.len();
        // Under MPI with several processes per run, a process takes its entry by its rank on
        // the machine, so one device per process is the natural list.
        let per_process = runs * run.ranks_per_seed;
        c.check(
            run.devices.len() == runs || run.devices.len() == per_process,
            "run.devices",
            &run.devices,
            &if run.ranks_per_seed > 1 {
                format!(
                    "one device per run ({runs}) or per process ({runs} runs × \
                     run.ranks_per_seed = {per_process}), or an empty list"
                )
            } else if independent.is_empty() {
                format!(
                    "one device per seed ({} seeds), or an empty list",
                    run.seeds.len()
                )
            } else {
                format!(
                    "one device per run ({} run.seeds, then {} baselines.independent_seeds), \
                     or an empty list",
                    run.seeds.len(),
                    independent.len()
                )
            },
        )?;
        for (i, d) in run.devices.iter().enumerate() {
            c.check(
                is_device_syntax(d),
                &format!("run.devices[{i}]"),
                d,
                DEVICE_ALLOWED,
            )?;
        }
    }
    c.check(
        run.log_every_steps >= 1,
        "run.log_every_steps",
        run.log_every_steps,
        "at least 1",
    )?;

    let model = &spec.model;
    if let Some(arch) = &model.arch {
        c.check(
            arch.parse::<ArchPreset>().is_ok(),
            "model.arch",
            arch,
            &format!("one of {ARCHS:?} (or omit it to infer from the weights)"),
        )?;
    }
    if let HeadSource::File(p) = &model.head {
        c.check(
            !p.as_os_str().is_empty(),
            "model.head.file",
            p,
            "a non-empty path",
        )?;
    }
    if let Some(lp) = &model.linear_probe {
        c.check(
            model.head == HeadSource::LinearProbe,
            "model.linear_probe",
            "(a table)",
            "only with model.head = \"linear_probe\"",
        )?;
        c.check(
            lp.epochs >= 1,
            "model.linear_probe.epochs",
            lp.epochs,
            "at least 1",
        )?;
        c.check(
            lp.lr.is_finite() && lp.lr > 0.0,
            "model.linear_probe.lr",
            lp.lr,
            "a finite number > 0",
        )?;
        c.check(
            lp.weight_decay.is_finite() && lp.weight_decay >= 0.0,
            "model.linear_probe.weight_decay",
            lp.weight_decay,
            "a finite number >= 0",
        )?;
        c.check(
            lp.batch_size >= 1,
            "model.linear_probe.batch_size",
            lp.batch_size,
            "at least 1",
        )?;
        c.check(
            i64::try_from(lp.seed).is_ok(),
            "model.linear_probe.seed",
            lp.seed,
            "an integer in [0, 2^63)",
        )?;
    }
    c.check(
        !model.weights.as_os_str().is_empty(),
        "model.weights",
        &model.weights,
        "a non-empty path",
    )?;

    let data = &spec.data;
    c.check(
        !data.root.as_os_str().is_empty(),
        "data.root",
        &data.root,
        "a non-empty path",
    )?;
    if let Some(g) = &data.generate {
        c.check(
            GENERATORS.contains(&g.as_str()),
            "data.generate",
            g,
            &format!("one of {GENERATORS:?} (or omit it)"),
        )?;
    }
    if let Some(n) = data.train_limit {
        c.check(
            n >= 1,
            "data.train_limit",
            n,
            "at least 1 (or omit it for the whole set)",
        )?;
    }
    if let Some(n) = data.image_size {
        c.check(
            n >= 1,
            "data.image_size",
            n,
            "at least 1 (or omit it for the model's size)",
        )?;
    }
    c.check(
        data.prefetch >= 1,
        "data.prefetch",
        data.prefetch,
        "at least 1",
    )?;
    if let Some(n) = data.holdout_per_class {
        c.check(
            n >= 1,
            "data.holdout_per_class",
            n,
            "at least 1 (or omit it to train on every image)",
        )?;
        if let Some(p) = &data.holdout_file {
            return Err(c.fail(
                "data.holdout_file",
                p,
                "either data.holdout_per_class or data.holdout_file, not both",
            ));
        }
    }
    if let Some(seed) = data.holdout_seed {
        c.check(
            data.holdout_per_class.is_some(),
            "data.holdout_seed",
            seed,
            "only with data.holdout_per_class (it seeds that draw)",
        )?;
        c.check(
            i64::try_from(seed).is_ok(),
            "data.holdout_seed",
            seed,
            "an integer in [0, 2^63)",
        )?;
    }
    if let Some(p) = &data.holdout_file {
        c.check(
            !p.as_os_str().is_empty(),
            "data.holdout_file",
            p,
            "a non-empty path",
        )?;
    }
    let [lo, hi] = data.augment.scale;
    c.check(
        lo.is_finite() && hi.is_finite() && 0.0 < lo && lo <= hi && hi <= 1.0,
        "data.augment.scale",
        data.augment.scale,
        "[a, b] with 0 < a <= b <= 1",
    )?;
    let [lo, hi] = data.augment.ratio;
    c.check(
        lo.is_finite() && hi.is_finite() && 0.0 < lo && lo <= hi,
        "data.augment.ratio",
        data.augment.ratio,
        "[a, b] with 0 < a <= b",
    )?;
    if let Some(ra) = data.augment.randaugment {
        c.check(
            (1..=RANDAUGMENT_MAX_OPS).contains(&ra.n),
            "data.augment.randaugment.n",
            ra.n,
            &format!(
                "an integer in [1, {RANDAUGMENT_MAX_OPS}] (or omit randaugment to turn it off)"
            ),
        )?;
        c.check(
            ra.m <= RANDAUGMENT_MAX_MAGNITUDE,
            "data.augment.randaugment.m",
            ra.m,
            &format!(
                "an integer in [0, {RANDAUGMENT_MAX_MAGNITUDE}] (torchvision's 31 magnitude bins)"
            ),
        )?;
    }

    let o = &spec.optim;
    c.check(o.epochs >= 1, "optim.epochs", o.epochs, "at least 1")?;
    c.check(
        o.batch_size >= 1,
        "optim.batch_size",
        o.batch_size,
        "at least 1",
    )?;
    if let Some(m) = o.micro_batch_size {
        c.check(
            m >= 1 && m <= o.batch_size && o.batch_size.is_multiple_of(m),
            "optim.micro_batch_size",
            m,
            &format!("a divisor of optim.batch_size = {} (accumulation steps = batch_size / micro_batch_size)", o.batch_size),
        )?;
    }
    let k = spec.run.ranks_per_seed;
    c.check(
        k >= 1 && o.batch_size.is_multiple_of(k),
        "run.ranks_per_seed",
        k,
        &format!(
            "at least 1, and a divisor of optim.batch_size = {} (each process of a run takes \
             batch_size / ranks_per_seed images of every step)",
            o.batch_size
        ),
    )?;
    if k > 1 {
        let share = o.batch_size / k;
        let (micro, _) = spec.rank_share();
        c.check(
            share.is_multiple_of(micro),
            "optim.micro_batch_size",
            o.micro_batch_size,
            &format!(
                "with run.ranks_per_seed = {k}, a divisor of each process's share of a step \
                 (batch_size / ranks_per_seed = {share} images)"
            ),
        )?;
    }
    c.check(
        o.lr.is_finite() && o.lr > 0.0,
        "optim.lr",
        o.lr,
        "a finite number > 0",
    )?;
    for (i, b) in o.betas.iter().enumerate() {
        c.check(
            (0.0..1.0).contains(b),
            &format!("optim.betas[{i}]"),
            b,
            "a number in [0, 1)",
        )?;
    }
    c.check(
        o.eps.is_finite() && o.eps > 0.0,
        "optim.eps",
        o.eps,
        "a finite number > 0",
    )?;
    c.check(
        o.weight_decay.is_finite() && o.weight_decay >= 0.0,
        "optim.weight_decay",
        o.weight_decay,
        "a finite number >= 0",
    )?;
    if let Some(g) = o.grad_clip_norm {
        c.check(
            g.is_finite() && g > 0.0,
            "optim.grad_clip_norm",
            g,
            "a finite number > 0, or \"off\"",
        )?;
    }
    c.check(
        (0.0..1.0).contains(&o.label_smoothing),
        "optim.label_smoothing",
        o.label_smoothing,
        "a number in [0, 1)",
    )?;

    c.check(
        o.mixup_alpha.is_finite() && o.mixup_alpha >= 0.0,
        "optim.mixup_alpha",
        o.mixup_alpha,
        "a finite number >= 0 (0 = no mixup)",
    )?;

    match spec.merge.period {
        Period::Epoch => {}
        Period::Epochs(n) => c.check(n >= 1, "merge.period.epochs", n, "at least 1")?,
        Period::Steps(n) => c.check(n >= 1, "merge.period.steps", n, "at least 1")?,
    }

    let e = &spec.eval;
    let mut seen = HashSet::new();
    for (i, s) in e.sets.iter().enumerate() {
        let key = format!("eval.sets[{i}]");
        let set = SetName::from_name(s)
            .map_err(|_| c.fail(&key, s, &format!("one of {}", SetName::valid_names())))?;
        // `imagenet` and `in` are one set.
        c.check(seen.insert(set), &key, s, "each set at most once")?;
    }
    if let Some(n) = e.limit_per_set {
        c.check(
            n >= 1,
            "eval.limit_per_set",
            n,
            "at least 1 (or omit it for whole sets)",
        )?;
    }
    c.check(
        e.batch_size >= 1,
        "eval.batch_size",
        e.batch_size,
        "at least 1",
    )?;
    Ok(())
}
