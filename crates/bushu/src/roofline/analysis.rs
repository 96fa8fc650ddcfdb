//! FLOPs, bytes moved and arithmetic intensity of a Llama block (lecture §3), per operation and per op
//! family (linear layers, attention, others), for prefill and for decode.
//!
//! # Counting assumptions (the defaults, which reproduce the lecture's numbers exactly)
//!
//! The lecture states its memory costs as `O(...)` and evaluates the expressions inside as they stand.
//! The assumptions below turn those `O(...)` into exact byte counts that give the same numbers:
//!
//! - **FLOPs**: one multiply-add is 2 FLOPs; a matrix product `n x m` by `m x p` is `2nmp`. Attention is
//!   two products of `2 B Tq Tk N D` each plus `4 B Tq Tk N` for scaling and softmax (lecture:
//!   `2 x 2BT²ND + 4BT²N`). No causal halving (the lecture counts the full `T x T`); `causal` counts
//!   only the `Tq Tk - Tq(Tq-1)/2` query-key pairs a causal mask keeps (used for `--run`).
//! - **Element size**: activations, the K/V cache and weights are 2 bytes (BF16, the A100's type), unless
//!   the weight/activation/KV dtypes say otherwise (`Q4_0` is 18 bytes per 32 weights = 0.5625 byte, ...).
//! - **Linear layer** `X (M x K) · W (K x N)`: bytes = read `X` + read `W`. The output write is *not*
//!   counted, as in the lecture's `O(BTH + H²)`. With 2-byte elements, `M = BT = 8192`, `K = N = H = 4096`:
//!   `2·8192·4096² / (2·(8192·4096 + 4096²)) = 1 / (1/4096 + 1/8192) = 2730.67`. With `count_outputs` the
//!   output is counted too and the intensity takes the full matrix-product form `1 / (1/n + 1/m + 1/p)`
//!   ([`matmul_intensity`]).
//! - **Attention**: bytes = read K and V once (`2 x 2 B Tk Nkv D`) + the `B N Tq Tk` score matrix written
//!   once and read once (`2 x 2 B N Tq Tk`); Q and the output are not counted (the lecture keeps a single
//!   `BTND` term). Prefill (`Tq = Tk = T`): `4BT²N(D+1) / 4(BTND + BT²N) = (1 + 1/D) / (1/D + 1/T) = 114.67`.
//!   Decode (`Tq = 1`, `Tk = T`): `4BTN(D+1) / 4(BTND + BTN) = 1.0` exactly.
//! - **FlashAttention variant**: the score matrix never reaches memory, so its term disappears; with a
//!   query block size `Br > 0` the K/V are read once per query block (`ceil(Tq/Br)` times), with `Br = 0`
//!   (default) once. Same FLOPs.
//! - **Others** (RMSNorm, RoPE, residual adds, SwiGLU; softmax is inside attention): FLOPs per element
//!   RMSNorm 4 (square, accumulate, normalise, weight), RoPE 3 (4 mul + 2 add per pair), residual 1,
//!   SwiGLU 5 (`g / (1 + exp(-g)) · u`: neg, exp, add, div, mul); bytes = the inputs read (norm weight
//!   included), outputs not counted, as for the linear layers. For a block with `F = H`, `Nkv = N`:
//!   `21H / 20H = 1.05` per token, the lecture's "about 1".
//! - **Decode**: one new token per sequence (`T` becomes 1) attending over `T` cached positions.
//! - **Shapes**: `--ffn` defaults to `H` and `--head-dim` to `H/N`, so every projection is `H x H` as in
//!   the lecture's `X · W`. Each projection reads its input itself (no QKV or gate/up fusion).
//! - **Model level** (only when a vocabulary is given, e.g. from a model file): the final RMSNorm and the
//!   classifier run on the last position of each sequence only (bushu's `Logits::Last`); the embedding
//!   lookup is not counted.

use crate::formats::Tensor;
use crate::model::Config;
use kernels::DType;
use serde::Serialize;
use std::collections::HashMap;

/// Bytes per element of a dtype (block types: block bytes / block length; Q4_0 = 18/32).
pub fn dtype_bytes(d: DType) -> f64 {
    d.block_bytes() as f64 / d.block_len() as f64
}

/// Intensity of `A (n x m) · B (m x p)` with every element 2 bytes and A, B and C each moved once:
/// `2nmp / 2(nm + mp + np) = 1 / (1/n + 1/m + 1/p)`.
pub fn matmul_intensity(n: f64, m: f64, p: f64) -> f64 {
    (2.0 * n * m * p) / (2.0 * (n * m + m * p + n * p))
}

/// Model shape.
#[derive(Clone, Debug, Serialize)]
pub struct Shape {
    /// Sequences per batch `B`.
    pub batch: usize,
    /// Prompt length `T` (prefill) and the context a decode step attends over.
    pub seq: usize,
    /// Hidden size `H`.
    pub hidden: usize,
    /// Query heads `N`.
    pub heads: usize,
    /// Key/value heads (GQA); `N` for plain multi-head attention.
    pub kv_heads: usize,
    /// Head dimension `D`.
    pub head_dim: usize,
    pub layers: usize,
    /// Feed-forward size `F`.
    pub ffn: usize,
    /// Vocabulary; 0 leaves the classifier out (the lecture's block-only analysis).
    pub vocab: usize,
}

impl Shape {
    /// The shape of a model file's config, with a batch and a sequence length.
    pub fn from_config(c: &Config, batch: usize, seq: usize) -> Shape {
        Shape {
            batch,
            seq,
            hidden: c.dim,
            heads: c.n_heads,
            kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            layers: c.n_layers,
            ffn: c.ffn_dim,
            vocab: c.vocab_size,
        }
    }
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Bytes per element of each weight matrix.
#[derive(Clone, Debug, Serialize)]
pub struct WeightBytes {
    pub attn_q: f64,
    pub attn_k: f64,
    pub attn_v: f64,
    pub attn_output: f64,
    pub ffn_gate: f64,
    pub ffn_up: f64,
    pub ffn_down: f64,
    pub output: f64,
    /// Human-readable summary, e.g. `F16` or `Q4_0 (output Q6_K)`.
    pub label: String,
}

impl WeightBytes {
    /// Every matrix of one dtype.
    pub fn uniform(d: DType) -> WeightBytes {
        let b = dtype_bytes(d);
        WeightBytes {
            attn_q: b,
            attn_k: b,
            attn_v: b,
            attn_output: b,
            ffn_gate: b,
            ffn_up: b,
            ffn_down: b,
            output: b,
            label: d.name().to_owned(),
        }
    }

    /// The dtypes of a model file's first layer and classifier (the embedding when tied).
    pub fn from_tensors(tensors: &HashMap<String, Tensor>) -> WeightBytes {
        let get = |name: &str| tensors.get(name).map(|t| t.dtype);
        let q = get("blk.0.attn_q.weight").unwrap_or(DType::F32);
        let mut counts: HashMap<DType, usize> = HashMap::new();
        let mut pick = |name: &str| {
            let d = get(name).unwrap_or(q);
            *counts.entry(d).or_default() += 1;
            dtype_bytes(d)
        };
        let mut w = WeightBytes {
            attn_q: pick("blk.0.attn_q.weight"),
            attn_k: pick("blk.0.attn_k.weight"),
            attn_v: pick("blk.0.attn_v.weight"),
            attn_output: pick("blk.0.attn_output.weight"),
            ffn_gate: pick("blk.0.ffn_gate.weight"),
            ffn_up: pick("blk.0.ffn_up.weight"),
            ffn_down: pick("blk.0.ffn_down.weight"),
            output: 0.0,
            label: String::new(),
        };
        let main = counts
            .iter()
            .max_by_key(|(d, n)| (**n, d.ggml_id()))
            .map(|(d, _)| *d)
            .unwrap_or(q);
        let out = get("output.weight")
            .or_else(|| get("token_embd.weight"))
            .unwrap_or(main);
        w.output = dtype_bytes(out);
        w.label = if counts.len() == 1 && out == main {
            main.name().to_owned()
        } else {
            let mut others: Vec<&str> = counts.keys().filter(|d| **d != main).map(|d| d.name()).collect();
            others.sort();
            let mut l = main.name().to_owned();
            if !others.is_empty() {
                l += &format!(" (also {})", others.join(", "));
            }
            if out != main {
                l += &format!(" (output {})", out.name());
            }
            l
        };
        w
    }
}

/// Element sizes of everything moved.
#[derive(Clone, Debug, Serialize)]
pub struct Dtypes {
    pub weights: WeightBytes,
    /// Activations (bytes per element).
    pub act: f64,
    pub act_name: String,
    /// K/V cache (bytes per element).
    pub kv: f64,
    pub kv_name: String,
}

impl Dtypes {
    /// The lecture's: everything BF16.
    pub fn lecture() -> Dtypes {
        Dtypes::uniform(DType::BF16, DType::BF16, DType::BF16)
    }
    pub fn uniform(weights: DType, act: DType, kv: DType) -> Dtypes {
        Dtypes {
            weights: WeightBytes::uniform(weights),
            act: dtype_bytes(act),
            act_name: act.name().to_owned(),
            kv: dtype_bytes(kv),
            kv_name: kv.name().to_owned(),
        }
    }
}

/// Counting options (see the module documentation).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Options {
    /// Also count the outputs written (linear outputs, attention Q read and O write, elementwise outputs,
    /// K/V cache stores). Off: the lecture's convention.
    pub count_outputs: bool,
    /// FlashAttention query block `Br` (K/V re-read once per block); 0 = K/V read once.
    pub flash_block: usize,
    /// Causal attention: query `i` of `Tq` new tokens sees `Tk - Tq + i + 1` positions, as bushu's engine
    /// computes (off: the lecture's full `Tq x Tk`).
    pub causal: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Linear,
    Attention,
    Other,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Linear, Family::Attention, Family::Other];
    pub fn name(self) -> &'static str {
        match self {
            Family::Linear => "linear",
            Family::Attention => "attention",
            Family::Other => "others",
        }
    }
}

/// One operation, summed over layers and batch.
#[derive(Clone, Debug, Serialize)]
pub struct Op {
    pub name: String,
    pub family: Family,
    pub flops: f64,
    pub bytes: f64,
}

/// FLOPs and bytes of a set of operations.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    pub flops: f64,
    pub bytes: f64,
}

impl Totals {
    pub fn intensity(&self) -> f64 {
        self.flops / self.bytes
    }
    pub fn add(&mut self, flops: f64, bytes: f64) {
        self.flops += flops;
        self.bytes += bytes;
    }
}

impl Op {
    pub fn intensity(&self) -> f64 {
        self.flops / self.bytes
    }
}

/// One forward pass: `q_len` new tokens per sequence attending over `ctx_len` positions.
#[derive(Clone, Debug, Serialize)]
pub struct Pass {
    pub phase: String,
    pub q_len: usize,
    pub ctx_len: usize,
    pub ops: Vec<Op>,
    /// Attention computed the FlashAttention way (not part of the totals; compare with the
    /// `attention` family).
    pub flash_attention: Op,
}

impl Pass {
    pub fn family(&self, f: Family) -> Totals {
        let mut t = Totals::default();
        for op in self.ops.iter().filter(|o| o.family == f) {
            t.add(op.flops, op.bytes);
        }
        t
    }
    pub fn total(&self) -> Totals {
        let mut t = Totals::default();
        for op in &self.ops {
            t.add(op.flops, op.bytes);
        }
        t
    }
    /// Totals with the flash variant in place of standard attention.
    pub fn total_flash(&self) -> Totals {
        let mut t = self.total();
        let a = self.family(Family::Attention);
        t.add(
            self.flash_attention.flops - a.flops,
            self.flash_attention.bytes - a.bytes,
        );
        t
    }
}

/// The whole analysis: prefill of `T` tokens and one decode step over `T` positions.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    pub shape: Shape,
    pub dtypes: Dtypes,
    pub options: Options,
    pub prefill: Pass,
    pub decode: Pass,
}

pub fn analyze(shape: &Shape, dtypes: &Dtypes, opts: Options) -> Analysis {
    Analysis {
        shape: shape.clone(),
        dtypes: dtypes.clone(),
        options: opts,
        prefill: pass("prefill", shape, dtypes, opts, shape.seq, shape.seq),
        decode: pass("decode", shape, dtypes, opts, 1, shape.seq),
    }
}

/// FLOPs and bytes of attention (see the module documentation).
fn attention(s: &Shape, dt: &Dtypes, opts: Options, q_len: usize, ctx: usize, flash: bool) -> (f64, f64) {
    let (b, n, nkv, d) = (s.batch as f64, s.heads as f64, s.kv_heads as f64, s.head_dim as f64);
    let (tq, tk) = (q_len as f64, ctx as f64);
    // Query-key pairs scored per head.
    let pairs = if opts.causal {
        tq * tk - tq * (tq - 1.0) / 2.0
    } else {
        tq * tk
    };
    let flops = 2.0 * (2.0 * b * pairs * n * d) + 4.0 * b * pairs * n;
    let kv_reads = if flash && opts.flash_block > 0 {
        q_len.div_ceil(opts.flash_block) as f64
    } else {
        1.0
    };
    let mut bytes = dt.kv * 2.0 * b * tk * nkv * d * kv_reads;
    if !flash {
        bytes += dt.act * 2.0 * b * n * pairs;
    }
    if opts.count_outputs {
        bytes += dt.act * 2.0 * b * tq * n * d;
    }
    (flops, bytes)
}

/// A pass of `q_len` new tokens per sequence over a context of `ctx` positions.
pub fn pass(phase: &str, s: &Shape, dt: &Dtypes, opts: Options, q_len: usize, ctx: usize) -> Pass {
    let l = s.layers as f64;
    let m = (s.batch * q_len) as f64;
    let (h, f, qd, kvd) = (s.hidden as f64, s.ffn as f64, s.q_dim() as f64, s.kv_dim() as f64);
    let a = dt.act;
    let out = |n: f64| if opts.count_outputs { n } else { 0.0 };
    let w = &dt.weights;
    let mut ops = Vec::new();
    let mut push = |name: &str, family: Family, flops: f64, bytes: f64, times: f64| {
        ops.push(Op {
            name: name.to_owned(),
            family,
            flops: flops * times,
            bytes: bytes * times,
        });
    };
    // Linear `rows x k` by `k x n`.
    let lin = |rows: f64, k: f64, n: f64, wb: f64| (2.0 * rows * k * n, rows * k * a + k * n * wb + out(rows * n * a));
    let norm = |rows: f64| (4.0 * rows * h, rows * h * a + h * a + out(rows * h * a));

    let (fl, by) = norm(m);
    push("attn_norm", Family::Other, fl, by, l);
    for (name, n, wb) in [
        ("q_proj", qd, w.attn_q),
        ("k_proj", kvd, w.attn_k),
        ("v_proj", kvd, w.attn_v),
    ] {
        let (fl, by) = lin(m, h, n, wb);
        push(name, Family::Linear, fl, by, l);
    }
    let e = m * (qd + kvd);
    push("rope", Family::Other, 3.0 * e, e * a + out(e * a), l);
    if opts.count_outputs {
        push("kv_store", Family::Other, 0.0, 2.0 * m * kvd * dt.kv, l);
    }
    let (fl, by) = attention(s, dt, opts, q_len, ctx, false);
    push("attention", Family::Attention, fl, by, l);
    let (fl, by) = lin(m, qd, h, w.attn_output);
    push("o_proj", Family::Linear, fl, by, l);
    push("residual", Family::Other, m * h, 2.0 * m * h * a + out(m * h * a), l);
    let (fl, by) = norm(m);
    push("ffn_norm", Family::Other, fl, by, l);
    for (name, wb) in [("gate_proj", w.ffn_gate), ("up_proj", w.ffn_up)] {
        let (fl, by) = lin(m, h, f, wb);
        push(name, Family::Linear, fl, by, l);
    }
    push(
        "swiglu",
        Family::Other,
        5.0 * m * f,
        2.0 * m * f * a + out(m * f * a),
        l,
    );
    let (fl, by) = lin(m, f, h, w.ffn_down);
    push("down_proj", Family::Linear, fl, by, l);
    push("residual", Family::Other, m * h, 2.0 * m * h * a + out(m * h * a), l);
    if s.vocab > 0 {
        let rows = s.batch as f64;
        let (fl, by) = norm(rows);
        push("output_norm", Family::Other, fl, by, 1.0);
        let (fl, by) = lin(rows, h, s.vocab as f64, w.output);
        push("classifier", Family::Linear, fl, by, 1.0);
    }
    // Merge the two residual rows.
    let mut merged: Vec<Op> = Vec::new();
    for op in ops {
        match merged.iter_mut().find(|o| o.name == op.name) {
            Some(o) => {
                o.flops += op.flops;
                o.bytes += op.bytes;
            }
            None => merged.push(op),
        }
    }
    let (fl, by) = attention(s, dt, opts, q_len, ctx, true);
    let flash_attention = Op {
        name: "attention (flash)".to_owned(),
        family: Family::Attention,
        flops: fl * l,
        bytes: by * l,
    };
    Pass {
        phase: phase.to_owned(),
        q_len,
        ctx_len: ctx,
        ops: merged,
        flash_attention,
    }
}
