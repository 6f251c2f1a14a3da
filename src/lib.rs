//! shadergrad: a deep learning engine whose every kernel is a hand-written WGSL compute
//! shader run through wgpu.
//!
//! Modules are listed in the order data flows through them: files -> GPU context and
//! tensors -> kernels.

// In the browser wgpu's handles are not Send (one thread), and cfg'd-out native code leaves
// a return or a drop that only matter natively.
#![cfg_attr(
    not(native),
    allow(
        clippy::arc_with_non_send_sync,
        clippy::needless_return,
        clippy::drop_non_drop
    )
)]

pub mod error;

#[cfg(native)]
pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod executor;
pub mod fit;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod lm;
pub mod model;
pub mod model_file;
pub mod nn;
pub mod params;
pub mod platform;
pub mod plot;
pub mod predict;
pub mod rng;
pub mod schedule;
pub mod tensor;

pub use error::{Error, Result};
