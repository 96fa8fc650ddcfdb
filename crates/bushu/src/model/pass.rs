//! What one forward pass over one sequence computes: its tokens, which of them get logits, and who
//! sees whom — a causal run, or a token tree (speculative decoding verifies several drafts at once).
//!
//! In a tree, token `i`'s parent is an earlier token of the pass (or none: a root, whose parent is the
//! last cached position). Its RoPE position is `pos0 + depth` (siblings share a position), but every
//! token keeps its own cache row, `pos0 + i`, since siblings cannot share one. A token sees the cached
//! positions and its path (its ancestors and itself), each ancestor at its depth's position: it
//! computes exactly what its branch would compute alone in a causal pass, bit for bit.
//!
//! After verification the cache holds every token of the tree. The accepted branch is kept by moving its
//! rows to consecutive positions ([`crate::model::KvCache::keep_rows`]; for the paged cache,
//! [`crate::engine::model_runner::PagedCache::keep_rows`]) and forgetting the rest: a row copy per layer
//! and accepted token, where feeding the branch again would cost a forward pass. The moved rows are the
//! ones that pass would have written (same RoPE position, same visible context), so the cache ends up
//! bit for bit as if the branch alone had been run.

pub use super::early_exit::ExitRule;
use anyhow::{bail, Result};
use kernels::attention::TreePaths;

/// Which positions of a forward pass get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits<'a> {
    /// None: the pass only fills the cache (a prefill chunk that does not reach the end).
    None,
    /// Only the last token's (generation).
    Last,
    /// Every token's (perplexity, tests).
    All,
    /// These tokens' (indices into the pass, in the order given): the rows that verify drafts.
    Rows(&'a [usize]),
}

impl Logits<'_> {
    /// Appends to `out` the indices of the rows of an `n`-token pass that get logits; an error if a
    /// row is outside the pass.
    pub fn rows(self, n: usize, out: &mut Vec<usize>) -> Result<()> {
        match self {
            Logits::None => {}
            Logits::Last => out.push(n - 1),
            Logits::All => out.extend(0..n),
            Logits::Rows(rows) => {
                if let Some(r) = rows.iter().find(|&&r| r >= n) {
                    bail!("logits asked for row {r} of a pass of {n} tokens");
                }
                out.extend_from_slice(rows);
            }
        }
        Ok(())
    }
}

/// A forward pass over one sequence, from its cache's current length on.
#[derive(Clone, Copy, Debug)]
pub struct Pass<'a> {
    pub tokens: &'a [u32],
    pub logits: Logits<'a>,
    /// `None`: causal. `Some(parent)`: a token tree, `parent[i]` the index in the pass of token `i`'s
    /// parent (before `i`), `None` for a root.
    pub tree: Option<&'a [Option<usize>]>,
    /// `Some(k)`: run only the first `k` layers, then the final norm and the classifier (early exit; the
    /// draft of self-speculation). Layers `k..` store no keys and values for these tokens: a later full
    /// pass over the same positions (after a rewind) computes them.
    pub exit: Option<usize>,
    /// Layers after which the residual stream of the rows that get logits is kept
    /// (`State::hidden_at`): features for exit heads, distillation, drafters.
    pub hidden: &'a [usize],
    /// Early exit by entropy (a one-token pass): after each of the rule's exit layers, the final norm
    /// and classifier; below the threshold, the remaining layers only get this token's keys and values,
    /// propagated from the exit layer's residual stream ([`super::early_exit`]).
    pub early_exit: Option<ExitRule<'a>>,
}

impl<'a> Pass<'a> {
    /// A causal pass.
    pub fn causal(tokens: &'a [u32], logits: Logits<'a>) -> Pass<'a> {
        Pass {
            tokens,
            logits,
            tree: None,
            exit: None,
            hidden: &[],
            early_exit: None,
        }
    }

    /// A token tree (`parent` as in the `tree` field).
    pub fn tree(tokens: &'a [u32], parent: &'a [Option<usize>], logits: Logits<'a>) -> Pass<'a> {
        Pass {
            tokens,
            logits,
            tree: Some(parent),
            exit: None,
            hidden: &[],
            early_exit: None,
        }
    }

    /// This pass stopping after `layers` layers.
    pub fn exit_after(self, layers: usize) -> Pass<'a> {
        Pass {
            exit: Some(layers),
            ..self
        }
    }

    /// This (one-token) pass exiting early by `rule` ([`super::early_exit`]); `State::layers_run` says
    /// where it exited.
    pub fn exit_by_entropy(self, rule: ExitRule<'a>) -> Pass<'a> {
        Pass {
            early_exit: Some(rule),
            ..self
        }
    }

    /// This pass keeping the residual stream after each of `layers` (0-based: after layer `l` runs).
    pub fn keep_hidden(self, layers: &'a [usize]) -> Pass<'a> {
        Pass { hidden: layers, ..self }
    }
}

/// A token tree laid out for attention: each token's depth and path (reused buffers).
#[derive(Clone, Debug, Default)]
pub struct Tree {
    depth: Vec<usize>,
    idx: Vec<usize>,
    start: Vec<usize>,
}

impl Tree {
    /// Lays out the tree of `parent` (as in [`Pass`]); an error unless every parent comes before its
    /// child (which also rules out cycles).
    pub fn build(&mut self, parent: &[Option<usize>]) -> Result<()> {
        self.depth.clear();
        self.idx.clear();
        self.start.clear();
        self.start.push(0);
        for (i, &p) in parent.iter().enumerate() {
            match p {
                Some(p) if p >= i => bail!("token {i} of a tree names token {p} as its parent, not an earlier one"),
                Some(p) => {
                    self.depth.push(self.depth[p] + 1);
                    self.idx.extend_from_within(self.start[p]..self.start[p + 1]);
                }
                None => self.depth.push(0),
            }
            self.idx.push(i);
            self.start.push(self.idx.len());
        }
        Ok(())
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.depth.len()
    }

    pub fn is_empty(&self) -> bool {
        self.depth.is_empty()
    }

    /// Token `t`'s depth: its position is `pos0 + depth`.
    pub fn depth(&self, t: usize) -> usize {
        self.depth[t]
    }

    /// Token `t`'s path: the indices of its ancestors by depth, then `t` itself. Keeping an accepted
    /// branch ending at `t` keeps these rows.
    pub fn path(&self, t: usize) -> &[usize] {
        &self.idx[self.start[t]..self.start[t + 1]]
    }

    /// Every token's path, as the attention kernels take them.
    pub fn paths(&self) -> TreePaths<'_> {
        TreePaths {
            idx: &self.idx,
            start: &self.start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_depths_and_paths() {
        let mut t = Tree::default();
        t.build(&[None, Some(0), Some(0), Some(2), None]).unwrap();
        assert_eq!((0..5).map(|i| t.depth(i)).collect::<Vec<_>>(), [0, 1, 1, 2, 0]);
        assert_eq!(t.path(3), [0, 2, 3]);
        assert_eq!(t.path(4), [4]);
        assert_eq!(t.paths().path(1), [0, 1]);
        assert!(t.build(&[None, Some(1)]).is_err());
        assert!(t.build(&[Some(3), None]).is_err());
    }

    #[test]
    fn logits_rows_are_checked() {
        let mut out = Vec::new();
        Logits::Rows(&[2, 0]).rows(3, &mut out).unwrap();
        Logits::Last.rows(3, &mut out).unwrap();
        Logits::None.rows(3, &mut out).unwrap();
        assert_eq!(out, [2, 0, 2]);
        assert!(Logits::Rows(&[3]).rows(3, &mut out).is_err());
    }
}
