//! A tiny deterministic RNG (SplitMix64) injected into the core.
//!
//! The daily-sync timer needs a uniform random period per relay. Taking the seed as input keeps
//! the core deterministic: the same seed and inputs give the same commands.

/// SplitMix64: small, fast, and good enough for jittering timers (not for cryptography).
#[derive(Debug, Clone)]
pub struct CoreRng {
    state: u64,
}

impl CoreRng {
    /// A generator with the given seed.
    pub fn new(seed: u64) -> Self {
        CoreRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in `[lo, hi]` (inclusive); `lo` when the range is empty.
    pub fn uniform_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        if span == u64::MAX {
            return self.next_u64();
        }
        // Rejection sampling removes modulo bias.
        let n = span + 1;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return lo + v % n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_stays_in_range_and_is_deterministic() {
        let mut a = CoreRng::new(7);
        let mut b = CoreRng::new(7);
        for _ in 0..1000 {
            let x = a.uniform_inclusive(23, 25);
            assert!((23..=25).contains(&x));
            assert_eq!(x, b.uniform_inclusive(23, 25));
        }
    }

    #[test]
    fn uniform_covers_the_range() {
        let mut r = CoreRng::new(1);
        let mut seen = [false; 3];
        for _ in 0..200 {
            seen[(r.uniform_inclusive(10, 12) - 10) as usize] = true;
        }
        assert_eq!(seen, [true, true, true]);
    }
}
