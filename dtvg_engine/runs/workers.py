"""How many workers run at once, and what share of the machine each gets (`--jobs N|auto`).

A worker is one run's process. Left alone, every worker's torch uses a thread per core, so two workers
on two cores run four threads that keep evicting each other. Each worker slot therefore gets its share
of the cores as its thread count (`OMP_NUM_THREADS`, which torch reads at start, and the same for MKL
and the tokenizer's pool), so jobs × threads never exceeds the cores; on a GPU machine each slot gets
one GPU (`CUDA_VISIBLE_DEVICES`). `auto` takes as many slots as there are runs, cores (or GPUs) and
memory for them. Standard library only: the dashboard's study view imports it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

AUTO = "auto"

WORKER_MEMORY = 4 << 30
"""Memory to keep free per CPU worker: a smollm2-135m stage-1 worker with whole inputs (up to 171 tokens,
batch 8, fp32) peaked at 3.4 GB resident (docs/performance.md)."""

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")
"""Thread-pool sizes read at start by torch (OpenMP), MKL, and the tokenizer (rayon)."""

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")
"""One folder per GPU the NVIDIA driver sees (Linux)."""
MEMINFO = Path("/proc/meminfo")


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, which a container or taskset narrows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The ids to put in `CUDA_VISIBLE_DEVICES`, one per GPU a worker could use here.

    Read without torch (the dashboard imports this module): the `CUDA_VISIBLE_DEVICES` this process
    was given, else the GPUs the NVIDIA driver lists.
    """
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        ids = [part.strip() for part in given.split(",") if part.strip()]
        return [] if ids[:1] == ["-1"] else ids
    if not NVIDIA_GPUS.is_dir():
        return []
    return [str(i) for i in range(len(list(NVIDIA_GPUS.iterdir())))]


def available_memory() -> int | None:
    """Bytes of memory available for new processes (Linux's MemAvailable), or None where unknown."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def uses_gpu(devices: Iterable[str]) -> bool:
    """Whether runs with these `device` settings would run on a GPU here (`auto` takes one if present)."""
    return any(device != "cpu" for device in devices) and bool(visible_gpus())


def parallel_runs(jobs: int | str, runs: int | None = None, gpu: bool = False) -> int:
    """How many workers run at once for `jobs` (a count, or `auto`) and `runs` runs (None: unbounded)."""
    if jobs != AUTO:
        count = int(jobs)
    elif gpu:
        count = len(visible_gpus())
    else:
        memory = available_memory()
        count = cpu_cores() if memory is None else max(1, min(cpu_cores(), memory // WORKER_MEMORY))
    return max(1, min(count, runs) if runs is not None else count)


def slot_environments(jobs: int | str, devices: list[str]) -> list[dict[str, str]]:
    """The environment of each worker slot for runs with these `device` settings, one run per slot.

    Every slot gets an equal share of the cores as its thread count (at least one); on a GPU machine
    slot i gets GPU i (round-robin when `jobs` asks for more workers than GPUs).
    """
    gpu = uses_gpu(devices)
    count = parallel_runs(jobs, len(devices), gpu)
    threads = str(max(1, cpu_cores() // count))
    gpus = visible_gpus() if gpu else []
    slots = []
    for i in range(count):
        env = dict.fromkeys(THREAD_VARIABLES, threads)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        slots.append(env)
    return slots


def array_width(jobs: int | str, runs: int) -> int:
    """Runs of a Slurm job array at once: `auto` leaves it to the scheduler (all of them)."""
    return runs if jobs == AUTO else int(jobs)


def describe(slots: list[Mapping[str, str]]) -> str:
    """One line on the slots for the foreground view: "2 workers at once, 1 thread each"."""
    line = f"{len(slots)} worker(s) at once, {slots[0]['OMP_NUM_THREADS']} thread(s) each"
    gpus = [slot["CUDA_VISIBLE_DEVICES"] for slot in slots if "CUDA_VISIBLE_DEVICES" in slot]
    return line + (f", on GPU {', '.join(gpus)}" if gpus else "")
