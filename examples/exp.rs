use shadergrad::gpu::Gpu;
use std::time::Instant;

fn main() {
    let gpu = Gpu::new().unwrap();
    let src = std::fs::read_to_string(std::env::args().nth(1).unwrap()).unwrap();
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
    for (m, n, k, ta, tb) in [
        (128u32, 128u32, 5408u32, false, true),
        (128, 5408, 128, false, false),
        (128, 5408, 128, true, false),
        (1024, 1024, 1024, false, false),
    ] {
        let wg: u32 = std::env::var("WG")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(64);
        let consts: Vec<(&str, f64)> = vec![
            ("TRANSPOSE_A", ta as u8 as f64),
            ("TRANSPOSE_B", tb as u8 as f64),
            ("WG", wg as f64),
        ];
        let pipe = gpu
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: None,
                layout: None,
                module: &module,
                entry_point: Some("matmul"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &consts,
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
        let mk = |s: u32, u| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: (s * 4) as u64,
                usage: u,
                mapped_at_creation: false,
            })
        };
        let st = wgpu::BufferUsages::STORAGE;
        let (a, b, bias, c) = (mk(m * k, st), mk(k * n, st), mk(n, st), mk(m * n, st));
        let u = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue
            .write_buffer(&u, 0, bytemuck::cast_slice(&[m, n, k, 0u32]));
        let bg = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: u.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: a.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: b.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: bias.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: c.as_entire_binding(),
                },
            ],
        });
        for rep in 0..2 {
            let t = Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut p = enc.begin_compute_pass(&Default::default());
                p.set_pipeline(&pipe);
                p.set_bind_group(0, &bg, &[]);
                let (dx, dy) = if std::env::var("U").is_ok() {
                    (
                        n.div_ceil(
                            wg * std::env::var("TN")
                                .map(|s| s.parse::<u32>().unwrap())
                                .unwrap_or(1),
                        ),
                        m.div_ceil(std::env::var("U").unwrap().parse::<u32>().unwrap()),
                    )
                } else {
                    (n.div_ceil(4 * wg), m.div_ceil(4))
                };
                p.dispatch_workgroups(dx, dy, 1);
            }
            let idx = gpu.queue.submit([enc.finish()]);
            gpu.wait("x", Some(idx)).unwrap();
            let s = t.elapsed().as_secs_f64();
            if rep == 1 {
                println!(
                    "{m}x{n}x{k} ta={ta} tb={tb}: {:.1} ms {:.2} GFLOP/s",
                    s * 1e3,
                    2.0 * (m * n) as f64 * k as f64 / s / 1e9
                );
            }
        }
    }
}
