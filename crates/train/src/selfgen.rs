//! Self-distillation data: text the teacher generates itself, added to the training data of
//! `bushu distill` (`--generate-prompts`, `--generate-chat`). DistillSpec (Zhou et al. 2024) found
//! training a draft on the target's own outputs the best data for speculative decoding: at inference
//! the draft has to guess what the teacher will write, which is not what a corpus says.
//!
//! Two kinds of prompt files, one prompt a line (blank lines skipped):
//! - plain text openings (`--generate-prompts`): tokenized as they are (with BOS when the tokenizer
//!   adds it), the teacher continues them;
//! - instructions (`--generate-chat`): each rendered as one user message with the teacher's chat
//!   template and its generation prompt (`chat::session::template_for`: ChatML when the file has no
//!   template), the teacher answers; its end-of-turn tokens end the answer.
//!
//! Generation is greedy (what greedy speculative decoding asks the draft to predict), `--generate-tokens`
//! at most per prompt, batched in bushu's continuous-batching engine (`Engine::generate`), whose
//! greedy output is single-sequence greedy output (tested here against `generate::generate`). Each
//! sequence — prompt, then the generated tokens including the stop token that ended it — is a
//! document of the training stream. The sequences are cached on disk under a key of the teacher
//! file, the prompts' tokens and the token budget, so reruns (another student, more steps) reuse them.

use anyhow::{bail, Context, Result};
use bushu::chat::session::template_for;
use bushu::chat::Message;
use bushu::engine::{Engine, EngineConfig, Request};
use bushu::model::{Model, ModelFile};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The prompts of one generation: token ids and the extra stop ids of each.
pub struct GenPrompts {
    pub prompts: Vec<Vec<u32>>,
    pub stops: Vec<Vec<u32>>,
}

/// The non-blank lines of the prompt files (trimmed); one clear error for a missing file or one
/// without any prompt.
pub fn read_lines(files: &[PathBuf], what: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read the {what} file {}", f.display()))?;
        let before = out.len();
        out.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from));
        if out.len() == before {
            bail!("the {what} file {} has no prompt (one per line)", f.display());
        }
    }
    Ok(out)
}

/// Tokenizes the plain openings and renders the instructions with the chat template.
pub fn prompts(file: &ModelFile, plain: &[String], chat: &[String]) -> Result<GenPrompts> {
    let mut g = GenPrompts {
        prompts: Vec::new(),
        stops: Vec::new(),
    };
    for l in plain {
        g.prompts.push(file.tokenizer.encode(l, true)?);
        g.stops.push(Vec::new());
    }
    if !chat.is_empty() {
        let (template, stops, _) = template_for(file)?;
        for l in chat {
            let text = template.render(&[Message::new("user", l)], true)?;
            // The template writes BOS itself when the model wants one.
            g.prompts.push(file.tokenizer.encode(&text, false)?);
            g.stops.push(stops.clone());
        }
    }
    Ok(g)
}

/// Generates greedily from every prompt (`n` tokens at most, `batch` sequences at once) with `model`
/// in the serving engine: each result is the prompt followed by the generated tokens.
pub fn generate_all(model: Model, eos: &[u32], p: &GenPrompts, n: usize, batch: usize) -> Result<Vec<Vec<u32>>> {
    if n == 0 || batch == 0 {
        bail!("--generate-tokens and --generate-batch must be at least 1");
    }
    let longest = p.prompts.iter().map(Vec::len).max().unwrap_or(0) + n + 1;
    if longest > model.config.max_ctx {
        bail!(
            "a generation prompt plus --generate-tokens {n} needs {longest} positions, beyond the teacher's context of {}",
            model.config.max_ctx
        );
    }
    let cfg = EngineConfig::for_model(&model, batch, Some(longest), None);
    let mut engine = Engine::new(model, eos.to_vec(), cfg);
    let reqs: Vec<Request> = p
        .prompts
        .iter()
        .zip(&p.stops)
        .map(|(prompt, stops)| {
            let mut r = Request::greedy(prompt.clone(), n);
            r.stop_ids = stops.clone();
            r
        })
        .collect();
    let generated = engine.generate(reqs)?;
    Ok(p.prompts
        .iter()
        .zip(generated)
        .map(|(prompt, g)| prompt.iter().copied().chain(g).collect())
        .collect())
}

const MAGIC: &[u8; 8] = b"BUSHUGEN";

/// The key a cache of generated sequences must match: the teacher file's identity (size, modification
/// time), every prompt's tokens and stop ids, and the token budget.
pub fn gen_key(teacher: &Path, p: &GenPrompts, n: usize) -> Result<u64> {
    let meta = std::fs::metadata(teacher).with_context(|| format!("cannot read {}", teacher.display()))?;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    };
    eat(&meta.len().to_le_bytes());
    if let Ok(t) = meta.modified() {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            eat(&d.as_nanos().to_le_bytes());
        }
    }
    eat(&(n as u64).to_le_bytes());
    for (prompt, stops) in p.prompts.iter().zip(&p.stops) {
        eat(&(prompt.len() as u64).to_le_bytes());
        prompt.iter().for_each(|t| eat(&t.to_le_bytes()));
        eat(&(stops.len() as u64).to_le_bytes());
        stops.iter().for_each(|t| eat(&t.to_le_bytes()));
    }
    Ok(h)
}

/// Writes `seqs` under `key`.
pub fn save(path: &Path, key: u64, seqs: &[Vec<u32>]) -> Result<()> {
    let mut b = Vec::new();
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&key.to_le_bytes());
    b.extend_from_slice(&(seqs.len() as u64).to_le_bytes());
    for s in seqs {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        s.iter().for_each(|t| b.extend_from_slice(&t.to_le_bytes()));
    }
    let mut tmp = path.to_path_buf().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(&b)?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Reads sequences saved under `key`; `None` when the file is absent, not such a cache, truncated or
/// written for other prompts, teacher or budget.
pub fn load(path: &Path, key: u64) -> Result<Option<Vec<Vec<u32>>>> {
    let mut b = Vec::new();
    match std::fs::File::open(path) {
        Ok(mut f) => f.read_to_end(&mut b)?,
        Err(_) => return Ok(None),
    };
    let u64_at = |at: usize| -> Option<u64> { Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?)) };
    if b.get(..8) != Some(MAGIC.as_slice()) || u64_at(8) != Some(key) {
        return Ok(None);
    }
    let Some(count) = u64_at(16) else { return Ok(None) };
    let mut at = 24;
    let mut seqs = Vec::new();
    for _ in 0..count {
        let Some(len) = u64_at(at) else { return Ok(None) };
        at += 8;
        let Some(bytes) = b.get(at..at + 4 * len as usize) else {
            return Ok(None);
        };
        seqs.push(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        );
        at += 4 * len as usize;
    }
    Ok(Some(seqs))
}
