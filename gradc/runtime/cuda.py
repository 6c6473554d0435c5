"""The generated module's Python side for target cuda: the C target's contract, plus device memory.

The functions of the module contract take and return host numpy arrays, exactly as for the C
target, so a script switches targets by changing ``target=``. To train without copying the
parameters every step, move them to the device once::

    mod = gradc.load("model.py", target="cuda")
    dp = mod.to_device(mod.init_params(seed=0))   # parameters in GPU memory
    st = mod.adam_state()                         # Adam's state in GPU memory
    for X, Y in batches:
        L = mod.adam_step(dp, st, lr=1e-3, x=X, y=Y)   # copies the batch in and the loss out
    p = mod.to_host(dp)                           # a Params (host numpy) again

``forward``, ``loss`` and ``loss_and_grad`` accept either host ``Params`` or device parameters.
Batch sizes are bounded as for the C target (``MAX_BATCH``; ``FLOAT32_MAX_BATCH`` for a float32
sum): the kernels count samples in a C ``int`` and round the batch up to chunks of 32. One
``Params`` or ``DeviceParams`` is stepped by one thread at a time (another thread's step raises).
"""
import numpy as np

from ..abi import ECUDA
from ..errors import BuildError
from .c import CModule, claim_params, release_params
from .params import Params
from .updates import adam_apply_scalars, adam_hyper, checked_rate


class DeviceArray:
    """``size`` values of the model's dtype in GPU memory; freed when garbage collected.

    Example::

        a = mod.to_device(p).flat       # a DeviceArray
        a.numpy()                       # a host copy
    """

    def __init__(self, compiled, size):
        self._c = compiled
        self.size = int(size)
        self.dtype = compiled.dtype
        self.nbytes = self.size * self.dtype.itemsize
        self.ptr = compiled._alloc(self.nbytes)

    def numpy(self, out=None):
        """A host copy (into ``out`` when given). Example: ``dp.flat.numpy()``."""
        out = np.empty(self.size, self.dtype) if out is None else out
        if not (isinstance(out, np.ndarray) and out.dtype == self.dtype and out.size == self.size
                and out.flags.c_contiguous and out.flags.writeable):
            raise ValueError(f"numpy(out=...): out must be a writable contiguous {self.dtype} array of "
                             f"{self.size} values")
        self._c._copy(self._c.ffi.from_buffer(out), self.ptr, self.nbytes, 0)
        return out

    def copy_from(self, a):
        """Copy the host array ``a`` (``size`` values) in; returns self. Example: ``d.copy_from(p.flat)``."""
        a = np.ascontiguousarray(a, dtype=self.dtype).reshape(-1)
        if a.size != self.size:
            raise ValueError(f"cannot copy {a.size} values into a device array of {self.size}")
        self._c._copy(self.ptr, self._c.ffi.from_buffer(a), self.nbytes, 1)
        return self

    def __repr__(self):
        return f"DeviceArray({self.size} x {self.dtype}, on the GPU)"


class DeviceParams:
    """A model's parameters in GPU memory: one flat ``DeviceArray`` laid out as ``Params.flat``.

    Made by ``mod.to_device(params)``; ``mod.to_host(dp)`` copies them back.

    Example::

        dp = mod.to_device(p)           # a DeviceParams
        mod.sgd_step(dp, 0.1, x=X, y=Y)
    """

    def __init__(self, compiled, flat):
        self._c = compiled
        self.flat = flat

    def keys(self):
        """The parameter names, as a dict's. Example: ``list(dp.keys())  # ['W1', 'b1', ...]``."""
        return self._c.param_shapes.keys()

    def __repr__(self):
        return f"DeviceParams({', '.join(self._c.param_shapes)}; {self.flat.size} values on the GPU)"


class CudaModule(CModule):
    """A model built for CUDA: the functions of the module contract, run on the GPU.

    Example::

        mod = gradc.load("model.py", target="cuda")
        dp = mod.to_device(mod.init_params(seed=0))
        L = mod.sgd_step(dp, 0.1, x=X, y=Y)
    """

    def __init__(self, entry, meta):
        super().__init__(entry, meta)
        M = meta.prefix
        lib = self.lib
        self._ws_size = getattr(lib, f"{M}_workspace_size")
        self._dev_alloc = getattr(lib, f"{M}_device_alloc")
        self._dev_free = getattr(lib, f"{M}_device_free")
        self._dev_copy = getattr(lib, f"{M}_device_copy")
        self._dev_error = getattr(lib, f"{M}_device_error")
        count = getattr(lib, f"{M}_device_count")()
        if count < 1:
            why = "no CUDA device is visible" if count == 0 else \
                f"the CUDA runtime cannot be used ({self._error_text()})"
            raise BuildError(f"target cuda: {why}; model {meta.name!r} was built, but it needs an NVIDIA "
                             "GPU to run (the C target, target='c', needs none)")
        self._rptr = self.ctype + " *"

    # ---- device memory -------------------------------------------------
    def _error_text(self):
        return self.ffi.string(self._dev_error()).decode("utf-8", "replace")

    def _alloc(self, nbytes):
        p = self._dev_alloc(max(1, nbytes))
        if p == self.ffi.NULL:
            raise MemoryError(f"target cuda: cannot allocate {nbytes:,} bytes of GPU memory "
                              f"({self._error_text()})")
        return self.ffi.gc(p, self._dev_free)

    def _copy(self, dst, src, nbytes, to_device):
        rc = self._dev_copy(dst, src, nbytes, to_device)
        if rc != 0:
            raise RuntimeError(f"target cuda: a copy {'to' if to_device else 'from'} the GPU failed "
                               f"({self._error_text()})")

    def _dev(self, a):
        return self.ffi.cast(self._rptr, a.ptr)

    def _scratch(self, key, size):
        """A per-thread device buffer of at least ``size`` values, kept between calls."""
        a = getattr(self._local, key, None)
        if a is None or a.size < size:
            a = DeviceArray(self, size)
            setattr(self._local, key, a)
        return a

    def _work(self, n=1):
        """(the device workspace's pointer, its size in bytes): the last two arguments of a call."""
        nbytes = int(self._ws_size(n))
        size = -(-nbytes // self.dtype.itemsize)
        return self.ffi.cast("void *", self._scratch("ws", size).ptr), size * self.dtype.itemsize

    def _per_sample_fn(self, what):
        raise ValueError(f"{what}: per-sample gradients (sample weights, DP-SGD's clipping) are built for "
                         "target c only; compile this model with --target c to use them")

    def _check(self, rc, fn, data=None):
        if rc == ECUDA:
            raise RuntimeError(f"{fn}: CUDA failed: {self._error_text()}")
        super()._check(rc, fn, data)

    # ---- parameters ----------------------------------------------------
    def to_device(self, params):
        """The parameters (a ``Params`` or a dict of arrays) copied into GPU memory: a ``DeviceParams``.

        Example: ``dp = mod.to_device(mod.init_params(seed=0))``.
        """
        if isinstance(params, DeviceParams):
            return params
        flat = self._flat_params(params)
        return DeviceParams(self, DeviceArray(self, self.n_params).copy_from(flat))

    def to_host(self, dparams):
        """A ``Params`` (host numpy views of one flat buffer) copied from ``DeviceParams``.

        Example: ``p = mod.to_host(dp); p["W1"]``.
        """
        if not isinstance(dparams, DeviceParams) or dparams._c is not self:
            raise ValueError(f"to_host: expected the DeviceParams of this model (from to_device), "
                             f"got {type(dparams).__name__}")
        return Params(dparams.flat.numpy(), self.params)

    def _device_params(self, params):
        """A device pointer to the parameters: theirs when on the device, else a copy in scratch."""
        if isinstance(params, DeviceParams):
            if params._c is not self:
                raise ValueError("these DeviceParams belong to another model")
            return self._dev(params.flat)
        flat = self._flat_params(params)
        return self._dev(self._scratch("p", self.n_params).copy_from(flat))

    # ---- the contract --------------------------------------------------
    def forward(self, params, dropout_rng=None, **inputs):
        """The outputs for a batch, as host arrays; ``params`` on the host or the device.

        Example: ``mod.forward(dp, x=X)["score"]``.
        """
        dp = self._device_params(params)
        n, arrays = self._data(inputs, self.info.inputs, "input", dropout_rng)
        outs = {o.name: np.empty((n, *o.shape), dtype=self.dtype) for o in self.info.outputs}
        rc = self._fwd(n, dp, *[self._ptr(a) for a in arrays], *[self._ptr(o) for o in outs.values()],
                       *self._work(n))
        self._check(rc, "forward", inputs)
        return outs

    def loss(self, params, dropout_rng=None, **data):
        """The mean loss over the batch plus regularization, computed on the GPU.

        Example: ``mod.loss(dp, x=X, y=Y)``.
        """
        dp = self._device_params(params)
        n, arrays = self._data(data, self._specs, "input or target", dropout_rng)
        out = np.empty(1, dtype=self.dtype)
        rc = self._loss(n, dp, *[self._ptr(a) for a in arrays], self._ptr(out), *self._work(n))
        self._check(rc, "loss", data)
        return float(out[0])

    def _run_lg(self, fn, dp, data, dropout_rng, extra=()):
        n, arrays = self._data(data, self._specs, "input or target", dropout_rng)
        out = np.empty(1, dtype=self.dtype)
        g = self._scratch("g", self.n_params)
        rc = fn(n, dp, *[self._ptr(a) for a in arrays], *extra, self._ptr(out), self._dev(g), *self._work(n))
        return rc, float(out[0]), g

    def loss_and_grad(self, params, dropout_rng=None, **data):
        """(loss, grads) with host arrays, as for the C target; the gradient is computed on the GPU.

        Example: ``L, g = mod.loss_and_grad(dp, x=X, y=Y)``.
        """
        rc, L, g = self._run_lg(self._lg, self._device_params(params), data, dropout_rng)
        self._check(rc, "loss_and_grad", data)
        return L, Params(g.numpy(out=np.empty(self.n_params, self.dtype)), self.params)

    def sgd_step(self, params, lr, dropout_rng=None, **data):
        """One SGD step on the GPU. With ``DeviceParams`` nothing but the batch and the loss crosses
        the bus; with host ``Params`` they are copied in and back.

        Example: ``L = mod.sgd_step(dp, 0.1, x=X, y=Y)``.
        """
        lr = checked_rate(lr, "sgd_step", "lr")
        if isinstance(params, DeviceParams):
            key = claim_params(params.flat, "sgd_step")
            try:
                rc, L, _ = self._run_lg(self._sgd, self._device_params(params), data, dropout_rng, (lr,))
            finally:
                release_params(key)
            self._check(rc, "sgd_step", data)
            return L
        return self.sgd_step_flat(self._writable_flat(params, "sgd_step"), lr, data, dropout_rng)

    def sgd_step_flat(self, flat, lr, data, dropout_rng=None):
        """``sgd_step`` on a host flat parameter buffer: copied to the GPU, stepped, copied back.

        Example: ``L = rt.sgd_step_flat(p.flat, 0.1, {"x": X, "y": Y})``.
        """
        return super().sgd_step_flat(flat, lr, data, dropout_rng)      # claims flat, then _sgd_flat

    def _sgd_flat(self, flat, lr, data, dropout_rng):
        dp = self._scratch("p", self.n_params).copy_from(flat)
        rc, L, _ = self._run_lg(self._sgd, self._dev(dp), data, dropout_rng, (lr,))
        self._check(rc, "sgd_step", data)
        dp.numpy(out=flat)
        return L

    def adam_state(self):
        """Fresh Adam state in GPU memory: ``{"step": 0, "exp_avg": DeviceArray, "exp_avg_sq": DeviceArray}``.

        Example: ``st = mod.adam_state(); mod.adam_step(dp, st, x=X, y=Y)``.
        """
        zeros = np.zeros(self.n_params, self.dtype)
        return {"step": 0, "exp_avg": DeviceArray(self, self.n_params).copy_from(zeros),
                "exp_avg_sq": DeviceArray(self, self.n_params).copy_from(zeros)}

    def adam_step(self, params, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, dropout_rng=None, **data):
        """One Adam step on the GPU (``state`` from ``adam_state()``); returns the loss before it.

        Example: ``L = mod.adam_step(dp, st, lr=1e-3, x=X, y=Y)``.
        """
        if not isinstance(params, DeviceParams):
            return super().adam_step(params, state, lr, betas, eps, dropout_rng, **data)
        lr, beta1, beta2, eps = adam_hyper(lr, betas, eps)
        m, v = (state.get(k) if hasattr(state, "get") else None for k in ("exp_avg", "exp_avg_sq"))
        if not (isinstance(m, DeviceArray) and isinstance(v, DeviceArray) and m.size == v.size == self.n_params
                and "step" in state):
            raise ValueError("adam_step: with DeviceParams, state must be the dict adam_state() returns")
        dp = self._device_params(params)
        key = claim_params(params.flat, "adam_step")
        try:
            rc, L, g = self._run_lg(self._lg, dp, data, dropout_rng)
            self._check(rc, "adam_step", data)
            t = int(state["step"]) + 1
            rc = self._apply_fn("adam")(dp, self._dev(g), self._dev(m), self._dev(v),
                                        *adam_apply_scalars(lr, beta1, beta2, eps, t))
            self._check(rc, "adam_step")
            state["step"] = t
        finally:
            release_params(key)
        return L

    def apply_step_flat(self, rule, flat, buffers, scalars, data, dropout_rng=None):
        """``CModule.apply_step_flat`` on host flat buffers: copied to the GPU, stepped, copied back.

        Example: ``L = rt.apply_step_flat("adam", p.flat, (m, v), scalars, {"x": X, "y": Y})``.
        """
        return super().apply_step_flat(rule, flat, buffers, scalars, data, dropout_rng)

    def _apply_flat(self, fn, rule, flat, buffers, scalars, data, dropout_rng):
        dp = self._scratch("p", self.n_params).copy_from(flat)
        dbufs = [self._scratch(f"state{i}", self.n_params).copy_from(b) for i, b in enumerate(buffers)]
        rc, L, g = self._run_lg(self._lg, self._dev(dp), data, dropout_rng)
        self._check(rc, f"{rule}_step", data)
        rc = fn(self._dev(dp), self._dev(g), *[self._dev(b) for b in dbufs], *scalars)
        self._check(rc, f"{rule}_step")
        dp.numpy(out=flat)
        for b, host in zip(dbufs, buffers):
            b.numpy(out=host)
        return L
