//! The table of kernel rows: each [`Case`] names its op, family, shape, flops and bytes,
//! and sets itself up (tensors, dispatches through the engine's own wrappers, and a check
//! against the wrapper's CPU reference). A new kernel is one more constructor in its
//! family's function, listed by [`cases`].

use crate::gpu::Gpu;
use crate::kernels::activation::{activation_backward, activation_backward_ref, Activation};
use crate::kernels::conv2d::*;
use crate::kernels::gather::{gather_batch, gather_batch_ref};
use crate::kernels::loss::*;
use crate::kernels::matmul::*;
use crate::kernels::optim::{optimizer_step, optimizer_step_ref, Optimizer};
use crate::kernels::pool::*;
use crate::kernels::roof::*;
use crate::kernels::transpose::{transpose, transpose_ref};
use crate::kernels::{f64s, Dispatch};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::Result;

/// What a check found: None when the GPU's result matches the reference.
pub type Mismatch = Option<String>;

/// A row set up on a device: its dispatches (one run of the row) and its check, which reads
/// the outputs after one run and compares them with the CPU reference.
pub struct Prepared<'g> {
    pub dispatches: Vec<Dispatch>,
    pub check: Box<dyn Fn() -> Result<Mismatch> + 'g>,
}

pub type Setup = Box<dyn for<'g> Fn(&'g Gpu) -> Result<Option<Prepared<'g>>>>;

/// One row of the suite. `setup` returns None where this adapter cannot run the kernel
/// (a window kernel on a GPU): the row is then listed as skipped.
pub struct Case {
    pub kernel: &'static str,
    pub shape: String,
    pub flops: f64,
    pub bytes: f64,
    /// Part of `--quick`.
    pub quick: bool,
    pub setup: Setup,
}

/// |got - want| <= atol + rtol |want| everywhere, else the first mismatches.
pub fn close(got: &[f32], want: &[f64], rtol: f64, atol: f64) -> Mismatch {
    if got.len() != want.len() {
        return Some(format!("{} values, expected {}", got.len(), want.len()));
    }
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| {
            let (g, w) = (got[i] as f64, want[i]);
            // NaN compares false: a NaN on either side is a mismatch.
            let ok = (g - w).abs() <= atol + rtol * w.abs();
            !ok
        })
        .collect();
    let first = bad.first()?;
    Some(format!(
        "{} of {} values differ (rtol {rtol}, atol {atol}), first [{first}]: gpu {} reference {}",
        bad.len(),
        got.len(),
        got[*first],
        want[*first]
    ))
}

fn random(gpu: &Gpu, rng: &mut Rng, shape: &[usize]) -> Result<(Tensor, Vec<f32>)> {
    let v = rng.uniform_vec(shape.iter().product(), -1.0, 1.0);
    Ok((Tensor::from_f32(gpu, "bench input", shape, &v)?, v))
}

/// The family of the kernel a row runs, from its op and its entry points (a `_windowed`
/// wrapper runs a subgroup entry point through uniform windows).
pub fn family(kernel: &str, entries: &[&str]) -> &'static str {
    if kernel.ends_with("_windowed")
        || entries
            .iter()
            .any(|e| e.contains("window") || e.contains("relu_pool"))
    {
        "window"
    } else if entries.iter().any(|e| e.contains("subgroup")) {
        "subgroup"
    } else if entries
        .iter()
        .any(|e| *e == "peak_fma" || *e == "copy_bandwidth")
    {
        "roof"
    } else {
        "portable"
    }
}

/// "matmul_window x4" for four dispatches of one entry point.
pub fn entry_label(ds: &[Dispatch]) -> String {
    let mut names: Vec<&str> = ds.iter().map(|d| d.name).collect();
    names.dedup();
    match (names.len(), ds.len()) {
        (1, 1) => names[0].to_string(),
        (1, n) => format!("{} x{n}", names[0]),
        _ => format!("{} ({} dispatches)", names.join("+"), ds.len()),
    }
}

fn matmul_case(label: &str, spec: MatmulSpec, kernel: Option<MatmulKernel>, quick: bool) -> Case {
    let (m, n, k) = (spec.m as f64, spec.n as f64, spec.k as f64);
    // " subgroup" from `Subgroup { wg: 64 }`: any variant, named as its enum says.
    let variant = kernel.map_or(String::new(), |k| {
        let name = format!("{k:?}");
        let name = name.split(['(', ' ', '{']).next().unwrap_or_default();
        format!(" {}", name.to_lowercase())
    });
    Case {
        kernel: "matmul",
        shape: format!(
            "{}x{}x{} ta={} tb={} ({label}{variant})",
            spec.m, spec.n, spec.k, spec.transpose_a as u8, spec.transpose_b as u8
        ),
        flops: spec.flops(),
        bytes: 4.0 * (m * k + k * n + m * n),
        quick,
        setup: Box::new(move |gpu| {
            let kernel = match kernel {
                Some(MatmulKernel::Window { .. }) if !gpu.windows() => return Ok(None),
                Some(MatmulKernel::Subgroup { .. }) if !gpu.subgroups() => return Ok(None),
                Some(kern) => kern,
                None => MatmulKernel::for_gpu(gpu),
            };
            let mut rng = Rng::new(7);
            let (a, av) = random(gpu, &mut rng, &spec.a_shape())?;
            let (b, bv) = random(gpu, &mut rng, &spec.b_shape())?;
            let c = Tensor::zeros(gpu, "c", &[spec.m, spec.n])?;
            let dispatches = matmul_with(gpu, &spec, kernel, &a, &b, None, &c)?;
            let check = Box::new(move || {
                // A sample of rows of C (first, last, evenly between) against the
                // reference on those rows of op(A).
                let rows: Vec<usize> = {
                    let mut r: Vec<usize> = (0..8).map(|i| i * (spec.m - 1) / 7).collect();
                    r.dedup();
                    r
                };
                let mut a_rows = Vec::with_capacity(rows.len() * spec.k);
                for &i in &rows {
                    for p in 0..spec.k {
                        let at = if spec.transpose_a {
                            p * spec.m + i
                        } else {
                            i * spec.k + p
                        };
                        a_rows.push(av[at] as f64);
                    }
                }
                let sub = MatmulSpec {
                    m: rows.len(),
                    transpose_a: false,
                    ..spec
                };
                let want = matmul_ref(&sub, &a_rows, &f64s(&bv), None);
                let all = c.to_f32(gpu)?;
                let got: Vec<f32> = rows
                    .iter()
                    .flat_map(|&i| all[i * spec.n..(i + 1) * spec.n].iter().copied())
                    .collect();
                Ok(close(&got, &want, 1e-4, 1e-5 * spec.k as f64))
            });
            Ok(Some(Prepared { dispatches, check }))
        }),
    }
}

/// The GPT's attention scores at its defaults (batch 16, context 64, 4 heads of 32): per
/// head z = b * 4 + h, S[z] = Q[z] · K[z]^T, [64, 64, 32] each. `in_place`: Q and K read
/// through strided views of the projection qkv [B*T, 3D], as the fused graph runs it;
/// otherwise from contiguous per-head copies, as it ran before the views (the copies not
/// timed). The adapter's default kernel for the product.
fn attention_case(in_place: bool) -> Case {
    let (b, t, h, hd) = (16, 64, 4, 32);
    let d = h * hd;
    let head = |offset| Strided {
        offset,
        split: h,
        outer: t * 3 * d,
        inner: hd,
        row: 3 * d,
        col: 1,
    };
    let spec = MatmulSpec {
        batch: b * h,
        transpose_b: true,
        a_view: in_place.then(|| head(0)),
        b_view: in_place.then(|| head(d)),
        ..MatmulSpec::new(t, t, hd)
    };
    let label = if in_place {
        "heads in place"
    } else {
        "heads copied"
    };
    Case {
        kernel: "matmul_attention",
        shape: format!("{}x{t}x{t}x{hd} tb=1 ({label})", b * h),
        flops: spec.flops(),
        bytes: 4.0 * (spec.batch * (2 * t * hd + t * t)) as f64,
        quick: true,
        setup: Box::new(move |gpu| {
            let Some(&kernel) = matmul_candidates(gpu, &spec).first() else {
                return Ok(None);
            };
            let mut rng = Rng::new(7);
            let operand = |rng: &mut Rng| match in_place {
                true => random(gpu, rng, &[b * t, 3 * d]),
                false => random(gpu, rng, &[b * h, t, hd]),
            };
            let (q, qv) = operand(&mut rng)?;
            let (k, kv) = if in_place {
                (q.clone(), qv.clone())
            } else {
                operand(&mut rng)?
            };
            let c = Tensor::zeros(gpu, "scores", &[b * h, t, t])?;
            let dispatches = matmul_with(gpu, &spec, kernel, &q, &k, None, &c)?;
            let check = Box::new(move || {
                let want = matmul_ref(&spec, &f64s(&qv), &f64s(&kv), None);
                Ok(close(&c.to_f32(gpu)?, &want, 1e-4, 1e-5 * hd as f64))
            });
            Ok(Some(Prepared { dispatches, check }))
        }),
    }
}

/// The seed CNN's convolution at batch 128, and its pool.
fn seed_conv() -> (Conv2dSpec, PoolSpec) {
    let s = Conv2dSpec {
        batch: 128,
        c_in: 1,
        h: 28,
        w: 28,
        c_out: 32,
        kh: 3,
        kw: 3,
        padding: Padding::Valid,
        stride: 1,
    };
    let p = PoolSpec {
        batch: 128,
        channels: 32,
        h: 26,
        w: 26,
        pool: 2,
        stride: 2,
    };
    (s, p)
}

const CONV_SHAPE: &str = "128x1x28x28 -> 32x26x26, 3x3";

/// Sum the partial rows of a conv's dweight/dbias: part `[rows, width]` -> `[width]`.
fn sum_rows(part: &[f32], width: usize) -> Vec<f32> {
    (0..width)
        .map(|j| part.chunks(width).map(|r| r[j] as f64).sum::<f64>() as f32)
        .collect()
}

/// Every row of the suite, in the order printed: one function per kernel family, one
/// constructor per row.
pub fn cases() -> Vec<Case> {
    [
        roof_cases(),
        matmul_cases(),
        conv_cases(),
        pool_cases(),
        step_cases(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

// ---- roof ----

fn roof_cases() -> Vec<Case> {
    vec![peak_fma_case(), copy_bandwidth_case()]
}

fn peak_fma_case() -> Case {
    let (fma_n, fma_iters) = (16_384 * 4, 512);
    Case {
        kernel: "peak_fma",
        shape: format!("{fma_n} invocations x {fma_iters} rounds"),
        flops: peak_fma_flops(fma_n, fma_iters),
        bytes: 0.0,
        quick: true,
        setup: Box::new(move |gpu| {
            let y = Tensor::zeros(gpu, "y", &[fma_n, 4])?;
            let d = peak_fma(gpu, fma_iters, &y)?;
            let check = Box::new(move || {
                let got = y.to_f32(gpu)?;
                let want: Vec<f64> = (0..fma_n)
                    .flat_map(|i| peak_fma_ref(i, fma_iters))
                    .collect();
                Ok(close(&got, &want, 1e-4, 1e-4))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    }
}

fn copy_bandwidth_case() -> Case {
    let copy_n = 4 << 20; // vec4s: 64 MiB each way
    Case {
        kernel: "copy_bandwidth",
        shape: format!("{} MiB", (copy_n * 16) >> 20),
        flops: 0.0,
        bytes: 2.0 * 16.0 * copy_n as f64,
        quick: true,
        setup: Box::new(move |gpu| {
            let mut rng = Rng::new(3);
            let (x, xv) = random(gpu, &mut rng, &[copy_n, 4])?;
            let y = Tensor::zeros(gpu, "y", &[copy_n, 4])?;
            let d = copy_bandwidth(gpu, &x, &y)?;
            let check = Box::new(move || {
                let got = y.to_f32(gpu)?;
                Ok((got != xv).then(|| "the copy differs from its source".to_string()))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    }
}

// ---- matmul ----

fn matmul_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for n in [256, 512, 1024, 2048] {
        v.push(matmul_case(
            "square",
            MatmulSpec::new(n, n, n),
            None,
            n == 512 || n == 1024,
        ));
    }
    // Every matmul kernel at one shape: a new variant is one more line here.
    for kernel in [
        MatmulKernel::RegisterTile(Tiles {
            wg: 64,
            tm: 4,
            tn: 4,
        }),
        MatmulKernel::Subgroup { wg: 64 },
        MatmulKernel::Window { wg: 64 },
    ] {
        v.push(matmul_case(
            "square",
            MatmulSpec::new(512, 512, 512),
            Some(kernel),
            false,
        ));
    }
    // Seed CNN Dense(5408 -> 128) at batch 128: forward, dweight, dinput, as stored, and as
    // a training step runs them on window adapters (on x^T and W^T).
    let dense = |ta, tb, m, n, k| MatmulSpec {
        transpose_a: ta,
        transpose_b: tb,
        ..MatmulSpec::new(m, n, k)
    };
    for (label, spec) in [
        ("dense fwd", dense(false, true, 128, 128, 5408)),
        ("dense dweight", dense(true, false, 128, 5408, 128)),
        ("dense dinput", dense(false, false, 128, 5408, 128)),
        ("dense fwd, x^T W^T", dense(true, false, 128, 128, 5408)),
        ("dense dweight, x^T", dense(true, true, 128, 5408, 128)),
        ("dense dinput, W^T", dense(false, true, 128, 5408, 128)),
    ] {
        v.push(matmul_case(label, spec, None, true));
    }
    v.extend([attention_case(false), attention_case(true)]);
    v.push(transpose_case());
    v
}

fn transpose_case() -> Case {
    Case {
        kernel: "transpose",
        shape: "128x5408".into(),
        flops: 0.0,
        bytes: 2.0 * 4.0 * 128.0 * 5408.0,
        quick: true,
        setup: Box::new(|gpu| {
            let mut rng = Rng::new(5);
            let (x, xv) = random(gpu, &mut rng, &[128, 5408])?;
            let y = Tensor::zeros(gpu, "x^T", &[5408, 128])?;
            let d = transpose(gpu, &x, &y)?;
            let check = Box::new(move || {
                Ok(close(
                    &y.to_f32(gpu)?,
                    &transpose_ref(&f64s(&xv), 128, 5408),
                    0.0,
                    0.0,
                ))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    }
}

// ---- conv2d, pool, activation at the seed CNN's shapes ----

/// Bytes of the seed conv's input and output.
fn conv_bytes(s: &Conv2dSpec) -> f64 {
    4.0 * (s.x_shape().iter().product::<usize>() + s.y_shape().iter().product::<usize>()) as f64
}

/// A row at the seed CNN's conv shape.
fn conv_case(kernel: &'static str, quick: bool, setup: Setup) -> Case {
    let (s, _) = seed_conv();
    Case {
        kernel,
        shape: CONV_SHAPE.into(),
        flops: s.flops(),
        bytes: conv_bytes(&s),
        quick,
        setup,
    }
}

fn conv_cases() -> Vec<Case> {
    vec![
        conv2d_forward_case(),
        conv2d_forward_windowed_case(),
        conv2d_backward_weight_case(),
        conv2d_backward_input_case(),
        conv2d_relu_pool_case(),
        conv2d_relu_pool_backward_weight_case(),
    ]
}

fn conv2d_forward_case() -> Case {
    let (s, _) = seed_conv();
    conv_case(
        "conv2d_forward",
        true,
        Box::new(move |gpu| {
            let mut rng = Rng::new(11);
            let (x, xv) = random(gpu, &mut rng, &s.x_shape())?;
            let (w, wv) = random(gpu, &mut rng, &s.w_shape())?;
            let (b, bv) = random(gpu, &mut rng, &[s.c_out])?;
            let y = Tensor::zeros(gpu, "y", &s.y_shape())?;
            let d = conv2d_forward(gpu, &s, &x, &w, Some(&b), true, &y)?;
            let check = Box::new(move || {
                let want = conv2d_forward_ref(&s, &f64s(&xv), &f64s(&wv), Some(&f64s(&bv)), true);
                Ok(close(&y.to_f32(gpu)?, &want, 1e-4, 1e-4))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    )
}

fn conv2d_forward_windowed_case() -> Case {
    let (s, _) = seed_conv();
    conv_case(
        "conv2d_forward_windowed",
        false,
        Box::new(move |gpu| {
            let mut rng = Rng::new(11);
            let (x, xv) = random(gpu, &mut rng, &s.x_shape())?;
            let (w, wv) = random(gpu, &mut rng, &s.w_shape())?;
            let (b, bv) = random(gpu, &mut rng, &[s.c_out])?;
            let y = Tensor::zeros(gpu, "y", &s.y_shape())?;
            let Some(dispatches) = conv2d_forward_windowed(gpu, &s, &x, &w, Some(&b), true, &y)?
            else {
                return Ok(None);
            };
            let check = Box::new(move || {
                let want = conv2d_forward_ref(&s, &f64s(&xv), &f64s(&wv), Some(&f64s(&bv)), true);
                Ok(close(&y.to_f32(gpu)?, &want, 1e-4, 1e-4))
            });
            Ok(Some(Prepared { dispatches, check }))
        }),
    )
}

fn conv2d_backward_weight_case() -> Case {
    let (s, _) = seed_conv();
    conv_case(
        "conv2d_backward_weight",
        true,
        Box::new(move |gpu| {
            let mut rng = Rng::new(12);
            let (x, xv) = random(gpu, &mut rng, &s.x_shape())?;
            let (dy, dyv) = random(gpu, &mut rng, &s.y_shape())?;
            let part = Tensor::zeros(gpu, "part", &[s.weight_chunks(), s.part_row()])?;
            let d = conv2d_backward_weight(gpu, &s, &dy, &x, &part)?;
            let check = Box::new(move || {
                let mut want = conv2d_backward_weight_ref(&s, &f64s(&dyv), &f64s(&xv));
                want.extend(conv2d_backward_bias_ref(&s, &f64s(&dyv)));
                let got = sum_rows(&part.to_f32(gpu)?, s.part_row());
                Ok(close(&got, &want, 1e-4, 1e-5 * (128 * 26 * 26) as f64))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    )
}

fn conv2d_backward_input_case() -> Case {
    let (s, _) = seed_conv();
    conv_case(
        "conv2d_backward_input",
        false,
        Box::new(move |gpu| {
            let mut rng = Rng::new(13);
            let (w, wv) = random(gpu, &mut rng, &s.w_shape())?;
            let (dy, dyv) = random(gpu, &mut rng, &s.y_shape())?;
            let dx = Tensor::zeros(gpu, "dx", &s.x_shape())?;
            let d = conv2d_backward_input(gpu, &s, &dy, &w, &dx)?;
            let check = Box::new(move || {
                let want = conv2d_backward_input_ref(&s, &f64s(&dyv), &f64s(&wv));
                Ok(close(&dx.to_f32(gpu)?, &want, 1e-4, 1e-4 * 32.0))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    )
}

/// The seed CNN's first layer on window adapters: conv + ReLU + max pool in one kernel,
/// and its dweight/dbias from the pool's gradient.
fn conv2d_relu_pool_case() -> Case {
    let (s, ps) = seed_conv();
    let conv_bytes = conv_bytes(&s);
    Case {
        kernel: "conv2d_relu_pool",
        shape: format!("{CONV_SHAPE}, pool 2x2"),
        flops: s.flops(),
        bytes: conv_bytes / 4.0 * 2.0,
        quick: true,
        setup: Box::new(move |gpu| {
            let mut rng = Rng::new(14);
            let (x, xv) = random(gpu, &mut rng, &s.x_shape())?;
            let (w, wv) = random(gpu, &mut rng, &s.w_shape())?;
            let (b, bv) = random(gpu, &mut rng, &[s.c_out])?;
            let (y, arg) = (
                Tensor::zeros(gpu, "y", &ps.y_shape())?,
                Tensor::zeros(gpu, "argmax", &ps.y_shape())?,
            );
            let Some(dispatches) = conv2d_relu_pool_windowed(gpu, &s, &ps, &x, &w, &b, &y, &arg)?
            else {
                return Ok(None);
            };
            let check = Box::new(move || {
                let (want, _) = conv2d_relu_pool_ref(&s, &ps, &f64s(&xv), &f64s(&wv), &f64s(&bv));
                Ok(close(&y.to_f32(gpu)?, &want, 1e-4, 1e-4))
            });
            Ok(Some(Prepared { dispatches, check }))
        }),
    }
}

fn conv2d_relu_pool_backward_weight_case() -> Case {
    let (s, ps) = seed_conv();
    let conv_bytes = conv_bytes(&s);
    Case {
        kernel: "conv2d_relu_pool_backward_weight",
        shape: format!("{CONV_SHAPE}, pool 2x2"),
        flops: s.flops() / 4.0,
        bytes: conv_bytes / 4.0 * 2.0,
        quick: true,
        setup: Box::new(move |gpu| {
            let Some(rows) = relu_pool_weight_rows(gpu, &s, &ps) else {
                return Ok(None);
            };
            let mut rng = Rng::new(15);
            let (x, xv) = random(gpu, &mut rng, &s.x_shape())?;
            let (w, _) = random(gpu, &mut rng, &s.w_shape())?;
            let (b, _) = random(gpu, &mut rng, &[s.c_out])?;
            let (g, gv) = random(gpu, &mut rng, &ps.y_shape())?;
            let (y, arg) = (
                Tensor::zeros(gpu, "y", &ps.y_shape())?,
                Tensor::zeros(gpu, "argmax", &ps.y_shape())?,
            );
            // The forward once, for y and argmax; the row times the backward only.
            let Some(fwd) = conv2d_relu_pool_windowed(gpu, &s, &ps, &x, &w, &b, &y, &arg)? else {
                return Ok(None);
            };
            crate::kernels::run_all(gpu, &fwd)?;
            let part = Tensor::zeros(gpu, "part", &[rows, s.part_row()])?;
            let Some(dispatches) =
                conv2d_relu_pool_backward_weight_windowed(gpu, &s, &ps, &x, &g, &y, &arg, &part)?
            else {
                return Ok(None);
            };
            let check = Box::new(move || {
                let (yv, argv) = (y.to_f32(gpu)?, arg.to_u32(gpu)?);
                let (dw, db) = conv2d_relu_pool_backward_weight_ref(
                    &s,
                    &ps,
                    &f64s(&xv),
                    &f64s(&gv),
                    &f64s(&yv),
                    &argv,
                );
                let want: Vec<f64> = dw.into_iter().chain(db).collect();
                let got = sum_rows(&part.to_f32(gpu)?, s.part_row());
                Ok(close(&got, &want, 1e-4, 1e-5 * (128 * 13 * 13) as f64))
            });
            Ok(Some(Prepared { dispatches, check }))
        }),
    }
}

/// Elements of the seed pool's input and output.
const POOL_IN: usize = 128 * 32 * 26 * 26;
const POOL_OUT: usize = 128 * 32 * 13 * 13;

fn pool_cases() -> Vec<Case> {
    vec![
        max_pool2d_forward_case(),
        max_pool2d_backward_case(),
        relu_backward_case(),
    ]
}

fn max_pool2d_forward_case() -> Case {
    let (_, ps) = seed_conv();
    let (n_in, n_out) = (POOL_IN, POOL_OUT);
    Case {
        kernel: "max_pool2d_forward",
        shape: "128x32x26x26, 2x2".into(),
        flops: 0.0,
        bytes: 4.0 * (n_in + 2 * n_out) as f64,
        quick: true,
        setup: Box::new(move |gpu| {
            let mut rng = Rng::new(16);
            let (x, xv) = random(gpu, &mut rng, &ps.x_shape())?;
            let (y, arg) = (
                Tensor::zeros(gpu, "y", &ps.y_shape())?,
                Tensor::zeros(gpu, "argmax", &ps.y_shape())?,
            );
            let d = max_pool2d_forward(gpu, &ps, &x, &arg, &y)?;
            let check = Box::new(move || {
                let (want, want_arg) = max_pool2d_forward_ref(&ps, &f64s(&xv));
                if arg.to_u32(gpu)? != want_arg {
                    return Ok(Some("argmax differs from the reference".into()));
                }
                Ok(close(&y.to_f32(gpu)?, &want, 0.0, 0.0))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    }
}

fn max_pool2d_backward_case() -> Case {
    let (_, ps) = seed_conv();
    let (n_in, n_out) = (POOL_IN, POOL_OUT);
    Case {
        kernel: "max_pool2d_backward",
        shape: "128x32x26x26, 2x2".into(),
        flops: 0.0,
        bytes: 4.0 * (n_in + 2 * n_out) as f64,
        quick: false,
        setup: Box::new(move |gpu| {
            let mut rng = Rng::new(17);
            let (dy, dyv) = random(gpu, &mut rng, &ps.y_shape())?;
            let argv: Vec<u32> = (0..n_out)
                .map(|o| {
                    let (oy, ox) = ((o / 13) % 13, o % 13);
                    ((2 * oy + rng.below(2)) * 26 + 2 * ox + rng.below(2)) as u32
                })
                .collect();
            let arg = Tensor::from_u32(gpu, "argmax", &ps.y_shape(), &argv)?;
            let dx = Tensor::zeros(gpu, "dx", &ps.x_shape())?;
            let d = max_pool2d_backward(gpu, &ps, &dy, &arg, &dx)?;
            let check = Box::new(move || {
                let want = max_pool2d_backward_ref(&ps, &f64s(&dyv), &argv);
                Ok(close(&dx.to_f32(gpu)?, &want, 0.0, 0.0))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    }
}

fn relu_backward_case() -> Case {
    let (s, _) = seed_conv();
    let n_in = POOL_IN;
    Case {
        kernel: "relu_backward",
        shape: "128x32x26x26".into(),
        flops: 0.0,
        bytes: 12.0 * n_in as f64,
        quick: false,
        setup: Box::new(move |gpu| {
            let mut rng = Rng::new(18);
            let (dy, dyv) = random(gpu, &mut rng, &s.y_shape())?;
            let (y, yv) = random(gpu, &mut rng, &s.y_shape())?;
            let dz = Tensor::zeros(gpu, "dz", &s.y_shape())?;
            let d = activation_backward(gpu, Activation::Relu, &dy, &y, &dz)?;
            let check = Box::new(move || {
                let want = activation_backward_ref(Activation::Relu, &f64s(&dyv), &f64s(&yv));
                Ok(close(&dz.to_f32(gpu)?, &want, 0.0, 0.0))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    }
}

// ---- loss, optimizer, gather ----

fn step_cases() -> Vec<Case> {
    vec![
        softmax_xent_case(false),
        softmax_xent_case(true),
        adam_case(),
        gather_batch_case(),
    ]
}

fn softmax_xent_case(backward: bool) -> Case {
    Case {
        kernel: if backward {
            "softmax_xent_backward"
        } else {
            "softmax_xent_forward"
        },
        shape: "128x10".into(),
        flops: 0.0,
        bytes: 4.0 * (128.0 * 21.0 + 128.0),
        quick: false,
        setup: Box::new(move |gpu| {
            let mut rng = Rng::new(19);
            let (z, zv) = random(gpu, &mut rng, &[128, 10])?;
            let labels: Vec<u32> = (0..128).map(|_| rng.below(10) as u32).collect();
            let label = Tensor::from_u32(gpu, "label", &[128], &labels)?;
            let prob = Tensor::zeros(gpu, "prob", &[128, 10])?;
            let out = Tensor::zeros(gpu, "out", if backward { &[128, 10][..] } else { &[128] })?;
            let lt = LossTensors {
                z: &z,
                label: Some(&label),
                target: None,
                prob: &prob,
            };
            let l = Loss::SoftmaxCrossEntropy;
            let dispatches = if backward {
                // The forward once, for prob; the row times the backward only.
                let fwd_out = Tensor::zeros(gpu, "loss", &[128])?;
                crate::kernels::run(gpu, &[&loss_forward(gpu, l, &lt, &fwd_out)?])?;
                vec![loss_backward(gpu, l, &lt, &out)?]
            } else {
                vec![loss_forward(gpu, l, &lt, &out)?]
            };
            let check = Box::new(move || {
                let (prob_ref, per_sample) = loss_forward_ref(l, 10, &f64s(&zv), &labels, &[]);
                let want = if backward {
                    loss_backward_ref(l, 10, &prob_ref, &labels, &[])
                } else {
                    per_sample
                };
                Ok(close(&out.to_f32(gpu)?, &want, 1e-4, 1e-6))
            });
            Ok(Some(Prepared { dispatches, check }))
        }),
    }
}

fn adam_case() -> Case {
    let n = 693_962; // the seed CNN's parameters
    Case {
        kernel: "adam",
        shape: format!("{n} params"),
        flops: 0.0,
        bytes: 4.0 * 7.0 * n as f64,
        quick: true,
        setup: Box::new(move |gpu| {
            let mut rng = Rng::new(20);
            let (g, gv) = random(gpu, &mut rng, &[n])?;
            let (p, pv) = random(gpu, &mut rng, &[n])?;
            let (m, v) = (
                Tensor::zeros(gpu, "m", &[n])?,
                Tensor::zeros(gpu, "v", &[n])?,
            );
            let opt = Optimizer::adam(1e-3);
            let d = optimizer_step(gpu, &opt, &g, &p, &m, &v)?;
            let check = Box::new(move || {
                let (mut pr, mut mr, mut vr) = (f64s(&pv), vec![0.0; n], vec![0.0; n]);
                optimizer_step_ref(&opt, 1, &f64s(&gv), &mut pr, &mut mr, &mut vr);
                Ok(close(&p.to_f32(gpu)?, &pr, 1e-5, 1e-6))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    }
}

fn gather_batch_case() -> Case {
    Case {
        kernel: "gather_batch",
        shape: "128x784 u8 -> f32".into(),
        flops: 0.0,
        bytes: 128.0 * (784.0 + 4.0 * 784.0),
        quick: true,
        setup: Box::new(|gpu| {
            let mut rng = Rng::new(21);
            let n_img = 1000;
            let images: Vec<u8> = (0..n_img * 784).map(|_| rng.below(256) as u8).collect();
            let labels: Vec<u8> = (0..n_img).map(|_| rng.below(10) as u8).collect();
            let packed = crate::data::pack_u8_to_u32(&images);
            let pixels = Tensor::from_u32(gpu, "pixels", &[packed.len()], &packed)?;
            let packed_labels = crate::data::pack_u8_to_u32(&labels);
            let tl = Tensor::from_u32(gpu, "labels", &[packed_labels.len()], &packed_labels)?;
            let order: Vec<u32> = (0..128).map(|_| rng.below(n_img) as u32).collect();
            let to = Tensor::from_u32(gpu, "order", &[128], &order)?;
            let (x, lbl) = (
                Tensor::zeros(gpu, "x", &[128, 784])?,
                Tensor::zeros(gpu, "lbl", &[128])?,
            );
            let d = gather_batch(gpu, &pixels, &tl, &to, 0, &x, &lbl)?;
            let check = Box::new(move || {
                let (want, want_lbl) = gather_batch_ref(&images, &labels, 784, &order);
                if lbl.to_u32(gpu)? != want_lbl {
                    return Ok(Some("labels differ from the reference".into()));
                }
                Ok(close(&x.to_f32(gpu)?, &want, 1e-6, 1e-6))
            });
            Ok(Some(Prepared {
                dispatches: vec![d],
                check,
            }))
        }),
    }
}
