//! `clipstock eval` against open_clip: the tiny parity model and a fixed head on the tree
//! `clipstock fixtures` writes, scored per SPEC §5, must give open_clip's predictions
//! (`tests/fixtures/eval/expected.json`, made by `scripts/make_eval_fixtures.py`). Plus the
//! bad inputs of an evaluation: a missing data root, a missing set folder, a corrupt image.

mod common;
use common::{TABLE_COLUMNS, assert_fails_with, assert_ok, clipstock, root};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use clipstock_config::EVAL_SETS as SETS;

/// The tree `scripts/make_eval_fixtures.py` computed its expectations on.
const IMAGES_PER_CLASS: &str = "4";
const SIZE: &str = "48";
/// Below this top-2 margin (of the projected scores) a prediction may flip between float
/// implementations; above it clipstock must give open_clip's prediction.
const TIE_MARGIN: f64 = 1e-4;

fn eval_fixture(name: &str) -> PathBuf {
    root()
        .join("crates/clipstock-cli/tests/fixtures/eval")
        .join(name)
}

fn model() -> PathBuf {
    root().join("crates/clipstock-model/tests/fixtures/openclip_tiny.safetensors")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Writes the fixture tree (and its manifest) into `dir`; returns (data root, manifest).
fn fixture_tree(dir: &Path, bad_files: bool) -> (PathBuf, Value) {
    let data = dir.join("data");
    let manifest = dir.join("manifest.json");
    let mut args = vec![
        "fixtures",
        "--out",
        s(&data),
        "--images-per-class",
        IMAGES_PER_CLASS,
        "--size",
        SIZE,
        "--manifest",
        s(&manifest),
    ];
    if bad_files {
        args.push("--with-bad-files");
    }
    assert_ok(&clipstock(&args));
    let manifest = read_json(&manifest);
    (data, manifest)
}

/// `clipstock eval` of the tiny model + fixture head; returns (output, results JSON path,
/// predictions path).
fn eval(dir: &Path, data: &Path, sets: &str) -> (Output, PathBuf, PathBuf) {
    let results = dir.join("results.json");
    let predictions = dir.join("predictions.jsonl");
    let out = clipstock(&[
        "eval",
        "--weights",
        s(&model()),
        "--head",
        s(&eval_fixture("head.safetensors")),
        "--data-root",
        s(data),
        "--sets",
        sets,
        "--predictions",
        s(&predictions),
        "--out",
        s(&results),
        "--no-size-check",
        "--device",
        "cpu",
    ]);
    (out, results, predictions)
}

/// FNV-1a 64 of (manifest path, 0, bytes, 0) for every evaluation image in manifest order, as
/// `images_fnv` in scripts/make_eval_fixtures.py.
fn images_fnv(data: &Path, manifest: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for e in manifest["images"].as_array().expect("images") {
        if e["corrupt"].as_bool() == Some(true) {
            continue;
        }
        let rel = e["path"].as_str().expect("path");
        feed(rel.as_bytes());
        feed(&[0]);
        feed(&std::fs::read(data.join(rel)).expect("read image"));
        feed(&[0]);
    }
    format!("{h:016x}")
}

fn predictions(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .expect("predictions")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn key(v: &Value) -> (String, String) {
    (
        v["set"].as_str().expect("set").to_string(),
        v["path"].as_str().expect("path").to_string(),
    )
}

#[test]
fn eval_agrees_with_open_clip_on_the_fixture_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, manifest) = fixture_tree(dir.path(), false);
    let expected = read_json(&eval_fixture("expected.json"));
    assert_eq!(
        images_fnv(&data, &manifest),
        expected["tree"]["images_fnv1a64"].as_str().expect("fnv"),
        "`clipstock fixtures` no longer writes the tree the expectations were computed on: \
         rerun scripts/make_eval_fixtures.py"
    );

    let (out, results, preds) = eval(dir.path(), &data, &SETS.join(","));
    assert_ok(&out);

    // Per image: clipstock against open_clip.
    let want: HashMap<(String, String), &Value> = expected["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|v| (key(v), v))
        .collect();
    let got = predictions(&preds);
    assert_eq!(got.len(), want.len(), "one prediction per image");
    let mut agree = 0usize;
    let mut small_margin = 0usize;
    let mut must_agree_but_differ = Vec::new();
    let mut differ_small = Vec::new();
    let mut per_set: BTreeMap<String, (usize, usize, bool)> = BTreeMap::new(); // correct, n, all agree
    for g in &got {
        let k = key(g);
        let w = want
            .get(&k)
            .unwrap_or_else(|| panic!("clipstock scored an image open_clip did not: {k:?}"));
        assert_eq!(g["label"], w["label"], "label of {k:?}");
        let margin = w["top2_margin"].as_f64().expect("margin");
        if margin <= TIE_MARGIN {
            small_margin += 1;
        }
        let same = g["prediction"] == w["prediction"];
        if same {
            agree += 1;
        } else {
            let line = format!(
                "{}/{}: clipstock {} (top5 {}), open_clip {} (top5 {}), open_clip top-2 margin {margin:e}",
                k.0, k.1, g["prediction"], g["top5"], w["prediction"], w["top5"]
            );
            if margin > TIE_MARGIN {
                must_agree_but_differ.push(line);
            } else {
                differ_small.push(line);
            }
        }
        let e = per_set.entry(k.0.clone()).or_insert((0, 0, true));
        e.0 += usize::from(g["prediction"] == g["label"]);
        e.1 += 1;
        e.2 &= same;
    }
    let n = got.len();
    let rate = agree as f64 / n as f64;
    eprintln!(
        "agreement with open_clip: {agree}/{n} = {:.2}% ({small_margin} images with a top-2 margin <= {TIE_MARGIN:e})",
        100.0 * rate
    );
    assert!(
        must_agree_but_differ.is_empty(),
        "predictions differ where open_clip's top-2 margin exceeds {TIE_MARGIN:e}:\n{}\n(others: {:?})",
        must_agree_but_differ.join("\n"),
        differ_small
    );
    assert!(
        rate >= 0.99,
        "agreement {agree}/{n} below 99%:\n{}",
        differ_small.join("\n")
    );

    // The results JSON: six sets and the OOD mean, top-1 in percent.
    let res = read_json(&results);
    for k in SETS.iter().copied().chain(["ood_mean"]) {
        assert!(
            res.get(k).is_some(),
            "`{k}` missing from the results: {res}"
        );
    }
    let mut shifts = 0.0;
    for set in SETS {
        let r = &res[set];
        let (correct, count, all_agree) = per_set[set];
        assert_eq!(r["count"].as_u64(), Some(count as u64), "{set} count");
        assert_eq!(r["skipped"].as_u64(), Some(0), "{set} skipped");
        let top1 = r["top1"].as_f64().expect("top1");
        // The JSON agrees with clipstock's own predictions file…
        let own = 100.0 * correct as f64 / count as f64;
        assert!(
            (top1 - own).abs() < 1e-6,
            "{set}: top1 {top1} but predictions give {own}"
        );
        // …and with open_clip's accuracy where every prediction of the set agreed.
        if all_agree {
            let want = 100.0 * expected["top1"][set].as_f64().expect("expected top1");
            assert!(
                (top1 - want).abs() < 1e-6,
                "{set}: top1 {top1}, open_clip {want}"
            );
        }
        if set != "imagenet" {
            shifts += top1;
        }
    }
    let ood = res["ood_mean"].as_f64().expect("ood_mean");
    assert!((ood - shifts / 5.0).abs() < 1e-6, "ood_mean {ood}");
    if per_set.values().all(|v| v.2) {
        let want = 100.0 * expected["ood_mean"].as_f64().expect("expected ood_mean");
        assert!(
            (ood - want).abs() < 1e-6,
            "ood_mean {ood}, open_clip {want}"
        );
    }

    // The Markdown table on stdout, in the paper's column order.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let header = stdout
        .lines()
        .find(|l| l.starts_with('|') && l.contains("ImageNet"))
        .unwrap_or_else(|| panic!("no Markdown table on stdout: {stdout}"));
    let cols: Vec<&str> = header.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!(cols[1..], TABLE_COLUMNS, "{header}");
    let row = stdout
        .lines()
        .skip_while(|l| *l != header)
        .nth(2)
        .expect("a table row");
    let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
    let order = [
        "imagenet",
        "imagenet_v2",
        "imagenet_sketch",
        "imagenet_r",
        "objectnet",
        "imagenet_a",
    ];
    for (cell, set) in cells[1..7].iter().zip(order) {
        let top1 = res[set]["top1"].as_f64().expect("top1");
        assert_eq!(*cell, format!("{top1:.2}"), "{set} in: {row}");
    }
    assert_eq!(cells[7], format!("{ood:.2}"), "avg shifts in: {row}");
}

#[test]
fn missing_data_root_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-root");
    let (out, results, _) = eval(dir.path(), &missing, "imagenet");
    assert_fails_with(&out, &[s(&missing)]);
    assert!(!results.exists(), "no results for a failed run");
}

#[test]
fn missing_set_folder_lists_the_paths_tried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = fixture_tree(dir.path(), false);
    std::fs::remove_dir_all(data.join("imagenet-r")).expect("remove imagenet-r");
    let (out, results, _) = eval(dir.path(), &data, "imagenet,imagenet_r");
    let tried = data.join("imagenet-r");
    assert_fails_with(&out, &["imagenet_r", "tried", s(&tried)]);
    assert!(!results.exists(), "no results for a failed run");
}

#[test]
fn corrupt_jpeg_is_skipped_counted_and_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, manifest) = fixture_tree(dir.path(), true);
    let corrupt: Vec<&Value> = manifest["images"]
        .as_array()
        .expect("images")
        .iter()
        .filter(|e| e["corrupt"].as_bool() == Some(true))
        .collect();
    assert_eq!(
        corrupt.len(),
        1,
        "--with-bad-files writes one corrupt image"
    );
    let set = corrupt[0]["set"].as_str().expect("set");
    let rel = corrupt[0]["path"].as_str().expect("path");
    let name = Path::new(rel)
        .file_name()
        .expect("name")
        .to_str()
        .expect("utf8");
    assert!(name.ends_with(".jpg"), "{rel}");
    let good = manifest["images"]
        .as_array()
        .expect("images")
        .iter()
        .filter(|e| e["set"] == set && e["corrupt"].as_bool() != Some(true))
        .count();

    let (out, results, preds) = eval(dir.path(), &data, &SETS.join(","));
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(name),
        "stderr does not name {name}: {stderr}"
    );

    let res = read_json(&results);
    let r = &res[set];
    assert_eq!(r["skipped"].as_u64(), Some(1), "{set}: {r}");
    assert_eq!(r["count"].as_u64(), Some(good as u64), "{set}: {r}");
    let files = r["skipped_files"].as_array().expect("skipped_files");
    assert_eq!(files.len(), 1, "{r}");
    let p = files[0]["path"].as_str().expect("path");
    assert!(p.ends_with(rel), "`{p}` is not {rel}");
    assert!(
        !files[0]["reason"].as_str().unwrap_or("").trim().is_empty(),
        "{r}"
    );
    for other in SETS.iter().filter(|o| **o != set) {
        assert_eq!(res[*other]["skipped"].as_u64(), Some(0), "{other}");
    }
    // The corrupt file gets no prediction; every other image does.
    let got = predictions(&preds);
    assert!(
        got.iter()
            .all(|g| !g["path"].as_str().unwrap_or("").ends_with(name))
    );
    assert_eq!(got.iter().filter(|g| g["set"] == set).count(), good);
}

#[test]
fn a_set_with_no_readable_image_is_an_error_not_a_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, _) = fixture_tree(dir.path(), false);
    let set_dir = data.join("imagenet-a");
    let mut n = 0;
    for class in std::fs::read_dir(&set_dir).expect("set") {
        let class = class.expect("class").path();
        if !class.is_dir() {
            continue;
        }
        for img in std::fs::read_dir(class).expect("class dir") {
            std::fs::write(img.expect("image").path(), b"not an image").expect("write");
            n += 1;
        }
    }
    assert!(n > 0);
    let (out, _, _) = eval(dir.path(), &data, "imagenet_a");
    assert_fails_with(&out, &["imagenet_a", "none of its", "could be read"]);
}
