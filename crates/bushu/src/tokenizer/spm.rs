//! SentencePiece-style BPE (llama.cpp's `llm_tokenizer_spm`): start from UTF-8 characters, repeatedly merge the
//! adjacent pair whose concatenation is the vocabulary entry with the highest score, fall back to `<0xXX>` byte
//! tokens for what remains outside the vocabulary.

use super::Vocab;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

pub(crate) struct Spm {
    pub scores: Vec<f32>,
    /// `<0xXX>` token for each byte (or the one-byte token text), when the vocabulary has one.
    pub byte_ids: [Option<u32>; 256],
    pub unk: Option<u32>,
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: i32,
    right: i32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Highest score first; among equal scores the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

impl Spm {
    pub fn new(vocab: &Vocab, scores: Vec<f32>, unk: Option<u32>) -> Spm {
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            let t = format!("<0x{b:02X}>");
            *slot = vocab.id(&t).or_else(|| {
                let c = char::from(b as u8);
                if b < 128 {
                    vocab.id(c.encode_utf8(&mut [0; 4]))
                } else {
                    None
                }
            });
        }
        Spm { scores, byte_ids, unk }
    }

    /// Tokenizes one fragment of raw text (no special tokens in it), appending ids to `out`.
    pub fn encode(&self, vocab: &Vocab, raw: &str, space_prefix: bool, out: &mut Vec<u32>) {
        let mut text = String::with_capacity(raw.len() + 8);
        if space_prefix {
            text.push('\u{2581}');
        }
        for c in raw.chars() {
            if c == ' ' {
                text.push('\u{2581}');
            } else {
                text.push(c);
            }
        }
        if text.is_empty() {
            return;
        }
        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        let n_chars = text.chars().count();
        for (i, (start, c)) in text.char_indices().enumerate() {
            syms.push(Sym {
                start,
                len: c.len_utf8(),
                prev: i as i32 - 1,
                next: if i + 1 == n_chars { -1 } else { i as i32 + 1 },
            });
        }
        let mut heap = BinaryHeap::with_capacity(syms.len());
        for i in 1..syms.len() {
            self.try_add(vocab, &text, &syms, i as i32 - 1, i as i32, &mut heap);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (bg.left as usize, bg.right as usize);
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != bg.size {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            let rn = syms[r].next;
            if rn >= 0 {
                syms[rn as usize].prev = bg.left;
            }
            let prev = syms[l].prev;
            let next = syms[l].next;
            self.try_add(vocab, &text, &syms, prev, bg.left, &mut heap);
            self.try_add(vocab, &text, &syms, bg.left, next, &mut heap);
        }
        let mut i = 0i32;
        while i != -1 {
            let s = syms[i as usize];
            let piece = &text[s.start..s.start + s.len];
            match vocab.id(piece) {
                Some(id) => out.push(id),
                None => {
                    for &b in piece.as_bytes() {
                        if let Some(id) = self.byte_ids[b as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            i = s.next;
        }
    }

    fn try_add(&self, vocab: &Vocab, text: &str, syms: &[Sym], left: i32, right: i32, heap: &mut BinaryHeap<Bigram>) {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (syms[left as usize], syms[right as usize]);
        let piece = &text[l.start..l.start + l.len + r.len];
        if let Some(id) = vocab.id(piece) {
            let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
            heap.push(Bigram {
                score,
                left,
                right,
                size: piece.len(),
            });
        }
    }
}
