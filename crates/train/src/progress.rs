//! Progress of `bushu distill`: an indicatif bar (loss, tokens/s, ETA) when stderr is a terminal, else
//! a plain line every tenth of the run (and at its end), so logs stay readable.

use crate::distill::{Progress, StepLog};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Progress to stderr.
pub struct Console {
    bar: Option<ProgressBar>,
    teacher_bar: Option<ProgressBar>,
    terminal: bool,
}

impl Console {
    pub fn new() -> Console {
        Console {
            bar: None,
            teacher_bar: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

fn bar(total: usize, template: &str) -> ProgressBar {
    let b = ProgressBar::new(total as u64);
    b.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    b
}

impl Progress for Console {
    fn teacher(&mut self, done: usize, total: usize) {
        if self.terminal {
            let b = self
                .teacher_bar
                .get_or_insert_with(|| bar(total, "teacher {bar:30} {pos}/{len} windows, ETA {eta}"));
            b.set_position(done as u64);
            if done == total {
                b.finish();
            }
        } else if done == total || done.is_multiple_of((total / 10).max(1)) {
            eprintln!("teacher: {done}/{total} windows");
        }
    }

    fn step(&mut self, l: &StepLog, steps: usize, tps: f64) {
        let msg = format!(
            "loss {:.4} (ce {:.4} kd {:.4} feat {:.4}) {:.0} tok/s",
            l.loss, l.ce, l.kd, l.feature, tps
        );
        if self.terminal {
            let b = self
                .bar
                .get_or_insert_with(|| bar(steps, "step {bar:30} {pos}/{len} {msg} ETA {eta}"));
            b.set_message(msg);
            b.set_position(l.step as u64);
            if l.step == steps {
                b.finish();
            }
        } else if l.step == steps || l.step.is_multiple_of((steps / 10).max(1)) {
            eprintln!("step {}/{steps}: {msg}", l.step);
        }
    }
}
