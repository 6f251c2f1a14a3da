#!/usr/bin/env bash
# Build the web page in web/: the engine and web/src for wasm32 (wgpu's WebGPU backend),
# wasm-bindgen's JS glue in web/pkg/, and MNIST's four gzip IDX files in web/data/ (the
# page fetches them and uses the first 12,800 training and 2,000 test images).
# Needs: rustup target add wasm32-unknown-unknown, and wasm-bindgen-cli at the version of
# wasm-bindgen in Cargo.lock (the command is printed when it is missing). Serve with
# scripts/serve-web.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if ! have=$(wasm-bindgen --version 2>/dev/null) || [ "${have#wasm-bindgen }" != "$version" ]; then
    echo "build-web: wasm-bindgen $version is needed (found: ${have:-none}); install it with" >&2
    echo "  cargo install wasm-bindgen-cli --version $version" >&2
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown; then
    echo "build-web: the wasm32 target is missing; rustup target add wasm32-unknown-unknown" >&2
    exit 1
fi

profile=${WEB_PROFILE:-web}
cargo build --quiet --profile "$profile" --target wasm32-unknown-unknown -p shadergrad-web
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
    "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/$profile/shadergrad_web.wasm"
mkdir -p web/data
cp data/mnist/*-ubyte.gz web/data/
echo "build-web: web/ is ready ($(du -h web/pkg/shadergrad_web_bg.wasm | cut -f1) of wasm); serve it with scripts/serve-web.sh"
