//! The clipstock run file: TOML schema, `--set key=value` overrides and validation.
//!
//! Deliberately burn-free: a typo in a run file is reported in milliseconds, before any model
//! is built. Pipeline: TOML text → `toml::Table` → overrides → [`RunSpec`] (strict serde,
//! unknown keys are errors) → range checks → [`RunSpec::resolve`]: the [`RunPlan`], with the
//! cross-field checks, the paths resolved (the rule: [`RunSpec::resolve`] and
//! configs/README.md) and the input files checked to exist.
//!
//! It is also the vocabulary other crates share: [`DeviceSpec`], [`SetName`], [`ArchPreset`].

mod arch;
mod device;
mod diff;
mod error;
mod overrides;
mod plan;
mod schema;
mod sets;
mod validate;

use std::path::Path;

pub use arch::{ARCHS, ArchPreset, UnknownArch};
pub use device::{DeviceSpec, DeviceSpecError};
pub use diff::{KeyDiff, LOCATION_KEYS, diff_toml};
pub use error::ConfigError;
pub use overrides::KEYS;
pub use plan::{
    Boundary, ClassFilesDir, EvalPlan, Generate, HeadPlan, MergePlan, PATH_KEYS, PathBases, RunPlan,
};
pub use schema::*;
pub use sets::{SetName, UnknownSetName};
pub use validate::is_device_syntax;

/// Reads, overrides, deserializes and validates a run file.
pub fn load(path: &Path, overrides: &[String]) -> Result<RunSpec, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    from_str(&text, path, overrides)
}

/// [`load`], then [`RunSpec::resolve`] with the paths of `path`, `overrides` and the working
/// directory ([`PathBases::for_file`]): what `clipstock train` runs on.
pub fn load_plan(path: &Path, overrides: &[String]) -> Result<RunPlan, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let spec = from_str(&text, path, overrides)?;
    spec.resolve(&PathBases::for_file(path, &text, overrides)?)
}

/// As [`load`], for text already in memory; `origin` is the file named in errors.
pub fn from_str(text: &str, origin: &Path, overrides: &[String]) -> Result<RunSpec, ConfigError> {
    let syntax = |e: toml::de::Error| ConfigError::Syntax {
        file: origin.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    };
    // Parsed on its own first so a syntax error is reported as one, not as a schema error.
    let mut table: toml::Table = toml::from_str(text).map_err(syntax)?;
    let spec = if overrides.is_empty() {
        // Straight from the user's text, so error positions are lines of their file.
        deserialize(text, origin)?
    } else {
        overrides::apply(&mut table, overrides, origin)?;
        let merged = toml::to_string(&table).map_err(|e| ConfigError::BadOverride {
            file: origin.to_path_buf(),
            arg: overrides.join(" "),
            reason: e.to_string(),
        })?;
        // Positions in `merged` mean nothing to the user: the error is pinned either on the
        // override that wrote the bad key or on the key's place in their file.
        deserialize(&merged, origin).map_err(|e| attribute(e, text, overrides))?
    };
    spec.validate(origin)?;
    Ok(spec)
}

impl RunSpec {
    /// The range checks `load` applies, for specs built or edited in code.
    /// `origin` is the file named in errors.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        validate::validate(self, origin)
    }

    /// The fully resolved config (every default written out), re-loadable by [`load`].
    ///
    /// Optional keys that are unset are left out, which is how a file says "unset".
    pub fn to_toml(&self) -> String {
        // Every field is a string, number, bool, array or table; the only failure toml's
        // serializer has for those is an integer above i64::MAX, which no parsed file holds.
        match toml::to_string(self) {
            Ok(s) => s,
            Err(e) => format!("# clipstock: this run spec cannot be written as TOML: {e}\n"),
        }
    }
}

fn deserialize(text: &str, origin: &Path) -> Result<RunSpec, ConfigError> {
    let syntax = |e: toml::de::Error| ConfigError::Syntax {
        file: origin.to_path_buf(),
        message: e.to_string().trim_end().to_owned(),
    };
    let de = toml::Deserializer::parse(text).map_err(syntax)?;
    serde_path_to_error::deserialize(de).map_err(|e| schema_error(e, text, origin))
}

/// A schema error with the dotted key of the value it is about. serde reports an unknown or a
/// missing key at the table that holds it, so that key's name (which serde's own message
/// quotes) is the last part.
fn schema_error(
    e: serde_path_to_error::Error<toml::de::Error>,
    text: &str,
    origin: &Path,
) -> ConfigError {
    let mut key = dotted(e.path());
    let inner = e.inner();
    let message = inner.message().trim_end().to_owned();
    // A missing section is reported at the document, whose "position" is its first byte.
    let mut location = inner.span().map(|span| line_col(text, span.start));
    if let Some(field) = quoted_after(&message, "missing field `") {
        if key.is_empty() {
            location = None;
        }
        push_key(&mut key, field);
    } else if let Some(field) = quoted_after(&message, "unknown field `")
        && key.rsplit('.').next() != Some(field)
    {
        push_key(&mut key, field);
    }
    ConfigError::Schema {
        file: origin.to_path_buf(),
        key,
        message: describe(&message),
        location,
        from_override: None,
    }
}

/// Re-points a schema error found in the file-plus-overrides document: at the last override
/// that wrote the key (or a table holding it), else at the key's line and column in `text`.
fn attribute(e: ConfigError, text: &str, overrides: &[String]) -> ConfigError {
    let ConfigError::Schema {
        file,
        key,
        message,
        location: _,
        from_override: _,
    } = e
    else {
        return e;
    };
    let wrote = |arg: &&String| {
        let set = arg.split_once('=').map_or(arg.as_str(), |(k, _)| k).trim();
        key == set
            || [".", "["]
                .iter()
                .any(|sep| key.starts_with(&format!("{set}{sep}")))
            || set.starts_with(&format!("{key}."))
    };
    match overrides.iter().rev().find(wrote) {
        Some(arg) => ConfigError::Schema {
            file,
            location: None,
            from_override: Some(arg.trim().to_owned()),
            key,
            message,
        },
        None => ConfigError::Schema {
            file,
            location: position_in(text, &key, message.starts_with("unknown key")),
            from_override: None,
            key,
            message,
        },
    }
}

/// `line:column` of dotted `key` in `text`: its value, or with `at_key` its name. None when
/// the file does not write it (a missing key).
fn position_in(text: &str, key: &str, at_key: bool) -> Option<(usize, usize)> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        // An array element (`scale[1]`): the array's place is close enough.
        let part = part.split_once('[').map_or(part, |(name, _)| name);
        let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == part)?;
        if parts.peek().is_none() {
            let span = if at_key { k.span() } else { v.span() };
            return Some(line_col(text, span.start));
        }
        match v.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => return Some(line_col(text, v.span().start)),
        }
    }
    None
}

/// `a.b[2].c` from serde_path_to_error's segments.
fn dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path {
        match segment {
            Segment::Map { key: k } => push_key(&mut key, k),
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    key
}

fn push_key(dotted: &mut String, key: &str) {
    if !dotted.is_empty() {
        dotted.push('.');
    }
    dotted.push_str(key);
}

/// The name serde quotes after `prefix` in its `missing field` / `unknown field` messages.
fn quoted_after<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = message.strip_prefix(prefix)?;
    rest.split_once('`').map(|(inner, _)| inner)
}

/// serde's "unknown field" lists the expected fields; say "key" since that is TOML's word.
fn describe(message: &str) -> String {
    if message.starts_with("unknown field") {
        message
            .replacen("unknown field", "unknown key", 1)
            .replacen("expected one of", "known keys:", 1)
    } else if message.starts_with("missing field") {
        message.replacen("missing field", "missing required key", 1)
    } else {
        message.to_owned()
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
