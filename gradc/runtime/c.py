"""The generated module's Python side for target c: numpy in, numpy out. Imports no SymPy.

A ``CModule`` holds one loaded extension and implements the module contract of DESIGN.md
(``param_shapes``, ``forward``, ``loss_and_grad``, the fused steps, ...). Every argument is
checked here, before C sees it: a wrong shape, dtype or name, an empty batch or an index out of
range raises ``ValueError`` naming the argument.

Example::

    rt = CModule(entry, ModuleMeta.from_json(d))
    p = rt.init_params(seed=0)
    L, g = rt.loss_and_grad(p, x=X, y=Y)
"""
import math
import os
import threading
from collections.abc import Mapping

import numpy as np

from .. import init as _init
from .. import abi
from ..abi import EINDEX, error_message
from ..build import load_extension
from .memory import check_alloc
from .params import Params
from .updates import adam_apply_scalars, adam_hyper, checked_rate

#: samples per block of the C kernels: ``gradc.codegen.c.LANES`` (the Python build never overrides
#: it; the runtime imports no code generator, and a test checks the two agree)
LANES = 16
#: the largest batch one call takes. The kernels count samples in a C ``int``; the C target's take
#: up to ``INT_MAX``, the CUDA target's round the batch up to chunks of 32, so ``n + 63`` must fit in
#: ``INT_MAX``: 2**31 - 64 samples, for both.
MAX_BATCH = 2**31 - 64
#: the largest batch whose loss and gradient a float32 build sums in one call: 2**24 (16,777,216)
#: samples. The sums over the batch are float32; past 2**24 terms of similar size an added term is
#: lost to rounding (a batch of 2**31 - 1 gave a loss 128 times too small). Larger batches are
#: refused: split them (the mean of the parts' means, weighted by their sizes) or build float64.
#: ``forward``, which sums nothing over the batch, takes up to ``MAX_BATCH``.
FLOAT32_MAX_BATCH = 2**24
#: the most threads ``set_threads`` takes (the kernels' ``NAME_MAX_THREADS``); a call uses at most
#: one per block of ``LANES`` samples
MAX_THREADS = abi.MAX_THREADS
_INT32 = np.dtype(np.int32)


def _finite_step(out, g, fn):
    """Refuse to take a step whose loss or gradient holds NaN or Inf, as the C steps do (ENONFINITE):
    the parameters and the optimizer's state stay as they were."""
    if not (math.isfinite(out.item()) and np.isfinite(g).all()):
        raise ValueError(f"{fn}: {error_message(abi.ENONFINITE)}")


def _positive(name, v):
    """``v`` as a float, if it is a positive finite number; else ValueError naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not 0 < float(v) < math.inf:
        raise ValueError(f"loss_and_grad_clipped: {name} must be a positive finite number, got {v!r}")
    return float(v)


class _Fork:
    """Whether this process ran the kernels on OpenMP threads (``omp``), and whether it is a child
    forked after its parent (or an ancestor) did (``child``): libgomp's thread pool does not survive
    ``fork``, and a parallel region in such a child waits forever for threads it does not have."""
    omp = False
    child = False


def _after_fork_in_child():
    if _Fork.omp:
        _Fork.child = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_FORK_MESSAGE = ("this process was forked after gradc ran a model on several OpenMP threads in its parent; "
                 "OpenMP cannot start threads in a forked child (the call would hang). Call "
                 "set_threads(1) in the child, or start workers with multiprocessing's 'spawn' or "
                 "'forkserver' method, or fork before the first call with set_threads(T > 1)")

#: the ids of the parameter buffers a fused step is updating now, with the thread that updates each
_STEPPING = {}


def claim_params(buf, fn):
    """Mark ``buf`` as being stepped by this thread; refuse when another thread is stepping it (two
    threads stepping one ``Params`` interleave their reads and writes: the result would change from
    run to run). Returns the key ``release_params`` takes. Example::

        key = claim_params(params.flat, "sgd_step")
        try:
            ...                         # the step
        finally:
            release_params(key)
    """
    key, me = id(buf), threading.get_ident()
    if _STEPPING.setdefault(key, me) != me:      # setdefault is atomic: one thread wins
        raise RuntimeError(f"{fn}: these parameters are being stepped by another thread right now; one "
                           "Params must be stepped by one thread at a time (give each thread its own "
                           "Params, or hold a lock around the steps)")
    return key


def release_params(key):
    """End the step ``claim_params`` began: ``key = claim_params(flat, "sgd_step")`` ... ``release_params(key)``."""
    _STEPPING.pop(key, None)


class CModule:
    """A loaded model: the functions of the module contract, bound to one extension.

    ``info`` is the typed ``ModuleMeta``; ``meta`` the same record as the JSON dict on disk.
    Besides the contract it offers what the training loop and the optimizers build on:
    ``fill_masks``, ``index_error``, ``is_param_buffer`` and the flat fused steps
    ``sgd_step_flat`` / ``apply_step_flat``.

    Example::

        rt = gradc.runtime.runtime_of(mod)       # the CModule behind a loaded module
        rt.info.n_params, rt.info.dropout_inputs
    """

    def __init__(self, entry, meta):
        self.info = meta
        self.meta = meta.to_json()
        self.lib, self.ffi = load_extension(entry, self.meta)
        M = meta.prefix
        self.dtype = np.dtype(meta.dtype)
        self.ctype = "float" if self.dtype == np.float32 else "double"
        self._fwd = getattr(self.lib, f"{M}_forward")
        self._loss = getattr(self.lib, f"{M}_loss")
        self._lg = getattr(self.lib, f"{M}_loss_grad")
        self._sgd = getattr(self.lib, f"{M}_sgd_step")
        self._lgt = getattr(self.lib, f"{M}_loss_grad_threads", None)
        self._ws_threads = getattr(self.lib, f"{M}_workspace_size_threads", None)
        self.threads = 1
        self.ws_bytes = int(getattr(self.lib, f"{M}_workspace_size")(1))
        self.params = meta.params
        self.n_params = meta.n_params
        self.param_shapes = {p.name: p.shape for p in self.params}
        self.input_shapes = {a.name: a.shape for a in meta.inputs}
        self.target_shapes = {a.name: a.shape for a in meta.targets}
        self.output_shapes = {a.name: a.shape for a in meta.outputs}
        self.input_dtypes = {a.name: self._np_dtype(a) for a in meta.inputs}
        self.target_dtypes = {a.name: self._np_dtype(a) for a in meta.targets}
        self.int_bounds = meta.int_bounds
        self._specs = meta.inputs + meta.targets
        self._local = threading.local()
        # what the fast argument check compares, per input and target
        self._expect = {a.name: (self._np_dtype(a), a.shape, 1 + len(a.shape), a.name in self.int_bounds)
                        for a in self._specs}
        # the cffi array types of the pointers, resolved once (a type string is parsed per call otherwise)
        self._int_t = self.ffi.typeof("int32_t[]")
        self._real_t = self.ffi.typeof(self.ctype + "[]")
        self._tables = {}       # id(specs) -> the fast argument check's table (_fast_table)
        self._held = {}         # id(array) -> (array, its pointer): the parameter and state buffers
        self._apply_fns = {}    # rule -> the generated NAME_<rule>_apply

    def _np_dtype(self, a):
        return np.dtype(np.int32) if a.is_int else self.dtype

    # ---- parameters ----------------------------------------------------
    def init_params(self, seed=0):
        """Initial parameters drawn from each declared initializer with ``numpy.random.default_rng(seed)``.

        The arrays are views into one flat buffer, in declaration order.

        Example: ``p = mod.init_params(seed=0); p["W1"].shape``.
        """
        rng = np.random.default_rng(seed)
        check_alloc(self.n_params * self.dtype.itemsize, "the parameters")
        out = Params(np.empty(self.n_params, dtype=self.dtype), self.params)
        for p in self.params:
            out[p.name] = _init.draw(p.init, p.shape, rng, self.dtype)
        return out

    def _flat_params(self, params):
        flat = getattr(params, "flat", None)
        if isinstance(params, Params) and flat.dtype == self.dtype and flat.size == self.n_params \
                and len(params) == len(self.params):
            return flat              # the arrays are views of this buffer: nothing to gather
        if not isinstance(params, Mapping):
            raise ValueError(f"params must be a dict of arrays keyed by parameter name, not {type(params).__name__}")
        missing = [n for n in self.param_shapes if n not in params]
        if missing:
            raise ValueError(f"missing parameter {missing[0]!r}; expected {', '.join(map(repr, self.param_shapes))}")
        unknown = [n for n in params if n not in self.param_shapes]
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r}; expected {', '.join(map(repr, self.param_shapes))}")
        flat = np.empty(self.n_params, dtype=self.dtype)
        for p in self.params:
            a = self._real_array(params[p.name], f"parameter {p.name!r}")
            if a.shape != p.shape:
                raise ValueError(f"parameter {p.name!r} has shape {a.shape}, expected {p.shape}")
            flat[p.offset:p.offset + p.size] = a.ravel()
        return flat

    def is_param_buffer(self, flat, params):
        """Whether ``flat`` is a writable contiguous buffer of this model's parameters and the
        dict ``params`` holds exactly its views, laid out as ``Params.flat`` (what the flat fused
        steps update in place).

        Example::

            p = mod.init_params()
            rt.is_param_buffer(p.flat, p)         # True
            rt.is_param_buffer(p.flat, dict(p))   # True: the same arrays
        """
        if not (isinstance(flat, np.ndarray) and flat.dtype == self.dtype and flat.shape == (self.n_params,)
                and len(params) == len(self.params) and flat.flags.writeable and flat.flags.c_contiguous):
            return False
        base = flat.__array_interface__["data"][0]
        for q in self.params:      # the dict's arrays are the views of this layout
            a = params.get(q.name)
            if a is None or a.__array_interface__["data"][0] != base + q.offset * flat.itemsize \
                    or a.size != q.size:
                return False
        return True

    @staticmethod
    def _as_array(v, what):
        try:
            return np.asarray(v)
        except Exception as e:  # ragged lists and the like
            raise ValueError(f"{what} cannot be read as an array: {e}") from None

    def _real_array(self, v, what):
        a = self._as_array(v, what)
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{what} has dtype {a.dtype}, which cannot be converted to {self.dtype}")
        return a

    # ---- data ----------------------------------------------------------
    def _fast_table(self, specs):
        """What ``_fast_data`` compares for the arguments ``specs`` (``self._specs`` or
        ``info.inputs``), made once: per argument (name, dtype, per-sample shape, ndim, cffi type),
        and the largest batch."""
        t = self._tables.get(id(specs))
        if t is None or t[0] is not specs:
            rows = tuple((s.name, *self._expect[s.name][:3], self._int_t if s.is_int else self._real_t)
                         for s in specs)
            t = self._tables[id(specs)] = (specs, rows, self._max_batch(specs))
        return t

    def _fast_data(self, data, specs, ptrs=False):
        """The common case in a training loop, checked cheaply: exactly the right names, each a
        C-contiguous numpy array of the right dtype and per-sample shape, one batch size within
        the limit. Returns (n, the arrays), or with ``ptrs`` (n, their cffi pointers); or None:
        anything else goes through the full checks (``_data``), which name what is wrong. Ids are
        range-checked by the C function (EINDEX), then named by ``_check``."""
        _, rows, limit = self._fast_table(specs)
        if len(data) != len(rows):
            return None
        n, out, buf = -1, [], self.ffi.from_buffer
        for name, dt, shape, ndim, T in rows:
            a = data.get(name)
            if type(a) is not np.ndarray or (a.dtype is not dt and a.dtype != dt):
                return None
            sh = a.shape
            if len(sh) != ndim or sh[1:] != shape:
                return None
            if sh[0] != n:
                if n >= 0:
                    return None
                n = sh[0]
            if ptrs:
                try:            # from_buffer takes a C-contiguous array only (numpy refuses the others)
                    out.append(buf(T, a))
                except (ValueError, TypeError, BufferError):
                    return None
            elif a.flags.c_contiguous:
                out.append(a)
            else:
                return None
        return (n, out) if 0 < n <= limit else None

    def _data_ptrs(self, data, specs, what, rng=None):
        """(n, the cffi pointers of the checked arguments): ``_fast_data``, else ``_data``'s full checks."""
        fast = self._fast_data(data, specs, True)
        if fast is not None:
            return fast
        n, arrays = self._data(data, specs, what, rng)
        return n, [self._ptr(a) for a in arrays]

    def _max_batch(self, specs):
        """The largest batch a call on ``specs`` takes: ``MAX_BATCH``, or ``FLOAT32_MAX_BATCH`` for a
        float32 call that sums over the batch (one taking targets: loss, gradient, steps)."""
        if self.dtype == np.float32 and specs is not self.info.inputs:
            return FLOAT32_MAX_BATCH
        return MAX_BATCH

    def _check_batch_sizes(self, data, specs):
        """Refuse, before anything is allocated or converted, an argument with more samples than
        the kernels handle exactly, naming it."""
        limit = self._max_batch(specs)
        for name, v in data.items():
            shape = getattr(v, "shape", None)
            if shape is None and isinstance(v, (list, tuple)):
                shape = (len(v),)
            if not shape or not isinstance(shape, tuple):
                continue
            n = shape[0]
            if isinstance(n, (int, np.integer)) and n > limit:
                if limit == FLOAT32_MAX_BATCH:
                    why = (f"a float32 build sums at most {limit:,} samples (2**24) per call: beyond, "
                           "terms are lost to rounding; split the batch or build with dtype float64")
                else:
                    why = (f"the C kernels take at most {limit:,} samples (2**31 - 64) per call: they "
                           "count samples in a C int; split the batch")
                raise ValueError(f"argument {name!r} has {n:,} samples; {why}")

    def fill_masks(self, data, rng=None):
        """``data`` with the dropout masks the caller did not pass filled in: drawn from ``rng`` (a
        ``numpy.random.Generator``, training) or ones (``rng`` None, evaluation). ``data`` itself is
        not changed; without masks to fill it is returned as is.

        Example::

            batch = rt.fill_masks({"x": X, "y": Y}, np.random.default_rng(0))   # adds "drop"
        """
        todo = [s for s in self.info.inputs if s.dropout is not None and s.name not in data]
        if not todo:
            return data
        data = dict(data)
        n = self._batch_size(data)
        for s in todo:
            shape = (n, *s.shape)
            check_alloc(math.prod(shape) * self.dtype.itemsize, f"the dropout mask {s.name!r}")
            if rng is None:
                data[s.name] = np.ones(shape, dtype=self.dtype)
            else:
                keep = 1.0 - s.dropout
                data[s.name] = (rng.random(shape) < keep).astype(self.dtype) / self.dtype.type(keep)
        return data

    def _batch_size(self, data):
        for v in data.values():
            a = np.asarray(v)
            if a.ndim:
                return a.shape[0]
        raise ValueError("the batch is empty: pass at least one sample")

    def _data(self, data, specs, what, rng=None):
        fast = self._fast_data(data, specs)
        if fast is not None:
            return fast
        self._check_batch_sizes(data, specs)
        data = self.fill_masks(data, rng)
        names = [s.name for s in specs]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"missing {what} {missing[0]!r}; this model takes {', '.join(map(repr, names)) or 'none'}")
        unknown = [n for n in data if n not in names]
        if unknown:
            raise ValueError(f"unknown argument {unknown[0]!r}; this model takes {', '.join(map(repr, names))}")
        n, out = None, []
        for s in specs:
            name, shape = s.name, s.shape
            if s.is_int:
                a = self._int_array(data[name], name)
            else:
                a = self._real_array(data[name], f"argument {name!r}")
            if a.ndim != 1 + len(shape) or a.shape[1:] != shape:
                raise ValueError(f"argument {name!r} has shape {a.shape}, expected (batch, {', '.join(map(str, shape))})"
                                 .replace(", )", ")"))
            if n is None:
                n = a.shape[0]
            elif a.shape[0] != n:
                raise ValueError(f"argument {name!r} has {a.shape[0]} samples but {names[0]!r} has {n}")
            dt = self._np_dtype(s)
            if not (a.flags.c_contiguous and a.dtype == dt):      # a copy: refuse it before it is made
                check_alloc(a.size * np.dtype(dt).itemsize, f"a contiguous copy of argument {name!r}")
            a = np.ascontiguousarray(a, dtype=dt)
            err = self.index_error(name, a)
            if err:
                raise ValueError(f"argument {err}")
            out.append(a)
        if n is None:      # a model with no inputs or targets: its loss is one value, a batch of one
            n = 1
        if n == 0:
            raise ValueError("the batch is empty: pass at least one sample")
        return n, out

    def index_error(self, name, a):
        """A message when an int32 array used as an index holds a value out of range, else None.

        Example: ``rt.index_error("user", np.array([0, 99], np.int32))`` names sample 1 and the range.
        """
        bounds = self.int_bounds.get(name)
        if bounds is None or not a.size:
            return None
        hi = np.array([2**31 if b is None else b for b in bounds]).reshape(a.shape[1:])
        bad = np.flatnonzero(((a < 0) | (a >= hi)).reshape(a.shape[0], -1).any(axis=1))
        if not bad.size:
            return None
        s = int(bad[0])
        rng = sorted({b for b in bounds if b is not None})
        allowed = f"0..{rng[0] - 1}" if len(rng) == 1 else "the rows of the tables it indexes (" + \
            ", ".join(f"element {j}: 0..{b - 1}" for j, b in enumerate(bounds) if b is not None) + ")"
        return f"{name!r}: sample {s} holds {a[s].tolist()}, outside {allowed}"

    def _int_array(self, v, name):
        a = self._as_array(v, f"argument {name!r}")
        if a.dtype.kind not in "iu":
            raise ValueError(f"argument {name!r} must hold integers (int32), not {a.dtype}")
        if a.size and (a.min() < -2**31 or a.max() >= 2**31):
            raise ValueError(f"argument {name!r} holds values outside the int32 range")
        return a

    def _ptr(self, a):
        """The cffi pointer of the contiguous array ``a`` (int32 or the model's real type); it
        keeps ``a`` alive."""
        return self.ffi.from_buffer(self._int_t if a.dtype == _INT32 else self._real_t, a)

    def _aligned(self, nbytes):
        """A workspace of at least ``nbytes`` bytes that starts on a 64-byte boundary (a cache line,
        an AVX-512 vector), so the kernels' block-wide vectors never straddle two lines: numpy's
        16-byte alignment made W6's step 17% slower in the processes where it fell off the line."""
        items = max(1, -(-nbytes // self.dtype.itemsize))
        raw = np.empty(items * self.dtype.itemsize + 64, dtype=np.uint8)
        skip = -raw.ctypes.data % 64
        return raw[skip:skip + items * self.dtype.itemsize].view(self.dtype)

    def _work(self):
        """(the one-thread workspace's pointer, its size in bytes): the last two arguments of a call."""
        wp = getattr(self._local, "wp", None)
        if wp is None:      # the cdata keeps the buffer alive
            wp = self._local.wp = (self._ptr(self._aligned(self.ws_bytes)), self.ws_bytes)
        return wp

    def set_threads(self, threads):
        """Split ``loss_and_grad`` and the fused steps over ``threads`` threads (default 1).

        Each thread takes a contiguous share of the batch's blocks with its own workspace and
        gradient buffer; the buffers are added in thread order, so the result depends on the number
        of threads only (it differs from one thread's in the last bits). Parallel when the model was
        built with OpenMP (gcc; ``GRADC_OPENMP=0`` turns it off), else the shares run in turn.
        At most ``MAX_THREADS`` (1024); a call uses at most one thread per block of ``LANES``
        samples, and its workspace is sized (and checked against memory) for those it uses.

        Example::

            mod.set_threads(2)
            L, g = mod.loss_and_grad(p, x=X, y=Y)
        """
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= MAX_THREADS:
            raise ValueError(f"set_threads: threads must be an int >= 1 and <= {MAX_THREADS}, got {threads!r}")
        if threads > 1 and self._lgt is None:
            raise ValueError("set_threads: this build has no threaded loss_grad (target cuda uses the GPU)")
        self.threads = int(threads)

    def _lg_call(self, n, fp, ptrs, op, gp):
        """The generated loss_grad (or loss_grad_threads) on prepared pointers: its return code."""
        T = min(self.threads, -(-n // LANES))      # no more threads than blocks: the kernel uses no more
        if T == 1:
            return self._lg(n, fp, *ptrs, op, gp, *self._work())
        return self._lgt(T, n, fp, *ptrs, op, gp, *self._threads_work(n, T))

    def _threads_work(self, n, T, size=None, key="wt"):
        """The workspace of ``size(n, T)`` bytes (``NAME_workspace_size_threads``), kept per Python
        thread under ``key``: (its pointer, its size in bytes)."""
        if T > 1:
            if _Fork.child:
                raise RuntimeError(f"set_threads({self.threads}): {_FORK_MESSAGE}")
            _Fork.omp = True
        w = getattr(self._local, key, None)
        need = int((size or self._ws_threads)(n, T))
        if w is None or w[0] != T or w[1] < need:
            check_alloc(need, f"the workspace of {T} threads")
            w = (T, need, self._ptr(self._aligned(need)))
            setattr(self._local, key, w)
        return w[2], w[1]

    def _per_sample_fn(self, what):
        fn = getattr(self.lib, f"{self.info.prefix}_{what}", None)
        if fn is None:
            raise ValueError(f"{what}: this model has no per-sample loss (it is computed once per batch, "
                             "from the parameters alone), so it has no per-sample gradients")
        return fn

    def _per_sample_call(self, what, params, data, dropout_rng, extra):
        """Call ``NAME_<what>(threads, n, params, data..., *extra(n), ..., work, work_bytes)``."""
        fn = self._per_sample_fn(what)
        flat = self._flat_params(params)
        n, ptrs = self._data_ptrs(data, self._specs, "input or target", dropout_rng)
        T = min(self.threads, -(-n // LANES))
        args, keep = extra(n)
        if what == "loss_grad_weighted":
            work = self._threads_work(n, T)
        else:     # grad_norms, loss_grad_clipped: room for a block's gradients per thread
            work = self._threads_work(n, T, getattr(self.lib, f"{self.info.prefix}_workspace_size_norms"), "wn")
        rc = fn(T, n, self._ptr(flat), *ptrs, *args, *work)
        self._check(rc, what, data)
        return keep

    def _sample_weight(self, weight, n, fn):
        w = self._real_array(weight, f"{fn}: the sample weight")
        if w.shape != (n,):
            raise ValueError(f"{fn}: the sample weight has shape {w.shape}; it needs one value per sample, ({n},)")
        w = np.ascontiguousarray(w, dtype=self.dtype)
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"{fn}: every sample weight must be finite and >= 0")
        return w

    def loss_and_grad_weighted(self, params, weight, /, dropout_rng=None, **data):
        """(loss, grads) of the weighted loss ``sum_s weight[s] * loss_s / n`` plus regularization.

        ``weight`` has one finite value >= 0 per sample. All ones is ``loss_and_grad`` (to the
        last bit with one thread). Example: ``L, g = mod.loss_and_grad_weighted(p, w, x=X, y=Y)``.
        """
        out, g = np.empty(1, dtype=self.dtype), np.empty(self.n_params, dtype=self.dtype)

        def extra(n):
            w = self._sample_weight(weight, n, "loss_and_grad_weighted")
            return (self._ptr(w), self._ptr(out), self._ptr(g)), w
        self._per_sample_call("loss_grad_weighted", params, data, dropout_rng, extra)
        return float(out[0]), Params(g, self.params)

    def grad_norms(self, params, /, dropout_rng=None, **data):
        """The Euclidean norm of each sample's gradient (of its own loss, without regularization and
        without the 1/n of the mean): an array of shape (n,). Computed in C a block of samples at a
        time (their gradients side by side in the workspace; one sample at a time for a model with
        a scatter through an index or a tensor computed once per batch); no per-sample gradient is
        returned. Example: ``mod.grad_norms(p, x=X, y=Y)``.
        """
        def extra(n):
            norms = np.empty(n, dtype=self.dtype)
            return (self._ptr(norms),), norms
        return self._per_sample_call("grad_norms", params, data, dropout_rng, extra)

    def loss_and_grad_clipped(self, params, max_norm, scale=None, /, dropout_rng=None, **data):
        """DP-SGD's clipped sum: ``(loss, grads, norms)`` where grads = scale * sum_s min(1,
        max_norm / norms[s]) * g_s + the regularization's gradient, g_s sample s's gradient and
        ``norms`` their norms (as ``grad_norms``); ``scale`` defaults to 1/n (the mean); loss is
        the plain mean loss plus regularization.

        Example: ``L, g, norms = mod.loss_and_grad_clipped(p, 1.0, x=X, y=Y)``.
        """
        c = _positive("max_norm", max_norm)
        out, g = np.empty(1, dtype=self.dtype), np.empty(self.n_params, dtype=self.dtype)

        def extra(n):
            k = 1.0 / n if scale is None else _positive("scale", scale)
            norms = np.empty(n, dtype=self.dtype)
            return (c, k, self._ptr(norms), self._ptr(out), self._ptr(g)), norms
        norms = self._per_sample_call("loss_grad_clipped", params, data, dropout_rng, extra)
        return float(out[0]), Params(g, self.params), norms

    def _held_ptr(self, a):
        """The cffi pointer of a long-lived array (a parameter buffer), made once: from_buffer costs
        about a microsecond, a fifth of a small model's whole step."""
        cache = self._held
        hit = cache.get(id(a))
        if hit is not None and hit[0] is a:
            return hit[1]
        if len(cache) >= 8:
            cache.clear()
        ptr = self._ptr(a)
        cache[id(a)] = (a, ptr)
        return ptr

    def _check(self, rc, fn, data=None):
        if rc == 0:
            return
        if rc == EINDEX and data:      # name the argument and the sample holding the index out of range
            for name in self.int_bounds:
                if name in data:
                    err = self.index_error(name, np.asarray(data[name]))
                    if err:
                        raise ValueError(f"argument {err}")
        raise ValueError(f"{fn}: {error_message(rc)}")

    def _writable_flat(self, params, fn):
        """The flat buffer a fused step updates in place: ``params.flat`` of a ``Params`` of this model."""
        flat = getattr(params, "flat", None)
        if not (isinstance(params, Params) and isinstance(flat, np.ndarray) and flat.dtype == self.dtype
                and flat.shape == (self.n_params,) and len(params) == len(self.params)
                and flat.flags.c_contiguous and flat.flags.writeable):
            raise ValueError(f"{fn}: params must be the Params of this model (from init_params), updated in "
                             f"place; got {type(params).__name__}")
        return flat

    # ---- the contract --------------------------------------------------
    def forward(self, params, dropout_rng=None, **inputs):
        """The outputs for a batch: ``{"score": array of shape (N, ...)}``.

        Dropout masks not passed are ones (evaluation), or drawn from ``dropout_rng``.

        Example: ``mod.forward(p, x=X)["score"]``.
        """
        flat = self._flat_params(params)
        n, ptrs = self._data_ptrs(inputs, self.info.inputs, "input", dropout_rng)
        per_sample = sum(math.prod(o.shape) for o in self.info.outputs)
        check_alloc(n * per_sample * self.dtype.itemsize, f"the outputs of a batch of {n}")
        outs = {o.name: np.empty((n, *o.shape), dtype=self.dtype) for o in self.info.outputs}
        rc = self._fwd(n, self._ptr(flat), *ptrs, *[self._ptr(o) for o in outs.values()], *self._work())
        self._check(rc, "forward", inputs)
        return outs

    def loss(self, params, dropout_rng=None, **data):
        """The mean loss over the batch plus regularization, as a float.

        Example: ``mod.loss(p, x=X, y=Y)``.
        """
        flat = self._flat_params(params)
        n, ptrs = self._data_ptrs(data, self._specs, "input or target", dropout_rng)
        out = np.empty(1, dtype=self.dtype)
        rc = self._loss(n, self._ptr(flat), *ptrs, self._ptr(out), *self._work())
        self._check(rc, "loss", data)
        return out.item()

    def loss_and_grad(self, params, dropout_rng=None, **data):
        """(loss, grads): grads has the keys and shapes of ``params`` (views into one flat array).

        ``dropout_rng`` (a ``numpy.random.Generator``) turns dropout on: masks not passed are drawn from it.

        Example: ``L, g = mod.loss_and_grad(p, x=X, y=Y); g.flat``.
        """
        flat = self._flat_params(params)
        n, ptrs = self._data_ptrs(data, self._specs, "input or target", dropout_rng)
        out = np.empty(1, dtype=self.dtype)
        g = np.empty(self.n_params, dtype=self.dtype)
        rc = self._lg_call(n, self._ptr(flat), ptrs, self._ptr(out), self._ptr(g))
        self._check(rc, "loss_and_grad", data)
        return out.item(), Params(g, self.params)

    # ---- fused training steps: one call into C, no gradient dict ---------------------
    def _step_buffers(self):
        """Per thread: the gradient buffer and a one-value output, with their pointers, and the
        one-thread workspace's (pointer, size), reused by the fused steps."""
        b = getattr(self._local, "step", None)
        if b is None:
            g, out = np.empty(self.n_params, dtype=self.dtype), np.empty(1, dtype=self.dtype)
            b = self._local.step = (g, self._ptr(g), out, self._ptr(out), CModule._work(self))
        return b

    def sgd_step(self, params, lr, dropout_rng=None, **data):
        """One SGD step in place (``p -= lr * grad``), as one C call; returns the loss before the step.

        ``params`` must be this model's ``Params`` (from ``init_params``). Equals
        ``loss_and_grad`` followed by ``optim.SGD(p, lr).step`` to rounding.

        Example::

            for X, Y in batches:
                L = mod.sgd_step(p, 0.1, x=X, y=Y)
        """
        flat = self._writable_flat(params, "sgd_step")
        return self.sgd_step_flat(flat, checked_rate(lr, "sgd_step", "lr"), data, dropout_rng)

    def sgd_step_flat(self, flat, lr, data, dropout_rng=None):
        """``sgd_step`` on a flat parameter buffer the caller has checked (``is_param_buffer``) and
        a checked ``lr``: what ``gradc.optim.SGD.train_step`` calls. Returns the loss.

        Example::

            if rt.is_param_buffer(p.flat, p):
                L = rt.sgd_step_flat(p.flat, 0.1, {"x": X, "y": Y})
        """
        key = claim_params(flat, "sgd_step")
        try:
            return self._sgd_flat(flat, lr, data, dropout_rng)
        finally:
            release_params(key)

    def _sgd_flat(self, flat, lr, data, dropout_rng):
        n, ptrs = self._data_ptrs(data, self._specs, "input or target", dropout_rng)
        g, gp, out, op, wp = self._step_buffers()
        if self.threads > 1:
            rc = self._lg_call(n, self._held_ptr(flat), ptrs, op, gp)
            if rc:
                self._check(rc, "sgd_step", data)
            _finite_step(out, g, "sgd_step")       # as the C step: no update from NaN or Inf
            flat -= self.dtype.type(lr) * g
            return out.item()
        rc = self._sgd(n, self._held_ptr(flat), *ptrs, lr, op, gp, *wp)
        if rc:
            self._check(rc, "sgd_step", data)
        return out.item()

    def adam_state(self):
        """Fresh Adam state for ``adam_step``: ``{"step": 0, "exp_avg": zeros, "exp_avg_sq": zeros}``,
        the buffers flat (``n_params`` values, laid out as ``params.flat``).

        Example: ``st = mod.adam_state(); mod.adam_step(p, st, x=X, y=Y); st["step"]  # 1``.
        """
        return {"step": 0, "exp_avg": np.zeros(self.n_params, self.dtype),
                "exp_avg_sq": np.zeros(self.n_params, self.dtype)}

    def _adam_args(self, params, state, lr, betas, eps):
        """``adam_step``'s arguments checked: the parameter buffer, (m, v) and the scalars."""
        flat = self._writable_flat(params, "adam_step")
        lr, beta1, beta2, eps = adam_hyper(lr, betas, eps)
        if not isinstance(state, Mapping) or "step" not in state:
            raise ValueError(f"adam_step: state must be the dict adam_state() returns, got {type(state).__name__}")
        m, v = state.get("exp_avg"), state.get("exp_avg_sq")
        for key, a in (("exp_avg", m), ("exp_avg_sq", v)):
            if not (isinstance(a, np.ndarray) and a.dtype == self.dtype and a.shape == (self.n_params,)
                    and a.flags.c_contiguous and a.flags.writeable):
                raise ValueError(f"adam_step: state[{key!r}] must be a writable {self.dtype} array of "
                                 f"{self.n_params} values (use adam_state())")
        return flat, m, v, lr, beta1, beta2, eps

    def adam_step(self, params, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, dropout_rng=None, **data):
        """One Adam step in place (PyTorch's update, no weight decay); returns the loss before it.

        ``state`` comes from ``adam_state()`` and is updated too. The scalars are computed as
        ``optim.Adam`` computes them, so both agree to rounding.

        Example::

            st = mod.adam_state()
            L = mod.adam_step(p, st, lr=1e-3, x=X, y=Y)
        """
        flat, m, v, lr, beta1, beta2, eps = self._adam_args(params, state, lr, betas, eps)
        t = int(state["step"]) + 1
        L = self.apply_step_flat("adam", flat, (m, v), adam_apply_scalars(lr, beta1, beta2, eps, t), data,
                                 dropout_rng)
        state["step"] = t
        return L

    def _apply_fn(self, rule):
        fns = self._apply_fns
        fn = fns.get(rule)
        if fn is None:
            name = f"{self.info.prefix}_{rule}_apply"
            fn = fns[rule] = getattr(self.lib, name, None)
            if fn is None:
                raise ValueError(f"this build has no {name}: no fused C update {rule!r}")
        return fn

    def apply_step_flat(self, rule, flat, buffers, scalars, data, dropout_rng=None):
        """A fused training step with the generated update ``NAME_<rule>_apply``: the loss and
        gradient of the batch into a reused buffer (on ``set_threads`` threads), then one C call
        ``NAME_<rule>_apply(params, grad, *buffers, *scalars)`` that updates ``flat`` and the state
        ``buffers`` in place. Returns the loss before the step.

        The caller has checked the arguments: ``flat`` as ``is_param_buffer`` does, each buffer a
        writable contiguous array like it, the scalars (floats, in the C function's order) valid.
        This is what ``mod.adam_step`` and the optimizers' one-call ``train_step`` run.

        Example::

            m, v = np.zeros_like(p.flat), np.zeros_like(p.flat)
            L = rt.apply_step_flat("adam", p.flat, (m, v), adam_apply_scalars(1e-3, 0.9, 0.999, 1e-8, 1),
                                   {"x": X, "y": Y})
        """
        fn = self._apply_fn(rule)
        key = claim_params(flat, f"{rule}_step")
        try:
            return self._apply_flat(fn, rule, flat, buffers, scalars, data, dropout_rng)
        finally:
            release_params(key)

    def _apply_flat(self, fn, rule, flat, buffers, scalars, data, dropout_rng):
        n, ptrs = self._data_ptrs(data, self._specs, "input or target", dropout_rng)
        g, gp, out, op, wp = self._step_buffers()
        fp = self._held_ptr(flat)
        if self.threads == 1:
            rc = self._lg(n, fp, *ptrs, op, gp, *wp)
        else:
            rc = self._lg_call(n, fp, ptrs, op, gp)
        if rc:
            self._check(rc, f"{rule}_step", data)
        _finite_step(out, g, f"{rule}_step")      # no update (nor state) from NaN or Inf
        held = self._held_ptr
        rc = fn(fp, gp, *[held(b) for b in buffers], *scalars)
        if rc:          # None while an update is void (ABI 1)
            self._check(rc, f"{rule}_step")
        return out.item()
