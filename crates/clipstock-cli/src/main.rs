//! The `clipstock` binary: argument parsing, logging, progress bars and exit codes. Every
//! command is a thin call into the library crates.
//!
//! Exit codes: 0 success, 1 runtime error (the full error chain is printed once on stderr),
//! 2 usage error (from clap); `train` stopped early by a signal (after its checkpoint) or
//! before its first step exits 128 + the signal's number: 130 for SIGINT (Ctrl-C), 143 for
//! SIGTERM, 129 for SIGHUP. A closed or full stdout/stderr is never an error (`term.rs`).
//!
//! `train` holds an exclusive lock on its run directory (`<run>/.lock`, `flock`, holding the
//! PID) for its whole life, start and `--resume` alike; a second process on the same
//! directory fails at once, naming that PID.

#![deny(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use clipstock_model::load::{Checkpoint, classifier_state, export, module_state};
use clipstock_model::zeroshot::{read_string_list, read_templates, zeroshot_head};
use clipstock_model::{BurnDevice, ClipModel, ClipTokenizer, DType, DeviceSpec, Naming, StateDict};

#[macro_use]
mod term;

mod bench;
mod eval_cmd;
mod logfile;
mod malloc;
mod merge_cmd;
#[cfg(feature = "mpi")]
mod mpi_comm;
mod soup_cmd;
mod train_cmd;

#[derive(Parser)]
#[command(
    name = "clipstock",
    version,
    about = "Fine-tune CLIP ViT classifiers with Model Stock"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune N seeds in lockstep with periodic Model Stock merging, from a config file.
    Train(train_cmd::TrainArgs),
    /// The paper's comparison in one go: zero-shot, independent fine-tunes, periodic and
    /// post-hoc Model Stock, uniform and greedy soups, WiSE-FT curves, and the ID-vs-OOD figure.
    Compare(train_cmd::CompareArgs),
    /// Evaluate a checkpoint, or a run directory's models, on ImageNet and its five shifts.
    Eval(eval_cmd::EvalArgs),
    /// Build the zero-shot classification head from class names × prompt templates.
    Zeroshot(ZeroshotArgs),
    /// Show a checkpoint's naming, architecture and parameter count.
    Info(InfoArgs),
    /// Rewrite a checkpoint in another naming and/or dtype (optionally with a head).
    Export(ExportArgs),
    /// Encode images with a checkpoint (and classify them with a head), printing features.
    Forward(ForwardArgs),
    /// Merge fine-tuned checkpoints: Model Stock, uniform soup, WiSE-FT, task arithmetic.
    Merge(merge_cmd::MergeArgs),
    /// Uniform soup of fine-tuned checkpoints, or the greedy soup selected on held-out images.
    Soup(soup_cmd::SoupArgs),
    /// Summarise a merge report and draw its per-tensor angle/ratio figure.
    Inspect(merge_cmd::InspectArgs),
    /// Throughput of the forward pass and the training step on random weights.
    Bench(bench::BenchArgs),
    /// Write small image trees in all six evaluation layouts (tests, trying `eval` out).
    Fixtures(FixturesArgs),
}

#[derive(Args)]
struct FixturesArgs {
    /// Folder to create (must not exist).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 2)]
    images_per_class: usize,
    /// Side of the (square) images.
    #[arg(long, default_value_t = 48)]
    size: u32,
    /// Add an undecodable .jpg and an empty class folder.
    #[arg(long)]
    with_bad_files: bool,
    /// Class files (wnids.txt, classnames.json, …); default: ImageNet's in data/.
    #[arg(long)]
    class_dir: Option<PathBuf>,
    /// Also write a JSON manifest (set, relative path, label) here.
    #[arg(long)]
    manifest: Option<PathBuf>,
}

#[derive(Args)]
struct DeviceArg {
    /// cpu (the fastest CPU backend), flex, ndarray, wgpu[:N] or cuda[:N].
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

#[derive(Args)]
struct ZeroshotArgs {
    /// CLIP checkpoint with a text tower (safetensors or PyTorch; OpenAI, HF or model-soups naming).
    #[arg(long)]
    weights: PathBuf,
    /// JSON array of class names.
    #[arg(long, default_value = "data/imagenet_classnames.json")]
    classes: PathBuf,
    /// JSON array of prompt templates with `{}` for the class name.
    #[arg(long, default_value = "data/openai_imagenet_templates.json")]
    templates: PathBuf,
    /// Output safetensors with `classification_head.weight` [classes, embed] and `.bias`.
    #[arg(long)]
    out: PathBuf,
    /// Classes encoded per batch (batch size = this × number of templates).
    #[arg(long, default_value_t = 4)]
    classes_per_batch: usize,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Args)]
struct InfoArgs {
    weights: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum NamingArg {
    Openai,
    Hf,
    ModelSoups,
}

impl From<NamingArg> for Naming {
    fn from(n: NamingArg) -> Naming {
        match n {
            NamingArg::Openai => Naming::OpenAi,
            NamingArg::Hf => Naming::Hf,
            NamingArg::ModelSoups => Naming::ModelSoups,
        }
    }
}

#[derive(Args)]
struct ExportArgs {
    #[arg(long)]
    weights: PathBuf,
    /// A head to attach (output of `zeroshot`); written as `classification_head.*`.
    #[arg(long)]
    head: Option<PathBuf>,
    #[arg(long, value_enum)]
    naming: NamingArg,
    /// f32, f16 or bf16; default: each tensor's dtype in the input.
    #[arg(long)]
    dtype: Option<String>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ForwardArgs {
    #[arg(long)]
    weights: PathBuf,
    /// Classification head file; default: the checkpoint's own head if it has one.
    #[arg(long)]
    head: Option<PathBuf>,
    /// A safetensors file with an `images` tensor [N, 3, S, S] (CLIP-normalised). Default: a
    /// deterministic random batch of 4.
    #[arg(long)]
    images: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArg,
}

fn main() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    // burn materialises loaded optimizer state on `Device::default()`, which is wgpu whenever
    // wgpu is compiled in: a resume on a CPU-only machine would initialise (or fail to find) a
    // Vulkan adapter just to park tensors that move to the run's device at the next step.
    // Host memory (flex) is the right parking place for every backend.
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: first statement of `main`, before any thread exists, so nothing can read the
        // environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("BURN_DEVICE", "flex");
        }
    }
    malloc::tune();
    let cli = Cli::parse();
    // Long commands draw progress bars on stderr, so their log lines go to the run's
    // train.log and only warnings reach the terminal (RUST_LOG overrides).
    let quiet = matches!(
        cli.command,
        Command::Train(_) | Command::Compare(_) | Command::Eval(_)
    );
    let stderr_filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(if quiet { "warn" } else { "info" })
        });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(term::Stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(stderr_filter),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(logfile::LogFile)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
        )
        .init();
    if let Err(e) = run(cli) {
        err!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, like `{:#}`, but a cause already quoted by the
/// message above it (our errors show their OS error inline and keep it as their source) is
/// not repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(a) => train_cmd::run(a),
        Command::Compare(a) => train_cmd::run_compare(a),
        Command::Eval(a) => eval_cmd::run(a),
        Command::Zeroshot(a) => zeroshot(a),
        Command::Info(a) => info(a),
        Command::Export(a) => export_cmd(a),
        Command::Forward(a) => forward(a),
        Command::Merge(a) => merge_cmd::run(a),
        Command::Soup(a) => soup_cmd::run(a),
        Command::Inspect(a) => merge_cmd::inspect(a),
        Command::Bench(a) => bench::run(a),
        Command::Fixtures(a) => fixtures(a),
    }
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn zeroshot(a: ZeroshotArgs) -> Result<()> {
    let device = a.device.device.device()?;
    let ckpt = Checkpoint::read(&a.weights)?;
    let model: ClipModel = ckpt.clip(&device)?;
    let classes = read_string_list(&a.classes)?;
    let templates = read_templates(&a.templates)?;
    let tokenizer = ClipTokenizer::new(
        ckpt.arch
            .text
            .as_ref()
            .map(|t| t.context_length)
            .unwrap_or(77),
    );
    tracing::info!(
        "{} classes × {} templates = {} prompts on {}",
        classes.len(),
        templates.len(),
        classes.len() * templates.len(),
        a.device.device
    );
    let pb = progress(classes.len() as u64, "zero-shot head");
    let start = Instant::now();
    let head = zeroshot_head(
        &model,
        &tokenizer,
        &classes,
        &templates,
        a.classes_per_batch,
        &device,
        |done| {
            pb.set_position(done as u64);
            std::ops::ControlFlow::Continue(())
        },
    )?;
    pb.finish_and_clear();
    create_parent(&a.out)?;
    head.write_safetensors(&a.out, Some(DType::F32), None)?;
    let secs = start.elapsed().as_secs_f64();
    out!(
        "wrote {} ({} classes × {} dims) in {:.1}s ({:.0} prompts/s)",
        a.out.display(),
        classes.len(),
        ckpt.arch.embed_dim,
        secs,
        (classes.len() * templates.len()) as f64 / secs.max(1e-9)
    );
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let ckpt = Checkpoint::read(&a.weights)?;
    let arch = &ckpt.arch;
    out!("file:       {}", a.weights.display());
    out!("naming:     {}", ckpt.naming);
    out!(
        "vision:     {}px, patch {}, width {}, {} layers, {} heads, mlp {}",
        arch.vision.image_size,
        arch.vision.patch_size,
        arch.vision.width,
        arch.vision.layers,
        arch.vision.heads,
        arch.vision.mlp_width
    );
    match &arch.text {
        Some(t) => out!(
            "text:       context {}, vocab {}, width {}, {} layers, {} heads",
            t.context_length,
            t.vocab_size,
            t.width,
            t.layers,
            t.heads
        ),
        None => out!("text:       none (image-only checkpoint)"),
    }
    out!("embed dim:  {}", arch.embed_dim);
    out!("parameters: {}", arch.num_params());
    if let Some(w) = ckpt.state.get(clipstock_model::load::HEAD_WEIGHT) {
        out!("head:       {} classes", w.shape[0]);
    }
    clipstock_model::load::validate(&ckpt.state, arch, &ckpt.context, true)?;
    out!("validation: ok");
    Ok(())
}

fn export_cmd(a: ExportArgs) -> Result<()> {
    let device = DeviceSpec::Cpu.device()?;
    let ckpt = Checkpoint::read(&a.weights)?;
    let dtype = match &a.dtype {
        Some(s) => Some(DType::parse(s).with_context(|| format!("unknown dtype `{s}`"))?),
        None => None,
    };
    let head = match &a.head {
        Some(p) => Some(StateDict::read(p)?),
        None => None,
    };
    // Round-trip through the burn module: what is exported is exactly what the model holds.
    let state = if head.is_some() || ckpt.has_head() {
        let classifier = ckpt.classifier(head.as_ref(), &device)?;
        classifier_state(&classifier)
    } else {
        module_state(&ckpt.clip(&device)?)
    };
    let state = clipstock_model::load::with_extras(state, &ckpt.extras());
    let state = clipstock_model::load::with_dtypes_of(state, &ckpt.state);
    create_parent(&a.out)?;
    export(&state, a.naming.into(), dtype, &a.out)?;
    out!(
        "wrote {} ({} tensors, {} naming)",
        a.out.display(),
        state.len(),
        Naming::from(a.naming)
    );
    Ok(())
}

fn forward(a: ForwardArgs) -> Result<()> {
    use burn::tensor::{Tensor, TensorData};
    let device = a.device.device.device()?;
    let ckpt = Checkpoint::read(&a.weights)?;
    let size = ckpt.arch.vision.image_size;
    let (data, shape) = match &a.images {
        Some(p) => {
            let sd = StateDict::read(p)?;
            let t = sd
                .get("images")
                .with_context(|| format!("{}: no `images` tensor", p.display()))?;
            if t.shape.len() != 4 || t.shape[1] != 3 || t.shape[2] != size || t.shape[3] != size {
                bail!(
                    "{}: `images` has shape {:?}, the model expects [N, 3, {size}, {size}]",
                    p.display(),
                    t.shape
                );
            }
            (t.data.clone(), [t.shape[0], 3, size, size])
        }
        None => {
            let mut init = clipstock_model::model::Init::new(0);
            (
                init.normal_vec(4 * 3 * size * size, 1.0),
                [4, 3, size, size],
            )
        }
    };
    let images = Tensor::<4>::from_data(TensorData::new(data, shape), &device);
    let head = match &a.head {
        Some(p) => Some(StateDict::read(p)?),
        None => None,
    };
    let start = Instant::now();
    if head.is_some() || ckpt.has_head() {
        let classifier = ckpt.classifier(head.as_ref(), &device)?;
        let logits = classifier.forward(images);
        let [n, classes] = logits.dims();
        let preds = logits
            .argmax(1)
            .into_data()
            .try_into_vec_as::<i64>()
            .unwrap_or_default();
        out!("predictions over {classes} classes for {n} images: {preds:?}");
    } else {
        let model = ckpt.clip(&device)?;
        let f = model.encode_image(images);
        let [n, d] = f.dims();
        let v = f.into_data().try_into_vec_as::<f32>().unwrap_or_default();
        for i in 0..n {
            let row = &v[i * d..(i + 1) * d];
            let shown: Vec<String> = row.iter().take(6).map(|x| format!("{x:.4}")).collect();
            out!("image {i}: [{} …] ({d} dims)", shown.join(", "));
        }
    }
    out!(
        "{} images in {:.2}s on {}",
        shape[0],
        start.elapsed().as_secs_f64(),
        a.device.device
    );
    Ok(())
}

fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

fn fixtures(a: FixturesArgs) -> Result<()> {
    use clipstock_data::classes::{ClassFiles, ClassSpace};
    use clipstock_data::fixtures::{FixtureSpec, write_fixture_tree};
    if a.out.exists() {
        bail!("`{}` already exists", a.out.display());
    }
    let files = match &a.class_dir {
        Some(d) => ClassFiles::in_dir(d),
        None => ClassFiles::imagenet(Path::new("data")),
    };
    let classes = ClassSpace::load(&files)?;
    let spec = FixtureSpec {
        images_per_class: a.images_per_class.max(1),
        image_size: (a.size, a.size * 3 / 4),
        with_corrupt: a.with_bad_files,
        with_empty_folder: a.with_bad_files,
    };
    let m = write_fixture_tree(&a.out, &classes, &spec)?;
    if let Some(p) = &a.manifest {
        let images: Vec<serde_json::Value> = m
            .images
            .iter()
            .map(|i| {
                serde_json::json!({
                    "set": i.set.key(),
                    "path": i.rel_path.display().to_string(),
                    "label": i.label,
                    "corrupt": i.corrupt,
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&serde_json::json!({ "images": images }))?;
        clipstock_model::state::write_atomic(p, text.as_bytes())?;
    }
    out!(
        "{} evaluation and {} training images in {}",
        m.images.len(),
        m.train.len(),
        a.out.display()
    );
    Ok(())
}
