//! Scalar f64 definitions of the elementwise ops: the folding of constants uses them, and
//! they are the CPU references the elementwise kernels are tested against.

use super::ir::{BinaryOp, UnaryOp};

/// sqrt(2 / pi), GELU's tanh approximation.
const GELU_K: f64 = 0.797_884_560_802_865_4;

pub fn unary(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Recip => 1.0 / x,
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::LeakyRelu(a) => {
            if x > 0.0 {
                x
            } else {
                a as f64 * x
            }
        }
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Gelu => 0.5 * x * (1.0 + (GELU_K * (x + 0.044715 * x * x * x)).tanh()),
        UnaryOp::Square => x * x,
    }
}

/// f'(x) times dy, from x or from y = f(x) (see `UnaryOp::grad_from_output`).
pub fn unary_backward(op: UnaryOp, x_or_y: f64, dy: f64) -> f64 {
    let v = x_or_y;
    dy * match op {
        UnaryOp::Neg => -1.0,
        UnaryOp::Exp => v,
        UnaryOp::Log => 1.0 / v,
        UnaryOp::Sqrt => 0.5 / v.sqrt(),
        UnaryOp::Rsqrt => -0.5 / (v * v.sqrt()),
        UnaryOp::Recip => -1.0 / (v * v),
        UnaryOp::Relu => (v > 0.0) as u8 as f64,
        UnaryOp::LeakyRelu(a) => {
            if v > 0.0 {
                1.0
            } else {
                a as f64
            }
        }
        UnaryOp::Sigmoid => v * (1.0 - v),
        UnaryOp::Tanh => 1.0 - v * v,
        UnaryOp::Gelu => {
            let u = GELU_K * (v + 0.044715 * v * v * v);
            let t = u.tanh();
            0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * 0.044715 * v * v)
        }
        UnaryOp::Square => 2.0 * v,
    }
}

pub fn binary(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
        BinaryOp::CmpGt => (a > b) as u8 as f64,
        BinaryOp::CmpEq => (a == b) as u8 as f64,
    }
}
