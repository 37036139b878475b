"""Training slots: one single-threaded child per core, pinned, on CPU (measured: two 1-thread
children beat one 2-thread child and shrug off a noisy neighbour); several children per GPU."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

GPU_CHILDREN_PER_DEVICE = 4  # measured on an H200: 4 processes sharing it give 2.4x throughput


def cpu_slots(threads: int, n: int | None = None) -> list[list[int]]:
    cores = sorted(os.sched_getaffinity(0))
    n = max(1, len(cores) // threads) if n is None else n
    return [cores[i * threads : (i + 1) * threads] for i in range(n)]


def machine_memory_mb() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20


def slot_count(device: str, threads: int, memory_mb: int, asked: int | None = None, *,
               cores: int | None = None, memory: int | None = None) -> int:
    """How many children train at once: ``asked`` (--slots / DARWIN_SLOTS) if this machine can
    hold that many, else one line saying why not. Unasked: one per ``threads`` cores on CPU,
    ``GPU_CHILDREN_PER_DEVICE`` on a GPU, never more than the memory holds at every child's cap
    (``memory_mb``, the budget's memory limit). ``cores`` and ``memory`` (MB): this machine's."""
    from darwin.errors import UserError

    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    memory = machine_memory_mb() if memory is None else memory
    by_memory = max(1, memory // memory_mb)
    by_cores = max(1, cores // threads) if device == "cpu" else GPU_CHILDREN_PER_DEVICE
    if asked is None:
        return min(by_cores, by_memory)
    if asked < 1:
        raise UserError(f"--slots {asked}: at least one child must train; use --slots 1 or more")
    if device == "cpu" and asked * threads > cores:
        raise UserError(
            f"--slots {asked}: {asked} children at {threads} thread(s) each need "
            f"{asked * threads} cores and this machine gives {cores}; use --slots {by_cores} "
            f"or fewer")
    if asked * memory_mb > memory:
        raise UserError(
            f"--slots {asked}: {asked} children at the budget's {memory_mb} MB memory cap need "
            f"{asked * memory_mb} MB and this machine has {memory} MB; use --slots {by_memory} "
            f"or fewer")
    return asked


def slot_cpus(device: str, threads: int, n: int | None = None) -> list[list[int] | None]:
    """The cores of each slot (None: unpinned, on a GPU); ``n`` from ``slot_count``."""
    if device == "cuda":
        return [None] * (GPU_CHILDREN_PER_DEVICE if n is None else n)
    return list(cpu_slots(threads, n))


def run_in_slots(
    items: Iterable[T], work: Callable[[T, list[int] | None], R], slots: list[list[int] | None]
) -> list[R]:
    """Run ``work(item, cpus)`` for every item, at most one per slot at a time, in order."""
    free = SlotPool(slots)

    def one(item: T) -> R:
        cpus = free.acquire()
        try:
            return work(item, cpus)
        finally:
            free.release(cpus)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        return list(pool.map(one, items))


class SlotPool:
    """Hands out the CPU set of a free slot to whoever trains next (which core, not whether:
    how many train at once is the task runner's / concurrency limit's business)."""

    def __init__(self, slots: list[list[int] | None]):
        self.size = len(slots)
        self._free: queue.Queue[list[int] | None] = queue.Queue()
        for s in slots:
            self._free.put(s)

    def acquire(self) -> list[int] | None:
        return self._free.get()

    def release(self, cpus: list[int] | None) -> None:
        self._free.put(cpus)


_pools: dict[tuple[str, int], SlotPool] = {}


def shared_pool(device: str, threads: int, n: int | None = None) -> SlotPool:
    """One pool per process and device, shared by every flow and task in it (``n`` slots: the
    first caller's choice, from ``slot_count``)."""
    key = (device, threads)
    if key not in _pools:
        _pools[key] = SlotPool(slot_cpus(device, threads, n))
    return _pools[key]


def warm_pays(setting: str, device: str, free_cores: int = 0, idle_ok: bool = False) -> bool:
    """Whether to pre-start sandboxes: ``on``, ``off``, or ``auto``: yes on a GPU, where the
    CPU cores idle while the GPU trains and a child's start-up (interpreter, torch, CUDA
    context) is most of its time; on a CPU with cores no slot uses (--slots below the cores);
    and where a waiting sandbox can run at idle priority (``idle_ok``: we may raise it back),
    so that it only takes CPU no training wants. Not when every core trains a child and the
    start-up would run at full priority: it moved onto a busy core and slowed the child
    training there by about a second (measured: bench/README.md, bench/throughput.py)."""
    if setting == "auto":
        return device == "cuda" or free_cores > 0 or idle_ok
    return setting == "on"


_gates: dict[tuple[str, int], threading.Semaphore] = {}
_gates_lock = threading.Lock()


def warm_gate(device: str, threads: int, n: int | None = None) -> threading.Semaphore:
    """How many sandboxes may wait pre-started at once in this process: one per slot, so the
    next child of each slot is warm when the slot frees and no more memory is held."""
    key = (device, threads)
    with _gates_lock:
        if key not in _gates:
            _gates[key] = threading.Semaphore(shared_pool(device, threads, n).size)
        return _gates[key]


class MachineSlot:
    """One of a machine's ``n`` slots, held across processes (a worker starts each child as
    its own process): slot i is ``folder/<device>-<i>.lock``, held with flock, which the
    kernel releases when the holder dies, kill -9 included. Gives the slot's cores."""

    def __init__(self, folder, device: str, threads: int, n: int, poll_s: float = 0.2):
        self.folder, self.device, self.threads, self.n, self.poll_s = (
            folder, device, threads, n, poll_s)
        self._file = None

    def __enter__(self) -> list[int] | None:
        import fcntl
        import time
        from pathlib import Path

        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        cpus = slot_cpus(self.device, self.threads, self.n)
        while True:  # the worker's limit starts no more children than slots: rarely waits
            for i in range(self.n):
                f = open(folder / f"{self.device}-{i}.lock", "w")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                self._file = f
                return cpus[i]
            time.sleep(self.poll_s)

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None
