//! The quickstart tree written from the shipped assets in `data/quickstart/`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use clipstock_data::quickstart::{
    QuickstartSummary, TREE_MARKER, ensure_quickstart_tree, write_quickstart_tree,
};

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/quickstart")
}

fn json(name: &str) -> serde_json::Value {
    let path = assets().join(name);
    serde_json::from_str(&fs::read_to_string(&path).expect("asset readable"))
        .expect("asset is JSON")
}

fn wnids() -> Vec<String> {
    fs::read_to_string(assets().join("wnids.txt"))
        .expect("wnids.txt readable")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn indices(name: &str) -> Vec<usize> {
    serde_json::from_value(json(name)).expect("index list")
}

fn labels(subset: &str) -> Vec<usize> {
    let m = json("manifest.json");
    let s = m["subsets"]
        .as_array()
        .expect("subsets")
        .iter()
        .find(|s| s["name"] == subset)
        .expect("subset present")
        .clone();
    serde_json::from_value(s["labels"].clone()).expect("labels")
}

fn subdirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry"))
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Relative path → bytes, for every file under `root`.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("readable dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(rel, fs::read(&p).expect("readable file"));
            }
        }
    }
    out
}

fn count_files(dir: &Path) -> usize {
    snapshot(dir).len()
}

fn generate(parent: &Path, name: &str) -> QuickstartSummary {
    let root = parent.join(name);
    write_quickstart_tree(&assets(), &root).expect("quickstart tree written")
}

#[test]
fn tree_has_every_layout_with_the_specified_folders_and_counts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let summary = generate(tmp.path(), "data");
    let root = &summary.root;
    let wnids = wnids();
    assert_eq!(wnids.len(), 10);
    let val = labels("val");
    let (r_sub, a_sub) = (indices("r_subset.json"), indices("a_subset.json"));

    assert_eq!(subdirs(&root.join("imagenet/train")), wnids);
    assert_eq!(subdirs(&root.join("imagenet/val")), wnids);
    assert_eq!(subdirs(&root.join("sketch")), wnids);
    let mut v2_folders: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    v2_folders.sort();
    assert_eq!(
        subdirs(&root.join("imagenetv2-matched-frequency")),
        v2_folders
    );
    let r_wnids: Vec<String> = r_sub.iter().map(|&c| wnids[c].clone()).collect();
    let a_wnids: Vec<String> = a_sub.iter().map(|&c| wnids[c].clone()).collect();
    assert_eq!(subdirs(&root.join("imagenet-r")), r_wnids);
    assert_eq!(subdirs(&root.join("imagenet-a")), a_wnids);

    // Mapped coarse folders plus exactly one unmapped folder ("shirt").
    let on = json("objectnet.json");
    let mut on_folders: Vec<String> = on
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["folder"].as_str().expect("folder").to_owned())
        .collect();
    let mapped: Vec<usize> = on
        .as_array()
        .expect("records")
        .iter()
        .flat_map(|r| {
            serde_json::from_value::<Vec<usize>>(r["imagenet_indices"].clone()).expect("indices")
        })
        .collect();
    let unmapped: Vec<usize> = (0..10).filter(|c| !mapped.contains(c)).collect();
    assert_eq!(unmapped, vec![6]);
    on_folders.push("shirt".into());
    on_folders.sort();
    assert_eq!(subdirs(&root.join("objectnet-1.0/images")), on_folders);
    assert_eq!(
        count_files(&root.join("objectnet-1.0/images/shirt")),
        val.iter().filter(|&&l| l == 6).count()
    );
    assert_eq!(
        count_files(&root.join("objectnet-1.0/images/footwear")),
        val.iter().filter(|&&l| [5, 7, 9].contains(&l)).count()
    );

    let in_val = |sub: &[usize]| val.iter().filter(|l| sub.contains(l)).count();
    let expected: Vec<(String, usize)> = vec![
        ("imagenet/train".into(), labels("train").len()),
        ("imagenet/val".into(), val.len()),
        ("imagenetv2-matched-frequency".into(), labels("v2").len()),
        ("sketch".into(), val.len()),
        ("imagenet-r".into(), in_val(&r_sub)),
        ("imagenet-a".into(), in_val(&a_sub)),
        ("objectnet-1.0/images".into(), val.len()),
    ];
    assert_eq!(summary.counts, expected);
    for (layout, n) in &expected {
        assert_eq!(count_files(&root.join(layout)), *n, "{layout}");
    }
    assert_eq!(labels("train").len(), 2000);
    assert_eq!(val.len(), 500);

    // Per-class counts in the train layout follow the manifest's labels.
    for (c, w) in wnids.iter().enumerate() {
        let n = labels("train").iter().filter(|&&l| l == c).count();
        assert_eq!(count_files(&root.join("imagenet/train").join(w)), n, "{w}");
    }

    // Images decode as RGB at the sizes the layouts promise.
    for (dir, ext, size) in [
        ("imagenet/val", "png", 28),
        ("imagenetv2-matched-frequency", "jpeg", 28),
        ("sketch", "png", 40),
        ("imagenet-r", "png", 32),
        ("imagenet-a", "png", 28),
        ("objectnet-1.0/images", "png", 36),
    ] {
        let files = snapshot(&root.join(dir));
        let (rel, bytes) = files.iter().next().expect("at least one image");
        assert_eq!(rel.extension().and_then(|e| e.to_str()), Some(ext), "{dir}");
        let img = image::load_from_memory(bytes).expect("decodes");
        assert_eq!((img.width(), img.height()), (size, size), "{dir}");
        assert_eq!(img.color(), image::ColorType::Rgb8, "{dir}");
    }

    // No temporary sibling is left next to the tree.
    let siblings: Vec<String> = fs::read_dir(tmp.path())
        .expect("readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(siblings, vec!["data".to_owned()]);
}

#[test]
fn two_generations_are_byte_identical() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = generate(tmp.path(), "a");
    let b = generate(tmp.path(), "b");
    assert_eq!(a.counts, b.counts);
    let (sa, sb) = (snapshot(&a.root), snapshot(&b.root));
    assert_eq!(sa.len(), sb.len());
    for (k, v) in &sa {
        assert!(sb.get(k) == Some(v), "{} differs", k.display());
    }
}

#[test]
fn an_existing_root_is_refused_and_kept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("data");
    fs::create_dir(&root).expect("mkdir");
    fs::write(root.join("keep.txt"), b"mine").expect("write");

    let err = write_quickstart_tree(&assets(), &root).expect_err("existing root refused");
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = ensure_quickstart_tree(&assets(), &root).expect_err("incomplete root refused");
    assert!(err.to_string().contains(TREE_MARKER), "{err}");
    assert_eq!(fs::read(root.join("keep.txt")).expect("kept"), b"mine");
    assert_eq!(count_files(&root), 1);

    // A complete tree is reused as it is.
    let fresh = tmp.path().join("fresh");
    let written = ensure_quickstart_tree(&assets(), &fresh).expect("written");
    let before = snapshot(&fresh);
    let reused = ensure_quickstart_tree(&assets(), &fresh).expect("reused");
    assert_eq!(written, reused);
    assert_eq!(snapshot(&fresh), before);
}

/// Copies the quickstart assets in `src` that `keep` accepts, and never the weights (no test
/// here needs them), into `assets/` of a fresh temporary folder.
fn copy_assets(src: &Path, keep: impl Fn(&str) -> bool) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("assets");
    fs::create_dir(&dir).expect("mkdir");
    for e in fs::read_dir(src).expect("assets dir") {
        let p = e.expect("entry").path();
        let name = p.file_name().expect("name").to_string_lossy().into_owned();
        if keep(&name) && !name.ends_with(".safetensors") {
            fs::copy(&p, dir.join(&name)).expect("copy");
        }
    }
    (tmp, dir)
}

#[test]
fn errors_name_the_missing_or_bad_asset_and_leave_nothing_behind() {
    let src = assets();
    for missing in [
        "manifest.json",
        "wnids.txt",
        "val.png",
        "objectnet.json",
        "r_subset.json",
    ] {
        let (tmp, dir) = copy_assets(&src, |name| name != missing);
        let root = tmp.path().join("out").join("data");
        let err = write_quickstart_tree(&dir, &root).expect_err("missing asset is an error");
        assert!(err.to_string().contains(missing), "{missing}: {err}");
        assert!(!root.exists());
        if let Ok(rd) = fs::read_dir(tmp.path().join("out")) {
            assert_eq!(rd.count(), 0, "{missing}: a temporary tree was left behind");
        }
    }

    // A corrupt mosaic is a decode error naming it.
    let (tmp, dir) = copy_assets(&src, |_| true);
    fs::write(dir.join("train.png"), b"not a png").expect("write");
    let err = write_quickstart_tree(&dir, &tmp.path().join("data")).expect_err("corrupt mosaic");
    assert!(err.to_string().contains("train.png"), "{err}");
}
