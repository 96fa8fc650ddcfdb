//! Download progress for `bushu pull`: an `indicatif` bar (bytes, rate, ETA) when stderr is a terminal, else a
//! plain line every [`PLAIN_EVERY`] (and one at the end), so piped logs get a few readable lines instead of a
//! flood of carriage returns.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How often the plain (non-terminal) mode prints a line.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Progress of one download of `total` bytes (0 when unknown).
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    pos: u64,
    /// Position and time when this session started (a resumed download's rate counts only new bytes).
    start_pos: u64,
    start: Instant,
    last_line: Instant,
    /// Lines of the plain mode go here (stderr in the CLI; tests collect them).
    sink: Box<dyn FnMut(&str) + Send>,
}

/// Bytes for people: `491.4 MB`.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

impl Progress {
    /// A bar on stderr when it is a terminal, else plain lines on stderr.
    pub fn stderr(label: &str, total: u64) -> Progress {
        let sink = Box::new(|l: &str| eprintln!("{l}"));
        Progress::new(label, total, std::io::stderr().is_terminal(), sink)
    }

    /// `terminal`: draw an `indicatif` bar on stderr; else write plain lines to `sink`.
    pub fn new(label: &str, total: u64, terminal: bool, sink: Box<dyn FnMut(&str) + Send>) -> Progress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_string());
            bar
        });
        let now = Instant::now();
        let mut p = Progress {
            bar,
            label: label.to_string(),
            total,
            pos: 0,
            start_pos: 0,
            start: now,
            last_line: now,
            sink,
        };
        if p.bar.is_none() {
            let line = match total {
                0 => format!("{}: downloading", p.label),
                t => format!("{}: downloading {}", p.label, human(t)),
            };
            (p.sink)(&line);
        }
        p
    }

    /// Where a resumed download starts: counted as done, but not in the rate.
    pub fn resume_at(&mut self, pos: u64) {
        self.pos = pos;
        self.start_pos = pos;
        self.start = Instant::now();
        if let Some(b) = &self.bar {
            b.set_position(pos);
            b.reset_eta();
        } else if pos > 0 {
            let line = format!("{}: resuming at {}", self.label, human(pos));
            (self.sink)(&line);
        }
    }

    /// `n` more bytes arrived.
    pub fn inc(&mut self, n: u64) {
        self.pos += n;
        match &self.bar {
            Some(b) => b.set_position(self.pos),
            None if self.last_line.elapsed() >= PLAIN_EVERY => {
                self.last_line = Instant::now();
                let line = self.status_line();
                (self.sink)(&line);
            }
            None => {}
        }
    }

    /// A transfer restarted from `pos` (the server ignored a range request, or a retry).
    pub fn set_position(&mut self, pos: u64) {
        self.pos = pos;
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// A message between progress updates (a retry, a step).
    pub fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(b) => b.println(msg),
            None => (self.sink)(msg),
        }
    }

    /// `120.0 MB / 491.4 MB (24 %), 11.2 MB/s, ETA 33 s`.
    fn status_line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let rate = (self.pos.saturating_sub(self.start_pos)) as f64 / secs;
        let mut s = format!("{}: {}", self.label, human(self.pos));
        if self.total > 0 {
            s += &format!(
                " / {} ({:.0} %)",
                human(self.total),
                100.0 * self.pos as f64 / self.total as f64
            );
        }
        s += &format!(", {}/s", human(rate as u64));
        if self.total > self.pos && rate > 0.0 {
            s += &format!(", ETA {:.0} s", (self.total - self.pos) as f64 / rate);
        }
        s
    }

    /// The download ended (successfully or not): clears the bar, or prints the last plain line.
    pub fn finish(&mut self) {
        match self.bar.take() {
            Some(b) => b.finish_and_clear(),
            None => {
                let line = self.status_line();
                (self.sink)(&line);
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.abandon();
        }
    }
}
