//! What differs between a native process and a browser tab, in one place.
//!
//! - **Waiting on the GPU.** Every wait has an async core (`Gpu::read_bytes_async`,
//!   `Gpu::settle`, `Gpu::open`, ...). Natively the blocking forms are thin wrappers:
//!   [`block_on`] drives the future with pollster, and the future itself calls
//!   `device.poll`, where wgpu runs the map callbacks. In the browser nothing may block
//!   (the page's own event loop delivers the callbacks), so [`block_on`] polls once and
//!   refuses a future that is still pending with an error naming the async form to call.
//! - **Clocks.** [`Instant`] is std's natively and `performance.now()` in the browser
//!   (std's panics on wasm32-unknown-unknown).
//! - **Spawning** (browser): `spawn` runs a future on the page's event loop without
//!   waiting for it: the browser's error-scope verdicts arrive this way (see `Gpu::scoped`).
//! - **Files and environment.** std::fs and std::env compile on wasm32 and report every
//!   file as unsupported and every variable as unset, which already means "no cache file,
//!   no override": the kernel-choice cache, the pipeline cache and the env settings fall back
//!   to their defaults. Kernel choice by timing is off in the browser (see
//!   `graph::tune::tuning_on`). Signals and progress bars belong to the CLI (native only).
//!
//! `cfg(native)` (set by build.rs) marks what only a native target has: adapter
//! enumeration, pollster, signal handling.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

pub use web_time::Instant;

use crate::Result;

/// Run `fut` to completion, blocking this thread (native).
#[cfg(native)]
pub fn block_on<T>(_what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    pollster::block_on(fut)
}

/// In the browser: the result if `fut` is ready at once, else an error naming `what`'s
/// async form (a tab's thread must never block on the GPU).
#[cfg(not(native))]
pub fn block_on<T>(what: &str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    match poll_once(std::pin::pin!(fut)) {
        Some(r) => r,
        None => Err(crate::Error::usage(
            what,
            format!("waits for the GPU, which a browser tab may not block on; await {what}_async instead"),
        )),
    }
}

/// `fut`'s output if it is ready now, without waiting.
pub fn poll_once<F: Future>(fut: Pin<&mut F>) -> Option<F::Output> {
    match fut.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

/// Run `fut` to completion on the page's event loop, without waiting for it (browser).
#[cfg(not(native))]
pub fn spawn(fut: impl Future<Output = ()> + 'static) {
    wasm_bindgen_futures::spawn_local(fut)
}
