//! Pre-tokenizers of byte-level BPE vocabularies, selected by `tokenizer.ggml.pre`. Each is a list of regexes
//! applied in turn: every regex splits each current piece into its matches and the text between them (both
//! kept), as llama.cpp's `unicode_regex_split` and Hugging Face's `Split(..., "isolated")` do. The regexes are
//! the ones the models' `tokenizer.json` files name (as collected in llama.cpp's `llama-vocab.cpp`).

use anyhow::{anyhow, Result};
use fancy_regex::Regex;

/// GPT-2: contractions, letters, numbers, other, trailing whitespace.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3 (also DBRX, Smaug, ChatGLM4): numbers in groups of up to three digits.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 (also StableLM2): single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Cased letters; code points that Unicode normalization would change are escaped.
const DEEPSEEK_LLM: &[&str] = &[
    r"[\r\n]",
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
];
const DEEPSEEK3_LLM: &[&str] = &[
    r"\p{N}{1,3}",
    r"[一-龥぀-ゟ゠-ヿ]+",
    r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
];
const DEEPSEEK_CODER: &[&str] = &[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"];
const FALCON: &[&str] = &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"];
const STARCODER: &[&str] = &[r"\p{N}", GPT2];
const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];
const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const CHAMELEON: &[&str] = &[
    r"<sentinel:[0-9]+>",
    r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    r"([\t\n]|    |  )",
    r"\p{N}",
    r"[\p{P}!-/:-@\[-`{-~]",
    GPT2,
];
const BAILINGMOE: &str = r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
const SEED_CODER: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a `tokenizer.ggml.pre` value configures a byte-level BPE tokenizer.
pub(crate) struct PreConfig {
    pub regexes: Vec<&'static str>,
    /// Emit a pre-token that is a vocabulary entry without merging (Llama 3, Tekken).
    pub ignore_merges: bool,
    /// llama.cpp's default for adding BOS (overridden by `tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// The vocabulary has no BOS token unless the file names one (ChatGLM).
    pub no_bos: bool,
}

/// The configuration for a `tokenizer.ggml.pre` value, or None for an unknown one.
pub(crate) fn pre_config(name: &str) -> Option<PreConfig> {
    let cfg = |regexes: &[&'static str]| PreConfig {
        regexes: regexes.to_vec(),
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    };
    Some(match name {
        "default" => cfg(DEFAULT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..cfg(&[LLAMA3])
        },
        "dbrx" | "smaug-bpe" => cfg(&[LLAMA3]),
        "chatglm-bpe" | "glm4" => PreConfig {
            no_bos: true,
            ..cfg(&[LLAMA3])
        },
        "deepseek-llm" => cfg(DEEPSEEK_LLM),
        "deepseek-coder" => cfg(DEEPSEEK_CODER),
        "deepseek-v3" | "hunyuan-dense" => cfg(DEEPSEEK3_LLM),
        "falcon" => cfg(FALCON),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => cfg(STARCODER),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling"
        | "exaone4" => cfg(&[GPT2]),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "megrez" | "stablelm2" | "hunyuan" | "grok-2" => cfg(&[QWEN2]),
        "poro-chat" | "bloom" | "gpt3-finnish" => cfg(&[PORO]),
        "viking" => cfg(&[PORO, r"\p{N}"]),
        "tekken" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..cfg(&[TEKKEN])
        },
        "chameleon" => PreConfig {
            add_bos: true,
            ..cfg(CHAMELEON)
        },
        "gpt-4o" | "llama4" | "minimax-m2" => cfg(&[GPT4O]),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => cfg(&[BAILINGMOE]),
        "seed-coder" => cfg(&[SEED_CODER]),
        _ => return None,
    })
}

/// A compiled pre-tokenizer.
pub(crate) struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    pub fn new(patterns: &[&str]) -> Result<PreTokenizer> {
        let regexes = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| anyhow!("pre-tokenizer regex {p:?}: {e}")))
            .collect::<Result<_>>()?;
        Ok(PreTokenizer { regexes })
    }

    /// Splits `text` into pre-tokens (their concatenation is `text`).
    pub fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut pieces = vec![text];
        for re in &self.regexes {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for p in pieces {
                let mut last = 0;
                for m in re.find_iter(p) {
                    // A regex failure (backtracking limit) leaves the rest of the piece as it is.
                    let Ok(m) = m else { break };
                    if m.start() > last {
                        next.push(&p[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < p.len() {
                    next.push(&p[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }
}
