//! Results of an evaluation: per-set accuracies, the OOD mean, JSON and the paper's table.

use clipstock_data::layouts::SetName;
use serde::Serialize;
use serde_json::{Map, Value, json};

/// Accuracy of one model on one set.
#[derive(Debug, Clone, Serialize)]
pub struct SetResult {
    pub set: SetName,
    /// Top-1 accuracy in percent.
    pub top1: f64,
    pub top5: f64,
    pub correct1: usize,
    pub correct5: usize,
    /// Images scored (unreadable images are not scored; they are listed in `skipped`).
    pub count: usize,
    /// `(path, reason)` of every image that could not be read.
    pub skipped: Vec<(String, String)>,
    /// Labels the set is scored over (1000, 200 for R/A, 113 for ObjectNet).
    pub num_labels: usize,
    pub seconds: f64,
    pub images_per_sec: f64,
}

/// One image's outcome, for `--predictions` (one JSON object per line).
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub set: String,
    /// Path relative to the set's folder.
    pub path: String,
    pub label: usize,
    pub prediction: usize,
    pub top5: Vec<usize>,
}

/// Results of one model on several sets.
#[derive(Debug, Clone)]
pub struct EvalResults {
    pub sets: Vec<SetResult>,
}

impl EvalResults {
    pub fn new(sets: Vec<SetResult>) -> Self {
        EvalResults { sets }
    }

    pub fn get(&self, name: SetName) -> Option<&SetResult> {
        self.sets.iter().find(|r| r.set == name)
    }

    /// The plain mean of the shift sets present (SPEC.md §5: unweighted over the five shifts)
    /// and how many were present; `None` when no shift set was evaluated.
    pub fn ood_mean(&self) -> Option<(f64, usize)> {
        let shifts: Vec<f64> = self
            .sets
            .iter()
            .filter(|r| r.set.is_shift())
            .map(|r| r.top1)
            .collect();
        if shifts.is_empty() {
            None
        } else {
            Some((
                shifts.iter().sum::<f64>() / shifts.len() as f64,
                shifts.len(),
            ))
        }
    }

    /// The results JSON: one object per set under its key (`imagenet`, `imagenet_v2`, …) and
    /// `ood_mean`, with `ood_sets` and a note when fewer than five shifts were evaluated.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        for r in &self.sets {
            map.insert(
                r.set.key().to_string(),
                json!({
                    "top1": r.top1,
                    "top5": r.top5,
                    "correct1": r.correct1,
                    "correct5": r.correct5,
                    "count": r.count,
                    "skipped": r.skipped.len(),
                    "skipped_files": r.skipped.iter().map(|(p, why)| json!({"path": p, "reason": why})).collect::<Vec<_>>(),
                    "num_labels": r.num_labels,
                    "seconds": r.seconds,
                    "images_per_sec": r.images_per_sec,
                }),
            );
        }
        match self.ood_mean() {
            Some((mean, n)) => {
                map.insert("ood_mean".into(), json!(mean));
                map.insert("ood_sets".into(), json!(n));
                if n < 5 {
                    map.insert(
                        "ood_note".into(),
                        json!(format!(
                            "mean over {n} of the 5 distribution shifts; not comparable to the paper's average"
                        )),
                    );
                }
            }
            None => {
                map.insert("ood_mean".into(), Value::Null);
                map.insert("ood_sets".into(), json!(0));
            }
        }
        Value::Object(map)
    }
}

/// A Markdown table in the paper's column order (ImageNet, V2, Sketch, R, ObjectNet, A, then
/// the OOD mean); one row per `(label, results)`. Sets no row has are left out; a row without a
/// set shows `–`.
pub fn markdown_table(rows: &[(String, &EvalResults)]) -> String {
    let cols: Vec<SetName> = SetName::ALL
        .into_iter()
        .filter(|s| rows.iter().any(|(_, r)| r.get(*s).is_some()))
        .collect();
    let any_shift = cols.iter().any(|s| s.is_shift());
    let mut out = String::from("| model |");
    for c in &cols {
        out.push_str(&format!(" {} |", c.title()));
    }
    if any_shift {
        out.push_str(" avg shifts |");
    }
    out.push_str("\n|---|");
    for _ in &cols {
        out.push_str("---|");
    }
    if any_shift {
        out.push_str("---|");
    }
    out.push('\n');
    for (label, r) in rows {
        out.push_str(&format!("| {label} |"));
        for c in &cols {
            match r.get(*c) {
                Some(s) => out.push_str(&format!(" {:.2} |", s.top1)),
                None => out.push_str(" – |"),
            }
        }
        if any_shift {
            match r.ood_mean() {
                Some((m, 5)) => out.push_str(&format!(" {m:.2} |")),
                Some((m, n)) => out.push_str(&format!(" {m:.2} ({n}/5) |")),
                None => out.push_str(" – |"),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(set: SetName, top1: f64) -> SetResult {
        SetResult {
            set,
            top1,
            top5: top1,
            correct1: 0,
            correct5: 0,
            count: 10,
            skipped: vec![],
            num_labels: 1000,
            seconds: 1.0,
            images_per_sec: 10.0,
        }
    }

    #[test]
    fn ood_mean_is_the_plain_mean_of_the_shifts_present() {
        let r = EvalResults::new(vec![
            result(SetName::ImageNet, 80.0),
            result(SetName::ImageNetV2, 70.0),
            result(SetName::ImageNetR, 60.0),
        ]);
        let (m, n) = r.ood_mean().expect("two shifts");
        assert_eq!(n, 2);
        assert!((m - 65.0).abs() < 1e-12);
        let j = r.to_json();
        assert_eq!(j["ood_sets"], 2);
        assert!(
            j["ood_note"]
                .as_str()
                .is_some_and(|s| s.contains("2 of the 5"))
        );
        assert!(
            EvalResults::new(vec![result(SetName::ImageNet, 1.0)])
                .ood_mean()
                .is_none()
        );
    }

    #[test]
    fn table_uses_the_paper_column_order() {
        let all: Vec<SetResult> = SetName::ALL
            .into_iter()
            .enumerate()
            .map(|(i, s)| result(s, 10.0 * (i + 1) as f64))
            .collect();
        let r = EvalResults::new(all);
        let t = markdown_table(&[("merged".into(), &r)]);
        let header = t.lines().next().expect("header");
        let order: Vec<&str> = SetName::ALL.iter().map(|s| s.title()).collect();
        let mut pos = 0;
        for title in order {
            let p = header[pos..].find(title).expect("column present") + pos;
            pos = p;
        }
        // Mean of the shifts (columns 2..6 hold 20, 30, 40, 50, 60).
        assert!(t.contains("| 40.00 |\n"), "{t}");
    }
}
