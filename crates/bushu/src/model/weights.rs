//! The weights of a model, looked up by their GGUF names and checked against the config. Matrices stay
//! where the loader put them (memory-mapped); only the small norm vectors and biases are read into f32.

use super::config::Config;
use crate::formats::Tensor;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
    pub ffn_norm: Vec<f32>,
    pub w_gate: Tensor,
    pub w_up: Tensor,
    pub w_down: Tensor,
}

pub struct Weights {
    pub token_embd: Tensor,
    pub layers: Vec<LayerWeights>,
    pub output_norm: Vec<f32>,
    /// The classifier; the embedding matrix itself when the model ties them.
    pub output: Tensor,
    /// Per-frequency RoPE divisors (`rope_freqs.weight`, Llama 3.1 scaling in GGUF files).
    pub rope_freqs: Option<Vec<f32>>,
    /// The background thread packing the matrices, if one was started.
    packer: Mutex<Option<JoinHandle<()>>>,
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

/// How long a background packer waits for the first forward pass to end before it starts anyway.
const FIRST_PASS_WAIT: Duration = Duration::from_secs(5);

/// Packable matrix bytes from which [`Weights::prepare_packing`] packs on a background thread.
const BACKGROUND_PACKING: usize = 256 << 20;

struct Lookup<'a> {
    tensors: &'a HashMap<String, Tensor>,
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
        Ok(self.get(name, &[len])?.to_f32())
    }

    fn optional_vector(&self, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
        match self.tensors.contains_key(name) {
            true => self.vector(name, len).map(Some),
            false => Ok(None),
        }
    }
}

impl Weights {
    pub fn from_tensors(c: &Config, tensors: &HashMap<String, Tensor>) -> Result<Weights> {
        let l = Lookup { tensors };
        // Biases this forward pass has no place for: refuse rather than silently compute something else.
        for suffix in ["attn_output.bias", "ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"] {
            if let Some(name) = tensors.keys().find(|k| k.starts_with("blk.") && k.ends_with(suffix)) {
                bail!("tensor {name}: biases on this layer are not supported");
            }
        }
        let token_embd = l.get("token_embd.weight", &[c.dim, c.vocab_size])?;
        let layers = (0..c.n_layers)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}");
                Ok(LayerWeights {
                    attn_norm: l.vector(&n("attn_norm.weight"), c.dim)?,
                    wq: l.get(&n("attn_q.weight"), &[c.dim, c.q_dim()])?,
                    wk: l.get(&n("attn_k.weight"), &[c.dim, c.kv_dim()])?,
                    wv: l.get(&n("attn_v.weight"), &[c.dim, c.kv_dim()])?,
                    wo: l.get(&n("attn_output.weight"), &[c.q_dim(), c.dim])?,
                    bq: l.optional_vector(&n("attn_q.bias"), c.q_dim())?,
                    bk: l.optional_vector(&n("attn_k.bias"), c.kv_dim())?,
                    bv: l.optional_vector(&n("attn_v.bias"), c.kv_dim())?,
                    ffn_norm: l.vector(&n("ffn_norm.weight"), c.dim)?,
                    w_gate: l.get(&n("ffn_gate.weight"), &[c.dim, c.ffn_dim])?,
                    w_up: l.get(&n("ffn_up.weight"), &[c.dim, c.ffn_dim])?,
                    w_down: l.get(&n("ffn_down.weight"), &[c.ffn_dim, c.dim])?,
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
    fn matrices(&self) -> impl Iterator<Item = &Tensor> {
        self.layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .chain([&self.output])
    }

    /// Prepares the packed copies the fast kernels use (`kernels::packed`). Small models are left to
    /// pack each matrix on its first product (milliseconds). From 256 MiB of packable matrices on,
    /// copying them all takes long enough (~0.7 ms per MB on the hosts measured: page faults of the
    /// fresh memory) to hold up the first token, so a background thread packs them, in the order the
    /// forward pass uses them, while the first tokens run on the row-major kernels; each matrix
    /// switches over when its copy is complete (results move by f32 summation order only). The packer
    /// starts once the first forward pass is over (or after 5 s), so the first token has the cores.
    pub fn prepare_packing(&self) {
        let packable: Vec<Tensor> = self
            .matrices()
            .filter(|t| kernels::packed::packable(t.dtype))
            .cloned()
            .collect();
        if packable.iter().map(|t| t.nbytes).sum::<usize>() < BACKGROUND_PACKING {
            return;
        }
        for t in &packable {
            t.pack.defer();
        }
        let first_pass = self.first_pass.clone();
        let handle = std::thread::Builder::new().name("bushu-packer".into()).spawn(move || {
            // The first token (often a prompt) runs alone on the row-major kernels: packing beside it
            // would take one of the cores it uses.
            first_pass.wait(FIRST_PASS_WAIT);
            for t in &packable {
                t.pack.fill_serial(&t.matrix());
            }
        });
        if let (Ok(h), Ok(mut slot)) = (handle, self.packer.lock()) {
            *slot = Some(h);
        } else {
            // No thread: pack on first use after all.
            self.matrices().for_each(|t| t.pack.fill_serial(&t.matrix()));
        }
    }

    /// Tells a background packer that the first forward pass is over (cheap after the first call).
    pub fn first_pass_done(&self) {
        self.first_pass.open();
    }

    /// Waits until a background packer (if any) has packed every matrix.
    pub fn wait_packed(&self) {
        self.first_pass_done();
        let h = self.packer.lock().ok().and_then(|mut s| s.take());
        if let Some(h) = h {
            let _ = h.join();
        }
    }

    /// Bytes of weights read for one token (every matrix once, the embedding row aside).
    pub fn bytes_per_token(&self) -> usize {
        self.matrices().map(|t| t.nbytes).sum()
    }
}
