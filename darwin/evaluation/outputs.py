"""Strict collection of a training run's output folder, a safetensors header reader and a claims
reader.

The folder was written by untrusted code, so nothing in it is followed or unpickled: only regular
files with expected names and sane sizes are copied (no symlinks, no hard links), the weights
file is checked against the safetensors format before anything loads it, and every value read
from it is validated before use (finite floats, bounded integers, printable names that encode as
UTF-8): what fails is the candidate's typed failure, never an exception in trusted code.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
from pathlib import Path

from darwin.evaluation.failures import Failure, Rejected

OUTPUT_LIMITS = {  # name -> max bytes (model.safetensors: the budget's max_weights_mb)
    "model.py": 1 << 20,
    "config.json": 1 << 16,
    "model.safetensors": 2 << 30,
    "claims.json": 1 << 16,
}
# The header is parsed here, in the orchestrator: 16 MB of JSON is ~100k tensors (an honest
# header is kilobytes) and at most a few hundred MB of Python objects. (safetensors allows 100 MB.)
MAX_HEADER = 16 << 20
MAX_NAME = 512  # characters of a tensor name (torch's are dotted paths, far shorter)
MAX_DIM = 1 << 40  # any one dimension of a tensor
MAX_INT = 1 << 53  # claims: integers a float holds exactly (larger ones overflow arithmetic)
MAX_CLAIMS, MAX_CLAIM_KEY, MAX_CLAIM_TEXT = 32, 64, 256
REQUIRED_OUTPUTS = ("model.py", "config.json", "model.safetensors")

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


def printable(text: str) -> bool:
    """Text safe to keep and print: encodes as UTF-8 (no lone surrogates) and holds no control
    characters (no terminal escapes, no line breaks)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return text.isprintable()


def collect_outputs(out_dir: Path, dest: Path, weights_limit: int | None = None
                    ) -> dict[str, Path]:
    """Copy the allowed files of ``out_dir`` into ``dest`` (a fresh folder of ours);
    ``weights_limit`` (bytes) caps model.safetensors below the format's own 2 GiB."""
    limits = dict(OUTPUT_LIMITS)
    if weights_limit is not None:
        limits["model.safetensors"] = min(limits["model.safetensors"], weights_limit)
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
            raise Rejected(Failure.bad_output,
                           f"{ascii(name)} is a symlink; write regular files only")
        if name not in limits:
            raise Rejected(
                Failure.bad_output,
                f"unexpected {ascii(name)} in the output folder; allowed: {', '.join(limits)}",
            )
        if not stat.S_ISREG(st.st_mode):
            raise Rejected(Failure.bad_output, f"{name!r} is not a regular file")
        if st.st_nlink != 1:
            raise Rejected(Failure.bad_output, f"{name!r} is a hard link")
        if st.st_size > limits[name]:
            raise Rejected(
                Failure.bad_output, f"{name!r} is {st.st_size} bytes, over {limits[name]} (this "
                "budget's limit)")
        target = dest / name
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
            copied = 0
            while chunk := src.read(1 << 20):
                copied += len(chunk)
                if copied > limits[name]:  # grew while we read it
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
        if n == 0 or n > min(size - 8, MAX_HEADER):
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
        # The name is sent to the evaluation process and printed in flags: it must encode and
        # print as itself (a lone surrogate, a terminal escape or a line break does neither).
        if not (0 < len(name) <= MAX_NAME and printable(name)):
            raise Rejected(Failure.bad_weights, f"a tensor name is not printable UTF-8 text of at "
                                                f"most {MAX_NAME} characters: {ascii(name)[:80]}")
        try:
            dtype = info["dtype"]
            shape = tuple(info["shape"])
            start, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise Rejected(Failure.bad_weights, f"tensor {name!r} has a malformed entry") from None
        # Whole numbers only (int("3") or int(2.5) would pass a string or a float), bounded.
        if not all(_whole(d, MAX_DIM) for d in shape) or not all(
                _whole(x, 1 << 62) for x in (start, end)):
            raise Rejected(Failure.bad_weights, f"tensor {name!r} has a malformed entry")
        if dtype not in DTYPE_BYTES:
            raise Rejected(Failure.bad_weights, f"tensor {name!r} has dtype {ascii(dtype)[:40]}")
        if end - start != math.prod(shape) * DTYPE_BYTES[dtype] or start < 0 or end > data_size:
            raise Rejected(Failure.bad_weights, f"tensor {name!r} has inconsistent offsets")
        spans.append((start, end))
        tensors[name] = (dtype, shape)
    spans.sort()
    for (_, prev_end), (start, _) in zip(spans, spans[1:]):
        if start < prev_end:
            raise Rejected(Failure.bad_weights, "tensors overlap in model.safetensors")
    return tensors


def _whole(value: object, limit: int) -> bool:
    return type(value) is int and 0 <= value < limit


def read_claims(path: Path) -> dict:
    """What the program said about itself in claims.json (kept and compared, never used as a
    score): ``{}`` when there is none. Only what write_claims writes is accepted: a JSON object
    of at most MAX_CLAIMS entries, printable keys, and values that are finite floats, integers
    within +-2**53, booleans, null or short printable text; anything else is bad_output (a huge
    integer would overflow the comparison with the trusted loss, a NaN or a terminal escape would
    travel on to records and screens)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: also ints past Python's digit limit
        raise Rejected(Failure.bad_output, "claims.json is not JSON") from None
    if not isinstance(data, dict) or len(data) > MAX_CLAIMS:
        raise Rejected(Failure.bad_output,
                       f"claims.json must be a JSON object of at most {MAX_CLAIMS} entries")
    for key, value in data.items():
        if not (len(key) <= MAX_CLAIM_KEY and printable(key)):
            raise Rejected(Failure.bad_output, f"claims.json: a key is not printable text of at "
                                               f"most {MAX_CLAIM_KEY} characters")
        if not _claim_value(value):
            raise Rejected(Failure.bad_output,
                           f"claims.json: {key!r} is not a finite number, an integer within "
                           f"+-2**53, a boolean, null or printable text of at most "
                           f"{MAX_CLAIM_TEXT} characters")
    return data


def _claim_value(value: object) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -MAX_INT <= value <= MAX_INT
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= MAX_CLAIM_TEXT and printable(value)
    return False
