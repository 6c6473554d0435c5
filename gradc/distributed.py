"""Data-parallel training over MPI (mpi4py), with the result of one process.

Every rank holds the same parameters, optimizer state and random generator.
Each global minibatch is split into contiguous shards, one per rank; each
rank computes its shard's gradient sum with the compiled kernel; the sums
(and the shard losses) travel in one ``Allgather`` of a flat buffer, and
every rank adds them up in rank order, so the result does not depend on
timing and equals the single-process gradient to rounding. Every collective
has a time limit (``GRADC_MPI_TIMEOUT`` seconds, default 300): a rank that
died or hangs stops the job with a message instead of a silent wait.

Example (``mpiexec -n 2 python train.py``)::

    from mpi4py import MPI
    gradc.fit(mod, p, data, epochs=10, batch_size=64, comm=MPI.COMM_WORLD)
"""
import os
import sys
import time

import numpy as np


def timeout_default():
    try:
        return float(os.environ.get("GRADC_MPI_TIMEOUT", "300"))
    except ValueError:
        return 300.0


def world_from_environment():
    """``MPI.COMM_WORLD`` when this process was started by ``mpiexec`` with several ranks, else None."""
    keys = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PMIX_RANK")
    if not any(k in os.environ for k in keys):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("this process runs under mpiexec but mpi4py is missing: pip install 'gradc[mpi]'")
    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


class Comm:
    """An mpi4py communicator with time-limited collectives on numpy buffers."""

    def __init__(self, comm, timeout=None):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.timeout = timeout_default() if timeout is None else float(timeout)
        self.comm_seconds = 0.0          # time spent in collectives (for benchmarks)

    def _wait(self, req, what):
        t0 = time.perf_counter()
        spins = 0
        while not req.Test():         # MPI progresses inside Test: poll, yielding the core
            spins += 1
            if spins > 1000:
                os.sched_yield() if hasattr(os, "sched_yield") else time.sleep(0)
            if time.perf_counter() - t0 > self.timeout:
                self.abort(f"rank {self.rank}: {what} did not complete within {self.timeout:g} s; another rank "
                           f"has died or hangs (GRADC_MPI_TIMEOUT sets the limit)")
        self.comm_seconds += time.perf_counter() - t0

    def abort(self, message, code=3):
        print(f"gradc: error: {message}", file=sys.stderr, flush=True)
        self.comm.Abort(code)

    def allgather(self, buf, what="a gradient exchange", out=None):
        """(size, len(buf)) array of every rank's ``buf``, in rank order (into ``out`` when given)."""
        buf = np.ascontiguousarray(buf)
        if out is None or out.shape != (self.size, buf.size) or out.dtype != buf.dtype:
            out = np.empty((self.size, buf.size), dtype=buf.dtype)
        self._wait(self.comm.Iallgather(buf, out), what)
        return out

    def bcast(self, buf, what="a broadcast"):
        """``buf`` (in place) becomes rank 0's."""
        self._wait(self.comm.Ibcast(buf, root=0), what)
        return buf

    def same_everywhere(self, text, what):
        """Raise on every rank when ranks disagree on ``text``; all ranks see the same answer."""
        import hashlib
        b = np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8).copy()
        all_b = self.allgather(b, f"the check of {what}")
        if not (all_b == all_b[0]).all():
            bad = [r for r in range(self.size) if not (all_b[r] == all_b[0]).all()]
            raise ValueError(f"ranks disagree on {what}: rank {bad[0]} differs from rank 0 "
                             f"(every rank must compile the same model)")

    def reduce_mean(self, flat_sums, n_total):
        """The sum over ranks of ``flat_sums``, added in rank order, divided by ``n_total``.

        The buffers are kept between steps: a fresh megabyte each step costs more than the exchange.
        """
        self._every = every = self.allgather(flat_sums, out=getattr(self, "_every", None))
        total = getattr(self, "_total", None)
        if total is None or total.shape != every[0].shape:
            total = self._total = np.empty_like(every[0])
        np.copyto(total, every[0])
        for r in range(1, self.size):
            total += every[r]
        total /= n_total
        return total


def shard(n, size, rank):
    """The slice of a global batch of n samples that ``rank`` handles (contiguous, in rank order)."""
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))
