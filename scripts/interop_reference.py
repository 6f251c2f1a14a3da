#!/usr/bin/env python3
"""Interoperability proof: a shadergrad checkpoint is a PyTorch state dict.

Loads a checkpoint written by `shadergrad train --model-file ... --save` into the
equivalent torch.nn module with load_state_dict(strict=True), runs an independent NumPy
forward pass with PyTorch's semantics (float64) on the first COUNT MNIST test images,
checks that torch and NumPy agree, and writes the reference that `cargo test --test
interop` compares shadergrad's own evaluation with (probabilities within tolerances,
accuracy exactly).

    pip install torch numpy safetensors
    python3 scripts/interop_reference.py                 # tests/data/interop/ defaults

The model comes from the checkpoint's `model_json` metadata (shadergrad's model-file
JSON), translated layer by layer:

    conv2d            nn.Conv2d (padding "valid": 0; "same": TensorFlow's, top/left
                      (K-1)//2 of the total, so an nn.ZeroPad2d before the conv when the
                      total is odd or the stride is above 1), then its activation
    batchnorm         nn.BatchNorm2d on images, nn.BatchNorm1d on vectors (eps 1e-5)
    maxpool2d         nn.MaxPool2d(pool, stride); avgpool2d nn.AvgPool2d(pool, stride)
    globalavgpool2d   nn.AdaptiveAvgPool2d(1) then nn.Flatten()
    flatten           nn.Flatten()
    dense             nn.Linear, then its activation
    dropout           nn.Dropout(rate) (the identity in eval mode)
    activations       ReLU, Sigmoid, Tanh, GELU(approximate="tanh"), LeakyReLU(0.01),
                      Softmax(dim=1) (the output)

Parameter names are the checkpoint's (conv1.weight, bn1.running_var,
bn2.num_batches_tracked, fc1.bias, ...). The file stores every tensor as F32, so
num_batches_tracked is converted to int64, PyTorch's dtype for it; the optimizer state
(optimizer.m.*, optimizer.v.*) is not part of the model and is left out.
"""

import argparse
import gzip
import hashlib
import json
import os
import sys

import numpy as np
from safetensors import safe_open

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(ROOT, "tests", "data", "interop")


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    nd = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * nd).reshape(dims)


def same_pads(size, kernel, stride):
    """TensorFlow's 'same': (before, after) padding of one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def layer_plan(spec):
    """The layers with their input shapes and PyTorch names, as shadergrad names them."""
    layers = spec["layers"]
    totals = {"conv": 0, "bn": 0}
    for l in layers:
        if l["type"] in ("conv2d", "batchnorm"):
            totals["conv" if l["type"] == "conv2d" else "bn"] += 1
    seen = {"conv": 0, "bn": 0, "fc": 0}

    def name(prefix):
        seen[prefix] += 1
        if prefix != "fc" and totals[prefix] == 1:
            return prefix
        return f"{prefix}{seen[prefix]}"

    shape = list(spec["input"])
    plan = []
    for l in layers:
        t = l["type"]
        entry = dict(l, shape_in=list(shape))
        if t == "conv2d":
            entry["name"] = name("conv")
            k, s = l["kernel"], l.get("stride", 1)
            if l.get("padding", "valid") == "same":
                shape = [l["filters"], -(-shape[1] // s), -(-shape[2] // s)]
            else:
                shape = [l["filters"], (shape[1] - k) // s + 1, (shape[2] - k) // s + 1]
        elif t == "batchnorm":
            entry["name"] = name("bn")
        elif t == "dense":
            entry["name"] = name("fc")
            shape = [l["units"]]
        elif t in ("maxpool2d", "avgpool2d"):
            p = l["pool"]
            s = l.get("stride", p)
            shape = [shape[0], (shape[1] - p) // s + 1, (shape[2] - p) // s + 1]
        elif t == "globalavgpool2d":
            shape = [shape[0]]
        elif t == "flatten":
            shape = [int(np.prod(shape))]
        plan.append(entry)
    return plan


# ---------------------------------------------------------------- torch


def torch_module(plan):
    import torch
    from torch import nn

    acts = {
        "linear": None,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "tanh": nn.Tanh,
        "gelu": lambda: nn.GELU(approximate="tanh"),
        "leaky_relu": lambda: nn.LeakyReLU(0.01),
        "softmax": lambda: nn.Softmax(dim=1),
    }

    class Net(nn.Module):
        def forward(self, x):
            for m in self.children():
                x = m(x)
            return x

    net = Net()
    for i, l in enumerate(plan):
        t, shape = l["type"], l["shape_in"]
        if t == "conv2d":
            k, s = l["kernel"], l.get("stride", 1)
            pad = 0
            if l.get("padding", "valid") == "same":
                (top, bottom), (left, right) = (
                    same_pads(shape[1], k, s),
                    same_pads(shape[2], k, s),
                )
                if (top, left) == (bottom, right):
                    pad = top
                else:
                    net.add_module(f"pad{i}", nn.ZeroPad2d((left, right, top, bottom)))
            net.add_module(l["name"], nn.Conv2d(shape[0], l["filters"], k, stride=s, padding=pad))
        elif t == "batchnorm":
            bn = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
            net.add_module(l["name"], bn(shape[0], eps=1e-5, momentum=0.1))
        elif t == "dense":
            net.add_module(l["name"], nn.Linear(shape[0], l["units"]))
        elif t == "maxpool2d":
            net.add_module(f"pool{i}", nn.MaxPool2d(l["pool"], l.get("stride", l["pool"])))
        elif t == "avgpool2d":
            net.add_module(f"pool{i}", nn.AvgPool2d(l["pool"], l.get("stride", l["pool"])))
        elif t == "globalavgpool2d":
            net.add_module(f"gap{i}", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
        elif t == "flatten":
            net.add_module(f"flatten{i}", nn.Flatten())
        elif t == "dropout":
            net.add_module(f"dropout{i}", nn.Dropout(l["rate"]))
        act = l.get("activation", "linear") if t in ("conv2d", "dense", "activation") else "linear"
        if acts[act] is not None:
            net.add_module(f"act{i}", acts[act]())
    return net


def torch_forward(plan, tensors, x):
    import torch

    net = torch_module(plan)
    state = {}
    for k, v in tensors.items():
        t = torch.from_numpy(v.copy())
        state[k] = t.to(torch.int64) if k.endswith("num_batches_tracked") else t
    net.load_state_dict(state, strict=True)  # every key, every shape
    net.eval()
    with torch.no_grad():
        return net(torch.from_numpy(x.astype(np.float32))).double().numpy()


# ---------------------------------------------------------------- NumPy, PyTorch semantics


def conv2d(x, w, b, stride, pads):
    (top, bottom), (left, right) = pads
    x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, c, h, wd = x.shape
    co, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, co, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def pool(x, p, s, reduce):
    n, c, h, w = x.shape
    oh, ow = (h - p) // s + 1, (w - p) // s + 1
    windows = np.stack(
        [x[:, :, i : i + s * oh : s, j : j + s * ow : s] for i in range(p) for j in range(p)]
    )
    return reduce(windows, axis=0)


def activate(x, a):
    if a == "relu":
        return np.maximum(x, 0)
    if a == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if a == "tanh":
        return np.tanh(x)
    if a == "gelu":  # approximate='tanh'
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    if a == "leaky_relu":
        return np.where(x >= 0, x, 0.01 * x)
    if a == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    assert a == "linear", a
    return x


def numpy_forward(plan, p, x):
    """Eval-mode forward pass in float64; returns (logits, probabilities)."""
    x = x.astype(np.float64)
    logits = None
    for l in plan:
        t, shape = l["type"], l["shape_in"]
        if t == "conv2d":
            n = l["name"]
            k, s = l["kernel"], l.get("stride", 1)
            pads = ((0, 0), (0, 0))
            if l.get("padding", "valid") == "same":
                pads = (same_pads(shape[1], k, s), same_pads(shape[2], k, s))
            x = conv2d(x, p[n + ".weight"], p[n + ".bias"], s, pads)
        elif t == "batchnorm":
            n = l["name"]
            view = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
            mean, var = p[n + ".running_mean"].reshape(view), p[n + ".running_var"].reshape(view)
            x = (x - mean) / np.sqrt(var + 1e-5) * p[n + ".weight"].reshape(view) + p[
                n + ".bias"
            ].reshape(view)
        elif t == "dense":
            n = l["name"]
            x = x @ p[n + ".weight"].T + p[n + ".bias"]
        elif t == "maxpool2d":
            x = pool(x, l["pool"], l.get("stride", l["pool"]), np.max)
        elif t == "avgpool2d":
            x = pool(x, l["pool"], l.get("stride", l["pool"]), np.mean)
        elif t == "globalavgpool2d":
            x = x.mean(axis=(2, 3))
        elif t == "flatten":
            x = x.reshape(x.shape[0], -1)
        # dropout: the identity in evaluation
        if t in ("conv2d", "dense", "activation"):
            a = l.get("activation", "linear")
            if a == "softmax":
                logits = x
            x = activate(x, a)
    return logits, x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=os.path.join(DEFAULT_DIR, "model.safetensors"))
    ap.add_argument("--mnist", default=os.path.join(ROOT, "data", "mnist"))
    ap.add_argument("--count", type=int, default=256, help="the first COUNT test images")
    ap.add_argument("--out", default=os.path.join(DEFAULT_DIR, "reference.json"))
    args = ap.parse_args()

    tensors, meta = {}, None
    with safe_open(args.checkpoint, framework="numpy") as f:
        meta = f.metadata()
        for k in f.keys():
            if not k.startswith("optimizer."):
                tensors[k] = f.get_tensor(k)
    spec = json.loads(meta["model_json"])
    plan = layer_plan(spec)
    params = {k: v.astype(np.float64) for k, v in tensors.items()}

    images = read_idx(os.path.join(args.mnist, "t10k-images-idx3-ubyte.gz"))[: args.count]
    labels = read_idx(os.path.join(args.mnist, "t10k-labels-idx1-ubyte.gz"))[: args.count]
    x = (images.astype(np.float64) / 255.0).reshape(args.count, *spec["input"])

    logits, probs = numpy_forward(plan, params, x)
    import torch

    probs_torch = torch_forward(plan, tensors, x)
    gap = float(np.abs(probs_torch - probs).max())
    print(f"torch (float32) vs NumPy (float64): max |dp| = {gap:.2e}")
    if gap > 1e-5:
        sys.exit(f"torch and the NumPy forward disagree by {gap}")
    pred = probs.argmax(axis=1)
    correct = int((pred == labels).sum())
    # No near ties: a prediction that rounding could flip would make the exact accuracy
    # comparison fragile.
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = float((top2[:, 1] - top2[:, 0]).min())
    print(f"accuracy {correct}/{args.count}; smallest top-1 margin {margin:.2e}")
    if margin < 1e-4:
        sys.exit("a near tie: choose another checkpoint or image count")
    with open(args.checkpoint, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    rows = lambda a: [[float(f"{v:.9g}") for v in r] for r in a]
    ref = {
        "checkpoint": os.path.relpath(args.checkpoint, ROOT),
        "checkpoint_sha256": sha,
        "images": f"the first {args.count} MNIST test images (data/mnist/t10k-*)",
        "count": args.count,
        "labels": [int(v) for v in labels],
        "correct": correct,
        "accuracy": correct / args.count,
        "logits": rows(logits),
        "probabilities": rows(probs),
        "torch_vs_numpy_max_abs_diff": gap,
        "made_with": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "script": "scripts/interop_reference.py",
        },
    }
    with open(args.out, "w") as f:
        json.dump(ref, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
