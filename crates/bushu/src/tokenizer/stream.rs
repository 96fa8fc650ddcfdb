//! Streaming detokenization: turn generated ids into text as they arrive, emitting only complete UTF-8
//! characters (a character may span several byte-fallback or byte-level tokens).

use super::Tokenizer;

/// Incremental detokenizer that emits only complete UTF-8 text.
///
/// The concatenation of everything [`push`](Self::push) and [`flush`](Self::flush) return equals
/// [`Tokenizer::decode`] of all pushed ids (for a decoder made with [`new`](Self::new)).
pub struct StreamDecoder {
    tok: Tokenizer,
    pending: Vec<u8>,
    /// Remove one leading space from the first non-empty piece (SentencePiece), as `decode` does.
    strip: bool,
}

impl StreamDecoder {
    /// A decoder for a fresh sequence: like [`Tokenizer::decode`], it removes the leading space a
    /// SentencePiece tokenizer puts on the first piece.
    pub fn new(tok: &Tokenizer) -> StreamDecoder {
        StreamDecoder {
            tok: tok.clone(),
            pending: Vec::new(),
            strip: tok.inner.strip_leading_space,
        }
    }

    /// A decoder for text that continues an already-decoded prompt: pieces are rendered as they are (a
    /// generated `▁word` keeps its space).
    pub fn continuation(tok: &Tokenizer) -> StreamDecoder {
        StreamDecoder {
            tok: tok.clone(),
            pending: Vec::new(),
            strip: false,
        }
    }

    /// Adds one token; returns the text completed by it (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        let mut p = self.tok.id_to_bytes(id);
        if p.is_empty() {
            return String::new();
        }
        if self.strip {
            self.strip = false;
            if p[0] == b' ' {
                p = &p[1..];
            }
        }
        self.pending.extend_from_slice(p);
        self.take_complete()
    }

    /// Returns whatever is left (an incomplete character at the end becomes U+FFFD, as in `decode`).
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    /// Bytes received but not yet returned (an incomplete UTF-8 character).
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    /// Emits the longest prefix of `pending` that cannot change with more input: valid characters, and
    /// U+FFFD for invalid sequences (exactly as `String::from_utf8_lossy` renders them).
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut pos = 0;
        loop {
            match std::str::from_utf8(&self.pending[pos..]) {
                Ok(s) => {
                    out.push_str(s);
                    pos = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[pos..pos + valid]).unwrap());
                    match e.error_len() {
                        Some(len) => {
                            out.push('\u{FFFD}');
                            pos += valid + len;
                        }
                        None => {
                            pos += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..pos);
        out
    }
}
