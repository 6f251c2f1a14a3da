//! shadergrad: a deep learning engine whose every kernel is a hand-written WGSL compute
//! shader run through wgpu.
//!
//! Modules are listed in the order data flows through them: files -> GPU context and
//! tensors -> kernels.

pub mod error;

pub mod rng;
pub mod data;
pub mod gpu;
pub mod tensor;
pub mod kernels;
pub mod model;
pub mod params;
pub mod graph;
pub mod executor;
pub mod fit;

pub use error::{Error, Result};
