//! The student: a Llama decoder written in candle ops that have gradients, laid out exactly as bushu
//! reads a Llama GGUF, so that training and inference compute the same function:
//! embed → for each layer { RMSNorm → Q,K,V → RoPE (GGML's "normal" style: adjacent pairs rotate,
//! as bushu applies to `llama` GGUF files) → causal attention (GQA: query head `h` reads key/value
//! head `h / (heads / kv_heads)`) → output projection → residual → RMSNorm → SwiGLU → residual }
//! → RMSNorm → classifier.
//!
//! Parameters are kept under their GGUF names (`token_embd.weight`, `blk.0.attn_q.weight`, ...) with
//! candle's row-major `[out, in]` layout, which is byte for byte a GGUF tensor of shape `[in, out]`
//! (innermost first): the export ([`crate::export`]) copies them without a transpose.
//!
//! Every op used here (matmul, broadcast arithmetic, `index_select`, `narrow`, `cat`, exp/log/sqrt,
//! sums) has a gradient in candle; candle's fused kernels for RMSNorm, softmax and RoPE do not, and are
//! not used.

use anyhow::{bail, Context, Result};
use bushu::model::ModelFile;
use bushu::sampling::rng::Rng;
use candle_core::{DType, Device, Tensor, Var, D};

/// The shape of a student.
#[derive(Clone, Debug, PartialEq)]
pub struct StudentConfig {
    pub vocab: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    /// Context the student is trained at, and `llama.context_length` of the exported file.
    pub ctx: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
}

impl StudentConfig {
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Checks that the shape is one a Llama decoder can have.
    pub fn validate(&self) -> Result<()> {
        if self.vocab == 0 || self.dim == 0 || self.layers == 0 || self.heads == 0 || self.ffn == 0 {
            bail!("student shape {self:?}: every size must be at least 1");
        }
        if !self.dim.is_multiple_of(self.heads) || !self.head_dim().is_multiple_of(2) {
            bail!(
                "student dim {} is not a multiple of 2 x {} heads (RoPE rotates pairs)",
                self.dim,
                self.heads
            );
        }
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            bail!(
                "{} heads are not a multiple of {} key/value heads",
                self.heads,
                self.kv_heads
            );
        }
        if self.ctx < 2 {
            bail!("context {} is too short to train on (at least 2 tokens)", self.ctx);
        }
        Ok(())
    }

    /// The parameters: GGUF name and candle shape (`[out, in]` for matrices).
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, hd) = (self.dim, self.head_dim());
        let mut v = vec![("token_embd.weight".to_string(), vec![self.vocab, d])];
        for l in 0..self.layers {
            let p = |s: &str| format!("blk.{l}.{s}.weight");
            v.push((p("attn_norm"), vec![d]));
            v.push((p("attn_q"), vec![self.heads * hd, d]));
            v.push((p("attn_k"), vec![self.kv_heads * hd, d]));
            v.push((p("attn_v"), vec![self.kv_heads * hd, d]));
            v.push((p("attn_output"), vec![d, self.heads * hd]));
            v.push((p("ffn_norm"), vec![d]));
            v.push((p("ffn_gate"), vec![self.ffn, d]));
            v.push((p("ffn_up"), vec![self.ffn, d]));
            v.push((p("ffn_down"), vec![d, self.ffn]));
        }
        v.push(("output_norm.weight".to_string(), vec![d]));
        v.push(("output.weight".to_string(), vec![self.vocab, d]));
        v
    }

    /// Number of trained values.
    pub fn parameter_count(&self) -> usize {
        self.parameter_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// A student's parameters (candle variables, in [`StudentConfig::parameter_shapes`] order) and the
/// RoPE tables of its context.
pub struct Student {
    pub config: StudentConfig,
    pub params: Vec<(String, Var)>,
    /// After [`Student::freeze`]: the parameters as constants (no gradient tracked through them).
    frozen: Option<Vec<(String, Tensor)>>,
    /// Token embeddings and LM head kept as they are: not among [`Student::vars`], and the embedding
    /// is read detached in the forward pass (no gradient computed for it).
    pub frozen_embeddings: bool,
    cos: Tensor,
    sin: Tensor,
}

/// A named parameter's values: GGUF name, candle shape, values (row-major).
pub type NamedValues = Vec<(String, Vec<usize>, Vec<f32>)>;

/// A forward pass's results: logits `[batch, seq, vocab]` and the residual stream after each layer
/// (`[batch, seq, dim]`, before the final norm — what bushu's `Pass::keep_hidden` gives of a teacher).
pub struct StudentOutput {
    pub logits: Tensor,
    pub hidden: Vec<Tensor>,
}

/// `n` values from N(0, std²), by Box–Muller on bushu's seeded generator (the same on every machine).
pub fn normal(rng: &mut Rng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = (rng.next_f32() as f64).max(1e-12);
        let u2 = rng.next_f32() as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let a = 2.0 * std::f64::consts::PI * u2;
        out.push((r * a.cos()) as f32 * std);
        out.push((r * a.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}

impl Student {
    /// A student from scratch: matrices N(0, 0.02²) (as Hugging Face initializes Llama), norms 1,
    /// drawn from `seed`.
    pub fn random(config: StudentConfig, seed: u64) -> Result<Student> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let mut values = Vec::new();
        for (name, shape) in config.parameter_shapes() {
            let n: usize = shape.iter().product();
            let v = if shape.len() == 1 {
                vec![1.0f32; n]
            } else {
                normal(&mut rng, n, 0.02)
            };
            values.push((name, shape, v));
        }
        Student::from_values(config, values)
    }

    /// A student initialised from the teacher: the same width, the teacher's embeddings, final norm and
    /// LM head, and the teacher's layers `layers` (e.g. evenly spaced ones) as its own 0, 1, ....
    pub fn from_teacher(config: StudentConfig, teacher: &ModelFile, layers: &[usize]) -> Result<Student> {
        config.validate()?;
        if layers.len() != config.layers {
            bail!(
                "{} teacher layers chosen for a student of {}",
                layers.len(),
                config.layers
            );
        }
        let mut values = Vec::new();
        for (name, shape) in config.parameter_shapes() {
            let src = match name.strip_prefix("blk.") {
                Some(rest) => {
                    let (l, tail) = rest.split_once('.').context("tensor name")?;
                    let l: usize = l.parse()?;
                    format!("blk.{}.{tail}", layers[l])
                }
                None => name.clone(),
            };
            // A tied teacher has no `output.weight`: its head is the embedding.
            let t = match teacher.tensors.get(&src) {
                Some(t) => t,
                None if src == "output.weight" => teacher.tensors.get("token_embd.weight").context("no embedding")?,
                None => bail!("the teacher has no tensor {src} to initialise the student from"),
            };
            let gguf_shape: Vec<usize> = shape.iter().rev().copied().collect();
            if t.shape != gguf_shape {
                bail!(
                    "the teacher's {src} has shape {:?}, the student's {name} needs {:?} (initialising from the teacher needs its width)",
                    t.shape,
                    gguf_shape
                );
            }
            values.push((name, shape, t.to_f32()));
        }
        Student::from_values(config, values)
    }

    /// A student from given values (GGUF name, candle shape, values), in `parameter_shapes` order.
    pub fn from_values(config: StudentConfig, values: NamedValues) -> Result<Student> {
        config.validate()?;
        let dev = Device::Cpu;
        let expected = config.parameter_shapes();
        if values.len() != expected.len() {
            bail!("{} parameters given, the shape has {}", values.len(), expected.len());
        }
        let mut params = Vec::new();
        for ((name, shape, v), (en, es)) in values.into_iter().zip(expected) {
            if name != en || shape != es {
                bail!("parameter {name} {shape:?} given where {en} {es:?} belongs");
            }
            let t = Tensor::from_vec(v, shape, &dev)?;
            params.push((name, Var::from_tensor(&t)?));
        }
        let (hd, ctx) = (config.head_dim(), config.ctx);
        let mut cos = Vec::with_capacity(ctx * hd / 2);
        let mut sin = Vec::with_capacity(ctx * hd / 2);
        for p in 0..ctx {
            for i in 0..hd / 2 {
                let inv = 1.0 / (config.rope_theta as f64).powf(2.0 * i as f64 / hd as f64);
                let a = p as f64 * inv;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok(Student {
            cos: Tensor::from_vec(cos, (ctx, hd / 2), &dev)?,
            sin: Tensor::from_vec(sin, (ctx, hd / 2), &dev)?,
            config,
            params,
            frozen: None,
            frozen_embeddings: false,
        })
    }

    /// Makes every parameter a constant: the forward pass reads them without tracking gradients (a frozen
    /// model under trained additions, e.g. mixture-of-depths routers). The values are shared, not copied.
    pub fn freeze(&mut self) {
        self.frozen = Some(
            self.params
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
                .collect(),
        );
    }

    /// The variable named `name`.
    pub fn param(&self, name: &str) -> Result<&Tensor> {
        if let Some(f) = &self.frozen {
            return f
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .with_context(|| format!("no parameter {name}"));
        }
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_tensor())
            .with_context(|| format!("no parameter {name}"))
    }

    /// Every trained parameter, for the optimizer (without the embeddings and LM head when frozen).
    pub fn vars(&self) -> Vec<Var> {
        self.params
            .iter()
            .filter(|(n, _)| !(self.frozen_embeddings && is_embedding(n)))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The forward pass over `tokens` (`[batch, seq]`, u32, seq ≤ ctx).
    pub fn forward(&self, tokens: &Tensor) -> Result<StudentOutput> {
        let (h, hidden) = self.forward_normed(tokens)?;
        let (b, t) = tokens.dims2()?;
        let logits = h
            .matmul(&self.param("output.weight")?.t()?)?
            .reshape((b, t, self.config.vocab))?;
        Ok(StudentOutput { logits, hidden })
    }

    /// The forward pass up to the classifier: the final-norm hidden states `[batch * seq, dim]` and
    /// the residual stream after each layer.
    pub fn forward_normed(&self, tokens: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let (x, hidden) = self.run_layers(tokens, &mut |_, _, y| Ok(y))?;
        Ok((
            rms_norm(&x, self.param("output_norm.weight")?, self.config.rms_eps)?,
            hidden,
        ))
    }

    /// The layers over `tokens` (`[batch, seq]`): the residual stream after the last one (`[batch·seq,
    /// dim]`, before the final norm) and after each (`[batch, seq, dim]`). `next(l, x, y)` gives the
    /// residual stream after layer `l` from its input `x` and the layer's output `y` (`y` itself: the
    /// plain model; mixture of depths mixes the two per token).
    pub fn run_layers(
        &self,
        tokens: &Tensor,
        next: &mut dyn FnMut(usize, &Tensor, Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let c = &self.config;
        let (b, t) = tokens.dims2()?;
        if t > c.ctx {
            bail!("{t} tokens in a student of context {}", c.ctx);
        }
        let (d, hd, nh, nkv) = (c.dim, c.head_dim(), c.heads, c.kv_heads);
        let rep = nh / nkv;
        let embd = self.param("token_embd.weight")?;
        let embd = if self.frozen_embeddings {
            embd.detach()
        } else {
            embd.clone()
        };
        let mut x = embd.index_select(&tokens.flatten_all()?, 0)?; // [b*t, d]
        let mask: Vec<f32> = (0..t * t)
            .map(|i| if i % t > i / t { f32::NEG_INFINITY } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), tokens.device())?;
        let (cos, sin) = (self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut hidden = Vec::with_capacity(c.layers);
        for l in 0..c.layers {
            let w = |s: &str| self.param(&format!("blk.{l}.{s}.weight"));
            let h = rms_norm(&x, w("attn_norm")?, c.rms_eps)?;
            let heads = |wt: &Tensor, n: usize| -> Result<Tensor> {
                let y = h
                    .matmul(&wt.t()?)?
                    .reshape((b, t, n, hd))?
                    .transpose(1, 2)?
                    .contiguous()?;
                Ok(y)
            };
            let q = candle_nn::rotary_emb::rope_i_slow(&heads(w("attn_q")?, nh)?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i_slow(&heads(w("attn_k")?, nkv)?, &cos, &sin)?;
            let v = heads(w("attn_v")?, nkv)?;
            let (k, v) = if rep > 1 {
                let r = |x: Tensor| -> Result<Tensor> { Ok(Tensor::cat(&vec![&x; rep], 2)?.reshape((b, nh, t, hd))?) };
                (r(k)?, r(v)?)
            } else {
                (k, v)
            };
            let att = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax(&att, D::Minus1)?;
            let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b * t, nh * hd))?;
            let a = (&x + o.matmul(&w("attn_output")?.t()?)?)?;
            let h = rms_norm(&a, w("ffn_norm")?, c.rms_eps)?;
            let g = candle_nn::ops::silu(&h.matmul(&w("ffn_gate")?.t()?)?)?;
            let u = h.matmul(&w("ffn_up")?.t()?)?;
            let y = (a + (g * u)?.matmul(&w("ffn_down")?.t()?)?)?;
            x = next(l, &x, y)?;
            hidden.push(x.reshape((b, t, d))?);
        }
        Ok((x, hidden))
    }

    /// The parameters' values (GGUF name, candle shape, values).
    pub fn values(&self) -> Result<NamedValues> {
        let mut out = Vec::new();
        for (name, v) in &self.params {
            let t = v.as_tensor();
            out.push((
                name.clone(),
                t.dims().to_vec(),
                t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
            ));
        }
        Ok(out)
    }
}

/// The token embedding and the LM head, which `--freeze-embeddings` keeps.
pub fn is_embedding(name: &str) -> bool {
    name == "token_embd.weight" || name == "output.weight"
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) * weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps as f64)?.sqrt()?)?.broadcast_mul(weight)?)
}
