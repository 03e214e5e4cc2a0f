//! Run-time choice between a kernel compiled for the baseline target (SSE2 on x86_64) and the
//! same source compiled with AVX2 enabled.
//!
//! The workspace builds for the baseline CPU, where the f64 arithmetic of the statistics and
//! write passes keeps a merge compute-bound on few cores; AVX2 doubles the f64 lanes per
//! instruction. Only the instruction selection differs: every kernel here does lane-wise IEEE
//! operations in a fixed order and Rust never contracts a multiply and an add into an FMA, so
//! both builds produce bit-identical results.

/// Whether the running CPU supports AVX2 (cached by std after the first query).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// `dispatch!(avx2_call, fallback_call)`: evaluates the call of a `#[target_feature(enable =
/// "avx2")]` function when the CPU has AVX2, the fallback otherwise (and on other targets).
/// Both calls must have the same type.
macro_rules! dispatch {
    ($avx2:expr, $fallback:expr $(,)?) => {{
        #[cfg(target_arch = "x86_64")]
        if $crate::simd::has_avx2() {
            // SAFETY: a `#[target_feature(enable = "avx2")]` function may be called when the
            // CPU supports AVX2, which was checked just above.
            #[allow(unsafe_code)]
            let r = unsafe { $avx2 };
            r
        } else {
            $fallback
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $fallback
        }
    }};
}
pub(crate) use dispatch;
