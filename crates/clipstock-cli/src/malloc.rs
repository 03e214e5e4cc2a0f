//! glibc's allocator settings for the process (a no-op elsewhere).
//!
//! burn's CPU backend allocates a fresh buffer for most operation outputs, and a ViT train step
//! frees and reallocates a few GiB of them. With glibc's defaults the blocks above the (dynamic)
//! mmap threshold come from `mmap` and go back on `free`, and the top of the heap is trimmed as
//! soon as it exceeds the trim threshold, so every step page-faults and zeroes that memory again:
//! `perf` put `clear_page_erms` plus the fault path at ~15% of a batch-32 step. Keeping blocks up
//! to 32 MiB (glibc's own ceiling for its dynamic threshold; a batch-32 ViT-B/32 step's largest
//! activations are ~20 MB, larger batches' biggest blocks still get their own mmap) in the heap
//! and not trimming it lets the next step reuse them. Measured in docs/PERFORMANCE.md: ~19% faster
//! batch-32 steps, unchanged peak RSS (freed blocks are reused, not added to).

/// Blocks up to this size come from the heap, not from their own `mmap`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Applies the settings unless the user set glibc's own variables for them, which win: a user
/// tuning `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` gets exactly what they asked for.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = [
            "MALLOC_MMAP_THRESHOLD_",
            "MALLOC_TRIM_THRESHOLD_",
            "GLIBC_TUNABLES",
        ]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
        if user_set {
            return;
        }
        // SAFETY: `mallopt` only changes allocator parameters; glibc takes its own lock, and it
        // is called at the start of `main`, before any allocation-heavy work or other thread.
        #[allow(unsafe_code)]
        unsafe {
            // Both return 0 only for an invalid parameter, which these constants are not; a
            // failure would leave glibc's defaults, which are correct, only slower.
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
    }
}
