"""The evaluation server: answers forward requests for one trained candidate.

Our code, but it runs INSIDE a fresh sandbox, in the same interpreter as the candidate's model
code, so nothing it says is trusted: the scorer outside treats every frame as untrusted input and
checks the answers against a second, fresh process (see darwin/evaluation/scoring.py). It never
computes a score. It imports nothing of DARWIN (it is mounted alone into the sandbox).

Protocol on stdin / stdout (little-endian); anything the candidate prints goes to stderr, which
never leaves the scorer:
    server  -> "RDY " u32 n, n bytes JSON                 (content ignored)
             | "ERR " u32 n, n bytes JSON {stage, error, frames} (then exit)
    client  -> "FWD " u32 B, u32 T, B*T u16 tokens
    server  -> "LOG " u32 B, u32 T, u32 V, B*T*V f32 logits  |  "ERR " ...
    client  -> "PRT " u32 n, n bytes tensor name, u64 noise seed, f32 gain,
               u32 r, r u32 rows, u32 c, c u32 columns, u32 B, u32 T, B*T u16 tokens
    server  -> like FWD, with that tensor perturbed by gain x noise of its own scale (and
               restored afterwards); only in the given rows (first dimension) and columns (last
               dimension) when the lists are not empty: the scorer's secret subset
    client  -> "BYE "
An error frame names the stage, the exception's class and the (file, line) frames of the
traceback, never its message: a message could carry the tokens the model was shown.
"""

import builtins
import json
import os
import struct
import sys
import traceback

MODEL_DIR = os.environ.get("DARWIN_MODEL_DIR", "/sandbox/model")

# Keep a private copy of the real stdout for the protocol, then point fd 1 at stderr so prints in
# the candidate's code cannot corrupt the channel by accident.
_proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)
sys.stdout = sys.stderr
_proto_in = sys.stdin.buffer


def _send(tag, payload=b""):
    _proto_out.write(tag + payload)


def _send_error(stage, exc):
    cls = type(exc)
    name = cls.__name__ if getattr(builtins, cls.__name__, None) is cls else "Exception"
    frames = [[os.path.basename(f.filename), f.lineno or 0]
              for f in traceback.extract_tb(exc.__traceback__)][-8:]
    report = {"stage": stage, "error": name, "frames": frames}
    if os.environ.get("DARWIN_EVAL_MESSAGES") == "1":  # only a test's weakened scorer sets it
        report["message"] = str(exc)[:2000]
    data = json.dumps(report).encode()
    _send(b"ERR ", struct.pack("<I", len(data)) + data)


def _read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = _proto_in.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _load():
    import importlib.util

    import torch
    from safetensors.torch import load_model

    with open(os.path.join(MODEL_DIR, "config.json")) as f:
        config = json.load(f)
    spec = importlib.util.spec_from_file_location("candidate_model", os.path.join(MODEL_DIR, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model(config)
    return torch, module, model, load_model


def _logits(out):
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def _tokens(torch, device):
    import numpy as np

    b, t = struct.unpack("<II", _read_exact(8))
    tokens = np.frombuffer(_read_exact(b * t * 2), dtype="<u2").astype(np.int64)
    return torch.from_numpy(tokens.reshape(b, t)).to(device)


def _answer(torch, model, idx):
    try:
        with torch.no_grad():
            arr = _logits(model(idx)).detach().float().cpu().contiguous().numpy()
    except BaseException as exc:  # noqa: BLE001 - the candidate's failure, reported as data
        _send_error("forward", exc)
        return
    shape = list(arr.shape) + [0, 0, 0]
    _send(b"LOG ", struct.pack("<III", *shape[:3]) + arr.astype("<f4").tobytes())


# --- secret subsets (issue #31, FLOPs): the scorer picks which rows/columns move ------------
def _read_indices():
    (n,) = struct.unpack("<I", _read_exact(4))
    return list(struct.unpack(f"<{n}I", _read_exact(4 * n)))


def _subset(torch, noise, rows, cols):
    """``noise`` kept only in ``rows`` (first dimension) x ``cols`` (last); all where empty."""
    if noise.dim() < 2 or not (rows or cols):
        return noise
    keep_rows = torch.zeros(noise.shape[0], dtype=torch.bool)
    keep_rows[torch.tensor(rows, dtype=torch.long) if rows else slice(None)] = True
    keep_cols = torch.zeros(noise.shape[-1], dtype=torch.bool)
    keep_cols[torch.tensor(cols, dtype=torch.long) if cols else slice(None)] = True
    shape = [noise.shape[0]] + [1] * (noise.dim() - 1)
    return noise * (keep_rows.view(shape) & keep_cols)


# --- end secret subsets ---------------------------------------------------------------------


def _perturbed(torch, model, name, seed, gain, idx, rows=(), cols=()):
    """Logits with one saved tensor moved by ``gain`` x noise of its own scale, then put back."""
    state = model.state_dict()
    tensor = state.get(name)
    if tensor is None or not tensor.is_floating_point():
        _send_error("perturb", KeyError(name))
        return
    saved = tensor.detach().clone()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(tensor.shape, generator=gen, dtype=torch.float32)
    noise = _subset(torch, noise, rows, cols).to(tensor.device)  # secret subsets (FLOPs)
    # The scale of the finite entries only, in float64 (a -inf or finfo.min mask buffer would
    # make it infinite); non-finite entries stay as they are.
    finite = torch.isfinite(saved)
    magnitude = saved.double().abs()[finite]
    scale = gain * 0.5 * ((float(magnitude.mean()) if magnitude.numel() else 0.0) + 1e-2)
    with torch.no_grad():
        tensor.add_(torch.where(finite, noise.double() * scale, 0.0).to(tensor.dtype))
    try:
        _answer(torch, model, idx)
    finally:
        with torch.no_grad():
            tensor.copy_(saved)


def main():
    device = os.environ.get("DARWIN_DEVICE", "cpu")
    try:
        torch, _module, model, load_model = _load()
    except BaseException as exc:  # noqa: BLE001 - any failure is the candidate's, reported as data
        _send_error("import", exc)
        return 3
    try:
        load_model(model, os.path.join(MODEL_DIR, "model.safetensors"), strict=True)
        model = model.to(device).float().eval()
    except BaseException as exc:  # noqa: BLE001
        _send_error("weights", exc)
        return 3
    meta = json.dumps({"ready": True}).encode()
    _send(b"RDY ", struct.pack("<I", len(meta)) + meta)
    while True:
        try:
            tag = _read_exact(4)
        except EOFError:
            return 0
        if tag == b"BYE ":
            return 0
        if tag == b"FWD ":
            _answer(torch, model, _tokens(torch, device))
        elif tag == b"PRT ":
            (n,) = struct.unpack("<I", _read_exact(4))
            name = _read_exact(n).decode("utf-8")
            seed, gain = struct.unpack("<Qf", _read_exact(12))
            rows, cols = _read_indices(), _read_indices()  # secret subsets (FLOPs)
            _perturbed(torch, model, name, seed, gain, _tokens(torch, device), rows, cols)
        else:
            return 2


if __name__ == "__main__":
    code = main()
    _proto_out.flush()
    os._exit(code)
