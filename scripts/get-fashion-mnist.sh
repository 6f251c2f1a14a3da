#!/usr/bin/env bash
# get-fashion-mnist.sh DIR: Fashion-MNIST (Zalando Research, MIT licence) in DIR as the four
# original files train-images-idx3-ubyte.gz, ... byte for byte, for `--data-dir DIR`.
#
# Source: Debian's package dataset-fashion-mnist (the upstream repository's data/fashion/
# files). Debian's build normalised each gzip header (dropped the file name, set the time
# stamp) but kept the compressed stream; this script puts back the original header (the
# file name, mtime 2017-08-31 10:50:06 or 10:50:27 UTC, XFL 0, OS 3, found by search) and
# checks each file against the MD5 upstream publishes, then writes SHA256SUMS.raw (of the
# decompressed files), which `--data-dir` verifies on every load.
set -euo pipefail
dir=${1:?usage: get-fashion-mnist.sh DIR}
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download dataset-fashion-mnist >/dev/null)
dpkg-deb -x "$work"/dataset-fashion-mnist_*.deb "$work/x"
python3 - "$work/x/usr/share/datasets/fashion-mnist" "$dir" <<'PY'
import hashlib, struct, sys
src, dst = sys.argv[1], sys.argv[2]
files = {  # name: (mtime of the original gzip header, published MD5 of the .gz)
    "train-images-idx3-ubyte": (1504176606, "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train-labels-idx1-ubyte": (1504176606, "25c81989df183df01b3e8a0aad5dffbe"),
    "t10k-images-idx3-ubyte": (1504176627, "bef4ecab320f06d8554ea6380940ec79"),
    "t10k-labels-idx1-ubyte": (1504176627, "bb300cfdad3c16e7a12a480ee83cd310"),
}
for name, (mtime, md5) in files.items():
    data = open(f"{src}/{name}.gz", "rb").read()
    if data[:4] != b"\x1f\x8b\x08\x00":
        sys.exit(f"{name}.gz: unexpected gzip header {data[:10].hex()}")
    header = b"\x1f\x8b\x08\x08" + struct.pack("<I", mtime) + b"\x00\x03" + name.encode() + b"\0"
    out = header + data[10:]
    got = hashlib.md5(out).hexdigest()
    if got != md5:
        sys.exit(f"{name}.gz: MD5 {got}, expected the published {md5}")
    open(f"{dst}/{name}.gz", "wb").write(out)
    print(f"{md5}  {name}.gz (the published MD5)")
PY
(cd "$dir" && for f in *-ubyte.gz; do
    echo "$(gzip -dc "$f" | sha256sum | cut -d' ' -f1)  ${f%.gz}"
done > SHA256SUMS.raw)
echo "Fashion-MNIST in $dir"
