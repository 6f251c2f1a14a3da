//! Language models, in the order a run goes: `models` (the GPT and the char-RNN as op
//! graphs) -> `checkpoint` (their safetensors files) -> `generate` (sampling on the GPU).

pub mod checkpoint;
pub mod generate;
pub mod models;

pub use models::{CharRnnConfig, GptConfig, LmConfig};
