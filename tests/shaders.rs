//! Portability proof, no GPU needed: every shader is parsed and validated by naga, each of
//! its entry points is specialised (override constants at their defaults) and translated to
//! SPIR-V (Vulkan), MSL (Metal), HLSL (DX12) and GLSL ES 3.10 (OpenGL), and the translated
//! sources keep each entry point.

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

#[test]
fn translates_to_msl() {
    for shader in Shader::ALL {
        for (name, module, info) in specialised(shader) {
            let (src, _) = msl::write_string(
                &module,
                &info,
                &msl::Options {
                    lang_version: (2, 1), // simd-group functions
                    ..Default::default()
                },
                &msl::PipelineOptions {
                    entry_point: Some((naga::ShaderStage::Compute, name.clone())),
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{} {name}: MSL: {e}", shader.file()));
            assert!(
                src.contains("kernel void") && src.contains(&name),
                "{} {name}: MSL lacks the kernel",
                shader.file()
            );
        }
    }
}

#[test]
fn translates_to_hlsl() {
    for shader in Shader::ALL {
        for (name, module, info) in specialised(shader) {
            let mut src = String::new();
            let options = hlsl::Options {
                shader_model: hlsl::ShaderModel::V6_0, // wave intrinsics
                ..Default::default()
            };
            let pipeline = hlsl::PipelineOptions {
                entry_point: Some((naga::ShaderStage::Compute, name.clone())),
            };
            hlsl::Writer::new(&mut src, &options, &pipeline)
                .write(&module, &info, None)
                .unwrap_or_else(|e| panic!("{} {name}: HLSL: {e}", shader.file()));
            assert!(
                src.contains("[numthreads(") && src.contains(&name),
                "{} {name}: HLSL lacks the kernel",
                shader.file()
            );
        }
    }
}

#[test]
fn translates_to_glsl() {
    for shader in Shader::ALL {
        for (name, module, info) in specialised(shader) {
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
            .unwrap_or_else(|e| panic!("{} {name}: GLSL: {e}", shader.file()));
            writer
                .write()
                .unwrap_or_else(|e| panic!("{} {name}: GLSL: {e}", shader.file()));
            assert!(
                src.contains("layout(local_size_x ="),
                "{} {name}: GLSL lacks its workgroup size",
                shader.file()
            );
        }
    }
}
