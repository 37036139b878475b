"""The evaluation server: answers forward requests for one trained candidate.

Trusted code, but it runs INSIDE a fresh sandbox because it must import the candidate's model code.
It never computes a score: it only returns logits. The trusted scorer outside computes the loss,
checks shapes, finiteness, causality, batch independence and statelessness itself.

Protocol on stdin / stdout (little-endian); anything the candidate prints goes to stderr:
    server  -> "RDY " u32 n, n bytes JSON  |  "ERR " u32 n, n bytes message (then exit)
    client  -> "FWD " u32 B, u32 T, B*T u16 tokens
    server  -> "LOG " u32 B, u32 T, u32 V, B*T*V f32 logits  |  "ERR " u32 n, message
    client  -> "FLP " u32 T      server -> "FLP " u64 forward FLOPs, u64 forward+backward FLOPs
    client  -> "BYE "
"""

import json
import os
import struct
import sys
import traceback

MODEL_DIR = os.environ.get("DARWIN_MODEL_DIR", "/sandbox/model")

# Keep a private copy of the real stdout for the protocol, then point fd 1 at stderr so prints in
# the candidate's code cannot corrupt the channel.
_proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)
sys.stdout = sys.stderr
_proto_in = sys.stdin.buffer


def _send(tag, payload=b""):
    _proto_out.write(tag + payload)


def _send_error(stage, exc):
    text = f"{stage}: {type(exc).__name__}: {exc}"
    traceback.print_exc()
    data = text[-2000:].encode("utf-8", "replace")
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
    meta = json.dumps({"parameters": sum(p.numel() for p in model.parameters())}).encode()
    _send(b"RDY ", struct.pack("<I", len(meta)) + meta)
    while True:
        try:
            tag = _read_exact(4)
        except EOFError:
            return 0
        if tag == b"BYE ":
            return 0
        if tag == b"FWD ":
            b, t = struct.unpack("<II", _read_exact(8))
            import numpy as np

            tokens = np.frombuffer(_read_exact(b * t * 2), dtype="<u2").astype(np.int64)
            try:
                with torch.no_grad():
                    idx = torch.from_numpy(tokens.reshape(b, t)).to(device)
                    logits = _logits(model(idx))
                    arr = logits.detach().float().cpu().contiguous().numpy()
            except BaseException as exc:  # noqa: BLE001
                _send_error("forward", exc)
                continue
            shape = list(arr.shape) + [0, 0, 0]
            _send(b"LOG ", struct.pack("<III", *shape[:3]) + arr.astype("<f4").tobytes())
        elif tag == b"FLP ":
            (t,) = struct.unpack("<I", _read_exact(4))
            try:
                from torch.utils.flop_counter import FlopCounterMode

                idx = torch.zeros((1, t), dtype=torch.long, device=device)
                with FlopCounterMode(display=False) as fwd_counter:
                    with torch.no_grad():
                        _logits(model(idx))
                model.train()
                with FlopCounterMode(display=False) as all_counter:
                    _logits(model(idx)).float().sum().backward()
                model.eval()
                model.zero_grad(set_to_none=True)
                _send(b"FLP ", struct.pack("<QQ", fwd_counter.get_total_flops(), all_counter.get_total_flops()))
            except BaseException as exc:  # noqa: BLE001
                _send_error("flops", exc)
        else:
            return 2


if __name__ == "__main__":
    code = main()
    _proto_out.flush()
    os._exit(code)
