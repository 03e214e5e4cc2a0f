//! Layouts, label rules, folder variants, class files and projections, on generated trees.

use std::fs;
use std::path::{Path, PathBuf};

use clipstock_data::DataError;
use clipstock_data::classes::{ClassFiles, ClassSpace, Projection, top_k};
use clipstock_data::fixtures::{FixtureManifest, FixtureSpec, write_fixture_tree};
use clipstock_data::layouts::{
    EvalSet, OpenOptions, SetLayout, SetName, open_eval_set, open_train_set,
};
use clipstock_tensors::IoError;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

fn imagenet_classes() -> ClassSpace {
    match ClassSpace::load(&ClassFiles::imagenet(&data_dir())) {
        Ok(c) => c,
        Err(e) => panic!("the repository's class files must load: {e}"),
    }
}

fn ok<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn err<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.to_string(),
    }
}

fn fixture(spec: &FixtureSpec) -> (tempfile::TempDir, ClassSpace, FixtureManifest) {
    let dir = ok(tempfile::tempdir().map_err(IoError::at("create", Path::new("tempdir"))));
    let classes = imagenet_classes();
    let manifest = ok(write_fixture_tree(dir.path(), &classes, spec));
    (dir, classes, manifest)
}

fn rel_samples(set: &EvalSet, root: &Path) -> Vec<(PathBuf, usize)> {
    set.samples
        .iter()
        .map(|s| {
            let rel = s.path.strip_prefix(root).unwrap_or(&s.path);
            (rel.to_path_buf(), s.label)
        })
        .collect()
}

fn manifest_samples(m: &FixtureManifest, set: SetName) -> Vec<(PathBuf, usize)> {
    m.set_images(set)
        .iter()
        .map(|i| (i.rel_path.clone(), i.label))
        .collect()
}

fn mv(root: &Path, from: &str, to: &str) {
    let to = root.join(to);
    if let Some(parent) = to.parent() {
        ok(fs::create_dir_all(parent).map_err(IoError::at("create", parent)));
    }
    ok(fs::rename(root.join(from), &to).map_err(IoError::at("rename", &to)));
}

#[test]
fn the_repository_class_files_are_consistent() {
    let c = imagenet_classes();
    assert_eq!(c.num_classes(), 1000);
    assert_eq!(c.classnames[0], "tench");
    assert_eq!(c.wnids[0], "n01440764");
    assert_eq!(c.r_subset.len(), 200);
    assert_eq!(c.a_subset.len(), 200);
    assert_eq!(c.objectnet.len(), 113);
    let mapped: usize = c.objectnet.iter().map(|o| o.imagenet_indices.len()).sum();
    assert_eq!(mapped, 125);
    assert_eq!(c.wnid_index("n01440764"), Some(0));
    assert_eq!(c.wnid_index("n00000000"), None);
}

#[test]
fn every_layout_and_its_label_rule() {
    let spec = FixtureSpec::default();
    let (dir, classes, m) = fixture(&spec);
    let root = dir.path();
    for set in SetName::ALL {
        let opened = ok(open_eval_set(set, root, &classes, &fixture_opts()));
        assert_eq!(opened.name, set);
        assert_eq!(
            rel_samples(&opened, root),
            manifest_samples(&m, set),
            "{set}: samples and labels"
        );
        assert_eq!(opened.total_found, opened.samples.len());
        assert_eq!(opened.border_crop, 0);
        let (labels, projection) = match set {
            SetName::ImageNet | SetName::ImageNetV2 | SetName::ImageNetSketch => {
                (1000, Projection::Identity)
            }
            SetName::ImageNetR => (200, Projection::Subset(classes.r_subset.clone())),
            SetName::ImageNetA => (200, Projection::Subset(classes.a_subset.clone())),
            SetName::ObjectNet => (
                113,
                Projection::MaxOver(
                    classes
                        .objectnet
                        .iter()
                        .map(|o| o.imagenet_indices.clone())
                        .collect(),
                ),
            ),
            SetName::ImageNetHoldout => unreachable!("not in SetName::ALL"),
        };
        assert_eq!(opened.num_labels, labels, "{set}");
        assert_eq!(opened.projection, projection, "{set}");
        assert_eq!(opened.projection.num_outputs(1000), labels, "{set}");
        // Fewer images than published: refused when sizes are expected, naming both numbers.
        let expected = format!(
            "{set}: found {} images under `{}`, but the published set has {}",
            opened.samples.len(),
            opened.dir.display(),
            set.published_size()
        );
        let refused = err(open_eval_set(set, root, &classes, &OpenOptions::default()));
        assert!(refused.contains(&expected), "{set}: {refused}");
    }

    // Spot checks of the rules themselves, independent of the manifest.
    let v2 = ok(open_eval_set(
        SetName::ImageNetV2,
        root,
        &classes,
        &fixture_opts(),
    ));
    let labels: Vec<usize> = v2.samples.iter().map(|s| s.label).collect();
    assert_eq!(
        labels,
        [0, 0, 1, 1, 2, 2, 10, 10, 999, 999],
        "numeric, not text, order"
    );
    for s in &v2.samples {
        let folder = s.path.parent().and_then(|p| p.file_name());
        assert_eq!(
            folder.and_then(|f| f.to_str()),
            Some(s.label.to_string().as_str())
        );
    }

    let r = ok(open_eval_set(
        SetName::ImageNetR,
        root,
        &classes,
        &fixture_opts(),
    ));
    for s in &r.samples {
        let wnid = s
            .path
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|f| f.to_str());
        assert_eq!(
            wnid,
            Some(classes.wnids[classes.r_subset[s.label]].as_str())
        );
    }
    assert_eq!(r.samples.last().map(|s| s.label), Some(199));

    let on = ok(open_eval_set(
        SetName::ObjectNet,
        root,
        &classes,
        &fixture_opts(),
    ));
    let folders: Vec<&str> = on
        .samples
        .iter()
        .filter_map(|s| s.path.parent()?.file_name()?.to_str())
        .collect();
    assert!(
        folders.iter().all(|f| !f.contains("unmapped")),
        "{folders:?}"
    );
    assert!(
        folders.contains(&"chair"),
        "the 3-index class is in the fixture"
    );
    for s in &on.samples {
        let folder = s
            .path
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|f| f.to_str());
        assert_eq!(folder, Some(classes.objectnet[s.label].folder.as_str()));
    }
    assert_eq!(on.samples.last().map(|s| s.label), Some(112));
    // Every unmapped folder is on disk, and none is reported.
    assert!(root.join("objectnet-1.0/images/m_unmapped").is_dir());
    assert!(!on.warnings.iter().any(|w| w.contains("unmapped")));
}

#[test]
fn objectnet_border_crop_is_an_option() {
    let (dir, classes, _) = fixture(&FixtureSpec::default());
    let opts = OpenOptions {
        objectnet_border_crop: true,
        ..fixture_opts()
    };
    let on = ok(open_eval_set(
        SetName::ObjectNet,
        dir.path(),
        &classes,
        &opts,
    ));
    assert_eq!(on.border_crop, 2);
    let im = ok(open_eval_set(
        SetName::ImageNet,
        dir.path(),
        &classes,
        &opts,
    ));
    assert_eq!(im.border_crop, 0);
}

#[test]
fn train_layout() {
    let (dir, classes, m) = fixture(&FixtureSpec::default());
    let train = ok(open_train_set(dir.path(), &classes));
    assert_eq!(train.dir, dir.path().join("imagenet/train"));
    let got: Vec<(PathBuf, usize)> = train
        .samples
        .iter()
        .map(|s| {
            (
                s.path
                    .strip_prefix(dir.path())
                    .unwrap_or(&s.path)
                    .to_path_buf(),
                s.label,
            )
        })
        .collect();
    let want: Vec<(PathBuf, usize)> = m
        .train
        .iter()
        .map(|i| (i.rel_path.clone(), i.label))
        .collect();
    assert_eq!(got, want);
    assert!(!want.is_empty());
}

#[test]
fn folder_name_variants() {
    let cases: &[(SetName, &str, &str)] = &[
        (SetName::ImageNet, "imagenet/val", "imagenet/val_in_folder"),
        (SetName::ImageNet, "imagenet/val", "imagenet/validation"),
        (SetName::ImageNet, "imagenet/val", "val"),
        (
            SetName::ImageNetV2,
            "imagenetv2-matched-frequency",
            "ImageNetV2-matched-frequency",
        ),
        (
            SetName::ImageNetV2,
            "imagenetv2-matched-frequency",
            "imagenetv2-matched-frequency-format-val",
        ),
        (
            SetName::ImageNetV2,
            "imagenetv2-matched-frequency",
            "imagenetv2/imagenetv2-matched-frequency-format-val",
        ),
        (SetName::ImageNetSketch, "sketch", "imagenet-sketch/sketch"),
        (SetName::ImageNetSketch, "sketch", "imagenet-sketch/data"),
        (SetName::ImageNetR, "imagenet-r", "ImageNet-R"),
        (SetName::ImageNetA, "imagenet-a", "ImageNet-A"),
        (
            SetName::ObjectNet,
            "objectnet-1.0/images",
            "objectnet/images",
        ),
    ];
    let (dir, classes, m) = fixture(&FixtureSpec::default());
    let root = dir.path();
    for &(set, from, to) in cases {
        mv(root, from, to);
        let opened = ok(open_eval_set(set, root, &classes, &fixture_opts()));
        assert_eq!(opened.dir, root.join(to), "{set} from {to}");
        let labels: Vec<usize> = opened.samples.iter().map(|s| s.label).collect();
        let want: Vec<usize> = m.set_images(set).iter().map(|i| i.label).collect();
        assert_eq!(labels, want, "{set} from {to}");
        mv(root, to, from);
    }

    // Archives that unpack into a folder of the same name.
    mv(root, "imagenet-r", "tmp-r");
    mv(root, "tmp-r", "imagenet-r/imagenet-r");
    let r = ok(open_eval_set(
        SetName::ImageNetR,
        root,
        &classes,
        &fixture_opts(),
    ));
    assert_eq!(r.dir, root.join("imagenet-r/imagenet-r"));
    assert_eq!(r.samples.len(), m.set_images(SetName::ImageNetR).len());

    // ObjectNet's class folders directly under `objectnet-1.0`.
    mv(root, "objectnet-1.0/images", "tmp-on");
    ok(fs::remove_dir(root.join("objectnet-1.0"))
        .map_err(IoError::at("remove", &root.join("objectnet-1.0"))));
    mv(root, "tmp-on", "objectnet-1.0");
    let on = ok(open_eval_set(
        SetName::ObjectNet,
        root,
        &classes,
        &fixture_opts(),
    ));
    assert_eq!(on.dir, root.join("objectnet-1.0"));
    assert_eq!(on.samples.len(), m.set_images(SetName::ObjectNet).len());
}

#[test]
fn a_missing_data_root_lists_every_path_tried() {
    let classes = imagenet_classes();
    let dir = ok(tempfile::tempdir().map_err(IoError::at("create", Path::new("tempdir"))));
    let root = dir.path().join("no-such-root");
    for set in SetName::ALL {
        let e = err(open_eval_set(set, &root, &classes, &fixture_opts()));
        assert!(e.contains(set.key()), "{e}");
        assert!(e.contains("does not exist"), "{e}");
        for c in set.candidate_dirs() {
            assert!(
                e.contains(&root.join(c).display().to_string()),
                "{e} lacks {c}"
            );
        }
    }
    // An existing root without the set: no "does not exist" note, the paths still listed.
    let e = err(open_eval_set(
        SetName::ImageNetA,
        dir.path(),
        &classes,
        &fixture_opts(),
    ));
    assert!(!e.contains("does not exist"), "{e}");
    assert!(
        e.contains(&dir.path().join("imagenet-a").display().to_string()),
        "{e}"
    );
    let e = err(open_train_set(&root, &classes));
    assert!(
        e.contains(&root.join("imagenet/train").display().to_string()),
        "{e}"
    );
}

#[test]
fn a_set_folder_without_images_is_an_error_naming_it() {
    let classes = imagenet_classes();
    let dir = ok(tempfile::tempdir().map_err(IoError::at("create", Path::new("tempdir"))));
    let set_dir = dir.path().join("imagenet/val");
    let class_dir = set_dir.join(&classes.wnids[3]);
    let io = |path: &Path| IoError::at("write", path);
    ok(fs::create_dir_all(&class_dir).map_err(io(&class_dir)));
    ok(fs::write(class_dir.join("notes.txt"), b"x").map_err(io(&class_dir)));
    ok(fs::write(set_dir.join("README"), b"x").map_err(io(&set_dir)));
    let e = err(open_eval_set(
        SetName::ImageNet,
        dir.path(),
        &classes,
        &fixture_opts(),
    ));
    assert!(
        e.contains(&set_dir.display().to_string()) && e.contains("no images"),
        "{e}"
    );

    // A set folder with no class folders at all.
    let sketch = dir.path().join("sketch");
    ok(fs::create_dir_all(&sketch).map_err(io(&sketch)));
    let e = err(open_eval_set(
        SetName::ImageNetSketch,
        dir.path(),
        &classes,
        &fixture_opts(),
    ));
    assert!(
        e.contains(&sketch.display().to_string()) && e.contains("no images"),
        "{e}"
    );
}

#[test]
fn empty_class_folders_and_stray_files_are_warnings() {
    let spec = FixtureSpec {
        with_empty_folder: true,
        ..FixtureSpec::default()
    };
    let (dir, classes, m) = fixture(&spec);
    let root = dir.path();
    let empty = m.empty_folder.clone().unwrap_or_default();
    assert!(root.join(&empty).is_dir());
    let stray = root
        .join("sketch")
        .join(&classes.wnids[0])
        .join("Thumbs.db");
    ok(fs::write(&stray, b"x").map_err(IoError::at("write", &stray)));
    let im = ok(open_eval_set(
        SetName::ImageNet,
        root,
        &classes,
        &fixture_opts(),
    ));
    assert!(
        im.warnings.iter().any(
            |w| w.contains(&root.join(&empty).display().to_string()) && w.contains("no images")
        ),
        "{:?}",
        im.warnings
    );
    let sk = ok(open_eval_set(
        SetName::ImageNetSketch,
        root,
        &classes,
        &fixture_opts(),
    ));
    assert!(
        sk.warnings
            .iter()
            .any(|w| w.contains("Thumbs.db") && w.contains("ignored 1")),
        "{:?}",
        sk.warnings
    );
    // Classes without a folder are summarised once.
    assert!(
        sk.warnings
            .iter()
            .any(|w| w.contains("995 of 1000 class folders are missing")),
        "{:?}",
        sk.warnings
    );
}

#[test]
fn folders_that_are_not_classes_are_errors() {
    let (dir, classes, _) = fixture(&FixtureSpec::default());
    let root = dir.path();
    let mk = |rel: &str| {
        let p = root.join(rel);
        ok(fs::create_dir_all(&p).map_err(IoError::at("create", &p)));
        p
    };
    let p = mk("imagenetv2-matched-frequency/1000");
    let e = err(open_eval_set(
        SetName::ImageNetV2,
        root,
        &classes,
        &fixture_opts(),
    ));
    assert!(
        e.contains(&p.display().to_string()) && e.contains("only 1000 classes"),
        "{e}"
    );
    ok(fs::remove_dir(&p).map_err(IoError::at("remove", &p)));
    let p = mk("imagenetv2-matched-frequency/n01440764");
    let e = err(open_eval_set(
        SetName::ImageNetV2,
        root,
        &classes,
        &fixture_opts(),
    ));
    assert!(e.contains(&p.display().to_string()), "{e}");

    let p = mk("sketch/n99999999");
    let e = err(open_eval_set(
        SetName::ImageNetSketch,
        root,
        &classes,
        &fixture_opts(),
    ));
    assert!(
        e.contains(&p.display().to_string()) && e.contains("n99999999"),
        "{e}"
    );

    // Class 0 is an ImageNet class but not one of ImageNet-R's 200.
    assert!(!classes.r_subset.contains(&0));
    let p = mk(&format!("imagenet-r/{}", classes.wnids[0]));
    let e = err(open_eval_set(
        SetName::ImageNetR,
        root,
        &classes,
        &fixture_opts(),
    ));
    assert!(
        e.contains(&p.display().to_string()) && e.contains("not one of this set"),
        "{e}"
    );
}

#[test]
fn limit_per_set_is_deterministic_and_even() {
    let spec = FixtureSpec {
        images_per_class: 4,
        ..FixtureSpec::default()
    };
    let (dir, classes, _) = fixture(&spec);
    let opts = OpenOptions {
        limit_per_set: Some(5),
        ..fixture_opts()
    };
    let a = ok(open_eval_set(
        SetName::ImageNet,
        dir.path(),
        &classes,
        &opts,
    ));
    let b = ok(open_eval_set(
        SetName::ImageNet,
        dir.path(),
        &classes,
        &opts,
    ));
    assert_eq!(a.samples, b.samples);
    assert_eq!(a.samples.len(), 5);
    assert_eq!(a.total_found, 20);
    // Indices 0, 4, 8, 12, 16 of 5 classes × 4 images: one image per class.
    let labels: Vec<usize> = a.samples.iter().map(|s| s.label).collect();
    assert_eq!(labels, [0, 1, 2, 10, 999]);
    assert!(
        !a.warnings.iter().any(|w| w.contains("published")),
        "no size warning under a limit: {:?}",
        a.warnings
    );
    let all = ok(open_eval_set(
        SetName::ImageNet,
        dir.path(),
        &classes,
        &OpenOptions {
            limit_per_set: Some(1000),
            ..fixture_opts()
        },
    ));
    assert_eq!(all.samples.len(), 20);
    let quiet = ok(open_eval_set(
        SetName::ImageNet,
        dir.path(),
        &classes,
        &fixture_opts(),
    ));
    assert!(!quiet.warnings.iter().any(|w| w.contains("published")));
}

#[test]
fn a_set_of_the_wrong_size_is_refused_when_published_sizes_are_expected() {
    let (dir, classes, _) = fixture(&FixtureSpec::default());
    let e = err(open_eval_set(
        SetName::ImageNetV2,
        dir.path(),
        &classes,
        &OpenOptions {
            expect_published_sizes: true,
            ..OpenOptions::default()
        },
    ));
    let found = ok(open_eval_set(
        SetName::ImageNetV2,
        dir.path(),
        &classes,
        &fixture_opts(),
    ))
    .total_found;
    assert!(
        e.contains("imagenet_v2")
            && e.contains(&format!("found {found} images"))
            && e.contains("published set has 10000"),
        "{e}"
    );
}

#[test]
fn r_and_a_masking_against_hand_computed_logits() {
    let classes = imagenet_classes();
    for (set, subset) in [
        (SetName::ImageNetR, &classes.r_subset),
        (SetName::ImageNetA, &classes.a_subset),
    ] {
        let p = Projection::Subset(subset.clone());
        // The overall winner (class 0) is outside both subsets; within the subset the winner is
        // the class at position 7.
        assert!(!subset.contains(&0));
        let mut logits = vec![0.0f32; 1000];
        logits[0] = 100.0;
        logits[subset[7]] = 5.0;
        logits[subset[150]] = 4.0;
        let mut out = Vec::new();
        p.project(&logits, &mut out);
        assert_eq!(out.len(), 200, "{set}");
        assert_eq!(out[7], 5.0);
        assert_eq!(out[150], 4.0);
        assert_eq!(top_k(&out, 1), vec![7], "{set}");
        assert_eq!(top_k(&out, 2), vec![7, 150], "{set}");
        assert_eq!(top_k(&logits, 1), vec![0]);
    }
}

#[test]
fn objectnet_max_projection_against_hand_computed_logits() {
    let classes = imagenet_classes();
    let groups: Vec<Vec<usize>> = classes
        .objectnet
        .iter()
        .map(|o| o.imagenet_indices.clone())
        .collect();
    let p = Projection::MaxOver(groups);
    let chair = classes.objectnet.iter().position(|o| o.folder == "chair");
    assert_eq!(chair, Some(17));
    assert_eq!(classes.objectnet[17].imagenet_indices, [423, 559, 765]);
    let pen = classes.objectnet.iter().position(|o| o.folder == "pen");
    assert_eq!(pen, Some(59));
    assert_eq!(classes.objectnet[59].imagenet_indices, [418, 749, 563]);
    assert_eq!(classes.objectnet[0].imagenet_indices, [409, 530]); // alarm clock

    let mut logits = vec![-1.0f32; 1000];
    // Chair: its third ImageNet class carries the max.
    logits[423] = 1.0;
    logits[559] = 2.0;
    logits[765] = 9.0;
    // Pen: the max in the middle of an unsorted list, just below chair.
    logits[749] = 8.5;
    logits[563] = 3.0;
    // Alarm clock: 530 beats 409.
    logits[409] = 0.5;
    logits[530] = 7.0;
    // An unmapped class with the overall maximum must not matter.
    logits[0] = 50.0;
    let mut out = Vec::new();
    p.project(&logits, &mut out);
    assert_eq!(out.len(), 113);
    assert_eq!(out[17], 9.0);
    assert_eq!(out[59], 8.5);
    assert_eq!(out[0], 7.0);
    assert_eq!(out[1], -1.0); // backpack: [414]
    assert_eq!(top_k(&out, 3), vec![17, 59, 0]);

    // A tie between two ObjectNet classes goes to the lower label.
    logits[530] = 9.0;
    p.project(&logits, &mut out);
    assert_eq!(top_k(&out, 1), vec![0]);
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        let _ = fs::create_dir_all(parent);
    }
    ok(fs::write(path, text).map_err(IoError::at("write", path)));
}

/// A 10-class space in the repository's file formats (as the quickstart uses).
fn small_class_files(dir: &Path) -> ClassFiles {
    let files = ClassFiles::imagenet(dir);
    let wnids: Vec<String> = (0..10).map(|i| format!("n{:08}", 1000 + i)).collect();
    write(&files.wnids, &(wnids.join("\n") + "\n"));
    let names: Vec<String> = (0..10).map(|i| format!("thing {i}")).collect();
    write(
        &files.classnames,
        &serde_json::to_string(&names).unwrap_or_default(),
    );
    write(&files.r_subset, "[1, 3, 5]");
    write(&files.a_subset, "[0, 9]");
    write(
        &files.objectnet,
        r#"[{"objectnet_index": 0, "folder": "cup", "imagenet_indices": [2, 4, 6]},
            {"objectnet_index": 1, "folder": "mug", "imagenet_indices": [7]}]"#,
    );
    files
}

#[test]
fn a_small_class_space_and_its_fixture_tree() {
    let dir = ok(tempfile::tempdir().map_err(IoError::at("create", Path::new("tempdir"))));
    let files = small_class_files(&dir.path().join("classes"));
    let classes = ok(ClassSpace::load(&files));
    assert_eq!(classes.num_classes(), 10);
    let root = dir.path().join("data");
    let spec = FixtureSpec {
        with_corrupt: true,
        with_empty_folder: true,
        ..FixtureSpec::default()
    };
    let m = ok(write_fixture_tree(&root, &classes, &spec));
    let opts = OpenOptions {
        expect_published_sizes: false,
        ..fixture_opts()
    };
    for set in SetName::ALL {
        let opened = ok(open_eval_set(set, &root, &classes, &opts));
        assert_eq!(
            rel_samples(&opened, &root),
            manifest_samples(&m, set),
            "{set}"
        );
    }
    let on = ok(open_eval_set(SetName::ObjectNet, &root, &classes, &opts));
    assert_eq!(on.num_labels, 2);
    let labels: Vec<usize> = on.samples.iter().map(|s| s.label).collect();
    assert_eq!(labels, [0, 0, 1, 1]);
    let a = ok(open_eval_set(SetName::ImageNetA, &root, &classes, &opts));
    assert_eq!(a.num_labels, 2);
    let corrupt: Vec<_> = m.images.iter().filter(|i| i.corrupt).collect();
    assert_eq!(corrupt.len(), 1);
    assert_eq!(corrupt[0].set, SetName::ImageNet);
}

#[test]
fn class_file_errors_name_the_file() {
    let dir = ok(tempfile::tempdir().map_err(IoError::at("create", Path::new("tempdir"))));
    let fresh = |name: &str| small_class_files(&dir.path().join(name));

    let f = fresh("unsorted");
    write(
        &f.wnids,
        "n00000002\nn00000001\nn00000003\nn00000004\nn00000005\nn00000006\nn00000007\nn00000008\nn00000009\nn00000010\n",
    );
    let e = err(ClassSpace::load(&f));
    assert!(
        e.contains(&f.wnids.display().to_string()) && e.contains("sorted"),
        "{e}"
    );

    let f = fresh("dup");
    write(
        &f.wnids,
        "n00000001\nn00000001\nn00000003\nn00000004\nn00000005\nn00000006\nn00000007\nn00000008\nn00000009\nn00000010\n",
    );
    let e = err(ClassSpace::load(&f));
    assert!(
        e.contains(&f.wnids.display().to_string()) && e.contains("twice"),
        "{e}"
    );

    let f = fresh("count");
    write(&f.classnames, r#"["a", "b"]"#);
    let e = err(ClassSpace::load(&f));
    assert!(
        e.contains(&f.classnames.display().to_string()) && e.contains("2 names"),
        "{e}"
    );

    let f = fresh("range");
    write(&f.r_subset, "[1, 10]");
    let e = err(ClassSpace::load(&f));
    assert!(
        e.contains(&f.r_subset.display().to_string()) && e.contains("class 10"),
        "{e}"
    );

    let f = fresh("order");
    write(&f.a_subset, "[3, 2]");
    let e = err(ClassSpace::load(&f));
    assert!(
        e.contains(&f.a_subset.display().to_string()) && e.contains("ascending"),
        "{e}"
    );

    let f = fresh("on-range");
    write(
        &f.objectnet,
        r#"[{"folder": "cup", "imagenet_indices": [2, 12]}]"#,
    );
    let e = err(ClassSpace::load(&f));
    assert!(
        e.contains(&f.objectnet.display().to_string()) && e.contains("class 12"),
        "{e}"
    );

    let f = fresh("on-order");
    write(
        &f.objectnet,
        r#"[{"folder": "mug", "imagenet_indices": [2]}, {"folder": "cup", "imagenet_indices": [3]}]"#,
    );
    let e = err(ClassSpace::load(&f));
    assert!(
        e.contains(&f.objectnet.display().to_string()) && e.contains("sorted"),
        "{e}"
    );

    let f = fresh("json");
    write(&f.classnames, "not json");
    let e = err(ClassSpace::load(&f));
    assert!(e.contains(&f.classnames.display().to_string()), "{e}");

    let f = fresh("missing");
    let _ = fs::remove_file(&f.r_subset);
    let e = err(ClassSpace::load(&f));
    assert!(e.contains(&f.r_subset.display().to_string()), "{e}");
}

/// Fixture trees are tiny, so the published-size check (on by default) is off for them.
fn fixture_opts() -> OpenOptions {
    OpenOptions {
        expect_published_sizes: false,
        ..OpenOptions::default()
    }
}
