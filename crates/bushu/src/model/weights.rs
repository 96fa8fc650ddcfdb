//! The weights of a model, looked up by their GGUF names and checked against the config. Matrices stay
//! where the loader put them (memory-mapped); only the small norm vectors and biases are read into f32.

use super::arch::{self, Family};
use super::config::Config;
use crate::formats::Tensor;
use anyhow::{bail, Context, Result};
use kernels::Precision;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub wo: Tensor,
    /// Q/K/V biases (Qwen2).
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Per-head RMSNorm of queries and keys before RoPE (Gemma 3).
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// RMSNorm of the attention output before the residual add (Gemma 2/3).
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    /// RMSNorm of the feed-forward output before the residual add (Gemma 2/3).
    pub post_ffn_norm: Option<Vec<f32>>,
    pub w_gate: Tensor,
    pub w_up: Tensor,
    pub w_down: Tensor,
}

/// A projection of a transformer layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// This projection's stored weight in `lw`.
    pub fn tensor(self, lw: &LayerWeights) -> &Tensor {
        match self {
            Proj::Q => &lw.wq,
            Proj::K => &lw.wk,
            Proj::V => &lw.wv,
            Proj::O => &lw.wo,
            Proj::Gate => &lw.w_gate,
            Proj::Up => &lw.w_up,
            Proj::Down => &lw.w_down,
        }
    }
}

pub struct Weights {
    pub token_embd: Tensor,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// The classifier; the embedding matrix itself when the model ties them.
    pub output: Tensor,
    /// Per-frequency RoPE divisors (`rope_freqs.weight`, Llama 3.1 scaling in GGUF files).
    pub rope_freqs: Option<Vec<f32>>,
    /// The background thread packing the matrices, if one was started, and the matrices it packs.
    packer: Mutex<Option<(JoinHandle<()>, Arc<PackQueue>)>>,
    /// Opened by the end of the first forward pass: the background packer waits for it.
    first_pass: Arc<Gate>,
}

/// A one-way gate: closed until [`Gate::open`], then open for good.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Gate {
    /// Opens the gate; after the first call, one atomic load.
    fn open(&self) {
        if !self.open.load(Ordering::Acquire) && !self.open.swap(true, Ordering::AcqRel) {
            let _guard = self.lock.lock();
            self.cv.notify_all();
        }
    }

    /// Waits until the gate opens, or `at_most`.
    fn wait(&self, at_most: Duration) {
        let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .cv
            .wait_timeout_while(guard, at_most, |_| !self.open.load(Ordering::Acquire));
    }
}

/// Matrices to pack, taken one at a time by whoever packs: the background packer, and the pass that
/// waits for it ([`Weights::wait_packed`]).
struct PackQueue {
    /// Each matrix with the precision its products use (which copy an F16/BF16 matrix needs).
    tensors: Vec<(Tensor, Precision)>,
    next: AtomicUsize,
}

impl PackQueue {
    /// Packs the matrices no one has taken yet, in order, until none is left.
    fn pack(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let Some((t, precision)) = self.tensors.get(i) else {
                return;
            };
            t.pack.fill_serial(&t.matrix(), *precision);
        }
    }
}

/// The longest first pass that runs on the row-major kernels while the matrices are packed in the
/// background. A longer one packs first: the row-major prefill kernels are several times slower than
/// the packed ones (Qwen2.5-1.5B Q4_K_M on 2 threads: 27 vs 140 tokens/s), so beyond a few dozen
/// tokens the packing pays for itself within the pass (measured: docs/BENCHMARKS.md, session 11).
pub const ROW_MAJOR_FIRST_PASS: usize = 16;

/// How long a background packer waits for the first forward pass to end before it starts anyway.
const FIRST_PASS_WAIT: Duration = Duration::from_secs(5);

/// Packable matrix bytes from which [`Weights::prepare_packing`] packs on a background thread.
const BACKGROUND_PACKING: usize = 256 << 20;

struct Lookup<'a> {
    tensors: &'a HashMap<String, Tensor>,
    config: &'a Config,
    family: &'static Family,
}

impl Lookup<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .with_context(|| format!("tensor {name} is missing"))?;
        self.check(t, shape)?;
        if !kernels::quants::supported(t.dtype) {
            bail!(
                "tensor {name} has type {}, which bushu cannot compute with yet",
                t.dtype
            );
        }
        Ok(t.clone())
    }

    fn check(&self, t: &Tensor, shape: &[usize]) -> Result<()> {
        // Trailing dimensions of 1 are optional (a vector may be stored as [n, 1]).
        let mut have: Vec<usize> = t.shape.clone();
        while have.len() > shape.len() && have.last() == Some(&1) {
            have.pop();
        }
        if have != shape {
            bail!(
                "tensor {} has shape {:?}, the config implies {:?}",
                t.name,
                t.shape,
                shape
            );
        }
        Ok(())
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let mut v = self.get(name, &[len])?.to_f32();
        if name.ends_with("norm.weight") && self.config.block.norm_offset != 0.0 {
            v.iter_mut().for_each(|w| *w += self.config.block.norm_offset);
        }
        Ok(v)
    }

    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        match self.tensors.contains_key(name) {
            true => self.vector(name, len).map(Some),
            false => Ok(None),
        }
    }

    /// Layer `i`'s tensor `suffix` as the family's table describes it: required or optional, its shape.
    fn layer(&self, i: usize, suffix: &str) -> Result<Option<Tensor>> {
        let spec = self
            .family
            .layer_tensor(suffix)
            .with_context(|| format!("the {} layer has no tensor {suffix}", self.family.name))?;
        let name = format!("blk.{i}.{suffix}");
        match self.tensors.contains_key(&name) || spec.required {
            true => self.get(&name, &spec.shape(self.config)).map(Some),
            false => Ok(None),
        }
    }

    fn layer_matrix(&self, i: usize, suffix: &str) -> Result<Tensor> {
        self.layer(i, suffix)?
            .with_context(|| format!("tensor blk.{i}.{suffix} is missing"))
    }

    fn layer_vector(&self, i: usize, suffix: &str) -> Result<Option<Vec<f32>>> {
        match self.family.layer_tensor(suffix) {
            // Not part of this family's layer (e.g. Gemma's extra norms in a Llama).
            None => Ok(None),
            Some(spec) => self
                .optional_vector(&format!("blk.{i}.{suffix}"), spec.shape(self.config)[0])
                .and_then(|v| match (v, spec.required) {
                    (None, true) => bail!("tensor blk.{i}.{suffix} is missing"),
                    (v, _) => Ok(v),
                }),
        }
    }
}

impl Weights {
    pub fn from_tensors(c: &Config, tensors: &HashMap<String, Tensor>) -> Result<Weights> {
        let family = arch::by_name(&c.arch)?;
        let l = Lookup {
            tensors,
            config: c,
            family,
        };
        // Biases the family's layer has no place for: refuse rather than silently compute something else.
        for name in tensors.keys() {
            let suffix = name
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .map(|(_, s)| s);
            if let Some(suffix) = suffix.filter(|s| s.ends_with(".bias") && family.layer_tensor(s).is_none()) {
                bail!("tensor {name}: biases on this layer ({suffix}) are not supported");
            }
        }
        let token_embd = l.get("token_embd.weight", &[c.dim, c.vocab_size])?;
        let layers = (0..c.n_layers)
            .map(|i| {
                let required = |s: &str| -> Result<Vec<f32>> {
                    l.layer_vector(i, s)?
                        .with_context(|| format!("tensor blk.{i}.{s} is missing"))
                };
                Ok(LayerWeights {
                    attn_norm: required("attn_norm.weight")?,
                    wq: l.layer_matrix(i, "attn_q.weight")?,
                    wk: l.layer_matrix(i, "attn_k.weight")?,
                    wv: l.layer_matrix(i, "attn_v.weight")?,
                    wo: l.layer_matrix(i, "attn_output.weight")?,
                    bq: l.layer_vector(i, "attn_q.bias")?,
                    bk: l.layer_vector(i, "attn_k.bias")?,
                    bv: l.layer_vector(i, "attn_v.bias")?,
                    q_norm: l.layer_vector(i, "attn_q_norm.weight")?,
                    k_norm: l.layer_vector(i, "attn_k_norm.weight")?,
                    post_attn_norm: l.layer_vector(i, "post_attention_norm.weight")?,
                    ffn_norm: required("ffn_norm.weight")?,
                    post_ffn_norm: l.layer_vector(i, "post_ffw_norm.weight")?,
                    w_gate: l.layer_matrix(i, "ffn_gate.weight")?,
                    w_up: l.layer_matrix(i, "ffn_up.weight")?,
                    w_down: l.layer_matrix(i, "ffn_down.weight")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let output = match tensors.contains_key("output.weight") {
            true => l.get("output.weight", &[c.dim, c.vocab_size])?,
            false => token_embd.clone(),
        };
        Ok(Weights {
            output_norm: l.vector("output_norm.weight", c.dim)?,
            rope_freqs: l.optional_vector("rope_freqs.weight", c.rope_dim / 2)?,
            token_embd,
            layers,
            output,
            packer: Mutex::new(None),
            first_pass: Arc::default(),
        })
    }

    /// Every matrix, the classifier last (it may be the embedding table itself).
    pub fn matrices(&self) -> impl Iterator<Item = &Tensor> {
        self.layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .chain([&self.output])
    }

    /// Prepares the packed copies the fast kernels (and every F16/BF16 product) use (`kernels::packed`). Small models are left to
    /// pack each matrix on its first product (milliseconds). From 256 MiB of packable matrices on,
    /// copying them all takes long enough (~0.7 ms per MB on the hosts measured: page faults of the
    /// fresh memory) to hold up a short prompt's first token, so a background thread packs them, in the
    /// order the forward pass uses them, while a short first pass (at most [`ROW_MAJOR_FIRST_PASS`]
    /// tokens) runs on the row-major kernels; the next pass waits for the packer, packing beside it
    /// ([`Weights::before_pass`]), and only then lets products use the copies (a copy the packer
    /// finishes during the first pass is not used in it), so results never depend on timing. The packer
    /// starts once the first forward pass is over (or after 5 s), so the first token has the cores.
    /// `precision` is the model's: which copy an F16/BF16 matrix's products use depends on it.
    pub fn prepare_packing(&self, precision: Precision) {
        self.pack_in_background(BACKGROUND_PACKING, precision);
    }

    /// [`Weights::prepare_packing`] for models with at least `min_bytes` of packable matrices (0: any
    /// model, as the tests of this schedule use it); once per model.
    pub fn pack_in_background(&self, min_bytes: usize, precision: Precision) {
        // The classifier's products run at its own precision (`Model::head`), every other matrix's at
        // the model's.
        let output: *const Tensor = &self.output;
        let packable: Vec<(Tensor, Precision)> = self
            .matrices()
            .filter(|t| kernels::packed::packable(t.dtype))
            .map(|t| {
                let p = if std::ptr::eq(t, output) {
                    precision.for_classifier()
                } else {
                    precision
                };
                (t.clone(), p)
            })
            .collect();
        if packable.iter().map(|(t, _)| t.nbytes).sum::<usize>() < min_bytes.max(1) {
            return;
        }
        for (t, _) in &packable {
            t.pack.defer();
        }
        let queue = Arc::new(PackQueue {
            tensors: packable,
            next: AtomicUsize::new(0),
        });
        let first_pass = self.first_pass.clone();
        let work = queue.clone();
        let handle = std::thread::Builder::new().name("bushu-packer".into()).spawn(move || {
            // The first token (often a prompt) runs alone on the row-major kernels: packing beside it
            // would take one of the cores it uses.
            first_pass.wait(FIRST_PASS_WAIT);
            work.pack();
        });
        if let (Ok(h), Ok(mut slot)) = (handle, self.packer.lock()) {
            *slot = Some((h, queue));
        } else {
            // No thread: pack on first use after all.
            self.matrices().for_each(|t| t.pack.release());
        }
    }

    /// Tells a background packer that the first forward pass is over (cheap after the first call).
    pub fn first_pass_done(&self) {
        self.first_pass.open();
    }

    /// Called before each forward pass of `tokens` tokens: after the first pass, and for a first pass
    /// of more than [`ROW_MAJOR_FIRST_PASS`] tokens, waits for a background packer to finish (helping
    /// it), so that only a short first pass runs on the row-major kernels and every other pass on the
    /// packed ones. Which kernels a pass uses depends on the pass sequence only, never on timing (a
    /// pass never switches kernels halfway): the two round differently, so a given pass sequence always
    /// gives the same bits.
    pub fn before_pass(&self, tokens: usize) {
        if tokens > ROW_MAJOR_FIRST_PASS || self.first_pass.open.load(Ordering::Acquire) {
            self.wait_packed();
        }
    }

    /// Waits until a background packer (if any) has packed every matrix.
    pub fn wait_packed(&self) {
        self.first_pass_done();
        let h = self.packer.lock().ok().and_then(|mut s| s.take());
        if let Some((h, queue)) = h {
            // The pass that waits would leave its thread idle: it packs beside the packer.
            queue.pack();
            let _ = h.join();
            // Every deferred copy is made: from this pass on, products use them.
            self.matrices().for_each(|t| t.pack.release());
        }
    }

    /// Bytes of weights read for one token (every matrix once, the embedding row aside).
    pub fn bytes_per_token(&self) -> usize {
        self.matrices().map(|t| t.nbytes).sum()
    }
}
