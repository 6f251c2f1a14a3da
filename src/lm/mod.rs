//! Language models, in the order a run goes: `models` (the GPT and the char-RNN as op
//! graphs) -> `train` (the resident text, GPU-drawn batches, evaluation rows) ->
//! `checkpoint` (their safetensors files) -> `generate` (sampling on the GPU).

pub mod checkpoint;
pub mod generate;
pub mod models;
pub mod train;

pub use models::{CharRnnConfig, GptConfig, LmConfig};
