//! The forward pass of a Llama-family decoder, read top to bottom like the paper:
//! embed → for each layer { RMSNorm → Q,K,V (+bias) → RoPE → append K,V to the cache → causal attention
//! → output projection → residual → RMSNorm → SwiGLU feed-forward → residual } → RMSNorm → classifier.
//! Other families' blocks differ in a few marked steps ([`crate::model::arch`]): Gemma 3 scales the
//! embeddings, RMS-normalizes each query and key head before RoPE, normalizes the attention and
//! feed-forward outputs before their residual adds, uses GeGLU, and alternates sliding-window (local)
//! layers with global ones, each kind with its own RoPE base.
//!
//! One entry point serves both phases of the lecture's §2: prefill passes the whole prompt (n tokens)
//! and fills the cache; decode passes one token and appends its k, v. A [`Pass`] also serves
//! verification: logits of chosen rows, and token trees ([`super::pass`]).
//!
//! Two adaptive variants skip work: early exit by entropy leaves after an exit layer
//! ([`super::early_exit`]), and mixture of depths lets a router per layer send a token around the layer
//! ([`Model::routing`], [`super::mixture_of_depths`]); either way a skipped layer still stores the
//! token's K and V, computed from the residual stream it was not changed by ([`Model::propagate_kv`]).

use super::config::{Activation, Config};
use super::exit_adapters::Lens;
use super::kv_cache::{KvCache, KvType, KvView};
use super::loader::ModelFile;
use super::mixture_of_depths::Routing;
use super::pass::{ExitRule, Tree};
pub use super::pass::{Logits, Pass};
use super::weights::{Proj, Weights};
use crate::quant::llm_int8::Int8Weights;
use anyhow::{bail, Result};
use kernels::attention::{attention, attention_kv, attention_tree, AttnShape, TreePaths};
use kernels::ops::{add_assign, geglu, rmsnorm, rmsnorm_pieces, rope, scale, swiglu};
use kernels::{matmul_many, matmul_with, Precision, QMatrix};

pub struct Model {
    pub config: Config,
    pub weights: Weights,
    /// RoPE frequency of each rotated pair, scaling applied; and those of the local (sliding-window)
    /// layers, which may have their own base.
    inv_freq: Vec<f32>,
    inv_freq_local: Vec<f32>,
    /// Queries are multiplied by this before attention (whose kernels scale by 1/sqrt(head_dim)) when
    /// the family scales them otherwise.
    q_rescale: Option<f32>,
    /// How activations meet the weights: `Wide` (the default), `Fast`, `Bf16` or `Exact`
    /// (`kernels::Precision`).
    pub precision: Precision,
    /// LLM.int8() mixed precision for the layer projections (`--int8-outlier-threshold`); `None`: the
    /// `precision` path.
    pub int8: Option<Int8Weights>,
    /// How [`Model::new_state`] (and the serving engine) store keys and values (`--kv-type`).
    pub kv_type: KvType,
    /// `Some(n)`: the classifier computes the logits of the first `n` vocabulary entries only, the
    /// others are `-inf` — a draft model's cheaper head (FR-Spec, Zhao et al. 2025: a draft restricted
    /// to frequent tokens; byte-level BPE vocabularies number their tokens in merge order, most
    /// frequent first). `None`: every entry.
    pub head_rows: Option<usize>,
    /// Mixture of depths (`--mod-routers`, `--mod-capacity`): per layer, the tokens whose router score
    /// is below the threshold skip the layer ([`super::mixture_of_depths`]). `None`: every token runs
    /// every layer.
    pub routing: Option<Routing>,
}

/// A place in the forward pass where an observer sees activations: the input of each group of linear
/// layers (for calibration: GPTQ's Hessians, activation statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Normed input of Q, K, V in layer `l`.
    AttnIn(usize),
    /// Attention output, the input of the output projection.
    AttnOut(usize),
    /// Normed input of the gate and up projections.
    FfnIn(usize),
    /// SwiGLU output, the input of the down projection.
    FfnDown(usize),
    /// Final-norm hidden states of the tokens that get logits, the classifier's input.
    Output,
    /// The residual stream after layer `l` (`n x dim`).
    Residual(usize),
}

/// Activation buffers, grown to the largest batch seen and reused: a decode step allocates nothing.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    logits: Vec<f32>,
    /// The restricted classifier's logits ([`Model::head_rows`]).
    head: Vec<f32>,
    /// One residual-stream row translated by an exit adapter.
    lensed: Vec<f32>,
    /// Layers the last pass ran (fewer than asked when it exited early by entropy).
    layers_run: usize,
    /// Mixture of depths: layer-token pairs the last pass ran (the others skipped), each row's
    /// decision at the current layer, and the skipped rows' residual stream while a layer runs.
    pairs_run: usize,
    pairs_by_layer: Vec<usize>,
    skip: Vec<bool>,
    kept: Vec<f32>,
}

fn fit(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if buf.len() < n {
        buf.resize(n, 0.0);
    }
    &mut buf[..n]
}

/// A sequence being generated: its KV cache and its scratch buffers.
pub struct State {
    pub cache: KvCache,
    scratch: Scratch,
    /// Number of positions that got logits in the last forward pass.
    n_out: usize,
    /// Model width, for [`State::hidden`].
    dim: usize,
    /// Positions of the last pass's tokens, and which of them got logits (reused buffers).
    positions: Vec<usize>,
    out_rows: Vec<usize>,
    /// The last tree pass's layout.
    tree: Tree,
    /// The residual stream of the logit rows after the layers the last pass asked for
    /// ([`Pass::keep_hidden`]), layer after layer in `hidden_layers`' order.
    hidden_at: Vec<f32>,
    hidden_layers: Vec<usize>,
    /// Forward passes run on this state (any number of tokens each).
    passes: usize,
    /// Layer-token pairs run and computed (run or skipped by mixture of depths) over every pass.
    layer_runs: usize,
    layer_slots: usize,
    runs_by_layer: Vec<usize>,
}

impl State {
    /// Forward passes run on this state so far (prefill and decode, one per call of any size).
    pub fn passes(&self) -> usize {
        self.passes
    }

    /// Layer-token pairs the forward passes on this state ran, and how many there were (run or skipped
    /// by mixture of depths: [`Model::routing`]), summed over every pass so far.
    pub fn layer_pairs(&self) -> (usize, usize) {
        (self.layer_runs, self.layer_slots)
    }

    /// Per layer, the tokens that ran it over every pass so far (the others skipped it).
    pub fn runs_by_layer(&self) -> &[usize] {
        &self.runs_by_layer
    }

    /// Layers the last forward pass ran: all it was asked for, or where it exited early by entropy
    /// ([`Pass::exit_by_entropy`]).
    pub fn layers_run(&self) -> usize {
        self.scratch.layers_run
    }

    /// The logits the last forward pass returned (`vocab` values per row that got them).
    pub fn last_logits(&self, vocab: usize) -> &[f32] {
        &self.scratch.logits[..self.n_out * vocab]
    }

    /// Number of positions already in the cache.
    pub fn pos(&self) -> usize {
        self.cache.len()
    }

    /// The residual stream after layer `layer` (before the final norm) of the rows that got logits in
    /// the last pass, `dim` values each in their order, if that pass kept it ([`Pass::keep_hidden`]).
    pub fn hidden_at(&self, layer: usize) -> Option<&[f32]> {
        let i = self.hidden_layers.iter().position(|&l| l == layer)?;
        let size = self.n_out * self.dim;
        self.hidden_at.get(i * size..(i + 1) * size)
    }

    /// Forgets the positions from `len` on (rejected drafts): the next pass starts at `len`, as if
    /// they had never been run ([`KvCache::truncate`]).
    pub fn rewind(&mut self, len: usize) {
        self.cache.truncate(len);
    }

    /// The layout of the last pass's token tree ([`Tree::path`] of a token names the rows to keep
    /// when its branch is accepted: [`KvCache::keep_rows`]).
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The last layer's hidden states (after the final RMSNorm, the classifier's input) of the
    /// positions that got logits in the last forward pass, `dim` values each.
    pub fn hidden(&self) -> &[f32] {
        &self.scratch.xb[..self.n_out * self.dim]
    }
}

impl Model {
    pub fn new(file: &ModelFile) -> Result<Model> {
        let config = file.config.clone();
        config.validate()?;
        let weights = Weights::from_tensors(&config, &file.tensors)?;
        let mut inv_freq = config.rope_inv_freq();
        if let Some(factors) = &weights.rope_freqs {
            for (f, d) in inv_freq.iter_mut().zip(factors) {
                *f /= d;
            }
        }
        let inv_freq_local = match config.block.rope_theta_local {
            Some(_) => config.rope_inv_freq_local(),
            None => inv_freq.clone(),
        };
        let q_rescale = config.block.attn_scale.map(|s| s * (config.head_dim as f32).sqrt());
        Ok(Model {
            config,
            weights,
            inv_freq,
            inv_freq_local,
            q_rescale,
            precision: Precision::default(),
            int8: None,
            kv_type: KvType::default(),
            head_rows: None,
            routing: None,
        })
    }

    /// Switches the layer projections to LLM.int8() with outlier threshold `threshold` (quantizes
    /// every projection's weights to int8 per output channel, once).
    pub fn enable_llm_int8(&mut self, threshold: f32) -> Result<()> {
        self.int8 = Some(Int8Weights::llm_int8(&self.weights, threshold)?);
        Ok(())
    }

    /// `y = W x (+ bias)` for projection `p` of layer `layer`: LLM.int8() when enabled, else `precision`.
    fn proj(&self, layer: usize, p: Proj, x: &[f32], y: &mut [f32], bias: Option<&[f32]>) {
        let lw = &self.weights.layers[layer];
        match &self.int8 {
            Some(i8w) => {
                i8w.linear(layer, p, lw, x, y);
                add_bias(y, bias);
            }
            None => linear(&p.tensor(lw).matrix(), self.precision, x, y, bias),
        }
    }

    /// [`Model::proj`] of several projections of the same input `x`: one parallel loop over all their
    /// rows where the kernels allow it ([`matmul_many`]), the same bits as one call each.
    fn projs<const N: usize>(&self, layer: usize, ps: [ProjOut; N], x: &[f32]) {
        if self.int8.is_some() {
            return ps.into_iter().for_each(|(p, y, bias)| self.proj(layer, p, x, y, bias));
        }
        let lw = &self.weights.layers[layer];
        let ws = ps.each_ref().map(|(p, _, _)| p.tensor(lw).matrix());
        let biases = ps.each_ref().map(|(_, _, b)| *b);
        let mut ys = ps.map(|(_, y, _)| y);
        matmul_many(&ws, x, &mut ys, self.precision);
        for (y, bias) in ys.into_iter().zip(biases) {
            add_bias(y, bias);
        }
    }

    /// A fresh state whose cache holds up to `ctx` positions.
    pub fn new_state(&self, ctx: usize) -> State {
        let c = &self.config;
        State {
            cache: KvCache::new(self.kv_type, c.n_layers, c.kv_dim(), c.head_dim, ctx),
            scratch: Scratch::default(),
            n_out: 0,
            dim: c.dim,
            positions: Vec::new(),
            out_rows: Vec::new(),
            tree: Tree::default(),
            hidden_at: Vec::new(),
            hidden_layers: Vec::new(),
            passes: 0,
            layer_runs: 0,
            layer_slots: 0,
            runs_by_layer: vec![0; c.n_layers],
        }
    }

    /// Runs `tokens` at the next positions of `state` and returns the logits (`vocab` values for
    /// `Logits::Last`, `tokens.len() x vocab` for `Logits::All`, one row per index for `Logits::Rows`).
    pub fn forward<'s>(&self, state: &'s mut State, tokens: &[u32], want: Logits) -> Result<&'s [f32]> {
        self.forward_pass_observed(state, Pass::causal(tokens, want), &mut |_, _| {})
    }

    /// [`Model::forward`], showing `observe` the input of every linear layer ([`Probe`]; `n x width`).
    pub fn forward_observed<'s>(
        &self,
        state: &'s mut State,
        tokens: &[u32],
        want: Logits,
        observe: &mut dyn FnMut(Probe, &[f32]),
    ) -> Result<&'s [f32]> {
        self.forward_pass_observed(state, Pass::causal(tokens, want), observe)
    }

    /// Runs `pass` from the current end of `state`'s cache and returns the logits of its rows that
    /// get them, in their order. Its tokens take the cache rows `pos..pos + n` — in a tree too, whose
    /// tokens sit at depth-based positions ([`super::pass`]).
    pub fn forward_pass<'s>(&self, state: &'s mut State, pass: Pass) -> Result<&'s [f32]> {
        self.forward_pass_observed(state, pass, &mut |_, _| {})
    }

    /// [`Model::forward_pass`], showing `observe` the input of every linear layer.
    pub fn forward_pass_observed<'s>(
        &self,
        state: &'s mut State,
        pass: Pass,
        observe: &mut dyn FnMut(Probe, &[f32]),
    ) -> Result<&'s [f32]> {
        let (tokens, n) = (pass.tokens, pass.tokens.len());
        let pos0 = state.cache.len();
        if n == 0 {
            bail!("forward pass over no tokens");
        }
        if pos0 + n > state.cache.capacity() {
            bail!(
                "context is full: {} positions used + {} new > context size {}",
                pos0,
                n,
                state.cache.capacity()
            );
        }
        state.passes += 1;
        state.positions.clear();
        match pass.tree {
            None => state.positions.extend(pos0..pos0 + n),
            Some(parent) => {
                if parent.len() != n {
                    bail!("a tree of {} parents over {n} tokens", parent.len());
                }
                state.tree.build(parent)?;
                state.positions.extend((0..n).map(|t| pos0 + state.tree.depth(t)));
            }
        }
        state.out_rows.clear();
        pass.logits.rows(n, &mut state.out_rows)?;
        state.n_out = state.out_rows.len();
        let mut kv = ContiguousKv {
            cache: &mut state.cache,
            pos0,
            tree: pass.tree.map(|_| state.tree.paths()),
        };
        let layers = match pass.exit {
            Some(k) if k == 0 || k > self.config.n_layers => {
                bail!(
                    "exit after {k} layers: the model has {} (at least 1)",
                    self.config.n_layers
                )
            }
            Some(k) => k,
            None => self.config.n_layers,
        };
        if let Some(rule) = pass.early_exit {
            if pass.exit.is_some() || n != 1 || state.out_rows.len() != 1 {
                bail!(
                    "early exit by entropy decides for one token: a one-token pass with its logits, without exit_after"
                );
            }
            if let Some(&l) = rule.layers.iter().find(|&&l| l == 0 || l >= self.config.n_layers) {
                bail!(
                    "exit layer {l} is not between 1 and {} (the model has {} layers)",
                    self.config.n_layers - 1,
                    self.config.n_layers
                );
            }
        }
        if let Some(&l) = pass.hidden.iter().find(|&&l| l >= layers) {
            bail!("hidden states after layer {l} asked of a pass through {layers} layers");
        }
        // The residual rows of the logit rows after the asked layers, layer by layer.
        let (dim, kept) = (self.config.dim, &mut state.hidden_at);
        kept.clear();
        let rows = &state.out_rows;
        let mut keep = |p: Probe, x: &[f32]| {
            if let Probe::Residual(l) = p {
                if pass.hidden.contains(&l) {
                    for &r in rows {
                        kept.extend_from_slice(&x[r * dim..(r + 1) * dim]);
                    }
                }
            }
            observe(p, x)
        };
        let (s, pos) = (&mut state.scratch, &state.positions);
        self.forward_exit(s, tokens, pos, &mut kv, rows, layers, pass.early_exit, &mut keep)?;
        // Kept in layer order, each asked layer once.
        state.hidden_layers.clear();
        state.hidden_layers.extend_from_slice(pass.hidden);
        state.hidden_layers.sort_unstable();
        state.hidden_layers.dedup();
        state.layer_runs += state.scratch.pairs_run;
        state.layer_slots += n * self.config.n_layers;
        for (a, b) in state.runs_by_layer.iter_mut().zip(&state.scratch.pairs_by_layer) {
            *a += b;
        }
        state.cache.advance(n);
        Ok(&state.scratch.logits[..state.n_out * self.config.vocab_size])
    }

    /// The transformer over a batch of tokens at `positions` (one per token, any mix of sequences),
    /// with keys and values kept and attended to by `kv`. Returns the logits of the tokens at indices
    /// `out_rows` (`vocab` values each, in that order) and leaves their final-norm hidden states in
    /// `scratch`. Every kernel computes a token's row independently of the other rows, so a token's
    /// results do not depend on what it is batched with.
    pub fn forward_batch<'s>(
        &self,
        s: &'s mut Scratch,
        tokens: &[u32],
        positions: &[usize],
        kv: &mut impl KvStore,
        out_rows: &[usize],
        observe: &mut dyn FnMut(Probe, &[f32]),
    ) -> Result<&'s [f32]> {
        let layers = self.config.n_layers;
        self.forward_layers(s, tokens, positions, kv, out_rows, layers, observe)
    }

    /// [`Model::forward_batch`] through the first `layers` layers only, then the final norm and the
    /// classifier (early exit).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_layers<'s>(
        &self,
        s: &'s mut Scratch,
        tokens: &[u32],
        positions: &[usize],
        kv: &mut impl KvStore,
        out_rows: &[usize],
        layers: usize,
        observe: &mut dyn FnMut(Probe, &[f32]),
    ) -> Result<&'s [f32]> {
        self.forward_exit(s, tokens, positions, kv, out_rows, layers, None, observe)
    }

    /// [`Model::forward_layers`], and with `rule` early exit by entropy ([`super::early_exit`]): after
    /// each exit layer the final norm and classifier; when the entropy of every logit row is below the
    /// threshold the pass ends there, the remaining layers' keys and values propagated from the exit
    /// layer's residual stream. `Scratch::layers_run` says how many layers ran.
    #[allow(clippy::too_many_arguments)]
    fn forward_exit<'s>(
        &self,
        s: &'s mut Scratch,
        tokens: &[u32],
        positions: &[usize],
        kv: &mut impl KvStore,
        out_rows: &[usize],
        layers: usize,
        rule: Option<ExitRule>,
        observe: &mut dyn FnMut(Probe, &[f32]),
    ) -> Result<&'s [f32]> {
        let w = &self.weights;
        w.before_pass(tokens.len());
        self.embed(s, tokens)?;
        s.layers_run = layers;
        s.pairs_run = 0;
        s.pairs_by_layer.clear();
        s.pairs_by_layer.resize(self.config.n_layers, 0);
        let n = tokens.len();
        for layer in 0..layers {
            let before = s.pairs_run;
            // Mixture of depths: a router decides per token whether the layer runs.
            match self.routing.as_ref().filter(|r| r.routes(layer)) {
                Some(r) => self.routed_layer(s, r, layer, positions, kv, observe),
                None => {
                    self.layer(s, layer, positions, kv, observe);
                    s.pairs_run += n;
                }
            }
            s.pairs_by_layer[layer] = s.pairs_run - before;
            observe(Probe::Residual(layer), &s.x[..n * self.config.dim]);
            // Early exit: the shared head after an exit layer; confident enough, the token leaves here.
            let run = layer + 1;
            if let Some(rule) = rule.filter(|r| run < layers && r.threshold > 0.0 && r.layers.contains(&run)) {
                let lens = rule.adapters.and_then(|a| a.at(run));
                self.head(s, out_rows, lens, &mut |_, _| {})?;
                let vocab = self.config.vocab_size;
                let confident = s.logits[..out_rows.len() * vocab]
                    .chunks_exact(vocab)
                    .all(|row| super::early_exit::entropy(row) < rule.threshold as f64);
                if confident {
                    for skipped in run..self.config.n_layers {
                        self.propagate_kv(s, skipped, positions, kv);
                    }
                    s.layers_run = run;
                    break;
                }
            }
        }
        w.first_pass_done();
        if s.layers_run == layers {
            self.head(s, out_rows, None, observe)?;
        }
        Ok(&s.logits[..out_rows.len() * self.config.vocab_size])
    }

    /// Token embeddings (Gemma: times sqrt(dim)) into the residual stream `s.x`.
    fn embed(&self, s: &mut Scratch, tokens: &[u32]) -> Result<()> {
        let c = &self.config;
        let n = tokens.len();
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            bail!("token id {t} is outside the vocabulary of {} tokens", c.vocab_size);
        }
        let x = fit(&mut s.x, n * c.dim);
        let embd = self.weights.token_embd.matrix();
        for (row, &t) in x.chunks_exact_mut(c.dim).zip(tokens) {
            embd.dequantize_row(t as usize, row);
        }
        if let Some(e) = c.block.embed_scale {
            scale(x, e);
        }
        Ok(())
    }

    /// Local (sliding-window) layers may have their own RoPE base.
    fn layer_rope(&self, layer: usize) -> (Option<usize>, &[f32]) {
        match self.config.is_local(layer) {
            true => (self.config.window(layer), &self.inv_freq_local),
            false => (None, &self.inv_freq),
        }
    }

    /// One transformer layer over the residual stream `s.x` of the tokens at `positions`.
    fn layer(
        &self,
        s: &mut Scratch,
        layer: usize,
        positions: &[usize],
        kv: &mut impl KvStore,
        observe: &mut dyn FnMut(Probe, &[f32]),
    ) {
        let c = &self.config;
        let lw = &self.weights.layers[layer];
        let n = positions.len();
        let (dim, q_dim, kv_dim, ffn) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim);
        let (window, inv_freq) = self.layer_rope(layer);
        let shape = AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            window,
        };

        // Attention block.
        let xb = fit(&mut s.xb, n * dim);
        norm_rows(xb, &s.x[..n * dim], &lw.attn_norm, c.rms_eps);
        observe(Probe::AttnIn(layer), xb);
        let (q, k, v) = (
            fit(&mut s.q, n * q_dim),
            fit(&mut s.k, n * kv_dim),
            fit(&mut s.v, n * kv_dim),
        );
        self.projs(
            layer,
            [
                (Proj::Q, q, lw.bq.as_deref()),
                (Proj::K, k, lw.bk.as_deref()),
                (Proj::V, v, lw.bv.as_deref()),
            ],
            xb,
        );
        // QK-norm (Gemma 3): every query and key head RMS-normalized.
        if let (Some(qn), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
            rmsnorm_pieces(q, qn, c.rms_eps);
            rmsnorm_pieces(k, kn, c.rms_eps);
        }
        for (t, &pos) in positions.iter().enumerate() {
            let (qt, kt) = (&mut q[t * q_dim..(t + 1) * q_dim], &mut k[t * kv_dim..(t + 1) * kv_dim]);
            rope(qt, c.head_dim, pos, inv_freq, c.rope_style);
            rope(kt, c.head_dim, pos, inv_freq, c.rope_style);
            kv.store(layer, t, pos, kt, &v[t * kv_dim..(t + 1) * kv_dim]);
        }
        if let Some(r) = self.q_rescale {
            scale(q, r);
        }
        let att = fit(&mut s.att, n * q_dim);
        kv.attend(layer, q, att, shape);
        observe(Probe::AttnOut(layer), att);
        self.proj(layer, Proj::O, att, xb, None);
        if let Some(pn) = &lw.post_attn_norm {
            rmsnorm_pieces(xb, pn, c.rms_eps);
        }
        add_assign(&mut s.x[..n * dim], xb);

        // Feed-forward block.
        norm_rows(xb, &s.x[..n * dim], &lw.ffn_norm, c.rms_eps);
        observe(Probe::FfnIn(layer), xb);
        let (gate, up) = (fit(&mut s.gate, n * ffn), fit(&mut s.up, n * ffn));
        self.projs(layer, [(Proj::Gate, gate, None), (Proj::Up, up, None)], xb);
        match c.block.activation {
            Activation::Silu => swiglu(gate, up),
            Activation::GeluTanh => geglu(gate, up),
        }
        observe(Probe::FfnDown(layer), gate);
        self.proj(layer, Proj::Down, gate, xb, None);
        if let Some(pn) = &lw.post_ffn_norm {
            rmsnorm_pieces(xb, pn, c.rms_eps);
        }
        add_assign(&mut s.x[..n * dim], xb);
    }

    /// Mixture of depths at `layer` ([`super::mixture_of_depths`]): the rows whose router score is below
    /// the layer's threshold skip it — their residual stream passes through unchanged, and the layer
    /// stores their K and V computed from it ([`Model::propagate_kv`]). A pass whose rows decide
    /// differently runs the layer for every row and gives the skipped ones their residual stream back:
    /// their K and V come from the same input either way.
    fn routed_layer(
        &self,
        s: &mut Scratch,
        r: &Routing,
        layer: usize,
        positions: &[usize],
        kv: &mut impl KvStore,
        observe: &mut dyn FnMut(Probe, &[f32]),
    ) {
        let (n, dim) = (positions.len(), self.config.dim);
        s.skip.clear();
        s.skip
            .extend(s.x[..n * dim].chunks_exact(dim).map(|x| r.skips(layer, x)));
        let skipped = s.skip.iter().filter(|&&k| k).count();
        s.pairs_run += n - skipped;
        if skipped == 0 {
            self.layer(s, layer, positions, kv, observe);
        } else if skipped == n {
            self.propagate_kv(s, layer, positions, kv);
        } else {
            s.kept.clear();
            for (t, _) in s.skip.iter().enumerate().filter(|p| *p.1) {
                s.kept.extend_from_slice(&s.x[t * dim..(t + 1) * dim]);
            }
            self.layer(s, layer, positions, kv, observe);
            let mut rows = s.kept.chunks_exact(dim);
            for (t, _) in s.skip.iter().enumerate().filter(|p| *p.1) {
                s.x[t * dim..(t + 1) * dim].copy_from_slice(rows.next().expect("a kept row per skipped one"));
            }
        }
    }

    /// The keys and values `layer` stores for tokens that exited before it (CALM's state propagation):
    /// the residual stream `s.x` as the layer's input, through its attention norm, K and V projections,
    /// K-norm and RoPE. Leaves `s.xb` (the exit's final-norm hidden states) as it is.
    fn propagate_kv(&self, s: &mut Scratch, layer: usize, positions: &[usize], kv: &mut impl KvStore) {
        let c = &self.config;
        let lw = &self.weights.layers[layer];
        let n = positions.len();
        let (dim, kv_dim) = (c.dim, c.kv_dim());
        let (_, inv_freq) = self.layer_rope(layer);
        let xn = fit(&mut s.up, n * dim);
        norm_rows(xn, &s.x[..n * dim], &lw.attn_norm, c.rms_eps);
        let (k, v) = (fit(&mut s.k, n * kv_dim), fit(&mut s.v, n * kv_dim));
        self.proj(layer, Proj::K, xn, k, lw.bk.as_deref());
        self.proj(layer, Proj::V, xn, v, lw.bv.as_deref());
        if let (Some(_), Some(kn)) = (&lw.q_norm, &lw.k_norm) {
            rmsnorm_pieces(k, kn, c.rms_eps);
        }
        for (t, &pos) in positions.iter().enumerate() {
            let kt = &mut k[t * kv_dim..(t + 1) * kv_dim];
            rope(kt, c.head_dim, pos, inv_freq, c.rope_style);
            kv.store(layer, t, pos, kt, &v[t * kv_dim..(t + 1) * kv_dim]);
        }
    }

    /// Final norm and classifier of the tokens at `out_rows` of the residual stream, into `s.logits`
    /// (`vocab` values each) and their final-norm hidden states into `s.xb`; nothing for no rows (a pass
    /// that only fills the cache).
    /// The final norm and classifier on the residual stream's rows `out_rows`, each first translated by
    /// `lens` when given (an early exit's trained adapter).
    fn head(
        &self,
        s: &mut Scratch,
        out_rows: &[usize],
        lens: Option<Lens>,
        observe: &mut dyn FnMut(Probe, &[f32]),
    ) -> Result<()> {
        let c = &self.config;
        let w = &self.weights;
        let dim = c.dim;
        let m = out_rows.len();
        if m == 0 {
            return Ok(());
        }
        let xb = fit(&mut s.xb, m * dim);
        let lensed = fit(&mut s.lensed, dim);
        for (o, &r) in xb.chunks_exact_mut(dim).zip(out_rows) {
            let row = &s.x[r * dim..(r + 1) * dim];
            match lens {
                Some(l) => {
                    l.apply(row, lensed);
                    rmsnorm(o, lensed, &w.output_norm, c.rms_eps);
                }
                None => rmsnorm(o, row, &w.output_norm, c.rms_eps),
            }
        }
        observe(Probe::Output, xb);
        let logits = fit(&mut s.logits, m * c.vocab_size);
        let classifier = self.precision.for_classifier();
        // NaN or infinity in the weights or activations ends here: an error, never text sampled from it.
        let (computed, n) = match self.head_rows.filter(|&n| n < c.vocab_size) {
            None => {
                linear(&w.output.matrix(), classifier, xb, logits, None);
                (&*logits, c.vocab_size)
            }
            Some(n) => {
                let head = fit(&mut s.head, m * n);
                linear(&w.output.matrix().first_rows(n), classifier, xb, head, None);
                for (row, part) in logits.chunks_exact_mut(c.vocab_size).zip(head.chunks_exact(n)) {
                    row[..n].copy_from_slice(part);
                    row[n..].fill(f32::NEG_INFINITY);
                }
                (&*head, n)
            }
        };
        if let Some(i) = computed.iter().position(|v| !v.is_finite()) {
            bail!(
                "the model computed a non-finite logit ({} for token {} of output row {}): NaN or infinity in its weights or activations (`bushu info --check-tensors` looks for them in the file)",
                computed[i],
                i % n,
                i / n
            );
        }
        Ok(())
    }

    /// The final norm and classifier applied to residual-stream rows `x` (`dim` values each, e.g.
    /// [`State::hidden_at`] of an intermediate layer), each first translated by `lens` when given (a
    /// trained exit adapter): the exit's logits, `vocab` per row.
    pub fn exit_logits(&self, x: &[f32], lens: Option<Lens>) -> Result<Vec<f32>> {
        let dim = self.config.dim;
        if x.is_empty() || !x.len().is_multiple_of(dim) {
            bail!("exit_logits: {} values are not whole rows of {dim}", x.len());
        }
        let mut s = Scratch::default();
        fit(&mut s.x, x.len()).copy_from_slice(x);
        let rows: Vec<usize> = (0..x.len() / dim).collect();
        self.head(&mut s, &rows, lens, &mut |_, _| {})?;
        Ok(s.logits[..rows.len() * self.config.vocab_size].to_vec())
    }
}

impl Model {
    /// The final norm of the residual rows `x` (`dim` values each) into `out`, as a pass computes it
    /// before the classifier ([`State::hidden`]).
    pub fn final_norm(&self, x: &[f32], out: &mut [f32]) {
        norm_rows(out, x, &self.weights.output_norm, self.config.rms_eps);
    }

    /// The classifier applied to `x` (rows of `dim` values, e.g. final-norm hidden states passed through
    /// extra heads), `vocab` logits per row into `out`, at the precision a forward pass uses for it.
    pub fn classify(&self, x: &[f32], out: &mut [f32]) {
        let classifier = self.precision.for_classifier();
        linear(&self.weights.output.matrix(), classifier, x, out, None);
    }

    /// The classifier's first `n` rows (at most the vocabulary) applied to `x`: the logits of token ids
    /// `0..n` only, `n` per row into `out` — a cheaper head for drafting (FR-Spec; see [`Model::head_rows`]).
    /// Each value is the one [`Model::classify`] computes for that row (to the kernels' rounding).
    pub fn classify_first(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let classifier = self.precision.for_classifier();
        let n = n.min(self.config.vocab_size);
        linear(&self.weights.output.matrix().first_rows(n), classifier, x, out, None);
    }
}

/// Where a forward pass keeps the keys and values of its tokens, and how their queries attend to
/// what is kept: a contiguous [`KvCache`] for one sequence here, a paged cache in the serving engine.
pub trait KvStore {
    /// Keeps token `token`'s key and value (RoPE applied at position `pos`) of `layer`. The store
    /// picks the row: a token's position is not its row in a token tree.
    fn store(&mut self, layer: usize, token: usize, pos: usize, k: &[f32], v: &[f32]);
    /// Attention of all the pass's queries `q` in `layer`, written to `out`: causal, or as the store's
    /// token tree says.
    fn attend(&mut self, layer: usize, q: &[f32], out: &mut [f32], shape: AttnShape);
}

/// One sequence's contiguous cache, the pass's tokens in rows `pos0..` (at positions `pos0..` too,
/// unless they form the tree `tree`).
struct ContiguousKv<'a> {
    cache: &'a mut KvCache,
    pos0: usize,
    tree: Option<TreePaths<'a>>,
}

impl KvStore for ContiguousKv<'_> {
    fn store(&mut self, layer: usize, token: usize, _pos: usize, k: &[f32], v: &[f32]) {
        self.cache.store(layer, self.pos0 + token, k, v);
    }

    fn attend(&mut self, layer: usize, q: &[f32], out: &mut [f32], shape: AttnShape) {
        let pos0 = self.pos0;
        match (self.cache.layers[layer].view(), self.tree) {
            (KvView::F32 { k, v }, None) => attention(q, k, v, out, shape, pos0),
            (KvView::Int8 { k, v }, None) => attention_kv(q, &k, &v, out, shape, pos0),
            (KvView::F32 { k, v }, Some(t)) => attention_tree(q, k, v, out, shape, pos0, t),
            (KvView::Int8 { k, v }, Some(t)) => attention_tree(q, &k, &v, out, shape, pos0, t),
        }
    }
}

/// RMSNorm of each `weight.len()`-sized row of `x` into `out`.
fn norm_rows(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let d = weight.len();
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        rmsnorm(o, xr, weight, eps);
    }
}

/// A projection, its output and its bias, for [`Model::projs`].
type ProjOut<'a> = (Proj, &'a mut [f32], Option<&'a [f32]>);

/// `y = W x (+ bias)` for every token in `x`.
fn linear(w: &QMatrix, precision: Precision, x: &[f32], y: &mut [f32], bias: Option<&[f32]>) {
    matmul_with(w, x, y, precision);
    add_bias(y, bias);
}

/// Adds `bias` to every row of `y`.
fn add_bias(y: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in y.chunks_exact_mut(b.len()) {
            add_assign(row, b);
        }
    }
}
