//! How many tokens to draft next. A long draft pays off when most of it is accepted and wastes target
//! rows (and draft passes) when it is not, so the length follows recent acceptance — transformers'
//! "heuristic" schedule: +2 after a step whose drafts were all accepted, −1 otherwise, within
//! `[draft_min, draft_max]`. And when acceptance stays near zero over a window of drafting steps,
//! speculation is switched off for the rest of the sequence: from then on every step is a plain decode
//! step, so speculation is never much slower than not speculating.
//!
//! Acceptance alone does not say whether speculation pays: a draft model that is accepted 84 % of the
//! time still loses when drafting and verifying cost more than the tokens they save (Qwen2.5-Coder 0.5B
//! drafting a poem for the 1.5B: 0.77x plain, docs/BENCHMARKS.md). With [`DraftLengthParams::timed`]
//! the length also watches the clock ([`DraftLength::timed`]) — until the costs below are measured,
//! which then decide alone —: the wall time per token of the last
//! [`TIMED_STEPS`] speculative steps against that of plain steps (the second decode step is a plain one, and
//! one in every [`PROBE_EVERY`] steps after it, so the plain time follows the machine's load; the
//! first step is not timed: it may wait for a background packer, `model::weights`). When
//! speculation is slower by more than [`SLOWER_BY`], one plain step is taken at once to confirm it (the
//! plain average may come from a faster stretch of a shared machine's speed: only a plain step timed
//! beside the speculative ones says they are slower now), and if they are still slower than that step
//! it pauses — plain steps — for [`PAUSE`] steps, doubled each time it is found slower again, then
//! tries again; found slower after [`MAX_PAUSES`] pauses, speculation is switched off for the
//! sequence (a draft model's catching up after a pause costs in proportion to the pause). Timing
//! decides only *when* to draft, never
//! which token is emitted: greedy output stays plain decoding's and sampled output keeps its
//! distribution, but which random draws a seeded sampled run makes may then vary between runs, so
//! the timed length is for the command line (`run`, `chat`, `bench`), not for reproducibility tests.
//!
//! The clock also chooses the length itself ([`DraftLength::costs`]): a step of `k` drafts costs `k`
//! draft passes and a verification pass over `k + 1` rows, measured as seconds per draft `t_d` and
//! seconds per verified row beyond a plain step's, `t_r(k + 1)`, for each pass length (moving
//! averages; a length not tried yet is taken at the cheapest row measured, so that it gets tried),
//! and emits on average `E(k) = (1 − a^(k+1)) / (1 − a)` tokens for a per-draft acceptance `a` (the
//! recent drafts'; Leviathan et al. 2023's expected length). The length is the `k` that maximizes
//! tokens per second, `E(k) / (k (t_d + t_r(k + 1)) + t_plain)`: long drafts only when drafting and
//! verifying rows are cheap against what acceptance wins, a prompt-lookup proposer's free drafts long
//! ones. When even the best `k` is predicted slower than plain decoding, speculation pauses at once;
//! and once the costs are measured they alone decide — the comparison of the last few speculative
//! steps' wall time with plain steps' is the judge only before (a window of four steps that drew a few
//! rejections paused speculation that paid).

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
    /// Time the steps: the draft length from the measured costs, and pauses while speculation is
    /// predicted (or, before the costs are known, measured) slower than plain steps ([`DraftLength::timed`]).
    pub timed: bool,
}

impl Default for DraftLengthParams {
    fn default() -> DraftLengthParams {
        DraftLengthParams {
            max: 8,
            min: 0,
            window: 8,
            off_below: 0.1,
            timed: false,
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

/// A plain step is taken (to time it) once in this many steps while speculating.
pub const PROBE_EVERY: usize = 32;
/// Speculative steps timed before they are compared with plain ones (until the costs are measured).
pub const TIMED_STEPS: usize = 4;
/// Steps of the first pause after speculation was measured slower than plain decoding.
pub const PAUSE: usize = 8;
/// Pauses before speculation found slower once more is switched off for the sequence.
pub const MAX_PAUSES: usize = 3;
/// How much slower per token than plain steps the timed speculative steps must be for a pause: at parity
/// speculation costs nothing, and the text after a stretch the draft is unsure of is often one it drafts
/// well (measured: docs/BENCHMARKS.md, session 11).
pub const SLOWER_BY: f64 = 0.05;

/// How much of the acceptance counts each verified step keeps: about the last 10 steps weigh.
const DECAY: f64 = 0.9;
/// Weight of a new measurement in the moving averages of the draft and row costs.
const COST_WEIGHT: f64 = 0.25;

/// The clock's side of [`DraftLength`]: plain and speculative seconds per token.
#[derive(Clone, Debug, Default)]
struct Clock {
    /// Seconds per token of plain steps (a moving average), once one was timed.
    plain: Option<f64>,
    /// (seconds, tokens) of the last `TIMED_STEPS` speculative steps.
    spec: VecDeque<(f64, usize)>,
    /// Steps so far; a plain probe is due at step 1 and every `PROBE_EVERY` after it.
    steps: usize,
    /// Speculation pauses until this step.
    paused_until: usize,
    /// The next pause's length.
    pause: usize,
    /// Pauses so far.
    pauses: usize,
    /// Seconds per draft (a moving average), once measured.
    draft: Option<f64>,
    /// Seconds per verified row beyond the first, by the pass's rows (`row[m]`: passes of `m` rows;
    /// moving averages): a row costs less in a longer pass (the weights are read once for all).
    row: Vec<Option<f64>>,
    /// The timed speculative steps were slower than the plain average: the next step is a plain one that
    /// confirms it (or not) at the machine's current speed.
    confirming: bool,
}

/// The adaptive draft length of one sequence.
#[derive(Clone, Debug)]
pub struct DraftLength {
    params: DraftLengthParams,
    k: usize,
    /// Drafts accepted and rejected, decayed by [`DECAY`] a step: the acceptance per draft.
    accepted: f64,
    rejected: f64,
    /// (drafted, accepted) of the last `window` steps that verified drafts.
    recent: VecDeque<(usize, usize)>,
    off: bool,
    clock: Clock,
}

impl DraftLength {
    pub fn new(params: DraftLengthParams) -> Result<DraftLength> {
        params.validate()?;
        Ok(DraftLength {
            params,
            k: params.max,
            accepted: 0.0,
            rejected: 0.0,
            recent: VecDeque::new(),
            off: false,
            clock: Clock {
                pause: PAUSE,
                ..Clock::default()
            },
        })
    }

    /// The number of drafts to ask for next; 0 once speculation is switched off, and (timed) for a
    /// plain probe step or while speculation is paused.
    pub fn k(&self) -> usize {
        let c = &self.clock;
        let plain_step = self.params.timed && (c.steps % PROBE_EVERY == 1 || c.steps < c.paused_until || c.confirming);
        if self.off || plain_step {
            0
        } else {
            self.modeled().map_or(self.k, |(k, _)| k)
        }
    }

    /// The length of most tokens per second by the measured costs ([`DraftLength::costs`]) and that
    /// rate against plain decoding's (above 1: faster), once the clock has a plain step, a draft and a
    /// verification's rows, and two verified steps.
    fn modeled(&self) -> Option<(usize, f64)> {
        let c = &self.clock;
        let (true, Some(plain), Some(draft)) = (self.params.timed, c.plain, c.draft) else {
            return None;
        };
        // Passes of a length not measured yet are taken at the cheapest row measured (optimism: a
        // length is tried, and then known, rather than never tried because a shorter one was dear).
        let cheapest = c.row.iter().flatten().copied().min_by(f64::total_cmp)?;
        let row = |m: usize| c.row.get(m).copied().flatten().unwrap_or(cheapest);
        let seen = self.accepted + self.rejected;
        if seen < 2.0 {
            return None;
        }
        // A rate of exactly 1 would make every length's expected gain k + 1: keep it below.
        let a = (self.accepted / seen).min(0.999);
        let rate = |k: usize| {
            let tokens = (1.0 - a.powi(k as i32 + 1)) / (1.0 - a);
            tokens / (k as f64 * (draft + row(k + 1)) + plain)
        };
        let k = (self.params.min.max(1)..=self.params.max).max_by(|&x, &y| rate(x).total_cmp(&rate(y)))?;
        Some((k, rate(k) * plain))
    }

    /// The parts of a speculative step: `draft_secs` drafting `drafts` drafts (about 0 for a proposer
    /// without draft passes: prompt lookup; `None` when the step's drafting also read tokens of
    /// earlier steps — a draft model catching up after a pause — and so does not measure drafting),
    /// `verify_secs` verifying `rows` rows (the drafts and the last token). Without
    /// [`DraftLengthParams::timed`], or before a plain step was timed, nothing.
    pub fn costs(&mut self, draft_secs: Option<f64>, drafts: usize, verify_secs: f64, rows: usize) {
        let c = &mut self.clock;
        let (true, Some(plain), true) = (self.params.timed, c.plain, rows > 1) else {
            return;
        };
        let average =
            |old: Option<f64>, new: f64| Some(old.map_or(new, |o| (1.0 - COST_WEIGHT) * o + COST_WEIGHT * new));
        if let Some(secs) = draft_secs {
            c.draft = average(c.draft, secs / drafts.max(1) as f64);
        }
        if c.row.len() <= rows {
            c.row.resize(rows + 1, None);
        }
        c.row[rows] = average(c.row[rows], ((verify_secs - plain) / (rows - 1) as f64).max(0.0));
        // Predicted slower than plain decoding at its best length: pause now, as a measured slowdown
        // would after TIMED_STEPS slow steps, and let a retry's evidence weigh more than the old.
        if let Some((_, gain)) = self.modeled() {
            if gain < 1.0 {
                self.pause();
                self.accepted *= 0.5;
                self.rejected *= 0.5;
            }
        }
    }

    /// Times of the steps: a step that took `secs` and produced `tokens` tokens, `speculative` when it
    /// verified drafts. Without [`DraftLengthParams::timed`] nothing changes.
    pub fn timed(&mut self, speculative: bool, secs: f64, tokens: usize) {
        if !self.params.timed || tokens == 0 {
            return;
        }
        let costed = self.modeled().is_some();
        let c = &mut self.clock;
        c.steps += 1;
        if c.steps == 1 {
            return;
        }
        if !speculative {
            let t = secs / tokens as f64;
            c.plain = Some(c.plain.map_or(t, |p| 0.75 * p + 0.25 * t));
            if std::mem::take(&mut c.confirming) {
                // The machine's speed now: it replaces the average, which came from another stretch.
                c.plain = Some(t);
                let (w, n) = c.spec.iter().fold((0.0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
                c.spec.clear();
                if w / n as f64 > t * (1.0 + SLOWER_BY) {
                    self.pause();
                }
            }
            return;
        }
        c.spec.push_back((secs, tokens));
        if c.spec.len() > TIMED_STEPS {
            c.spec.pop_front();
        }
        // Once the costs are measured they decide (`DraftLength::costs`): a short window of steps
        // that drew rejections, or a busy moment of the machine, paused speculation that paid
        // (docs/SPECULATIVE.md, session 17).
        let (Some(plain), true, false) = (c.plain, c.spec.len() == TIMED_STEPS, costed) else {
            return;
        };
        let (t, n) = c.spec.iter().fold((0.0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
        if t / n as f64 > plain * (1.0 + SLOWER_BY) {
            c.confirming = true;
        }
    }

    /// Speculation found slower than plain steps: a pause, twice as long as the last, or after
    /// [`MAX_PAUSES`] of them, speculation off for the sequence — a draft model resuming after `P`
    /// plain steps first reads those `P` tokens (a prefill of them, about 8 % of a target step each
    /// for Qwen2.5-Coder 0.5B drafting for the 1.5B), so retries after ever longer pauses cost a
    /// sequence where speculation never pays that share of its paused steps.
    fn pause(&mut self) {
        let c = &mut self.clock;
        if c.pauses >= MAX_PAUSES {
            self.off = true;
            return;
        }
        c.paused_until = c.steps + c.pause;
        c.pause *= 2;
        c.pauses += 1;
    }

    /// Times speculation was paused for being slower than plain steps.
    pub fn pauses(&self) -> usize {
        self.clock.pauses
    }

    /// Whether a proposal of `n` drafts is long enough to verify.
    pub fn enough(&self, n: usize) -> bool {
        n > 0 && n >= self.params.min
    }

    /// Whether speculation was switched off.
    pub fn is_off(&self) -> bool {
        self.off
    }

    /// The acceptance the costs weigh ([`DraftLength::costs`]): a step verified a chain of `drafted`
    /// drafts — every one, those its proposer was unsure of too (they cost a draft pass and a row
    /// like the others) — of which the first `accepted` stood. Each accepted draft a success, the
    /// first rejected one (if any) a failure, after which nothing was tried.
    pub fn observe(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.accepted = DECAY * self.accepted + accepted.min(drafted) as f64;
        self.rejected = DECAY * self.rejected + f64::from(accepted < drafted);
    }

    /// A step verified `drafted` drafts its proposer was sure of, of which `accepted` stood: the
    /// acceptance schedule's length and the switch-off.
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

    /// A step's drafts (`k()`), then its time: plain steps take 1 s per token, speculative ones
    /// `spec` seconds for 3 tokens.
    fn run(l: &mut DraftLength, steps: usize, spec: f64) -> Vec<bool> {
        (0..steps)
            .map(|_| {
                let drafting = l.k() > 0;
                match drafting {
                    true => l.timed(true, spec, 3),
                    false => l.timed(false, 1.0, 1),
                }
                drafting
            })
            .collect()
    }

    #[test]
    fn timed_length_probes_pauses_and_retries() {
        assert_eq!(TIMED_STEPS, 4);
        let params = DraftLengthParams {
            timed: true,
            ..Default::default()
        };
        // Paying (3 tokens in 2 s against 1 s per token): only the probes are plain.
        let mut l = DraftLength::new(params).unwrap();
        let steps = run(&mut l, 2 * PROBE_EVERY + 2, 2.0);
        let plain: Vec<usize> = (0..steps.len()).filter(|&i| !steps[i]).collect();
        assert_eq!(plain, vec![1, PROBE_EVERY + 1, 2 * PROBE_EVERY + 1]);
        assert_eq!(l.pauses(), 0);
        // Not paying (3 tokens in 4 s): step 0 (not timed), the probe, 4 speculative steps (timed), a
        // plain step that confirms them slower, a pause of PAUSE plain steps, 4 more, the confirming
        // step, a pause twice as long, then speculation again.
        let mut l = DraftLength::new(params).unwrap();
        let steps = run(&mut l, 2 + 4 + 1 + PAUSE + 4 + 1 + 2 * PAUSE + 1, 4.0);
        let spec_at: Vec<usize> = (0..steps.len()).filter(|&i| steps[i]).collect();
        let second = 2 + 4 + 1 + PAUSE;
        let want: Vec<usize> = [0]
            .into_iter()
            .chain(2..6)
            .chain(second..second + 4)
            .chain([second + 4 + 1 + 2 * PAUSE])
            .collect();
        assert_eq!(spec_at, want);
        assert_eq!(l.pauses(), 2);
        // The machine slows down while speculating: the plain average (1 s per token, timed fast) says the
        // speculative steps (1.2 s per token) are slower, the confirming plain step timed now (1.3 s) says
        // they are not — no pause, speculation goes on after that one step.
        let mut l = DraftLength::new(params).unwrap();
        let mut drafted = Vec::new();
        for i in 0..12 {
            let d = l.k() > 0;
            drafted.push(d);
            match (d, i) {
                (true, _) => l.timed(true, 3.6, 3),
                (false, 1) => l.timed(false, 1.0, 1),
                (false, _) => l.timed(false, 1.3, 1),
            }
        }
        assert_eq!(l.pauses(), 0);
        let plain: Vec<usize> = (0..12).filter(|&i| !drafted[i]).collect();
        assert_eq!(plain, vec![1, 6], "the probe and one confirming step");
        // Untimed: the clock changes nothing.
        let mut l = DraftLength::new(DraftLengthParams { timed: false, ..params }).unwrap();
        assert!(run(&mut l, 50, 100.0).iter().all(|&d| d));
    }

    /// With the clock's costs measured — a plain step 1 s, `draft` seconds per draft, `row` per
    /// verified row beyond the first at every pass length — and a steady acceptance `a` per draft, the length is the `k`
    /// of most tokens per second, `E(k) / (k (draft + row) + 1)` with `E(k) = (1 − a^(k+1)) / (1 − a)`.
    /// By hand: a = 0.9, draft 0.4, row 0.3: k = 1, 2, 3 give 1.9 / 1.7 = 1.118, 2.71 / 2.4 = 1.129,
    /// 3.439 / 3.1 = 1.109 → 2. Free drafts (prompt lookup), a = 0.9, row 0.3: k = 4, 5, 6 give
    /// 4.095 / 2.2 = 1.861, 4.686 / 2.5 = 1.874, 5.217 / 2.8 = 1.863 → 5. a = 32/33 (each step 32
    /// accepted, then one rejected), draft 0.4, row 0.3: k = 3, 4, 5 give 3.822 / 3.1 = 1.233,
    /// 4.706 / 3.8 = 1.238, 5.563 / 4.5 = 1.236 → 4.
    #[test]
    fn measured_costs_choose_the_length_of_most_tokens_per_second() {
        // (draft, row cost by pass rows, per-step drafted/accepted, the length wanted).
        type Row = fn(usize) -> f64;
        let cases: [(f64, Row, (usize, usize), usize); 4] = [
            (0.4, |_| 0.3, (10, 9), 2),
            (0.0, |_| 0.3, (10, 9), 5),
            (0.4, |_| 0.3, (33, 32), 4),
            // Rows cheaper in passes of five or more: k = 2, 3, 4, 5 give 2.71 / 2.4 = 1.129, 3.439 /
            // 3.1 = 1.109, 4.095 / 3.0 = 1.365, 4.686 / 3.5 = 1.339 → 4, found by trying lengths
            // not measured yet at the cheapest row seen.
            (0.4, |m| if m < 5 { 0.3 } else { 0.1 }, (10, 9), 4),
        ];
        for (draft, row, (drafted, accepted), want) in cases {
            let mut l = DraftLength::new(DraftLengthParams {
                timed: true,
                ..Default::default()
            })
            .unwrap();
            for step in 0..20 {
                let k = l.k();
                if k == 0 {
                    l.timed(false, 1.0, 1);
                    continue;
                }
                l.update(drafted, accepted);
                l.observe(drafted, accepted);
                l.costs(Some(draft * k as f64), k, 1.0 + row(k + 1) * k as f64, k + 1);
                // Fast enough per token never to pause.
                l.timed(true, 0.1, k + 1);
                if step >= 8 {
                    assert_eq!(l.k(), want, "draft {draft}, acceptance {accepted}/{drafted}");
                }
            }
            assert_eq!(l.pauses(), 0);
            // A step whose drafting also read paused steps' tokens (`None`) leaves the draft cost.
            let before = l.clock.draft;
            l.costs(None, want, 1.0 + row(want + 1) * want as f64, want + 1);
            assert_eq!((l.clock.draft, l.k()), (before, want));
            // With the costs measured they decide: slow steps on the clock (a stretch of rejected
            // drafts, a busy machine) neither confirm nor pause.
            for _ in 0..TIMED_STEPS {
                l.timed(true, 100.0, 1);
            }
            assert_eq!((l.k(), l.pauses()), (want, 0));
        }
        // Acceptance 2 in 3 with those costs: k = 1 gives 1.667 / 1.7 = 0.98 tokens per plain step's
        // time — slower than plain, so speculation pauses as soon as the costs say so (the first
        // step with a plain time and two verified steps), not after four slow steps.
        let mut l = DraftLength::new(DraftLengthParams {
            timed: true,
            ..Default::default()
        })
        .unwrap();
        // One step: plain (1 s) or 3 drafts of which 2 stood, at those costs; whether it drafted.
        let step = |l: &mut DraftLength| {
            let k = l.k();
            if k == 0 {
                l.timed(false, 1.0, 1);
                return false;
            }
            l.update(3, 2);
            l.observe(3, 2);
            l.costs(Some(0.4 * k as f64), k, 1.0 + 0.3 * k as f64, k + 1);
            l.timed(true, 0.1, 3);
            true
        };
        let drafted: Vec<bool> = (0..3 + PAUSE).map(|_| step(&mut l)).collect();
        let mut want = vec![true, false, true];
        want.extend(std::iter::repeat_n(false, PAUSE - 1));
        want.push(true);
        assert_eq!(
            drafted, want,
            "step 0, the probe, one step with the costs, a pause, a retry"
        );
        assert_eq!(l.pauses(), 2, "the retry, still at 2 in 3, pauses again");
        // Retries after pauses of 2 PAUSE and 4 PAUSE steps fail too: the third pause is the last,
        // the next failure switches speculation off for the sequence.
        for _ in 0..(2 * PAUSE + 1 + 4 * PAUSE + 1) {
            step(&mut l);
        }
        assert_eq!(l.pauses(), MAX_PAUSES);
        assert!(l.is_off() && l.k() == 0);
        // Untimed: the costs are not kept, the length is the acceptance schedule's.
        let mut l = DraftLength::new(DraftLengthParams::default()).unwrap();
        l.update(8, 8);
        l.costs(Some(0.4), 1, 2.0, 2);
        assert_eq!(l.k(), 8);
    }

    #[test]
    fn grows_shrinks_and_switches_off() {
        let mut l = DraftLength::new(DraftLengthParams {
            max: 6,
            min: 2,
            window: 3,
            off_below: 0.1,
            timed: false,
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
