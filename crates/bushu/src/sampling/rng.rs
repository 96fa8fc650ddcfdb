//! A small seeded random number generator (PCG-XSH-RR 64/32): the same seed gives the same tokens on
//! every machine and thread count.

pub struct Rng {
    state: u64,
}

const MUL: u64 = 6364136223846793005;
const INC: u64 = 1442695040888963407;

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng { state: 0 };
        r.next_u32();
        r.state = r.state.wrapping_add(seed);
        r.next_u32();
        r
    }

    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(MUL).wrapping_add(INC);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        xorshifted.rotate_right((old >> 59) as u32)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32
    }

    /// An index drawn with probability proportional to `weights` (non-negative, not necessarily
    /// normalized: a residual `max(0, p - q)` can be drawn from as it is), by inverse CDF. All-zero
    /// weights give index 0.
    pub fn categorical(&mut self, weights: &[f32]) -> usize {
        let total: f64 = weights.iter().map(|&w| w as f64).sum();
        let u = self.next_f32() as f64 * total;
        let mut acc = 0.0f64;
        let mut last = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                acc += w as f64;
                last = i;
                if u < acc {
                    return i;
                }
            }
        }
        // Rounding left the sum a hair under u: the last positive weight takes that sliver.
        last
    }
}
