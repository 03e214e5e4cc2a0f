//! The quickstart data tree: the six evaluation layouts of SPEC §5 (plus ImageNet train),
//! written from the small Fashion-MNIST subsets shipped in `data/quickstart/`.
//!
//! Only three image sets are shipped (train, val, v2 as grey 28×28 mosaics); the four shifted
//! sets are synthesised from val here, deterministically, so the repository stays small and the
//! whole evaluation protocol (label projections included) runs on real images in seconds:
//!
//! | layout | from | what changes |
//! |---|---|---|
//! | `imagenet/train/<wnid>/` | train | nothing |
//! | `imagenet/val/<wnid>/` | val | nothing |
//! | `imagenetv2-matched-frequency/<label>/` | v2 | other test images, JPEG |
//! | `sketch/<wnid>/` | val | edge drawing, dark lines on white, 40 px |
//! | `imagenet-r/<wnid>/` (r_subset) | val | posterised, colourised, sometimes inverted, 32 px |
//! | `imagenet-a/<wnid>/` (a_subset) | val | low contrast, blur, noise, occluder, colour cast |
//! | `objectnet-1.0/images/<folder>/` | val | rotated, shrunk, moved, on clutter, 36 px |
//!
//! ObjectNet also gets one folder per fine class that no coarse class maps (named after its
//! wnid without the `fN_` prefix), which the evaluator must skip as it skips ObjectNet's
//! unmapped folders.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use clipstock_tensors::IoError;
use image::ImageEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use rayon::prelude::*;
use serde::Deserialize;

use crate::DataError;
use crate::rng::SplitMix64;

/// Where the tree went and how many images each layout holds, in the order they are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuickstartSummary {
    pub root: PathBuf,
    /// `(layout path relative to root, images)`; ObjectNet's count includes unmapped folders.
    pub counts: Vec<(String, usize)>,
}

pub const MANIFEST: &str = "manifest.json";
pub const WNIDS: &str = "wnids.txt";
pub const R_SUBSET: &str = "r_subset.json";
pub const A_SUBSET: &str = "a_subset.json";
pub const OBJECTNET: &str = "objectnet.json";
/// Written last inside the tree: its presence means the tree is complete.
pub const TREE_MARKER: &str = "quickstart-tree.json";

const JPEG_QUALITY: u8 = 90;

#[derive(Debug, Deserialize)]
struct Manifest {
    tile: u32,
    subsets: Vec<SubsetEntry>,
}

#[derive(Debug, Deserialize)]
struct SubsetEntry {
    name: String,
    mosaic: String,
    count: usize,
    columns: u32,
    labels: Vec<usize>,
}

#[derive(Debug, Deserialize)]
struct ObjectnetRecord {
    folder: String,
    imagenet_indices: Vec<usize>,
}

/// One decoded grey tile, values in [0, 1].
#[derive(Clone)]
struct Tile {
    label: usize,
    px: Vec<f32>,
}

struct Assets {
    tile: u32,
    wnids: Vec<String>,
    r_subset: Vec<usize>,
    a_subset: Vec<usize>,
    objectnet: Vec<ObjectnetRecord>,
    train: Vec<Tile>,
    val: Vec<Tile>,
    v2: Vec<Tile>,
}

/// Write the quickstart tree under `root` from the assets in `assets` (`data/quickstart`).
///
/// `root` must not exist: an existing tree is never touched (use [`ensure_quickstart_tree`] to
/// reuse one). Everything is written into a temporary sibling that is renamed to `root` at the
/// end, so an interrupted run never leaves a half tree where a reader would look. The output is
/// byte-identical from run to run.
pub fn write_quickstart_tree(assets: &Path, root: &Path) -> Result<QuickstartSummary, DataError> {
    if root.exists() {
        return Err(DataError::Invalid {
            what: "quickstart data root".into(),
            reason: format!(
                "`{}` already exists; it is left as it is (remove it to regenerate)",
                root.display()
            ),
        });
    }
    let assets = load_assets(assets)?;
    let tmp = temp_sibling(root)?;
    if tmp.exists() {
        // Left over by an earlier run of this very process id that was interrupted.
        fs::remove_dir_all(&tmp).map_err(|e| io("remove stale temporary tree", &tmp, e))?;
    }
    let result = write_all(&assets, &tmp).and_then(|counts| {
        write_marker(&tmp, &counts)?;
        fs::rename(&tmp, root).map_err(|e| io("rename temporary tree to", root, e))?;
        Ok(counts)
    });
    match result {
        Ok(counts) => Ok(QuickstartSummary {
            root: root.to_path_buf(),
            counts,
        }),
        Err(e) => {
            // Best effort: the error being returned matters more than a failed cleanup.
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Reuse the tree at `root` when it is a complete quickstart tree (its marker file is there),
/// otherwise write it. An existing `root` without the marker is an error and is never touched.
pub fn ensure_quickstart_tree(assets: &Path, root: &Path) -> Result<QuickstartSummary, DataError> {
    let marker = root.join(TREE_MARKER);
    if marker.is_file() {
        let text = fs::read_to_string(&marker).map_err(|e| io("read", &marker, e))?;
        let counts: Vec<(String, usize)> =
            serde_json::from_str(&text).map_err(|e| DataError::BadFile {
                what: "quickstart tree marker",
                path: marker.clone(),
                reason: e.to_string(),
            })?;
        return Ok(QuickstartSummary {
            root: root.to_path_buf(),
            counts,
        });
    }
    if root.exists() {
        return Err(DataError::Invalid {
            what: "quickstart data root".into(),
            reason: format!(
                "`{}` exists but has no `{TREE_MARKER}` (not a complete quickstart tree); remove it to regenerate",
                root.display()
            ),
        });
    }
    write_quickstart_tree(assets, root)
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> DataError {
    DataError::Io(IoError::new(action, path, source))
}

fn bad(what: &'static str, path: &Path, reason: impl Into<String>) -> DataError {
    DataError::BadFile {
        what,
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn temp_sibling(root: &Path) -> Result<PathBuf, DataError> {
    let name = root.file_name().ok_or_else(|| DataError::Invalid {
        what: "quickstart data root".into(),
        reason: format!("`{}` has no final component", root.display()),
    })?;
    let parent = match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| io("create directory", &parent, e))?;
    Ok(parent.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

fn write_marker(tmp: &Path, counts: &[(String, usize)]) -> Result<(), DataError> {
    let path = tmp.join(TREE_MARKER);
    let text = serde_json::to_string_pretty(counts).map_err(|e| DataError::Invalid {
        what: "quickstart tree marker".into(),
        reason: e.to_string(),
    })?;
    fs::write(&path, text + "\n").map_err(|e| io("write", &path, e))
}

// ---------------------------------------------------------------------------------------------
// Assets
// ---------------------------------------------------------------------------------------------

fn read_text(path: &Path) -> Result<String, DataError> {
    fs::read_to_string(path).map_err(|e| io("read", path, e))
}

fn read_json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    path: &Path,
) -> Result<T, DataError> {
    serde_json::from_str(&read_text(path)?).map_err(|e| bad(what, path, e.to_string()))
}

fn load_assets(dir: &Path) -> Result<Assets, DataError> {
    let manifest_path = dir.join(MANIFEST);
    let manifest: Manifest = read_json("quickstart manifest", &manifest_path)?;
    if manifest.tile == 0 {
        return Err(bad("quickstart manifest", &manifest_path, "tile size is 0"));
    }

    let wnids_path = dir.join(WNIDS);
    let wnids: Vec<String> = read_text(&wnids_path)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if wnids.is_empty() {
        return Err(bad("wnid list", &wnids_path, "no class folders"));
    }
    if wnids.windows(2).any(|w| w[0] >= w[1]) {
        // Labels are sorted-folder indices in every layout, so file order must be sorted order.
        return Err(bad(
            "wnid list",
            &wnids_path,
            "folder names are not strictly ascending (label order must equal sorted order)",
        ));
    }
    let n = wnids.len();

    let check_subset = |name: &str| -> Result<Vec<usize>, DataError> {
        let path = dir.join(name);
        let v: Vec<usize> = read_json("class subset", &path)?;
        if v.is_empty() || v.windows(2).any(|w| w[0] >= w[1]) || v.iter().any(|&c| c >= n) {
            return Err(bad(
                "class subset",
                &path,
                format!("expected ascending, distinct class indices below {n}"),
            ));
        }
        Ok(v)
    };
    let r_subset = check_subset(R_SUBSET)?;
    let a_subset = check_subset(A_SUBSET)?;

    let on_path = dir.join(OBJECTNET);
    let objectnet: Vec<ObjectnetRecord> = read_json("ObjectNet mapping", &on_path)?;
    let mut seen = vec![false; n];
    for rec in &objectnet {
        if rec.folder.is_empty() || rec.folder.contains(['/', '\\']) || rec.folder.starts_with('.')
        {
            return Err(bad(
                "ObjectNet mapping",
                &on_path,
                format!("bad folder name `{}`", rec.folder),
            ));
        }
        for &c in &rec.imagenet_indices {
            if c >= n || seen[c] {
                return Err(bad(
                    "ObjectNet mapping",
                    &on_path,
                    format!(
                        "folder `{}`: class {c} is out of range or mapped twice",
                        rec.folder
                    ),
                ));
            }
            seen[c] = true;
        }
    }
    if objectnet.windows(2).any(|w| w[0].folder >= w[1].folder) {
        return Err(bad(
            "ObjectNet mapping",
            &on_path,
            "records are not sorted by folder",
        ));
    }

    let mut sets: Vec<Option<Vec<Tile>>> = vec![None, None, None];
    for entry in &manifest.subsets {
        let slot = match entry.name.as_str() {
            "train" => 0,
            "val" => 1,
            "v2" => 2,
            _ => continue,
        };
        sets[slot] = Some(decode_mosaic(dir, manifest.tile, entry, n, &manifest_path)?);
    }
    let mut take = |slot: usize, name: &str| {
        sets[slot].take().ok_or_else(|| {
            bad(
                "quickstart manifest",
                &manifest_path,
                format!("no `{name}` subset"),
            )
        })
    };
    let train = take(0, "train")?;
    let val = take(1, "val")?;
    let v2 = take(2, "v2")?;

    let assets = Assets {
        tile: manifest.tile,
        wnids,
        r_subset,
        a_subset,
        objectnet,
        train,
        val,
        v2,
    };
    for (folder, _) in unmapped_folders(&assets) {
        if assets.objectnet.iter().any(|r| r.folder == folder) {
            return Err(bad(
                "ObjectNet mapping",
                &on_path,
                format!("folder `{folder}` is both mapped and the name of an unmapped class"),
            ));
        }
    }
    Ok(assets)
}

fn decode_mosaic(
    dir: &Path,
    tile: u32,
    entry: &SubsetEntry,
    classes: usize,
    manifest_path: &Path,
) -> Result<Vec<Tile>, DataError> {
    if entry.labels.len() != entry.count || entry.columns == 0 {
        return Err(bad(
            "quickstart manifest",
            manifest_path,
            format!(
                "subset `{}`: {} labels for {} images, {} columns",
                entry.name,
                entry.labels.len(),
                entry.count,
                entry.columns
            ),
        ));
    }
    if let Some(&l) = entry.labels.iter().find(|&&l| l >= classes) {
        return Err(bad(
            "quickstart manifest",
            manifest_path,
            format!(
                "subset `{}`: label {l} but only {classes} classes",
                entry.name
            ),
        ));
    }
    let path = dir.join(&entry.mosaic);
    let bytes = fs::read(&path).map_err(|e| io("read", &path, e))?;
    let img = image::load_from_memory(&bytes)
        .map_err(|e| DataError::Decode {
            path: path.clone(),
            reason: e.to_string(),
        })?
        .to_luma8();
    let rows = entry.count.div_ceil(entry.columns as usize) as u32;
    let (w, h) = (entry.columns * tile, rows * tile);
    if img.width() != w || img.height() < h {
        return Err(bad(
            "quickstart mosaic",
            &path,
            format!(
                "{}×{} pixels, expected {w}×{h} ({} tiles of {tile} px, {} columns)",
                img.width(),
                img.height(),
                entry.count,
                entry.columns
            ),
        ));
    }
    let t = tile as usize;
    let stride = img.width() as usize;
    let raw = img.as_raw();
    Ok(entry
        .labels
        .iter()
        .enumerate()
        .map(|(i, &label)| {
            let (r, c) = (i / entry.columns as usize, i % entry.columns as usize);
            let mut px = Vec::with_capacity(t * t);
            for y in 0..t {
                let start = (r * t + y) * stride + c * t;
                px.extend(raw[start..start + t].iter().map(|&v| f32::from(v) / 255.0));
            }
            Tile { label, px }
        })
        .collect())
}

fn unmapped_folders(a: &Assets) -> Vec<(String, usize)> {
    (0..a.wnids.len())
        .filter(|c| !a.objectnet.iter().any(|r| r.imagenet_indices.contains(c)))
        .map(|c| (folder_of_unmapped(&a.wnids[c]), c))
        .collect()
}

fn folder_of_unmapped(wnid: &str) -> String {
    // `f6_shirt` → `shirt`: looks like an ObjectNet folder, not like a wnid.
    match wnid.split_once('_') {
        Some((_, rest)) if !rest.is_empty() => rest.to_owned(),
        _ => format!("unmapped_{wnid}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// One image to write: destination and what to draw.
struct Job<'a> {
    path: PathBuf,
    tile: &'a Tile,
    kind: Kind,
    seed: u64,
}

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    PlainJpeg,
    Sketch,
    Rendition,
    Adversarial,
    ObjectNet,
}

fn jobs<'a>(
    tmp: &Path,
    dir: &str,
    tiles: &'a [Tile],
    kind: Kind,
    set_seed: u64,
    folder: impl Fn(usize) -> Option<String>,
) -> (String, Vec<Job<'a>>) {
    let ext = match kind {
        Kind::PlainJpeg => "jpeg",
        _ => "png",
    };
    let list = tiles
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            folder(t.label).map(|f| Job {
                path: tmp.join(dir).join(f).join(format!("{i:05}.{ext}")),
                tile: t,
                kind,
                seed: seed_of(set_seed, i),
            })
        })
        .collect();
    (dir.to_owned(), list)
}

fn write_all(a: &Assets, tmp: &Path) -> Result<Vec<(String, usize)>, DataError> {
    let wnid = |c: usize| Some(a.wnids[c].clone());
    let in_subset = |sub: &[usize], c: usize| sub.contains(&c).then(|| a.wnids[c].clone());
    let unmapped = unmapped_folders(a);
    let objectnet_folder = |c: usize| {
        a.objectnet
            .iter()
            .find(|r| r.imagenet_indices.contains(&c))
            .map(|r| r.folder.clone())
            .or_else(|| {
                unmapped
                    .iter()
                    .find(|(_, u)| *u == c)
                    .map(|(f, _)| f.clone())
            })
    };
    // Seeds are per layout, so adding or reordering layouts never changes another's images.
    let layouts = [
        jobs(tmp, "imagenet/train", &a.train, Kind::Plain, 1, wnid),
        jobs(tmp, "imagenet/val", &a.val, Kind::Plain, 2, wnid),
        jobs(
            tmp,
            "imagenetv2-matched-frequency",
            &a.v2,
            Kind::PlainJpeg,
            3,
            |c| Some(c.to_string()),
        ),
        jobs(tmp, "sketch", &a.val, Kind::Sketch, 4, wnid),
        jobs(tmp, "imagenet-r", &a.val, Kind::Rendition, 5, |c| {
            in_subset(&a.r_subset, c)
        }),
        jobs(tmp, "imagenet-a", &a.val, Kind::Adversarial, 6, |c| {
            in_subset(&a.a_subset, c)
        }),
        jobs(
            tmp,
            "objectnet-1.0/images",
            &a.val,
            Kind::ObjectNet,
            7,
            objectnet_folder,
        ),
    ];

    let mut counts = Vec::with_capacity(layouts.len());
    for (name, jobs) in &layouts {
        let mut dirs: Vec<&Path> = jobs.iter().filter_map(|j| j.path.parent()).collect();
        dirs.sort();
        dirs.dedup();
        for d in dirs {
            fs::create_dir_all(d).map_err(|e| io("create directory", d, e))?;
        }
        jobs.par_iter().try_for_each(|j| write_job(j, a.tile))?;
        counts.push((name.clone(), jobs.len()));
    }
    Ok(counts)
}

fn write_job(job: &Job<'_>, tile: u32) -> Result<(), DataError> {
    let mut rng = SplitMix64(job.seed);
    let g = Grey {
        w: tile as usize,
        h: tile as usize,
        px: job.tile.px.clone(),
    };
    let img = match job.kind {
        Kind::Plain | Kind::PlainJpeg => Rgb::from_grey(&g),
        Kind::Sketch => sketch(&g, &mut rng),
        Kind::Rendition => rendition(&g, &mut rng),
        Kind::Adversarial => adversarial(&g, &mut rng),
        Kind::ObjectNet => objectnet(&g, &mut rng),
    };
    let bytes = img.to_u8();
    let file = fs::File::create(&job.path).map_err(|e| io("create", &job.path, e))?;
    let mut out = BufWriter::new(file);
    let encoded = match job.kind {
        Kind::PlainJpeg => JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY).write_image(
            &bytes,
            img.w as u32,
            img.h as u32,
            image::ExtendedColorType::Rgb8,
        ),
        _ => PngEncoder::new(&mut out).write_image(
            &bytes,
            img.w as u32,
            img.h as u32,
            image::ExtendedColorType::Rgb8,
        ),
    };
    encoded.map_err(|e| io("encode image", &job.path, std::io::Error::other(e)))?;
    out.flush().map_err(|e| io("write", &job.path, e))
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness: splitmix64, seeded per image so the output does not depend on
// which thread draws first.
// ---------------------------------------------------------------------------------------------

fn seed_of(set: u64, index: usize) -> u64 {
    let mut s = SplitMix64(0x5EED_C11B_5700_C000 ^ (set << 32) ^ index as u64);
    s.next_u64()
}

// ---------------------------------------------------------------------------------------------
// Image maths on small f32 buffers (values in [0, 1]).
// ---------------------------------------------------------------------------------------------

struct Grey {
    w: usize,
    h: usize,
    px: Vec<f32>,
}

struct Rgb {
    w: usize,
    h: usize,
    px: Vec<[f32; 3]>,
}

impl Grey {
    fn at_clamped(&self, x: isize, y: isize) -> f32 {
        let x = x.clamp(0, self.w as isize - 1) as usize;
        let y = y.clamp(0, self.h as isize - 1) as usize;
        self.px[y * self.w + x]
    }

    /// Bilinear resampling with pixel centres aligned (as PIL/OpenCV); fine for the mild
    /// up- and down-scaling done here.
    fn resize(&self, w: usize, h: usize) -> Grey {
        let sx = self.w as f32 / w as f32;
        let sy = self.h as f32 / h as f32;
        let mut px = Vec::with_capacity(w * h);
        for y in 0..h {
            let fy = ((y as f32 + 0.5) * sy - 0.5).max(0.0);
            let y0 = fy.floor() as isize;
            let ty = fy - y0 as f32;
            for x in 0..w {
                let fx = ((x as f32 + 0.5) * sx - 0.5).max(0.0);
                let x0 = fx.floor() as isize;
                let tx = fx - x0 as f32;
                let top = self.at_clamped(x0, y0) * (1.0 - tx) + self.at_clamped(x0 + 1, y0) * tx;
                let bot =
                    self.at_clamped(x0, y0 + 1) * (1.0 - tx) + self.at_clamped(x0 + 1, y0 + 1) * tx;
                px.push(top * (1.0 - ty) + bot * ty);
            }
        }
        Grey { w, h, px }
    }

    fn sobel_magnitude(&self) -> Grey {
        let mut px = Vec::with_capacity(self.w * self.h);
        for y in 0..self.h as isize {
            for x in 0..self.w as isize {
                let p = |dx: isize, dy: isize| self.at_clamped(x + dx, y + dy);
                let gx =
                    (p(1, -1) + 2.0 * p(1, 0) + p(1, 1)) - (p(-1, -1) + 2.0 * p(-1, 0) + p(-1, 1));
                let gy =
                    (p(-1, 1) + 2.0 * p(0, 1) + p(1, 1)) - (p(-1, -1) + 2.0 * p(0, -1) + p(1, -1));
                px.push((gx * gx + gy * gy).sqrt());
            }
        }
        Grey {
            w: self.w,
            h: self.h,
            px,
        }
    }

    fn box_blur(&self) -> Grey {
        let mut px = Vec::with_capacity(self.w * self.h);
        for y in 0..self.h as isize {
            for x in 0..self.w as isize {
                let mut s = 0.0;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        s += self.at_clamped(x + dx, y + dy);
                    }
                }
                px.push(s / 9.0);
            }
        }
        Grey {
            w: self.w,
            h: self.h,
            px,
        }
    }

    /// Rotation by `quarter_turns` × 90° clockwise (exact, no resampling).
    fn rotate90(&self, quarter_turns: usize) -> Grey {
        let mut g = Grey {
            w: self.w,
            h: self.h,
            px: self.px.clone(),
        };
        for _ in 0..quarter_turns % 4 {
            let (w, h) = (g.w, g.h);
            let mut px = vec![0.0; w * h];
            for y in 0..h {
                for x in 0..w {
                    // (x, y) → (h − 1 − y, x) in a h-wide image.
                    px[x * h + (h - 1 - y)] = g.px[y * w + x];
                }
            }
            g = Grey { w: h, h: w, px };
        }
        g
    }
}

impl Rgb {
    fn from_grey(g: &Grey) -> Rgb {
        Rgb {
            w: g.w,
            h: g.h,
            px: g.px.iter().map(|&v| [v, v, v]).collect(),
        }
    }

    fn to_u8(&self) -> Vec<u8> {
        self.px
            .iter()
            .flat_map(|p| p.map(|v| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8))
            .collect()
    }
}

/// Fully saturated colour of hue `h` ∈ [0, 1).
fn hue(h: f32) -> [f32; 3] {
    [5.0f32, 3.0, 1.0].map(|n| {
        let k = (n + h * 6.0) % 6.0;
        1.0 - k.min(4.0 - k).clamp(0.0, 1.0)
    })
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [0, 1, 2].map(|i| a[i] * (1.0 - t) + b[i] * t)
}

/// ImageNet-Sketch stand-in: pencil lines (edge magnitude) on white paper.
fn sketch(g: &Grey, rng: &mut SplitMix64) -> Rgb {
    let up = g.resize(40, 40);
    let gain = rng.range(1.0, 1.8);
    let paper = rng.range(0.92, 1.0);
    let e = up.sobel_magnitude();
    let px =
        e.px.iter()
            .map(|&m| {
                let v = paper - (m * gain).min(1.0) * paper;
                [v, v, v]
            })
            .collect();
    Rgb { w: 40, h: 40, px }
}

/// ImageNet-R stand-in: a flat-colour poster of the object (3 grey levels, each mapped onto a
/// colour ramp of one random hue), inverted for some images.
fn rendition(g: &Grey, rng: &mut SplitMix64) -> Rgb {
    let up = g.resize(32, 32);
    let fg = hue(rng.unit());
    // A dark background keeps the object the brightest thing, as in a photo, except for the
    // inverted minority; a light one everywhere made R nearly impossible for the tiny CLIP.
    let bg = hue(rng.unit()).map(|v| v * rng.range(0.1, 0.35));
    let invert = rng.unit() < 0.3;
    let px = up
        .px
        .iter()
        .map(|&v| {
            let q = ((v * 3.0).floor().min(2.0)) / 2.0;
            let q = if invert { 1.0 - q } else { q };
            mix(bg, fg, q)
        })
        .collect();
    Rgb { w: 32, h: 32, px }
}

/// ImageNet-A stand-in: a bad photo (washed out, blurred, noisy, colour cast) with part of the
/// object hidden behind an occluder.
fn adversarial(g: &Grey, rng: &mut SplitMix64) -> Rgb {
    let mut x = g.box_blur();
    if rng.unit() < 0.5 {
        x = x.box_blur();
    }
    let contrast = rng.range(0.35, 0.6);
    let level = rng.range(0.25, 0.6);
    let sigma = rng.range(0.1, 0.2);
    let cast = mix([1.0, 1.0, 1.0], hue(rng.unit()), rng.range(0.1, 0.4));
    let (w, h) = (x.w, x.h);
    let (ow, oh) = (rng.int(w / 4, w / 2), rng.int(h / 4, h / 2));
    let (ox, oy) = (rng.int(0, w - ow), rng.int(0, h - oh));
    let occ = [rng.unit(), rng.unit(), rng.unit()].map(|v| v * 0.7);
    let mut px = Vec::with_capacity(w * h);
    for y in 0..h {
        for xx in 0..w {
            let c = if (ox..ox + ow).contains(&xx) && (oy..oy + oh).contains(&y) {
                occ
            } else {
                let v = x.px[y * w + xx] * contrast + (1.0 - contrast) * level;
                cast.map(|k| v * k)
            };
            px.push(c.map(|k| k + sigma * rng.normal()));
        }
    }
    Rgb { w, h, px }
}

/// ObjectNet stand-in: the object in an unusual pose (rotated by 90/180/270°), smaller and off
/// centre, on a cluttered background.
fn objectnet(g: &Grey, rng: &mut SplitMix64) -> Rgb {
    const SIZE: usize = 36;
    let rot = g.rotate90(rng.int(1, 3));
    let s = rng.int(22, 28);
    let small = rot.resize(s, s);
    let base = rng.range(0.05, 0.45);
    let mut px = vec![[base, base, base]; SIZE * SIZE];
    for _ in 0..rng.int(4, 8) {
        let (w, h) = (rng.int(3, SIZE / 2), rng.int(3, SIZE / 2));
        let (x0, y0) = (rng.int(0, SIZE - w), rng.int(0, SIZE - h));
        let c = [rng.unit(), rng.unit(), rng.unit()].map(|v| v * 0.5);
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                px[y * SIZE + x] = c;
            }
        }
    }
    for p in px.iter_mut() {
        let n = 0.05 * rng.normal();
        *p = p.map(|v| v + n);
    }
    let (ox, oy) = (rng.int(0, SIZE - s), rng.int(0, SIZE - s));
    for y in 0..s {
        for x in 0..s {
            let v = small.px[y * s + x];
            // Fashion-MNIST backgrounds are black: brightness is a usable alpha matte.
            let alpha = (v * 4.0).min(1.0);
            let dst = &mut px[(oy + y) * SIZE + ox + x];
            *dst = mix(*dst, [v, v, v], alpha);
        }
    }
    Rgb {
        w: SIZE,
        h: SIZE,
        px,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_four_quarter_turns_is_identity_and_one_turn_is_clockwise() {
        let g = Grey {
            w: 3,
            h: 2,
            px: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let r = g.rotate90(1);
        assert_eq!((r.w, r.h), (2, 3));
        assert_eq!(r.px, vec![4.0, 1.0, 5.0, 2.0, 6.0, 3.0]);
        assert_eq!(g.rotate90(4).px, g.px);
    }

    #[test]
    fn splitmix_ranges() {
        let mut r = SplitMix64(7);
        for _ in 0..1000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let i = r.int(3, 5);
            assert!((3..=5).contains(&i));
        }
    }
}
