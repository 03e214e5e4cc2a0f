use std::path::PathBuf;

/// Everything that can be wrong with a run file or its `--set` overrides.
///
/// Every variant names the file; every variant past the TOML syntax names the dotted key, so
/// the message alone tells the user what to edit.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read run file {}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The file is not TOML. `message` is toml's own report (line, column, excerpt).
    #[error("{} is not valid TOML: {message}", file.display())]
    Syntax { file: PathBuf, message: String },

    /// A `--set` argument that is not `key=value`.
    #[error("--set {arg:?} (for {}): {reason}", file.display())]
    BadOverride {
        file: PathBuf,
        arg: String,
        reason: String,
    },

    #[error(
        "--set {key}=... (for {}): unknown key `{key}`; keys of [{section}]: {known}",
        file.display()
    )]
    UnknownOverrideKey {
        file: PathBuf,
        key: String,
        section: String,
        known: String,
    },

    /// Unknown key, missing key or wrong type. `location` is `line:column` in the file, absent
    /// when the value came from a `--set` override, which `from_override` then names.
    #[error("{}{}: `{key}`: {message}{}", file.display(), location_suffix(location),
        override_suffix(from_override))]
    Schema {
        file: PathBuf,
        key: String,
        message: String,
        location: Option<(usize, usize)>,
        /// The `--set KEY=VALUE` argument that wrote the bad value.
        from_override: Option<String>,
    },

    /// A well-typed value outside its allowed range.
    #[error("{}: `{key}` = {value} is invalid: expected {allowed}", file.display())]
    Invalid {
        file: PathBuf,
        key: String,
        value: String,
        allowed: String,
    },

    /// A file the run reads (`model.weights`, the head's files) that is not there.
    #[error("{}: `{key}`: `{}` does not exist or is not a file", file.display(), path.display())]
    MissingFile {
        file: PathBuf,
        key: String,
        path: PathBuf,
    },

    /// Relative `--set` paths and defaults resolve against it; without it they cannot.
    #[error("cannot read the working directory")]
    WorkingDir {
        #[source]
        source: std::io::Error,
    },
}

fn location_suffix(location: &Option<(usize, usize)>) -> String {
    match location {
        Some((line, col)) => format!(":{line}:{col}"),
        None => String::new(),
    }
}

fn override_suffix(from_override: &Option<String>) -> String {
    match from_override {
        Some(arg) => format!(" (from --set {arg})"),
        None => String::new(),
    }
}

impl ConfigError {
    /// The dotted key the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownOverrideKey { key, .. }
            | ConfigError::Schema { key, .. }
            | ConfigError::Invalid { key, .. }
            | ConfigError::MissingFile { key, .. } => Some(key),
            _ => None,
        }
    }
}
