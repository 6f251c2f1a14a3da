//! Language models, in the order a run goes: `models` (the GPT and the char-RNN as op
//! graphs).

pub mod models;

pub use models::{CharRnnConfig, GptConfig, LmConfig};
