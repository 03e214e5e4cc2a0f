//! The Model Stock arithmetic (SPEC.md §1): Gram matrices of the task deltas, the mean pairwise
//! cosine and the interpolation ratio t. Pure functions, no I/O.

/// Added to the product of norms before dividing, as the reference implementation does; it
/// also makes an all-zero delta give cos 0 instead of 0/0.
pub const COS_EPS: f64 = 1e-8;
/// Added to the denominator of t, as the reference implementation does. Because the mean
/// pairwise cosine of N vectors is at least −1/(N−1), the denominator is then at least 1e-8,
/// so t stays finite (if huge) for any cosine.
pub const T_EPS: f64 = 1e-8;

/// The Model Stock interpolation ratio for `n` fine-tuned models whose deltas have mean
/// pairwise cosine `cos` (clamped to [−1, 1] first, as in the reference):
/// `t = n·cos / ((n−1)·cos + 1 + 1e-8)`.
///
/// Unclamped `t` may be negative (cos < 0) or, for cos near its minimum −1/(n−1), of order
/// 1e8 — large but finite. `n < 2` is meaningless for Model Stock; it returns 0 (keep w0).
pub fn model_stock_ratio(n: usize, cos: f64) -> f64 {
    if n < 2 {
        return 0.0;
    }
    let c = cos.clamp(-1.0, 1.0);
    let n = n as f64;
    n * c / ((n - 1.0) * c + 1.0 + T_EPS)
}

/// The angle in degrees whose cosine is `cos` (clamped, so rounding past ±1 gives 0°/180°).
pub fn angle_deg(cos: f64) -> f64 {
    cos.clamp(-1.0, 1.0).acos().to_degrees()
}

/// Dot products of the task deltas d_i = w_i − w0 of one tensor (or one group of tensors),
/// accumulated in f64. Entry (i, j) is ⟨d_i, d_j⟩; the diagonal holds the squared norms.
///
/// Grams of disjoint pieces add up to the Gram of the concatenation, which is what makes
/// streaming in chunks and grouping tensors (separate q/k/v ≡ fused in_proj) exact.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaGram {
    n: usize,
    /// Upper triangle, row-major: (0,0), (0,1), .., (0,n−1), (1,1), ...
    upper: Vec<f64>,
}

impl DeltaGram {
    /// A zero Gram for `n` models.
    pub fn new(n: usize) -> Self {
        DeltaGram {
            n,
            upper: vec![0.0; n * (n + 1) / 2],
        }
    }

    /// Number of models.
    pub fn n(&self) -> usize {
        self.n
    }

    fn slot(&self, i: usize, j: usize) -> usize {
        let (i, j) = if i <= j { (i, j) } else { (j, i) };
        // Rows before i hold n + (n−1) + ... + (n−i+1) entries.
        i * self.n - i * (i.saturating_sub(1)) / 2 + (j - i)
    }

    /// ⟨d_i, d_j⟩.
    pub fn dot(&self, i: usize, j: usize) -> f64 {
        self.upper[self.slot(i, j)]
    }

    /// ‖d_i‖.
    pub fn norm(&self, i: usize) -> f64 {
        self.dot(i, i).sqrt()
    }

    /// All ‖d_i‖.
    pub fn norms(&self) -> Vec<f64> {
        (0..self.n).map(|i| self.norm(i)).collect()
    }

    /// Adds the contribution of one slice of the deltas: `deltas[i]` is a piece of d_i, all
    /// pieces cover the same elements.
    pub fn accumulate(&mut self, deltas: &[&[f32]]) {
        debug_assert_eq!(deltas.len(), self.n);
        self.accumulate_impl(None, deltas);
    }

    /// Adds the contribution of one slice of the models, with d_i = f32(`models[i]` − anchor)
    /// computed on the fly (rounded to f32 exactly as the reference does).
    pub fn accumulate_from(&mut self, anchor: &[f32], models: &[&[f32]]) {
        debug_assert_eq!(models.len(), self.n);
        self.accumulate_impl(Some(anchor), models);
    }

    fn accumulate_impl(&mut self, anchor: Option<&[f32]>, xs: &[&[f32]]) {
        // Unrolled kernels for the common N: all pairs in one sweep over the data, which keeps
        // the merge memory-bound instead of re-reading every delta N times.
        match xs.len() {
            1 => self.fixed::<1, 1>(anchor, xs),
            2 => self.fixed::<2, 3>(anchor, xs),
            3 => self.fixed::<3, 6>(anchor, xs),
            4 => self.fixed::<4, 10>(anchor, xs),
            _ => {
                let owned: Vec<Vec<f32>> = match anchor {
                    Some(a) => xs
                        .iter()
                        .map(|x| x.iter().zip(a).map(|(v, w)| v - w).collect())
                        .collect(),
                    None => xs.iter().map(|x| x.to_vec()).collect(),
                };
                for i in 0..self.n {
                    for j in i..self.n {
                        let s = self.slot(i, j);
                        self.upper[s] += dot_f64(&owned[i], &owned[j]);
                    }
                }
            }
        }
    }

    /// `N` models, `P = N(N+1)/2` pairs. Each pair keeps `LANES` partial sums (independent
    /// dependency chains the compiler maps onto packed f64 registers); every product and sum
    /// is f64, so the result is as accurate as a plain f64 loop, only summed in another order.
    fn fixed<const N: usize, const P: usize>(&mut self, anchor: Option<&[f32]>, xs: &[&[f32]]) {
        const LANES: usize = 4;
        let len = xs.first().map_or(0, |x| x.len());
        let xs: [&[f32]; N] = std::array::from_fn(|i| &xs[i][..len]);
        let zeros;
        let a = match anchor {
            Some(a) => &a[..len],
            None => {
                zeros = vec![0f32; len];
                &zeros[..]
            }
        };
        // Whole 4-element blocks as arrays: one 16-byte load per input and block, no bounds
        // checks in the loop (every block slice is cut to the same length first).
        let (a_blocks, _) = a.as_chunks::<LANES>();
        let nb = a_blocks.len();
        let x_blocks: [&[[f32; LANES]]; N] =
            std::array::from_fn(|i| &xs[i].as_chunks::<LANES>().0[..nb]);
        let mut acc = [[0f64; LANES]; P];
        kernel::gram_blocks::<N, P>(a_blocks, &x_blocks, &mut acc);
        let full = nb * LANES;
        for k in full..len {
            let mut p = 0;
            for i in 0..N {
                for j in i..N {
                    acc[p][0] += f64::from(xs[i][k] - a[k]) * f64::from(xs[j][k] - a[k]);
                    p += 1;
                }
            }
        }
        let mut p = 0;
        for i in 0..N {
            for j in i..N {
                let s = self.slot(i, j);
                let v = &acc[p];
                self.upper[s] += (v[0] + v[1]) + (v[2] + v[3]);
                p += 1;
            }
        }
    }

    /// Adds another Gram of the same N (a further chunk or a further tensor of a group).
    pub fn add(&mut self, other: &DeltaGram) {
        debug_assert_eq!(self.n, other.n);
        for (a, b) in self.upper.iter_mut().zip(&other.upper) {
            *a += b;
        }
    }

    /// Whether every diagonal entry is finite (a NaN or infinity anywhere in the inputs makes
    /// some delta, hence some squared norm, non-finite: a cheap whole-tensor check).
    pub fn is_finite(&self) -> bool {
        self.upper.iter().all(|v| v.is_finite())
    }

    /// Whether every delta is exactly zero (all models equal the anchor).
    pub fn all_zero(&self) -> bool {
        (0..self.n).all(|i| self.dot(i, i) == 0.0)
    }

    /// Whether some delta is exactly zero.
    pub fn any_zero(&self) -> bool {
        (0..self.n).any(|i| self.dot(i, i) == 0.0)
    }

    /// The cosine of the pair (i, j) as the reference computes it:
    /// ⟨d_i,d_j⟩ / (sqrt(‖d_i‖²·‖d_j‖²) + 1e-8).
    pub fn pair_cos(&self, i: usize, j: usize) -> f64 {
        self.dot(i, j) / ((self.dot(i, i) * self.dot(j, j)).sqrt() + COS_EPS)
    }

    /// The mean over pairs i < j of the pair cosines, clamped to [−1, 1]. 0 for n < 2.
    pub fn mean_cos(&self) -> f64 {
        let mut sum = 0.0;
        let mut pairs = 0usize;
        for i in 0..self.n {
            for j in i + 1..self.n {
                sum += self.pair_cos(i, j);
                pairs += 1;
            }
        }
        if pairs == 0 {
            return 0.0;
        }
        (sum / pairs as f64).clamp(-1.0, 1.0)
    }
}

mod kernel {
    //! The inner loop of the Gram kernel, written in pairs of f64 (`[f64; 2]`) so that the
    //! compiler maps each onto one SSE2 register: the straightforward `[f64; 4]`-lane version
    //! auto-vectorises into a tangle of shuffles and spills that runs ~1.5x slower, and
    //! intrinsics would need `unsafe`.
    //!
    //! The same source is also compiled for AVX2 and picked at run time (see
    //! [`crate::simd`]): without it the statistics pass is bound by f64 arithmetic, not by
    //! memory. Lane for lane the operations are the same (Rust never fuses a multiply and an
    //! add), so both builds give bit-identical sums.

    /// For each block b and pair (i ≤ j) with running index p:
    /// `acc[p][l] += f64(x_i[b][l] − a[b][l]) · f64(x_j[b][l] − a[b][l])`.
    pub(super) fn gram_blocks<const N: usize, const P: usize>(
        a: &[[f32; 4]],
        xs: &[&[[f32; 4]]; N],
        acc: &mut [[f64; 4]; P],
    ) {
        crate::simd::dispatch!(
            gram_blocks_avx2::<N, P>(a, xs, acc),
            gram_blocks_body::<N, P>(a, xs, acc)
        )
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn gram_blocks_avx2<const N: usize, const P: usize>(
        a: &[[f32; 4]],
        xs: &[&[[f32; 4]]; N],
        acc: &mut [[f64; 4]; P],
    ) {
        gram_blocks_body::<N, P>(a, xs, acc);
    }

    #[inline(always)]
    fn mul2(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
        [a[0] * b[0], a[1] * b[1]]
    }

    #[inline(always)]
    fn add2(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
        [a[0] + b[0], a[1] + b[1]]
    }

    #[inline(always)]
    pub(super) fn gram_blocks_body<const N: usize, const P: usize>(
        a: &[[f32; 4]],
        xs: &[&[[f32; 4]]; N],
        acc: &mut [[f64; 4]; P],
    ) {
        // Lanes 0–1 and 2–3 of each pair's sums.
        let mut lo = [[0f64; 2]; P];
        let mut hi = [[0f64; 2]; P];
        for (b, av) in a.iter().enumerate() {
            let mut dlo = [[0f64; 2]; N];
            let mut dhi = [[0f64; 2]; N];
            for i in 0..N {
                let x = xs[i][b];
                // d_i rounded to f32 first, as the reference does.
                let d = [x[0] - av[0], x[1] - av[1], x[2] - av[2], x[3] - av[3]];
                dlo[i] = [f64::from(d[0]), f64::from(d[1])];
                dhi[i] = [f64::from(d[2]), f64::from(d[3])];
            }
            let mut p = 0;
            for i in 0..N {
                for j in i..N {
                    lo[p] = add2(lo[p], mul2(dlo[i], dlo[j]));
                    hi[p] = add2(hi[p], mul2(dhi[i], dhi[j]));
                    p += 1;
                }
            }
        }
        for p in 0..P {
            acc[p][0] += lo[p][0];
            acc[p][1] += lo[p][1];
            acc[p][2] += hi[p][0];
            acc[p][3] += hi[p][1];
        }
    }
}

/// ⟨a, b⟩ with every product and sum in f64.
///
/// Eight independent accumulators let the compiler use packed f64 instructions (a single
/// running sum would serialise on the add latency); the order is fixed, so the result does
/// not depend on threads.
pub(crate) fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0f64; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += f64::from(x[l]) * f64::from(y[l]);
        }
    }
    let mut tail = 0.0;
    for (x, y) in ra.iter().zip(rb) {
        tail += f64::from(*x) * f64::from(*y);
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn unit_facts_of_the_ratio() {
        assert!(close(model_stock_ratio(2, 1.0), 1.0, 1e-7));
        for n in 2..6 {
            assert_eq!(model_stock_ratio(n, 0.0), 0.0);
        }
        assert!(close(model_stock_ratio(2, 0.5), 2.0 / 3.0, 1e-8));
        assert!(close(model_stock_ratio(3, 0.5), 0.75, 1e-8));
    }

    #[test]
    fn ratio_at_the_lowest_cosine_is_finite() {
        // N = 2: the minimum cosine is −1 and the denominator becomes exactly 1e-8.
        let t = model_stock_ratio(2, -1.0);
        assert!(t.is_finite());
        assert!(close(t, -2.0 / T_EPS, 1.0));
        // Past −1 (rounding) is clamped first.
        assert_eq!(model_stock_ratio(2, -1.0 - 1e-12), t);
        // N = 3: the mean pairwise cosine cannot go below −1/2; at −1/2 the same happens.
        let t3 = model_stock_ratio(3, -0.5);
        assert!(t3.is_finite() && t3 < -1e7);
        // And at −1 (not reachable from data) t is still finite.
        assert!(model_stock_ratio(3, -1.0).is_finite());
    }

    #[test]
    fn gram_slots_cover_the_upper_triangle() {
        let mut g = DeltaGram::new(4);
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..4 {
            for j in i..4 {
                assert!(seen.insert(g.slot(i, j)));
                assert_eq!(g.slot(i, j), g.slot(j, i));
            }
        }
        assert_eq!(seen.len(), 10);
        assert_eq!(*seen.iter().max().unwrap_or(&0), 9);
        let s = g.slot(2, 3);
        g.upper[s] = 5.0;
        assert_eq!(g.dot(3, 2), 5.0);
    }

    #[test]
    fn hand_computed_cosines() {
        // d1 = (1, 0), d2 = (1, 1): cos = 1/√2.
        let mut g = DeltaGram::new(2);
        g.accumulate(&[&[1.0, 0.0], &[1.0, 1.0]]);
        assert!(close(g.mean_cos(), 1.0 / 2f64.sqrt(), 1e-8));
        // N = 3: the mean of the three pair cosines.
        let d: [&[f32]; 3] = [&[1.0, 0.0], &[0.0, 1.0], &[1.0, 1.0]];
        let mut g = DeltaGram::new(3);
        g.accumulate(&d);
        let expect = (0.0 + 1.0 / 2f64.sqrt() + 1.0 / 2f64.sqrt()) / 3.0;
        assert!(close(g.mean_cos(), expect, 1e-8));
        // Zero deltas give cos 0, not NaN.
        let mut z = DeltaGram::new(2);
        z.accumulate(&[&[0.0, 0.0], &[1.0, 2.0]]);
        assert_eq!(z.mean_cos(), 0.0);
        assert!(z.any_zero() && !z.all_zero());
    }

    #[test]
    fn chunked_accumulation_matches_whole() {
        let a: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let b: Vec<f32> = (0..1000)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0)
            .collect();
        let mut whole = DeltaGram::new(2);
        whole.accumulate(&[&a, &b]);
        let mut parts = DeltaGram::new(2);
        for (x, y) in a.chunks(77).zip(b.chunks(77)) {
            let mut p = DeltaGram::new(2);
            p.accumulate(&[x, y]);
            parts.add(&p);
        }
        for (i, j) in [(0, 0), (0, 1), (1, 1)] {
            let (w, p) = (whole.dot(i, j), parts.dot(i, j));
            assert!(close(w, p, 1e-12 * w.abs().max(1.0)), "{w} vs {p}");
        }
        let exact: f64 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum();
        assert!(close(whole.dot(0, 1), exact, 1e-9 * exact.abs()));
    }

    /// Inputs with a wide spread of magnitudes, so that any change in the order of the f64
    /// operations would show in the last bits.
    fn wild(seed: u32, len: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let mant = (x & 0xffff) as f32 / 65536.0 - 0.5;
                mant * 2f32.powi((x >> 16) as i32 % 40 - 20)
            })
            .collect()
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_kernel_is_bit_identical_to_the_baseline() {
        fn check<const N: usize, const P: usize>() {
            let len = 4 * 1001;
            let a = wild(99, len);
            let xs: Vec<Vec<f32>> = (0..N as u32).map(|i| wild(i, len)).collect();
            let a_blocks = a.as_chunks::<4>().0;
            let x_blocks: [&[[f32; 4]]; N] = std::array::from_fn(|i| xs[i].as_chunks::<4>().0);
            let mut base = [[0f64; 4]; P];
            let mut fast = [[0f64; 4]; P];
            kernel::gram_blocks_body::<N, P>(a_blocks, &x_blocks, &mut base);
            kernel::gram_blocks::<N, P>(a_blocks, &x_blocks, &mut fast);
            let bits =
                |acc: &[[f64; 4]; P]| acc.concat().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&base), bits(&fast), "N = {N}");
        }
        if !crate::simd::has_avx2() {
            return;
        }
        check::<2, 3>();
        check::<3, 6>();
        check::<4, 10>();
    }
}
