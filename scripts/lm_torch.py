#!/usr/bin/env python3
"""shadergrad's language models in PyTorch, on CPU: the GPT (`train --model gpt` at its
defaults) trained for the README's comparison of held-out loss after the same number of
steps, and both models' checkpoints loaded with load_state_dict(strict=True).

Same model: nanoGPT's layout and names (token and learned position embeddings, pre-norm
blocks of causal self-attention and a GELU(tanh) MLP, LayerNorm eps 1e-5, untied lm_head
without bias, no dropout), the same initialisation (N(0, 0.02); the residual projections
N(0, 0.02 / sqrt(2 L)); zero biases), the same data (the shipped text, sorted character
vocabulary, last 10% held out), Adam (beta 0.9, 0.999, eps 1e-7 as shadergrad's) at --lr
with shadergrad's schedules (--lr-schedule cosine, --lr-min, --warmup-steps),
B windows of T + 1 characters drawn uniformly at random each step, and the held-out loss
over 8 fixed batches every 100 steps (the defaults here are `train --model gpt`'s). Only
the random streams differ (NumPy's, not Philox), so the curves agree in distribution, not
bit for bit.

    python3 scripts/lm_torch.py [--steps 1200] [--threads 2] [--text data/text/...gz]

With --check CHECKPOINT it trains nothing: it loads a shadergrad GPT or char-RNN checkpoint
into the module here (the optimizer.* moments left out) with load_state_dict(strict=True)
and prints the greedy continuation of --prompt, which `shadergrad generate --temperature 0`
should match; --reference OUT.json also writes the logits of the prompt (its last T
characters) and that continuation, which tests/lm_interop.rs compares with shadergrad's:

    python3 scripts/lm_torch.py --check gpt.safetensors --prompt "ROMEO:" --tokens 200
"""
import argparse
import gzip
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads, layers):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.c_attn = nn.Linear(d, 3 * d)
        self.attn.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Module()
        self.mlp.c_fc = nn.Linear(d, 4 * d)
        self.mlp.c_proj = nn.Linear(4 * d, d)
        for lin, std in [(self.attn.c_attn, 0.02), (self.mlp.c_fc, 0.02),
                         (self.attn.c_proj, 0.02 / math.sqrt(2 * layers)),
                         (self.mlp.c_proj, 0.02 / math.sqrt(2 * layers))]:
            nn.init.normal_(lin.weight, 0.0, std)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn.c_proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, context, d, heads, layers):
        super().__init__()
        self.transformer = nn.Module()
        self.transformer.wte = nn.Embedding(vocab, d)
        self.transformer.wpe = nn.Embedding(context, d)
        self.transformer.h = nn.ModuleList(Block(d, heads, layers) for _ in range(layers))
        self.transformer.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        for w in [self.transformer.wte.weight, self.transformer.wpe.weight, self.lm_head.weight]:
            nn.init.normal_(w, 0.0, 0.02)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(t))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


class CharRNN(nn.Module):
    """`train --model char-rnn`: embedding -> Elman RNN (tanh, h_0 = 0) -> linear."""

    def __init__(self, vocab, embed, hidden):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.RNN(embed, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, vocab)

    def forward(self, idx):
        return self.fc(self.rnn(self.embed(idx))[0])


def rate(a, t):
    """shadergrad's schedule (src/schedule.rs) for update t (0-based)."""
    base = a.lr
    if a.lr_schedule == "cosine":
        span = max(a.steps - a.warmup_steps, 1)
        p = min(1.0, max(t - a.warmup_steps, 0) / span)
        base = a.lr_min + (a.lr - a.lr_min) * (1 + math.cos(math.pi * p)) / 2
    return base * (t + 1) / a.warmup_steps if t < a.warmup_steps else base


def check(a):
    """Load a shadergrad checkpoint strictly and print its greedy continuation of a prompt."""
    import hashlib
    import json
    from safetensors import safe_open
    with safe_open(a.check, framework="pt") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("optimizer.")}
    cfg, vocab = json.loads(meta["lm"]), json.loads(meta["vocab"])
    if cfg["kind"] == "gpt":
        model = GPT(cfg["vocab"], cfg["context"], cfg["d_model"], cfg["heads"], cfg["layers"])
    else:
        model = CharRNN(cfg["vocab"], cfg["embed"], cfg["hidden"])
    model.load_state_dict(state, strict=True)
    model.eval()
    ids = [vocab.index(c) for c in a.prompt]
    out = []
    with torch.no_grad():
        logits = model(torch.tensor([ids[-cfg["context"]:]]))[0].double()
        for _ in range(a.tokens):
            ctx = torch.tensor([ids[-cfg["context"]:]])
            nxt = int(model(ctx)[0, -1].argmax())
            ids.append(nxt)
            out.append(vocab[nxt])
    print(a.prompt + "".join(out))
    if a.reference:
        ref = {"checkpoint": a.check.split("/")[-1],
               "checkpoint_sha256": hashlib.sha256(open(a.check, "rb").read()).hexdigest(),
               "torch": torch.__version__, "prompt": a.prompt, "logits": logits.tolist(),
               "greedy": "".join(out)}
        with open(a.reference, "w") as f:
            json.dump(ref, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", metavar="CHECKPOINT")
    ap.add_argument("--prompt", default="\n")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--reference", metavar="OUT.json")
    ap.add_argument("--text", default="data/text/shakespeare_tragedies.txt.gz")
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine")
    ap.add_argument("--lr-min", type=float, default=1e-4)
    ap.add_argument("--warmup-steps", type=int, default=100)
    a = ap.parse_args()
    if a.check:
        return check(a)
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    raw = gzip.open(a.text, "rb").read() if a.text.endswith(".gz") else open(a.text, "rb").read()
    text = raw.decode("utf-8")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in text], dtype=np.int64)
    n_val = int(len(ids) * 0.1)
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    rng = np.random.default_rng(a.seed)

    def batch(split, r):
        starts = r.integers(0, len(split) - a.context, a.batch)
        x = np.stack([split[s: s + a.context] for s in starts])
        y = np.stack([split[s + 1: s + a.context + 1] for s in starts])
        return torch.from_numpy(x), torch.from_numpy(y)

    model = GPT(len(vocab), a.context, a.d_model, a.heads, a.layers)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-7)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: rate(a, t) / a.lr)
    params = sum(p.numel() for p in model.parameters())
    print(f"torch {torch.__version__}, {params} parameters, vocab {len(vocab)}")
    val_batches = [batch(val, np.random.default_rng(1000 + i)) for i in range(8)]
    started, seen = time.time(), 0.0
    for step in range(1, a.steps + 1):
        x, y = batch(train, rng)
        loss = F.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        seen += loss.item()
        if step % a.eval_every == 0 or step == a.steps:
            with torch.no_grad():
                vl = np.mean([F.cross_entropy(model(x).reshape(-1, len(vocab)), y.reshape(-1)).item()
                              for x, y in val_batches])
            k = a.eval_every if step % a.eval_every == 0 else step % a.eval_every
            tl = seen / k
            print(f"step {step:5d}: loss {tl:.4f} ({tl / math.log(2):.3f} bpc), val_loss {vl:.4f} "
                  f"({vl / math.log(2):.3f} bpc), {time.time() - started:.0f} s")
            seen = 0.0


if __name__ == "__main__":
    main()
