//! Quality/compute trade-off reports of the adaptive-computation methods (lecture §6): each sweeps its
//! method's knob and measures what it saves and what it costs.
//!
//! - [`cascade`]: cascade decoding's threshold sweep (`bushu cascade-report`).

pub mod cascade;
