//! `bushu serve`'s log: one line per request on stderr when it ends (answered, cancelled, or its
//! client gone), from the numbers its [`Submission`](super::routes) kept.

use std::time::Duration;

/// What one request did.
pub struct RequestLog<'a> {
    pub id: &'a str,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    /// Arrival to the first generated token (`None`: none was generated).
    pub ttft: Option<Duration>,
    /// Arrival to the end.
    pub total: Duration,
    /// Each choice's finish reason (`None`: cancelled before it finished).
    pub finishes: Vec<Option<&'a str>>,
}

impl RequestLog<'_> {
    /// The line: id, tokens in (cached) and out, time to first token, decode tokens/s (the tokens after
    /// the first over the time after it), finish reasons.
    pub fn line(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
        let ttft = self.ttft.map_or_else(|| "-".to_string(), ms);
        let rate = match self.ttft {
            Some(t) if self.completion_tokens > 1 && self.total > t => {
                format!(
                    "{:.1} t/s",
                    (self.completion_tokens - 1) as f64 / (self.total - t).as_secs_f64()
                )
            }
            _ => "-".to_string(),
        };
        let finish: Vec<&str> = self.finishes.iter().map(|f| f.unwrap_or("cancelled")).collect();
        format!(
            "bushu serve: {} prompt {} ({} cached) completion {} ttft {ttft} decode {rate} total {} finish {}",
            self.id,
            self.prompt_tokens,
            self.cached_tokens,
            self.completion_tokens,
            ms(self.total),
            finish.join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_every_figure() {
        let l = RequestLog {
            id: "chatcmpl-7",
            prompt_tokens: 40,
            cached_tokens: 32,
            completion_tokens: 11,
            ttft: Some(Duration::from_millis(50)),
            total: Duration::from_millis(250),
            finishes: vec![Some("stop"), None],
        };
        // 10 tokens after the first in 200 ms: 50 t/s.
        assert_eq!(
            l.line(),
            "bushu serve: chatcmpl-7 prompt 40 (32 cached) completion 11 ttft 50.0 ms decode 50.0 t/s \
             total 250.0 ms finish stop,cancelled"
        );
        let none = RequestLog {
            completion_tokens: 0,
            ttft: None,
            finishes: vec![None],
            ..l
        };
        assert!(none.line().contains("ttft - decode - "), "{}", none.line());
    }
}
