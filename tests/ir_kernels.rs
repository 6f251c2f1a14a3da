//! The graph IR's generic kernels (elementwise, strided copies, axis reductions) against
//! their CPU references (f64) on random data and awkward shapes: 1, primes, size-1 axes that
//! broadcast, and 1,000,003 elements on a device whose grids must fold onto y.

mod common;

use std::sync::OnceLock;

use common::{assert_close, gpu};
use shadergrad::gpu::Gpu;
use shadergrad::kernels::copy::*;
use shadergrad::kernels::elementwise::*;
use shadergrad::kernels::reduce_axis::*;
use shadergrad::kernels::{f64s, run, run_all, Dispatch};
use shadergrad::rng::Rng;
use shadergrad::tensor::Tensor;
use shadergrad::Error;

fn upload(gpu: &Gpu, shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_f32(gpu, "test input", shape, data).unwrap()
}

fn zeros(gpu: &Gpu, shape: &[usize]) -> Tensor {
    Tensor::zeros(gpu, "test output", shape).unwrap()
}

fn exec(gpu: &Gpu, d: shadergrad::Result<Dispatch>) {
    run(gpu, &[&d.unwrap()]).unwrap();
}

/// The error of a call that must fail.
fn err<T>(r: shadergrad::Result<T>) -> Error {
    match r {
        Err(e) => e,
        Ok(_) => panic!("expected an error"),
    }
}

fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    t.to_f32(gpu).unwrap()
}

/// A device of its own with at most 1,024 workgroups per dimension, so that 1-D grids of
/// more than 262,144 invocations fold onto y (the default limit would need 16.8 million).
fn folding_gpu() -> Option<&'static Gpu> {
    static FOLD: OnceLock<Option<Gpu>> = OnceLock::new();
    let shared = gpu()?;
    FOLD.get_or_init(|| {
        let mut l = shared.adapter.limits();
        l.max_compute_workgroups_per_dimension = 1024;
        Some(Gpu::with_adapter_limits(shared.adapter.clone(), l).expect("a device"))
    })
    .as_ref()
}

/// 1,000,003 elements: 3,907 workgroups of 256, folded to 1,024 x 4 on [`folding_gpu`].
const BIG: usize = 1_000_003;

const SHAPES: [&[usize]; 5] = [&[1], &[7], &[3, 1, 5], &[2, 3, 5, 7], &[1, 4, 1]];

/// Inputs inside each op's domain, with extremes where the op must stay finite.
fn unary_input(op: UnaryOp, rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n)
        .map(|_| match op {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt => rng.uniform(0.05, 5.0),
            UnaryOp::Recip => {
                let m = rng.uniform(0.1, 5.0);
                if rng.below(2) == 0 {
                    m
                } else {
                    -m
                }
            }
            UnaryOp::Exp => rng.uniform(-20.0, 20.0),
            _ => rng.uniform(-6.0, 6.0),
        })
        .collect();
    if matches!(op, UnaryOp::Sigmoid | UnaryOp::Tanh | UnaryOp::Gelu) {
        for (v, e) in x.iter_mut().zip([-1e4, 1e4, -30.0, 30.0, 0.0]) {
            *v = e;
        }
    }
    x
}

fn unary_tolerance(op: UnaryOp) -> (f64, f64) {
    match op {
        UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Relu => (0.0, 0.0),
        UnaryOp::Square | UnaryOp::LeakyRelu(_) => (1e-7, 0.0),
        _ => (2e-5, 2e-6),
    }
}

#[test]
fn unary_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(101);
    let ops = UnaryOp::ALL
        .iter()
        .copied()
        .chain([UnaryOp::LeakyRelu(-0.3)]);
    for op in ops {
        for shape in SHAPES {
            let n: usize = shape.iter().product();
            let x = unary_input(op, &mut rng, n);
            let (tx, ty) = (upload(gpu, shape, &x), zeros(gpu, shape));
            exec(gpu, unary(gpu, op, &tx, &ty));
            let (rtol, atol) = unary_tolerance(op);
            let want = unary_ref(op, &f64s(&x));
            assert_close(
                &format!("unary {op:?} {shape:?}"),
                &read(gpu, &ty),
                &want,
                rtol,
                atol,
            );
        }
    }
}

#[test]
fn unary_backward_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(102);
    for op in UnaryOp::ALL {
        for shape in SHAPES {
            let n: usize = shape.iter().product();
            let x = unary_input(op, &mut rng, n);
            let dy = rng.uniform_vec(n, -1.0, 1.0);
            let (tx, ty, tdy, tdx) = (
                upload(gpu, shape, &x),
                zeros(gpu, shape),
                upload(gpu, shape, &dy),
                zeros(gpu, shape),
            );
            exec(gpu, unary(gpu, op, &tx, &ty));
            exec(gpu, unary_backward(gpu, op, &tx, &ty, &tdy, &tdx));
            let want = unary_backward_ref(op, &f64s(&x), &f64s(&dy));
            assert_close(
                &format!("unary_backward {op:?} {shape:?}"),
                &read(gpu, &tdx),
                &want,
                1e-4,
                1e-5,
            );
        }
    }
}

/// dx of every unary op against central differences of the forward kernel itself:
/// L = sum dy * f(x), so dL/dx_i = dy_i (f(x_i + h) - f(x_i - h)) / 2h (each output reads
/// only its own input, so one pass perturbs every element). Inputs keep 2h from kinks.
#[test]
fn unary_backward_matches_finite_differences() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(103);
    let n = 257;
    for op in UnaryOp::ALL
        .iter()
        .copied()
        .chain([UnaryOp::LeakyRelu(0.2)])
    {
        let x: Vec<f32> = unary_input(op, &mut rng, n)
            .into_iter()
            .map(|v| {
                let v = v.clamp(-8.0, 8.0);
                let floor = if matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt) {
                    0.2
                } else {
                    0.05
                };
                if v.abs() < floor {
                    floor.copysign(v)
                } else {
                    v
                }
            })
            .collect();
        let h: Vec<f32> = x.iter().map(|v| 3e-3 * v.abs().max(1.0)).collect();
        let xp: Vec<f32> = x.iter().zip(&h).map(|(v, h)| v + h).collect();
        let xm: Vec<f32> = x.iter().zip(&h).map(|(v, h)| v - h).collect();
        let dy = rng.uniform_vec(n, -1.0, 1.0);
        let forward = |v: &[f32]| {
            let (t, out) = (upload(gpu, &[n], v), zeros(gpu, &[n]));
            exec(gpu, unary(gpu, op, &t, &out));
            read(gpu, &out)
        };
        let (fp, fm) = (forward(&xp), forward(&xm));
        let fd: Vec<f64> = (0..n)
            .map(|i| dy[i] as f64 * (fp[i] as f64 - fm[i] as f64) / (xp[i] as f64 - xm[i] as f64))
            .collect();
        let (tx, ty, tdy, tdx) = (
            upload(gpu, &[n], &x),
            zeros(gpu, &[n]),
            upload(gpu, &[n], &dy),
            zeros(gpu, &[n]),
        );
        exec(gpu, unary(gpu, op, &tx, &ty));
        exec(gpu, unary_backward(gpu, op, &tx, &ty, &tdy, &tdx));
        assert_close(
            &format!("unary_backward {op:?} vs finite differences"),
            &read(gpu, &tdx),
            &fd,
            1e-2,
            1e-3,
        );
    }
}

#[test]
fn unary_backward_binds_only_what_it_uses() {
    let Some(gpu) = gpu() else { return };
    let x = upload(gpu, &[5], &[-2.0, -0.5, 0.0, 0.5, 2.0]);
    let dy = upload(gpu, &[5], &[1.0; 5]);
    let (y, dx) = (zeros(gpu, &[5]), zeros(gpu, &[5]));
    exec(gpu, unary(gpu, UnaryOp::Tanh, &x, &y));
    // Tanh reads y only: a wrongly shaped x is not looked at.
    let junk = zeros(gpu, &[3]);
    assert_eq!(UnaryOp::Tanh.backward_uses(), (false, true));
    exec(gpu, unary_backward(gpu, UnaryOp::Tanh, &junk, &y, &dy, &dx));
    let want = unary_backward_ref(UnaryOp::Tanh, &f64s(&read(gpu, &x)), &[1.0; 5]);
    assert_close("tanh backward from y", &read(gpu, &dx), &want, 1e-5, 1e-6);
    // Neg reads neither.
    exec(
        gpu,
        unary_backward(gpu, UnaryOp::Neg, &junk, &junk, &dy, &dx),
    );
    assert_eq!(read(gpu, &dx), vec![-1.0; 5]);
    // Gelu reads x, and refuses one of the wrong size.
    let e = err(unary_backward(gpu, UnaryOp::Gelu, &junk, &y, &dy, &dx));
    assert!(e.to_string().contains("x has shape [3]"), "{e}");
}

fn binary_inputs(op: BinaryOp, rng: &mut Rng, na: usize, nb: usize) -> (Vec<f32>, Vec<f32>) {
    match op {
        // Small integers, so that comparisons meet ties.
        BinaryOp::CmpGt | BinaryOp::CmpEq | BinaryOp::CmpGe | BinaryOp::CmpLt => (
            (0..na).map(|_| rng.below(5) as f32 - 2.0).collect(),
            (0..nb).map(|_| rng.below(5) as f32 - 2.0).collect(),
        ),
        BinaryOp::Pow => (
            rng.uniform_vec(na, 0.1, 3.0),
            rng.uniform_vec(nb, -3.0, 3.0),
        ),
        BinaryOp::Div => (
            rng.uniform_vec(na, -3.0, 3.0),
            (0..nb)
                .map(|i| rng.uniform(0.2, 3.0) * if i % 2 == 0 { 1.0 } else { -1.0 })
                .collect(),
        ),
        _ => (
            rng.uniform_vec(na, -3.0, 3.0),
            rng.uniform_vec(nb, -3.0, 3.0),
        ),
    }
}

const BROADCAST_PAIRS: [(&[usize], &[usize]); 9] = [
    (&[1], &[1]),
    (&[7], &[7]),
    (&[7], &[1]),
    (&[1], &[7]),
    (&[3, 1, 5], &[1, 4, 1]),
    (&[2, 3, 5, 7], &[5, 1]),
    (&[2, 3, 5, 7], &[2, 3, 5, 7]),
    (&[3, 1], &[2, 1, 1, 1, 4]),
    (&[2, 1, 3, 1, 5, 1], &[1, 2, 1, 3, 1, 5]),
];

#[test]
fn binary_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(104);
    for op in BinaryOp::ALL {
        for (sa, sb) in BROADCAST_PAIRS {
            let (na, nb) = (sa.iter().product(), sb.iter().product());
            let (a, b) = binary_inputs(op, &mut rng, na, nb);
            let (shape, want) = binary_ref(op, &f64s(&a), sa, &f64s(&b), sb);
            let (ta, tb, ty) = (upload(gpu, sa, &a), upload(gpu, sb, &b), zeros(gpu, &shape));
            exec(gpu, binary(gpu, op, &ta, &tb, &ty));
            let rtol = if op == BinaryOp::Pow { 2e-5 } else { 1e-7 };
            assert_close(
                &format!("binary {op:?} {sa:?} {sb:?}"),
                &read(gpu, &ty),
                &want,
                rtol,
                0.0,
            );
        }
    }
}

#[test]
fn binary_special_values() {
    let Some(gpu) = gpu() else { return };
    const NAN: f32 = f32::NAN;
    // (op, a, b, want)
    type Case = (BinaryOp, &'static [f32], &'static [f32], &'static [f32]);
    let cases: [Case; 4] = [
        // torch.pow: negative bases with integer exponents, x^0 = 1 even for 0 and NaN-free.
        (
            BinaryOp::Pow,
            &[-2.0, -2.0, -3.0, 0.0, 0.0, 2.0, -1.5],
            &[3.0, 2.0, -1.0, 0.0, 2.0, 0.5, 0.0],
            &[
                -8.0,
                4.0,
                -1.0 / 3.0,
                1.0,
                0.0,
                std::f32::consts::SQRT_2,
                1.0,
            ],
        ),
        (
            BinaryOp::Max,
            &[NAN, 1.0, -0.0],
            &[1.0, NAN, 2.0],
            &[NAN, NAN, 2.0],
        ),
        (
            BinaryOp::Min,
            &[NAN, 1.0, 3.0],
            &[1.0, NAN, 2.0],
            &[NAN, NAN, 2.0],
        ),
        (
            BinaryOp::CmpEq,
            &[NAN, 1.0, 0.0],
            &[NAN, 1.0, -0.0],
            &[0.0, 1.0, 1.0],
        ),
    ];
    for (op, a, b, want) in cases {
        let n = a.len();
        let (ta, tb, ty) = (upload(gpu, &[n], a), upload(gpu, &[n], b), zeros(gpu, &[n]));
        exec(gpu, binary(gpu, op, &ta, &tb, &ty));
        let got = read(gpu, &ty);
        for i in 0..n {
            let ok = (got[i].is_nan() && want[i].is_nan()) || (got[i] - want[i]).abs() <= 1e-6;
            assert!(
                ok,
                "{op:?}({}, {}) = {}, want {}",
                a[i], b[i], got[i], want[i]
            );
        }
    }
    // Negative base, fractional exponent: NaN as torch.pow.
    let (ta, tb, ty) = (
        upload(gpu, &[1], &[-2.0]),
        upload(gpu, &[1], &[0.5]),
        zeros(gpu, &[1]),
    );
    exec(gpu, binary(gpu, BinaryOp::Pow, &ta, &tb, &ty));
    assert!(read(gpu, &ty)[0].is_nan());
}

#[test]
fn binary_scalar_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(105);
    for op in BinaryOp::ALL {
        for shape in [&[1][..], &[7], &[2, 3, 5, 7]] {
            for scalar_first in [false, true] {
                let n: usize = shape.iter().product();
                let (mut x, _) = binary_inputs(op, &mut rng, n, 0);
                let s = match op {
                    BinaryOp::Pow if scalar_first => 1.7,
                    BinaryOp::Pow => -1.5,
                    BinaryOp::Div if !scalar_first => -0.7,
                    BinaryOp::CmpGt | BinaryOp::CmpEq | BinaryOp::CmpGe | BinaryOp::CmpLt => 0.0,
                    _ => 0.37,
                };
                if op == BinaryOp::Div && scalar_first {
                    x.iter_mut().for_each(|v| *v = v.abs() + 0.2);
                }
                let (tx, ty) = (upload(gpu, shape, &x), zeros(gpu, shape));
                exec(gpu, binary_scalar(gpu, op, &tx, s, scalar_first, &ty));
                let want = binary_scalar_ref(op, &f64s(&x), s as f64, scalar_first);
                let rtol = if op == BinaryOp::Pow { 2e-5 } else { 1e-7 };
                let what = format!("binary_scalar {op:?} {shape:?} scalar_first {scalar_first}");
                assert_close(&what, &read(gpu, &ty), &want, rtol, 0.0);
            }
        }
    }
}

#[test]
fn where_scale_shift_and_fill_match_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(106);
    let triples: [(&[usize], &[usize], &[usize]); 5] = [
        (&[1], &[1], &[1]),
        (&[7], &[7], &[1]),
        (&[3, 1, 5], &[1, 4, 1], &[3, 4, 5]),
        (&[2, 3, 5, 7], &[5, 1], &[1]),
        (&[5, 7], &[2, 3, 1, 7], &[3, 5, 1]),
    ];
    for (sm, sa, sb) in triples {
        let m: Vec<f32> = (0..sm.iter().product())
            .map(|_| rng.below(2) as f32)
            .collect();
        let a = rng.uniform_vec(sa.iter().product(), -1.0, 1.0);
        let b = rng.uniform_vec(sb.iter().product(), -1.0, 1.0);
        let (shape, want) = where_ref(&f64s(&m), sm, &f64s(&a), sa, &f64s(&b), sb);
        let (tm, ta, tb) = (
            upload(gpu, sm, &m),
            upload(gpu, sa, &a),
            upload(gpu, sb, &b),
        );
        let ty = zeros(gpu, &shape);
        exec(gpu, where_(gpu, &tm, &ta, &tb, &ty));
        assert_close(
            &format!("where {sm:?} {sa:?} {sb:?}"),
            &read(gpu, &ty),
            &want,
            0.0,
            0.0,
        );
    }
    for shape in SHAPES {
        let n: usize = shape.iter().product();
        let x = rng.uniform_vec(n, -2.0, 2.0);
        let (tx, ty) = (upload(gpu, shape, &x), zeros(gpu, shape));
        exec(gpu, scale_shift(gpu, &tx, -1.75, 0.5, &ty));
        let want = scale_shift_ref(&f64s(&x), -1.75, 0.5);
        assert_close(
            &format!("scale_shift {shape:?}"),
            &read(gpu, &ty),
            &want,
            1e-7,
            1e-7,
        );
        exec(gpu, fill(gpu, &ty, 3.25));
        assert_eq!(read(gpu, &ty), vec![3.25; n]);
    }
}

#[test]
fn in_place_when_the_output_is_the_first_input() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(107);
    let x = rng.uniform_vec(2 * 3 * 5 * 7, -2.0, 2.0);
    let b = rng.uniform_vec(5 * 7, -2.0, 2.0);
    let t = upload(gpu, &[2, 3, 5, 7], &x);
    exec(gpu, unary(gpu, UnaryOp::Tanh, &t, &t));
    let mut want = unary_ref(UnaryOp::Tanh, &f64s(&x));
    assert_close("tanh in place", &read(gpu, &t), &want, 2e-5, 2e-6);
    let tb = upload(gpu, &[5, 7], &b);
    exec(gpu, binary(gpu, BinaryOp::Mul, &t, &tb, &t));
    for (i, w) in want.iter_mut().enumerate() {
        *w *= b[i % 35] as f64;
    }
    assert_close(
        "mul in place, b broadcast",
        &read(gpu, &t),
        &want,
        3e-5,
        2e-6,
    );
    exec(gpu, binary_scalar(gpu, BinaryOp::Sub, &t, 1.0, true, &t));
    want.iter_mut().for_each(|w| *w = 1.0 - *w);
    assert_close("1 - x in place", &read(gpu, &t), &want, 3e-5, 4e-6);
    exec(gpu, scale_shift(gpu, &t, 2.0, -1.0, &t));
    want.iter_mut().for_each(|w| *w = 2.0 * *w - 1.0);
    assert_close("scale_shift in place", &read(gpu, &t), &want, 3e-5, 1e-5);
}

#[test]
fn elementwise_refuses_bad_shapes_and_aliasing() {
    let Some(gpu) = gpu() else { return };
    let (a, b) = (zeros(gpu, &[2, 3]), zeros(gpu, &[4, 3]));
    let y = zeros(gpu, &[2, 3]);
    let e = err(binary(gpu, BinaryOp::Add, &a, &b, &y));
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    assert!(
        e.to_string().contains("[2, 3] and [4, 3] do not broadcast"),
        "{e}"
    );
    let e = err(binary(
        gpu,
        BinaryOp::Add,
        &a,
        &zeros(gpu, &[3]),
        &zeros(gpu, &[6]),
    ));
    assert!(
        e.to_string()
            .contains("output has shape [6], the inputs broadcast to [2, 3]"),
        "{e}"
    );
    let e = err(unary(gpu, UnaryOp::Exp, &a, &zeros(gpu, &[7])));
    assert!(
        e.to_string()
            .contains("input has shape [2, 3] (6 elements)"),
        "{e}"
    );
    // Two views of one buffer: the output may not share it with an input.
    let whole = zeros(gpu, &[128]);
    let (lo, hi) = (whole.view(0, &[6]), whole.view(64, &[6]));
    let e = err(unary(gpu, UnaryOp::Exp, &lo, &hi));
    assert!(e.to_string().contains("shares the output's buffer"), "{e}");
    let e = err(binary(gpu, BinaryOp::Add, &zeros(gpu, &[6]), &lo, &lo));
    assert!(e.to_string().contains("b [6] shares"), "{e}");
    // 18 alternating dimensions cannot merge below the kernel's rank.
    let sa: Vec<usize> = (0..18).map(|d| 1 + d % 2).collect();
    let sb: Vec<usize> = (0..18).map(|d| 2 - d % 2).collect();
    let e = err(BroadcastSpec::new("binary", &[&sa, &sb]));
    assert!(e.to_string().contains("needs 18 dimensions"), "{e}");
}

#[test]
fn broadcast_spec_merges_dimensions() {
    let s = BroadcastSpec::new("t", &[&[2, 3, 5, 7], &[2, 3, 5, 7]]).unwrap();
    assert_eq!((s.dims, s.strides), (vec![210], vec![vec![1], vec![1]]));
    let s = BroadcastSpec::new("t", &[&[3, 1, 5], &[1, 4, 1]]).unwrap();
    assert_eq!(s.out, vec![3, 4, 5]);
    assert_eq!(
        (s.dims, s.strides),
        (vec![3, 4, 5], vec![vec![5, 0, 1], vec![0, 1, 0]])
    );
    let s = BroadcastSpec::new("t", &[&[2, 3, 5, 7], &[5, 1]]).unwrap();
    assert_eq!(
        (s.dims, s.strides),
        (vec![6, 5, 7], vec![vec![35, 7, 1], vec![0, 1, 0]])
    );
    let s = BroadcastSpec::new("t", &[&[1, 1], &[1]]).unwrap();
    assert_eq!((s.out, s.dims), (vec![1, 1], vec![1]));
}

#[test]
fn elementwise_on_folded_grids() {
    let Some(gpu) = folding_gpu() else { return };
    let mut rng = Rng::new(108);
    let x = rng.uniform_vec(BIG, -4.0, 4.0);
    let (tx, ty) = (upload(gpu, &[BIG], &x), zeros(gpu, &[BIG]));
    exec(gpu, unary(gpu, UnaryOp::Gelu, &tx, &ty));
    let want = unary_ref(UnaryOp::Gelu, &f64s(&x));
    assert_close(
        "gelu, 1,000,003 elements",
        &read(gpu, &ty),
        &want,
        2e-5,
        2e-6,
    );
    // [1000003] + [1] and [7, 142858 + ...]: a broadcast over a folded grid.
    let tb = upload(gpu, &[1], &[0.5]);
    exec(gpu, binary(gpu, BinaryOp::Add, &tx, &tb, &ty));
    let want: Vec<f64> = x.iter().map(|&v| v as f64 + 0.5).collect();
    assert_close(
        "x + 0.5, 1,000,003 elements",
        &read(gpu, &ty),
        &want,
        1e-7,
        0.0,
    );
}

// ---- strided copies --------------------------------------------------------------------

/// Exact: a copy moves bits (and += of two f32 is one rounding, as the f64 reference
/// rounded to f32).
fn assert_exact(what: &str, got: &[f32], want: &[f64]) {
    let want32: Vec<f64> = want.iter().map(|&w| w as f32 as f64).collect();
    assert_close(what, got, &want32, 0.0, 0.0);
}

#[test]
fn permute_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(201);
    let cases: [(&[usize], &[usize]); 8] = [
        (&[1], &[0]),
        (&[7, 1], &[1, 0]),
        (&[3, 1, 5], &[2, 0, 1]),
        (&[2, 3, 5, 7], &[3, 1, 0, 2]),
        (&[2, 3, 5, 7], &[0, 2, 1, 3]),
        (&[2, 3, 5, 7], &[0, 1, 2, 3]),
        (&[2, 1, 3, 2, 1, 5], &[5, 4, 3, 2, 1, 0]),
        (&[3, 2, 2, 3, 2, 2, 3, 2, 2], &[8, 0, 7, 1, 6, 2, 5, 3, 4]),
    ];
    for (shape, perm) in cases {
        let x = rng.uniform_vec(shape.iter().product(), -1.0, 1.0);
        let y_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        let (tx, ty) = (upload(gpu, shape, &x), zeros(gpu, &y_shape));
        match permute(gpu, &tx, perm, &ty) {
            Ok(d) => exec(gpu, Ok(d)),
            // 9 dimensions that do not merge exceed the kernel's 8: refused, not wrong.
            Err(e) => {
                assert_eq!(shape.len(), 9, "{e}");
                assert!(e.to_string().contains("at most 8"), "{e}");
                continue;
            }
        }
        let want = permute_ref(&f64s(&x), shape, perm);
        assert_exact(
            &format!("permute {shape:?} by {perm:?}"),
            &read(gpu, &ty),
            &want,
        );
    }
}

#[test]
fn slice_pad_and_concat_match_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(202);
    let shape = [2, 3, 5, 7];
    let x = rng.uniform_vec(210, -1.0, 1.0);
    let tx = upload(gpu, &shape, &x);
    for (axis, start, len) in [
        (0, 1, 1),
        (1, 0, 2),
        (2, 2, 3),
        (3, 6, 1),
        (3, 0, 7),
        (2, 0, 5),
    ] {
        let mut ys = shape.to_vec();
        ys[axis] = len;
        let ty = zeros(gpu, &ys);
        exec(gpu, slice(gpu, &tx, axis, start, len, &ty));
        let want = slice_ref(&f64s(&x), &shape, axis, start, len);
        assert_exact(
            &format!("slice axis {axis} {start}+{len}"),
            &read(gpu, &ty),
            &want,
        );
    }
    let (t1, t7) = (upload(gpu, &[1], &[2.5]), upload(gpu, &[7], &x[..7]));
    let ty = zeros(gpu, &[4]);
    exec(gpu, slice(gpu, &t7, 0, 3, 4, &ty));
    assert_exact("slice [7] 3+4", &read(gpu, &ty), &f64s(&x[3..7]));
    let ty = zeros(gpu, &[1]);
    exec(gpu, slice(gpu, &t1, 0, 0, 1, &ty));
    assert_eq!(read(gpu, &ty), vec![2.5]);

    // pad_into: x [2,3,5] into the middle of a zeroed [4,6,7], then added once more.
    let small = rng.uniform_vec(30, -1.0, 1.0);
    let (ts, tbig) = (upload(gpu, &[2, 3, 5], &small), zeros(gpu, &[4, 6, 7]));
    exec(gpu, pad_into(gpu, &ts, &tbig, &[1, 2, 1], false));
    exec(gpu, pad_into(gpu, &ts, &tbig, &[1, 2, 1], true));
    let mut want = vec![0.0; 4 * 6 * 7];
    for (i, v) in small.iter().enumerate() {
        let (a, b, c) = (i / 15, (i / 5) % 3, i % 5);
        want[((a + 1) * 6 + b + 2) * 7 + c + 1] = 2.0 * *v as f64;
    }
    assert_exact("pad_into twice (accumulate)", &read(gpu, &tbig), &want);

    // concat along each axis of three inputs that differ only there.
    for axis in 0..3 {
        let sizes = [1, 3, 2];
        let shapes: Vec<Vec<usize>> = sizes
            .iter()
            .map(|&k| {
                let mut s = vec![2, 3, 5];
                s[axis] = k;
                s
            })
            .collect();
        let data: Vec<Vec<f32>> = shapes
            .iter()
            .map(|s| rng.uniform_vec(s.iter().product(), -1.0, 1.0))
            .collect();
        let ts: Vec<Tensor> = shapes
            .iter()
            .zip(&data)
            .map(|(s, d)| upload(gpu, s, d))
            .collect();
        let mut ys = vec![2, 3, 5];
        ys[axis] = 6;
        let ty = zeros(gpu, &ys);
        run_all(
            gpu,
            &concat(gpu, &ts.iter().collect::<Vec<_>>(), axis, &ty).unwrap(),
        )
        .unwrap();
        let d64: Vec<Vec<f64>> = data.iter().map(|d| f64s(d)).collect();
        let parts: Vec<(&[f64], &[usize])> = d64
            .iter()
            .zip(&shapes)
            .map(|(d, s)| (&d[..], &s[..]))
            .collect();
        let want = concat_ref(&parts, axis);
        assert_exact(&format!("concat axis {axis}"), &read(gpu, &ty), &want);
    }
}

#[test]
fn copy_strided_on_views_and_expand() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(203);
    // Two buffers, each holding tensors at 256-byte offsets (as the flat parameter buffer).
    let xb = upload(gpu, &[200], &rng.uniform_vec(200, -1.0, 1.0));
    let yb = zeros(gpu, &[200]);
    let (x, y) = (xb.view(64, &[100]), yb.view(128, &[64]));
    let spec = CopySpec {
        shape: vec![3, 4, 5],
        x_offset: 3,
        x_strides: vec![1, 20, 2],
        y_offset: 2,
        y_strides: vec![20, 1, 4],
        accumulate: false,
    };
    exec(gpu, copy_strided(gpu, &spec, &x, &y));
    let xh = f64s(&read(gpu, &x));
    let mut want = vec![0.0; 64];
    copy_strided_ref(&spec, &xh, &mut want);
    assert_exact("copy_strided on views", &read(gpu, &y), &want);
    // Nothing outside y's view was written.
    let whole = read(gpu, &yb);
    assert!(whole[..128].iter().chain(&whole[192..]).all(|&v| v == 0.0));

    for (xs, ys) in [
        (&[1][..], &[7][..]),
        (&[3, 1, 5], &[2, 3, 4, 5]),
        (&[1, 1], &[1, 1]),
    ] {
        let x = rng.uniform_vec(xs.iter().product(), -1.0, 1.0);
        let (tx, ty) = (upload(gpu, xs, &x), zeros(gpu, ys));
        exec(gpu, expand(gpu, &tx, &ty));
        let ones = vec![0.0; ys.iter().product()];
        let (_, want) = binary_ref(BinaryOp::Add, &f64s(&x), xs, &ones, ys);
        assert_exact(&format!("expand {xs:?} to {ys:?}"), &read(gpu, &ty), &want);
    }
}

#[test]
fn copies_refuse_bad_specs() {
    let Some(gpu) = gpu() else { return };
    let (x, y) = (zeros(gpu, &[2, 3]), zeros(gpu, &[3, 2]));
    let e = err(permute(gpu, &x, &[0, 0], &y));
    assert!(e.to_string().contains("[0, 0] is not a permutation"), "{e}");
    let e = err(permute(gpu, &x, &[0, 1], &y));
    assert!(e.to_string().contains("is [2, 3], but y is [3, 2]"), "{e}");
    let e = err(slice(gpu, &x, 1, 2, 2, &zeros(gpu, &[2, 2])));
    assert!(e.to_string().contains("elements 2..4 of x [2, 3]"), "{e}");
    let e = err(pad_into(gpu, &y, &zeros(gpu, &[3, 3]), &[1, 0], false));
    assert!(e.to_string().contains("does not fit"), "{e}");
    let e = err(concat(gpu, &[&x, &y], 0, &zeros(gpu, &[5, 3])));
    assert!(e.to_string().contains("differ outside axis 0"), "{e}");
    // Writing one y element twice is refused (accumulating would race).
    let spec = CopySpec {
        y_strides: vec![1, 1],
        ..CopySpec::contiguous(&[2, 3])
    };
    let e = err(copy_strided(gpu, &spec, &x, &zeros(gpu, &[6])));
    assert!(e.to_string().contains("more than once"), "{e}");
    let spec = CopySpec {
        x_offset: 1,
        ..CopySpec::contiguous(&[2, 3])
    };
    let e = err(copy_strided(gpu, &spec, &x, &zeros(gpu, &[6])));
    assert!(e.to_string().contains("reaches element 6"), "{e}");
    let whole = zeros(gpu, &[128]);
    let spec = CopySpec::contiguous(&[6]);
    let e = err(copy_strided(
        gpu,
        &spec,
        &whole.view(0, &[6]),
        &whole.view(64, &[6]),
    ));
    assert!(e.to_string().contains("views of one buffer"), "{e}");
}

#[test]
fn copies_on_folded_grids() {
    let Some(gpu) = folding_gpu() else { return };
    let mut rng = Rng::new(204);
    let x = rng.uniform_vec(BIG, -1.0, 1.0);
    let (tx, ty) = (upload(gpu, &[BIG], &x), zeros(gpu, &[BIG]));
    let mut spec = CopySpec::contiguous(&[BIG]);
    exec(gpu, copy_strided(gpu, &spec, &tx, &ty));
    spec.accumulate = true;
    exec(gpu, copy_strided(gpu, &spec, &tx, &ty));
    let want: Vec<f64> = x.iter().map(|&v| 2.0 * v as f64).collect();
    assert_exact(
        "copy + accumulate, 1,000,003 elements",
        &read(gpu, &ty),
        &want,
    );
    let (r, c) = (1009, 991);
    let x = rng.uniform_vec(r * c, -1.0, 1.0);
    let (tx, ty) = (upload(gpu, &[r, c], &x), zeros(gpu, &[c, r]));
    exec(gpu, permute(gpu, &tx, &[1, 0], &ty));
    let want = permute_ref(&f64s(&x), &[r, c], &[1, 0]);
    assert_exact("transpose 1009 x 991", &read(gpu, &ty), &want);
}

// ---- reductions over an axis -----------------------------------------------------------

#[test]
fn reduce_passes_respect_the_loop_budget() {
    for (outer, r, inner) in [
        (1, 1, 1),
        (1, 1_000_003, 1),
        (20_000, 40_000, 1),
        (3, 70_001, 5),
    ] {
        let passes = reduce_passes(outer, r, inner);
        assert_eq!(passes[0].0, r);
        for w in passes.windows(2) {
            assert_eq!(w[1].0, w[0].0.div_ceil(w[0].1), "{passes:?}");
        }
        let &(r_last, chunk_last) = passes.last().unwrap();
        assert!(r_last <= chunk_last, "{passes:?}");
        assert!(passes.iter().all(|&(_, c)| c <= MAX_CHUNK), "{passes:?}");
    }
    assert_eq!(reduce_passes(1, 1, 1), vec![(1, 1)]);
    assert_eq!(reduce_passes(20_000, 40_000, 1).len(), 2);
}

fn reduce_case(gpu: &Gpu, rng: &mut Rng, op: ReduceOp, dims: (usize, usize, usize)) {
    let (outer, r, inner) = dims;
    let x = rng.uniform_vec(outer * r * inner, -1.0, 1.0);
    let (tx, ty) = (
        upload(gpu, &[outer, r, inner], &x),
        zeros(gpu, &[outer, inner]),
    );
    run_all(gpu, &reduce(gpu, op, &tx, dims, &ty).unwrap()).unwrap();
    let want = reduce_ref(op, &f64s(&x), dims);
    let (rtol, atol) = match op {
        ReduceOp::Max | ReduceOp::Min => (0.0, 0.0),
        ReduceOp::Sum => (1e-5, 1e-6 * (r as f64).sqrt() * 4.0),
        ReduceOp::Mean => (1e-5, 4e-6 / (r as f64).sqrt()),
    };
    let what = format!(
        "reduce {op:?} {dims:?} in {} passes",
        reduce_passes(outer, r, inner).len()
    );
    assert_close(&what, &read(gpu, &ty), &want, rtol, atol);
}

#[test]
fn reduce_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(301);
    for op in ReduceOp::ALL {
        for dims in [
            (1, 1, 1),
            (1, 7, 1),
            (7, 1, 3),
            (3, 1, 5),
            (2, 3, 35),
            (6, 5, 7),
            (210, 1, 1),
            (1000, 1001, 1),
            (3, 70_001, 5),
            (1, 1_000_003, 1),
        ] {
            reduce_case(gpu, &mut rng, op, dims);
        }
    }
}

#[test]
fn reduce_max_and_min_propagate_nan_and_runs_repeat() {
    let Some(gpu) = gpu() else { return };
    let mut x = vec![0.5f32; 3 * 600 * 2];
    x[(600 + 599) * 2] = f32::NAN; // o = 1, k = 599, i = 0: in the last chunk of a split
    x[2 * 600 * 2 + 1] = f32::NAN; // o = 2, k = 0, i = 1: the first element
    let tx = upload(gpu, &[3, 600, 2], &x);
    for op in [ReduceOp::Max, ReduceOp::Min, ReduceOp::Sum] {
        let ty = zeros(gpu, &[3, 2]);
        run_all(gpu, &reduce(gpu, op, &tx, (3, 600, 2), &ty).unwrap()).unwrap();
        let got = read(gpu, &ty);
        let nan: Vec<bool> = got.iter().map(|v| v.is_nan()).collect();
        assert_eq!(
            nan,
            [false, false, true, false, false, true],
            "{op:?} {got:?}"
        );
    }
    // Bit-identical reruns, on a sum split over several passes.
    let mut rng = Rng::new(302);
    let x = rng.uniform_vec(1_000_003, -1.0, 1.0);
    let tx = upload(gpu, &[1_000_003], &x);
    let runs: Vec<Vec<u32>> = (0..2)
        .map(|_| {
            let ty = zeros(gpu, &[1]);
            run_all(
                gpu,
                &reduce(gpu, ReduceOp::Sum, &tx, (1, 1_000_003, 1), &ty).unwrap(),
            )
            .unwrap();
            read(gpu, &ty).iter().map(|v| v.to_bits()).collect()
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
}

#[test]
fn reduce_on_folded_grids_and_bad_shapes() {
    let Some(gpu) = folding_gpu() else { return };
    let mut rng = Rng::new(303);
    // 1,000,003 outputs of r = 2: one pass of 3,907 workgroups, folded.
    reduce_case(gpu, &mut rng, ReduceOp::Sum, (1, 2, BIG));
    reduce_case(gpu, &mut rng, ReduceOp::Max, (BIG, 1, 1));
    let x = zeros(gpu, &[2, 3, 5]);
    let e = err(reduce(gpu, ReduceOp::Sum, &x, (2, 3, 4), &zeros(gpu, &[8])));
    assert!(
        e.to_string().contains("is not [outer 2, r 3, inner 4]"),
        "{e}"
    );
    let e = err(reduce(
        gpu,
        ReduceOp::Sum,
        &x,
        (2, 3, 5),
        &zeros(gpu, &[2, 3]),
    ));
    assert!(
        e.to_string()
            .contains("y [2, 3] (6 elements) is not [outer 2, inner 5]"),
        "{e}"
    );
}
