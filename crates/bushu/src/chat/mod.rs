//! Chat: rendering conversations with the model's Jinja chat template (shared by `bushu chat` and the server).

pub mod session;
pub mod template;

pub use template::{ChatTemplate, Message};
