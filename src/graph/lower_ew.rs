//! Lowering of the elementwise, reduction and data-movement ops (broadcast binary ops,
//! unary functions, reductions, permutes, slices, pads, concatenations).

use super::ir::*;
use super::lower::Tensors;
use crate::gpu::Gpu;
use crate::kernels::Dispatch;
use crate::{Error, Result};

pub fn lower_elementwise(
    _gpu: &Gpu,
    g: &Graph,
    _ts: &Tensors,
    id: Id,
    _d: &mut Vec<Dispatch>,
) -> Result<()> {
    let n = g.node(id);
    Err(Error::shape(
        n.op.name(),
        format!("no kernel for this op on shape {:?}", n.shape),
    ))
}
