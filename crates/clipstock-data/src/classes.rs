//! The class space (WordNet ids, prompt names, the ImageNet-R/A subsets, the ObjectNet mapping)
//! and the projections that turn a classifier's logits into each evaluation set's label space.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use clipstock_tensors::IoError;

use crate::DataError;

/// One ObjectNet class kept for evaluation and the ImageNet classes it is scored against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectNetClass {
    /// The folder name under `objectnet-1.0/images/`.
    pub folder: String,
    /// Class indices in the class space; the ObjectNet logit is their maximum.
    pub imagenet_indices: Vec<usize>,
}

/// Everything the layouts and the projections need to know about the classes.
///
/// Class `i` is `wnids[i]`, named `classnames[i]`. The subsets are class indices, ascending, so
/// "position in the subset" is also "index among the subset's sorted wnids".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSpace {
    pub wnids: Vec<String>,
    pub classnames: Vec<String>,
    pub r_subset: Vec<usize>,
    pub a_subset: Vec<usize>,
    /// Sorted by folder name, so a class's position here is its ObjectNet label.
    pub objectnet: Vec<ObjectNetClass>,
}

/// Where the class files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassFiles {
    pub wnids: PathBuf,
    pub classnames: PathBuf,
    pub r_subset: PathBuf,
    pub a_subset: PathBuf,
    pub objectnet: PathBuf,
}

impl ClassFiles {
    /// A class folder (`data.class_dir`, `--class-dir`): `wnids.txt`, `classnames.json`,
    /// `r_subset.json`, `a_subset.json`, `objectnet.json`, in the formats of the ImageNet files
    /// (the quickstart's `data/quickstart/` is one).
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            wnids: dir.join("wnids.txt"),
            classnames: dir.join("classnames.json"),
            r_subset: dir.join("r_subset.json"),
            a_subset: dir.join("a_subset.json"),
            objectnet: dir.join("objectnet.json"),
        }
    }

    /// The ImageNet files under their upstream names in the repository's `data/` folder.
    pub fn imagenet(data_dir: &Path) -> Self {
        Self {
            wnids: data_dir.join("imagenet_wnids.txt"),
            classnames: data_dir.join("imagenet_classnames.json"),
            r_subset: data_dir.join("imagenet_r_class_sublist.json"),
            a_subset: data_dir.join("imagenet_a_class_sublist.json"),
            objectnet: data_dir.join("objectnet_113_to_imagenet.json"),
        }
    }
}

#[derive(serde::Deserialize)]
struct ObjectNetEntry {
    folder: String,
    imagenet_indices: Vec<usize>,
}

fn bad(what: &'static str, path: &Path, reason: impl Into<String>) -> DataError {
    DataError::BadFile {
        what,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_text(path: &Path) -> Result<String, DataError> {
    Ok(std::fs::read_to_string(path).map_err(IoError::at("read", path))?)
}

fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<T, DataError> {
    serde_json::from_str(&read_text(path)?).map_err(|e| bad(what, path, e.to_string()))
}

fn check_subset(
    subset: &[usize],
    num_classes: usize,
    path: &Path,
    what: &'static str,
) -> Result<(), DataError> {
    if subset.is_empty() {
        return Err(bad(what, path, "the list is empty"));
    }
    for (pos, pair) in subset.windows(2).enumerate() {
        if pair[0] >= pair[1] {
            return Err(bad(
                what,
                path,
                format!(
                    "entries must be strictly ascending, but entry {pos} is {} and entry {} is {}",
                    pair[0],
                    pos + 1,
                    pair[1]
                ),
            ));
        }
    }
    if let Some((pos, &idx)) = subset.iter().enumerate().find(|(_, i)| **i >= num_classes) {
        return Err(bad(
            what,
            path,
            format!("entry {pos} is class {idx}, but there are only {num_classes} classes"),
        ));
    }
    Ok(())
}

impl ClassSpace {
    /// Reads and validates the class files. Every error names the offending file.
    pub fn load(files: &ClassFiles) -> Result<Self, DataError> {
        let wnids: Vec<String> = read_text(&files.wnids)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        const WNIDS: &str = "WordNet id list";
        if wnids.is_empty() {
            return Err(bad(WNIDS, &files.wnids, "no ids"));
        }
        // Labels are "index in sorted order" everywhere (torchvision's ImageFolder), so an
        // unsorted list would silently permute every label.
        for (i, pair) in wnids.windows(2).enumerate() {
            match pair[0].cmp(&pair[1]) {
                Ordering::Less => {}
                Ordering::Equal => {
                    return Err(bad(
                        WNIDS,
                        &files.wnids,
                        format!(
                            "`{}` appears twice (lines {} and {})",
                            pair[0],
                            i + 1,
                            i + 2
                        ),
                    ));
                }
                Ordering::Greater => {
                    return Err(bad(
                        WNIDS,
                        &files.wnids,
                        format!(
                            "ids must be sorted, but line {} `{}` comes after line {} `{}`",
                            i + 2,
                            pair[1],
                            i + 1,
                            pair[0]
                        ),
                    ));
                }
            }
        }
        if let Some(w) = wnids
            .iter()
            .find(|w| w.contains(['/', '\\']) || w.starts_with('.'))
        {
            return Err(bad(
                WNIDS,
                &files.wnids,
                format!("`{w}` cannot be a folder name"),
            ));
        }
        let n = wnids.len();

        let classnames: Vec<String> = read_json(&files.classnames, "class-name list")?;
        if classnames.len() != n {
            return Err(bad(
                "class-name list",
                &files.classnames,
                format!(
                    "{} names, but `{}` lists {n} classes",
                    classnames.len(),
                    files.wnids.display()
                ),
            ));
        }

        let r_subset: Vec<usize> = read_json(&files.r_subset, "ImageNet-R class sublist")?;
        check_subset(&r_subset, n, &files.r_subset, "ImageNet-R class sublist")?;
        let a_subset: Vec<usize> = read_json(&files.a_subset, "ImageNet-A class sublist")?;
        check_subset(&a_subset, n, &files.a_subset, "ImageNet-A class sublist")?;

        const ON: &str = "ObjectNet class mapping";
        let entries: Vec<ObjectNetEntry> = read_json(&files.objectnet, ON)?;
        if entries.is_empty() {
            return Err(bad(ON, &files.objectnet, "no classes"));
        }
        for (pos, e) in entries.iter().enumerate() {
            if e.folder.is_empty() || e.folder.contains(['/', '\\']) || e.folder.starts_with('.') {
                return Err(bad(
                    ON,
                    &files.objectnet,
                    format!("entry {pos}: `{}` cannot be a folder name", e.folder),
                ));
            }
            if e.imagenet_indices.is_empty() {
                return Err(bad(
                    ON,
                    &files.objectnet,
                    format!("entry {pos} (`{}`) maps to no class", e.folder),
                ));
            }
            if let Some(&i) = e.imagenet_indices.iter().find(|&&i| i >= n) {
                return Err(bad(
                    ON,
                    &files.objectnet,
                    format!(
                        "entry {pos} (`{}`) maps to class {i}, but there are only {n} classes",
                        e.folder
                    ),
                ));
            }
        }
        // The label of an ObjectNet folder is its rank among the kept folders by name; the file
        // is expected in that order so that rank == position.
        for (pos, pair) in entries.windows(2).enumerate() {
            if pair[0].folder >= pair[1].folder {
                return Err(bad(
                    ON,
                    &files.objectnet,
                    format!(
                        "entries must be sorted by folder with no repeats, but entry {} `{}` \
                         is followed by `{}`",
                        pos, pair[0].folder, pair[1].folder
                    ),
                ));
            }
        }
        let objectnet = entries
            .into_iter()
            .map(|e| ObjectNetClass {
                folder: e.folder,
                imagenet_indices: e.imagenet_indices,
            })
            .collect();

        Ok(Self {
            wnids,
            classnames,
            r_subset,
            a_subset,
            objectnet,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.wnids.len()
    }

    /// The class index of a WordNet id (the list is sorted, so this is a binary search).
    pub fn wnid_index(&self, wnid: &str) -> Option<usize> {
        self.wnids.binary_search_by(|w| w.as_str().cmp(wnid)).ok()
    }
}

/// How a classifier's logits over the class space become a set's scores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Projection {
    /// All classes, unchanged (ImageNet, V2, Sketch).
    Identity,
    /// Only these classes, in this order (ImageNet-R/A): logits outside are masked out.
    Subset(Vec<usize>),
    /// Per output, the maximum over these classes (ObjectNet).
    MaxOver(Vec<Vec<usize>>),
}

impl Projection {
    pub fn num_outputs(&self, num_classes: usize) -> usize {
        match self {
            Projection::Identity => num_classes,
            Projection::Subset(idx) => idx.len(),
            Projection::MaxOver(groups) => groups.len(),
        }
    }

    /// Writes the projected scores of one sample into `out` (cleared first).
    ///
    /// A NaN among a group's logits makes that output NaN, as numpy's/torch's `max` do, so a
    /// diverged model is not scored as if it were fine.
    ///
    /// # Panics
    /// If `logits` is shorter than the largest class index the projection uses: the caller
    /// passes one sample's logits over the whole class space.
    pub fn project(&self, logits: &[f32], out: &mut Vec<f32>) {
        out.clear();
        match self {
            Projection::Identity => out.extend_from_slice(logits),
            Projection::Subset(idx) => out.extend(idx.iter().map(|&i| logits[i])),
            Projection::MaxOver(groups) => out.extend(groups.iter().map(|g| {
                g.iter().fold(f32::NEG_INFINITY, |m, &i| {
                    let v = logits[i];
                    if m.is_nan() || v.is_nan() {
                        f32::NAN
                    } else {
                        m.max(v)
                    }
                })
            })),
        }
    }
}

/// Orders (index, score) pairs best first: higher score, then lower index (torch.argmax returns
/// the first maximum), with NaN after every number.
fn rank(scores: &[f32], a: usize, b: usize) -> Ordering {
    let (sa, sb) = (scores[a], scores[b]);
    let by_score = match (sa.is_nan(), sb.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => sb.partial_cmp(&sa).unwrap_or(Ordering::Equal),
    };
    by_score.then(a.cmp(&b))
}

/// The indices of the `k` best scores, best first (at most `scores.len()` of them).
///
/// Ties go to the lower index, matching `torch.argmax`/`topk` on CPU for top-1; NaN sorts last.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    if k == 1 {
        // The evaluator's hot path: one linear scan instead of a selection.
        let mut best = 0;
        for i in 1..scores.len() {
            if rank(scores, i, best) == Ordering::Less {
                best = i;
            }
        }
        return vec![best];
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    if k < idx.len() {
        // The order is total (index breaks ties), so selection is deterministic.
        idx.select_nth_unstable_by(k - 1, |&a, &b| rank(scores, a, b));
        idx.truncate(k);
    }
    idx.sort_unstable_by(|&a, &b| rank(scores, a, b));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_ties_go_to_the_lower_index() {
        let s = [1.0, 3.0, 3.0, 2.0, 3.0];
        assert_eq!(top_k(&s, 1), vec![1]);
        assert_eq!(top_k(&s, 3), vec![1, 2, 4]);
        assert_eq!(top_k(&s, 5), vec![1, 2, 4, 3, 0]);
        assert_eq!(top_k(&s, 9), vec![1, 2, 4, 3, 0]);
        assert!(top_k(&s, 0).is_empty());
        assert!(top_k(&[], 3).is_empty());
    }

    #[test]
    fn top_k_puts_nan_last() {
        let s = [f32::NAN, -1.0, f32::NAN, f32::NEG_INFINITY, 0.5];
        assert_eq!(top_k(&s, 1), vec![4]);
        assert_eq!(top_k(&s, 5), vec![4, 1, 3, 0, 2]);
        assert_eq!(top_k(&[f32::NAN, f32::NAN], 1), vec![0]);
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        // Many ties and a pseudo-random order: selection must agree with sorting everything.
        let s: Vec<f32> = (0..997u32).map(|i| ((i * 7919) % 13) as f32).collect();
        let mut all: Vec<usize> = (0..s.len()).collect();
        all.sort_by(|&a, &b| rank(&s, a, b));
        for k in [1, 2, 5, 13, 100, 997] {
            assert_eq!(top_k(&s, k), all[..k].to_vec(), "k = {k}");
        }
    }

    #[test]
    fn projections_by_hand() {
        let logits = [0.0, 5.0, -1.0, 2.0, 7.0, 3.0];
        let mut out = vec![99.0];
        Projection::Identity.project(&logits, &mut out);
        assert_eq!(out, logits);
        Projection::Subset(vec![0, 2, 5]).project(&logits, &mut out);
        assert_eq!(out, [0.0, -1.0, 3.0]);
        Projection::MaxOver(vec![vec![2, 0], vec![5, 4, 1], vec![3]]).project(&logits, &mut out);
        assert_eq!(out, [0.0, 7.0, 2.0]);
        Projection::MaxOver(vec![vec![0, 1]]).project(&[f32::NAN, 1.0], &mut out);
        assert!(out[0].is_nan());
        Projection::MaxOver(vec![vec![0, 1]]).project(&[1.0, f32::NAN], &mut out);
        assert!(out[0].is_nan());
        assert_eq!(Projection::Identity.num_outputs(10), 10);
        assert_eq!(Projection::Subset(vec![1, 2]).num_outputs(10), 2);
        assert_eq!(Projection::MaxOver(vec![vec![1]]).num_outputs(10), 1);
    }
}
