//! The clipstock run file: TOML schema, `--set key=value` overrides and validation.
//!
//! Deliberately burn-free: a typo in a run file is reported in milliseconds, before any model
//! is built. Pipeline: TOML text → `toml::Table` → overrides → [`RunSpec`] (strict serde,
//! unknown keys are errors) → range checks. Paths are not checked for existence here; the
//! trainer does that with file-specific errors.

mod error;
mod overrides;
mod schema;
mod validate;

use std::ops::Range;
use std::path::Path;

pub use error::ConfigError;
pub use overrides::KEYS;
pub use schema::*;
pub use validate::is_device_syntax;

/// Reads, overrides, deserializes and validates a run file.
pub fn load(path: &Path, overrides: &[String]) -> Result<RunSpec, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    from_str(&text, path, overrides)
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
        deserialize(text, origin, false)?
    } else {
        overrides::apply(&mut table, overrides, origin)?;
        let merged = toml::to_string(&table).map_err(|e| ConfigError::BadOverride {
            file: origin.to_path_buf(),
            arg: overrides.join(" "),
            reason: e.to_string(),
        })?;
        deserialize(&merged, origin, true)?
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

fn deserialize(text: &str, origin: &Path, overridden: bool) -> Result<RunSpec, ConfigError> {
    toml::from_str::<RunSpec>(text).map_err(|e| schema_error(e, text, origin, overridden))
}

/// Turns a toml/serde error into one that names the dotted key. toml 1 keeps the key path
/// private but gives a span, so the key is recovered by finding which entry of the document
/// the span falls in.
fn schema_error(e: toml::de::Error, text: &str, origin: &Path, overridden: bool) -> ConfigError {
    let span = e.span();
    let message = e.message().trim_end().to_owned();
    let Some(span) = span else {
        // Only a missing top-level section has no span.
        return ConfigError::Schema {
            file: origin.to_path_buf(),
            key: missing_field(&message).unwrap_or_default().to_owned(),
            message: describe(&message),
            location: None,
            overridden,
        };
    };
    let mut location = Some(line_col(text, span.start));
    let mut path = match missing_field(&message) {
        // The span is the table's that lacks the key; the key itself is only in the message.
        Some(field) => {
            let mut path = table_path_with_span(text, &span);
            if path.is_empty() {
                // A missing section: the "position" would be the start of the file.
                location = None;
            }
            path.push(field.to_owned());
            path
        }
        None => key_path_at(text, &span),
    };
    if let Some(field) = unknown_field(&message)
        && path.last().map(String::as_str) != Some(field)
    {
        path.push(field.to_owned());
    }
    ConfigError::Schema {
        file: origin.to_path_buf(),
        key: path.join("."),
        message: describe(&message),
        location,
        overridden,
    }
}

fn missing_field(message: &str) -> Option<&str> {
    between(message, "missing field `", "`")
}

fn unknown_field(message: &str) -> Option<&str> {
    between(message, "unknown field `", "`")
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = s.strip_prefix(start)?;
    rest.split_once(end).map(|(inner, _)| inner)
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

/// The dotted path of the innermost key or value whose span holds `span.start`.
fn key_path_at(text: &str, span: &Range<usize>) -> Vec<String> {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return Vec::new();
    };
    let mut path = Vec::new();
    find_in_table(doc.get_ref(), span.start, &mut path);
    path
}

/// The dotted path of the table whose span is exactly `span` (empty: the document itself).
fn table_path_with_span(text: &str, span: &Range<usize>) -> Vec<String> {
    fn walk(table: &toml::de::DeTable<'_>, span: &Range<usize>, path: &mut Vec<String>) -> bool {
        for (key, value) in table.iter() {
            if let toml::de::DeValue::Table(inner) = value.get_ref() {
                path.push(key.get_ref().to_string());
                if value.span() == *span || walk(inner, span, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = Vec::new();
    if let Ok(doc) = toml::de::DeTable::parse(text) {
        walk(doc.get_ref(), span, &mut path);
    }
    path
}

fn find_in_table(table: &toml::de::DeTable<'_>, at: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        if let toml::de::DeValue::Table(inner) = value.get_ref()
            && find_in_table(inner, at, path)
        {
            return true;
        }
        if key.span().contains(&at) || value.span().contains(&at) {
            return true;
        }
        path.pop();
    }
    false
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}
