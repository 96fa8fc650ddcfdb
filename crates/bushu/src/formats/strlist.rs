//! Lists of strings and of byte strings packed into one buffer: a 50k-entry vocabulary is two allocations
//! (the bytes and the offsets), not 50k.

use std::fmt;
use std::ops::Index;

/// Strings packed into one buffer: a [`ByteList`] whose items are all UTF-8 (only `&str` goes in).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct StrList(ByteList);

impl StrList {
    pub fn new() -> StrList {
        StrList::default()
    }

    /// An empty list with room for `items` strings of `bytes` bytes in all.
    pub fn with_capacity(items: usize, bytes: usize) -> StrList {
        StrList(ByteList::with_capacity(items, bytes))
    }

    pub fn push(&mut self, s: &str) {
        self.0.push(s.as_bytes());
    }

    /// Appends `bytes` as a string, invalid UTF-8 sequences replaced by U+FFFD.
    pub fn push_lossy(&mut self, bytes: &[u8]) {
        self.push(&String::from_utf8_lossy(bytes));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The bytes of all the strings together.
    pub fn text_len(&self) -> usize {
        self.0.data.len()
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        self.0.get(i).map(utf8)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + DoubleEndedIterator + '_ {
        self.0.iter().map(utf8)
    }
}

/// An item of a [`StrList`] as the `&str` it was pushed as.
fn utf8(b: &[u8]) -> &str {
    // SAFETY: every item was pushed from a `&str`, and item boundaries are string boundaries.
    unsafe { std::str::from_utf8_unchecked(b) }
}

impl Index<usize> for StrList {
    type Output = str;
    fn index(&self, i: usize) -> &str {
        utf8(&self.0[i])
    }
}

impl<S: AsRef<str>> FromIterator<S> for StrList {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> StrList {
        let mut list = StrList::new();
        list.extend(iter);
        list
    }
}

impl<S: AsRef<str>> Extend<S> for StrList {
    fn extend<I: IntoIterator<Item = S>>(&mut self, iter: I) {
        for s in iter {
            self.push(s.as_ref());
        }
    }
}

impl fmt::Debug for StrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Byte strings packed into one buffer: item `i` is `data[offsets[i]..offsets[i + 1]]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ByteList {
    data: Vec<u8>,
    /// `len() + 1` offsets into `data`, the first 0.
    offsets: Vec<usize>,
}

impl ByteList {
    pub fn new() -> ByteList {
        ByteList::with_capacity(0, 0)
    }

    /// An empty list with room for `items` byte strings of `bytes` bytes in all.
    pub fn with_capacity(items: usize, bytes: usize) -> ByteList {
        let mut offsets = Vec::with_capacity(items + 1);
        offsets.push(0);
        ByteList {
            data: Vec::with_capacity(bytes),
            offsets,
        }
    }

    pub fn push(&mut self, b: &[u8]) {
        self.push_with(|data| data.extend_from_slice(b));
    }

    /// Appends one item: the bytes `write` appends to the buffer it is given (it must not remove any).
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.data.len();
        write(&mut self.data);
        assert!(self.data.len() >= start, "ByteList::push_with may only append");
        self.offsets.push(self.data.len());
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let (&start, &end) = (self.offsets.get(i)?, self.offsets.get(i + 1)?);
        Some(&self.data[start..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + DoubleEndedIterator + '_ {
        self.offsets.windows(2).map(|w| &self.data[w[0]..w[1]])
    }
}

impl Default for ByteList {
    fn default() -> ByteList {
        ByteList::new()
    }
}

impl Index<usize> for ByteList {
    type Output = [u8];
    fn index(&self, i: usize) -> &[u8] {
        let n = self.len();
        self.get(i)
            .unwrap_or_else(|| panic!("index {i} out of range for a list of {n} byte strings"))
    }
}

impl fmt::Debug for ByteList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_bytes() {
        let mut s: StrList = ["a", "", "▁bc"].into_iter().collect();
        s.push_lossy(b"x\xffy");
        assert_eq!(s.len(), 4);
        assert_eq!(s.iter().collect::<Vec<_>>(), ["a", "", "▁bc", "x\u{fffd}y"]);
        assert_eq!((&s[2], s.get(4)), ("▁bc", None));
        assert!(StrList::new().is_empty() && StrList::new().iter().next().is_none());
        assert_eq!(format!("{s:?}"), "[\"a\", \"\", \"▁bc\", \"x\u{fffd}y\"]");

        let mut b = ByteList::with_capacity(2, 4);
        b.push(b"\x00\x01");
        b.push_with(|d| d.extend_from_slice(b" z"));
        b.push(b"");
        assert_eq!(b.iter().collect::<Vec<_>>(), [&b"\x00\x01"[..], b" z", b""]);
        assert_eq!((&b[1], b.get(3)), (&b" z"[..], None));
    }
}
