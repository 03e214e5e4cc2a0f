//! What to merge and how: the method and the per-tensor choices. Serde-friendly so a run file
//! or the CLI can carry it verbatim, and so the report can record exactly what was done.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{MergeError, Result};
use crate::source::ReadMode;

/// The merge operator applied to the selected tensors. Every method here has the form
/// `w = t·mean_i(w_i) + (1 − t)·w0` per tensor; they differ only in how t is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Method {
    /// Model Stock (SPEC.md §1): t from the mean pairwise cosine of the task deltas, per tensor
    /// or per group. `clamp_t` clips t into [0, 1]; the official code does not.
    ModelStock {
        #[serde(default)]
        clamp_t: bool,
    },
    /// The plain mean of the fine-tuned models (t = 1; the anchor is not needed).
    UniformSoup,
    /// WiSE-FT: `(1 − α)·w0 + α·w1` (with several models, their mean takes w1's place).
    WiseFt { alpha: f64 },
    /// Task arithmetic: `w0 + λ·Σ_i (w_i − w0)`, i.e. t = λ·N.
    TaskArithmetic { lambda: f64 },
}

impl Method {
    /// Short name used in reports and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Method::ModelStock { .. } => "model_stock",
            Method::UniformSoup => "uniform_soup",
            Method::WiseFt { .. } => "wise_ft",
            Method::TaskArithmetic { .. } => "task_arithmetic",
        }
    }

    /// Human-readable name with parameters.
    pub fn describe(&self) -> String {
        match self {
            Method::ModelStock { clamp_t: false } => "Model Stock".to_string(),
            Method::ModelStock { clamp_t: true } => "Model Stock (t clamped to [0, 1])".to_string(),
            Method::UniformSoup => "uniform soup".to_string(),
            Method::WiseFt { alpha } => format!("WiSE-FT (alpha = {alpha})"),
            Method::TaskArithmetic { lambda } => format!("task arithmetic (lambda = {lambda})"),
        }
    }

    pub(crate) fn min_models(&self) -> usize {
        match self {
            Method::ModelStock { .. } => 2,
            _ => 1,
        }
    }

    pub(crate) fn needs_anchor(&self) -> bool {
        !matches!(self, Method::UniformSoup)
    }

    /// The fixed ratio of the methods that have one (all but Model Stock), for `n` models.
    pub(crate) fn fixed_t(&self, n: usize) -> Option<f64> {
        match self {
            Method::ModelStock { .. } => None,
            Method::UniformSoup => Some(1.0),
            Method::WiseFt { alpha } => Some(*alpha),
            Method::TaskArithmetic { lambda } => Some(lambda * n as f64),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| {
            MergeError::InvalidOption(format!("{} {what} must be finite, got {v}", self.name()))
        };
        match self {
            Method::WiseFt { alpha } if !alpha.is_finite() => Err(bad("alpha", *alpha)),
            Method::TaskArithmetic { lambda } if !lambda.is_finite() => Err(bad("lambda", *lambda)),
            _ => Ok(()),
        }
    }
}

/// What float tensors outside the selection become.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unselected {
    /// The plain mean of the fine-tuned models (what the reference does with the text-tower
    /// tensors fine-tuning never touches).
    #[default]
    Average,
    /// The anchor's values.
    Anchor,
}

/// Options of a merge. `Default` is Model Stock over every tensor, no groups, unclamped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MergeOptions {
    /// The operator; serialised as `{"name": "model_stock", "clamp_t": false}` etc.
    pub method: Method,
    /// Regexes (searched anywhere in the name); a float tensor is selected if it matches one
    /// of them, or if the list is empty. Every pattern must match some tensor.
    pub include: Vec<String>,
    /// Regexes; a matching tensor is not selected even if included.
    pub exclude: Vec<String>,
    /// Group patterns with a `(?P<member>…)` capture (see [`crate::GroupRule`]); selected
    /// tensors of one group share one Model Stock ratio. E.g. HF's q/k/v,
    /// `clipstock_model::naming::HF_QKV_GROUP`.
    pub groups: Vec<String>,
    /// What unselected float tensors become.
    pub unselected: Unselected,
    /// Storage dtype of merged float tensors in the output file; `None` keeps the anchor's
    /// (or, without an anchor, the first model's) when every input is f32 or f64 and of one
    /// dtype, and is f32 otherwise (a 16-bit anchor, mixed dtypes). In-memory merges always
    /// return f32.
    pub output_dtype: Option<DType>,
    /// How input files are read.
    pub read_mode: ReadMode,
    /// Extra `__metadata__` entries for the output file.
    pub metadata: BTreeMap<String, String>,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions::new(Method::ModelStock { clamp_t: false })
    }
}

impl MergeOptions {
    /// Options for `method` with every other field at its default.
    pub fn new(method: Method) -> Self {
        MergeOptions {
            method,
            include: Vec::new(),
            exclude: Vec::new(),
            groups: Vec::new(),
            unselected: Unselected::Average,
            output_dtype: None,
            read_mode: ReadMode::Auto,
            metadata: BTreeMap::new(),
        }
    }
}
