//! The plan stage: a validated [`RunSpec`] becomes a [`RunPlan`], with every cross-field check
//! made, every path resolved and every word typed, so the trainer reads decisions instead of
//! re-deriving them.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::ConfigError;
use crate::arch::ArchPreset;
use crate::device::DeviceSpec;
use crate::schema::{
    EvalSection, GENERATORS, HeadSource, MergeMethod, MergeSection, Period, RunSpec,
};
use crate::sets::SetName;

/// Where the relative paths of a spec resolve; the rule is [`RunSpec::resolve`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathBases {
    /// The run file, named in errors.
    pub file: PathBuf,
    /// The run file's directory, absolute: paths written in the file resolve here.
    pub file_dir: PathBuf,
    /// The working directory, absolute: `--set` paths and unset defaults resolve here.
    pub cwd: PathBuf,
    /// Dotted keys given by `--set` (a `--set` wins over the file).
    pub overridden: BTreeSet<String>,
    /// Dotted keys written in the file.
    pub written: BTreeSet<String>,
}

impl PathBases {
    /// The bases of `file` (whose text is `text`) read with `overrides`, from the process's
    /// working directory.
    pub fn for_file(file: &Path, text: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let cwd = std::env::current_dir().map_err(|source| ConfigError::WorkingDir { source })?;
        let dir = cwd.join(file.parent().unwrap_or(Path::new("")));
        let file_dir = std::fs::canonicalize(&dir).map_err(|source| ConfigError::Io {
            file: file.to_path_buf(),
            source,
        })?;
        let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let written = PATH_KEYS
            .iter()
            .filter(|key| table_has(&table, key))
            .map(|key| (*key).to_owned())
            .collect();
        let overridden = overrides
            .iter()
            .filter_map(|arg| arg.split_once('=').map(|(key, _)| key.trim().to_owned()))
            .collect();
        Ok(PathBases {
            file: file.to_path_buf(),
            file_dir,
            cwd,
            overridden,
            written,
        })
    }

    /// The base of a relative path at `key`.
    fn base_of(&self, key: &str) -> &Path {
        if !self.overridden.contains(key) && self.written.contains(key) {
            &self.file_dir
        } else {
            &self.cwd
        }
    }
}

/// The keys whose values are paths (for `model.head`, its `file`).
pub const PATH_KEYS: [&str; 8] = [
    "run.output_dir",
    "model.weights",
    "model.head",
    "model.classnames",
    "model.templates",
    "data.root",
    "data.class_dir",
    "data.holdout_file",
];

fn table_has(table: &toml::Table, dotted: &str) -> bool {
    let mut current = table;
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        match current.get(part) {
            None => return false,
            Some(_) if parts.peek().is_none() => return true,
            Some(toml::Value::Table(inner)) => current = inner,
            Some(_) => return false,
        }
    }
    false
}

/// `base/p` with `.` dropped and `..` applied to the components before it.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // Above the root is the root.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                // A relative path's leading `..` stays.
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

impl RunSpec {
    /// Every relative path of the spec with its dotted key, for the resolvers.
    pub(crate) fn paths_mut(&mut self) -> Vec<(&'static str, &mut PathBuf)> {
        let mut paths = vec![
            ("run.output_dir", &mut self.run.output_dir),
            ("model.weights", &mut self.model.weights),
            ("model.classnames", &mut self.model.classnames),
            ("model.templates", &mut self.model.templates),
            ("data.root", &mut self.data.root),
        ];
        if let HeadSource::File(p) = &mut self.model.head {
            paths.push(("model.head", p));
        }
        if let Some(p) = &mut self.data.class_dir {
            paths.push(("data.class_dir", p));
        }
        if let Some(p) = &mut self.data.holdout_file {
            paths.push(("data.holdout_file", p));
        }
        paths
    }

    /// The plan of this spec: validates it (as [`RunSpec::validate`]), makes the cross-field
    /// checks, resolves every path, types every device, set and preset, and checks that the
    /// files the run reads exist. `bases.file` is the file named in errors.
    ///
    /// # Paths
    ///
    /// A relative path resolves against the place it was written:
    ///
    /// - written in the run file: the file's directory (`weights = "../data/w.safetensors"` in
    ///   `configs/x.toml` is `data/w.safetensors` of the repository), so a run file and the files
    ///   next to it can move together;
    /// - given by `--set`: the working directory, where it was typed;
    /// - left unset: the working directory. The defaults (`runs`, `data/imagenet_classnames.json`,
    ///   `data/openai_imagenet_templates.json`, the ImageNet class files and the quickstart assets
    ///   under `data/`) name the project's shipped `data/` folder and the usual output folder, not
    ///   files that travel with a user's run file; run from the repository root, as before.
    ///
    /// Resolved paths are absolute and lexically cleaned (`a/../b` is `b`; the file's directory is
    /// canonical first, so `..` in a value means what it means to the file system), and absolute
    /// paths are kept as written. The resolved spec is what the trainer stores as
    /// `runs/NAME/config.toml`, so that file loads again, from anywhere, to the same plan.
    pub fn resolve(&self, bases: &PathBases) -> Result<RunPlan, ConfigError> {
        let file = bases.file.as_path();
        self.validate(file)?;
        let mut spec = self.clone();
        for (key, path) in spec.paths_mut() {
            if path.is_relative() {
                *path = clean(&bases.base_of(key).join(&*path));
            }
        }
        let invalid = |key: &str, value: &str, allowed: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_owned(),
            value: format!("{value:?}"),
            allowed,
        };

        let eval_device: DeviceSpec =
            spec.run.device.parse().map_err(|_| {
                invalid("run.device", &spec.run.device, DeviceSpec::EXPECTED.into())
            })?;
        let per_run_devices = !spec.run.devices.is_empty();
        let devices = if per_run_devices {
            let mut devices = Vec::new();
            for (i, d) in spec.run.devices.iter().enumerate() {
                let key = format!("run.devices[{i}]");
                devices.push(
                    d.parse()
                        .map_err(|_| invalid(&key, d, DeviceSpec::EXPECTED.into()))?,
                );
            }
            devices
        } else {
            vec![eval_device; spec.run.seeds.len() + spec.baselines.independent_seeds.len()]
        };

        let arch = match &spec.model.arch {
            Some(a) => Some(
                a.parse::<ArchPreset>()
                    .map_err(|e| invalid("model.arch", a, e.to_string()))?,
            ),
            None => None,
        };

        let mut sets = Vec::new();
        for (i, s) in spec.eval.sets.iter().enumerate() {
            let key = format!("eval.sets[{i}]");
            sets.push(SetName::from_name(s).map_err(|e| invalid(&key, s, e.to_string()))?);
        }

        let shipped = bases.cwd.join(crate::schema::DEFAULT_CLASS_DIR);
        let class_files_dir = match &spec.data.class_dir {
            Some(dir) => ClassFilesDir::Custom(dir.clone()),
            None => ClassFilesDir::ImageNet(shipped.clone()),
        };
        let generate = match spec.data.generate.as_deref() {
            None => None,
            Some("quickstart") => Some(Generate::Quickstart {
                assets: spec
                    .data
                    .class_dir
                    .clone()
                    .unwrap_or_else(|| shipped.join("quickstart")),
            }),
            Some(other) => {
                return Err(invalid(
                    "data.generate",
                    other,
                    format!("one of {GENERATORS:?} (or omit it)"),
                ));
            }
        };

        let head = match &spec.model.head {
            // The probe starts from the zero-shot head, so it needs the same files.
            HeadSource::ZeroShot | HeadSource::LinearProbe => HeadPlan::ZeroShot {
                classnames: spec.model.classnames.clone(),
                templates: spec.model.templates.clone(),
            },
            HeadSource::Checkpoint => HeadPlan::Checkpoint,
            HeadSource::File(p) => HeadPlan::File(p.clone()),
        };
        let mut inputs = vec![("model.weights", spec.model.weights.as_path())];
        match &head {
            HeadPlan::ZeroShot {
                classnames,
                templates,
            } => {
                inputs.push(("model.classnames", classnames));
                inputs.push(("model.templates", templates));
            }
            HeadPlan::File(p) => inputs.push(("model.head.file", p)),
            HeadPlan::Checkpoint => {}
        }
        if let Some(p) = &spec.data.holdout_file {
            inputs.push(("data.holdout_file", p));
        }
        for (key, path) in inputs {
            if !path.is_file() {
                return Err(ConfigError::MissingFile {
                    file: file.to_path_buf(),
                    key: key.to_owned(),
                    path: path.to_path_buf(),
                });
            }
        }

        let micro_batch_size = spec.optim.micro_batch_size.unwrap_or(spec.optim.batch_size);
        let eval = EvalPlan {
            sets,
            section: spec.eval.clone(),
        };
        Ok(RunPlan {
            run_dir: spec.run_dir(),
            devices,
            eval_device,
            per_run_devices,
            arch,
            accumulation_steps: spec.accumulation_steps(),
            micro_batch_size,
            class_files_dir,
            generate,
            weights: spec.model.weights.clone(),
            head,
            merge: spec.merge,
            eval,
            spec,
        })
    }
}

impl RunPlan {
    /// The plan of a run directory's own `config.toml`, pointed at `dir`, where the directory
    /// is now: a run that was moved or renamed since it was written reads and resumes from
    /// its new place (nothing inside a run directory names the directory itself, and
    /// [`LOCATION_KEYS`](crate::LOCATION_KEYS) are not compared on resume).
    pub fn at_run_dir(mut self, dir: &Path) -> Result<RunPlan, ConfigError> {
        let here = std::path::absolute(dir).map_err(|source| ConfigError::WorkingDir { source })?;
        if let (Some(parent), Some(name)) = (here.parent(), here.file_name()) {
            self.spec.run.output_dir = parent.to_path_buf();
            self.spec.run.name = name.to_string_lossy().into_owned();
        }
        self.run_dir = here;
        Ok(self)
    }
}

/// A run, decided: what the trainer reads instead of the raw spec.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    /// The spec with every path resolved (absolute); the trainer writes it as the run's
    /// `config.toml` and compares it on `--resume`. Its other fields are as written.
    pub spec: RunSpec,
    /// `run.output_dir/run.name`, resolved.
    pub run_dir: PathBuf,
    /// One device per run, in run order (`run.seeds`, then `baselines.independent_seeds`):
    /// `run.devices`, or `run.device` repeated.
    pub devices: Vec<DeviceSpec>,
    /// `run.device`: where w0, the zero-shot head and the evaluations live.
    pub eval_device: DeviceSpec,
    /// Whether the user gave `run.devices` (each run on its own device).
    pub per_run_devices: bool,
    /// `model.arch`; None: inferred from the checkpoint.
    pub arch: Option<ArchPreset>,
    /// Micro-batches per optimizer step (`batch_size / micro_batch_size`).
    pub accumulation_steps: usize,
    /// `optim.micro_batch_size`, or `optim.batch_size` when unset.
    pub micro_batch_size: usize,
    /// The label space's class files.
    pub class_files_dir: ClassFilesDir,
    /// `data.generate`: image trees to write into `data.root` on first use.
    pub generate: Option<Generate>,
    /// `model.weights`, checked to be a file.
    pub weights: PathBuf,
    /// Where the classification head comes from, its files checked to exist.
    pub head: HeadPlan,
    pub merge: MergePlan,
    pub eval: EvalPlan,
}

impl RunPlan {
    /// Whether a checkpoint is written at the end of `epoch` (1-based): the last epoch, and
    /// every `run.checkpoint_every_epochs` (0: only the last).
    pub fn checkpoint_due(&self, epoch: u64, last: bool) -> bool {
        let every = self.spec.run.checkpoint_every_epochs;
        last || (every > 0 && epoch.is_multiple_of(every))
    }
}

/// The class files of the label space; the two layouts name their files differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassFilesDir {
    /// `data.class_dir`: `wnids.txt`, `classnames.json`, `r_subset.json`, `a_subset.json`,
    /// `objectnet.json`.
    Custom(PathBuf),
    /// Unset: ImageNet's files under the shipped `data/` (`imagenet_wnids.txt`, …).
    ImageNet(PathBuf),
}

/// `data.generate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generate {
    /// The quickstart trees, written from the assets in `assets` (`data.class_dir`, or the
    /// shipped `data/quickstart`).
    Quickstart { assets: PathBuf },
}

/// `model.head`, with its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadPlan {
    /// Built from `model.classnames` × `model.templates` with the text tower.
    ZeroShot {
        classnames: PathBuf,
        templates: PathBuf,
    },
    /// `model.weights` holds `classification_head.{weight,bias}`.
    Checkpoint,
    /// `model.head.file`.
    File(PathBuf),
}

/// `[merge]` needs no resolving; the plan stage adds the one reader of `merge.period`
/// ([`MergeSection::due`]).
pub type MergePlan = MergeSection;

/// A point of the training loop where a merge may be due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// After an optimizer step that is not the last of its epoch (the epoch's end is
    /// [`Boundary::EpochEnd`]). `global_step` counts steps done, from 1.
    Step { global_step: u64 },
    /// After the last step of `epoch` (1-based); `last`: the last epoch of the training.
    EpochEnd {
        epoch: u64,
        global_step: u64,
        last: bool,
    },
}

impl MergeSection {
    /// Whether the runs are ever merged.
    pub fn merges(&self) -> bool {
        self.method != MergeMethod::None
    }

    /// Whether the runs are merged at `b`: never with `method = "none"`; `{ steps = k }` every
    /// k-th global step, the epoch's end included; `"epoch"` / `{ epochs = k }` at the end of
    /// every (k-th) epoch; and always at the end of the last epoch.
    pub fn due(&self, b: Boundary) -> bool {
        if !self.merges() {
            return false;
        }
        match b {
            Boundary::Step { global_step } => match self.period {
                Period::Steps(k) => global_step.is_multiple_of(k.max(1)),
                Period::Epoch | Period::Epochs(_) => false,
            },
            Boundary::EpochEnd {
                epoch,
                global_step,
                last,
            } => {
                last || match self.period {
                    Period::Epoch => true,
                    Period::Epochs(k) => epoch.is_multiple_of(k.max(1)),
                    Period::Steps(k) => global_step.is_multiple_of(k.max(1)),
                }
            }
        }
    }

    /// The run-directory name (no extension) of the report of the merge in `epoch` (1-based)
    /// at `global_step`: by step for step periods, by epoch otherwise.
    pub fn report_name(&self, epoch: u64, global_step: u64) -> String {
        match self.period {
            Period::Steps(_) => format!("merges/step_{global_step:07}"),
            Period::Epoch | Period::Epochs(_) => format!("merges/epoch_{epoch:03}"),
        }
    }
}

/// `[eval]`, with the sets typed.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalPlan {
    /// `eval.sets` in the file's order, aliases resolved; empty: no evaluation.
    pub sets: Vec<SetName>,
    /// The rest of `[eval]` as the file gives it (its `sets` keep the file's spellings).
    pub section: EvalSection,
}

impl EvalPlan {
    /// Whether the models are evaluated at the end of `epoch` (1-based): the last epoch, and
    /// every `every_epochs`.
    pub fn due(&self, epoch: u64, last: bool) -> bool {
        let every = self.section.every_epochs;
        last || (every > 0 && epoch.is_multiple_of(every))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_is_lexical() {
        let cases = [
            ("/r/configs/../data/w", "/r/data/w"),
            ("/r/./a/./b", "/r/a/b"),
            ("/r/a/b/../../c", "/r/c"),
            ("/../a", "/a"),
            ("a/../../b", "../b"),
            ("/r/configs/../../../x", "/x"),
        ];
        for (input, expected) in cases {
            assert_eq!(clean(Path::new(input)), PathBuf::from(expected), "{input}");
        }
    }
}
