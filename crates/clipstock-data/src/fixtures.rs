//! A small on-disk copy of every real dataset layout, for tests across the workspace and the
//! CLI's fixture command.
//!
//! Each set gets a few classes only (chosen so every label rule is exercised: V2's "10" sorts
//! before "2" as text, R/A subsets, an ObjectNet class scored over three ImageNet classes,
//! ObjectNet folders that are not scored), so opening a complete fixture set also yields the
//! published-size warning.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use clipstock_tensors::IoError;
use image::{ImageFormat, Rgb, RgbImage};

use crate::DataError;
use crate::classes::ClassSpace;
use crate::layouts::SetName;

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixtureSpec {
    pub images_per_class: usize,
    /// (width, height) of every image.
    pub image_size: (u32, u32),
    /// Add one undecodable `.jpg` to the first ImageNet val class.
    pub with_corrupt: bool,
    /// Add one empty ImageNet val class folder (the first class not otherwise used).
    pub with_empty_folder: bool,
}

impl Default for FixtureSpec {
    fn default() -> Self {
        Self {
            images_per_class: 2,
            image_size: (40, 30),
            with_corrupt: false,
            with_empty_folder: false,
        }
    }
}

/// One generated evaluation image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixtureImage {
    pub set: SetName,
    /// Relative to the manifest's root.
    pub rel_path: PathBuf,
    /// The label `open_eval_set` must give it (in the set's own label space).
    pub label: usize,
    pub corrupt: bool,
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixtureManifest {
    pub root: PathBuf,
    /// The evaluation images, sorted by set, then as `open_eval_set` lists them.
    pub images: Vec<FixtureImage>,
    /// The training images under `imagenet/train/` (`set` is `ImageNet`, label = class index).
    pub train: Vec<FixtureImage>,
    /// The empty class folder, when asked for, relative to the root.
    pub empty_folder: Option<PathBuf>,
}

impl FixtureManifest {
    /// The images of one set, in the order `open_eval_set` lists them.
    pub fn set_images(&self, set: SetName) -> Vec<&FixtureImage> {
        self.images.iter().filter(|i| i.set == set).collect()
    }
}

/// Distinct, deterministic content per (label, image): a label-specific colour with a gradient
/// and a per-image stripe, so two images never decode to the same pixels.
fn make_image(width: u32, height: u32, label: usize, k: usize) -> RgbImage {
    let l = label as u32;
    let k = k as u32;
    let base = [
        (l.wrapping_mul(67) + 13) % 256,
        (l.wrapping_mul(151) + 101) % 256,
        (l.wrapping_mul(29) + 197) % 256,
    ];
    RgbImage::from_fn(width, height, |x, y| {
        let stripe = if (x + k * 3).is_multiple_of(7) { 60 } else { 0 };
        Rgb([
            ((base[0] + x * 255 / width.max(1) / 2 + stripe) % 256) as u8,
            ((base[1] + y * 255 / height.max(1) / 2) % 256) as u8,
            ((base[2] + (x + y + k * 17) % 64) % 256) as u8,
        ])
    })
}

struct Writer<'a> {
    root: &'a Path,
    spec: &'a FixtureSpec,
}

impl Writer<'_> {
    fn mkdir(&self, rel: &Path) -> Result<(), DataError> {
        let dir = self.root.join(rel);
        Ok(std::fs::create_dir_all(&dir).map_err(IoError::at("create folder", &dir))?)
    }

    fn write(&self, rel: &Path, bytes: &[u8]) -> Result<(), DataError> {
        let path = self.root.join(rel);
        std::fs::write(&path, bytes).map_err(IoError::at("write", &path))?;
        Ok(())
    }

    /// Writes `images_per_class` images into `rel_dir` and returns their relative paths.
    fn class(
        &self,
        rel_dir: &Path,
        label: usize,
        ext: &str,
        format: ImageFormat,
    ) -> Result<Vec<PathBuf>, DataError> {
        self.mkdir(rel_dir)?;
        let (w, h) = self.spec.image_size;
        let mut out = Vec::new();
        for k in 0..self.spec.images_per_class {
            let rel = rel_dir.join(format!("img_{label:04}_{k:03}.{ext}"));
            let mut bytes = Cursor::new(Vec::new());
            make_image(w, h, label, k)
                .write_to(&mut bytes, format)
                .map_err(|e| DataError::BadFile {
                    what: "fixture image",
                    path: self.root.join(&rel),
                    reason: e.to_string(),
                })?;
            self.write(&rel, bytes.get_ref())?;
            out.push(rel);
        }
        Ok(out)
    }
}

fn dedup_sorted(mut v: Vec<usize>) -> Vec<usize> {
    v.sort_unstable();
    v.dedup();
    v
}

/// Writes the six evaluation layouts and ImageNet train under `root` (which is created).
///
/// Folders (canonical names): `imagenet/val/<wnid>`, `imagenet/train/<wnid>`,
/// `imagenetv2-matched-frequency/<index>`, `sketch/<wnid>`, `imagenet-r/<wnid>`,
/// `imagenet-a/<wnid>`, `objectnet-1.0/images/<folder>` plus three unmapped ObjectNet folders
/// (`aaa_unmapped`, `m_unmapped`, `zzz_unmapped`) that must be ignored. ImageNet, Sketch and
/// V2 images are JPEG (`.JPEG`, `.JPEG`, `.jpeg`), R/A JPEG (`.jpg`), ObjectNet PNG (`.png`).
pub fn write_fixture_tree(
    root: &Path,
    classes: &ClassSpace,
    spec: &FixtureSpec,
) -> Result<FixtureManifest, DataError> {
    let n = classes.num_classes();
    if spec.images_per_class == 0 || spec.image_size.0 == 0 || spec.image_size.1 == 0 {
        return Err(DataError::Invalid {
            what: "fixture spec".to_owned(),
            reason: "images_per_class and both image dimensions must be at least 1".to_owned(),
        });
    }
    let w = Writer { root, spec };
    w.mkdir(Path::new(""))?;
    let mut images = Vec::new();
    let mut train = Vec::new();

    // 10 and 2 together catch a V2 loader that sorts folder names as text.
    let core = dedup_sorted(
        [0, 1, 2, 10, n.saturating_sub(1)]
            .into_iter()
            .filter(|&i| i < n)
            .collect(),
    );

    for &ci in &core {
        let wnid = &classes.wnids[ci];
        for rel in w.class(
            &Path::new("imagenet/val").join(wnid),
            ci,
            "JPEG",
            ImageFormat::Jpeg,
        )? {
            images.push(FixtureImage {
                set: SetName::ImageNet,
                rel_path: rel,
                label: ci,
                corrupt: false,
            });
        }
        for rel in w.class(
            &Path::new("imagenet/train").join(wnid),
            ci,
            "JPEG",
            ImageFormat::Jpeg,
        )? {
            train.push(FixtureImage {
                set: SetName::ImageNet,
                rel_path: rel,
                label: ci,
                corrupt: false,
            });
        }
    }
    if spec.with_corrupt {
        // A JPEG start-of-image marker followed by garbage: recognised as JPEG, then fails.
        let rel = Path::new("imagenet/val")
            .join(&classes.wnids[core[0]])
            .join("zz_corrupt.jpg");
        w.write(&rel, b"\xFF\xD8\xFF\xE0 this is not really a jpeg")?;
        images.push(FixtureImage {
            set: SetName::ImageNet,
            rel_path: rel,
            label: core[0],
            corrupt: true,
        });
    }
    let empty_folder = if spec.with_empty_folder {
        let used: HashSet<usize> = core.iter().copied().collect();
        let free = (0..n)
            .find(|i| !used.contains(i))
            .ok_or_else(|| DataError::Invalid {
                what: "fixture spec".to_owned(),
                reason: format!(
                    "an empty class folder needs a class the fixture does not use, but the class \
                     space has only {n}"
                ),
            })?;
        let rel = Path::new("imagenet/val").join(&classes.wnids[free]);
        w.mkdir(&rel)?;
        Some(rel)
    } else {
        None
    };

    for &ci in &core {
        for rel in w.class(
            &Path::new("imagenetv2-matched-frequency").join(ci.to_string()),
            ci,
            "jpeg",
            ImageFormat::Jpeg,
        )? {
            images.push(FixtureImage {
                set: SetName::ImageNetV2,
                rel_path: rel,
                label: ci,
                corrupt: false,
            });
        }
    }
    for &ci in &core {
        for rel in w.class(
            &Path::new("sketch").join(&classes.wnids[ci]),
            ci,
            "JPEG",
            ImageFormat::Jpeg,
        )? {
            images.push(FixtureImage {
                set: SetName::ImageNetSketch,
                rel_path: rel,
                label: ci,
                corrupt: false,
            });
        }
    }

    for (set, folder, subset) in [
        (SetName::ImageNetR, "imagenet-r", &classes.r_subset),
        (SetName::ImageNetA, "imagenet-a", &classes.a_subset),
    ] {
        let positions = dedup_sorted(
            [0, 1, 2, subset.len().saturating_sub(1)]
                .into_iter()
                .filter(|&p| p < subset.len())
                .collect(),
        );
        for p in positions {
            let ci = subset[p];
            for rel in w.class(
                &Path::new(folder).join(&classes.wnids[ci]),
                p,
                "jpg",
                ImageFormat::Jpeg,
            )? {
                images.push(FixtureImage {
                    set,
                    rel_path: rel,
                    label: p,
                    corrupt: false,
                });
            }
        }
        // The real ImageNet-R/A archives carry a README next to the class folders.
        w.write(&Path::new(folder).join("README.txt"), b"fixture\n")?;
    }

    let on = &classes.objectnet;
    let multi = on.iter().position(|c| c.imagenet_indices.len() >= 3);
    let mut kept: Vec<usize> = [Some(0), Some(1), multi, on.len().checked_sub(1)]
        .into_iter()
        .flatten()
        .filter(|&p| p < on.len())
        .collect();
    kept = dedup_sorted(kept);
    let on_dir = Path::new("objectnet-1.0/images");
    for name in ["aaa_unmapped", "m_unmapped", "zzz_unmapped"] {
        if on.iter().any(|c| c.folder == name) {
            continue;
        }
        // Label 0's colours: an evaluator that scored these would not notice from pixels.
        w.class(&on_dir.join(name), 0, "png", ImageFormat::Png)?;
    }
    for p in kept {
        for rel in w.class(&on_dir.join(&on[p].folder), p, "png", ImageFormat::Png)? {
            images.push(FixtureImage {
                set: SetName::ObjectNet,
                rel_path: rel,
                label: p,
                corrupt: false,
            });
        }
    }

    // `open_eval_set` lists by (label, file name); keep the manifest in the same order.
    images.sort_by(|a, b| {
        (a.set, a.label, a.rel_path.file_name()).cmp(&(b.set, b.label, b.rel_path.file_name()))
    });
    train.sort_by(|a, b| (a.label, &a.rel_path).cmp(&(b.label, &b.rel_path)));
    Ok(FixtureManifest {
        root: root.to_path_buf(),
        images,
        train,
        empty_folder,
    })
}
