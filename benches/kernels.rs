//! `cargo bench --bench kernels [-- quick] [-- FILTER]`: a thin wrapper over
//! `shadergrad bench` (src/bench/), the same suite, checks and timing. The JSON goes to
//! target/bench/kernels.json. Prefer the binary: `shadergrad bench --help`.

use std::process::ExitCode;

use shadergrad::bench::{run, startup, Options};
use shadergrad::gpu::Gpu;

fn main() -> ExitCode {
    shadergrad::gpu::private_runtime_dir();
    // The cold-start row launches this executable again as its child.
    if let Some(code) = startup::child_main() {
        return ExitCode::from(code);
    }
    // cargo passes --bench; any other word is a filter, "quick" asks for --quick.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let opts = Options {
        quick: args.iter().any(|a| a == "quick"),
        filter: args.into_iter().find(|a| a != "quick"),
    };
    let result = Gpu::new().and_then(|gpu| run(&gpu, &opts));
    match result {
        Ok(report) => {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
            let path = dir.join("kernels.json");
            let _ = std::fs::create_dir_all(&dir);
            match report.write(&path) {
                Ok(()) => println!("\nwrote {}", path.display()),
                Err(e) => eprintln!("error: {e}"),
            }
            let failed = report.rows.iter().any(|r| r.check.starts_with("FAIL"));
            ExitCode::from(failed as u8)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
