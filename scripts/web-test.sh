#!/usr/bin/env bash
# The browser test, as .ci/run runs it: installs what it needs when missing (Debian's
# chromium, the wasm32 target, wasm-bindgen-cli at Cargo.lock's version), builds web/
# (scripts/build-web.sh), then drives the page in headless Chromium with WebGPU on
# SwiftShader (scripts/web-test.mjs). Artefacts in target/web-test/: screenshot.png,
# chromium.log, console.log.
#
# Exit status: 0 passed, 1 failed, 3 could not run because a tool could not be installed
# (Debian's archive, rustup's dist server or crates.io out of reach). Both fail .ci/run, as
# the GPU tests fail there when no adapter exists (SHADERGRAD_REQUIRE_GPU=1).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
unavailable() {
    echo "web-test: FAILED, the page could not run: $1" >&2
    exit 3
}

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    echo "web-test: installing Debian's chromium"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } ||
        unavailable "Debian's chromium could not be installed"
fi
if ! command -v node >/dev/null; then
    echo "web-test: Node.js (20 or later) is needed: the driver speaks the DevTools protocol over its WebSocket" >&2
    exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown ||
        unavailable "rustup could not add the wasm32-unknown-unknown target"
fi
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null)" != "wasm-bindgen $version" ]; then
    # The CLI only (not its two other tools), unoptimised and without debug info: half the
    # compile time of a release install, and it runs for about a second either way.
    echo "web-test: installing wasm-bindgen-cli $version (wasm-bindgen only, a debug build)"
    CARGO_PROFILE_DEV_DEBUG=false cargo install --quiet --debug wasm-bindgen-cli \
        --version "$version" --bin wasm-bindgen ||
        unavailable "wasm-bindgen-cli $version could not be installed from crates.io"
fi
echo "web-test: tools ready after $((SECONDS - started)) s"

scripts/build-web.sh
echo "web-test: page built after $((SECONDS - started)) s"

# Node 20 has WebSocket behind a flag; 22 and later by default.
flag=()
node -e 'process.exit(typeof WebSocket === "undefined" ? 1 : 0)' || flag=(--experimental-websocket)
node "${flag[@]}" scripts/web-test.mjs
echo "web-test: done in $((SECONDS - started)) s"
