#!/usr/bin/env bash
# Serve the page built by scripts/build-web.sh at http://localhost:${PORT:-8000}/ (any
# static server will do; WebGPU needs localhost or https).
set -euo pipefail
cd "$(dirname "$0")/../web"
exec python3 -m http.server --bind 127.0.0.1 "${PORT:-8000}"
