"""Peak FLOPS of the device a run actually used, for MFU.

GPUs: dense bf16 tensor-core peaks from the vendors' data sheets, matched on the device name (the
idea follows nanochat's table; nanoGPT's fixed A100 figure is wrong everywhere else). CPUs have no
data-sheet figure we can trust, so we measure this machine's float32 matmul throughput with the
thread count a child gets, and label it as measured.
"""

from __future__ import annotations

import functools
import time

from darwin.errors import UserError

DEVICES = ("cpu", "cuda")


def check_device(device: str) -> None:
    """UserError unless ``device`` is one we can train on here."""
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}: use --device cpu|cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                "--device cuda but no CUDA device is visible to torch here: "
                "use --device cpu, or install a CUDA build of torch on a GPU machine"
            )

GPU_PEAK_BF16 = [  # (substring of torch.cuda.get_device_name(), FLOPS)
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


def gpu_peak(name: str) -> float | None:
    for key, flops in GPU_PEAK_BF16:
        if key in name:
            return flops
    return None


@functools.lru_cache(maxsize=8)
def cpu_peak(threads: int) -> float:
    """The best matmul FLOPS this CPU reaches with ``threads`` threads, over several sizes and
    the dtypes a program may train in (float32, bfloat16): a program faster than one fp32 size
    must not look like more than 100 % MFU (~1 s, cached per process)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        best = 0.0
        for dtype in (torch.float32, torch.bfloat16):
            for n in (128, 256, 512, 1024):
                a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
                a @ b  # first call: kernel selection
                for _ in range(3):  # best of 3 bursts of ~30 ms
                    t0, reps = time.perf_counter(), 0
                    while (elapsed := time.perf_counter() - t0) < 0.03:
                        a @ b
                        reps += 1
                    best = max(best, reps * 2 * n**3 / elapsed)
        return best
    finally:
        torch.set_num_threads(previous)


def device_peak(device: str, threads: int) -> tuple[float | None, str]:
    """(peak FLOPS, label) of the device a run used."""
    if device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
        peak = gpu_peak(name)
        return peak, f"{name} bf16 data-sheet peak" if peak else f"{name}: peak unknown"
    return cpu_peak(threads), f"CPU matmul peak measured here ({threads} thread(s), best of fp32/bf16)"
