//! Results of an evaluation: per-set accuracies, the OOD mean, JSON and the paper's table.

use clipstock_data::layouts::SetName;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Accuracy of one model on one set.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
///
/// Serialized as the results JSON of [`EvalResults::to_json`] (one object per set under its
/// key, plus the OOD mean) and read back from it without loss, so a run directory's records
/// and `eval.json` are the same type the evaluator returns.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResults {
    pub sets: Vec<SetResult>,
}

/// One set's entry in the results JSON.
#[derive(Serialize, Deserialize)]
struct SetEntry {
    top1: f64,
    top5: f64,
    correct1: usize,
    correct5: usize,
    count: usize,
    /// Redundant with `skipped_files` (kept: scripts read the count).
    skipped: usize,
    skipped_files: Vec<SkippedFile>,
    num_labels: usize,
    seconds: f64,
    images_per_sec: f64,
}

#[derive(Serialize, Deserialize)]
struct SkippedFile {
    path: String,
    reason: String,
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
        // Summed in the table's order, not the evaluation's: the same results read back from
        // JSON (whose keys are sorted) give the same mean to the last bit.
        let shifts: Vec<f64> = SetName::ALL
            .iter()
            .filter(|s| s.is_shift())
            .filter_map(|s| self.get(*s).map(|r| r.top1))
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
            let entry = SetEntry {
                top1: r.top1,
                top5: r.top5,
                correct1: r.correct1,
                correct5: r.correct5,
                count: r.count,
                skipped: r.skipped.len(),
                skipped_files: r
                    .skipped
                    .iter()
                    .map(|(path, reason)| SkippedFile {
                        path: path.clone(),
                        reason: reason.clone(),
                    })
                    .collect(),
                num_labels: r.num_labels,
                seconds: r.seconds,
                images_per_sec: r.images_per_sec,
            };
            // A struct of numbers and strings always converts.
            map.insert(
                r.set.key().to_string(),
                serde_json::to_value(entry).unwrap_or(Value::Null),
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

    /// Reads the results JSON back (the derived `ood_*` fields are recomputed, not read).
    pub fn from_json(v: &Value) -> Result<Self, serde_json::Error> {
        use serde::de::Error;
        let map = v
            .as_object()
            .ok_or_else(|| serde_json::Error::custom("results: expected an object"))?;
        let mut sets = Vec::new();
        for name in SetName::RESULTS {
            let Some(entry) = map.get(name.key()) else {
                continue;
            };
            let e: SetEntry = serde_json::from_value(entry.clone())
                .map_err(|err| serde_json::Error::custom(format!("{}: {err}", name.key())))?;
            sets.push(SetResult {
                set: name,
                top1: e.top1,
                top5: e.top5,
                correct1: e.correct1,
                correct5: e.correct5,
                count: e.count,
                skipped: e
                    .skipped_files
                    .into_iter()
                    .map(|f| (f.path, f.reason))
                    .collect(),
                num_labels: e.num_labels,
                seconds: e.seconds,
                images_per_sec: e.images_per_sec,
            });
        }
        Ok(EvalResults { sets })
    }
}

impl Serialize for EvalResults {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for EvalResults {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        EvalResults::from_json(&v).map_err(serde::de::Error::custom)
    }
}

/// The data row that [`markdown_table`] gives `results` when it is the only row.
pub fn markdown_row(label: &str, results: &EvalResults) -> String {
    markdown_table(&[(label.to_string(), results)])
        .lines()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

/// A Markdown table in the paper's column order (ImageNet, V2, Sketch, R, ObjectNet, A, then
/// the OOD mean, then the held-out split when a row has it); one row per `(label, results)`.
/// Sets no row has are left out; a row without a set shows `–`.
pub fn markdown_table(rows: &[(String, &EvalResults)]) -> String {
    let present = |s: &SetName| rows.iter().any(|(_, r)| r.get(*s).is_some());
    let cols: Vec<SetName> = SetName::ALL.into_iter().filter(present).collect();
    let holdout = present(&SetName::ImageNetHoldout);
    let any_shift = cols.iter().any(|s| s.is_shift());
    let mut out = String::from("| model |");
    for c in &cols {
        out.push_str(&format!(" {} |", c.title()));
    }
    if any_shift {
        out.push_str(" avg shifts |");
    }
    if holdout {
        out.push_str(&format!(" {} |", SetName::ImageNetHoldout.title()));
    }
    out.push_str("\n|---|");
    let n = cols.len() + usize::from(any_shift) + usize::from(holdout);
    out.push_str(&"---|".repeat(n));
    out.push('\n');
    let cell = |r: &EvalResults, c: SetName| match r.get(c) {
        Some(s) => format!(" {:.2} |", s.top1),
        None => " – |".to_string(),
    };
    for (label, r) in rows {
        out.push_str(&format!("| {label} |"));
        for c in &cols {
            out.push_str(&cell(r, *c));
        }
        if any_shift {
            match r.ood_mean() {
                Some((m, 5)) => out.push_str(&format!(" {m:.2} |")),
                Some((m, n)) => out.push_str(&format!(" {m:.2} ({n}/5) |")),
                None => out.push_str(" – |"),
            }
        }
        if holdout {
            out.push_str(&cell(r, SetName::ImageNetHoldout));
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
    fn results_json_round_trips_without_loss() {
        let mut a = result(SetName::ImageNetA, 12.5);
        a.skipped = vec![("x/1.jpg".into(), "truncated".into())];
        let r = EvalResults::new(vec![result(SetName::ImageNet, 80.0), a]);
        let text = serde_json::to_string(&r).expect("serialize");
        let back: EvalResults = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, r);
        assert_eq!(serde_json::to_value(&back).expect("value"), r.to_json());
        assert_eq!(
            markdown_row("m", &r),
            markdown_table(&[("m".into(), &r)])
                .lines()
                .nth(2)
                .expect("row")
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
