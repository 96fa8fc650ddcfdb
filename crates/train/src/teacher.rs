//! The training windows and what the teacher says about them, computed once with bushu's forward pass
//! and cached on disk: for every predicting position its top-k next-token logits, the log-partition of
//! its full distribution at the KD temperature (so the mass outside the top-k is known), and (for
//! feature KD) its residual stream after chosen layers, in f16.
//!
//! Windows are `ctx` tokens of the tokenized data at offsets drawn from the seed (as the Shakespeare
//! models were trained: `../shared/tools/shakespeare/train.py`), the first token replaced by BOS; the
//! `ctx - 1` first positions predict the next token. A cache file is reused only if its key — a hash
//! of the teacher file's size and modification time, the windows' tokens, k and the feature layers —
//! matches (and the temperature), so the runs of an experiment over the same data and seed run the teacher once.

use anyhow::{bail, Context, Result};
use bushu::model::{Logits, Model, Pass};
use half::f16;
use std::io::{Read, Write};
use std::path::Path;

/// Training windows: `n` rows of `ctx` tokens.
pub struct Windows {
    pub ctx: usize,
    pub tokens: Vec<u32>,
}

impl Windows {
    /// `count` windows of `ctx` tokens from `data` at seeded offsets, each starting with `bos`.
    pub fn sample(data: &[u32], ctx: usize, count: usize, bos: Option<u32>, seed: u64) -> Result<Windows> {
        if data.len() < ctx {
            bail!("the data has {} tokens, fewer than one window of {ctx}", data.len());
        }
        let mut rng = bushu::sampling::rng::Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
        let span = (data.len() - ctx + 1) as u64;
        let mut tokens = Vec::with_capacity(count * ctx);
        for _ in 0..count {
            let r = ((rng.next_u32() as u64) << 32 | rng.next_u32() as u64) % span;
            let w = &data[r as usize..r as usize + ctx];
            tokens.extend_from_slice(w);
            if let Some(b) = bos {
                let at = tokens.len() - ctx;
                tokens[at] = b;
            }
        }
        Ok(Windows { ctx, tokens })
    }

    pub fn len(&self) -> usize {
        self.tokens.len() / self.ctx
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn window(&self, i: usize) -> &[u32] {
        &self.tokens[i * self.ctx..(i + 1) * self.ctx]
    }
}

/// The teacher's view of every window: `rows = windows x (ctx - 1)` positions.
pub struct TeacherCache {
    pub k: usize,
    pub rows_per_window: usize,
    /// `rows x k` token ids and logits, best first.
    pub top_idx: Vec<u32>,
    pub top_val: Vec<f32>,
    /// Per row, ln Σ_v exp(logit_v / τ) over the whole vocabulary, τ the temperature it was built for.
    pub lse: Vec<f32>,
    /// Teacher layers whose residual stream is kept, and its width.
    pub feature_layers: Vec<usize>,
    pub feature_dim: usize,
    /// Per layer (in `feature_layers` order), `rows x feature_dim` values.
    pub features: Vec<Vec<f16>>,
}

const MAGIC: &[u8; 8] = b"BUSHUKD2";

/// FNV-1a, 64 bits.
fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

/// The key a cache must match: teacher file identity, windows and k. (A cache serves any run whose
/// feature layers are among those it kept: [`TeacherCache::load`].)
pub fn cache_key(teacher: &Path, windows: &Windows, k: usize, temperature: f64) -> Result<u64> {
    let meta = std::fs::metadata(teacher).with_context(|| format!("cannot read {}", teacher.display()))?;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut h, &meta.len().to_le_bytes());
    if let Ok(t) = meta.modified() {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            fnv(&mut h, &d.as_nanos().to_le_bytes());
        }
    }
    fnv(&mut h, &(windows.ctx as u64).to_le_bytes());
    for t in &windows.tokens {
        fnv(&mut h, &t.to_le_bytes());
    }
    fnv(&mut h, &(k as u64).to_le_bytes());
    fnv(&mut h, &temperature.to_le_bytes());
    Ok(h)
}

/// Indices of the `k` largest values of `row`, largest first (ties: lower index first).
pub fn top_k(row: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..row.len() as u32).collect();
    let by = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    let k = k.min(row.len());
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by);
        idx.truncate(k);
    }
    idx.sort_unstable_by(by);
    idx
}

impl TeacherCache {
    /// Runs `model` over every window (one causal pass each) and keeps what training needs.
    /// `progress(done, total)` after each window.
    pub fn build(
        model: &Model,
        windows: &Windows,
        k: usize,
        temperature: f64,
        feature_layers: &[usize],
        mut progress: impl FnMut(usize, usize),
    ) -> Result<TeacherCache> {
        let ctx = windows.ctx;
        let rows = ctx - 1;
        let dim = model.config.dim;
        let mut state = model.new_state(ctx);
        let want: Vec<usize> = (0..rows).collect();
        let mut c = TeacherCache {
            k,
            rows_per_window: rows,
            top_idx: Vec::with_capacity(windows.len() * rows * k),
            top_val: Vec::with_capacity(windows.len() * rows * k),
            lse: Vec::with_capacity(windows.len() * rows),
            feature_layers: feature_layers.to_vec(),
            feature_dim: dim,
            features: vec![Vec::with_capacity(windows.len() * rows * dim); feature_layers.len()],
        };
        for w in 0..windows.len() {
            state.rewind(0);
            let pass = Pass::causal(windows.window(w), Logits::Rows(&want)).keep_hidden(feature_layers);
            let logits = model.forward_pass(&mut state, pass)?;
            let vocab = logits.len() / rows;
            for row in logits.chunks_exact(vocab) {
                let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64 / temperature;
                let z: f64 = row.iter().map(|&x| (x as f64 / temperature - m).exp()).sum();
                c.lse.push((m + z.ln()) as f32);
                for i in top_k(row, k) {
                    c.top_idx.push(i);
                    c.top_val.push(row[i as usize]);
                }
            }
            for (f, &l) in c.features.iter_mut().zip(feature_layers) {
                let h = state.hidden_at(l).context("teacher hidden state")?;
                f.extend(h.iter().map(|&x| f16::from_f32(x)));
            }
            progress(w + 1, windows.len());
        }
        Ok(c)
    }

    /// Writes the cache under `key`.
    pub fn save(&self, path: &Path, key: u64) -> Result<()> {
        let mut b: Vec<u8> = Vec::new();
        b.extend_from_slice(MAGIC);
        for v in [
            key,
            self.k as u64,
            self.rows_per_window as u64,
            self.top_idx.len() as u64,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(self.feature_layers.len() as u64).to_le_bytes());
        for &l in &self.feature_layers {
            b.extend_from_slice(&(l as u64).to_le_bytes());
        }
        b.extend_from_slice(&(self.feature_dim as u64).to_le_bytes());
        self.top_idx.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        self.top_val.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        b.extend_from_slice(&(self.lse.len() as u64).to_le_bytes());
        self.lse.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        for f in &self.features {
            b.extend_from_slice(&(f.len() as u64).to_le_bytes());
            f.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
        }
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        file.write_all(&b)?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// Reads a cache written under `key` that kept (at least) the features of `layers`; `None` if the
    /// file is absent, was written for other windows or lacks one of the layers.
    pub fn load(path: &Path, key: u64, layers: &[usize]) -> Result<Option<TeacherCache>> {
        let mut b = Vec::new();
        match std::fs::File::open(path) {
            Ok(mut f) => f.read_to_end(&mut b)?,
            Err(_) => return Ok(None),
        };
        let mut at = 0usize;
        if take(&b, &mut at, 8)? != MAGIC {
            return Ok(None);
        }
        let h = read_u64s(&b, &mut at, 4)?;
        if h[0] != key {
            return Ok(None);
        }
        let (k, rows_per_window, n) = (h[1] as usize, h[2] as usize, h[3] as usize);
        let nl = read_u64s(&b, &mut at, 1)?[0] as usize;
        let feature_layers: Vec<usize> = read_u64s(&b, &mut at, nl)?.into_iter().map(|x| x as usize).collect();
        let feature_dim = read_u64s(&b, &mut at, 1)?[0] as usize;
        if layers.iter().any(|l| !feature_layers.contains(l)) {
            return Ok(None);
        }
        let top_idx = take(&b, &mut at, 4 * n)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let top_val = take(&b, &mut at, 4 * n)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let nr = read_u64s(&b, &mut at, 1)?[0] as usize;
        let lse = take(&b, &mut at, 4 * nr)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut features: Vec<Vec<f16>> = Vec::new();
        for _ in 0..nl {
            let m = read_u64s(&b, &mut at, 1)?[0] as usize;
            features.push(
                take(&b, &mut at, 2 * m)?
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
            );
        }
        // Keep the asked layers only, in the order asked.
        let mut kept = Vec::with_capacity(layers.len());
        for l in layers {
            let i = feature_layers.iter().position(|x| x == l).context("feature layer")?;
            kept.push(features[i].clone());
        }
        let (feature_layers, features) = (layers.to_vec(), kept);
        Ok(Some(TeacherCache {
            k,
            rows_per_window,
            top_idx,
            top_val,
            lse,
            feature_layers,
            feature_dim,
            features,
        }))
    }
}

/// The next `n` bytes of `b` from `at`.
fn take<'a>(b: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8]> {
    let s = b.get(*at..*at + n).context("teacher cache is truncated")?;
    *at += n;
    Ok(s)
}

fn read_u64s(b: &[u8], at: &mut usize, n: usize) -> Result<Vec<u64>> {
    (0..n)
        .map(|_| Ok(u64::from_le_bytes(take(b, at, 8)?.try_into()?)))
        .collect()
}
