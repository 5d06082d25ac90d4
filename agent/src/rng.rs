//! The one small pseudo-random generator: xorshift64* seeded through splitmix64. For values
//! that need to be spread uniformly, not to be unpredictable (ring tokens, jitter, test and
//! benchmark data), without a dependency on `rand`. Seeded runs repeat exactly.

/// xorshift64*; see the module docs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator with a fixed seed, for reproducible tests, simulations and benchmarks.
    pub fn with_seed(seed: u64) -> Self {
        // splitmix64 turns similar seeds (0, 1, 2, ...) into unrelated states. xorshift can
        // never leave the all-zero state, so that one output is replaced.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    /// Seeded from the operating system's randomness (the standard library's per-process
    /// hash keys), so two agents started at the same moment still draw different values.
    pub fn from_entropy() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Self::with_seed(h.finish())
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn next_u32(&mut self) -> u32 {
        // The high half of xorshift64* output is the better-mixed half.
        (self.next_u64() >> 32) as u32
    }

    /// A value in `0..n` (`0` for `n == 0`); the modulo bias is negligible for the small `n`
    /// it is used with.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_repeat_and_differ_by_seed() {
        let take = |seed| {
            let mut r = Rng::with_seed(seed);
            (0..4).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(take(1), take(1));
        assert_ne!(take(1), take(2));
        let mut r = Rng::with_seed(0);
        assert!((0..1000).all(|_| r.below(7) < 7));
        assert_eq!(r.below(0), 0);
    }
}
