//! The per-tensor merge report: what happened to every tensor and why, as JSON (for plots and
//! `inspect`) and as text (for the terminal and logs).

use std::fmt::Write as _;
use std::path::Path;

use clipstock_tensors::IoError;
use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::Result;
use crate::options::MergeOptions;

/// What was written for a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The method was applied with ratio `t`.
    Merged,
    /// Not selected: the plain mean of the fine-tuned models.
    Averaged,
    /// Not selected: the anchor's values.
    Anchor,
    /// Copied from the anchor (or the first model without one): identical in every input, or
    /// not a float tensor.
    Copied,
}

/// Noteworthy facts about a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// Outside the include/exclude selection.
    Unselected,
    /// At least one model's delta is exactly zero (that model left the tensor untouched).
    ZeroNorm,
    /// Every model equals the anchor here: the tensor was copied.
    Identical,
    /// The mean pairwise cosine is ≤ 0 (and the deltas are not all zero): the official
    /// formula gives t ≤ 0, i.e. no move or a move away from the fine-tuned models.
    NegativeCos,
    /// `clamp_t` changed t (see `t_unclamped`).
    Clamped,
    /// Not a float tensor: copied byte for byte.
    NotFloat,
    /// The inputs store this tensor in different float dtypes (computed in f32).
    MixedDtype,
}

/// One tensor's line of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorReport {
    pub name: String,
    /// Group key when the tensor shares its ratio with others (then `cos`/`t` are the group's).
    #[serde(default)]
    pub group: Option<String>,
    pub shape: Vec<usize>,
    pub numel: usize,
    /// Storage dtype in the anchor (or first model).
    pub dtype: DType,
    /// Storage dtype written.
    pub out_dtype: DType,
    pub action: Action,
    /// Mean pairwise cosine of the deltas (Model Stock only).
    pub cos: Option<f64>,
    /// arccos of `cos`, in degrees.
    pub angle_deg: Option<f64>,
    /// The ratio applied: `w = t·mean + (1 − t)·w0`.
    pub t: Option<f64>,
    /// t before `clamp_t`, when clamping changed it.
    #[serde(default)]
    pub t_unclamped: Option<f64>,
    /// ‖w_i − w0‖ of this tensor for each model (Model Stock only).
    pub delta_norms: Vec<f64>,
    pub flags: Vec<Flag>,
}

impl TensorReport {
    pub fn has(&self, flag: Flag) -> bool {
        self.flags.contains(&flag)
    }
}

/// Totals over the whole merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeSummary {
    /// [`crate::Method::name`].
    pub method: String,
    /// Number of fine-tuned models N.
    pub n_models: usize,
    pub anchor: Option<String>,
    pub models: Vec<String>,
    pub output: Option<String>,
    pub options: MergeOptions,
    pub tensors: usize,
    pub params: u64,
    pub merged: usize,
    pub averaged: usize,
    pub anchor_kept: usize,
    pub copied: usize,
    /// Number of distinct ratios: ungrouped merged tensors plus groups.
    pub ratio_groups: usize,
    /// Over merged tensors (each tensor counts once, whatever its size).
    pub t_min: Option<f64>,
    pub t_mean: Option<f64>,
    pub t_max: Option<f64>,
    /// Merged tensors with mean pairwise cosine ≤ 0 (flag `negative_cos`).
    pub cos_le_zero: usize,
    /// Tensors with at least one zero delta.
    pub zero_norm: usize,
    pub clamped: usize,
}

/// The full report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeReport {
    pub summary: MergeSummary,
    pub tensors: Vec<TensorReport>,
}

impl MergeReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail; non-finite floats (not
        // produced by the engine) would become `null`.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Writes the JSON report atomically (temporary sibling, fsync, rename).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let mut w = crate::writer::AtomicFile::create(path)?;
        w.write_all(self.to_json().as_bytes())?;
        w.commit()
    }

    /// Reads a report written by [`MergeReport::write_json`].
    pub fn read_json(path: &Path) -> Result<MergeReport> {
        let bytes = std::fs::read(path).map_err(IoError::at("read", path))?;
        serde_json::from_slice(&bytes).map_err(|e| crate::MergeError::Format {
            path: path.to_path_buf(),
            reason: format!("not a merge report: {e}"),
        })
    }

    /// A short human-readable summary: method, counts, t range and every tensor that needs
    /// attention (cos ≤ 0, zero deltas, clamped).
    pub fn summary_text(&self) -> String {
        let s = &self.summary;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} of {} model(s){}",
            s.options.method.describe(),
            s.n_models,
            s.anchor
                .as_deref()
                .map(|a| format!(", anchor {a}"))
                .unwrap_or_default()
        );
        let _ = writeln!(
            out,
            "  tensors: {} ({} params): {} merged ({} ratios), {} averaged, {} kept at the anchor, {} copied",
            s.tensors, s.params, s.merged, s.ratio_groups, s.averaged, s.anchor_kept, s.copied
        );
        if let (Some(lo), Some(mean), Some(hi)) = (s.t_min, s.t_mean, s.t_max) {
            let _ = writeln!(
                out,
                "  t over merged tensors: min {lo:.4}, mean {mean:.4}, max {hi:.4}"
            );
        }
        if s.averaged > 0 {
            let _ = writeln!(
                out,
                "  {} unselected tensor(s) got the plain average of the fine-tuned models",
                s.averaged
            );
        }
        let notes: [(Flag, &str); 4] = [
            (Flag::NegativeCos, "cos <= 0 (t <= 0)"),
            (Flag::ZeroNorm, "a zero delta"),
            (Flag::Clamped, "t clamped"),
            (Flag::MixedDtype, "mixed input dtypes"),
        ];
        for (flag, what) in notes {
            let hits: Vec<&TensorReport> = self.tensors.iter().filter(|t| t.has(flag)).collect();
            if hits.is_empty() {
                continue;
            }
            let _ = writeln!(out, "  {} tensor(s) with {what}:", hits.len());
            for t in hits.iter().take(20) {
                let _ = writeln!(
                    out,
                    "    {}  cos {}  t {}{}",
                    t.name,
                    fmt_opt(t.cos),
                    fmt_opt(t.t),
                    if t.action == Action::Copied {
                        "  (copied)"
                    } else {
                        ""
                    }
                );
            }
            if hits.len() > 20 {
                let _ = writeln!(out, "    … and {} more", hits.len() - 20);
            }
        }
        out
    }

    /// One line per tensor: name, numel, action, angle, t, flags.
    pub fn table_text(&self) -> String {
        let width = self
            .tensors
            .iter()
            .map(|t| t.name.chars().count())
            .max()
            .unwrap_or(4)
            .max(6);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<width$}  {:>10}  {:<8}  {:>8}  {:>9}  flags",
            "tensor", "numel", "action", "angle", "t"
        );
        for t in &self.tensors {
            let action = match t.action {
                Action::Merged => "merged",
                Action::Averaged => "averaged",
                Action::Anchor => "anchor",
                Action::Copied => "copied",
            };
            let flags: Vec<String> = t
                .flags
                .iter()
                .map(|f| {
                    serde_json::to_value(f)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                })
                .collect();
            let line = format!(
                "{:<width$}  {:>10}  {:<8}  {:>8}  {:>9}  {}",
                t.name,
                t.numel,
                action,
                t.angle_deg
                    .map(|a| format!("{a:.2}°"))
                    .unwrap_or_else(|| "-".into()),
                fmt_opt(t.t),
                flags.join(",")
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    match v {
        Some(x) if x.abs() >= 1e4 => format!("{x:.3e}"),
        Some(x) => format!("{x:.4}"),
        None => "-".to_string(),
    }
}
