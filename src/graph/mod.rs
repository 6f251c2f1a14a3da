//! The graph engine, in the order a step is built: `ir` (nodes, shapes) -> `ops` (the
//! functional API) -> `autodiff` (reverse mode, one rule per op) -> `fuse` (peephole
//! rewrites) -> `tune` (kernels and layouts chosen by measuring) -> `plan` (liveness and
//! buffer reuse) -> `lower` (the dispatches) -> `step` (one training or evaluation step).

pub mod autodiff;
pub mod fuse;
pub mod ir;
pub mod layout;
pub mod lower;
mod lower_bn;
mod lower_conv;
mod lower_ew;
mod lower_seq;
pub mod ops;
pub mod ops_nn;
pub mod ops_seq;
pub mod plan;
pub mod session;
pub mod step;
pub mod tune;

pub use ir::{BinaryOp, DType, Graph, Id, Op, ReduceOp, UnaryOp};
pub use step::{build_plan, loss_of, BatchSource, Plan};
