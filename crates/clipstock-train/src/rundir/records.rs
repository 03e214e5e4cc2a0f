//! The typed records of a run directory: the lines of `metrics.jsonl` and the evaluations kept
//! in every checkpoint's state. One type per record, written by one writer
//! ([`super::RunDir::record`]) and read back by [`super::RunReader`] without loss.

use clipstock_eval::EvalResults;
use clipstock_merge::MergeSummary;
use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Step(StepRecord),
    Eval(EvalRecord),
    /// Boxed: far larger than the other records.
    Merge(Box<MergeRecord>),
    Resume(ResumeRecord),
}

/// A logged optimizer step (every `run.log_every_steps` and at the end of each epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based.
    pub epoch: u64,
    /// Steps done in the epoch, 1-based.
    pub step: u64,
    pub global_step: u64,
    pub lr: f64,
    /// Per run; NaN (written `null`) for a run whose step had no readable image.
    #[serde(with = "nan_as_null")]
    pub loss: Vec<f64>,
    /// Per run; NaN for an f16 step skipped on overflow.
    #[serde(with = "nan_as_null")]
    pub grad_norm: Vec<f64>,
    pub images_per_sec: f64,
    /// f16 only: each run's loss scale and skipped steps so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<Vec<u64>>,
}

/// One model's evaluation: `metrics.jsonl` (with `kind`) and the checkpoint state (without).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// The epoch whose end it scored (0: before training).
    pub epoch: u64,
    /// `zero-shot`, `run N (seed S)` or `merged`.
    pub model: String,
    pub results: EvalResults,
}

/// A merge of the runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// 1-based epoch the merge happened in.
    pub epoch: u64,
    pub global_step: u64,
    /// Merges so far, this one included.
    pub merge: u64,
    /// Mean ratio over merged tensors; `None` for a method without a ratio (uniform).
    pub mean_t: Option<f64>,
    pub summary: MergeSummary,
}

/// A `--resume`: where training continued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeRecord {
    /// 0-based epoch in progress.
    pub epoch: u64,
    /// Steps already done in it.
    pub step: u64,
    pub global_step: u64,
}

impl Record {
    /// The `metrics.jsonl` line (keys sorted, as every earlier version wrote them).
    pub fn to_line(&self) -> String {
        // Through `Value`, whose map is sorted; the records hold only numbers, strings,
        // arrays and maps, which always convert.
        let mut line = serde_json::to_value(self)
            .map(|v| v.to_string())
            .unwrap_or_else(|e| format!("{{\"kind\":\"unwritable\",\"error\":\"{e}\"}}"));
        line.push('\n');
        line
    }
}

/// JSON has no NaN: serde_json writes it as `null`; this reads `null` back as NaN, so a
/// record survives a round trip.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        let opts: Vec<Option<f64>> = v.iter().map(|x| x.is_finite().then_some(*x)).collect();
        opts.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let opts = Vec::<Option<f64>>::deserialize(d)?;
        Ok(opts.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clipstock_data::layouts::SetName;
    use clipstock_eval::SetResult;
    use clipstock_merge::{MergeOptions, Method};

    fn same(a: &Record, b: &Record) -> bool {
        // NaN != NaN: compare the lines instead, which also checks the written form.
        a.to_line() == b.to_line()
    }

    fn results() -> EvalResults {
        EvalResults::new(vec![SetResult {
            set: SetName::ImageNetR,
            top1: 51.5,
            top5: 90.0,
            correct1: 103,
            correct5: 180,
            count: 200,
            skipped: vec![("a/b.jpg".into(), "not an image".into())],
            num_labels: 200,
            seconds: 0.25,
            images_per_sec: 800.0,
        }])
    }

    fn summary() -> MergeSummary {
        MergeSummary {
            method: "model_stock".into(),
            n_models: 2,
            anchor: None,
            models: vec!["run 1".into(), "run 2".into()],
            output: None,
            options: MergeOptions::new(Method::ModelStock { clamp_t: false }),
            tensors: 4,
            params: 1000,
            merged: 4,
            averaged: 0,
            anchor_kept: 0,
            copied: 0,
            ratio_groups: 4,
            t_min: Some(0.5),
            t_mean: Some(0.75),
            t_max: Some(1.0),
            cos_le_zero: 0,
            zero_norm: 0,
            clamped: 0,
        }
    }

    #[test]
    fn every_record_round_trips_through_its_line() {
        let records = [
            Record::Step(StepRecord {
                epoch: 1,
                step: 10,
                global_step: 10,
                lr: 3e-4,
                loss: vec![1.25, f64::NAN],
                grad_norm: vec![0.5, 2.0],
                images_per_sec: 100.0,
                loss_scale: Some(vec![65536.0, 32768.0]),
                skipped_steps: Some(vec![0, 1]),
            }),
            Record::Step(StepRecord {
                epoch: 2,
                step: 1,
                global_step: 11,
                lr: 1e-5,
                loss: vec![0.5],
                grad_norm: vec![f64::NAN],
                images_per_sec: 1.0,
                loss_scale: None,
                skipped_steps: None,
            }),
            Record::Eval(EvalRecord {
                epoch: 3,
                model: "run 1 (seed 1)".into(),
                results: results(),
            }),
            Record::Merge(Box::new(MergeRecord {
                epoch: 1,
                global_step: 40,
                merge: 1,
                mean_t: Some(0.75),
                summary: summary(),
            })),
            Record::Resume(ResumeRecord {
                epoch: 1,
                step: 3,
                global_step: 13,
            }),
        ];
        for r in &records {
            let line = r.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            let back: Record = serde_json::from_str(&line).expect("parse");
            assert!(same(&back, r), "{line}");
        }
        let Record::Eval(e) = &records[2] else {
            unreachable!()
        };
        let back: Record = serde_json::from_str(&records[2].to_line()).expect("parse");
        assert_eq!(back, Record::Eval(e.clone()));
    }

    #[test]
    fn lines_keep_the_keys_earlier_versions_wrote() {
        let step = Record::Step(StepRecord {
            epoch: 1,
            step: 1,
            global_step: 1,
            lr: 0.1,
            loss: vec![1.0],
            grad_norm: vec![1.0],
            images_per_sec: 1.0,
            loss_scale: None,
            skipped_steps: None,
        });
        assert_eq!(
            step.to_line(),
            "{\"epoch\":1,\"global_step\":1,\"grad_norm\":[1.0],\"images_per_sec\":1.0,\
             \"kind\":\"step\",\"loss\":[1.0],\"lr\":0.1,\"step\":1}\n"
        );
        let resume = Record::Resume(ResumeRecord {
            epoch: 0,
            step: 2,
            global_step: 2,
        });
        assert_eq!(
            resume.to_line(),
            "{\"epoch\":0,\"global_step\":2,\"kind\":\"resume\",\"step\":2}\n"
        );
    }
}
