"""Fair CPU threads when several nanovlm processes run on one machine.

torch gives every process one thread per core. Two trainings on 2 cores then run 4 threads, and OpenMP's
lock-step parallel regions suffer badly from it: a thread waiting at the end of a region spins (or sleeps and
wakes late) while its partner is descheduled. Measured with benchmarks/concurrent_training.py on the 2-core
development machine, each of two demo trainings ran 8x slower than alone instead of the fair 2x (4x with
OMP_WAIT_POLICY=PASSIVE), while one thread each made the pair finish as fast as one run alone.

So each training that was not given --threads registers itself in a shared folder and keeps
cores // (live registered processes) threads, re-checked every few steps: a second run started next to the
first makes both drop to their share, and when one ends the other takes the cores back.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

REGISTRY = Path(tempfile.gettempdir()) / "nanovlm-cpu-share"


def usable_cores() -> int:
    """Cores this process may run on (taskset and cgroup pinning included)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's process: alive
        return True
    return True


class CpuShare:
    """Register this process; update() sets torch's threads to this process's share of the cores."""

    def __init__(self, check_every: int = 20):
        self.check_every, self.cores = check_every, usable_cores()
        self.most = torch.get_num_threads()
        try:
            REGISTRY.mkdir(mode=0o777, exist_ok=True)
            self.entry = REGISTRY / str(os.getpid())
            self.entry.touch()
        except OSError:              # a read-only temp folder: keep torch's default
            self.entry = None
        self.update()

    def peers(self) -> int:
        """Live registered processes, this one included; entries of dead processes are removed."""
        count = 0
        for entry in REGISTRY.iterdir():
            if entry.name.isdigit() and _alive(int(entry.name)):
                count += 1
            else:
                entry.unlink(missing_ok=True)
        return max(count, 1)

    def update(self, step: int = 0):
        if self.entry is None or step % self.check_every:
            return
        want = max(1, min(self.most, self.cores // self.peers()))
        if want != torch.get_num_threads():
            torch.set_num_threads(want)

    def close(self):
        """Unregister and give back torch's thread count (the process may go on to other work)."""
        if self.entry is not None:
            self.entry.unlink(missing_ok=True)
            self.entry = None
            torch.set_num_threads(self.most)
