//! `clipstock merge`: Model Stock and the soup baselines on checkpoints users already have.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use clipstock_merge::{
    DType, MergeOptions, MergeReport, Method, ReadMode, SafetensorsFile, Source, merge_files,
    ratio_plot_png, ratio_plot_svg, wise_ft_files,
};
use clipstock_model::naming;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MethodArg {
    ModelStock,
    Uniform,
    WiseFt,
    TaskArithmetic,
}

#[derive(Args)]
pub struct MergeArgs {
    #[arg(long, value_enum, default_value = "model-stock")]
    method: MethodArg,
    /// The pretrained weights w0 (not needed by `uniform`).
    #[arg(long)]
    anchor: Option<PathBuf>,
    /// Fine-tuned models (safetensors, same keys and shapes as the anchor).
    #[arg(long, num_args = 1.., required = true)]
    models: Vec<PathBuf>,
    /// Output safetensors. With several `--alpha`, one file per α: `<stem>_alpha<α>.safetensors`.
    #[arg(long)]
    out: PathBuf,
    /// Per-tensor report (cos, angle, t, delta norms, flags) as JSON.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Clamp Model Stock's ratio t into [0, 1] (default: the official, unclamped formula).
    #[arg(long)]
    clamp_t: bool,
    /// WiSE-FT mixing coefficients (repeatable).
    #[arg(long = "alpha")]
    alphas: Vec<f64>,
    /// Task-arithmetic scale.
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
    /// Merge only tensors matching one of these regexes (repeatable); the rest are averaged.
    #[arg(long)]
    include: Vec<String>,
    /// Never merge tensors matching these regexes (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
    /// Output dtype (f32, f16, bf16). Default: the anchor's, but f32 when the anchor is f16/bf16
    /// or the inputs' dtypes differ (the merge is computed in f32, and the official
    /// notebook's result is f32); give `--dtype f16` to keep a 16-bit file.
    #[arg(long)]
    dtype: Option<String>,
    /// Write the angle/ratio figure per tensor (`*.png` or `*.svg`).
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// A report written by `clipstock merge --report`.
    report: PathBuf,
    /// Write the angle/ratio figure per tensor (`*.png` or `*.svg`).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also print one line per tensor.
    #[arg(long)]
    tensors: bool,
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    // Before printing anything, so a misnamed plot is the only output.
    if let Some(p) = &a.plot {
        plot_format(p)?;
    }
    let report = MergeReport::read_json(&a.report)?;
    crate::term::out_text(&report.summary_text());
    if a.tensors {
        crate::term::out_text(&report.table_text());
    }
    if let Some(p) = &a.plot {
        write_plot(&report, p)?;
    }
    Ok(())
}

/// Removes what dead processes left beside `out` (and beside each WiSE-FT output, which share
/// its folder) and in the system temporary directory, in one line on stderr.
fn sweep_stale_temporaries(out: &Path) {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut removed = clipstock_tensors::remove_stale_temporaries(&dir);
    removed.extend(clipstock_tensors::remove_stale_temporaries(
        &std::env::temp_dir(),
    ));
    if let Some(line) = clipstock_tensors::removed_line(&removed) {
        tracing::warn!("{line}");
    }
}

#[derive(Clone, Copy)]
enum PlotFormat {
    Png,
    Svg,
}

/// The figure's format, from the file extension (any case).
fn plot_format(path: &Path) -> Result<PlotFormat> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("png") => Ok(PlotFormat::Png),
        Some("svg") => Ok(PlotFormat::Svg),
        _ => bail!(
            "{}: plots are written as PNG or SVG; name the file *.png or *.svg",
            path.display()
        ),
    }
}

fn write_plot(report: &MergeReport, path: &Path) -> Result<()> {
    let bytes = match plot_format(path)? {
        PlotFormat::Png => ratio_plot_png(report),
        PlotFormat::Svg => ratio_plot_svg(report).into_bytes(),
    };
    clipstock_model::state::write_atomic(path, &bytes)?;
    out!("plot {}", path.display());
    Ok(())
}

pub fn run(a: MergeArgs) -> Result<()> {
    // Checked before merging, so a misnamed plot does not cost a whole merge.
    if let Some(p) = &a.plot {
        plot_format(p)?;
    }
    let method = match a.method {
        MethodArg::ModelStock => Method::ModelStock { clamp_t: a.clamp_t },
        MethodArg::Uniform => Method::UniformSoup,
        MethodArg::TaskArithmetic => Method::TaskArithmetic { lambda: a.lambda },
        MethodArg::WiseFt => Method::WiseFt {
            alpha: *a
                .alphas
                .first()
                .context("wise-ft needs at least one --alpha")?,
        },
    };
    let mut opts = MergeOptions::new(method);
    opts.include = a.include.clone();
    opts.exclude = a.exclude.clone();
    if let Some(s) = &a.dtype {
        opts.output_dtype =
            Some(DType::parse_float(s).with_context(|| format!("unknown dtype `{s}`"))?);
    }
    // The merge engine streams safetensors; PyTorch pickles are converted once into a
    // temporary folder (same keys and dtypes) so every input format merges the same way.
    // Killed merges leave temporaries beside the output and scratch folders in the system
    // temporary directory; each carries its PID, so those of dead processes can go now.
    sweep_stale_temporaries(&a.out);
    let scratch = tempfile::Builder::new()
        .prefix(&clipstock_tensors::scratch_prefix())
        .tempdir()
        .context("cannot create a temporary folder")?;
    let anchor_path = match &a.anchor {
        Some(p) => Some(as_safetensors(p, scratch.path(), "anchor")?),
        None => None,
    };
    let models = a
        .models
        .iter()
        .enumerate()
        .map(|(i, p)| as_safetensors(p, scratch.path(), &format!("model{i}")))
        .collect::<Result<Vec<_>>>()?;
    let a = MergeArgs { models, ..a };
    // HF checkpoints store q/k/v separately; grouping them gives the ratio OpenAI's fused
    // `in_proj_weight` gets, so results do not depend on the naming.
    if let Some(first) = a.models.first()
        && has_split_qkv(first)?
    {
        opts.groups.push(naming::HF_QKV_GROUP.to_string());
    }
    let anchor = anchor_path.as_deref();
    if a.method == MethodArg::WiseFt {
        let anchor = anchor.context("wise-ft needs --anchor")?;
        let outputs: Vec<(f64, PathBuf)> = if a.alphas.len() == 1 {
            vec![(a.alphas[0], a.out.clone())]
        } else {
            a.alphas
                .iter()
                .map(|&alpha| (alpha, alpha_path(&a.out, alpha)))
                .collect()
        };
        let reports = wise_ft_files(anchor, &a.models, &outputs, &opts)?;
        for ((alpha, path), report) in outputs.iter().zip(&reports) {
            out!("alpha {alpha}: wrote {}", path.display());
            if let Some(r) = &a.report {
                let r = if outputs.len() == 1 {
                    r.clone()
                } else {
                    alpha_path(r, *alpha)
                };
                report.write_json(&r)?;
            }
        }
        return Ok(());
    }
    if a.method != MethodArg::Uniform && anchor.is_none() {
        bail!(
            "--method {} needs --anchor (the pretrained weights)",
            method_name(a.method)
        );
    }
    let report = merge_files(anchor, &a.models, &a.out, &opts)?;
    crate::term::out_text(&report.summary_text());
    out!("wrote {}", a.out.display());
    if let Some(r) = &a.report {
        report.write_json(r)?;
        out!("report {}", r.display());
    }
    if let Some(p) = &a.plot {
        write_plot(&report, p)?;
    }
    Ok(())
}

/// `path` itself when it is safetensors, else a safetensors copy of the pickle in `dir`.
fn as_safetensors(path: &Path, dir: &Path, stem: &str) -> Result<PathBuf> {
    let mut head = [0u8; 9];
    let is_safetensors = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|_| clipstock_model::state::looks_like_safetensors(&head));
    if is_safetensors {
        return Ok(path.to_path_buf());
    }
    let state = clipstock_model::StateDict::read(path)?;
    let out = dir.join(format!("{stem}.safetensors"));
    state.write_safetensors(&out, None, None)?;
    tracing::info!("converted {} to safetensors for merging", path.display());
    Ok(out)
}

fn method_name(m: MethodArg) -> &'static str {
    match m {
        MethodArg::ModelStock => "model-stock",
        MethodArg::Uniform => "uniform",
        MethodArg::WiseFt => "wise-ft",
        MethodArg::TaskArithmetic => "task-arithmetic",
    }
}

fn has_split_qkv(path: &Path) -> Result<bool> {
    let f = SafetensorsFile::open(path, ReadMode::Auto)?;
    Ok(naming::has_split_qkv(
        f.tensors().iter().map(|t| t.name.as_str()),
    ))
}

fn alpha_path(out: &Path, alpha: f64) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let ext = out
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    out.with_file_name(format!("{stem}_alpha{alpha}{ext}"))
}
