//! How many tokens to draft next. A long draft pays off when most of it is accepted and wastes target
//! rows (and draft passes) when it is not, so the length follows recent acceptance — transformers'
//! "heuristic" schedule: +2 after a step whose drafts were all accepted, −1 otherwise, within
//! `[draft_min, draft_max]`. And when acceptance stays near zero over a window of drafting steps,
//! speculation is switched off for the rest of the sequence: from then on every step is a plain decode
//! step, so speculation is never much slower than not speculating.

use anyhow::{bail, Result};
use std::collections::VecDeque;

/// The knobs of the draft length.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DraftLengthParams {
    /// At most this many drafts per step (≥ 1); also the starting length.
    pub max: usize,
    /// At least this many: the length never shrinks below it, and a proposal shorter than it is not
    /// verified (the step is a plain one). 0: any.
    pub min: usize,
    /// Drafting steps looked back on before switching off (0: never switch off).
    pub window: usize,
    /// Switch off when the window's acceptance rate is below this.
    pub off_below: f64,
}

impl Default for DraftLengthParams {
    fn default() -> DraftLengthParams {
        DraftLengthParams {
            max: 8,
            min: 0,
            window: 8,
            off_below: 0.1,
        }
    }
}

impl DraftLengthParams {
    pub fn validate(&self) -> Result<()> {
        if self.max == 0 {
            bail!("--draft-max must be at least 1 (got 0)");
        }
        if self.min > self.max {
            bail!("--draft-min ({}) must not exceed --draft-max ({})", self.min, self.max);
        }
        Ok(())
    }
}

/// The adaptive draft length of one sequence.
#[derive(Clone, Debug)]
pub struct DraftLength {
    params: DraftLengthParams,
    k: usize,
    /// (drafted, accepted) of the last `window` steps that verified drafts.
    recent: VecDeque<(usize, usize)>,
    off: bool,
}

impl DraftLength {
    pub fn new(params: DraftLengthParams) -> Result<DraftLength> {
        params.validate()?;
        Ok(DraftLength {
            params,
            k: params.max,
            recent: VecDeque::new(),
            off: false,
        })
    }

    /// The number of drafts to ask for next; 0 once speculation is switched off.
    pub fn k(&self) -> usize {
        if self.off {
            0
        } else {
            self.k
        }
    }

    /// Whether a proposal of `n` drafts is long enough to verify.
    pub fn enough(&self, n: usize) -> bool {
        n > 0 && n >= self.params.min
    }

    /// Whether speculation was switched off.
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// A step verified `drafted` drafts, of which `accepted` stood.
    pub fn update(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 || self.off {
            return;
        }
        let floor = self.params.min.max(1);
        self.k = if accepted == drafted {
            (self.k + 2).min(self.params.max)
        } else {
            self.k.saturating_sub(1).max(floor)
        };
        let w = self.params.window;
        if w == 0 {
            return;
        }
        self.recent.push_back((drafted, accepted));
        if self.recent.len() > w {
            self.recent.pop_front();
        }
        if self.recent.len() == w {
            let (d, a) = self.recent.iter().fold((0, 0), |s, r| (s.0 + r.0, s.1 + r.1));
            if (a as f64) < self.params.off_below * d as f64 {
                self.off = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_shrinks_and_switches_off() {
        let mut l = DraftLength::new(DraftLengthParams {
            max: 6,
            min: 2,
            window: 3,
            off_below: 0.1,
        })
        .unwrap();
        assert_eq!(l.k(), 6);
        l.update(6, 3);
        assert_eq!(l.k(), 5);
        l.update(5, 5);
        assert_eq!(l.k(), 6);
        for _ in 0..5 {
            l.update(l.k(), 0);
        }
        assert!(l.is_off());
        assert_eq!(l.k(), 0);
        assert!(!l.enough(1) && l.enough(2));
        assert!(DraftLength::new(DraftLengthParams {
            max: 0,
            ..Default::default()
        })
        .is_err());
        assert!(DraftLength::new(DraftLengthParams {
            max: 2,
            min: 3,
            ..Default::default()
        })
        .is_err());
    }
}
