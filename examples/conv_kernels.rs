//! Time every conv2d kernel candidate of each pass (forward, input gradient, weight
//! gradient) on one shape, as the lowering's measurement would choose among them (debug
//! aid): 5 waited runs each after a warm-up, median and best.
//!
//!     cargo run --release --example conv_kernels -- B CI H W CO K [same|valid] [stride]
//!     cargo run --release --example conv_kernels -- 128 16 14 14 32 3 same
use shadergrad::gpu::Gpu;
use shadergrad::kernels::conv2d::*;
use shadergrad::kernels::run_all;
use shadergrad::tensor::Tensor;
use std::time::Instant;

fn main() -> shadergrad::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let n = |i: usize, d: usize| a.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let valid = a.get(6).is_some_and(|p| p == "valid");
    let s = Conv2dSpec {
        batch: n(0, 128),
        c_in: n(1, 16),
        h: n(2, 28),
        w: n(3, 28),
        c_out: n(4, 16),
        kh: n(5, 3),
        kw: n(5, 3),
        padding: if valid { Padding::Valid } else { Padding::Same },
        stride: n(7, 1),
    };
    let gpu = Gpu::new()?;
    let x = Tensor::zeros(&gpu, "x", &s.x_shape())?;
    let w = Tensor::zeros(&gpu, "w", &s.w_shape())?;
    let y = Tensor::zeros(&gpu, "y", &s.y_shape())?;
    let gflop = s.flops() / 1e9;
    println!("{s:?}: {gflop:.3} GFLOP a pass");
    for (pass, name) in ["forward", "input gradient", "weight gradient"]
        .iter()
        .enumerate()
    {
        let candidates = match pass {
            0 => conv2d_forward_candidates(&gpu, &s),
            1 => conv2d_backward_input_candidates(&gpu, &s),
            _ => conv2d_backward_weight_candidates(&gpu, &s),
        };
        for k in candidates {
            let rows = conv2d_backward_weight_rows(&gpu, k, &s);
            let part = Tensor::zeros(&gpu, "part", &[rows.max(1), s.part_row()])?;
            let d = match pass {
                0 => conv2d_forward_with(&gpu, k, &s, &x, &w, None, false, &y)?,
                1 => conv2d_backward_input_with(&gpu, k, &s, &y, &w, &x)?,
                _ => conv2d_backward_weight_with(&gpu, k, &s, &y, &x, &part)?,
            };
            run_all(&gpu, &d)?;
            let mut ms = Vec::new();
            for _ in 0..5 {
                let t = Instant::now();
                run_all(&gpu, &d)?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            ms.sort_by(f64::total_cmp);
            println!(
                "{name:<16} {k:?} x{}: median {:.2} ms (best {:.2}), {:.2} GFLOP/s",
                d.len(),
                ms[2],
                ms[0],
                gflop / ms[2] * 1e3
            );
        }
    }
    Ok(())
}
