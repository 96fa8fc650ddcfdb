//! Byte-level BPE (GPT-2 style): pre-tokenize with the model's regexes, map bytes to the GPT-2 printable
//! characters, then apply merges by rank (lowest first; leftmost among equals).

use super::pretokenize::PreTokenizer;
use super::Vocab;
use anyhow::{bail, Result};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// GPT-2's byte → char table: printable bytes map to themselves, the rest to U+0100 onwards in order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut t = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        t[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    t
}

/// The inverse of [`byte_to_char_table`], indexed by code point (the table's characters are below U+0144).
pub(crate) struct CharToByte([Option<u8>; 0x144]);

impl CharToByte {
    fn get(&self, c: char) -> Option<u8> {
        self.0.get(c as usize).copied().flatten()
    }
}

pub(crate) fn char_to_byte_map() -> CharToByte {
    let mut map = CharToByte([None; 0x144]);
    for (b, &c) in byte_to_char_table().iter().enumerate() {
        map.0[c as usize] = Some(b as u8);
    }
    map
}

/// Decodes byte-level token text to its bytes, appended to `out` (characters outside the table are kept as
/// UTF-8).
pub(crate) fn byte_level_decode(text: &str, map: &CharToByte, out: &mut Vec<u8>) {
    for c in text.chars() {
        match map.get(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
}

pub(crate) struct Bpe {
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32), ahash::RandomState>,
    /// Token of each single byte's mapped character.
    byte_ids: [Option<u32>; 256],
    byte_chars: [char; 256],
    pre: PreTokenizer,
    /// A pre-token that is itself a vocabulary entry is emitted whole (Llama 3, Tekken).
    ignore_merges: bool,
}

#[derive(PartialEq, Eq)]
struct Pair {
    rank: u32,
    left: usize,
    right: usize,
    merged: u32,
    /// Token ids of left and right when queued, to detect stale pairs.
    ids: (u32, u32),
}

impl Ord for Pair {
    /// BinaryHeap pops the greatest: lowest rank first, then leftmost.
    fn cmp(&self, o: &Self) -> Ordering {
        o.rank.cmp(&self.rank).then(o.left.cmp(&self.left))
    }
}
impl PartialOrd for Pair {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Bpe {
    /// `merges` are `"left right"` texts, highest priority first.
    pub fn new<'a>(
        vocab: &Vocab,
        merges: impl ExactSizeIterator<Item = &'a str>,
        pre: PreTokenizer,
        ignore_merges: bool,
    ) -> Result<Bpe> {
        let byte_chars = byte_to_char_table();
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = vocab.id(byte_chars[b].encode_utf8(&mut [0; 4]));
        }
        let mut map = HashMap::with_capacity_and_hasher(merges.len(), ahash::RandomState::new());
        let mut buf = String::new();
        for (rank, m) in merges.enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                bail!("tokenizer.ggml.merges[{rank}] = {m:?} is not of the form \"left right\"");
            };
            let (Some(ia), Some(ib)) = (vocab.id(a), vocab.id(b)) else {
                continue;
            };
            buf.clear();
            buf.push_str(a);
            buf.push_str(b);
            let Some(im) = vocab.id(&buf) else {
                continue;
            };
            map.entry((ia, ib)).or_insert((rank as u32, im));
        }
        Ok(Bpe {
            merges: map,
            byte_ids,
            byte_chars,
            pre,
            ignore_merges,
        })
    }

    /// Tokenizes one fragment of raw text (no special tokens in it), appending ids to `out`.
    pub fn encode(&self, vocab: &Vocab, raw: &str, out: &mut Vec<u32>) {
        let mut mapped = String::new();
        for word in self.pre.split(raw) {
            if self.ignore_merges {
                mapped.clear();
                mapped.extend(word.bytes().map(|b| self.byte_chars[b as usize]));
                if let Some(id) = vocab.id(&mapped) {
                    out.push(id);
                    continue;
                }
            }
            self.encode_word(word.as_bytes(), out);
        }
    }

    fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        // Symbols: token id (u32::MAX when a byte has no token), linked list over positions.
        let n = word.len();
        let mut ids: Vec<u32> = word
            .iter()
            .map(|&b| self.byte_ids[b as usize].unwrap_or(u32::MAX))
            .collect();
        if n == 1 {
            if ids[0] != u32::MAX {
                out.push(ids[0]);
            }
            return;
        }
        let mut prev: Vec<isize> = (0..n as isize).map(|i| i - 1).collect();
        let mut next: Vec<usize> = (1..=n).collect(); // n means none
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::with_capacity(n);
        let push = |heap: &mut BinaryHeap<Pair>, ids: &[u32], l: usize, r: usize| {
            if let Some(&(rank, merged)) = self.merges.get(&(ids[l], ids[r])) {
                heap.push(Pair {
                    rank,
                    left: l,
                    right: r,
                    merged,
                    ids: (ids[l], ids[r]),
                });
            }
        };
        for i in 0..n - 1 {
            push(&mut heap, &ids, i, i + 1);
        }
        while let Some(p) = heap.pop() {
            let (l, r) = (p.left, p.right);
            if !alive[l] || !alive[r] || next[l] != r || (ids[l], ids[r]) != p.ids {
                continue;
            }
            ids[l] = p.merged;
            alive[r] = false;
            next[l] = next[r];
            if next[r] < n {
                prev[next[r]] = l as isize;
            }
            if prev[l] >= 0 {
                push(&mut heap, &ids, prev[l] as usize, l);
            }
            if next[l] < n {
                push(&mut heap, &ids, l, next[l]);
            }
        }
        let mut i = 0;
        while i < n {
            if ids[i] != u32::MAX {
                out.push(ids[i]);
            }
            i = next[i];
        }
    }
}
