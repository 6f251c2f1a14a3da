// roof.wgsl: the adapter's measured roof for `shadergrad bench`: peak FMA throughput and
// copy bandwidth, each the best a simple kernel reaches, for the "% of roof" column.
//
//   peak_fma: invocation i runs p.iters rounds of 8 independent vec4 FMA chains
//     acc_j <- fma(acc_j, m, c)          m = p.m, c = p.c (uniforms: nothing folds)
//     acc_j starts at f32(i % 16) + f32(j) + (0, 0.25, 0.5, 0.75)
//   and writes y[i] = sum over j of acc_j (a vec4): 64 flops a round (32 FMA).
//   A chain's closed form x_n = m^n x_0 + c (1 - m^n) / (1 - m) is the CPU check.
//   copy_bandwidth: y[i] = x[i] for vec4<f32> elements i < p.n: 32 bytes moved each.
//
// Bindings (group 0), shared by both entry points:
//   0 uniform             Params { n (invocations / vec4 elements), iters, m, c }
//   1 storage read        x  [n] vec4<f32>  (copy_bandwidth only)
//   2 storage read_write  y  [n] vec4<f32>
//
// Dispatch: one invocation per element i, 1-D over a 2-D grid of 256-wide workgroups:
// i = gid.x + gid.y * num_workgroups.x * 256. peak_fma's loop runs p.iters times, which the
// wrapper keeps within LOOP_BUDGET (llvmpipe ends longer loops).

struct Params {
    n: u32,
    iters: u32,
    m: f32,
    c: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 256u;
}

@compute @workgroup_size(256)
fn peak_fma(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.n) {
        return;
    }
    let base = f32(i % 16u) + vec4<f32>(0.0, 0.25, 0.5, 0.75);
    let m = vec4<f32>(p.m);
    let c = vec4<f32>(p.c);
    var a0 = base;
    var a1 = base + 1.0;
    var a2 = base + 2.0;
    var a3 = base + 3.0;
    var a4 = base + 4.0;
    var a5 = base + 5.0;
    var a6 = base + 6.0;
    var a7 = base + 7.0;
    for (var r = 0u; r < p.iters; r++) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    y[i] = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

@compute @workgroup_size(256)
fn copy_bandwidth(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i >= p.n) {
        return;
    }
    y[i] = x[i];
}
