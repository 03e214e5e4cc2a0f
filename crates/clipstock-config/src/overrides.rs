//! `--set a.b=value`: edits of the parsed TOML table, applied before deserializing so an
//! override goes through exactly the checks a value written in the file does.

use std::path::Path;

use crate::ConfigError;

/// Every key a file (and so `--set`) may name. A test keeps this list equal to the schema.
pub const KEYS: &[&str] = &[
    "run.name",
    "run.output_dir",
    "run.seeds",
    "run.device",
    "run.devices",
    "run.log_every_steps",
    "run.checkpoint_every_epochs",
    "run.ranks_per_seed",
    "model.weights",
    "model.arch",
    "model.head",
    "model.classnames",
    "model.templates",
    "model.linear_probe",
    "data.root",
    "data.class_dir",
    "data.generate",
    "data.train_limit",
    "data.image_size",
    "data.workers",
    "data.prefetch",
    "data.augment.scale",
    "data.augment.ratio",
    "data.augment.hflip",
    "data.holdout_per_class",
    "data.holdout_seed",
    "data.holdout_file",
    "data.augment.randaugment",
    "optim.epochs",
    "optim.batch_size",
    "optim.micro_batch_size",
    "optim.lr",
    "optim.betas",
    "optim.eps",
    "optim.weight_decay",
    "optim.warmup_steps",
    "optim.schedule",
    "optim.grad_clip_norm",
    "optim.label_smoothing",
    "optim.precision",
    "optim.mixup_alpha",
    "merge.method",
    "merge.period",
    "merge.anchor",
    "merge.optimizer_state",
    "merge.after_merge",
    "merge.clamp_t",
    "eval.sets",
    "eval.every_epochs",
    "eval.limit_per_set",
    "eval.batch_size",
    "eval.zero_shot",
    "eval.runs",
    "eval.objectnet_border_crop",
    "eval.expect_published_sizes",
    "baselines.independent_seeds",
];

/// Keys whose value is a plain string. `--set run.name=2024-05-01` must stay a string even
/// though it also reads as a TOML date; numbers and booleans given to these keys are kept as
/// the text typed.
const STRING_KEYS: &[&str] = &[
    "run.name",
    "run.output_dir",
    "run.device",
    "model.weights",
    "model.arch",
    "model.classnames",
    "model.templates",
    "data.root",
    "data.class_dir",
    "data.generate",
    "data.holdout_file",
];

/// Applies `overrides` in order (a later one wins) to `table`.
pub(crate) fn apply(
    table: &mut toml::Table,
    overrides: &[String],
    origin: &Path,
) -> Result<(), ConfigError> {
    for arg in overrides {
        let (key, raw) = split(arg, origin)?;
        check_known(key, origin)?;
        let value = parse_value(key, raw);
        set(table, key, value, arg, origin)?;
    }
    Ok(())
}

fn split<'a>(arg: &'a str, origin: &Path) -> Result<(&'a str, &'a str), ConfigError> {
    let bad = |reason: &str| ConfigError::BadOverride {
        file: origin.to_path_buf(),
        arg: arg.to_owned(),
        reason: reason.to_owned(),
    };
    let (key, raw) = arg
        .split_once('=')
        .ok_or_else(|| bad("expected KEY=VALUE, e.g. optim.lr=1e-5"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(bad("the key before `=` is empty"));
    }
    Ok((key, raw.trim()))
}

fn check_known(key: &str, origin: &Path) -> Result<(), ConfigError> {
    if KEYS.contains(&key) {
        return Ok(());
    }
    // Suggest the siblings: a typo is almost always within the right section.
    let section = key.rsplit_once('.').map_or("", |(s, _)| s);
    let mut siblings: Vec<&str> = KEYS
        .iter()
        .filter_map(|k| k.strip_prefix(section)?.strip_prefix('.'))
        .filter(|rest| !section.is_empty() || !rest.contains('.'))
        .collect();
    let section = if siblings.is_empty() {
        siblings = KEYS.to_vec();
        "all"
    } else {
        section
    };
    Err(ConfigError::UnknownOverrideKey {
        file: origin.to_path_buf(),
        key: key.to_owned(),
        section: section.to_owned(),
        known: siblings.join(", "),
    })
}

fn parse_value(key: &str, raw: &str) -> toml::Value {
    match raw.parse::<toml::Value>() {
        Ok(v @ (toml::Value::String(_) | toml::Value::Array(_) | toml::Value::Table(_))) => v,
        Ok(_) if STRING_KEYS.contains(&key) => toml::Value::String(raw.to_owned()),
        Ok(v) => v,
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

fn set(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
    arg: &str,
    origin: &Path,
) -> Result<(), ConfigError> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let leaf = parts.pop().unwrap_or(key);
    let mut current = table;
    let mut walked = String::new();
    for part in parts {
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(part);
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            other => {
                return Err(ConfigError::BadOverride {
                    file: origin.to_path_buf(),
                    arg: arg.to_owned(),
                    reason: format!(
                        "`{walked}` in the file is a {}, not a table",
                        other.type_str()
                    ),
                });
            }
        };
    }
    current.insert(leaf.to_owned(), value);
    Ok(())
}
