//! The OpenAI-compatible HTTP layer over the engine (issue 7).
