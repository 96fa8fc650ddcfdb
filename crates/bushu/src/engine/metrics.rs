//! Serving metrics in the Prometheus text format: request counts by outcome, token counts, latency
//! histograms (time to first token, inter-token latency, end to end), and the engine's gauges (running
//! and waiting sequences, KV blocks, prefix-cache hit rate, preemptions).

use std::collections::BTreeMap;
use std::fmt::Write;

/// Cumulative histogram with fixed bucket bounds (seconds).
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const E2E: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Engine gauges, set after every step.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    /// Free blocks that still hold a cached prefix.
    pub kv_blocks_cached: usize,
    pub prefix_lookup_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub preemptions: u64,
    pub steps: u64,
}

pub struct Metrics {
    /// Finished requests by outcome, under labels the caller chooses (the engine gives them no meaning).
    pub requests: BTreeMap<String, u64>,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub gauges: Gauges,
    /// Speculative decoding's counters, when the engine speculates.
    pub spec: Option<crate::spec_decode::serving::SpecCounters>,
    /// Cascade decoding: per stage (smallest first), its model's name and the requests it answered.
    pub cascade: Vec<(String, u64)>,
    /// Structured output: admitted requests with a grammar (`response_format`, `guided_*`, tools
    /// `required` or named).
    pub structured_requests: u64,
    /// Structured output's fast-forward: steps that fed grammar-forced tokens, the tokens, those kept.
    pub forced: super::engine::ForcedCounters,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: BTreeMap::new(),
            prompt_tokens: 0,
            generation_tokens: 0,
            ttft: Histogram::new(LATENCY),
            itl: Histogram::new(LATENCY),
            e2e: Histogram::new(E2E),
            gauges: Gauges::default(),
            spec: None,
            cascade: Vec::new(),
            structured_requests: 0,
            forced: Default::default(),
        }
    }
}

impl Metrics {
    /// Counts a finished request under the caller's outcome label (rendered as the `status` label).
    pub fn request(&mut self, outcome: &str) {
        *self.requests.entry(outcome.to_owned()).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP bushu_requests_total Requests by final status.\n# TYPE bushu_requests_total counter"
        );
        for (s, n) in &self.requests {
            let _ = writeln!(o, "bushu_requests_total{{status=\"{s}\"}} {n}");
        }
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut o,
            "bushu_prompt_tokens_total",
            "Prompt tokens of admitted requests.",
            self.prompt_tokens,
        );
        counter(
            &mut o,
            "bushu_generation_tokens_total",
            "Generated tokens.",
            self.generation_tokens,
        );
        self.ttft.render(
            &mut o,
            "bushu_time_to_first_token_seconds",
            "Time from arrival to the first token.",
        );
        self.itl.render(
            &mut o,
            "bushu_inter_token_latency_seconds",
            "Time between two tokens of a sequence.",
        );
        self.e2e.render(
            &mut o,
            "bushu_e2e_request_latency_seconds",
            "Time from arrival to the last token.",
        );
        if !self.cascade.is_empty() {
            let _ = writeln!(
                o,
                "# HELP bushu_cascade_answers_total Requests answered by each cascade stage (1: the smallest model).\n# TYPE bushu_cascade_answers_total counter"
            );
            for (i, (model, n)) in self.cascade.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "bushu_cascade_answers_total{{stage=\"{}\",model=\"{}\"}} {n}",
                    i + 1,
                    model.replace('\\', "\\\\").replace('"', "\\\"")
                );
            }
        }
        let g = &self.gauges;
        gauge(
            &mut o,
            "bushu_num_requests_running",
            "Sequences running.",
            g.running as f64,
        );
        gauge(
            &mut o,
            "bushu_num_requests_waiting",
            "Sequences waiting (new or preempted).",
            g.waiting as f64,
        );
        gauge(
            &mut o,
            "bushu_kv_blocks_total",
            "KV cache blocks.",
            g.kv_blocks_total as f64,
        );
        gauge(
            &mut o,
            "bushu_kv_blocks_used",
            "KV cache blocks held by sequences.",
            (g.kv_blocks_total - g.kv_blocks_free) as f64,
        );
        gauge(
            &mut o,
            "bushu_kv_blocks_free",
            "KV cache blocks free (blank or cached).",
            g.kv_blocks_free as f64,
        );
        gauge(
            &mut o,
            "bushu_kv_blocks_cached_free",
            "Free KV blocks still holding a cached prefix.",
            g.kv_blocks_cached as f64,
        );
        counter(
            &mut o,
            "bushu_prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            g.prefix_lookup_tokens,
        );
        counter(
            &mut o,
            "bushu_prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache.",
            g.prefix_hit_tokens,
        );
        let rate = if g.prefix_lookup_tokens == 0 {
            0.0
        } else {
            g.prefix_hit_tokens as f64 / g.prefix_lookup_tokens as f64
        };
        gauge(
            &mut o,
            "bushu_prefix_cache_hit_rate",
            "Prefix-cache hits / queries (tokens).",
            rate,
        );
        counter(
            &mut o,
            "bushu_preemptions_total",
            "Sequences preempted for recompute.",
            g.preemptions,
        );
        counter(&mut o, "bushu_engine_steps_total", "Engine steps.", g.steps);
        counter(
            &mut o,
            "bushu_structured_requests_total",
            "Admitted requests with a structured-output grammar (response_format, guided_*, tool_choice required or named).",
            self.structured_requests,
        );
        counter(
            &mut o,
            "bushu_structured_forced_steps_total",
            "Fast-forward: sequence steps that fed grammar-forced tokens.",
            self.forced.steps,
        );
        counter(
            &mut o,
            "bushu_structured_forced_tokens_total",
            "Fast-forward: grammar-forced tokens fed to the model.",
            self.forced.tokens,
        );
        counter(
            &mut o,
            "bushu_structured_forced_accepted_tokens_total",
            "Fast-forward: grammar-forced tokens kept (the model's own sampling chose them).",
            self.forced.accepted,
        );
        if let Some(s) = &self.spec {
            counter(
                &mut o,
                "bushu_spec_decode_num_drafts_total",
                "Speculative verifications with at least one draft.",
                s.num_drafts,
            );
            counter(
                &mut o,
                "bushu_spec_decode_num_draft_tokens_total",
                "Draft tokens verified.",
                s.num_draft_tokens,
            );
            counter(
                &mut o,
                "bushu_spec_decode_num_accepted_tokens_total",
                "Draft tokens accepted.",
                s.num_accepted_tokens,
            );
            let name = "bushu_spec_decode_num_accepted_tokens_per_pos_total";
            let _ = writeln!(
                o,
                "# HELP {name} Draft tokens accepted, by position in the draft (0 = first).\n# TYPE {name} counter"
            );
            for (i, n) in s.num_accepted_tokens_per_pos.iter().enumerate() {
                let _ = writeln!(o, "{name}{{position=\"{i}\"}} {n}");
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut s = String::new();
        h.render(&mut s, "x", "help");
        assert!(s.contains("x_bucket{le=\"0.1\"} 1\n"));
        assert!(s.contains("x_bucket{le=\"1\"} 2\n"));
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"));
        assert!(s.contains("x_count 3\n"));
    }
}
