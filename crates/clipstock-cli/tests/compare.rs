//! `clipstock compare` end to end on a small quickstart: every method's row, scored for real;
//! greedy soup selecting on held-out images only; the figure; resuming a finished part.

mod common;
use common::{assert_ok, clipstock, small_quickstart};

use std::path::Path;

use serde_json::Value;

/// The small quickstart (tests/common) as a comparison: two independent fine-tunes, 4 held-out
/// images per class, evaluated only at the end.
fn compare_args(out: &Path, name: &str) -> Vec<String> {
    let mut args = small_quickstart(
        out,
        name,
        &["data.holdout_per_class=4", "eval.every_epochs=0"],
    );
    args[0] = "compare".into();
    args[2] = "configs/quickstart_compare.toml".into();
    args
}

fn rows(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("compare/results.json")).expect("results.json");
    let v: Value = serde_json::from_str(&text).expect("json");
    v.as_array().expect("an array of rows").clone()
}

fn row<'a>(rows: &'a [Value], method: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["method"] == method)
        .unwrap_or_else(|| panic!("no row `{method}`"))
}

fn top1(row: &Value, set: &str) -> f64 {
    row["results"][set]["top1"]
        .as_f64()
        .unwrap_or_else(|| panic!("{} has no {set}", row["method"]))
}

#[test]
fn compare_scores_every_method_selects_greedy_on_held_out_images_and_draws_the_figure() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = clipstock(&compare_args(tmp.path(), "cmp"));
    assert_ok(&out);
    let dir = tmp.path().join("cmp");
    let first = rows(&dir);

    let mut want = vec![
        "zero-shot".to_string(),
        "independent 1 (seed 11)".into(),
        "independent 2 (seed 12)".into(),
        "Model Stock (periodic)".into(),
        "Model Stock (post-hoc)".into(),
        "uniform soup".into(),
        "greedy soup".into(),
    ];
    let best = row(&first, "greedy soup")["greedy"]["soup"]["order"][0]
        .as_u64()
        .expect("greedy order");
    let best_label = format!("independent {} (seed {})", best + 1, 11 + best);
    for a in 0..=10 {
        want.push(format!("WiSE-FT α={:.1} ({best_label})", a as f64 / 10.0));
    }
    for a in 0..=10 {
        want.push(format!("Model Stock + WiSE-FT α={:.1}", a as f64 / 10.0));
    }
    let got: Vec<&str> = first
        .iter()
        .map(|r| r["method"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(got, want);

    // Real evaluations: every set with its images counted, the held-out split included (4 per
    // class, 10 classes), and the sweeps' ends equal to the models they interpolate.
    for r in &first {
        for set in clipstock_config::EVAL_SETS {
            assert!(
                r["results"][set]["count"].as_u64().unwrap_or(0) > 0,
                "{} {set}",
                r["method"]
            );
        }
        assert_eq!(
            r["results"]["imagenet_holdout"]["count"], 40,
            "{}",
            r["method"]
        );
    }
    let same = |a: &str, b: &str| {
        for set in ["imagenet", "imagenet_r", "objectnet", "imagenet_holdout"] {
            assert_eq!(
                top1(row(&first, a), set),
                top1(row(&first, b), set),
                "{a} vs {b}: {set}"
            );
        }
    };
    same(&format!("WiSE-FT α=0.0 ({best_label})"), "zero-shot");
    same(&format!("WiSE-FT α=1.0 ({best_label})"), &best_label);
    same("Model Stock + WiSE-FT α=1.0", "Model Stock (periodic)");
    same("Model Stock + WiSE-FT α=0.0", "zero-shot");
    assert_eq!(row(&first, "zero-shot")["models"], 0);
    assert_eq!(row(&first, "greedy soup")["models"], 2);

    // The table and the figure.
    let md = std::fs::read_to_string(dir.join("compare/results.md")).expect("results.md");
    for col in [
        "ImageNet",
        "IN-V2",
        "avg shifts",
        "held-out",
        "models",
        "greedy soup",
    ] {
        assert!(md.contains(col), "{col} missing:\n{md}");
    }
    let png = std::fs::read(dir.join("compare/id_vs_ood.png")).expect("png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    let svg = std::fs::read_to_string(dir.join("compare/id_vs_ood.svg")).expect("svg");
    assert_eq!(
        svg.matches("<title>").count(),
        first.len(),
        "one marker per method"
    );
    assert!(dir.join("curves.png").is_file() && dir.join("curves.svg").is_file());

    // A compare killed after its first rows continues with the others and keeps those: a
    // marker put into a kept row survives the second call.
    let rows_path = dir.join("compare/rows.json");
    let mut kept: Vec<Value> = first[..5].to_vec();
    kept[0]["models"] = Value::from(99);
    std::fs::write(&rows_path, serde_json::to_string(&kept).expect("json")).expect("write");
    assert_ok(&clipstock(&compare_args(tmp.path(), "cmp")));
    let resumed = rows(&dir);
    assert_eq!(resumed.len(), first.len());
    assert_eq!(resumed[0]["models"], 99, "a finished row is not redone");
    for (a, b) in resumed.iter().zip(&first).skip(1) {
        assert_eq!(a["method"], b["method"]);
        for set in ["imagenet", "imagenet_v2", "objectnet", "imagenet_holdout"] {
            assert_eq!(
                top1(a, set),
                top1(b, set),
                "{}: scored again, the same",
                a["method"]
            );
        }
    }

    // `clipstock soup` on the same exports and held-out split makes the same choice.
    let models: Vec<String> = (1..=2)
        .map(|i| {
            dir.join(format!("independent_{i}_final.safetensors"))
                .display()
                .to_string()
        })
        .collect();
    let greedy_out = tmp.path().join("greedy.safetensors");
    let mut args = vec!["soup".to_string(), "--greedy".into(), "--holdout".into()];
    args.push(dir.display().to_string());
    args.push("--out".into());
    args.push(greedy_out.display().to_string());
    args.push("--models".into());
    args.extend(models.iter().cloned());
    let out = clipstock(&args);
    assert_ok(&out);
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("greedy.json")).expect("soup report"),
    )
    .expect("json");
    let compared = &row(&first, "greedy soup")["greedy"];
    assert_eq!(report["holdout_top1"], compared["holdout_top1"]);
    assert_eq!(
        report["greedy"]["ingredients"],
        compared["soup"]["ingredients"]
    );
    assert_eq!(report["method"], "greedy_soup");
    let uniform_out = tmp.path().join("uniform.safetensors");
    let mut args = vec![
        "soup".to_string(),
        "--out".into(),
        uniform_out.display().to_string(),
    ];
    args.push("--models".into());
    args.extend(models.iter().cloned());
    assert_ok(&clipstock(&args));
    let merge_out = tmp.path().join("uniform_by_merge.safetensors");
    let mut args = vec!["merge".to_string(), "--method".into(), "uniform".into()];
    args.extend([
        "--out".into(),
        merge_out.display().to_string(),
        "--models".into(),
    ]);
    args.extend(models.iter().cloned());
    assert_ok(&clipstock(&args));
    assert!(
        std::fs::read(&uniform_out).expect("soup") == std::fs::read(&merge_out).expect("merge"),
        "the uniform soup is `merge --method uniform`"
    );
    // A folder of class folders as the held-out images, with its label space.
    let folder_out = tmp.path().join("folder.safetensors");
    let mut args = vec!["soup".to_string(), "--greedy".into(), "--holdout".into()];
    args.push(tmp.path().join("data/imagenet/val").display().to_string());
    args.extend(["--class-dir".into(), "data/quickstart".into()]);
    args.extend([
        "--out".into(),
        folder_out.display().to_string(),
        "--models".into(),
    ]);
    args.extend(models.iter().cloned());
    assert_ok(&clipstock(&args));
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("folder.json")).expect("soup report"),
    )
    .expect("json");
    assert_eq!(report["holdout_top1"].as_array().map(Vec::len), Some(2));
    assert!(folder_out.is_file());
    let mut args = vec![
        "soup".to_string(),
        "--greedy".into(),
        "--out".into(),
        "x.safetensors".into(),
    ];
    args.push("--models".into());
    args.extend(models.iter().cloned());
    assert_eq!(
        clipstock(&args).status.code(),
        Some(2),
        "--greedy needs --holdout"
    );

    // Sentinel: turn every held-out image into a blank one and score again. Greedy's input
    // (held-out accuracy) moves; nothing scored on the other sets does.
    let list = std::fs::read_to_string(dir.join("holdout.txt")).expect("holdout.txt");
    let train_dir = tmp.path().join("data/imagenet/train");
    let blank = image::RgbImage::from_pixel(28, 28, image::Rgb([128, 128, 128]));
    let mut n = 0;
    for rel in list.lines().filter(|l| !l.starts_with('#')) {
        let p = train_dir.join(rel);
        assert!(p.is_file(), "{}", p.display());
        blank
            .save_with_format(&p, image::ImageFormat::Png)
            .expect("overwrite");
        n += 1;
    }
    assert_eq!(n, 40);
    std::fs::remove_file(dir.join("compare/rows.json")).expect("forget the rows");
    let out = clipstock(&compare_args(tmp.path(), "cmp"));
    assert_ok(&out);
    let second = rows(&dir);
    let input = |rows: &[Value]| row(rows, "greedy soup")["greedy"]["holdout_top1"].clone();
    assert_ne!(
        input(&first),
        input(&second),
        "greedy's input is the held-out accuracy"
    );
    for m in [
        "zero-shot",
        "independent 1 (seed 11)",
        "independent 2 (seed 12)",
        "uniform soup",
    ] {
        assert_eq!(
            top1(row(&first, m), "imagenet"),
            top1(row(&second, m), "imagenet"),
            "{m}: the held-out images are not ImageNet val"
        );
        assert_ne!(
            top1(row(&first, m), "imagenet_holdout"),
            top1(row(&second, m), "imagenet_holdout"),
            "{m}"
        );
    }
}

#[test]
fn compare_refuses_a_run_without_baselines_or_held_out_split() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut args = compare_args(tmp.path(), "nobase");
    args.extend(["--set".into(), "baselines.independent_seeds=[11]".into()]);
    let out = clipstock(&args);
    common::assert_fails_with(&out, &["baselines.independent_seeds", "at least two"]);
    assert!(!tmp.path().join("nobase").exists(), "nothing trained");
}
