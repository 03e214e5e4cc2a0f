//! Where each evaluation set lives under the data root, how its folders become labels, and which
//! projection scores it. The rules and accepted folder variants are documented in
//! `docs/DATASETS.md`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use clipstock_tensors::IoError;
use rayon::prelude::*;

use crate::DataError;
use crate::classes::{ClassSpace, Projection};

pub use clipstock_config::SetName;

/// Where a set's folder may be under the data root: knowledge of layouts, so it lives here
/// while the names themselves are the config crate's vocabulary.
pub trait SetLayout {
    /// The folders tried under the data root, in order; the first that exists is used. Nested
    /// variants come before their parents so that a parent holding the real folder is not
    /// mistaken for the set itself.
    fn candidate_dirs(self) -> &'static [&'static str];
}

impl SetLayout for SetName {
    fn candidate_dirs(self) -> &'static [&'static str] {
        match self {
            SetName::ImageNet => &[
                "imagenet/val",
                "imagenet/val_in_folder",
                "imagenet/validation",
                "imagenet-val",
                "val",
                "val_in_folder",
            ],
            SetName::ImageNetV2 => &[
                "imagenetv2-matched-frequency",
                "imagenetv2-matched-frequency-format-val",
                "ImageNetV2-matched-frequency",
                "imagenetv2/imagenetv2-matched-frequency",
                "imagenetv2/imagenetv2-matched-frequency-format-val",
                "imagenetv2/ImageNetV2-matched-frequency",
                "ImageNetV2/imagenetv2-matched-frequency-format-val",
                "imagenet-v2/imagenetv2-matched-frequency-format-val",
            ],
            SetName::ImageNetSketch => &[
                "sketch",
                "imagenet-sketch/sketch",
                "imagenet-sketch/data",
                "ImageNet-Sketch/sketch",
                "imagenet_sketch/sketch",
                "imagenet-sketch",
            ],
            SetName::ImageNetR => &["imagenet-r/imagenet-r", "imagenet-r", "ImageNet-R"],
            SetName::ImageNetA => &["imagenet-a/imagenet-a", "imagenet-a", "ImageNet-A"],
            SetName::ObjectNet => &[
                "objectnet-1.0/images",
                "objectnet/images",
                "objectnet-1.0",
                "ObjectNet/images",
            ],
            // Never a folder of its own: see `holdout::eval_set`.
            SetName::ImageNetHoldout => &[],
        }
    }
}

/// Formats a list of paths for an error message.
pub(crate) fn show_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One image and its label in its set's own label space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub path: PathBuf,
    pub label: usize,
}

/// How an evaluation set is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    /// Keep at most this many images, evenly spaced over the sorted list (see `limit_evenly`).
    pub limit_per_set: Option<usize>,
    /// Crop 2 pixels from every ObjectNet border (model-soups defines this crop but never
    /// applies it, so the default is off).
    pub objectnet_border_crop: bool,
    /// Refuse a complete set whose image count differs from the published one.
    pub expect_published_sizes: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            limit_per_set: None,
            objectnet_border_crop: false,
            expect_published_sizes: true,
        }
    }
}

/// An evaluation set, resolved and listed.
#[derive(Clone, Debug)]
pub struct EvalSet {
    pub name: SetName,
    /// The folder that was found (one of `SetName::candidate_dirs` under the data root).
    pub dir: PathBuf,
    /// Sorted by (label, file name); for every set but V2 that is (folder name, file name).
    pub samples: Vec<Sample>,
    /// The size of the set's label space (and of its projection's output).
    pub num_labels: usize,
    pub projection: Projection,
    /// Pixels to crop from every border before preprocessing.
    pub border_crop: u32,
    /// Everything odd that was found but tolerated; each was also logged.
    pub warnings: Vec<String>,
    /// Images found before `limit_per_set`.
    pub total_found: usize,
}

/// The ImageNet training split.
#[derive(Clone, Debug)]
pub struct TrainSet {
    pub dir: PathBuf,
    /// Sorted by (wnid, file name).
    pub samples: Vec<Sample>,
    pub warnings: Vec<String>,
}

const IMAGES_EXPECTED: &str = "jpg, jpeg or png files in class folders";

/// Files the `image` crate is built to decode here (jpeg and png), by extension.
pub fn is_image_file(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        e.eq_ignore_ascii_case("jpg")
            || e.eq_ignore_ascii_case("jpeg")
            || e.eq_ignore_ascii_case("png")
    })
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataError {
    let at = IoError::at(action, path);
    move |source| DataError::Io(at(source))
}

fn find_set_dir(
    set: &'static str,
    candidates: &[&str],
    data_root: &Path,
) -> Result<PathBuf, DataError> {
    let tried: Vec<PathBuf> = candidates.iter().map(|c| data_root.join(c)).collect();
    if let Some(dir) = tried.iter().find(|p| p.is_dir()) {
        return Ok(dir.clone());
    }
    let note = if data_root.is_dir() {
        ""
    } else {
        " (the data root itself does not exist or is not a folder)"
    };
    Err(DataError::SetNotFound {
        set,
        root: data_root.to_path_buf(),
        note,
        tried,
    })
}

/// The sub-folders of a set folder, by name. Files, hidden entries and `__MACOSX` at this level
/// are not class folders and are skipped.
fn list_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("read folder", dir))? {
        let entry = entry.map_err(io("read folder", dir))?;
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // `__MACOSX` holds resource forks when a zip was made on a Mac.
        if name.starts_with('.') || name == "__MACOSX" || !path.is_dir() {
            continue;
        }
        out.push((name, path));
    }
    out.sort();
    Ok(out)
}

/// The images of one class folder, sorted by file name, and the names of other entries.
fn list_images(dir: &Path) -> Result<(Vec<PathBuf>, Vec<OsString>), DataError> {
    let mut images = Vec::new();
    let mut other = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("read folder", dir))? {
        let entry = entry.map_err(io("read folder", dir))?;
        let name = entry.file_name();
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        // DirEntry's type does not follow symlinks; only ask the file system again for links.
        let is_file = match entry.file_type() {
            Ok(t) if t.is_symlink() => path.is_file(),
            Ok(t) => t.is_file(),
            Err(_) => path.is_file(),
        };
        if is_file && is_image_file(&path) {
            images.push(path);
        } else {
            other.push(name);
        }
    }
    images.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    other.sort();
    Ok((images, other))
}

fn warn(set: &str, warnings: &mut Vec<String>, msg: String) {
    tracing::warn!(set, "{msg}");
    warnings.push(msg);
}

/// Lists the class folders (already mapped to labels) in parallel and checks them.
fn collect_samples(
    set: &'static str,
    dir: &Path,
    mut classes: Vec<(usize, String, PathBuf)>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Sample>, DataError> {
    classes.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let listed: Vec<(Vec<PathBuf>, Vec<OsString>)> = classes
        .par_iter()
        .map(|(_, _, path)| list_images(path))
        .collect::<Result<_, _>>()?;
    let mut samples = Vec::new();
    let mut ignored = 0usize;
    let mut ignored_example: Option<PathBuf> = None;
    for ((label, _, path), (images, other)) in classes.iter().zip(listed) {
        if images.is_empty() {
            warn(
                set,
                warnings,
                format!("{set}: class folder `{}` holds no images", path.display()),
            );
        }
        if let Some(first) = other.first() {
            ignored += other.len();
            ignored_example.get_or_insert_with(|| path.join(first));
        }
        samples.extend(images.into_iter().map(|p| Sample {
            path: p,
            label: *label,
        }));
    }
    if let Some(example) = ignored_example {
        warn(
            set,
            warnings,
            format!(
                "{set}: ignored {ignored} entries that are not jpg/jpeg/png files (e.g. `{}`)",
                example.display()
            ),
        );
    }
    if samples.is_empty() {
        return Err(DataError::NoImages {
            set,
            dir: dir.to_path_buf(),
            expected: IMAGES_EXPECTED,
        });
    }
    Ok(samples)
}

fn warn_missing(
    set: &str,
    dir: &Path,
    missing: &[String],
    expected: usize,
    warnings: &mut Vec<String>,
) {
    if missing.is_empty() {
        return;
    }
    let shown: Vec<&str> = missing.iter().take(5).map(String::as_str).collect();
    let more = if missing.len() > shown.len() {
        ", …"
    } else {
        ""
    };
    warn(
        set,
        warnings,
        format!(
            "{set}: {} of {expected} class folders are missing under `{}` (e.g. {}{more})",
            missing.len(),
            dir.display(),
            shown.join(", ")
        ),
    );
}

/// Maps wnid folders to labels. `label_of` gives the label of a class index, or `None` when the
/// class is outside the set (then the folder is an error: the class space does not match).
fn wnid_classes(
    set: &'static str,
    dir: &Path,
    classes: &ClassSpace,
    expected: &[usize],
    label_of: impl Fn(usize) -> Option<usize>,
    warnings: &mut Vec<String>,
) -> Result<Vec<(usize, String, PathBuf)>, DataError> {
    let mut out = Vec::new();
    for (name, path) in list_folders(dir)? {
        let label = classes
            .wnid_index(&name)
            .and_then(&label_of)
            .ok_or_else(|| DataError::ClassFolder {
                set,
                dir: path.clone(),
                reason: if classes.wnid_index(&name).is_some() {
                    format!("is class `{name}`, which is not one of this set's classes")
                } else {
                    format!("is not a WordNet id of the class space (`{name}`)")
                },
            })?;
        out.push((label, name, path));
    }
    let present: std::collections::HashSet<usize> = out.iter().map(|c| c.0).collect();
    let missing: Vec<String> = expected
        .iter()
        .filter_map(|&ci| label_of(ci).map(|l| (ci, l)))
        .filter(|(_, l)| !present.contains(l))
        .map(|(ci, _)| classes.wnids[ci].clone())
        .collect();
    warn_missing(set, dir, &missing, expected.len(), warnings);
    Ok(out)
}

/// Keeps `k` of `n` items at indices `floor(j·n/k)`, `j = 0..k`: evenly spaced over a list
/// sorted by class, so every class keeps about `k/n` of its images. Deterministic.
pub fn limit_evenly<T>(items: Vec<T>, k: usize) -> Vec<T> {
    let n = items.len();
    if k >= n {
        return items;
    }
    let mut keep = (0..k).map(|j| j * n / k).peekable();
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| {
            if keep.peek() == Some(&i) {
                keep.next();
                Some(item)
            } else {
                None
            }
        })
        .collect()
}

/// Finds and lists an evaluation set under `data_root`.
pub fn open_eval_set(
    name: SetName,
    data_root: &Path,
    classes: &ClassSpace,
    opts: &OpenOptions,
) -> Result<EvalSet, DataError> {
    let set = name.key();
    if name == SetName::ImageNetHoldout {
        return Err(DataError::Invalid {
            what: "evaluation set".into(),
            reason: "imagenet_holdout is drawn from the training set (data.holdout_per_class \
                     or data.holdout_file), not opened from a folder"
                .into(),
        });
    }
    let dir = find_set_dir(set, name.candidate_dirs(), data_root)?;
    let n = classes.num_classes();
    let mut warnings = Vec::new();
    let all: Vec<usize> = (0..n).collect();

    let (class_dirs, num_labels, projection) = match name {
        SetName::ImageNet | SetName::ImageNetSketch => {
            let c = wnid_classes(set, &dir, classes, &all, Some, &mut warnings)?;
            (c, n, Projection::Identity)
        }
        SetName::ImageNetR | SetName::ImageNetA => {
            let subset = if name == SetName::ImageNetR {
                &classes.r_subset
            } else {
                &classes.a_subset
            };
            let pos: HashMap<usize, usize> =
                subset.iter().enumerate().map(|(p, &c)| (c, p)).collect();
            let c = wnid_classes(
                set,
                &dir,
                classes,
                subset,
                |ci| pos.get(&ci).copied(),
                &mut warnings,
            )?;
            (c, subset.len(), Projection::Subset(subset.clone()))
        }
        SetName::ImageNetV2 => {
            let mut c = Vec::new();
            for (folder, path) in list_folders(&dir)? {
                // The folder name is the class index itself ("0".."999"), not a wnid.
                let label = folder
                    .parse::<usize>()
                    .ok()
                    .filter(|_| folder.bytes().all(|b| b.is_ascii_digit()));
                match label {
                    Some(l) if l < n => c.push((l, folder, path)),
                    Some(l) => {
                        return Err(DataError::ClassFolder {
                            set,
                            dir: path,
                            reason: format!("names class {l}, but there are only {n} classes"),
                        });
                    }
                    None => {
                        return Err(DataError::ClassFolder {
                            set,
                            dir: path,
                            reason: "is not a class index (ImageNet-V2 folders are named 0..999)"
                                .to_owned(),
                        });
                    }
                }
            }
            let present: std::collections::HashSet<usize> = c.iter().map(|x| x.0).collect();
            let missing: Vec<String> = (0..n)
                .filter(|l| !present.contains(l))
                .map(|l| l.to_string())
                .collect();
            warn_missing(set, &dir, &missing, n, &mut warnings);
            (c, n, Projection::Identity)
        }
        SetName::ObjectNet => {
            let pos: HashMap<&str, usize> = classes
                .objectnet
                .iter()
                .enumerate()
                .map(|(p, c)| (c.folder.as_str(), p))
                .collect();
            // ObjectNet ships 313 folders; only the mapped ones are scored, so the others are
            // skipped without a warning.
            let c: Vec<(usize, String, PathBuf)> = list_folders(&dir)?
                .into_iter()
                .filter_map(|(f, p)| pos.get(f.as_str()).map(|&l| (l, f, p)))
                .collect();
            let present: std::collections::HashSet<usize> = c.iter().map(|x| x.0).collect();
            let missing: Vec<String> = classes
                .objectnet
                .iter()
                .enumerate()
                .filter(|(l, _)| !present.contains(l))
                .map(|(_, o)| o.folder.clone())
                .collect();
            warn_missing(set, &dir, &missing, classes.objectnet.len(), &mut warnings);
            let groups = classes
                .objectnet
                .iter()
                .map(|o| o.imagenet_indices.clone())
                .collect();
            (c, classes.objectnet.len(), Projection::MaxOver(groups))
        }
        SetName::ImageNetHoldout => unreachable!("refused above"),
    };

    let samples = collect_samples(set, &dir, class_dirs, &mut warnings)?;
    let total_found = samples.len();
    let samples = match opts.limit_per_set {
        Some(k) => limit_evenly(samples, k),
        None => {
            if opts.expect_published_sizes && total_found != name.published_size() {
                return Err(DataError::UnpublishedSize {
                    set,
                    dir,
                    found: total_found,
                    published: name.published_size(),
                });
            }
            samples
        }
    };
    let border_crop = if name == SetName::ObjectNet && opts.objectnet_border_crop {
        2
    } else {
        0
    };
    Ok(EvalSet {
        name,
        dir,
        samples,
        num_labels,
        projection,
        border_crop,
        warnings,
        total_found,
    })
}

/// The folders tried for the training split, in order.
pub const TRAIN_CANDIDATE_DIRS: [&str; 3] = ["imagenet/train", "imagenet/training", "train"];

/// Finds and lists `imagenet/train/<wnid>/*`; labels are class indices.
pub fn open_train_set(data_root: &Path, classes: &ClassSpace) -> Result<TrainSet, DataError> {
    const SET: &str = "imagenet train";
    let dir = find_set_dir(SET, &TRAIN_CANDIDATE_DIRS, data_root)?;
    list_class_folders(SET, dir, classes)
}

/// Lists `dir/<wnid>/*` itself, laid out like ImageNet train (a held-out folder a user made,
/// say); labels are class indices.
pub fn open_class_folders(dir: &Path, classes: &ClassSpace) -> Result<TrainSet, DataError> {
    if !dir.is_dir() {
        return Err(DataError::SetNotFound {
            set: "class folders",
            root: dir.to_path_buf(),
            note: " (not a folder)",
            tried: vec![dir.to_path_buf()],
        });
    }
    list_class_folders("class folders", dir.to_path_buf(), classes)
}

fn list_class_folders(
    set: &'static str,
    dir: PathBuf,
    classes: &ClassSpace,
) -> Result<TrainSet, DataError> {
    let mut warnings = Vec::new();
    let all: Vec<usize> = (0..classes.num_classes()).collect();
    let class_dirs = wnid_classes(set, &dir, classes, &all, Some, &mut warnings)?;
    let samples = collect_samples(set, &dir, class_dirs, &mut warnings)?;
    Ok(TrainSet {
        dir,
        samples,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_evenly_spaced_and_stable() {
        let items: Vec<usize> = (0..10).collect();
        assert_eq!(limit_evenly(items.clone(), 4), vec![0, 2, 5, 7]);
        assert_eq!(limit_evenly(items.clone(), 1), vec![0]);
        assert_eq!(limit_evenly(items.clone(), 0), Vec::<usize>::new());
        assert_eq!(limit_evenly(items.clone(), 10), items);
        assert_eq!(limit_evenly(items.clone(), 50), items);
        // Two classes of 5: half of each.
        let kept = limit_evenly(items, 4);
        assert_eq!(kept.iter().filter(|&&i| i < 5).count(), 2);
    }

    #[test]
    fn image_extensions() {
        for ok in ["a.jpg", "a.JPEG", "b.Png", "c.jpeg"] {
            assert!(is_image_file(Path::new(ok)), "{ok}");
        }
        for no in ["a.webp", "a.bmp", "a", "a.txt", "jpg"] {
            assert!(!is_image_file(Path::new(no)), "{no}");
        }
    }
}
