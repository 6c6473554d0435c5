"""How a framework's training step is run, checked and timed.

A peer's builder returns a ``Runner`` (``step(k)`` runs training step k) or raises ``Skip``.
``check`` compares each runner's losses over the first steps with gradc's; ``reference_check`` a
float64 runner's losses with the reference stored in the data (W6); ``time_steps`` times the
runners interleaved in shuffled rounds; ``time_parts`` times the pieces of gradc's step;
``gemm_rate`` measures the machine's single-thread GEMM rate for scale; ``pin_to_one_core`` pins the
process.
"""
import gc
import math
import os
import random
import statistics
import time
from dataclasses import dataclass

import numpy as np


class Skip(Exception):
    """A peer that cannot run here (not installed, not applicable); the message says why."""


@dataclass
class Runner:
    """One framework on one workload: ``step(k)`` runs training step k and returns its loss handle."""
    name: str
    step: object
    value: object = float           # loss handle -> float
    sync: object = None             # waits for an asynchronous step to finish
    compile_s: float = None
    warm_s: float = None
    dtype: str = ""
    note: str = ""
    k: int = 0                      # the next step index
    parts: dict = None              # gradc: the pieces of a step, timed apart

    def run(self, n, times=None, clock=time.perf_counter_ns):
        """Runs ``n`` steps; with ``times``, appends each step's µs by ``clock`` (an ns counter: wall time
        by default, ``time.process_time_ns`` for the CPU time of the whole process)."""
        step, sync = self.step, self.sync
        last = None
        for _ in range(n):
            k = self.k
            t0 = clock()
            last = step(k)
            if sync is not None:
                sync(last)
            t1 = clock()
            self.k = k + 1
            if times is not None:
                times.append((t1 - t0) * 1e-3)
        return last


# how a run is timed (--clock): (ns counter for the steps, s counter for the SGEMM), and what the report
# calls it; on a shared, loaded machine CPU time leaves out the time other processes take from the core
CLOCKS = dict(wall=(time.perf_counter_ns, time.perf_counter, "wall-clock time"),
              cpu=(time.process_time_ns, time.process_time,
                   "CPU time of the process (all its threads; time.process_time), not the time other processes "
                   "take from the core"))


def gemm_rate(dtype, n=1024, reps=7, clock=time.perf_counter):
    """Single-thread GEMM rate (GFLOP/s, median of ``reps``) of numpy's BLAS; ``clock`` in seconds
    (``time.process_time`` for CPU time)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n)).astype(dtype), rng.random((n, n)).astype(dtype)
    c = a @ b
    times = []
    for _ in range(reps):
        t0 = clock()
        np.matmul(a, b, out=c)
        times.append(clock() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def check(runners, steps, mg_steps):
    """Each runner's losses over the first steps from the shared init; compared with gradc's."""
    traj = {}
    for r in runners:
        n = mg_steps if r.name == "micrograd" else steps
        losses, times = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            losses.append(r.value(r.run(1)))
            times.append(time.perf_counter() - t0)
        traj[r.name] = (losses, times)
    ref = traj["gradc"][0]
    out = {}
    gdt = runners[0].dtype
    for r in runners[1:]:
        losses = traj[r.name][0]
        tol = 1e-10 if gdt == "float64" and r.dtype == "float64" else 1e-4
        rel = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(losses, ref))
        ok = all(math.isfinite(a) for a in losses) and rel <= tol
        out[r.name] = dict(steps=len(losses), loss=losses[-1], gradc_loss=ref[len(losses) - 1], rel=rel, tol=tol,
                           ok=bool(ok), first_step_s=traj[r.name][1][0])
    return out, traj


def reference_check(runner, ref, tol=1e-10):
    """The runner's first len(ref) losses from the shared init against the stored reference ``ref``
    (absolute difference; the losses are about 2.3)."""
    ref = [float(v) for v in ref]
    losses = [float(runner.value(runner.run(1))) for _ in ref]
    diff = max(abs(a - b) for a, b in zip(losses, ref))
    ok = all(math.isfinite(a) for a in losses) and diff <= tol
    return dict(steps=len(ref), dtype=runner.dtype, first=losses[0], last=losses[-1], ref_first=ref[0],
                ref_last=ref[-1], max_abs=diff, tol=tol, ok=bool(ok))


def pin_to_one_core():
    """Pins every thread of this process (and the threads it starts later) to the lowest core it may
    run on; returns that core, or None where the OS has no ``sched_setaffinity``."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = min(os.sched_getaffinity(0))
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, {core})
        except OSError:                           # a thread that has just ended
            pass
    return core


def time_steps(runners, counts, rounds, seed, clock=time.perf_counter_ns):
    """Per-step times (µs, by ``clock`` as in ``Runner.run``) of each runner; the runners take turns in
    blocks, in a shuffled order per round."""
    times = {r.name: [] for r in runners}
    order = list(runners)
    rng = random.Random(seed)
    gc_was = gc.isenabled()
    try:
        for rnd in range(rounds):
            rng.shuffle(order)
            for r in order:
                total = counts[r.name]
                n = total * (rnd + 1) // rounds - total * rnd // rounds
                if not n:
                    continue
                gc.collect()
                if r.name != "micrograd":          # micrograd's graphs are cycles: let the collector run
                    gc.disable()
                r.run(n, times[r.name], clock)
                gc.enable()
    finally:
        if gc_was:
            gc.enable()
    return times


def time_parts(parts, n, rounds=10):
    """Median µs of each zero-argument callable, interleaved in ``rounds`` blocks."""
    times = {k: [] for k in parts}
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for rnd in range(rounds):
            for k, f in parts.items():
                m = n * (rnd + 1) // rounds - n * rnd // rounds
                for _ in range(m):
                    t0 = clock()
                    f()
                    times[k].append((clock() - t0) * 1e-3)
    finally:
        gc.enable()
    return {k: statistics.median(v) for k, v in times.items() if v}
