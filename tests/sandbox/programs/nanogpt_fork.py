"""A user's nanoGPT fork, adapted to DARWIN's contract as seed/README.md describes.

nanoGPT layout kept (GPTConfig dataclass, GPT with forward(idx, targets=None) returning
(logits, loss)); the changes: all positions' logits, darwin_io.get_batch instead of np.memmap,
safetensors + config.json + model.py outputs, build_model(config), no pickle/wandb/DDP.
"""
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

batch_size = 8
block_size = 32
n_layer = 1
n_head = 2
n_embd = 48
dropout = 0.1
learning_rate = 2e-3
weight_decay = 0.1
beta1, beta2 = 0.9, 0.95
grad_clip = 1.0


@dataclass
class GPTConfig:
    block_size: int = 32
    vocab_size: int = 65
    n_layer: int = 1
    n_head: int = 2
    n_embd: int = 48
    dropout: float = 0.0
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0,
                                           is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # adapted: every position
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def build_model(config):
    return GPT(GPTConfig(**config))


def main():
    import darwin_io

    b = darwin_io.budget()
    torch.manual_seed(b["seed"])
    config = GPTConfig(block_size=block_size, vocab_size=b["vocab_size"], n_layer=n_layer,
                       n_head=n_head, n_embd=n_embd, dropout=dropout)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(beta1, beta2),
                                  weight_decay=weight_decay)
    max_iters = b["tokens"] // (batch_size * block_size)
    for it in range(max_iters):
        batch = darwin_io.get_batch(batch_size, block_size)
        if batch is None:
            break
        x, y = torch.from_numpy(batch[:, :-1].copy()), torch.from_numpy(batch[:, 1:].copy())
        lr = learning_rate * 0.5 * (1 + math.cos(math.pi * it / max_iters))
        for g in optimizer.param_groups:
            g["lr"] = lr
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if it % 10 == 0:
            print(f"iter {it}: loss {loss.item():.4f}", flush=True)
    from safetensors.torch import save_model

    model.eval()
    save_model(model, os.path.join(b["out_dir"], "model.safetensors"))
    with open(os.path.join(b["out_dir"], "config.json"), "w") as f:
        json.dump(asdict(config), f)
    shutil.copyfile(__file__, os.path.join(b["out_dir"], "model.py"))


if __name__ == "__main__":
    main()
