//! One verification step: the target runs the last token and the `k` drafts in ONE forward pass with
//! logits for all `k + 1` rows ([`Logits::Rows`]): row `i` is the target's next-token logits after the
//! sequence and the first `i` drafts, exactly what `k + 1` plain decode steps would have computed (each
//! row is computed independently of the others). Drafts are checked in order with [`verify_one`]; the
//! first rejected draft is replaced by the residual draw and ends the step, and if all are accepted the
//! last row gives a bonus token. Then the target's cache is rewound to the accepted length (the
//! rejected drafts' keys and values forgotten) and the sampler's history holds exactly the tokens kept.
//!
//! A token tree ([`verify_tree`], greedy) is verified the same way in one tree-masked pass
//! ([`Pass::tree`]: each node sees the sequence and its own ancestors, at its depth's position): from
//! the last token's row, the target's choice is looked for among the node's children, and the walk goes
//! on while it is found. The accepted branch's cache rows are then moved to consecutive positions
//! ([`crate::model::KvCache::keep_rows`]) and the other branches forgotten: the cache holds exactly what
//! running the accepted tokens causally would have written.
//! With sampling, a tree of Medusa drafts is walked with typical acceptance instead
//! ([`verify_tree_typical`], lossy).
//! Drafts that are not guesses of a proposer but tokens a grammar forces (structured output's
//! fast-forward) are verified by [`Rule::Sample`] instead: each row is sampled as plain decoding would
//! sample it and a draft is kept while it is the token sampled (the serving engine's rule), so that the
//! output is token for token plain decoding's, random draws included.

use super::medusa::Typical;
use super::proposer::Proposal;
use super::rejection::{verify_one, Verdict};
use crate::model::llama::State;
use crate::model::{Logits, Model, Pass};
use crate::sampling::Sampler;
use anyhow::{bail, Result};

/// What a verification step produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The accepted drafts, then the target's own token (the replacement of the first rejected draft,
    /// or the bonus token): between 1 and `k + 1` tokens.
    pub tokens: Vec<u32>,
    /// How many drafts were accepted.
    pub accepted: usize,
    /// A token tree's accepted branch left the first-child line somewhere (took a node's second or
    /// later child: a draft's second choice).
    pub off_first: bool,
    /// The row of the pass (among those that got logits) whose logits chose the last token: its
    /// hidden state is where Medusa's heads draft the next step from.
    pub last_row: usize,
}

/// How drafts are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// Speculative sampling ([`verify_one`]): the output distribution is plain decoding's.
    Rejection,
    /// Each row sampled by the sampler, a draft kept while it is the token sampled: the output is plain
    /// decoding's token for token (same draws), whatever the drafts.
    Sample,
}

/// Verifies `proposal` after `last` (the sequence's last token, not yet in `state`'s cache, which holds
/// the rest of the sequence; `sampler`'s history is the whole sequence). Leaves the cache holding the
/// sequence and every returned token but the last, the history the sequence and every returned token,
/// and in `rows` the raw logits each returned token was chosen from (`vocab` values each, in order).
pub fn verify(
    model: &Model,
    state: &mut State,
    sampler: &mut Sampler,
    last: u32,
    proposal: &Proposal,
    rows: &mut Vec<f32>,
) -> Result<Step> {
    verify_with(model, state, sampler, last, proposal, rows, Rule::Rejection)
}

/// [`verify`] with the given [`Rule`].
pub fn verify_with(
    model: &Model,
    state: &mut State,
    sampler: &mut Sampler,
    last: u32,
    proposal: &Proposal,
    rows: &mut Vec<f32>,
    rule: Rule,
) -> Result<Step> {
    let (pos0, k, vocab) = (state.pos(), proposal.len(), model.config.vocab_size);
    let mut input = Vec::with_capacity(k + 1);
    input.push(last);
    input.extend_from_slice(&proposal.tokens);
    let idx: Vec<usize> = (0..=k).collect();
    // Under a grammar, the masks of the rows are computed on another thread while the pass runs.
    let logits = match sampler.has_grammar() {
        true => {
            let (logits, ()) = rayon::join(
                || model.forward_pass(state, Pass::causal(&input, Logits::Rows(&idx))),
                || sampler.prepare_grammar(&proposal.tokens),
            );
            logits?
        }
        false => model.forward_pass(state, Pass::causal(&input, Logits::Rows(&idx)))?,
    };
    rows.clear();
    rows.extend_from_slice(logits);
    let mut tokens = Vec::with_capacity(k + 1);
    for (i, &x) in proposal.tokens.iter().enumerate() {
        let row = &rows[i * vocab..(i + 1) * vocab];
        let verdict = match rule {
            Rule::Rejection => {
                let p = sampler.distribution(row);
                let v = verify_one(&p, proposal.q(i), x, sampler.rng());
                sampler.accept(match v {
                    Verdict::Accept => x,
                    Verdict::Reject(t) => t,
                });
                v
            }
            // `sample` records the token in the history.
            Rule::Sample => match sampler.sample(row) {
                t if t == x => Verdict::Accept,
                t => Verdict::Reject(t),
            },
        };
        match verdict {
            Verdict::Accept => tokens.push(x),
            Verdict::Reject(t) => {
                tokens.push(t);
                // Keep `last` and the i accepted drafts; the target's token is the next `last`.
                state.rewind(pos0 + 1 + i);
                return Ok(Step {
                    tokens,
                    accepted: i,
                    off_first: false,
                    last_row: i,
                });
            }
        }
    }
    // Every draft stands: the cache keeps them all, and the last row gives one more token.
    tokens.push(sampler.sample(&rows[k * vocab..(k + 1) * vocab]));
    Ok(Step {
        tokens,
        accepted: k,
        off_first: false,
        last_row: k,
    })
}

/// Verifies the token tree `proposal` (its `parent`s set) after `last`, greedily (`sampler` must be
/// greedy): the target's choice after each accepted node is looked for among that node's children.
/// Leaves the cache holding the sequence, `last` and the accepted nodes (moved to consecutive positions),
/// the history the sequence and every returned token, and in `rows` the logits each was chosen from.
pub fn verify_tree(
    model: &Model,
    state: &mut State,
    sampler: &mut Sampler,
    last: u32,
    proposal: &Proposal,
    rows: &mut Vec<f32>,
) -> Result<Step> {
    if !sampler.is_greedy() {
        bail!("token trees are verified greedily only (--temperature 0)");
    }
    walk_tree(model, state, sampler, last, proposal, rows, None)
}

/// Verifies the token tree `proposal` after `last` with Medusa's typical acceptance (`sampler`
/// samples): at each accepted node, among its children whose token the target's processed distribution
/// `p` accepts ([`Typical::accepts`]) the most likely one is taken; where none is, the step ends with a
/// token sampled from that row as plain decoding would. Lossy: the output is not distributed as plain
/// sampling's. Leaves cache, history and `rows` as [`verify_tree`] does.
pub fn verify_tree_typical(
    model: &Model,
    state: &mut State,
    sampler: &mut Sampler,
    last: u32,
    proposal: &Proposal,
    rows: &mut Vec<f32>,
    typical: Typical,
) -> Result<Step> {
    walk_tree(model, state, sampler, last, proposal, rows, Some(typical))
}

/// One tree-masked pass over `last` and the tree, then the walk from the root: greedy matching
/// (`typical` `None`) or typical acceptance.
fn walk_tree(
    model: &Model,
    state: &mut State,
    sampler: &mut Sampler,
    last: u32,
    proposal: &Proposal,
    rows: &mut Vec<f32>,
    typical: Option<Typical>,
) -> Result<Step> {
    let (pos0, n, vocab) = (state.pos(), proposal.len(), model.config.vocab_size);
    if proposal.parent.len() != n {
        bail!("a tree of {} parents over {n} drafts", proposal.parent.len());
    }
    // The pass: `last` is the root (row 0), draft i is row i + 1.
    let mut input = Vec::with_capacity(n + 1);
    input.push(last);
    input.extend_from_slice(&proposal.tokens);
    let mut parent = Vec::with_capacity(n + 1);
    parent.push(None);
    parent.extend(proposal.parent.iter().map(|p| Some(p.map_or(0, |i| i + 1))));
    let idx: Vec<usize> = (0..=n).collect();
    let all = model
        .forward_pass(state, Pass::tree(&input, &parent, Logits::Rows(&idx)))?
        .to_vec();
    rows.clear();
    let (mut node, mut path, mut tokens, mut off_first) = (0, vec![0], Vec::new(), false);
    loop {
        let row = &all[node * vocab..(node + 1) * vocab];
        rows.extend_from_slice(row);
        let children: Vec<usize> = (node + 1..=n).filter(|&c| parent[c] == Some(node)).collect();
        let found = match typical {
            None => {
                let t = sampler.sample(row);
                tokens.push(t);
                children.iter().copied().find(|&c| input[c] == t)
            }
            Some(rule) => {
                let p = sampler.distribution(row);
                let best = children
                    .iter()
                    .copied()
                    .filter(|&c| rule.accepts(&p, input[c]))
                    .max_by(|&a, &b| p[input[a] as usize].total_cmp(&p[input[b] as usize]).then(b.cmp(&a)));
                match best {
                    Some(c) => {
                        sampler.accept(input[c]);
                        tokens.push(input[c]);
                    }
                    None => tokens.push(sampler.sample(row)),
                }
                best
            }
        };
        match found {
            Some(c) => {
                off_first |= Some(c) != children.first().copied();
                node = c;
                path.push(c);
            }
            None => break,
        }
    }
    state.cache.keep_rows(pos0, &path)?;
    Ok(Step {
        accepted: path.len() - 1,
        tokens,
        off_first,
        last_row: node,
    })
}
