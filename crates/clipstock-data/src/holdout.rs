//! The held-out split of the training set (model-soups' "ImageNet2p"): images that are never
//! trained on, scored like an evaluation set of their own and used to select the greedy soup.
//!
//! model-soups draws 26 images per class once and ships the draw as `imagenet_98_idxs.npy`, a
//! float mask over the training images in `ImageFolder` order (classes sorted, files sorted
//! within each), 1 = held out (`datasets/imagenet.py`, `ImageNet98p`, whose commented code is
//! the rule). Our training samples are in that same order, so the mask applies as it is.
//! Our own draw is seeded and per class, and a run writes its split as `holdout.txt` (paths
//! relative to the training folder) so another tool, or a resume, reads the very same images.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use clipstock_config::SetName;
use clipstock_tensors::rng::mix64;

use crate::DataError;
use crate::classes::Projection;
use crate::layouts::{EvalSet, Sample};
use crate::rng::SplitMix64;

/// The file a run writes its split to, in its run directory.
pub const HOLDOUT_LIST: &str = "holdout.txt";

/// The held-out images, as sorted indices into the training samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holdout {
    pub indices: Vec<usize>,
}

impl Holdout {
    /// `per_class` images of every class, drawn with `seed`: per class, a partial
    /// Fisher–Yates shuffle of the class's samples (in their sorted order) from a generator
    /// seeded by `(seed, class)`, so one class's draw does not depend on the others' sizes.
    /// A class with no more than `per_class` images is refused: it would leave nothing to
    /// train on.
    pub fn draw(
        samples: &[Sample],
        class_names: &[String],
        per_class: usize,
        seed: u64,
    ) -> Result<Holdout, DataError> {
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); class_names.len()];
        for (i, s) in samples.iter().enumerate() {
            match by_class.get_mut(s.label) {
                Some(v) => v.push(i),
                None => {
                    return Err(DataError::Invalid {
                        what: "training sample".into(),
                        reason: format!(
                            "`{}` has label {} but there are {} classes",
                            s.path.display(),
                            s.label,
                            class_names.len()
                        ),
                    });
                }
            }
        }
        let mut indices = Vec::with_capacity(per_class * by_class.len());
        for (class, mut members) in by_class.into_iter().enumerate() {
            if members.len() <= per_class {
                return Err(DataError::Invalid {
                    what: "data.holdout_per_class".into(),
                    reason: format!(
                        "class `{}` has {} training images; holding out {per_class} would leave \
                         none to train on",
                        class_names[class],
                        members.len()
                    ),
                });
            }
            let mut rng = SplitMix64(mix64(
                seed ^ mix64((class as u64).wrapping_add(0x05EE_D0FC_1A55)),
            ));
            for k in 0..per_class {
                let j = k + rng.below_unbiased((members.len() - k) as u64) as usize;
                members.swap(k, j);
            }
            indices.extend_from_slice(&members[..per_class]);
        }
        indices.sort_unstable();
        Ok(Holdout { indices })
    }

    /// The split in a file: a NumPy mask (model-soups' `imagenet_98_idxs.npy`: one value per
    /// training image, non-zero = held out), or text with one entry per line (`#` comments),
    /// either 0-based indices or paths relative to `train_dir` (a run's `holdout.txt`).
    pub fn read(path: &Path, train_dir: &Path, samples: &[Sample]) -> Result<Holdout, DataError> {
        let bytes = std::fs::read(path).map_err(clipstock_tensors::IoError::at("read", path))?;
        let bad = |reason: String| DataError::BadFile {
            what: "held-out split (data.holdout_file)",
            path: path.to_path_buf(),
            reason,
        };
        let indices = if bytes.starts_with(NPY_MAGIC) {
            let mask = read_npy_mask(&bytes).map_err(bad)?;
            if mask.len() != samples.len() {
                return Err(bad(format!(
                    "the mask has {} entries but the training set has {} images (the mask is over \
                     the whole training set, in sorted order)",
                    mask.len(),
                    samples.len()
                )));
            }
            (mask.iter().enumerate())
                .filter(|(_, held)| **held)
                .map(|(i, _)| i)
                .collect()
        } else {
            let text = String::from_utf8(bytes)
                .map_err(|_| bad("neither a .npy file nor UTF-8 text".into()))?;
            parse_list(&text, train_dir, samples).map_err(bad)?
        };
        let mut indices: Vec<usize> = indices;
        indices.sort_unstable();
        let before = indices.len();
        indices.dedup();
        if indices.len() != before {
            return Err(bad("an image is listed twice".into()));
        }
        if indices.is_empty() {
            return Err(bad("it holds out no image".into()));
        }
        if indices.len() == samples.len() {
            return Err(bad(
                "it holds out every image, leaving none to train on".into()
            ));
        }
        Ok(Holdout { indices })
    }

    /// `holdout.txt`: one path per line, relative to `train_dir`, in sample order.
    pub fn to_list(&self, train_dir: &Path, samples: &[Sample]) -> String {
        let mut out = String::from(
            "# clipstock held-out split: training images never trained on, relative to the \
             training folder\n",
        );
        for &i in &self.indices {
            let p = &samples[i].path;
            let rel = p.strip_prefix(train_dir).unwrap_or(p);
            out.push_str(&rel.to_string_lossy());
            out.push('\n');
        }
        out
    }

    /// The training samples without the held-out ones, and the held-out ones, both in sample
    /// order.
    pub fn split(&self, samples: Vec<Sample>) -> (Vec<Sample>, Vec<Sample>) {
        let mut train = Vec::with_capacity(samples.len() - self.indices.len());
        let mut held = Vec::with_capacity(self.indices.len());
        let mut next = self.indices.iter().peekable();
        for (i, s) in samples.into_iter().enumerate() {
            if next.peek() == Some(&&i) {
                next.next();
                held.push(s);
            } else {
                train.push(s);
            }
        }
        (train, held)
    }
}

/// The held-out images as an evaluation set: every class, identity projection, the
/// evaluation transform like the other sets.
pub fn eval_set(train_dir: &Path, held: Vec<Sample>, num_classes: usize) -> EvalSet {
    EvalSet {
        name: SetName::ImageNetHoldout,
        dir: train_dir.to_path_buf(),
        total_found: held.len(),
        samples: held,
        num_labels: num_classes,
        projection: Projection::Identity,
        border_crop: 0,
        warnings: Vec::new(),
    }
}

fn parse_list(text: &str, train_dir: &Path, samples: &[Sample]) -> Result<Vec<usize>, String> {
    let lines: Vec<(usize, &str)> = (text.lines().enumerate())
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if lines.iter().all(|(_, l)| l.parse::<usize>().is_ok()) {
        return lines
            .iter()
            .map(|(n, l)| {
                let i: usize = l.parse().unwrap_or(usize::MAX);
                if i < samples.len() {
                    Ok(i)
                } else {
                    Err(format!(
                        "line {n}: index {i}, but the training set has {} images",
                        samples.len()
                    ))
                }
            })
            .collect();
    }
    let by_path: HashMap<PathBuf, usize> = (samples.iter().enumerate())
        .map(|(i, s)| {
            let rel = s.path.strip_prefix(train_dir).unwrap_or(&s.path);
            (rel.to_path_buf(), i)
        })
        .collect();
    lines
        .iter()
        .map(|(n, l)| {
            by_path.get(Path::new(l)).copied().ok_or_else(|| {
                format!(
                    "line {n}: `{l}` is not a training image under `{}`",
                    train_dir.display()
                )
            })
        })
        .collect()
}

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

/// A one-dimensional `.npy` array of booleans, integers or floats, as a mask (non-zero).
fn read_npy_mask(bytes: &[u8]) -> Result<Vec<bool>, String> {
    let short = || "truncated .npy header".to_string();
    let major = *bytes.get(6).ok_or_else(short)?;
    let (header_len, start) = match major {
        1 => {
            let b = bytes.get(8..10).ok_or_else(short)?;
            (u16::from_le_bytes([b[0], b[1]]) as usize, 10)
        }
        2 | 3 => {
            let b = bytes.get(8..12).ok_or_else(short)?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = bytes.get(start..start + header_len).ok_or_else(short)?;
    let header = std::str::from_utf8(header).map_err(|_| "the .npy header is not text")?;
    let descr = dict_value(header, "descr").ok_or("the .npy header has no `descr`")?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let shape = dict_value(header, "shape").ok_or("the .npy header has no `shape`")?;
    let dims: Vec<usize> = shape
        .trim_start_matches('(')
        .split(')')
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<usize>().map_err(|_| format!("bad shape {shape}")))
        .collect::<Result<_, _>>()?;
    let [n] = dims[..] else {
        return Err(format!(
            "expected a one-dimensional mask, found shape {shape}"
        ));
    };
    let data = &bytes[start + header_len..];
    let (width, little) = match descr.as_bytes().first() {
        Some(b'<') | Some(b'|') | Some(b'=') => (descr[2..].parse::<usize>().ok(), true),
        Some(b'>') => (descr[2..].parse::<usize>().ok(), false),
        _ => (None, true),
    };
    let kind = descr.as_bytes().get(1).copied();
    let width = width.ok_or_else(|| format!("unsupported dtype {descr}"))?;
    if data.len() < n * width {
        return Err(format!(
            "{n} values of {width} bytes need {} bytes, the file has {}",
            n * width,
            data.len()
        ));
    }
    let value = |chunk: &[u8]| -> Result<bool, String> {
        let mut b = chunk.to_vec();
        if !little {
            b.reverse();
        }
        Ok(match (kind, width) {
            (Some(b'b'), 1) | (Some(b'u'), 1) | (Some(b'i'), 1) => b[0] != 0,
            (Some(b'u'), 2) | (Some(b'i'), 2) => u16::from_le_bytes([b[0], b[1]]) != 0,
            (Some(b'u'), 4) | (Some(b'i'), 4) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != 0,
            (Some(b'u'), 8) | (Some(b'i'), 8) => {
                u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) != 0
            }
            (Some(b'f'), 4) => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) != 0.0,
            (Some(b'f'), 8) => {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) != 0.0
            }
            _ => return Err(format!("unsupported dtype {descr}")),
        })
    };
    data.chunks_exact(width).take(n).map(value).collect()
}

/// The text after `'key':` in a NumPy header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = header[at + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?;
    let rest = rest.trim_start();
    if rest.starts_with('(') {
        return rest.find(')').map(|end| &rest[..=end]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(per_class: &[usize]) -> Vec<Sample> {
        let mut out = Vec::new();
        for (label, &n) in per_class.iter().enumerate() {
            for i in 0..n {
                out.push(Sample {
                    path: PathBuf::from(format!("/train/c{label}/img{i:03}.png")),
                    label,
                });
            }
        }
        out
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn draw_takes_exactly_k_per_class_and_depends_only_on_the_seed() {
        let s = samples(&[10, 7, 30]);
        let h = Holdout::draw(&s, &names(3), 3, 0).expect("draw");
        assert_eq!(h.indices.len(), 9);
        for class in 0..3 {
            let n = h.indices.iter().filter(|&&i| s[i].label == class).count();
            assert_eq!(n, 3, "class {class}");
        }
        assert!(
            h.indices.windows(2).all(|w| w[0] < w[1]),
            "sorted, distinct"
        );
        assert_eq!(Holdout::draw(&s, &names(3), 3, 0).expect("again"), h);
        let other = Holdout::draw(&s, &names(3), 3, 1).expect("seed 1");
        assert_ne!(other, h);
        // One class's draw does not move when another class grows.
        let bigger = samples(&[10, 7, 31]);
        let h2 = Holdout::draw(&bigger, &names(3), 3, 0).expect("draw");
        let first =
            |h: &Holdout| -> Vec<usize> { h.indices.iter().copied().filter(|&i| i < 17).collect() };
        assert_eq!(first(&h), first(&h2));
    }

    #[test]
    fn a_class_that_would_have_nothing_left_is_refused_by_name() {
        let s = samples(&[10, 3]);
        let e = Holdout::draw(&s, &names(2), 3, 0)
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("`c1`") && e.contains("3 training images"), "{e}");
    }

    #[test]
    fn split_is_a_partition_in_sample_order() {
        let s = samples(&[5, 5]);
        let h = Holdout {
            indices: vec![1, 4, 7],
        };
        let (train, held) = h.split(s.clone());
        assert_eq!(train.len(), 7);
        assert_eq!(held, vec![s[1].clone(), s[4].clone(), s[7].clone()]);
        assert!(train.iter().all(|t| !held.contains(t)));
    }

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = NPY_MAGIC.to_vec();
        out.extend([1u8, 0]);
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.bytes());
        out.extend(data);
        out
    }

    /// model-soups' file is `np.save` of `np.zeros(n)` with ones set: float64, 1-D.
    #[test]
    fn model_soups_float_mask_and_other_dtypes_read_as_masks() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = samples(&[3, 3]);
        let f64s: Vec<u8> = [0.0f64, 1.0, 0.0, 0.0, 0.0, 1.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let p = dir.path().join("idx.npy");
        std::fs::write(&p, npy("<f8", "(6,)", &f64s)).expect("write");
        let h = Holdout::read(&p, Path::new("/train"), &s).expect("f8 mask");
        assert_eq!(h.indices, vec![1, 5]);
        std::fs::write(&p, npy("|b1", "(6,)", &[1, 0, 0, 1, 0, 0])).expect("write");
        let h = Holdout::read(&p, Path::new("/train"), &s).expect("bool mask");
        assert_eq!(h.indices, vec![0, 3]);
        let i8s: Vec<u8> = [0i64, 0, 1, 0, 0, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&p, npy("<i8", "(6,)", &i8s)).expect("write");
        assert_eq!(
            Holdout::read(&p, Path::new("/train"), &s)
                .expect("i8")
                .indices,
            vec![2]
        );
        // The wrong length names both counts.
        std::fs::write(&p, npy("|b1", "(5,)", &[1, 0, 0, 1, 0])).expect("write");
        let e = Holdout::read(&p, Path::new("/train"), &s)
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(
            e.contains("5 entries") && e.contains("6 images") && e.contains("idx.npy"),
            "{e}"
        );
        std::fs::write(&p, npy("|b1", "(2, 3)", &[1, 0, 0, 1, 0, 0])).expect("write");
        let e = Holdout::read(&p, Path::new("/train"), &s)
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("one-dimensional"));
    }

    #[test]
    fn text_lists_of_indices_or_paths_and_the_written_list_reads_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = samples(&[4, 4]);
        let p = dir.path().join("idx.txt");
        std::fs::write(&p, "# held out\n6\n\n1\n").expect("write");
        let h = Holdout::read(&p, Path::new("/train"), &s).expect("indices");
        assert_eq!(h.indices, vec![1, 6]);
        let list = h.to_list(Path::new("/train"), &s);
        assert!(list.contains("c0/img001.png\n") && list.contains("c1/img002.png\n"));
        std::fs::write(&p, &list).expect("write");
        assert_eq!(
            Holdout::read(&p, Path::new("/train"), &s).expect("paths"),
            h
        );
        std::fs::write(&p, "c0/img001.png\nc9/nope.png\n").expect("write");
        let e = Holdout::read(&p, Path::new("/train"), &s)
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.contains("line 2") && e.contains("c9/nope.png"), "{e}");
        std::fs::write(&p, "3\n3\n").expect("write");
        let e = Holdout::read(&p, Path::new("/train"), &s)
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("twice"));
        std::fs::write(&p, "8\n").expect("write");
        let e = Holdout::read(&p, Path::new("/train"), &s)
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("index 8"));
    }
}
