//! Portability proof, no GPU needed: every shader is parsed and validated by naga, each of
//! its entry points is specialised (override constants at their defaults) and translated to
//! SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES 3.10 (OpenGL). Each translated
//! source must keep its entry point, its workgroup size (HLSL `[numthreads]`, GLSL
//! `local_size_*`, MSL `max_total_threads_per_threadgroup`) and exactly the bindings the WGSL
//! entry point uses, each as the right kind of resource: the uniform as a constant buffer,
//! read storage as a read-only buffer, read_write storage as a writable one.

use std::collections::BTreeSet;

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use shadergrad::kernels::Shader;

/// Subgroup kernels need the subgroup capability; every other shader must validate without.
fn capabilities(shader: Shader) -> Capabilities {
    if shader.uses_subgroups() {
        Capabilities::SUBGROUP
    } else {
        Capabilities::empty()
    }
}

fn parse(shader: Shader) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(shader.source())
        .unwrap_or_else(|e| panic!("{}: {}", shader.file(), e.emit_to_string(shader.source())));
    let info = Validator::new(ValidationFlags::all(), capabilities(shader))
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {}", shader.file(), e.emit_to_string(shader.source())));
    (module, info)
}

/// Each entry point of the shader, with overrides resolved as a pipeline would.
fn specialised(shader: Shader) -> Vec<(String, naga::Module, naga::valid::ModuleInfo)> {
    let (module, info) = parse(shader);
    let names: Vec<String> = module.entry_points.iter().map(|e| e.name.clone()).collect();
    let mut listed: Vec<&str> = shader.entry_points().to_vec();
    listed.sort();
    let mut found: Vec<&str> = names.iter().map(String::as_str).collect();
    found.sort();
    assert_eq!(
        found,
        listed,
        "{}: entry points in the file vs Shader::entry_points",
        shader.file()
    );
    names
        .into_iter()
        .map(|name| {
            let (m, i) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((naga::ShaderStage::Compute, &name)),
                &Default::default(),
            )
            .unwrap_or_else(|e| panic!("{} {name}: overrides: {e}", shader.file()));
            (name, m.into_owned(), i.into_owned())
        })
        .collect()
}

#[test]
fn every_shader_validates() {
    for shader in Shader::ALL {
        let (module, _) = parse(shader);
        assert!(!module.entry_points.is_empty(), "{}", shader.file());
        for ep in &module.entry_points {
            assert_eq!(
                ep.stage,
                naga::ShaderStage::Compute,
                "{} {}",
                shader.file(),
                ep.name
            );
        }
    }
}

#[test]
fn every_shader_opens_with_a_header_comment() {
    for shader in Shader::ALL {
        let first = shader.source().lines().next().unwrap_or("");
        let name = shader.file().trim_start_matches("shaders/");
        assert!(
            first.starts_with(&format!("// {name}")),
            "{} must open with '// {name}: ...'",
            shader.file()
        );
        for entry in shader.entry_points() {
            let header: String = shader
                .source()
                .lines()
                .take_while(|l| l.starts_with("//"))
                .collect();
            assert!(
                header.contains(entry),
                "{}: header comment does not document {entry}",
                shader.file()
            );
        }
    }
}

#[test]
fn translates_to_spirv() {
    for shader in Shader::ALL {
        for (name, module, info) in specialised(shader) {
            let words = spv::write_vec(
                &module,
                &info,
                &spv::Options::default(),
                Some(&spv::PipelineOptions {
                    shader_stage: naga::ShaderStage::Compute,
                    entry_point: name.clone(),
                }),
            )
            .unwrap_or_else(|e| panic!("{} {name}: SPIR-V: {e}", shader.file()));
            assert_eq!(words[0], 0x0723_0203, "SPIR-V magic");
        }
    }
}

/// How a WGSL entry point uses one binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Uniform,
    Read,
    ReadWrite,
}

/// (binding, kind) of every resource that entry point `name` uses, as the WGSL declares it.
fn used_bindings(
    shader: Shader,
    name: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
) -> Vec<(u32, Kind)> {
    let ep = module
        .entry_points
        .iter()
        .position(|e| e.name == name)
        .unwrap_or_else(|| panic!("{} {name}: entry point missing", shader.file()));
    let uses = info.get_entry_point(ep);
    let mut out = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(rb) = var.binding else { continue };
        if uses[handle].is_empty() {
            continue;
        }
        assert_eq!(
            rb.group,
            0,
            "{} {name}: every binding is in group 0",
            shader.file()
        );
        let kind = match var.space {
            naga::AddressSpace::Uniform => Kind::Uniform,
            naga::AddressSpace::Storage { access }
                if access.contains(naga::StorageAccess::STORE) =>
            {
                Kind::ReadWrite
            }
            naga::AddressSpace::Storage { .. } => Kind::Read,
            other => panic!(
                "{} {name}: unexpected resource space {other:?}",
                shader.file()
            ),
        };
        out.push((rb.binding, kind));
    }
    out.sort();
    assert!(
        out.first().map(|b| b.1) == Some(Kind::Uniform),
        "{} {name}: binding 0 must be the uniform Params, got {out:?}",
        shader.file()
    );
    out
}

/// Entry point `name` writes the buffer at `binding`.
fn writes(module: &naga::Module, info: &naga::valid::ModuleInfo, name: &str, binding: u32) -> bool {
    let ep = module
        .entry_points
        .iter()
        .position(|e| e.name == name)
        .unwrap();
    module.global_variables.iter().any(|(h, v)| {
        v.binding.as_ref().map(|rb| rb.binding) == Some(binding)
            && info.get_entry_point(ep)[h].contains(naga::valid::GlobalUse::WRITE)
    })
}

/// The workgroup size of entry point `name`, overrides resolved.
fn workgroup_size(module: &naga::Module, name: &str) -> [u32; 3] {
    let ep = module.entry_points.iter().find(|e| e.name == name).unwrap();
    assert!(
        ep.workgroup_size.iter().all(|&n| n > 0),
        "{name}: workgroup size {:?} unresolved",
        ep.workgroup_size
    );
    ep.workgroup_size
}

/// The entry point reads `@builtin(num_workgroups)`.
fn reads_num_workgroups(module: &naga::Module, name: &str) -> bool {
    let ep = module.entry_points.iter().find(|e| e.name == name).unwrap();
    ep.function
        .arguments
        .iter()
        .any(|a| a.binding == Some(naga::Binding::BuiltIn(naga::BuiltIn::NumWorkGroups)))
}

/// The one entry point a backend wrote for `name`: naga's namer may append `_` (to names
/// ending in a digit, or clashing with a reserved word); wgpu reads the real name back from
/// the same reflection data.
fn translated_name<E: std::fmt::Debug>(
    what: &str,
    name: &str,
    names: &[Result<String, E>],
) -> String {
    let ok: Vec<&String> = names.iter().filter_map(|n| n.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1, "{what}: entry point names {names:?}");
    let real = ok[0].clone();
    assert!(
        real == name || real == format!("{name}_"),
        "{what}: entry point written as {real}"
    );
    real
}

/// Every `open N close` (N a number) in `src`, e.g. `[[buffer(` 3 `)]]`.
fn numbers_between(src: &str, open: &str, close: char) -> Vec<u32> {
    src.match_indices(open)
        .filter_map(|(at, _)| {
            let rest = &src[at + open.len()..];
            let end = rest.find(close)?;
            rest[..end].trim().parse().ok()
        })
        .collect()
}

/// Compare the bindings a translated source declares with the ones the WGSL uses.
fn assert_same_bindings(what: &str, src: &str, found: BTreeSet<(u32, Kind)>, want: &[(u32, Kind)]) {
    let want: BTreeSet<(u32, Kind)> = want.iter().copied().collect();
    assert_eq!(
        found, want,
        "{what}: bindings in the translated source vs the WGSL's (binding, kind)\n{src}"
    );
}

fn binding(b: u32) -> naga::ResourceBinding {
    naga::ResourceBinding {
        group: 0,
        binding: b,
    }
}

/// Slot of the buffer-sizes buffer Metal needs for runtime-sized arrays.
const MSL_SIZES_SLOT: u8 = 30;

#[test]
fn translates_to_msl() {
    for shader in Shader::ALL {
        for (name, module, info) in specialised(shader) {
            let what = format!("{} {name}: MSL", shader.file());
            let used = used_bindings(shader, &name, &module, &info);
            // Binding N -> [[buffer(N)]], and no fallback for a binding missing from the map.
            let resources = used
                .iter()
                .map(|&(b, kind)| {
                    let target = msl::BindTarget {
                        buffer: Some(b as u8),
                        mutable: kind == Kind::ReadWrite,
                        ..Default::default()
                    };
                    (binding(b), target)
                })
                .collect();
            let resources = msl::EntryPointResources {
                resources,
                sizes_buffer: Some(MSL_SIZES_SLOT),
                ..Default::default()
            };
            let options = msl::Options {
                lang_version: (2, 1), // simd-group functions
                per_entry_point_map: [(name.clone(), resources)].into_iter().collect(),
                fake_missing_bindings: false,
                ..Default::default()
            };
            let (src, translation) = msl::write_string(
                &module,
                &info,
                &options,
                &msl::PipelineOptions {
                    entry_point: Some((naga::ShaderStage::Compute, name.clone())),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            let real = translated_name(&what, &name, &translation.entry_point_names);
            // Metal takes the threadgroup size at dispatch (wgpu reads it from naga's
            // module); naga also caps the kernel at that many threads.
            let [x, y, z] = workgroup_size(&module, &name);
            let kernel = format!(
                "[[max_total_threads_per_threadgroup({})]] kernel void {real}(",
                x * y * z
            );
            assert!(src.contains(&kernel), "{what}: lacks `{kernel}`\n{src}");
            // Every binding is a buffer argument at its index: `constant` (the uniform),
            // `device T const&` (read-only storage) or `device T&` (read_write).
            let mut found = BTreeSet::new();
            for line in src.lines() {
                for slot in numbers_between(line, "[[buffer(", ')') {
                    if slot == MSL_SIZES_SLOT as u32 {
                        continue;
                    }
                    let kind = if line.contains("constant ") && !line.contains("device ") {
                        Kind::Uniform
                    } else if line.contains("device ") && line.contains(" const& ") {
                        Kind::Read
                    } else if line.contains("device ") {
                        Kind::ReadWrite
                    } else {
                        panic!("{what}: unexpected buffer argument {line}")
                    };
                    found.insert((slot, kind));
                }
            }
            // Metal marks a read_write buffer this entry point only reads `const`.
            let want: Vec<(u32, Kind)> = used
                .iter()
                .map(|&(b, kind)| match kind {
                    Kind::ReadWrite if !writes(&module, &info, &name, b) => (b, Kind::Read),
                    _ => (b, kind),
                })
                .collect();
            assert_same_bindings(&what, &src, found, &want);
        }
    }
}

#[test]
fn translates_to_hlsl() {
    for shader in Shader::ALL {
        for (name, module, info) in specialised(shader) {
            let what = format!("{} {name}: HLSL", shader.file());
            let used = used_bindings(shader, &name, &module, &info);
            // Binding N -> register N of space 0 (b: constant buffer, t: read-only
            // resource, u: unordered access), and no fallback for a missing binding. Like
            // wgpu, give naga the special constants buffer (here register b0 of space 1),
            // through which HLSL gets num_workgroups.
            let target = |space: u8, register: u32| hlsl::BindTarget {
                space,
                register,
                binding_array_size: None,
                dynamic_storage_buffer_offsets_index: None,
                restrict_indexing: false,
            };
            let options = hlsl::Options {
                shader_model: hlsl::ShaderModel::V6_0, // wave intrinsics
                binding_map: used
                    .iter()
                    .map(|&(b, _)| (binding(b), target(0, b)))
                    .collect(),
                fake_missing_bindings: false,
                special_constants_binding: Some(target(1, 0)),
                ..Default::default()
            };
            let pipeline = hlsl::PipelineOptions {
                entry_point: Some((naga::ShaderStage::Compute, name.clone())),
            };
            let mut src = String::new();
            let reflection = hlsl::Writer::new(&mut src, &options, &pipeline)
                .write(&module, &info, None)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let real = translated_name(&what, &name, &reflection.entry_point_names);
            let [x, y, z] = workgroup_size(&module, &name);
            let numthreads = format!("[numthreads({x}, {y}, {z})]");
            assert!(
                src.contains(&format!("{numthreads}\nvoid {real}(")),
                "{what}: lacks `{numthreads}` on `void {real}(`\n{src}"
            );
            if reads_num_workgroups(&module, &name) {
                assert!(
                    src.contains("uint3(_NagaConstants."),
                    "{what}: num_workgroups must come from the special constants\n{src}"
                );
            }
            // Space 0 holds exactly the WGSL's bindings; the special constants are in space 1.
            let special = "register(b0, space1)";
            assert_eq!(src.matches(special).count(), 1, "{what}: {special}\n{src}");
            let space0 = src.replace(special, "");
            let mut found = BTreeSet::new();
            for (prefix, kind) in [
                ("register(b", Kind::Uniform),
                ("register(t", Kind::Read),
                ("register(u", Kind::ReadWrite),
            ] {
                for n in numbers_between(&space0, prefix, ')') {
                    found.insert((n, kind));
                }
            }
            assert_eq!(
                space0.matches("register(").count(),
                used.len(),
                "{what}: one register per binding\n{src}"
            );
            assert_same_bindings(&what, &src, found, &used);
        }
    }
}

#[test]
fn translates_to_glsl() {
    for shader in Shader::ALL {
        for (name, module, info) in specialised(shader) {
            let what = format!("{} {name}: GLSL", shader.file());
            let used = used_bindings(shader, &name, &module, &info);
            let mut src = String::new();
            // GLES 3.1 as wgpu's GL backend; subgroup kernels need desktop GL 4.3
            // (GL_KHR_shader_subgroup), and the engine does not pick them without subgroups.
            let version = if shader.uses_subgroups() {
                glsl::Version::Desktop(430)
            } else {
                glsl::Version::Embedded {
                    version: 310,
                    is_webgl: false,
                }
            };
            let options = glsl::Options {
                version,
                binding_map: used.iter().map(|&(b, _)| (binding(b), b as u8)).collect(),
                ..Default::default()
            };
            let pipeline = glsl::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: name.clone(),
                multiview: None,
            };
            let mut writer = glsl::Writer::new(
                &mut src,
                &module,
                &info,
                &options,
                &pipeline,
                Default::default(),
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
            writer.write().unwrap_or_else(|e| panic!("{what}: {e}"));
            // GLSL names every entry point `main`.
            assert!(src.contains("void main()"), "{what}: lacks main\n{src}");
            let [x, y, z] = workgroup_size(&module, &name);
            let local =
                format!("layout(local_size_x = {x}, local_size_y = {y}, local_size_z = {z}) in;");
            assert!(src.contains(&local), "{what}: lacks `{local}`\n{src}");
            let mut found = BTreeSet::new();
            for line in src.lines() {
                for n in numbers_between(line, "binding = ", ')') {
                    let kind = if line.contains(" uniform ") {
                        Kind::Uniform
                    } else if line.contains(" readonly buffer ") {
                        Kind::Read
                    } else {
                        Kind::ReadWrite
                    };
                    found.insert((n, kind));
                }
            }
            assert_same_bindings(&what, &src, found, &used);
        }
    }
}
