//! glibc's allocator settings for the process (a no-op elsewhere).
//!
//! burn's CPU backend allocates a fresh buffer for most operation outputs, and a ViT train step
//! frees and reallocates a few GiB of them. With glibc's defaults the blocks above the (dynamic)
//! mmap threshold come from `mmap` and go back on `free`, and the top of the heap is trimmed as
//! soon as it exceeds the trim threshold, so every step page-faults and zeroes that memory again:
//! `perf` put `clear_page_erms` plus the fault path at ~15% of a batch-32 bench's samples.
//! Keeping blocks up to 32 MiB (glibc's own ceiling for its dynamic threshold; a batch-32
//! ViT-B/32 step's largest activations are ~20 MB, larger batches' biggest blocks still get their
//! own mmap) in the heap and not trimming it lets the next step reuse them. Measured in
//! docs/PERFORMANCE.md: ~19% faster batch-32 steps, unchanged peak RSS (freed blocks are reused,
//! not added to).

/// Blocks up to this size come from the heap, not from their own `mmap`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Applies the settings unless the user set glibc's own variables for them, which win: a user
/// tuning `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` gets exactly what they asked for.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let var = |k: &str| std::env::var_os(k);
        // Other tunables (CPU, threads) leave malloc's alone, so they do not turn this off.
        let tunables = var("GLIBC_TUNABLES").is_some_and(|t| {
            let t = t.to_string_lossy();
            t.contains("glibc.malloc.mmap_threshold") || t.contains("glibc.malloc.trim_threshold")
        });
        let user_set = tunables
            || var("MALLOC_MMAP_THRESHOLD_").is_some()
            || var("MALLOC_TRIM_THRESHOLD_").is_some();
        if user_set {
            return;
        }
        // SAFETY: `mallopt` only changes allocator parameters; glibc takes its own lock, and it
        // is called at the start of `main`, before any allocation-heavy work or other thread.
        #[allow(unsafe_code)]
        unsafe {
            // Each returns 0 for a value out of glibc's range (32 MiB is its 64-bit ceiling for
            // the mmap threshold); a failure would leave the defaults: correct, only slower.
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        }
    }
}
