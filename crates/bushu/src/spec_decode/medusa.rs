//! Medusa heads (Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with Multiple
//! Decoding Heads"): `K` small heads on the target's last hidden state `h_t` (after the final norm, the
//! classifier's input) guess the tokens after the next one — head `i` (1-based) guesses token
//! `t + i + 1` as `LM_head(h + SiLU(W_i h + b_i))` with the model's own (frozen) classifier. Trained by
//! `bushu train-medusa` (crates/train/src/medusa.rs), stored in a GGUF side file.
//!
//! As a [`Proposer`]: the hidden state of the row that chose the sequence's last token (handed over by
//! the decoder after every pass: [`Proposer::hidden`]) gives every head's distribution; the drafts are a
//! token tree grown best-first from the heads' top-k — a node at depth `d` has head `d`'s candidates as
//! children, and the next node added is the one whose path has the largest product of head
//! probabilities, up to a budget of `nodes` nodes (the heads do not condition on the path, so this is
//! Medusa's static "sparse tree" picked per step from the actual head probabilities). The target
//! verifies the whole tree in one pass ([`super::verify::verify_tree`]): greedy output is plain greedy
//! decoding's, token for token. When the target samples, the tree is verified with **typical
//! acceptance** ([`Typical`], [`super::verify::verify_tree_typical`]) — a lossy rule: the output no
//! longer has the target's distribution exactly (docs/SPECULATIVE.md measures the cost).
//!
//! **A cheaper classifier (FR-Spec).** On a model with a large vocabulary each head's classifier product
//! costs as much as the model's own LM head (SmolLM2: 49,152 x 576 per head). Heads may project onto
//! the first `N` token ids only ([`MedusaHeads::vocab`]; `bushu train-medusa --head-vocab N` stores it,
//! `--medusa-vocab N` overrides it): byte-level BPE vocabularies number their tokens in merge order, most
//! frequent first, so the drafts lose little and the heads cost `N / vocab` of it. Only the drafts
//! change: verification uses the model's whole classifier, so greedy output stays plain greedy output.
//!
//! The heads file names the model it was trained for ([`BaseIdentity`]: architecture, width,
//! vocabulary size and a hash of every token's text and bytes); loading it for another model is an error.

use super::proposer::{Proposal, Proposer};
use crate::formats::gguf::Value;
use crate::formats::gguf_writer::GgufWriter;
use crate::formats::side_file;
use crate::model::llama::State;
use crate::model::{Model, ModelFile};
use crate::sampling::Context;
use anyhow::{bail, Result};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::Path;

/// At most this many heads in a file (`bushu train-medusa --heads`).
pub const MAX_HEADS: usize = 8;

/// Candidates per head the tree is grown from.
pub const TOP_K: usize = 8;

/// What a heads file says about the model it was trained for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseIdentity {
    pub architecture: String,
    pub n_embd: usize,
    pub vocab_size: usize,
    /// FNV-1a (64 bits) over every token's text and bytes, in id order.
    pub tokens_hash: u64,
}

impl BaseIdentity {
    /// The identity of `file`'s model.
    pub fn of(file: &ModelFile) -> BaseIdentity {
        let t = &file.tokenizer;
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h ^= b as u64;
                h = h.wrapping_mul(0x100_0000_01b3);
            }
        };
        for id in 0..t.vocab_size() as u32 {
            eat(t.token_text(id).unwrap_or("").as_bytes());
            eat(&[0xff]);
            eat(t.id_to_bytes(id));
            eat(&[0xfe]);
        }
        BaseIdentity {
            architecture: file.config.arch.clone(),
            n_embd: file.config.dim,
            vocab_size: file.config.vocab_size,
            tokens_hash: h,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}, n_embd {}, vocabulary {} tokens, token hash {:016x}",
            self.architecture, self.n_embd, self.vocab_size, self.tokens_hash
        )
    }
}

/// A set of Medusa heads: per head a `dim x dim` matrix (row-major, output by input) and a bias.
#[derive(Clone, Debug, PartialEq)]
pub struct MedusaHeads {
    pub dim: usize,
    pub w: Vec<Vec<f32>>,
    pub b: Vec<Vec<f32>>,
    /// `Some(n)`: the heads project onto token ids `0..n` only (FR-Spec, see the module documentation);
    /// `None`: onto the whole vocabulary.
    pub vocab: Option<usize>,
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

impl MedusaHeads {
    /// Heads from their weights; an error unless there are 1 to [`MAX_HEADS`] of `dim x dim` and `dim`.
    pub fn new(dim: usize, w: Vec<Vec<f32>>, b: Vec<Vec<f32>>) -> Result<MedusaHeads> {
        if w.is_empty() || w.len() > MAX_HEADS || w.len() != b.len() {
            bail!(
                "Medusa heads: {} matrices and {} biases (1 to {MAX_HEADS} heads)",
                w.len(),
                b.len()
            );
        }
        if w.iter().any(|m| m.len() != dim * dim) || b.iter().any(|v| v.len() != dim) {
            bail!("Medusa heads: every head must be {dim} x {dim} with a bias of {dim}");
        }
        Ok(MedusaHeads { dim, w, b, vocab: None })
    }

    /// These heads projecting onto the first `n` token ids only (`None`: the whole vocabulary); an error
    /// for `Some(0)`.
    pub fn with_vocab(mut self, n: Option<usize>) -> Result<MedusaHeads> {
        if n == Some(0) {
            bail!("the Medusa heads' vocabulary must be at least 1 token (0 is not a restriction)");
        }
        self.vocab = n;
        Ok(self)
    }

    /// The number of token ids the heads score on `model`: [`MedusaHeads::vocab`], at most the model's
    /// vocabulary.
    pub fn rows_on(&self, model: &Model) -> usize {
        let v = model.config.vocab_size;
        self.vocab.map_or(v, |n| n.min(v))
    }

    /// `k` heads with `W = 0`, `b = 0` (where training starts: every head says what the LM head says).
    pub fn zeros(dim: usize, k: usize) -> Result<MedusaHeads> {
        MedusaHeads::new(dim, vec![vec![0.0; dim * dim]; k], vec![vec![0.0; dim]; k])
    }

    pub fn len(&self) -> usize {
        self.w.len()
    }

    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }

    /// Head `i`'s residual block on `h`: `h + SiLU(W_i h + b_i)`, into `out`. The dot products run in
    /// eight independent lanes (the compiler vectorizes them; a single running sum it may not reorder).
    pub fn residual(&self, i: usize, h: &[f32], out: &mut [f32]) {
        let (d, w, b) = (self.dim, &self.w[i], &self.b[i]);
        for (r, o) in out.iter_mut().enumerate().take(d) {
            let z = dot(&w[r * d..(r + 1) * d], &h[..d]) + b[r];
            *o = h[r] + silu(z);
        }
    }

    /// The first `n` heads' residual blocks on `h`, `n x dim`.
    fn residuals(&self, h: &[f32], n: usize) -> Vec<f32> {
        let d = self.dim;
        let mut u = vec![0.0; n * d];
        for (i, row) in u.chunks_exact_mut(d).enumerate() {
            self.residual(i, h, row);
        }
        u
    }

    /// The logits of the first `n` heads on the final-norm hidden state `h`, `n x vocab` into `out`:
    /// the residual blocks, then `model`'s classifier over the `n` rows in one product. With a restricted
    /// vocabulary ([`MedusaHeads::vocab`]) the entries past it are `-inf`.
    pub fn logits(&self, model: &Model, h: &[f32], n: usize, out: &mut Vec<f32>) {
        let vocab = model.config.vocab_size;
        let rows = self.rows_on(model);
        let mut part = Vec::new();
        self.scores(model, h, n, &mut part);
        out.resize(n * vocab, 0.0);
        for (o, p) in out.chunks_exact_mut(vocab).zip(part.chunks_exact(rows)) {
            o[..rows].copy_from_slice(p);
            o[rows..].fill(f32::NEG_INFINITY);
        }
    }

    /// The logits of the first `n` heads on `h` over the token ids they score only
    /// ([`MedusaHeads::rows_on`] per head, `n x rows` into `out`): what the proposer uses — with a
    /// restricted vocabulary, a classifier product over its rows only.
    pub fn scores(&self, model: &Model, h: &[f32], n: usize, out: &mut Vec<f32>) {
        let rows = self.rows_on(model);
        let u = self.residuals(h, n);
        out.resize(n * rows, 0.0);
        if rows == model.config.vocab_size {
            model.classify(&u, &mut out[..n * rows]);
        } else {
            model.classify_first(&u, rows, &mut out[..n * rows]);
        }
    }

    /// The GGUF image of the heads, naming `base` as the model they are for.
    pub fn to_gguf(&self, base: &BaseIdentity) -> GgufWriter {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("medusa".into()));
        w.set("medusa.head_count", Value::U32(self.len() as u32));
        w.set("medusa.base.architecture", Value::String(base.architecture.clone()));
        w.set("medusa.base.embedding_length", Value::U32(base.n_embd as u32));
        w.set("medusa.base.vocab_size", Value::U32(base.vocab_size as u32));
        w.set(
            "medusa.base.tokens_hash",
            Value::String(format!("{:016x}", base.tokens_hash)),
        );
        if let Some(n) = self.vocab {
            w.set("medusa.vocab_rows", Value::U32(n as u32));
        }
        for i in 0..self.len() {
            w.add_f32(&format!("medusa.{i}.weight"), vec![self.dim, self.dim], &self.w[i]);
            w.add_f32(&format!("medusa.{i}.bias"), vec![self.dim], &self.b[i]);
        }
        w
    }

    /// Reads the heads file at `path` for the model of `base`; one clear error when it is not a heads
    /// file or was trained for another model.
    pub fn load(path: &Path, base: &ModelFile) -> Result<MedusaHeads> {
        let g = side_file::open(
            path,
            "the Medusa heads file",
            "--medusa takes the heads file bushu train-medusa writes",
        )?;
        let Some(k) = g.get_i64("medusa.head_count") else {
            bail!(
                "{} is not a Medusa heads file (no medusa.head_count; bushu train-medusa writes them)",
                path.display()
            );
        };
        let str_of = |key: &str| g.get_str(key).unwrap_or("?").to_owned();
        let int_of = |key: &str| g.get_i64(key).unwrap_or(-1).max(0) as usize;
        let theirs = BaseIdentity {
            architecture: str_of("medusa.base.architecture"),
            n_embd: int_of("medusa.base.embedding_length"),
            vocab_size: int_of("medusa.base.vocab_size"),
            tokens_hash: u64::from_str_radix(&str_of("medusa.base.tokens_hash"), 16).unwrap_or(0),
        };
        let ours = BaseIdentity::of(base);
        if theirs != ours {
            bail!(
                "the Medusa heads in {} were trained for another model ({}), not this one ({})",
                path.display(),
                theirs.describe(),
                ours.describe()
            );
        }
        if k < 1 || k as usize > MAX_HEADS {
            bail!("{}: {k} Medusa heads (1 to {MAX_HEADS})", path.display());
        }
        let dim = ours.n_embd;
        let tensor = |name: &str, numel: usize| side_file::f32_tensor(&g, path, name, numel);
        let (mut w, mut b) = (Vec::new(), Vec::new());
        for i in 0..k as usize {
            w.push(tensor(&format!("medusa.{i}.weight"), dim * dim)?);
            b.push(tensor(&format!("medusa.{i}.bias"), dim)?);
        }
        let vocab = match g.get_i64("medusa.vocab_rows") {
            None => None,
            Some(n) if n >= 1 => Some(n as usize),
            Some(n) => bail!("{}: medusa.vocab_rows is {n} (at least 1)", path.display()),
        };
        MedusaHeads::new(dim, w, b)?.with_vocab(vocab)
    }
}

/// `a · b` summed in eight lanes (vectorizable).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Medusa's typical acceptance: a candidate `x` is accepted where the target's (processed) distribution
/// `p` gives it `p(x) > min(epsilon, delta · exp(−H(p)))`, `H` the entropy in nats — likely enough
/// given how sure the target is. Lossy: the output is not distributed as the target's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Typical {
    /// The hard threshold ε (Medusa's `posterior_threshold`, 0.09).
    pub epsilon: f32,
    /// The entropy-scaled threshold δ (Medusa's `posterior_alpha`, 0.3).
    pub delta: f32,
}

impl Default for Typical {
    fn default() -> Typical {
        Typical {
            epsilon: 0.09,
            delta: 0.3,
        }
    }
}

impl Typical {
    pub fn validate(&self) -> Result<()> {
        if !(self.epsilon > 0.0 && self.epsilon <= 1.0) {
            bail!("--medusa-epsilon must be in (0, 1] (got {})", self.epsilon);
        }
        if !(self.delta > 0.0 && self.delta <= 1.0) {
            bail!("--medusa-delta must be in (0, 1] (got {})", self.delta);
        }
        Ok(())
    }

    /// The acceptance threshold for distribution `p`: `min(ε, δ · exp(−H(p)))`.
    pub fn threshold(&self, p: &[f32]) -> f32 {
        let h: f64 = p
            .iter()
            .filter(|&&x| x > 0.0)
            .map(|&x| -(x as f64) * (x as f64).ln())
            .sum();
        (self.epsilon as f64).min(self.delta as f64 * (-h).exp()) as f32
    }

    /// Whether `x` is accepted under `p`.
    pub fn accepts(&self, p: &[f32], x: u32) -> bool {
        p[x as usize] > self.threshold(p)
    }
}

/// A node waiting to join the tree: its path probability, parent (`None`: the root), depth (0-based:
/// the head) and rank among the head's candidates.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    prob: f64,
    parent: Option<usize>,
    depth: usize,
    rank: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Candidate {
    // Largest probability first; ties: shallower, then earlier parent, then better rank (deterministic).
    fn cmp(&self, o: &Self) -> Ordering {
        self.prob
            .total_cmp(&o.prob)
            .then(o.depth.cmp(&self.depth))
            .then(o.parent.cmp(&self.parent))
            .then(o.rank.cmp(&self.rank))
    }
}

/// The tree of at most `nodes` nodes grown best-first from `cands[d]` (head `d`'s candidates, best
/// first, with their probabilities): tokens and parents as in [`Proposal`].
pub fn grow_tree(cands: &[Vec<(u32, f32)>], nodes: usize) -> Proposal {
    let mut p = Proposal::default();
    let mut prob: Vec<f64> = Vec::new();
    let mut depth: Vec<usize> = Vec::new();
    let mut heap = BinaryHeap::new();
    if let Some(&(_, q)) = cands.first().and_then(|c| c.first()) {
        heap.push(Candidate {
            prob: q as f64,
            parent: None,
            depth: 0,
            rank: 0,
        });
    }
    while p.tokens.len() < nodes {
        let Some(c) = heap.pop() else { break };
        let (tok, _) = cands[c.depth][c.rank];
        let me = p.tokens.len();
        p.tokens.push(tok);
        p.parent.push(c.parent);
        prob.push(c.prob);
        depth.push(c.depth);
        let base = c.parent.map_or(1.0, |q| prob[q]);
        if let Some(&(_, q)) = cands[c.depth].get(c.rank + 1) {
            heap.push(Candidate {
                prob: base * q as f64,
                rank: c.rank + 1,
                ..c
            });
        }
        if let Some(&(_, q)) = cands.get(c.depth + 1).and_then(|h| h.first()) {
            heap.push(Candidate {
                prob: c.prob * q as f64,
                parent: Some(me),
                depth: c.depth + 1,
                rank: 0,
            });
        }
    }
    p
}

/// The `k` most likely tokens of `logits` with their softmax probabilities, best first.
pub fn top_k_probs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // f32 exponentials (half the cost of f64 ones over a 49k vocabulary, every step), summed in f64.
    let z: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let by = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let k = k.min(idx.len());
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by);
        idx.truncate(k);
    }
    idx.sort_unstable_by(by);
    idx.into_iter()
        .map(|i| (i, (((logits[i as usize] - max) as f64).exp() / z) as f32))
        .collect()
}

/// The Medusa proposer: a tree of at most `nodes` drafts from the heads, each step.
pub struct Medusa<'a> {
    heads: &'a MedusaHeads,
    nodes: usize,
    typical: Option<Typical>,
    /// The final-norm hidden state of the row that chose the sequence's last token.
    hidden: Vec<f32>,
    logits: Vec<f32>,
}

impl<'a> Medusa<'a> {
    /// Drafts trees of up to `nodes` nodes (≥ 1); `typical`: the acceptance rule when the target samples.
    pub fn new(heads: &'a MedusaHeads, nodes: usize, typical: Option<Typical>) -> Result<Medusa<'a>> {
        if nodes == 0 {
            bail!("--medusa-tree must be at least 1 (the number of draft nodes per step)");
        }
        if let Some(t) = typical {
            t.validate()?;
        }
        Ok(Medusa {
            heads,
            nodes,
            typical,
            hidden: Vec::new(),
            logits: Vec::new(),
        })
    }
}

impl Proposer for Medusa<'_> {
    fn name(&self) -> &'static str {
        "medusa"
    }

    fn propose(&mut self, _seq: &Context, _k: usize, target: &Model, _state: &mut State) -> Result<Proposal> {
        // The tree's depth is the number of heads (the adaptive draft length does not apply: the heads
        // cost the same whatever the depth).
        if self.hidden.len() != self.heads.dim {
            return Ok(Proposal::default());
        }
        let (k, rows) = (self.heads.len(), self.heads.rows_on(target));
        self.heads.scores(target, &self.hidden, k, &mut self.logits);
        let cands: Vec<Vec<(u32, f32)>> = self
            .logits
            .chunks_exact(rows)
            .map(|row| top_k_probs(row, TOP_K.min(self.nodes)))
            .collect();
        Ok(grow_tree(&cands, self.nodes))
    }

    fn hidden(&mut self, h: &[f32]) {
        self.hidden.clear();
        self.hidden.extend_from_slice(h);
    }

    fn typical(&self) -> Option<Typical> {
        self.typical
    }

    fn accepted(&mut self, _n: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typical_rule_on_a_hand_made_distribution() {
        let t = Typical::default();
        // p = (0.5, 0.3, 0.2): H = 1.0297 nats, δ·e^−H = 0.3 · 0.3571 = 0.1071 > ε: threshold ε = 0.09.
        let p = [0.5, 0.3, 0.2, 0.0];
        assert!((t.threshold(&p) - 0.09).abs() < 1e-6);
        assert!(t.accepts(&p, 0) && t.accepts(&p, 2) && !t.accepts(&p, 3));
        // Flat over 8 tokens: H = ln 8, δ·e^−H = 0.3 / 8 = 0.0375 < ε; each has 0.125 > 0.0375.
        let flat = [0.125f32; 8];
        assert!((t.threshold(&flat) - 0.0375).abs() < 1e-6);
        assert!(t.accepts(&flat, 5));
        // Sharper: 0.97 and 0.03; H = 0.1347, δ·e^−H = 0.2622, threshold 0.09: 0.03 is refused.
        let sharp = [0.97, 0.03];
        assert!((t.threshold(&sharp) - 0.09).abs() < 1e-6);
        assert!(t.accepts(&sharp, 0) && !t.accepts(&sharp, 1));
        let strict = Typical {
            epsilon: 0.5,
            delta: 1.0,
        };
        // threshold min(0.5, e^−1.0297 = 0.3571): 0.3 is refused, 0.5 accepted.
        assert!(!strict.accepts(&p, 1) && strict.accepts(&p, 0));
        assert!(Typical {
            epsilon: 0.0,
            delta: 0.3
        }
        .validate()
        .is_err());
        assert!(Typical {
            epsilon: 0.1,
            delta: 1.5
        }
        .validate()
        .is_err());
    }

    #[test]
    fn tree_grows_best_first() {
        // Head 1: a 0.6, b 0.3; head 2: c 0.5, d 0.4; head 3: e 0.9.
        let cands = vec![vec![(10, 0.6), (11, 0.3)], vec![(20, 0.5), (21, 0.4)], vec![(30, 0.9)]];
        // Path probabilities: a .6; b .3 and a-c .3 (the shallower first); a-c-e .27; a-d .24; b-c .15.
        let p = grow_tree(&cands, 5);
        assert_eq!(p.tokens, [10, 11, 20, 30, 21]);
        assert_eq!(p.parent, [None, None, Some(0), Some(2), Some(0)]);
        assert_eq!(p.depth(), 3);
        assert_eq!(grow_tree(&cands, 1).tokens, [10]);
        assert!(grow_tree(&[], 4).is_empty());
        // The budget bounds it; without one, every path: 2 + 4 + 4 nodes.
        assert_eq!(grow_tree(&cands, 100).len(), 10);
    }

    #[test]
    fn top_k_probs_are_softmax() {
        let l = [0.0f32, 2.0, 1.0];
        let t = top_k_probs(&l, 2);
        let z = 1.0 + 2f32.exp() + 1f32.exp();
        assert_eq!((t[0].0, t[1].0), (1, 2));
        assert!((t[0].1 - 2f32.exp() / z).abs() < 1e-6 && (t[1].1 - 1f32.exp() / z).abs() < 1e-6);
    }
}
