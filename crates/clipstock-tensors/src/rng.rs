//! The workspace's one pseudo-random generator, written out so that epoch orders, crops, the
//! quickstart images, random model weights and the merge bench's inputs never change with a
//! dependency's version. Each draw helper keeps the exact arithmetic its caller was pinned with:
//! changing one changes results that tests and the quickstart compare bit for bit.

/// splitmix64's increment, the golden ratio in 64 bits.
pub const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's finaliser (Stafford's variant 13).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64 (Steele, Lea, Flood 2014). The field is the whole state: `SplitMix64(seed)`
/// starts a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        mix64(self.0)
    }

    /// Uniform in `0..bound` (Lemire's multiply-shift with rejection: no modulo bias). The
    /// epoch orders use it.
    pub fn below_unbiased(&mut self, bound: u64) -> u64 {
        let mut m = u128::from(self.next_u64()) * u128::from(bound);
        if (m as u64) < bound {
            let threshold = bound.wrapping_neg() % bound;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(bound);
            }
        }
        (m >> 64) as u64
    }

    /// Uniform in `0..n` (Lemire's multiply-shift without rejection; the bias is below 2^-40
    /// for image sizes). The crop boxes use it.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform in [0, 1) with 24 random bits (f32).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in (0, 1) with 24 random bits, never 0: the midpoints of [`SplitMix64::unit`]'s
    /// grid, so that `ln` is finite. The model's random initialiser uses it.
    pub fn unit_open(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }

    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform integer in [lo, hi] (modulo; fine for the quickstart's small ranges).
    pub fn int(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// Standard normal (Box–Muller; one draw per call keeps the stream simple).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-7);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }

    /// Uniform in (0, 1) with 53 random bits, never 0.
    fn open_f64(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    /// Gamma(shape, 1) by Marsaglia and Tsang (2000), with the `U^(1/shape)` boost below 1.
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = self.open_f64();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let (u1, u2) = (self.open_f64(), self.next_f64());
            let x = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = self.open_f64();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b), as the ratio of two gammas: mixup's mixing weight.
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        x / (x + y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64_stream() {
        // The first outputs for seed 1234567 of the reference C implementation
        // (https://prng.di.unimi.it/splitmix64.c).
        let mut r = SplitMix64(1_234_567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn draws_stay_in_range() {
        let mut r = SplitMix64(9);
        for _ in 0..1000 {
            assert!(r.below_unbiased(7) < 7);
            assert!(r.below(5) < 5);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let o = r.unit_open();
            assert!(o > 0.0 && o < 1.0);
            assert!((3..=5).contains(&r.int(3, 5)));
        }
    }

    /// Beta(a, a) has mean 1/2 and variance 1/(4(2a + 1)); checked for mixup's usual small
    /// alpha (the shape < 1 path) and for a large one.
    #[test]
    fn beta_has_the_right_mean_and_variance() {
        for a in [0.2f64, 0.4, 1.0, 5.0] {
            let mut r = SplitMix64(17);
            let n = 200_000;
            let xs: Vec<f64> = (0..n).map(|_| r.beta(a, a)).collect();
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)), "a = {a}");
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            let want = 1.0 / (4.0 * (2.0 * a + 1.0));
            assert!((mean - 0.5).abs() < 0.005, "a = {a}: mean {mean}");
            assert!(
                (var - want).abs() < 0.02 * want + 1e-4,
                "a = {a}: var {var} vs {want}"
            );
        }
        // Gamma(k) has mean k.
        let mut r = SplitMix64(3);
        let m: f64 = (0..100_000).map(|_| r.gamma(2.5)).sum::<f64>() / 100_000.0;
        assert!((m - 2.5).abs() < 0.03, "{m}");
    }
}
