//! Embeds the git commit (SHADERGRAD_COMMIT) and the wgpu version from Cargo.lock
//! (SHADERGRAD_WGPU_VERSION) for `shadergrad bench`'s JSON. Without git, "unknown".
//! Sets `cfg(native)` on every target but wasm32 (the browser), see src/platform.rs.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(native)");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("wasm32") {
        println!("cargo:rustc-cfg=native");
    }
    if let Some(commit) = git(&["rev-parse", "HEAD"]) {
        println!("cargo:rustc-env=SHADERGRAD_COMMIT={commit}");
    }
    // Rebuild when HEAD moves (a worktree's HEAD lives in its own git dir).
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for path in watch {
        if let Some(p) = git(&["rev-parse", "--git-path", &path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=Cargo.lock");
    println!("cargo:rerun-if-changed=build.rs");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l == "name = \"wgpu\"" {
            if let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = ")) {
                println!(
                    "cargo:rustc-env=SHADERGRAD_WGPU_VERSION={}",
                    v.trim_matches('"')
                );
            }
            break;
        }
    }
}
