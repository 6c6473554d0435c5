"""Data-parallel training over MPI (mpi4py), with the result of one process.

Every rank holds the same parameters, optimizer state and random generator.
Each global minibatch is split into contiguous shards, one per rank; each
rank computes its shard's gradient sum with the compiled kernel; the sums
(and the shard losses) travel in one ``Allgather`` of a flat buffer, and
every rank adds them up in rank order, so the result does not depend on
timing and equals the single-process gradient to rounding. Every collective
has a time limit (``GRADC_MPI_TIMEOUT`` seconds, default 300): a rank that
died or hangs stops the job with a message instead of a silent wait.

Before the first step (after ``--resume`` restored a checkpoint on every
rank), the ranks compare a hash of their training state (parameters,
optimizer and schedule state, epoch and step, random generator) and of their
data (names, dtypes, shapes and bytes): ranks that resumed from different
checkpoints, or loaded different data, stop on every rank with a message
naming what differs (``begin``).

Example (``mpiexec -n 2 python train.py``)::

    from mpi4py import MPI
    gradc.fit(mod, p, data, epochs=10, batch_size=64, comm=MPI.COMM_WORLD)
"""
import hashlib
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


def digest(obj, h=None):
    """A 32-byte hash of nested dicts, lists and tuples of numpy arrays, numbers and strings: dict
    keys in sorted order, arrays by dtype, shape and bytes. Equal on two ranks when the values are.

    Example: ``digest({"W": np.zeros(3), "step": 4}) == digest({"step": 4, "W": np.zeros(3)})``.
    """
    top = h is None
    h = hashlib.blake2b(digest_size=32) if top else h
    if isinstance(obj, np.ndarray):
        h.update(f"array {obj.dtype.str} {obj.shape};".encode())
        h.update(memoryview(np.ascontiguousarray(obj)).cast("B"))
    elif isinstance(obj, dict):
        h.update(f"dict {len(obj)};".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode() + b"=")
            digest(obj[k], h)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__} {len(obj)};".encode())
        for v in obj:
            digest(v, h)
    else:
        h.update(f"{type(obj).__name__} {obj!r};".encode())
    return h.digest() if top else None


#: what ``begin`` compares, in order, with the advice each disagreement gets
_CHECKED = (("the restored parameters", "every rank must resume from the same checkpoint"),
            ("the restored optimizer state", "every rank must resume from the same checkpoint"),
            ("the restored schedule state", "every rank must resume from the same checkpoint"),
            ("the restored epoch and step", "every rank must resume from the same checkpoint"),
            ("the restored random generator state", "every rank must resume from the same checkpoint"),
            ("the training data", "every rank must load the same data: each takes its shard of every "
                                  "global batch"),
            ("the validation data", "every rank must load the same data"))


def begin(trainer, data, val_data=None, resume=None):
    """Data-parallel start of ``Trainer.fit``: every rank restores ``resume`` (when given), then the
    ranks compare a hash of their state and of their data; any failure or difference raises
    ``ValueError`` on every rank, naming the first rank that differs from rank 0 and what differs.

    Example (what ``Trainer.fit`` runs under MPI)::

        begin(trainer, {"x": X, "y": Y}, None, "run/checkpoint.npz")
    """
    d = trainer.dist
    failed = None
    if resume is not None:
        try:
            trainer.restore(resume)
        except Exception as e:           # noqa: BLE001  (told to the other ranks, then raised here)
            failed = e
    flags = d.allgather(np.array([failed is not None], dtype=np.uint8), "the check of the restored checkpoints")
    if failed is not None:
        raise failed
    if flags.any():
        r = int(np.flatnonzero(flags[:, 0])[0])
        raise ValueError(f"rank {r} could not resume from its checkpoint {resume} (its own message says why); "
                         "every rank stops")
    st = trainer.state()
    sched = st.get("scheduler")
    parts = [digest(dict(trainer.params)), digest(st["optimizer"]), digest(sched),
             digest((st["epoch"], st["step"], st["seed"])), digest(st["rng"]),
             digest(dict(data)), digest(None if val_data is None else dict(val_data))]
    mine = np.frombuffer(b"".join(parts), dtype=np.uint8).reshape(len(parts), -1)
    every = d.allgather(mine.reshape(-1), "the check of the training state and data")
    every = every.reshape(d.size, len(parts), -1)
    for i, (what, advice) in enumerate(_CHECKED):
        differ = [r for r in range(d.size) if not np.array_equal(every[r, i], every[0, i])]
        if differ:
            raise ValueError(f"ranks disagree on {what}: rank {differ[0]} differs from rank 0 ({advice})")
