//! Greedy soup (Wortsman et al., 2022), with the evaluation left to the caller.
//!
//! Follows model-soups' code: models are visited in descending order of their individual
//! held-out scores; the soup starts as the best model alone (its individual score is the score
//! to beat, it is not re-evaluated); each further model is kept if the uniform soup with it
//! scores strictly higher than the best so far. (The paper's pseudo-code says "≥"; the released
//! code uses ">", which we follow.)

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::MergeError;
use crate::options::{MergeOptions, Method};
use crate::report::MergeReport;

/// A soup to evaluate: the current ingredients plus the model being tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreedyCandidate {
    /// Indices (into the caller's model list) of the candidate soup's ingredients, in the order
    /// they were added; the last one is `adding`.
    pub ingredients: Vec<usize>,
    /// The model being tried.
    pub adding: usize,
}

/// One evaluated candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GreedyStep {
    pub adding: usize,
    pub score: f64,
    pub accepted: bool,
}

/// The outcome of a greedy soup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GreedySoup {
    /// All models in the order they were considered (descending individual score).
    pub order: Vec<usize>,
    /// The soup's ingredients, in the order they were added.
    pub ingredients: Vec<usize>,
    /// Held-out score of the final soup.
    pub score: f64,
    pub steps: Vec<GreedyStep>,
}

/// Runs greedy soup over models with individual held-out `scores`. `evaluate` receives each
/// candidate and returns its held-out score (accuracy: higher is better); building the
/// candidate's weights (e.g. with [`crate::merge_tensors`] and [`Method::UniformSoup`]) is up to
/// it. Ties in `scores` keep the input order.
pub fn greedy_soup<E: From<MergeError>>(
    scores: &[f64],
    mut evaluate: impl FnMut(&GreedyCandidate) -> Result<f64, E>,
) -> Result<GreedySoup, E> {
    if scores.is_empty() {
        return Err(MergeError::TooFewModels {
            method: "greedy_soup",
            need: 1,
            got: 0,
        }
        .into());
    }
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(MergeError::InvalidOption(format!(
            "greedy soup: the score of model {i} is {}",
            scores[i]
        ))
        .into());
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Stable sort on the descending score.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));

    let mut ingredients = vec![order[0]];
    let mut best = scores[order[0]];
    let mut steps = Vec::with_capacity(order.len() - 1);
    for &m in &order[1..] {
        let mut candidate = ingredients.clone();
        candidate.push(m);
        let cand = GreedyCandidate {
            ingredients: candidate,
            adding: m,
        };
        let score = evaluate(&cand)?;
        if !score.is_finite() {
            return Err(MergeError::InvalidOption(format!(
                "greedy soup: the evaluator returned {score} for the soup {:?}",
                cand.ingredients
            ))
            .into());
        }
        let accepted = score > best;
        if accepted {
            best = score;
            ingredients = cand.ingredients;
        }
        steps.push(GreedyStep {
            adding: m,
            score,
            accepted,
        });
    }
    Ok(GreedySoup {
        order,
        ingredients,
        score: best,
        steps,
    })
}

/// Greedy soup over safetensors files: each candidate is written as a uniform soup to
/// `candidate_path` and handed to `evaluate`; the final soup is written to `output`.
/// `opts` supplies everything but the method (forced to [`Method::UniformSoup`]); the
/// candidate file is removed at the end.
pub fn greedy_soup_files<P: AsRef<Path>, E: From<MergeError>>(
    models: &[P],
    scores: &[f64],
    candidate_path: &Path,
    output: &Path,
    opts: &MergeOptions,
    mut evaluate: impl FnMut(&Path, &GreedyCandidate) -> Result<f64, E>,
) -> Result<(GreedySoup, MergeReport), E> {
    if models.len() != scores.len() {
        return Err(MergeError::InvalidOption(format!(
            "greedy soup: {} models but {} scores",
            models.len(),
            scores.len()
        ))
        .into());
    }
    let mut opts = opts.clone();
    opts.method = Method::UniformSoup;
    let paths: Vec<PathBuf> = models.iter().map(|p| p.as_ref().to_path_buf()).collect();
    let pick = |idx: &[usize]| -> Vec<PathBuf> { idx.iter().map(|&i| paths[i].clone()).collect() };

    let result = greedy_soup(scores, |cand: &GreedyCandidate| -> Result<f64, E> {
        crate::merge_files(None, &pick(&cand.ingredients), candidate_path, &opts)?;
        evaluate(candidate_path, cand)
    });
    let _ = std::fs::remove_file(candidate_path);
    let soup = result?;
    let report = crate::merge_files(None, &pick(&soup.ingredients), output, &opts)?;
    Ok((soup, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// model-soups' `main.py` (`--greedy-soup`): `sorted_models` by descending held-out
    /// accuracy, the soup starts as the first with `best_val_acc_so_far` its individual score,
    /// and each next model is added `if held_out_val_accuracy > best_val_acc_so_far`. Worked
    /// through by hand below.
    #[test]
    fn follows_the_reference_procedure() {
        // Model 2 is best alone, then 0, 3, 1. Pretend a soup scores the mean of its members'
        // scores plus a bonus for including model 3.
        let scores = [0.70, 0.50, 0.80, 0.60];
        let mut seen = Vec::new();
        let soup = greedy_soup::<MergeError>(&scores, |c| {
            seen.push(c.ingredients.clone());
            let mean =
                c.ingredients.iter().map(|&i| scores[i]).sum::<f64>() / c.ingredients.len() as f64;
            Ok(mean + if c.ingredients.contains(&3) { 0.2 } else { 0.0 })
        })
        .expect("runs");
        assert_eq!(soup.order, vec![2, 0, 3, 1]);
        // [2,0] scores 0.75 < 0.80: rejected; [2,3] scores 0.90: kept; [2,3,1] 0.83: rejected.
        assert_eq!(seen, vec![vec![2, 0], vec![2, 3], vec![2, 3, 1]]);
        assert_eq!(soup.ingredients, vec![2, 3]);
        assert!((soup.score - 0.9).abs() < 1e-12);
        assert_eq!(
            soup.steps.iter().map(|s| s.accepted).collect::<Vec<_>>(),
            vec![false, true, false]
        );
    }

    #[test]
    fn ties_are_rejected_and_errors_propagate() {
        let soup = greedy_soup::<MergeError>(&[0.5, 0.5], |_| Ok(0.5)).expect("runs");
        assert_eq!(soup.ingredients, vec![0]);
        let err = greedy_soup::<MergeError>(&[0.5, 0.4], |_| {
            Err(MergeError::InvalidOption("evaluator failed".into()))
        })
        .expect_err("propagates");
        assert!(err.to_string().contains("evaluator failed"));
        assert!(greedy_soup::<MergeError>(&[], |_| Ok(0.0)).is_err());
        assert!(greedy_soup::<MergeError>(&[f64::NAN], |_| Ok(0.0)).is_err());
    }
}
