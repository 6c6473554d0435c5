"""Optimizers for parameter dicts, with PyTorch's names and update rules.

Parameters are a dict ``name -> numpy array`` (float32 or float64); gradients
are a dict with the same names and shapes, as ``mod.loss_and_grad`` returns.
Each optimizer updates the caller's arrays in place::

    import gradc.optim as optim
    opt = optim.Adam(p, lr=1e-3)
    for epoch in range(100):
        L, g = mod.loss_and_grad(p, x=X, y=Y)
        opt.step(g)                 # p's arrays change in place

The updates are those of ``torch.optim`` (single-tensor, ``foreach=False``
code path), with the floating-point operations in the same order, so a
float64 run agrees with PyTorch to rounding (PyTorch's vectorised CPU kernels
fuse some multiply-adds, which numpy cannot, so agreement is to ~1e-15, not
bit for bit).

Per-parameter hyperparameters and freezing replace PyTorch's parameter
groups::

    opt = optim.Adam(p, lr=1e-3, options={"W1": {"lr": 1e-4}}, frozen=["b1"])

Learning-rate schedules live in :mod:`gradc.optim.lr_scheduler`.
"""
import math
from collections.abc import Mapping

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "clip_grad_norm",
           "clip_grad_norm_", "lr_scheduler"]


# ---- option checking ------------------------------------------------------------

def _real(where, key, value, lo=None, lo_open=False, hi=None, hi_open=False):
    """``value`` as a Python float, or ValueError naming ``key``.

    Python floats (not numpy scalars) matter: under NEP 50 a numpy float64
    scalar would promote float32 parameters to float64.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: option {key!r} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{where}: option {key!r} must be finite, got {v!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{where}: option {key!r} must be {'>' if lo_open else '>='} {lo}, got {v!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{where}: option {key!r} must be {'<' if hi_open else '<='} {hi}, got {v!r}")
    return v


def _flag(where, key, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: option {key!r} must be True or False, got {value!r}")
    return bool(value)


def _betas(where, value):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{where}: option 'betas' must be a pair (beta1, beta2), got {value!r}")
    return (_real(where, "betas[0]", value[0], lo=0.0, hi=1.0, hi_open=True),
            _real(where, "betas[1]", value[1], lo=0.0, hi=1.0, hi_open=True))


def _lerp_(a, b, w):
    """``a`` moved toward ``b`` by weight ``w``, in place, as ``torch.lerp`` rounds it.

    torch switches formula at |w| = 0.5 so that w = 0 gives ``a`` and w = 1 gives
    ``b`` exactly; the weight is taken in the array's dtype first, as torch does.
    """
    w = a.dtype.type(w)
    if abs(w) < 0.5:
        a += w * (b - a)
    else:
        a[...] = b - (b - a) * (1 - w)


# ---- base class -----------------------------------------------------------------

class Optimizer:
    """Base class: per-parameter hyperparameters, freezing, state, checkpoints.

    Subclasses define ``_DEFAULTS`` (the constructor's hyperparameters, in
    order), ``_check`` (validates one full hyperparameter dict), ``_state_keys``
    (the buffers a parameter's state holds) and ``_update`` (one step of one
    parameter). Users construct a subclass. Example::

        opt = Adam(p, lr=1e-3, options={"W": {"lr": 1e-4}}, frozen=["b"])
        opt.step(g)
        opt.hyper("W")["lr"]        # 1e-4
    """

    _DEFAULTS = {}

    def __init__(self, params, hyper, options=None, frozen=None, unknown=None):
        name = type(self).__name__
        for k in (unknown or {}):
            raise ValueError(f"{name}: unknown option {k!r}")
        if not isinstance(params, Mapping):
            raise ValueError(f"{name}: params must be a dict name -> numpy array, got {type(params).__name__}")
        if not params:
            raise ValueError(f"{name}: got an empty parameter dict")
        for k, v in params.items():
            if not isinstance(k, str):
                raise ValueError(f"{name}: parameter names must be strings, got {k!r}")
            if not isinstance(v, np.ndarray):
                raise ValueError(f"{name}: parameter {k!r} must be a numpy array (updated in place), "
                                 f"got {type(v).__name__}")
            if v.dtype.kind != "f":
                raise ValueError(f"{name}: parameter {k!r} must have a floating dtype, got {v.dtype}")
            if not v.flags.writeable:
                raise ValueError(f"{name}: parameter {k!r} is a read-only array; the optimizer updates it in place")
        # a new dict of the very same arrays: later additions to the caller's dict do not leak in
        self.params = dict(params)
        # when the arrays are views of one flat buffer (gradc's Params), a step can be one update
        self._flat_p = getattr(params, "flat", None)
        self._flat_st = None
        self._fused = None            # (module, kind) when train_step can be one C call
        self._unfused = None          # the module it cannot be one call for

        if frozen is None:
            frozen = ()
        elif isinstance(frozen, str):
            frozen = (frozen,)
        frozen_set = set()
        for k in frozen:
            if k not in self.params:
                raise ValueError(f"{name}: frozen names unknown parameter {k!r}")
            frozen_set.add(k)

        defaults = self._check(dict(hyper), name)
        #: the constructor's hyperparameters (before per-parameter options)
        self.defaults = defaults
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ValueError(f"{name}: options must be a dict parameter name -> dict of options")
        for k in options:
            if k not in self.params:
                raise ValueError(f"{name}: options names unknown parameter {k!r}")

        self._hyper = {}
        for k in self.params:
            h = dict(defaults)
            opts = options.get(k, {})
            if not isinstance(opts, Mapping):
                raise ValueError(f"{name}: options[{k!r}] must be a dict of options, got {type(opts).__name__}")
            where = f"{name}: options[{k!r}]"
            for o, v in opts.items():
                if o == "frozen":
                    if _flag(where, o, v):
                        frozen_set.add(k)
                    elif k in frozen_set:
                        raise ValueError(f"{where}: 'frozen': False contradicts frozen={sorted(frozen_set)}")
                elif o in self._DEFAULTS:
                    h[o] = v
                else:
                    raise ValueError(f"{where}: unknown option {o!r}")
            h = self._check(h, where)
            h["frozen"] = k in frozen_set
            self._hyper[k] = h

        #: {name: current learning rate} of the trainable parameters; schedulers write here
        self.lr = {k: h["lr"] for k, h in self._hyper.items() if not h["frozen"]}
        self._state = {}
        # the lr each parameter had when the first scheduler was attached (torch's group["initial_lr"])
        self._initial_lr = {}

    # -- introspection --

    @property
    def trainable(self):
        """Names of the parameters that ``step`` updates, in dict order.

        Example::

            Adam(p, frozen=["b"]).trainable      # ['W']
        """
        return [k for k, h in self._hyper.items() if not h["frozen"]]

    @property
    def frozen(self):
        """Names of the frozen parameters (never touched, no state).

        Example::

            Adam(p, frozen=["b"]).frozen          # ['b']
        """
        return [k for k, h in self._hyper.items() if h["frozen"]]

    def hyper(self, name):
        """A copy of parameter ``name``'s hyperparameters, with its current lr and ``frozen`` flag.

        Example::

            opt = SGD(p, lr=0.1, options={"W": {"momentum": 0.9}})
            opt.hyper("W")     # {'lr': 0.1, 'momentum': 0.9, 'dampening': 0.0, ..., 'frozen': False}
        """
        if name not in self._hyper:
            raise ValueError(f"{type(self).__name__}: unknown parameter {name!r}")
        h = dict(self._hyper[name])
        if name in self.lr:
            h["lr"] = self.lr[name]
        return h

    def state(self, name):
        """The live state dict of parameter ``name`` (``{}`` before its first step or when frozen).

        Example::

            opt.step(g); opt.state("W")["exp_avg"]      # Adam's first moment of W
        """
        if name not in self._hyper:
            raise ValueError(f"{type(self).__name__}: unknown parameter {name!r}")
        return self._state.get(name, {})

    def __repr__(self):
        hs = ", ".join(f"{k}={v!r}" for k, v in self.defaults.items())
        fr = self.frozen
        return (f"{type(self).__name__}({hs}; {len(self.params)} parameters"
                + (f", frozen {fr}" if fr else "") + ")")

    # -- stepping --

    def step(self, grads):
        """One update of every trainable parameter, in place, from ``grads``.

        ``grads`` must hold a gradient of the parameter's shape for every
        trainable parameter (frozen ones may be missing; theirs are ignored).
        All gradients are checked before any parameter changes.

        Example::

            L, g = mod.loss_and_grad(p, x=X, y=Y)
            opt.step(g)
        """
        name = type(self).__name__
        if not isinstance(grads, Mapping):
            raise ValueError(f"{name}.step: grads must be a dict name -> array, got {type(grads).__name__}")
        for k in grads:
            if k not in self.params:
                raise ValueError(f"{name}.step: gradient for unknown parameter {k!r}")
        if self._step_flat(grads):
            return
        todo = []
        for k in self.trainable:
            p = self.params[k]
            if k not in grads:
                raise ValueError(f"{name}.step: missing gradient for parameter {k!r}")
            g = grads[k]
            g = np.asarray(g)
            if g.dtype.kind not in "fiu":
                raise ValueError(f"{name}.step: gradient for {k!r} must be real numbers, got dtype {g.dtype}")
            if g.shape != p.shape:
                raise ValueError(f"{name}.step: gradient for {k!r} has shape {g.shape}, "
                                 f"but the parameter has shape {p.shape}")
            lr = self.lr.get(k)
            if isinstance(lr, (bool, np.bool_)) or not isinstance(lr, (int, float, np.integer, np.floating)) \
                    or not 0 <= lr < math.inf:
                raise ValueError(f"{name}.step: opt.lr[{k!r}] must be a finite number >= 0, got {lr!r}")
            lr = float(lr)
            # the gradient is only ever read: updates build new arrays, never write into it
            todo.append((k, p, g.astype(p.dtype, copy=False), lr))
        for k, p, g, lr in todo:
            st = self._state.get(k)
            if st is None:
                st = self._state[k] = self._init_state(p, self._hyper[k])
            self._update(p, g, lr, self._hyper[k], st)

    def train_step(self, module, dropout_rng=None, **batch):
        """One training step on a batch: ``module.loss_and_grad`` then ``step``; returns the loss.

        When the whole update is plain SGD (no momentum, weight decay or maximize) or plain
        Adam (no weight decay, amsgrad or maximize) with one learning rate for all parameters,
        and the parameters are the module's ``Params``, the step is one call into the
        generated C (``sgd_step``, or ``loss_grad`` + ``adam_apply``): no gradient dict and no
        numpy temporaries. Otherwise it is the two calls. Both agree to rounding; the state
        (``state_dict``) is the same either way.

        Example::

            opt = Adam(p, lr=1e-3)
            for X, Y in batches:
                L = opt.train_step(mod, x=X, y=Y)
        """
        c = getattr(module, "_compiled", None)
        kind = self._fused_kind(c)
        if kind is not None:
            lr = float(next(iter(self.lr.values())))
            if 0 <= lr < math.inf:
                st = self._flat_st
                if kind == "sgd":
                    L = c._sgd_flat(self._flat_p, lr, batch, dropout_rng)
                else:
                    beta1, beta2 = self._flat_hyper["betas"]
                    L = c._adam_flat(self._flat_p, st["exp_avg"], st["exp_avg_sq"], st["step"] + 1,
                                     lr, beta1, beta2, self._flat_hyper["eps"], batch, dropout_rng)
                st["step"] += 1
                for s in self._state.values():
                    s["step"] = st["step"]
                return L
        L, g = module.loss_and_grad(self.params, dropout_rng=dropout_rng, **batch)
        self.step(g)
        return L

    def _fused_kind(self, c):
        """"sgd" or "adam" when ``train_step`` can run as one C call for compiled model ``c``."""
        if c is None or self._flat_p is None:
            return None
        if (self._fused is None or self._fused[0] is not c) and self._unfused is not c:
            # decided once per model (load_state_dict resets it)
            kind = self._fusion(c)
            self._fused, self._unfused = ((c, kind), None) if kind else (None, c)
        if self._fused is None:
            return None
        # a scheduler may give parameters different learning rates at any step
        return self._fused[1] if len(self.lr) == len(self.params) and len(set(self.lr.values())) == 1 else None

    def _fusion(self, c):
        fp = self._flat_p
        hs = list(self._hyper.values())
        if hs[0]["frozen"] or any(h != hs[0] for h in hs[1:]):
            return None
        kind = self._fusable(hs[0])
        if kind is None or not hasattr(c, "_sgd_flat") or fp.dtype != c.dtype or fp.shape != (c.n_params,) \
                or len(self.params) != len(c.params) or not fp.flags.writeable or not fp.flags.c_contiguous:
            return None
        base = fp.__array_interface__["data"][0]
        for q in c.params:      # the dict's arrays are the views of c's layout
            a = self.params.get(q["name"])
            if a is None or a.__array_interface__["data"][0] != base + q["offset"] * fp.itemsize \
                    or a.size != q["size"]:
                return None
        if self._flat_st is None:
            self._gather_state(fp, hs[0])
        return kind if kind != "adam" or "exp_avg" in self._flat_st else None

    def _fusable(self, h):
        """The fused C update that equals ``_update`` with hyperparameters ``h``, or None."""
        return None

    def _init_state(self, p, h):
        return {"step": 0}

    def _step_flat(self, grads):
        """One vectorized update of the whole flat buffer, when parameters and gradients are flat
        buffers laid out alike and every parameter has the same hyperparameters and lr."""
        fp, fg = self._flat_p, getattr(grads, "flat", None)
        if fp is None or fg is None or fg.shape != fp.shape or len(grads) != len(self.params):
            return False
        if self._flat_st is None:
            hs = list(self._hyper.values())
            if hs[0]["frozen"] or any(h != hs[0] for h in hs[1:]):
                return False
            self._gather_state(fp, hs[0])
        lrs = set(self.lr.values())
        if len(lrs) != 1:
            return False
        lr = float(lrs.pop())
        if not 0 <= lr < math.inf:
            return False
        g = fg if fg.dtype == fp.dtype else fg.astype(fp.dtype)
        n_entries = len(self._flat_st)
        self._update(fp, g, lr, self._flat_hyper, self._flat_st)
        if len(self._flat_st) != n_entries:
            self._point_views()           # a buffer was created (SGD's momentum on its first step)
        step = self._flat_st["step"]
        for st in self._state.values():
            st["step"] = step
        return True

    def _gather_state(self, fp, h):
        """The flat state: the per-parameter states concatenated (or fresh), which then become views."""
        self._flat_hyper = h
        if not self._state:
            self._flat_st = self._init_state(fp, h)
        else:
            sts = [self._state[k] for k in self.params]
            flat = {"step": sts[0]["step"]}
            for key in sts[0]:
                if key != "step" and all(isinstance(st.get(key), np.ndarray) for st in sts):
                    flat[key] = np.concatenate([st[key].reshape(-1) for st in sts]).astype(fp.dtype)
            self._flat_st = flat
        self._point_views()
        return self._flat_st

    def _point_views(self):
        off = 0
        for k, p in self.params.items():
            st = self._state.setdefault(k, {})
            for key, v in self._flat_st.items():
                st[key] = v[off:off + p.size].reshape(p.shape) if isinstance(v, np.ndarray) else v
            off += p.size

    # -- checkpoints --

    def state_dict(self):
        """A copy of everything the optimizer knows, as nested dicts with str keys.

        ``{"hyper": {name: {option: value, ..., "frozen": bool}},
        "state": {name: {"step": int, buffer: ndarray, ...}},
        "initial_lr": {name: float}}``. Leaves are numpy arrays (copies),
        ints, floats, bools and tuples of floats; parameters that have not
        stepped yet (and frozen ones) have no ``state`` entry.

        Example::

            sd = opt.state_dict()
            opt2 = Adam(p); opt2.load_state_dict(sd)   # continues bit-identically
        """
        return {
            "hyper": {k: self.hyper(k) for k in self._hyper},
            "state": {k: {s: (v.copy() if isinstance(v, np.ndarray) else v) for s, v in st.items()}
                      for k, st in self._state.items()},
            "initial_lr": dict(self._initial_lr),
        }

    def load_state_dict(self, state_dict):
        """Restore hyperparameters, learning rates and state exactly (bit for bit).

        Checks names, option values, buffer names and shapes first and raises
        ``ValueError`` naming the problem; on error nothing changes. Buffers are
        copied in (and cast to the parameter's dtype, as torch does).

        Example::

            opt = Adam(p)
            opt.load_state_dict(saved)
        """
        name = type(self).__name__
        where = f"{name}.load_state_dict"
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{where}: expected a dict, got {type(state_dict).__name__}")
        for k in state_dict:
            if k not in ("hyper", "state", "initial_lr"):
                raise ValueError(f"{where}: unexpected key {k!r}")
        for k in ("hyper", "state"):
            if not isinstance(state_dict.get(k), Mapping):
                raise ValueError(f"{where}: missing or malformed {k!r} entry")
        hyper_in, state_in = state_dict["hyper"], state_dict["state"]
        for k in self.params:
            if k not in hyper_in:
                raise ValueError(f"{where}: no entry for parameter {k!r}")
        for k in hyper_in:
            if k not in self.params:
                raise ValueError(f"{where}: unknown parameter {k!r}")

        hyper = {}
        for k, h in hyper_in.items():
            w = f"{where}: hyper[{k!r}]"
            if not isinstance(h, Mapping):
                raise ValueError(f"{w}: expected a dict of options")
            for o in h:
                if o not in self._DEFAULTS and o != "frozen":
                    raise ValueError(f"{w}: unknown option {o!r}")
            for o in list(self._DEFAULTS) + ["frozen"]:
                if o not in h:
                    raise ValueError(f"{w}: missing option {o!r}")
            hh = self._check({o: h[o] for o in self._DEFAULTS}, w)
            hh["frozen"] = _flag(w, "frozen", h["frozen"])
            hyper[k] = hh

        state = {}
        for k, st in state_in.items():
            w = f"{where}: state[{k!r}]"
            if k not in self.params:
                raise ValueError(f"{w}: unknown parameter {k!r}")
            if hyper[k]["frozen"]:
                raise ValueError(f"{w}: parameter {k!r} is frozen and cannot have state")
            if not isinstance(st, Mapping):
                raise ValueError(f"{w}: expected a dict")
            want = ("step",) + self._state_keys(hyper[k])
            for s in st:
                if s not in want:
                    raise ValueError(f"{w}: unexpected state entry {s!r}")
            for s in want:
                if s not in st:
                    raise ValueError(f"{w}: missing state entry {s!r}")
            step = st["step"]
            if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 1:
                raise ValueError(f"{w}: 'step' must be an int >= 1, got {step!r}")
            new = {"step": int(step)}
            p = self.params[k]
            for s in want[1:]:
                a = st[s]
                if not isinstance(a, np.ndarray):
                    raise ValueError(f"{w}: {s!r} must be a numpy array, got {type(a).__name__}")
                if a.shape != p.shape:
                    raise ValueError(f"{w}: {s!r} has shape {a.shape}, but parameter {k!r} has shape {p.shape}")
                if a.dtype.kind not in "fiu":
                    raise ValueError(f"{w}: {s!r} has dtype {a.dtype}, expected a real floating array")
                new[s] = np.array(a, dtype=p.dtype, copy=True)
            state[k] = new

        init = state_dict.get("initial_lr", {})
        if not isinstance(init, Mapping):
            raise ValueError(f"{where}: 'initial_lr' must be a dict name -> float")
        initial_lr = {}
        for k, v in init.items():
            if k not in self.params:
                raise ValueError(f"{where}: initial_lr: unknown parameter {k!r}")
            initial_lr[k] = _real(f"{where}: initial_lr[{k!r}]", "lr", v, lo=0.0)

        self._hyper = hyper
        self._state = state
        self._initial_lr = initial_lr
        # mutate rather than rebind: schedulers and users may hold opt.lr
        self.lr.clear()
        self.lr.update({k: h["lr"] for k, h in hyper.items() if not h["frozen"]})
        self._flat_st = None          # the loaded arrays replace the views: gather them again
        self._fused = self._unfused = None


# ---- the optimizers -------------------------------------------------------------

class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, as ``torch.optim.SGD``.

    Per step, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p                       (if weight_decay != 0)
        b = g (first step) | momentum * b + (1 - dampening) * g
        g = g + momentum * b (nesterov) | b            (if momentum != 0)
        p = p - lr * g

    Example::

        opt = SGD(p, lr=0.1, momentum=0.9, nesterov=True)
        opt.step(g)
    """

    _DEFAULTS = dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False, *, options=None, frozen=None, **unknown):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize), options, frozen, unknown)

    @staticmethod
    def _check(h, where):
        out = dict(lr=_real(where, "lr", h["lr"], lo=0.0),
                   momentum=_real(where, "momentum", h["momentum"], lo=0.0),
                   dampening=_real(where, "dampening", h["dampening"]),
                   weight_decay=_real(where, "weight_decay", h["weight_decay"], lo=0.0),
                   nesterov=_flag(where, "nesterov", h["nesterov"]),
                   maximize=_flag(where, "maximize", h["maximize"]))
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"{where}: option 'nesterov' requires momentum > 0 and dampening == 0")
        return out

    @staticmethod
    def _state_keys(h):
        return ("momentum_buffer",) if h["momentum"] != 0 else ()

    def _fusable(self, h):
        return "sgd" if h["momentum"] == 0 and h["weight_decay"] == 0 and not h["maximize"] else None

    @staticmethod
    def _update(p, g, lr, h, st):
        st["step"] += 1
        momentum, wd = h["momentum"], h["weight_decay"]
        if h["maximize"]:
            g = -g
        if wd != 0:
            g = g + wd * p
        if momentum != 0:
            buf = st.get("momentum_buffer")
            if buf is None:
                # a copy: the caller's gradient array may be reused for the next batch
                buf = st["momentum_buffer"] = np.array(g, copy=True)
            else:
                buf *= momentum
                buf += (1 - h["dampening"]) * g
            g = g + momentum * buf if h["nesterov"] else buf
        p -= lr * g


class Adam(Optimizer):
    """Adam (and AMSGrad), as ``torch.optim.Adam``.

    Per step t, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p                       (if weight_decay != 0)
        m = lerp(m, g, 1 - beta1);  v = beta2 * v + (1 - beta2) * g * g
        vmax = max(vmax, v)                            (amsgrad: v below means vmax)
        step_size = lr / (1 - beta1**t)
        denom = sqrt(v) / sqrt(1 - beta2**t) + eps
        p = p - step_size * m / denom

    Example::

        opt = Adam(p, lr=1e-3, betas=(0.9, 0.999), amsgrad=True)
        opt.step(g)
    """

    _DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False)
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 maximize=False, *, options=None, frozen=None, **unknown):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize), options, frozen, unknown)

    @staticmethod
    def _check(h, where):
        return dict(lr=_real(where, "lr", h["lr"], lo=0.0),
                    betas=_betas(where, h["betas"]),
                    eps=_real(where, "eps", h["eps"], lo=0.0),
                    weight_decay=_real(where, "weight_decay", h["weight_decay"], lo=0.0),
                    amsgrad=_flag(where, "amsgrad", h["amsgrad"]),
                    maximize=_flag(where, "maximize", h["maximize"]))

    @staticmethod
    def _state_keys(h):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if h["amsgrad"] else ())

    def _fusable(self, h):
        return "adam" if h["weight_decay"] == 0 and not h["amsgrad"] and not h["maximize"] else None

    def _init_state(self, p, h):
        st = {"step": 0, "exp_avg": np.zeros_like(p), "exp_avg_sq": np.zeros_like(p)}
        if h["amsgrad"]:
            st["max_exp_avg_sq"] = np.zeros_like(p)
        return st

    def _update(self, p, g, lr, h, st):
        st["step"] += 1
        t = st["step"]
        beta1, beta2 = h["betas"]
        wd = h["weight_decay"]
        if h["maximize"]:
            g = -g
        if wd != 0:
            if self._decoupled:
                p *= 1 - lr * wd
            else:
                g = g + wd * p
        m, v = st["exp_avg"], st["exp_avg_sq"]
        _lerp_(m, g, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * g * g
        bias_correction1 = 1 - beta1 ** t
        bias_correction2 = 1 - beta2 ** t
        step_size = lr / bias_correction1
        # ** 0.5 rather than math.sqrt: the exact scalar torch computes
        bias_correction2_sqrt = bias_correction2 ** 0.5
        if h["amsgrad"]:
            vmax = st["max_exp_avg_sq"]
            np.maximum(vmax, v, out=vmax)
            denom = np.sqrt(vmax) / bias_correction2_sqrt + h["eps"]
        else:
            denom = np.sqrt(v) / bias_correction2_sqrt + h["eps"]
        p -= step_size * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``.

    Like :class:`Adam`, except that weight decay shrinks the parameter before
    the update (``p = p * (1 - lr * weight_decay)``) instead of adding to the
    gradient. The default ``weight_decay`` is 1e-2.

    Example::

        opt = AdamW(p, lr=1e-3, weight_decay=0.05, options={"b": {"weight_decay": 0.0}})
        opt.step(g)
    """

    _DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, maximize=False)
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False, *, options=None, frozen=None, **unknown):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, options=options, frozen=frozen, **unknown)


class RMSprop(Optimizer):
    """RMSprop (optionally centered, with momentum), as ``torch.optim.RMSprop``.

    Per step, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p                       (if weight_decay != 0)
        v = alpha * v + (1 - alpha) * g * g
        centered: ga = lerp(ga, g, 1 - alpha); avg = sqrt(v - ga * ga) + eps
        else:     avg = sqrt(v) + eps
        momentum > 0: b = momentum * b + g / avg; p = p - lr * b   (b starts at 0)
        else:         p = p - lr * g / avg

    Example::

        opt = RMSprop(p, lr=1e-2, centered=True, momentum=0.9)
        opt.step(g)
    """

    _DEFAULTS = dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                     maximize=False)

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 maximize=False, *, options=None, frozen=None, **unknown):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize), options, frozen, unknown)

    @staticmethod
    def _check(h, where):
        return dict(lr=_real(where, "lr", h["lr"], lo=0.0),
                    alpha=_real(where, "alpha", h["alpha"], lo=0.0),
                    eps=_real(where, "eps", h["eps"], lo=0.0),
                    weight_decay=_real(where, "weight_decay", h["weight_decay"], lo=0.0),
                    momentum=_real(where, "momentum", h["momentum"], lo=0.0),
                    centered=_flag(where, "centered", h["centered"]),
                    maximize=_flag(where, "maximize", h["maximize"]))

    @staticmethod
    def _state_keys(h):
        return (("square_avg",) + (("momentum_buffer",) if h["momentum"] > 0 else ())
                + (("grad_avg",) if h["centered"] else ()))

    def _init_state(self, p, h):
        st = {"step": 0, "square_avg": np.zeros_like(p)}
        if h["momentum"] > 0:
            st["momentum_buffer"] = np.zeros_like(p)
        if h["centered"]:
            st["grad_avg"] = np.zeros_like(p)
        return st

    @staticmethod
    def _update(p, g, lr, h, st):
        st["step"] += 1
        alpha, wd, momentum = h["alpha"], h["weight_decay"], h["momentum"]
        if h["maximize"]:
            g = -g
        if wd != 0:
            g = g + wd * p
        v = st["square_avg"]
        v *= alpha
        v += (1 - alpha) * g * g
        if h["centered"]:
            ga = st["grad_avg"]
            _lerp_(ga, g, 1 - alpha)
            avg = np.sqrt(v - ga * ga)
        else:
            avg = np.sqrt(v)
        avg += h["eps"]
        if momentum > 0:
            buf = st["momentum_buffer"]
            buf *= momentum
            buf += g / avg
            p -= lr * buf
        else:
            p -= lr * g / avg


class Adagrad(Optimizer):
    """Adagrad, as ``torch.optim.Adagrad``.

    Per step t, with ``g`` the gradient (negated when ``maximize``)::

        g = g + weight_decay * p                       (if weight_decay != 0)
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g * g                                  (s starts at initial_accumulator_value)
        p = p - clr * g / (sqrt(s) + eps)

    Example::

        opt = Adagrad(p, lr=1e-2, lr_decay=1e-3)
        opt.step(g)
    """

    _DEFAULTS = dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                     maximize=False)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
                 maximize=False, *, options=None, frozen=None, **unknown):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps,
                                      maximize=maximize), options, frozen, unknown)

    @staticmethod
    def _check(h, where):
        return dict(lr=_real(where, "lr", h["lr"], lo=0.0),
                    lr_decay=_real(where, "lr_decay", h["lr_decay"], lo=0.0),
                    weight_decay=_real(where, "weight_decay", h["weight_decay"], lo=0.0),
                    initial_accumulator_value=_real(where, "initial_accumulator_value",
                                                    h["initial_accumulator_value"], lo=0.0),
                    eps=_real(where, "eps", h["eps"], lo=0.0),
                    maximize=_flag(where, "maximize", h["maximize"]))

    @staticmethod
    def _state_keys(h):
        return ("sum",)

    def _init_state(self, p, h):
        return {"step": 0, "sum": np.full_like(p, h["initial_accumulator_value"])}

    @staticmethod
    def _update(p, g, lr, h, st):
        st["step"] += 1
        t = st["step"]
        if h["maximize"]:
            g = -g
        if h["weight_decay"] != 0:
            g = g + h["weight_decay"] * p
        clr = lr / (1 + (t - 1) * h["lr_decay"])
        s = st["sum"]
        s += g * g
        std = np.sqrt(s)
        std += h["eps"]
        p -= clr * g / std


# ---- gradient clipping ----------------------------------------------------------

def clip_grad_norm(grads, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients in place so that their global norm is at most ``max_norm``.

    Like ``torch.nn.utils.clip_grad_norm_``: the total norm is the
    ``norm_type``-norm of the per-array norms (= the norm of all entries
    together); when ``clip_coef = max_norm / (total + 1e-6)`` is below 1 every
    gradient is multiplied by it. Returns the total norm (before clipping) as a
    float. ``norm_type`` is a positive number or ``inf`` (``"inf"``). Norms are
    accumulated in float64 so float32 gradients cannot overflow the sum. A
    non-finite total raises ``RuntimeError`` when ``error_if_nonfinite``;
    otherwise, as in torch, the gradients are multiplied by the resulting
    ``nan``/0 coefficient.

    Example::

        L, g = mod.loss_and_grad(p, x=X, y=Y)
        total = clip_grad_norm(g, max_norm=1.0)
        opt.step(g)
    """
    where = "clip_grad_norm"
    if not isinstance(grads, Mapping):
        raise ValueError(f"{where}: grads must be a dict name -> array, got {type(grads).__name__}")
    max_norm = _real(where, "max_norm", max_norm, lo=0.0)
    if isinstance(norm_type, str) and norm_type.lower() == "inf":
        norm_type = math.inf
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, (int, float, np.integer, np.floating)) \
            or not norm_type > 0:
        raise ValueError(f"{where}: option 'norm_type' must be a positive number or inf, got {norm_type!r}")
    norm_type = float(norm_type)
    for k, g in grads.items():
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            raise ValueError(f"{where}: gradient {k!r} must be a floating numpy array (scaled in place)")
        if not g.flags.writeable:
            raise ValueError(f"{where}: gradient {k!r} is read-only; it is scaled in place")
    if not grads:
        return 0.0
    norms = np.array([np.linalg.norm(g.astype(np.float64, copy=False).ravel(), ord=norm_type) if g.size else 0.0
                      for g in grads.values()])
    total = float(np.linalg.norm(norms, ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"{where}: the total norm of order {norm_type} of the gradients is non-finite "
                           f"({total}); set error_if_nonfinite=False to scale them anyway")
    clip_coef = max_norm / (total + 1e-6)
    # `not >=` rather than `<`: a nan coefficient propagates, as torch.clamp lets it
    if not clip_coef >= 1.0:
        for g in grads.values():
            g *= clip_coef
    return total


#: PyTorch's spelling (trailing underscore for in-place)
clip_grad_norm_ = clip_grad_norm

from . import lr_scheduler  # noqa: E402  (needs Optimizer defined above)
