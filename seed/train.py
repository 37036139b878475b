"""Generation 0 of DARWIN's evolving training program: a character-level GPT.

This is a small, readable nanoGPT-style program. It trains a decoder-only transformer on
characters of tiny Shakespeare and leaves a trained model behind for DARWIN's scorer.

How it is run: DARWIN starts it as `python train.py` inside a sandbox, with the out dir as the
current directory and the budget described by DARWIN_* environment variables (see README.md).
All training data arrives through the trusted helper module `darwin_io`; the program never sees
the corpus, the validation data or the scorer.

What it leaves in the out dir (and nothing else):
    model.safetensors  the trained weights (fp32, cpu)
    config.json        the plain dict that build_model() turns back into the model
    model.py           a copy of this very file, so the scorer can import build_model()
    claims.json        what the program believes about its run (recorded, never trusted)

Importing this file must be side-effect free: the scorer imports the copy (model.py) in another
sandbox only to call build_model(), so all training lives under main().
"""

import contextlib
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# Model shapes per budget. Each block size equals the budget's eval context: the scorer feeds the
# model sequences exactly that long, so a shorter block could not be scored.
SHAPES = {
    "tiny": dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=8),
    "cpu": dict(n_layer=2, n_head=4, n_embd=128, block_size=64, batch_size=16),
    "paper": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64),
}

# Everything else is shared by all budgets: nanoGPT's shakespeare_char settings.
dropout = 0.2
learning_rate = 1e-3  # peak learning rate, reached at the end of warmup
min_lr = 1e-4  # cosine decay ends here, at the last iteration (learning_rate / 10)
max_warmup_iters = 100  # linear warmup length, capped at a tenth of the run for short runs
beta1, beta2 = 0.9, 0.99  # beta2 a bit lower than 0.999 because each iteration sees few tokens
weight_decay = 0.1  # applied to matrices and embeddings only, never to norm gains
grad_clip = 1.0  # clip the global gradient norm; 0 disables
log_points = 20  # roughly how many progress lines to print over a run


# -----------------------------------------------------------------------------
# The model


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg["n_embd"] % cfg["n_head"] == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg["n_head"]
        self.dropout = cfg["dropout"]
        # One matrix computes queries, keys and values for all heads at once.
        self.c_attn = nn.Linear(cfg["n_embd"], 3 * cfg["n_embd"], bias=False)
        self.c_proj = nn.Linear(cfg["n_embd"], cfg["n_embd"], bias=False)
        self.resid_dropout = nn.Dropout(cfg["dropout"])

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_size) so that heads attend independently.
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # put the heads back side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg["n_embd"], 4 * cfg["n_embd"], bias=False)
        self.c_proj = nn.Linear(4 * cfg["n_embd"], cfg["n_embd"], bias=False)
        self.dropout = nn.Dropout(cfg["dropout"])

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: the residual stream itself is never normalised."""

    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg["n_embd"], bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg["n_embd"], bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.block_size = cfg["block_size"]
        self.wte = nn.Embedding(cfg["vocab_size"], cfg["n_embd"])
        self.wpe = nn.Embedding(cfg["block_size"], cfg["n_embd"])
        self.drop = nn.Dropout(cfg["dropout"])
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg["n_layer"])])
        self.ln_f = nn.LayerNorm(cfg["n_embd"], bias=False)
        self.lm_head = nn.Linear(cfg["n_embd"], cfg["vocab_size"], bias=False)
        # Weight tying: reading a character in and writing it out share one matrix. This saves
        # parameters and tends to help small models.
        self.lm_head.weight = self.wte.weight

        self.apply(self._init_weights)
        # GPT-2's trick: shrink the projections that add into the residual stream, so the
        # stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg["n_layer"]))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx):
        """idx: LongTensor [B, T] with T <= block_size -> logits [B, T, vocab] at every position."""
        B, T = idx.shape
        assert T <= self.block_size, f"sequence length {T} exceeds block_size {self.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build_model(config: dict) -> nn.Module:
    """Build an untrained model from the plain dict saved as config.json (used by the scorer)."""
    return GPT(config)


# -----------------------------------------------------------------------------
# Training


def get_lr(it, max_iters, warmup_iters):
    """Linear warmup to learning_rate, then cosine decay to min_lr at max_iters."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    progress = (it - warmup_iters) / max(1, max_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return min_lr + coeff * (learning_rate - min_lr)


def make_optimizer(model, device):
    # Decay only tensors with 2+ dims (matmul weights, embeddings); LayerNorm gains stay free.
    # parameters() yields the tied wte/lm_head weight once, so it is not updated twice.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel is a free speed-up on GPU; on CPU the default implementation is used.
    fused = device == "cuda"
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2), fused=fused)


def main():
    import darwin_io  # imported here: the scorer imports this file without the data connection

    budget = darwin_io.budget()
    assert budget["name"] in SHAPES, f"unknown budget {budget['name']!r}; known: {list(SHAPES)}"
    shape = SHAPES[budget["name"]]
    block_size, batch_size = shape["block_size"], shape["batch_size"]
    assert block_size >= budget["eval_context"], (
        f"block_size {block_size} is shorter than the eval context {budget['eval_context']}: "
        "the scorer would feed the model sequences it cannot handle"
    )
    device = budget["device"]
    torch.manual_seed(budget["seed"])
    np.random.seed(budget["seed"])

    config = dict(
        vocab_size=budget["vocab_size"],
        block_size=block_size,
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
        dropout=dropout,
    )
    model = build_model(config).to(device)
    optimizer = make_optimizer(model, device)

    # On GPU, run matmuls in bf16 (weights and optimizer state stay fp32); on CPU, plain fp32.
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()

    tokens_per_iter = batch_size * block_size
    max_iters = budget["tokens"] // tokens_per_iter
    warmup_iters = min(max_warmup_iters, max_iters // 10)
    log_every = max(1, max_iters // log_points)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"budget {budget['name']}: {budget['tokens']} tokens = {max_iters} iterations of "
          f"{batch_size}x{block_size}; {n_params / 1e6:.3f}M parameters on {device}", flush=True)

    model.train()
    it, loss_value, t_start = 0, float("nan"), time.time()
    while it < max_iters:
        t0 = time.time()
        batch = darwin_io.get_batch(batch_size, block_size)
        if batch is None:  # the budget is spent (e.g. tokens did not divide evenly)
            break
        batch = torch.from_numpy(batch).to(device)
        x, y = batch[:, :-1], batch[:, 1:]

        lr = get_lr(it, max_iters, warmup_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        it += 1

        if it % log_every == 0 or it == max_iters:
            loss_value = loss.item()  # .item() waits for the GPU, so only do it when logging
            dt_ms = (time.time() - t0) * 1000
            print(f"iter {it}/{max_iters}: loss {loss_value:.4f}, lr {lr:.1e}, {dt_ms:.1f}ms",
                  flush=True)
    if it > 0:
        loss_value = loss.item()  # the very last iteration's loss, logged or not
    train_s = time.time() - t_start

    # Save in a form any scorer can load: eval mode, fp32 tensors on cpu.
    model = model.eval().to("cpu").float()
    out_dir = budget["out_dir"]
    from safetensors.torch import save_model  # handles the tied wte/lm_head weight

    save_model(model, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    here, there = os.path.abspath(__file__), os.path.abspath(os.path.join(out_dir, "model.py"))
    if here != there:
        shutil.copyfile(here, there)
    claims = dict(iterations=it, tokens_used=it * tokens_per_iter, n_params=n_params,
                  train_seconds=round(train_s, 2))
    if it > 0:  # NaN is not valid JSON, so leave the loss out if nothing was trained
        claims["final_train_loss"] = round(loss_value, 4)
    darwin_io.write_claims(**claims)
    print(f"done: {it} iterations in {train_s:.1f}s, final train loss {loss_value:.4f}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown (~1 s); every file above is already closed


if __name__ == "__main__":
    main()
