//! Two methods with similar names and different ideas (`docs/DECODING.md` compares them):
//!
//! - **Contrastive decoding** (Li et al. 2022, "Contrastive Decoding: Open-ended Text Generation as
//!   Optimization"): a large *expert* and a small *amateur* share a vocabulary; the next token maximizes
//!   `log p_expert(x) − log p_amateur(x)` over the plausible set
//!   `V_head = {x : p_expert(x) ≥ α · max_w p_expert(w)}`. What the expert knows and the amateur does not
//!   — the informative tokens — wins; the plausibility constraint stops the ratio from rewarding tokens
//!   both models find unlikely. [`contrastive_decoding_scores`].
//! - **Contrastive search** (Su et al. 2022, "A Contrastive Framework for Neural Text Generation", HF
//!   `penalty_alpha` + `top_k`): one model; among its top-k tokens pick
//!   `argmax (1 − α) · p(x) − α · max_j cos(h_x, h_j)`, where `h_x` is the last hidden state after
//!   appending `x` and `h_j` those of all previous positions — a *degeneration penalty* against tokens
//!   whose representation repeats the context. [`contrastive_search_pick`].

/// Contrastive-decoding scores from the expert's and the amateur's logits: `log p_e − log p_a` on the
/// plausible set, `-inf` elsewhere. The amateur's logits are divided by `amateur_temperature` first.
pub fn contrastive_decoding_scores(expert: &[f32], amateur: &[f32], alpha: f32, amateur_temperature: f32) -> Vec<f32> {
    let mut le = expert.to_vec();
    super::log_softmax(&mut le);
    let mut la: Vec<f32> = amateur.iter().map(|&l| l / amateur_temperature).collect();
    super::log_softmax(&mut la);
    let max = le.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // p_e ≥ α·max p_e  ⇔  log p_e ≥ log α + max log p_e.
    let cut = max + alpha.ln();
    le.iter()
        .zip(&la)
        .map(|(&e, &a)| if e >= cut { e - a } else { f32::NEG_INFINITY })
        .collect()
}

/// Cosine similarity of two vectors (f64 accumulation).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    (ab / (aa.sqrt() * bb.sqrt())) as f32
}

/// The degeneration penalty of a candidate: its largest cosine similarity with the context.
pub fn degeneration_penalty(candidate: &[f32], context: &[Vec<f32>]) -> f32 {
    context
        .iter()
        .map(|h| cosine(candidate, h))
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Contrastive search's choice among candidates `(probability, hidden state)`: the index maximizing
/// `(1 − α)·p − α·max_j cos(h, h_j)` (the first on ties, as `torch.max`).
pub fn contrastive_search_pick(cands: &[(f32, Vec<f32>)], context: &[Vec<f32>], alpha: f32) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, (p, h)) in cands.iter().enumerate() {
        let s = (1.0 - alpha) * p - alpha * degeneration_penalty(h, context);
        if s > best.1 {
            best = (i, s);
        }
    }
    best.0
}
