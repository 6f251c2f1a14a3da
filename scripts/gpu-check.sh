#!/usr/bin/env bash
# gpu-check.sh OUTDIR [SHADERGRAD_BINARY]
#
# One command for a machine with a real GPU and no Rust toolchain: given a release build of
# shadergrad (the second argument, else `shadergrad` next to this script, else
# target/release/shadergrad of this checkout), it writes into OUTDIR:
#   env.txt        date, uname, nvidia-smi (where present)
#   vulkaninfo.txt `vulkaninfo --summary` (where present)
#   info.txt       `shadergrad info`: every adapter, the selected one and its kernel family
#   bench.txt      `shadergrad bench` (skipped with a message where the binary has none)
#   train.txt      `shadergrad train --epochs 3` and metrics.jsonl / metrics.svg
#   summary.txt    what ran, how long, and the exit status of each step
# Each step has its own time limit, so the whole check ends within ~5 minutes.
#
# Vulkan loader: where this checkout holds `.gl/*.deb` (libvulkan1, libegl1, ... downloaded
# for a machine without them), they are unpacked into / first (needs root), and the NVIDIA
# ICD under /usr/local/nvidia is named when the loader finds no driver of its own.
set -uo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
out=$1
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bin=${2:-}
if [ -z "$bin" ]; then
    for c in "$here/shadergrad" "$root/target/release/shadergrad"; do
        [ -x "$c" ] && bin=$c && break
    done
fi
if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "gpu-check: no shadergrad binary (give its path as the second argument, or put it next to this script)" >&2
    exit 2
fi
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
summary=$out/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

# step NAME LIMIT_SECONDS FILE COMMAND...: run with a time limit, output to FILE and the terminal.
step() {
    local name=$1 limit=$2 file=$3
    shift 3
    local t0=$SECONDS
    echo "=== $name: $*" | tee "$file"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$file"
    local rc=${PIPESTATUS[0]}
    note "$name: exit $rc after $((SECONDS - t0)) s (limit $limit s) -> $(basename "$file")"
    return "$rc"
}

# Vulkan loader carried as .deb packages (see the device notes), unpacked once.
if compgen -G "$root/.gl/*.deb" >/dev/null; then
    if [ -w / ]; then
        for f in "$root"/.gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
        note "unpacked $(ls "$root"/.gl/*.deb | wc -l) loader packages from .gl/"
    else
        note "found .gl/*.deb but / is not writable: loader packages NOT unpacked"
    fi
fi
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ] && ! ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json >/dev/null 2>&1; then
    export VK_DRIVER_FILES=$nv_icd
    export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    note "VK_DRIVER_FILES=$nv_icd"
fi

{
    date -u
    uname -a
    echo "binary: $bin"
    command -v nvidia-smi >/dev/null && nvidia-smi
} >"$out/env.txt" 2>&1

if command -v vulkaninfo >/dev/null; then
    step vulkaninfo 30 "$out/vulkaninfo.txt" vulkaninfo --summary
else
    note "vulkaninfo: not installed, skipped"
fi

step info 60 "$out/info.txt" "$bin" info
if grep -q "^selected: .*Cpu" "$out/info.txt"; then
    note "WARNING: the selected adapter is a CPU adapter, not a GPU: see info.txt and vulkaninfo.txt"
fi
grep -E "^selected:|kernels:" "$out/info.txt" >>"$summary"

if "$bin" bench --help >/dev/null 2>&1; then
    step bench 120 "$out/bench.txt" "$bin" bench
else
    note "bench: this binary has no 'bench' command, skipped"
fi

data=()
[ -d "$root/data/mnist" ] && data=(--data-dir "$root/data/mnist")
step train 150 "$out/train.txt" "$bin" train --epochs 3 "${data[@]}" --metrics-out "$out/metrics.jsonl"
grep -E "^adapter:|^Epoch|test_accuracy" "$out/train.txt" >>"$summary"
echo "gpu-check: everything is in $out"
