//! The run directory: resolved config, metrics, summaries, merge reports, checkpoints and
//! results. Every file is written to a temporary sibling and renamed; a checkpoint is a folder
//! built under a temporary name and renamed, then `checkpoints/latest.json` is replaced, so a
//! process killed at any instant leaves `latest.json` naming a complete checkpoint.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clipstock_tensors::fault;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, TrainError, io};

mod lock;
mod reader;
mod records;

pub use lock::{LOCK_FILE, RunLock};
pub use reader::RunReader;
pub use records::{EvalRecord, MergeRecord, Record, ResumeRecord, StepRecord};

/// The tracing log the binary keeps beside the metrics.
pub const TRAIN_LOG: &str = "train.log";

pub struct RunDir {
    pub path: PathBuf,
    /// None in a follower (a rank other than 0 of a distributed training), which writes
    /// only its runs' checkpoint files.
    metrics: Option<File>,
    /// Held for as long as the directory is open (see `lock.rs`); rank 0 holds it for all.
    lock: Option<RunLock>,
}

/// Where training stands; saved with every checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// The epoch in progress (0-based).
    pub epoch: u64,
    /// Optimizer steps already taken in `epoch` (the data-order position).
    pub step_in_epoch: u64,
    pub global_step: u64,
    pub merges: u64,
    pub finished: bool,
    /// Every evaluation so far.
    pub evals: Vec<EvalRecord>,
    /// One row per finished epoch for `summary.csv`.
    pub epochs: Vec<EpochRow>,
    /// Whether the checkpoint holds the last merge (`merged.safetensors`).
    pub has_merge: bool,
    /// The checkpoint folder, relative to `checkpoints/`.
    pub dir: String,
    /// Checkpoints written so far: part of every folder name, so a new checkpoint never
    /// replaces the folder `latest.json` still names.
    #[serde(default)]
    pub checkpoints: u64,
    /// The training set the data order was drawn over (count and a hash of paths and
    /// labels); a resume on different images is refused.
    #[serde(default)]
    pub train_images: usize,
    #[serde(default)]
    pub train_hash: u64,
    /// Running loss sums of the epoch in progress (per run), its step count and last rate, so
    /// `summary.csv` is the same after a resume.
    #[serde(default)]
    pub epoch_loss_sums: Vec<f64>,
    #[serde(default)]
    pub epoch_loss_steps: u64,
    #[serde(default)]
    pub epoch_lr: f64,
    /// Length of `metrics.jsonl` when the checkpoint was taken: a resume cuts what a killed
    /// process wrote after it, so no record appears twice.
    #[serde(default)]
    pub metrics_len: u64,
    /// The epoch in progress has reached its end and been merged (`epoch_end_mean_t` is the
    /// merge's mean ratio): set only in a checkpoint taken during the merged model's
    /// evaluation, which the resume then redoes without merging again.
    #[serde(default)]
    pub epoch_end_merged: bool,
    #[serde(default)]
    pub epoch_end_mean_t: Option<f64>,
    /// f16 training's loss scale per run (empty at other precisions).
    #[serde(default)]
    pub loss_scales: Vec<crate::step::LossScale>,
    /// sha256 (hex) of every file in the checkpoint folder, by file name, verified before a
    /// resume loads any of them. Empty in checkpoints written before checksums existed.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
}

impl TrainerState {
    /// Before the first step of a run over `train_images` samples (hashed as `train_hash`);
    /// `loss_scales` holds one scale per run in f16, nothing otherwise.
    pub fn fresh(
        train_images: usize,
        train_hash: u64,
        loss_scales: Vec<crate::step::LossScale>,
    ) -> Self {
        TrainerState {
            epoch: 0,
            step_in_epoch: 0,
            global_step: 0,
            merges: 0,
            finished: false,
            evals: Vec::new(),
            epochs: Vec::new(),
            has_merge: false,
            dir: String::new(),
            checkpoints: 0,
            train_images,
            train_hash,
            epoch_loss_sums: Vec::new(),
            epoch_loss_steps: 0,
            epoch_lr: 0.0,
            metrics_len: 0,
            epoch_end_merged: false,
            epoch_end_mean_t: None,
            loss_scales,
            checksums: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRow {
    pub epoch: u64,
    pub global_step: u64,
    pub lr: f64,
    pub loss: Vec<f64>,
    pub merged_imagenet: Option<f64>,
    pub merged_ood_mean: Option<f64>,
    pub mean_t: Option<f64>,
    pub seconds: f64,
}

impl RunDir {
    /// A new run directory; refuses an existing one, except the remains of a start that
    /// never reached its first checkpoint (a config and no `latest.json`), which are replaced.
    /// The directory is locked before anything in it is judged, deleted or written.
    pub fn create(path: &Path) -> Result<RunDir> {
        fs::create_dir_all(path).map_err(io("create the run directory", path))?;
        let lock = RunLock::acquire(path)?;
        let mut others = Vec::new();
        for e in fs::read_dir(path).map_err(io("list", path))?.flatten() {
            if e.file_name() != LOCK_FILE {
                others.push(e.path());
            }
        }
        if !others.is_empty() {
            if !Self::looks_abandoned(path) {
                return Err(TrainError::RunExists(path.to_path_buf()));
            }
            tracing::warn!(
                "replacing `{}`: a start that never wrote a checkpoint",
                path.display()
            );
            for p in others {
                let removed = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                removed.map_err(io("remove the abandoned run directory's", &p))?;
            }
        }
        for sub in ["checkpoints", "merges"] {
            let p = path.join(sub);
            fs::create_dir_all(&p).map_err(io("create", &p))?;
        }
        Self::open_metrics(path, lock)
    }

    /// The remains of a start that never checkpointed, and nobody holds its lock.
    pub fn is_abandoned_start(path: &Path) -> bool {
        Self::looks_abandoned(path) && RunLock::holder(path).is_none()
    }

    /// Why an existing, not abandoned `path` cannot be started: in use, or a run.
    pub fn refusal(path: &Path) -> TrainError {
        match RunLock::holder(path) {
            Some(pid) => TrainError::RunLocked {
                path: path.to_path_buf(),
                pid,
            },
            None => TrainError::RunExists(path.to_path_buf()),
        }
    }

    /// No complete checkpoint, and ours: a config, or at least the lock file a start creates
    /// before anything else (a start killed while writing its config.toml leaves only that and
    /// a temporary; a folder clipstock never touched has neither and is refused).
    fn looks_abandoned(path: &Path) -> bool {
        let ours = path.join("config.toml").is_file() || path.join(LOCK_FILE).is_file();
        ours && !path.join("checkpoints").join("latest.json").exists()
    }

    /// An existing run directory with a complete checkpoint, locked; temporaries that killed
    /// processes left in it are removed.
    pub fn open(path: &Path) -> Result<RunDir> {
        if !path.is_dir() {
            return Err(TrainError::NothingToResume(path.to_path_buf()));
        }
        let lock = RunLock::acquire(path)?;
        if !path.join("checkpoints").join("latest.json").is_file() {
            return Err(TrainError::NothingToResume(path.to_path_buf()));
        }
        let mut removed = Vec::new();
        for sub in ["", "checkpoints", "merges"] {
            removed.extend(clipstock_tensors::remove_stale_temporaries(&path.join(sub)));
        }
        if let Some(line) = clipstock_tensors::removed_line(&removed) {
            tracing::warn!("{line}");
        }
        Self::open_metrics(path, lock)
    }

    /// The directory's lock, to hold beyond this value's life (None in a follower).
    pub fn lock(&self) -> Option<RunLock> {
        self.lock.clone()
    }

    /// The view of the run directory of a rank other than 0 of a distributed training:
    /// rank 0 created and locked it, writes its shared files and commits checkpoints; this
    /// rank writes only its own runs' checkpoint files.
    pub fn follower(path: &Path) -> RunDir {
        RunDir {
            path: path.to_path_buf(),
            metrics: None,
            lock: None,
        }
    }

    /// Whether this process writes the directory's shared files (rank 0).
    pub fn is_writer(&self) -> bool {
        self.metrics.is_some()
    }

    fn open_metrics(path: &Path, lock: RunLock) -> Result<RunDir> {
        let m = path.join("metrics.jsonl");
        let metrics = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m)
            .map_err(io("open", &m))?;
        Ok(RunDir {
            path: path.to_path_buf(),
            metrics: Some(metrics),
            lock: Some(lock),
        })
    }

    pub fn metrics_len(&self) -> u64 {
        (self.metrics.as_ref())
            .and_then(|m| m.metadata().ok())
            .map_or(0, |m| m.len())
    }

    /// Cuts `metrics.jsonl` back to `len` bytes (the resume point).
    pub fn truncate_metrics(&mut self, len: u64) -> Result<()> {
        if self.metrics_len() > len
            && let Some(m) = &self.metrics
        {
            let p = self.path.join("metrics.jsonl");
            m.set_len(len).map_err(io("truncate", p))?;
        }
        Ok(())
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Appends one record to `metrics.jsonl` (flushed: a killed run keeps its lines).
    pub fn record(&mut self, record: &Record) -> Result<()> {
        let Some(metrics) = &mut self.metrics else {
            return Ok(());
        };
        let p = self.path.join("metrics.jsonl");
        let line = record.to_line();
        metrics
            .write_all(line.as_bytes())
            .and_then(|_| metrics.flush())
            .map_err(io("append to", p))?;
        fault::point("metrics.appended");
        Ok(())
    }

    /// Replaces one of the directory's files (nothing in a follower).
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if !self.is_writer() {
            return Ok(());
        }
        write_atomic(&self.path.join(name), bytes)
    }

    /// Reads `checkpoints/latest.json`.
    pub fn latest(&self) -> Result<TrainerState> {
        read_latest(&self.path)
    }

    pub fn checkpoint_dir(&self, state: &TrainerState) -> PathBuf {
        checkpoint_dir(&self.path, state)
    }

    /// Writes a checkpoint: `write` fills a fresh temporary folder (file by file, so a large
    /// model is never held twice in memory), every file there is fsynced, the folder is renamed
    /// into place, then `latest.json` names it and older checkpoint folders are removed.
    ///
    /// Distributed (`comm` of more than one rank), rank 0 prepares the folder, every rank
    /// writes its own files into it, and rank 0 commits it once all have (a barrier between
    /// each): every rank returns after the commit.
    pub fn save_checkpoint(
        &self,
        state: &TrainerState,
        comm: &dyn crate::dist::Collective,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<PathBuf> {
        let root = self.path.join("checkpoints");
        let final_dir = root.join(&state.dir);
        let tmp = root.join(format!(".tmp-{}", state.dir));
        if self.is_writer() {
            // Leftovers of an interrupted or failed checkpoint are never referenced: drop them.
            if let Ok(entries) = fs::read_dir(&root) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with(".tmp-") {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
            fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
        }
        comm.barrier();
        let written = write(&tmp);
        comm.barrier();
        if !self.is_writer() {
            written?;
            comm.barrier();
            return Ok(final_dir);
        }
        let written = written.and_then(|()| sync_folder_files(&tmp));
        if let Err(e) = written {
            // A full disk must not leave a half folder behind either.
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        fault::point("checkpoint.written");
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir).map_err(io("replace", &final_dir))?;
        }
        fs::rename(&tmp, &final_dir).map_err(io("rename into place", &final_dir))?;
        fault::point("checkpoint.renamed");
        let mut recorded = state.clone();
        recorded.checksums = folder_checksums(&final_dir)?;
        let json = serde_json::to_vec_pretty(&recorded).map_err(|e| TrainError::Checkpoint {
            path: root.join("latest.json"),
            reason: e.to_string(),
        })?;
        write_atomic(&root.join("latest.json"), &json)?;
        fault::point("checkpoint.committed");
        // Older checkpoints go only after latest.json names the new one.
        if let Ok(entries) = fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if e.path().is_dir() && name != state.dir && !name.starts_with(".tmp-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        comm.barrier();
        Ok(final_dir)
    }
}

impl RunDir {
    /// Checks the files of the checkpoint `state` names against the checksums `latest.json`
    /// recorded: a flipped bit would otherwise resume silently into a different model. A
    /// checkpoint from before checksums existed resumes with a warning.
    pub fn verify_checkpoint(&self, state: &TrainerState) -> Result<()> {
        let dir = self.checkpoint_dir(state);
        if state.checksums.is_empty() {
            tracing::warn!(
                "checkpoint `{}` records no checksums (written by an older clipstock): its files \
                 are not verified",
                dir.display()
            );
            return Ok(());
        }
        let found = folder_checksums(&dir)?;
        let mismatch = |name: &str, reason: &str| TrainError::Checkpoint {
            path: dir.join(name),
            reason: reason.to_string(),
        };
        for (name, sum) in &state.checksums {
            match found.get(name) {
                None => return Err(mismatch(name, "missing (latest.json lists it)")),
                Some(got) if got != sum => {
                    return Err(mismatch(
                        name,
                        "its sha256 differs from the one latest.json recorded when it was \
                         written: the file is corrupted or was changed; restore it or start \
                         the run again",
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = found.keys().find(|n| !state.checksums.contains_key(*n)) {
            return Err(mismatch(
                extra,
                "not part of the checkpoint latest.json recorded",
            ));
        }
        Ok(())
    }
}

/// sha256 of every file in `dir`, by file name.
fn folder_checksums(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).map_err(io("list", dir))?.flatten() {
        let p = e.path();
        if p.is_file() {
            out.insert(
                e.file_name().to_string_lossy().into_owned(),
                sha256_file(&p)?,
            );
        }
    }
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(io("read", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn read_latest(run_dir: &Path) -> Result<TrainerState> {
    let p = run_dir.join("checkpoints").join("latest.json");
    let text = fs::read_to_string(&p).map_err(io("read", &p))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Checkpoint {
        path: p,
        reason: e.to_string(),
    })
}

fn checkpoint_dir(run_dir: &Path, state: &TrainerState) -> PathBuf {
    run_dir.join("checkpoints").join(&state.dir)
}

/// fsync of every file in `dir` (writers such as burn's records may not sync themselves).
fn sync_folder_files(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).map_err(io("list", dir))?.flatten() {
        let p = e.path();
        if p.is_file() {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &p))?;
        }
    }
    Ok(())
}

/// Temporary sibling, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    clipstock_model::state::write_atomic(path, bytes).map_err(TrainError::from)
}

/// `summary.csv`: one row per epoch.
pub fn summary_csv(rows: &[EpochRow], stems: &[String]) -> String {
    let runs = stems.len();
    let mut out = String::from("epoch,global_step,lr");
    for stem in stems {
        out.push_str(&format!(",loss_{stem}"));
    }
    out.push_str(",merged_imagenet_top1,merged_ood_mean,mean_t,seconds\n");
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_default();
    for r in rows {
        out.push_str(&format!("{},{},{:.6e}", r.epoch, r.global_step, r.lr));
        for i in 0..runs {
            out.push_str(&format!(",{}", opt(r.loss.get(i).copied())));
        }
        out.push_str(&format!(
            ",{},{},{},{:.1}\n",
            opt(r.merged_imagenet),
            opt(r.merged_ood_mean),
            opt(r.mean_t),
            r.seconds
        ));
    }
    out
}
