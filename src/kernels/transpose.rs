//! `y = x^T`: shaders/transpose.wgsl, its wrapper and its reference. R, C: rows and columns
//! of x.

use bytemuck::{Pod, Zeroable};

use super::{dispatch, expect_shape, grid_1d, Dispatch, KernelCall, Shader};
use crate::gpu::{Access, Gpu};
use crate::tensor::Tensor;
use crate::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

/// y `[C, R]` = x `[R, C]`^T.
pub fn transpose(gpu: &Gpu, x: &Tensor, y: &Tensor) -> Result<Dispatch> {
    let op = "transpose";
    let [rows, cols] = match x.shape[..] {
        [r, c] if r > 0 && c > 0 => [r, c],
        _ => {
            return Err(Error::shape(
                op,
                format!("x has shape {:?}, expected a non-empty [R, C]", x.shape),
            ))
        }
    };
    expect_shape(op, "y", y, &[cols, rows])?;
    let params = Params {
        rows: rows as u32,
        cols: cols as u32,
        _pad: [0; 2],
    };
    dispatch(
        gpu,
        &KernelCall {
            shader: Shader::Transpose,
            entry: "transpose",
            params: bytemuck::bytes_of(&params),
            bindings: &[(x, Access::Read), (y, Access::ReadWrite)],
            workgroups: grid_1d(gpu, op, rows.div_ceil(64) * cols)?,
            constants: &[],
        },
    )
}

/// CPU reference of [`transpose`].
pub fn transpose_ref(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            y[c * rows + r] = x[r * cols + c];
        }
    }
    y
}
