//! Errors of an evaluation; each names the set involved.

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("evaluation set `{set}`: {source}")]
    Data {
        set: String,
        #[source]
        source: clipstock_data::DataError,
    },

    #[error("{0}")]
    Invalid(String),

    #[error("evaluation interrupted")]
    Cancelled,

    #[error("cannot write `{path}`: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
