//! Learning-rate schedules, per optimizer step.

/// model-soups' `cosine_lr`: linear warm-up `base·(step+1)/warmup` for the first `warmup`
/// steps, then `0.5·(1 + cos(π·e/es))·base` with `e = step − warmup`, `es = total − warmup`.
pub fn cosine_lr(step: u64, base: f64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let e = (step - warmup) as f64;
    let es = total.saturating_sub(warmup).max(1) as f64;
    0.5 * (1.0 + (std::f64::consts::PI * e / es).cos()) * base
}

/// Warm-up then constant.
pub fn constant_lr(step: u64, base: f64, warmup: u64) -> f64 {
    if step < warmup {
        base * (step + 1) as f64 / warmup as f64
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_matches_model_soups() {
        // Warm-up reaches the base rate on its last step.
        assert!((cosine_lr(0, 1.0, 4, 10) - 0.25).abs() < 1e-12);
        assert!((cosine_lr(3, 1.0, 4, 10) - 1.0).abs() < 1e-12);
        // Then the cosine starts at the base rate and ends near zero.
        assert!((cosine_lr(4, 1.0, 4, 10) - 1.0).abs() < 1e-12);
        assert!((cosine_lr(7, 1.0, 4, 10) - 0.5).abs() < 1e-12);
        assert!(cosine_lr(9, 1.0, 4, 10) < 0.07);
        // No warm-up.
        assert!((cosine_lr(0, 3e-5, 0, 100) - 3e-5).abs() < 1e-18);
    }

    #[test]
    fn constant_after_warmup() {
        assert!((constant_lr(1, 2.0, 4) - 1.0).abs() < 1e-12);
        assert_eq!(constant_lr(10, 2.0, 4), 2.0);
    }
}
