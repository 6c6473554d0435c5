"""The base class of gradc's optimizers, as ``torch.optim.Optimizer``: parameters, their options
and freezing, state, checkpoints, and the step over one flat buffer. Nothing here knows an update
rule; each algorithm is one module beside this one (``sgd.py``, ``adam.py``, ...) with its class,
its functional core and, where the generated C has one, its fused C step.

Parameters are a dict ``name -> numpy array`` (float32 or float64); gradients
are a dict with the same names and shapes, as ``mod.loss_and_grad`` returns.
Per-parameter hyperparameters and freezing replace PyTorch's parameter groups::

    opt = Adam(p, lr=1e-3, options={"W1": {"lr": 1e-4}}, frozen=["b1"])
    opt.step(g)

An optimizer class registers under its name (``@register("sgd")``); ``OPTIMIZERS`` is what
``gradc.fit(optimizer="adam")`` and ``gradc train --optimizer`` choose from.
"""
import math
from collections.abc import Mapping

import numpy as np

from ..runtime import runtime_of

#: name -> optimizer class, in registration order; ``fit(optimizer=name)`` and the CLI read it
OPTIMIZERS = {}


def register(name):
    """A class decorator that makes an optimizer available as ``name`` (lower case).

    Example::

        @register("lion")
        class Lion(Optimizer):
            ...
    """
    def add(cls):
        OPTIMIZERS[name] = cls
        return cls
    return add


def available():
    """The registered optimizers' names, in registration order.

    Example: ``available()  # ('sgd', 'adam', 'adamw', 'rmsprop', 'adagrad', 'lbfgs')``.
    """
    return tuple(OPTIMIZERS)


# ---- option checking, and a numeric helper the update rules share ------------------

def real_option(where, key, value, lo=None, lo_open=False, hi=None, hi_open=False):
    """``value`` as a Python float, or ValueError naming ``key``.

    Python floats (not numpy scalars) matter: under NEP 50 a numpy float64
    scalar would promote float32 parameters to float64.

    Example: ``real_option("SGD", "lr", 0.1, lo=0.0)`` is 0.1; ``lr=-1`` raises naming ``'lr'``.
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


def flag_option(where, key, value):
    """``value`` as a bool when it is one, else ValueError naming ``key``.

    Example: ``flag_option("SGD", "nesterov", True)``; ``1`` is refused.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: option {key!r} must be True or False, got {value!r}")
    return bool(value)


def betas_option(where, key, value):
    """A pair ``(beta1, beta2)`` of floats in [0, 1), or ValueError naming ``key``.

    Example: ``betas_option("Adam", "betas", [0.9, 0.999])`` is ``(0.9, 0.999)``.
    """
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{where}: option {key!r} must be a pair (beta1, beta2), got {value!r}")
    return (real_option(where, f"{key}[0]", value[0], lo=0.0, hi=1.0, hi_open=True),
            real_option(where, f"{key}[1]", value[1], lo=0.0, hi=1.0, hi_open=True))


def nonnegative_option(where, key, value):
    """``real_option`` for a value that must be >= 0 (a rate, a decay, eps).

    Example: ``nonnegative_option("SGD", "lr", 0.1)`` is 0.1.
    """
    return real_option(where, key, value, lo=0.0)


def regularized_grad(p, g, weight_decay, maximize):
    """The gradient an update rule starts from: ``-g`` when ``maximize``, plus ``weight_decay * p``
    (L2 weight decay). A new array when either applies; ``g`` itself is never written.

    Example: ``g = regularized_grad(p, g, 1e-4, False)`` is ``g + 1e-4 * p``.
    """
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


def lerp_(a, b, w):
    """``a`` moved toward ``b`` by weight ``w``, in place, as ``torch.lerp`` rounds it.

    torch switches formula at |w| = 0.5 so that w = 0 gives ``a`` and w = 1 gives
    ``b`` exactly; the weight is taken in the array's dtype first, as torch does.

    Example: ``lerp_(m, g, 1 - beta1)`` is Adam's ``m = beta1 * m + (1 - beta1) * g``.
    """
    w = a.dtype.type(w)
    if abs(w) < 0.5:
        a += w * (b - a)
    else:
        a[...] = b - (b - a) * (1 - w)


def _is_real(v):
    """Whether ``v`` is a real number as the optimizers take one: an int or float, Python's or
    numpy's, and not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


# ---- base class -----------------------------------------------------------------

class Optimizer:
    """Base class: per-parameter hyperparameters, freezing, state, checkpoints, the flat step.

    Subclasses define ``_DEFAULTS`` (the constructor's hyperparameters, in
    order), ``_OPTIONS`` (each hyperparameter's check, in the order ``_check``
    applies them; a subclass may extend ``_check``), ``_state_keys``
    (the buffers a parameter's state holds), ``_init_state`` (a fresh state)
    and ``_update`` (one step of one parameter, or of the whole flat buffer).
    One with a fused C update also defines ``_fusable`` (whether hyperparameters
    ``h`` make ``_update`` equal to it) and ``_fused_step`` (the one runtime call).
    Users construct a subclass. Example::

        opt = Adam(p, lr=1e-3, options={"W": {"lr": 1e-4}}, frozen=["b"])
        opt.step(g)
        opt.hyper("W")["lr"]        # 1e-4
    """

    _DEFAULTS = {}
    _OPTIONS = {}

    def _check(self, h, where):
        """A full hyperparameter dict ``h`` checked and normalized, option by option."""
        return {k: check(where, k, h[k]) for k, check in self._OPTIONS.items()}

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
        self._fused = None            # the runtime train_step runs as one C call for
        self._unfused = None          # the runtime it cannot be one call for

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
                    if flag_option(where, o, v):
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
        #: {name: the lr it had when the first scheduler was attached} (torch's group["initial_lr"])
        self.initial_lr = {}

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
        rt = runtime_of(module)
        lr = self._fused_lr(rt)
        if lr is not None:
            st = self._flat_st
            L = self._fused_step(rt, self._flat_p, st, lr, self._flat_hyper, batch, dropout_rng)
            t = st["step"] = st["step"] + 1
            for s in self._state.values():
                s["step"] = t
            return L
        L, g = module.loss_and_grad(self.params, dropout_rng=dropout_rng, **batch)
        self.step(g)
        return L

    def _fused_lr(self, rt):
        """The learning rate, as a float, when ``train_step`` can run as one C call for the runtime
        ``rt`` (None: not a gradc module): the update fuses and every parameter has one rate
        (``_common_lr``). Else None: the step then runs as ``loss_and_grad`` + ``step``, whose
        checks name a bad rate."""
        if rt is None or self._flat_p is None:
            return None
        if self._fused is not rt:
            if self._unfused is rt:
                return None
            # decided once per model (load_state_dict resets it)
            self._fused, self._unfused = (rt, None) if self._fusion(rt) else (None, rt)
            if self._fused is None:
                return None
        return self._common_lr()

    def _common_lr(self):
        """The learning rate of every parameter, as a float, when all have one and the same, a real
        number (not a bool), finite and >= 0; else None (the per-parameter step then names the bad
        one). A scheduler (or the user) may change ``opt.lr`` at any step, so it is read each time."""
        lrs = self.lr
        if len(lrs) != len(self.params):
            return None
        it = iter(lrs.values())
        lr = next(it)
        if type(lr) is not float and not _is_real(lr):
            return None
        for v in it:
            if v is not lr and ((type(v) is not float and not _is_real(v)) or v != lr):
                return None
        lr = float(lr)
        return lr if 0 <= lr < math.inf else None

    def _fusion(self, rt):
        fp = self._flat_p
        hs = list(self._hyper.values())
        if hs[0]["frozen"] or any(h != hs[0] for h in hs[1:]):
            return False
        if not self._fusable(hs[0]) or not rt.is_param_buffer(fp, self.params):
            return False
        if self._flat_st is None:
            self._gather_state(fp, hs[0])
        return all(k in self._flat_st for k in self._state_keys(hs[0]))

    def _fusable(self, h):
        """Whether a fused C update equals ``_update`` with hyperparameters ``h`` (none here)."""
        return False

    def _fused_step(self, rt, flat, st, lr, h, batch, dropout_rng):
        """One fused step through runtime ``rt`` on the flat parameters and flat state ``st``
        (before its step count advances); returns the loss. Defined where ``_fusable`` can be true."""
        raise NotImplementedError(f"{type(self).__name__} has no fused C update")

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
        lr = self._common_lr()
        if lr is None:
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
            "initial_lr": dict(self.initial_lr),
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
            hh["frozen"] = flag_option(w, "frozen", h["frozen"])
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
            initial_lr[k] = real_option(f"{where}: initial_lr[{k!r}]", "lr", v, lo=0.0)

        self._hyper = hyper
        self._state = state
        self.initial_lr = initial_lr
        # mutate rather than rebind: schedulers and users may hold opt.lr
        self.lr.clear()
        self.lr.update({k: h["lr"] for k, h in hyper.items() if not h["frozen"]})
        self._flat_st = None          # the loaded arrays replace the views: gather them again
        self._fused = self._unfused = None
