"""Strict collection of a training run's output folder, and a safetensors header reader.

The folder was written by untrusted code, so nothing in it is followed or unpickled: only regular
files with expected names and sane sizes are copied (no symlinks, no hard links), and the weights
file is checked against the safetensors format before anything loads it.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path

from darwin.evaluation.failures import Failure, Rejected

OUTPUT_LIMITS = {  # name -> max bytes
    "model.py": 1 << 20,
    "config.json": 1 << 16,
    "model.safetensors": 2 << 30,
    "claims.json": 1 << 16,
}
REQUIRED_OUTPUTS = ("model.py", "config.json", "model.safetensors")

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


def collect_outputs(out_dir: Path, dest: Path) -> dict[str, Path]:
    """Copy the allowed files of ``out_dir`` into ``dest`` (a fresh folder of ours)."""
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o755)
    found: dict[str, Path] = {}
    try:
        entries = list(os.scandir(out_dir))
    except OSError as e:
        raise Rejected(Failure.missing_output, f"output folder unreadable: {e}") from None
    for entry in entries:
        name = entry.name
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise Rejected(Failure.bad_output, f"{name!r} is a symlink; write regular files only")
        if name not in OUTPUT_LIMITS:
            raise Rejected(
                Failure.bad_output,
                f"unexpected {name!r} in the output folder; allowed: {', '.join(OUTPUT_LIMITS)}",
            )
        if not stat.S_ISREG(st.st_mode):
            raise Rejected(Failure.bad_output, f"{name!r} is not a regular file")
        if st.st_nlink != 1:
            raise Rejected(Failure.bad_output, f"{name!r} is a hard link")
        if st.st_size > OUTPUT_LIMITS[name]:
            raise Rejected(
                Failure.bad_output, f"{name!r} is {st.st_size} bytes, over {OUTPUT_LIMITS[name]}"
            )
        target = dest / name
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
            copied = 0
            while chunk := src.read(1 << 20):
                copied += len(chunk)
                if copied > OUTPUT_LIMITS[name]:  # grew while we read it
                    raise Rejected(Failure.bad_output, f"{name!r} is over its size limit")
                dst.write(chunk)
        target.chmod(0o644)
        found[name] = target
    missing = [n for n in REQUIRED_OUTPUTS if n not in found]
    if missing:
        raise Rejected(
            Failure.missing_output,
            f"the program left no {', '.join(missing)} (see seed/README.md for the contract)",
        )
    return found


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Parse and validate a safetensors file's header without loading any tensor.

    Returns ``{name: (dtype, shape)}``. Anything that is not a well-formed safetensors file (a
    pickle, a zip from torch.save, truncated data, overlapping tensors) is a bad_weights failure.
    """
    try:
        return _read_header(path)
    except Rejected:
        raise
    except Exception:  # noqa: BLE001 - deep nesting, overflowing numbers, odd types: all hostile
        raise Rejected(Failure.bad_weights, "model.safetensors has a malformed header") from None


def _read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise Rejected(Failure.bad_weights, "model.safetensors is shorter than a header")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > min(size - 8, 100 << 20):
            raise Rejected(
                Failure.bad_weights,
                "model.safetensors is not a safetensors file (torch.save/pickle?); "
                "save with safetensors.torch.save_model",
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError:
        raise Rejected(Failure.bad_weights, "model.safetensors header is not JSON") from None
    if not isinstance(header, dict):
        raise Rejected(Failure.bad_weights, "model.safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    data_size = size - 8 - n
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for name, info in header.items():
        try:
            dtype = info["dtype"]
            shape = tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise Rejected(Failure.bad_weights, f"tensor {name!r} has a malformed entry") from None
        if dtype not in DTYPE_BYTES or any(d < 0 for d in shape):
            raise Rejected(Failure.bad_weights, f"tensor {name!r} has dtype/shape {dtype}{shape}")
        if end - start != math.prod(shape) * DTYPE_BYTES[dtype] or start < 0 or end > data_size:
            raise Rejected(Failure.bad_weights, f"tensor {name!r} has inconsistent offsets")
        spans.append((start, end))
        tensors[name] = (dtype, shape)
    spans.sort()
    for (_, prev_end), (start, _) in zip(spans, spans[1:]):
        if start < prev_end:
            raise Rejected(Failure.bad_weights, "tensors overlap in model.safetensors")
    return tensors
