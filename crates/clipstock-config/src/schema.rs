//! The run file's types. Field names are the TOML keys and a contract with the trainer.
//!
//! Defaults are the recipe of SPEC.md §4 (WiSE-FT/model-soups fine-tuning) and the periodic
//! merge of SPEC.md §2, so a file only has to say what differs from the paper's setup.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A whole run file, after defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub run: RunSection,
    pub model: ModelSection,
    pub data: DataSection,
    #[serde(default)]
    pub optim: OptimSection,
    #[serde(default)]
    pub merge: MergeSection,
    #[serde(default)]
    pub eval: EvalSection,
    /// Left out of the written config when empty, so a run directory written before the
    /// section existed still resumes.
    #[serde(default, skip_serializing_if = "BaselinesSection::is_empty")]
    pub baselines: BaselinesSection,
}

/// Runs trained beside the merged ones, on the same data and schedule, that are never merged.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselinesSection {
    /// One independent fine-tune per seed, in lockstep with the merged runs: the paper's
    /// individual models, and the ingredients of the post-hoc soups. After the first periodic
    /// merge the merged runs no longer are independent fine-tunes; these are.
    pub independent_seeds: Vec<u64>,
}

impl BaselinesSection {
    pub fn is_empty(&self) -> bool {
        self.independent_seeds.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Also the run directory's name, hence the restricted alphabet.
    pub name: String,
    #[serde(default = "default_output_dir")]
    pub output_dir: PathBuf,
    /// One fine-tuning run per seed; Model Stock needs at least two.
    pub seeds: Vec<u64>,
    #[serde(default = "default_device")]
    pub device: String,
    /// Empty: every run on `device`. Otherwise run i on `devices[i]`, merges on `devices[0]`.
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default = "default_log_every_steps")]
    pub log_every_steps: u64,
    /// 0 = only the final checkpoint.
    #[serde(default = "default_one")]
    pub checkpoint_every_epochs: u64,
    /// Processes per run under MPI (K): each process of a run takes `1/K` of every batch and
    /// the gradients are averaged across them before clipping and AdamW. 1 without MPI.
    #[serde(default = "default_ranks", skip_serializing_if = "is_one")]
    pub ranks_per_seed: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub weights: PathBuf,
    /// None: inferred from the checkpoint's tensor shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default)]
    pub head: HeadSource,
    #[serde(default = "default_classnames")]
    pub classnames: PathBuf,
    #[serde(default = "default_templates")]
    pub templates: PathBuf,
    /// `head = "linear_probe"`'s training (defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linear_probe: Option<LinearProbeSection>,
}

/// The linear probe of `head = "linear_probe"` (LP-FT): the head alone, trained on the frozen
/// image features of the training images (evaluation transform, computed once), starting from
/// the zero-shot head, with AdamW and a per-step cosine to 0. It becomes part of w0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinearProbeSection {
    pub epochs: u64,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    /// The probe's data order (the fine-tuning seeds do not enter w0).
    pub seed: u64,
}

impl Default for LinearProbeSection {
    fn default() -> Self {
        Self {
            epochs: 10,
            lr: 1e-3,
            weight_decay: 0.0,
            batch_size: 256,
            seed: 0,
        }
    }
}

/// Where the classification head comes from.
///
/// TOML: `head = "zeroshot"`, `head = "checkpoint"`, `head = "linear_probe"` or
/// `head = { file = "head.safetensors" }`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HeadSource {
    /// Built from class names × templates with the text tower (SPEC.md §3).
    #[default]
    ZeroShot,
    /// `model.weights` already holds `classification_head.{weight,bias}`.
    Checkpoint,
    /// A separate safetensors file with `classification_head.{weight,bias}`.
    File(PathBuf),
    /// The zero-shot head, then trained alone on frozen features (`model.linear_probe`).
    LinearProbe,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub root: PathBuf,
    /// The class files of the label space: `wnids.txt` (training classes, one per line, in
    /// label order), `classnames.json`, `r_subset.json` and `a_subset.json` (ImageNet-R/-A
    /// class sublists), `objectnet.json` (ObjectNet folder → ImageNet indices). None: the
    /// ImageNet files shipped in the repository's `data/`, which carry their upstream names
    /// (`imagenet_wnids.txt`, `imagenet_r_class_sublist.json`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_dir: Option<PathBuf>,
    /// `Some("quickstart")`: write the shipped synthetic image trees into `root` if it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_limit: Option<usize>,
    /// None: the model's own input size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u32>,
    /// 0 = all cores.
    #[serde(default)]
    pub workers: usize,
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    #[serde(default)]
    pub augment: AugmentSection,
    /// Hold out this many training images per class, drawn with `holdout_seed`: never trained
    /// on, evaluated as `imagenet_holdout`, and the greedy soup's selection set (model-soups
    /// holds out 26 per class, its "ImageNet2p").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_per_class: Option<usize>,
    /// The draw of `holdout_per_class` (the split does not depend on `run.seeds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_seed: Option<u64>,
    /// The held-out images from a file instead: model-soups' `imagenet_98_idxs.npy` (a mask
    /// over the sorted training images, 1 = held out), a text file of 0-based indices, or a
    /// run's `holdout.txt` (paths relative to the training folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout_file: Option<PathBuf>,
}

impl DataSection {
    /// The class-file directory (`data` when unset). Mind the naming: an explicit `class_dir`
    /// holds `wnids.txt` etc., the default `data/` the `imagenet_*` files.
    pub fn class_dir_or_default(&self) -> PathBuf {
        self.class_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CLASS_DIR))
    }
}

/// RandomResizedCrop parameters (torchvision semantics) and an optional horizontal flip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentSection {
    pub scale: [f32; 2],
    pub ratio: [f32; 2],
    /// model-soups' recipe does not flip, so neither do we by default.
    pub hflip: bool,
    /// torchvision `RandAugment` after the crop and flip; off unless given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub randaugment: Option<RandAugmentSpec>,
}

impl Default for AugmentSection {
    fn default() -> Self {
        Self {
            scale: [0.9, 1.0],
            ratio: [0.75, 4.0 / 3.0],
            hflip: false,
            randaugment: None,
        }
    }
}

/// `RandAugment(num_ops = n, magnitude = m)` with torchvision's 31 magnitude bins; an omitted
/// key takes torchvision's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RandAugmentSpec {
    /// Ops applied per image, drawn with replacement.
    pub n: u32,
    /// Magnitude bin, 0..=30.
    pub m: u32,
}

impl Default for RandAugmentSpec {
    fn default() -> Self {
        Self { n: 2, m: 9 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    pub epochs: u64,
    /// Global batch of one run (all its micro-batches together).
    pub batch_size: usize,
    /// None: `batch_size` (no accumulation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_batch_size: Option<usize>,
    pub lr: f64,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    pub schedule: Schedule,
    /// Global-norm clipping; TOML `"off"` is None.
    #[serde(with = "clip_norm")]
    pub grad_clip_norm: Option<f64>,
    pub label_smoothing: f64,
    pub precision: Precision,
    /// mixup (Zhang et al., 2018) as timm's batch mode: each micro-batch is mixed with itself
    /// reversed, `λ ~ Beta(α, α)`, and so are the targets. 0 = off. Left out of the written
    /// config when off, so runs written before it existed resume.
    #[serde(skip_serializing_if = "is_zero")]
    pub mixup_alpha: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 512,
            micro_batch_size: None,
            lr: 3e-5,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.1,
            warmup_steps: 500,
            schedule: Schedule::Cosine,
            grad_clip_norm: Some(1.0),
            label_smoothing: 0.0,
            precision: Precision::F32,
            mixup_alpha: 0.0,
        }
    }
}

/// Learning rate after the linear warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Per-step cosine to 0 over the whole training, not restarted by merges.
    #[default]
    Cosine,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    /// The config spelling (`optim.precision`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The config spelling, for command-line flags that take the same values.
impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Precision::F32, Precision::Bf16, Precision::F16]
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown precision `{s}`: expected f32, bf16 or f16"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeSection {
    pub method: MergeMethod,
    pub period: Period,
    pub anchor: Anchor,
    pub optimizer_state: OptimizerStatePolicy,
    pub after_merge: AfterMerge,
    /// The official formula does not clamp t (SPEC.md §1); clamping to [0, 1] is opt-in.
    pub clamp_t: bool,
}

impl Default for MergeSection {
    fn default() -> Self {
        Self {
            method: MergeMethod::ModelStock,
            period: Period::Epoch,
            anchor: Anchor::Pretrained,
            optimizer_state: OptimizerStatePolicy::Keep,
            after_merge: AfterMerge::ResetRuns,
            clamp_t: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeMethod {
    #[default]
    ModelStock,
    /// Plain average of the runs (a two-model uniform soup).
    Uniform,
    /// Independent runs, never merged.
    None,
}

/// How often the runs are merged.
///
/// TOML: `period = "epoch"`, `period = { epochs = 2 }` or `period = { steps = 500 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Period {
    /// At the end of every epoch (same as `{ epochs = 1 }`).
    #[default]
    Epoch,
    Epochs(u64),
    Steps(u64),
}

impl Period {
    /// Merge every this many epochs, if the period is counted in epochs. The trainer asks
    /// [`MergePlan::due`](crate::MergePlan::due) instead.
    pub fn every_epochs(&self) -> Option<u64> {
        match *self {
            Period::Epoch => Some(1),
            Period::Epochs(n) => Some(n),
            Period::Steps(_) => None,
        }
    }

    /// Merge every this many optimizer steps, if the period is counted in steps.
    pub fn every_steps(&self) -> Option<u64> {
        match *self {
            Period::Steps(n) => Some(n),
            _ => None,
        }
    }
}

/// The w0 of the merge formula.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    #[default]
    Pretrained,
    PreviousMerge,
}

/// What happens to each run's AdamW moments when its weights are replaced by the merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerStatePolicy {
    #[default]
    Keep,
    Reset,
    Average,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterMerge {
    /// Every run continues from the merged weights.
    #[default]
    ResetRuns,
    /// Runs continue on their own; the merge is only evaluated (post-hoc merging).
    EvaluateOnly,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    pub sets: Vec<String>,
    /// 0 = only at the end of training.
    pub every_epochs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_per_set: Option<usize>,
    pub batch_size: usize,
    /// Evaluate w0 (the zero-shot classifier) before training.
    pub zero_shot: bool,
    /// Evaluate each run, not just the merge.
    pub runs: bool,
    /// model-soups defines a 2-pixel crop but never applies it (SPEC.md §5).
    pub objectnet_border_crop: bool,
    /// Refuse a set whose image count differs from the published one.
    pub expect_published_sizes: bool,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            sets: EVAL_SETS.iter().map(|s| (*s).to_owned()).collect(),
            every_epochs: 1,
            limit_per_set: None,
            batch_size: 256,
            zero_shot: true,
            runs: true,
            objectnet_border_crop: false,
            expect_published_sizes: true,
        }
    }
}

/// The keys of the evaluation sets of SPEC.md §5: `eval.sets`'s default, in this order.
pub const EVAL_SETS: [&str; 6] = [
    "imagenet",
    "imagenet_v2",
    "imagenet_sketch",
    "imagenet_r",
    "imagenet_a",
    "objectnet",
];

/// Generators accepted by `data.generate`.
pub const GENERATORS: [&str; 1] = ["quickstart"];

pub const DEFAULT_CLASS_DIR: &str = "data";

fn default_output_dir() -> PathBuf {
    PathBuf::from("runs")
}
fn default_device() -> String {
    "cpu".to_owned()
}
fn default_log_every_steps() -> u64 {
    10
}
fn default_one() -> u64 {
    1
}
fn default_ranks() -> usize {
    1
}
fn is_one(k: &usize) -> bool {
    *k == 1
}
fn default_classnames() -> PathBuf {
    PathBuf::from("data/imagenet_classnames.json")
}
fn default_templates() -> PathBuf {
    PathBuf::from("data/openai_imagenet_templates.json")
}
fn default_prefetch() -> usize {
    2
}

impl RunSpec {
    /// Micro-batches per optimizer step.
    pub fn accumulation_steps(&self) -> usize {
        let micro = self
            .optim
            .micro_batch_size
            .unwrap_or(self.optim.batch_size)
            .max(1);
        (self.optim.batch_size / micro).max(1)
    }

    /// One process's part of a run's step when `run.ranks_per_seed` (K) processes share it:
    /// its micro-batch size and how many of them it accumulates. Each takes `batch_size / K`
    /// images, in micro-batches of `micro_batch_size` when that fits (so a micro-batch is the
    /// one-process micro-batch, and what fits a device still does), else in one. With K = 1,
    /// `(micro_batch_size, accumulation_steps())`.
    pub fn rank_share(&self) -> (usize, usize) {
        let share = self.optim.batch_size / self.run.ranks_per_seed.max(1);
        let micro = (self.optim.micro_batch_size)
            .unwrap_or(self.optim.batch_size)
            .min(share)
            .max(1);
        (micro, (share / micro).max(1))
    }

    /// `output_dir/name`.
    pub fn run_dir(&self) -> PathBuf {
        self.run.output_dir.join(&self.run.name)
    }

    /// Joins every relative path of the spec onto the one `base`.
    ///
    /// Absolute paths are left alone. `data.class_dir = None` stays None: its default is
    /// resolved by whoever reads it, against the same base. [`RunSpec::resolve`] is the rule a
    /// run uses (each path against the place it was written).
    pub fn resolve_paths(&mut self, base: &Path) {
        for (_, p) in self.paths_mut() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// `grad_clip_norm`: a number, or the string "off" for no clipping.
///
/// A bare Option would make "no clipping" the same as "key omitted", and omitted must mean
/// the recipe's 1.0.
mod clip_norm {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_f64(*v),
            None => s.serialize_str(OFF),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_any(ClipVisitor)
    }

    const OFF: &str = "off";

    struct ClipVisitor;

    impl Visitor<'_> for ClipVisitor {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a positive number or the string \"off\"")
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v as f64))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v == OFF {
                Ok(None)
            } else {
                Err(E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
    }
}

// HeadSource and Period are "a word or a one-key table". serde's derived enum support reads
// that shape too, but its errors ("invalid type: unit variant, expected newtype variant")
// do not tell a user what to write, so both are spelled out by hand.

const HEAD_EXPECTED: &str =
    r#""zeroshot", "checkpoint", "linear_probe" or { file = "head.safetensors" }"#;
const PERIOD_EXPECTED: &str = r#""epoch", { epochs = N } or { steps = N }"#;

impl Serialize for HeadSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            HeadSource::ZeroShot => s.serialize_str("zeroshot"),
            HeadSource::Checkpoint => s.serialize_str("checkpoint"),
            HeadSource::LinearProbe => s.serialize_str("linear_probe"),
            HeadSource::File(p) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("file", p)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for HeadSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeadSource;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(HEAD_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HeadSource, E> {
                match v {
                    "zeroshot" => Ok(HeadSource::ZeroShot),
                    "checkpoint" => Ok(HeadSource::Checkpoint),
                    "linear_probe" => Ok(HeadSource::LinearProbe),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<HeadSource, A::Error> {
                let mut file = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "file" if file.is_none() => file = Some(map.next_value::<PathBuf>()?),
                        _ => return Err(de::Error::unknown_field(&key, &["file"])),
                    }
                }
                file.map(HeadSource::File)
                    .ok_or_else(|| de::Error::missing_field("file"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Period {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (key, n) = match *self {
            Period::Epoch => return s.serialize_str("epoch"),
            Period::Epochs(n) => ("epochs", n),
            Period::Steps(n) => ("steps", n),
        };
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(key, &n)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Period {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Period;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(PERIOD_EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Period, E> {
                match v {
                    "epoch" => Ok(Period::Epoch),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Period, A::Error> {
                let mut period = None;
                while let Some(key) = map.next_key::<String>()? {
                    let make = match key.as_str() {
                        "epochs" => Period::Epochs,
                        "steps" => Period::Steps,
                        _ => return Err(de::Error::unknown_field(&key, &["epochs", "steps"])),
                    };
                    if period.is_some() {
                        return Err(de::Error::custom(format!(
                            "give one of `epochs` and `steps`, not both: expected {PERIOD_EXPECTED}"
                        )));
                    }
                    period = Some(make(map.next_value::<u64>()?));
                }
                period.ok_or_else(|| {
                    de::Error::custom(format!("empty table: expected {PERIOD_EXPECTED}"))
                })
            }
        }
        d.deserialize_any(V)
    }
}
