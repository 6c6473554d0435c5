"""Learning-rate schedules with PyTorch's names and semantics.

Every parameter keeps its own learning rate (``opt.lr[name]``), so a
scheduler scales each one from that parameter's initial lr, the way
``torch.optim.lr_scheduler`` scales each parameter group::

    import gradc.optim as optim
    from gradc.optim.lr_scheduler import CosineAnnealingLR, warmup
    opt = optim.AdamW(p, lr=1e-3, options={"emb": {"lr": 1e-2}})
    sched = warmup(opt, 100, after=CosineAnnealingLR(opt, T_max=900))
    for it in range(1000):
        L, g = mod.loss_and_grad(p, x=X, y=Y)
        opt.step(g)
        sched.step()            # after opt.step, as in torch

As in torch: constructing a scheduler applies the epoch-0 learning rate;
``step()`` advances ``last_epoch`` by one and sets the next rates; the
schedules are "chainable" (each step scales the *current* ``opt.lr``, so
two schedulers on one optimizer compose, and a change you make to
``opt.lr`` carries forward). The first scheduler attached to an optimizer
records each parameter's ``initial_lr``; later ones start from it too.

``get_last_lr()`` returns a dict ``{name: lr}`` (torch returns a list, one
entry per parameter group; here the parameters are the groups).
"""
import math
import types
from bisect import bisect_right
from collections import Counter
from collections.abc import Mapping

from .optimizer import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR", "LambdaLR",
           "SequentialLR", "warmup"]


def _real(where, key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise ValueError(f"{where}: option {key!r} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{where}: option {key!r} must be finite, got {v!r}")
    return v


def _count(where, key, value, lo=1):
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{where}: option {key!r} must be an int, got {value!r}")
    v = int(value)
    if v < lo:
        raise ValueError(f"{where}: option {key!r} must be >= {lo}, got {v}")
    return v


class LRScheduler:
    """Base class of the schedulers: epoch counting, applying rates, checkpoints.

    A subclass implements ``_chained()`` (the next rates from the current
    ones, torch's ``get_lr``) and, where torch has one, ``_closed_form()``
    (the rates at ``last_epoch`` from the initial ones, used when
    :class:`SequentialLR` hands over to it).

    Example::

        sched = StepLR(opt, step_size=30)
        for epoch in range(100):
            train_one_epoch(opt)
            sched.step()
        sched.get_last_lr()       # {'W': 1e-5, 'b': 1e-5}
    """

    #: names of the subclass's settings that go into state_dict
    _SETTINGS = ()

    def __init__(self, optimizer):
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"{type(self).__name__}: expected a gradc.optim optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for k, lr in optimizer.lr.items():
            optimizer.initial_lr.setdefault(k, lr)
        #: {name: the initial lr this schedule scales}
        self.base_lrs = {k: optimizer.initial_lr[k] for k in optimizer.lr}
        #: index of the last epoch stepped: 0 right after construction
        self.last_epoch = -1
        self._is_initial = False
        self._initial_step()

    def _initial_step(self):
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def step(self):
        """Advance one epoch (or iteration) and set the optimizer's learning rates.

        Example::

            opt.step(g); sched.step()
        """
        self._step_count += 1
        self._update_lr()

    def _update_lr(self, epoch=None):
        if epoch is None:
            self.last_epoch += 1
            values = self._chained()
        else:
            self.last_epoch = epoch
            values = self._closed_form() if hasattr(self, "_closed_form") else self._chained()
        # a parameter frozen by a later opt.load_state_dict has left opt.lr: leave it alone
        values = {k: v for k, v in values.items() if k in self.optimizer.lr}
        for k, v in values.items():
            self.optimizer.lr[k] = v
        self._last_lr = {k: self.optimizer.lr[k] for k in values}

    def _current(self):
        return {k: self.optimizer.lr[k] for k in self.base_lrs if k in self.optimizer.lr}

    def get_last_lr(self):
        """The learning rates this scheduler set last, as a new dict ``{name: lr}``.

        Example::

            sched = ExponentialLR(opt, gamma=0.9); sched.step()
            sched.get_last_lr()      # {'W': 0.09, ...} for lr=0.1
        """
        return dict(self._last_lr)

    def state_dict(self):
        """The scheduler's state (counters, initial and last rates, settings) as a dict.

        Example::

            sd = sched.state_dict()
            sched2 = StepLR(opt2, step_size=30); sched2.load_state_dict(sd)
        """
        sd = {"last_epoch": self.last_epoch, "step_count": self._step_count,
              "base_lrs": dict(self.base_lrs), "last_lr": dict(self._last_lr)}
        for k in self._SETTINGS:
            sd[k] = getattr(self, k)
        return sd

    def load_state_dict(self, state_dict):
        """Restore a state from :meth:`state_dict`; ``ValueError`` names what does not fit.

        Load the optimizer's state too (``opt.load_state_dict``): the rates
        themselves live there. Nothing changes on error.

        Example::

            sched.load_state_dict(saved["scheduler"])
        """
        where = f"{type(self).__name__}.load_state_dict"
        want = ("last_epoch", "step_count", "base_lrs", "last_lr") + tuple(self._SETTINGS)
        new = self._check_sd(where, state_dict, want)
        settings = self._check_settings(where, new)
        for k, v in settings.items():
            setattr(self, k, v)
        self.last_epoch, self._step_count = new["last_epoch"], new["step_count"]
        self.base_lrs, self._last_lr = new["base_lrs"], new["last_lr"]

    def _check_sd(self, where, sd, want):
        if not isinstance(sd, Mapping):
            raise ValueError(f"{where}: expected a dict, got {type(sd).__name__}")
        for k in sd:
            if k not in want:
                raise ValueError(f"{where}: unexpected key {k!r}")
        for k in want:
            if k not in sd:
                raise ValueError(f"{where}: missing key {k!r}")
        new = dict(sd)
        names = set(self.optimizer.lr)
        for key in ("base_lrs", "last_lr"):
            if key not in new:
                continue
            d = new[key]
            if not isinstance(d, Mapping):
                raise ValueError(f"{where}: {key!r} must be a dict name -> lr")
            for k in d:
                if k not in names:
                    raise ValueError(f"{where}: {key} names unknown or frozen parameter {k!r}")
            for k in names:
                if k not in d:
                    raise ValueError(f"{where}: {key} has no entry for parameter {k!r}")
            new[key] = {k: _real(where, f"{key}[{k!r}]", d[k]) for k in self.optimizer.lr}
        for key in ("last_epoch", "step_count"):
            if key in new:
                new[key] = _count(where, key, new[key], lo=-1)
        return new

    def _check_settings(self, where, new):
        out = {}
        for k in self._SETTINGS:
            out[k] = _count(where, k, new[k]) if isinstance(getattr(self, k), int) else _real(where, k, new[k])
        return out

    def __repr__(self):
        s = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._SETTINGS)
        return f"{type(self).__name__}({s}; last_epoch={self.last_epoch})"


class StepLR(LRScheduler):
    """Multiply every learning rate by ``gamma`` every ``step_size`` epochs.

    lr(epoch) = initial_lr * gamma ** (epoch // step_size), as ``torch.optim.lr_scheduler.StepLR``.

    Example::

        sched = StepLR(opt, step_size=30, gamma=0.1)   # 0.1 for 30 epochs, 0.01 for 30, ...
    """

    _SETTINGS = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = _count("StepLR", "step_size", step_size)
        self.gamma = _real("StepLR", "gamma", gamma)
        super().__init__(optimizer)

    def _chained(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current()
        return {k: lr * self.gamma for k, lr in self._current().items()}

    def _closed_form(self):
        return {k: b * self.gamma ** (self.last_epoch // self.step_size) for k, b in self.base_lrs.items()}


class MultiStepLR(LRScheduler):
    """Multiply every learning rate by ``gamma`` at each milestone epoch.

    lr(epoch) = initial_lr * gamma ** (number of milestones <= epoch); a
    milestone listed twice counts twice, as in torch.

    Example::

        sched = MultiStepLR(opt, milestones=[30, 80], gamma=0.1)
    """

    _SETTINGS = ("milestones", "gamma")

    def __init__(self, optimizer, milestones, gamma=0.1):
        try:
            ms = [_count("MultiStepLR", "milestones", m, lo=0) for m in milestones]
        except TypeError:
            raise ValueError(f"MultiStepLR: option 'milestones' must be a list of ints, got {milestones!r}") from None
        #: the milestones, sorted, repeats kept
        self.milestones = tuple(sorted(ms))
        self.gamma = _real("MultiStepLR", "gamma", gamma)
        super().__init__(optimizer)

    def _chained(self):
        n = Counter(self.milestones)[self.last_epoch]
        if n == 0:
            return self._current()
        return {k: lr * self.gamma ** n for k, lr in self._current().items()}

    def _closed_form(self):
        return {k: b * self.gamma ** bisect_right(self.milestones, self.last_epoch) for k, b in self.base_lrs.items()}

    def _check_settings(self, where, new):
        try:
            ms = tuple(sorted(_count(where, "milestones", m, lo=0) for m in new["milestones"]))
        except TypeError:
            raise ValueError(f"{where}: 'milestones' must be a list of ints") from None
        return {"milestones": ms, "gamma": _real(where, "gamma", new["gamma"])}


class ExponentialLR(LRScheduler):
    """Multiply every learning rate by ``gamma`` every epoch: lr(epoch) = initial_lr * gamma ** epoch.

    Example::

        sched = ExponentialLR(opt, gamma=0.95)
    """

    _SETTINGS = ("gamma",)

    def __init__(self, optimizer, gamma):
        self.gamma = _real("ExponentialLR", "gamma", gamma)
        super().__init__(optimizer)

    def _chained(self):
        if self._is_initial:
            return self._current()
        return {k: lr * self.gamma for k, lr in self._current().items()}

    def _closed_form(self):
        return {k: b * self.gamma ** self.last_epoch for k, b in self.base_lrs.items()}


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from each initial lr down to ``eta_min`` over ``T_max`` epochs.

    lr(epoch) = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2,
    computed recursively from the current lr as ``torch.optim.lr_scheduler.CosineAnnealingLR``
    does (so it agrees with the formula to rounding when nothing else changes
    the lr). Past ``T_max`` it rises again (period 2 * T_max), as in torch.

    Example::

        sched = CosineAnnealingLR(opt, T_max=100, eta_min=1e-5)
    """

    _SETTINGS = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0.0):
        self.T_max = _count("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = _real("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer)

    def _chained(self):
        e, T, lo = self.last_epoch, self.T_max, self.eta_min
        cur = self._current()
        if self._is_initial:
            return cur
        if self._step_count == 1 and e > 0:
            return {k: lo + (b - lo) * (1 + math.cos(e * math.pi / T)) / 2 for k, b in self.base_lrs.items()}
        if (e - 1 - T) % (2 * T) == 0:
            # the recursion below would divide by zero at the bottom of the cosine
            return {k: lr + (self.base_lrs[k] - lo) * (1 - math.cos(math.pi / T)) / 2 for k, lr in cur.items()}
        return {k: (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - lo) + lo
                for k, lr in cur.items()}

    def _closed_form(self):
        e, T, lo = self.last_epoch, self.T_max, self.eta_min
        return {k: lo + (b - lo) * (1 + math.cos(math.pi * e / T)) / 2 for k, b in self.base_lrs.items()}


class LinearLR(LRScheduler):
    """Scale every learning rate by a factor going linearly from ``start_factor`` to ``end_factor``.

    lr(epoch) = initial_lr * (start_factor + (end_factor - start_factor) * min(epoch, total_iters) / total_iters),
    computed recursively as torch does. Example, the usual warm-up::

        sched = LinearLR(opt, start_factor=0.1, total_iters=10)   # 10% of lr at epoch 0, full lr from epoch 10
    """

    _SETTINGS = ("start_factor", "end_factor", "total_iters")

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5):
        self.start_factor = _real("LinearLR", "start_factor", start_factor)
        self.end_factor = _real("LinearLR", "end_factor", end_factor)
        if not 0 < self.start_factor <= 1:
            raise ValueError(f"LinearLR: option 'start_factor' must be in (0, 1], got {self.start_factor!r}")
        if not 0 <= self.end_factor <= 1:
            raise ValueError(f"LinearLR: option 'end_factor' must be in [0, 1], got {self.end_factor!r}")
        self.total_iters = _count("LinearLR", "total_iters", total_iters)
        super().__init__(optimizer)

    def _chained(self):
        cur = self._current()
        if self.last_epoch == 0:
            return {k: lr * self.start_factor for k, lr in cur.items()}
        if self._is_initial or self.last_epoch > self.total_iters:
            return cur
        s, d = self.start_factor, self.end_factor - self.start_factor
        f = 1.0 + d / (self.total_iters * s + (self.last_epoch - 1) * d)
        return {k: lr * f for k, lr in cur.items()}

    def _check_settings(self, where, new):
        out = super()._check_settings(where, new)
        if not (0 < out["start_factor"] <= 1 and 0 <= out["end_factor"] <= 1):
            raise ValueError(f"{where}: start_factor must be in (0, 1] and end_factor in [0, 1]")
        return out

    def _closed_form(self):
        s, d = self.start_factor, self.end_factor - self.start_factor
        return {k: b * (s + d * min(self.total_iters, self.last_epoch) / self.total_iters)
                for k, b in self.base_lrs.items()}


class LambdaLR(LRScheduler):
    """lr(epoch) = initial_lr * lr_lambda(epoch), for a function of the epoch index.

    ``lr_lambda`` is one callable for all parameters or a dict ``{name:
    callable}`` covering every trainable parameter (torch's list per group).
    ``state_dict`` keeps the ``__dict__`` of callable objects and nothing of
    plain functions or lambdas, as torch does.

    Example::

        sched = LambdaLR(opt, lambda epoch: 0.95 ** epoch)
        sched = LambdaLR(opt, {"W": lambda e: 1.0, "b": lambda e: 1 / (1 + e)})
    """

    def __init__(self, optimizer, lr_lambda):
        if isinstance(lr_lambda, Mapping):
            if not isinstance(optimizer, Optimizer):
                raise ValueError(f"LambdaLR: expected a gradc.optim optimizer, got {type(optimizer).__name__}")
            for k in lr_lambda:
                if k not in optimizer.lr:
                    raise ValueError(f"LambdaLR: lr_lambda names unknown or frozen parameter {k!r}")
            for k in optimizer.lr:
                if k not in lr_lambda:
                    raise ValueError(f"LambdaLR: lr_lambda has no function for parameter {k!r}")
            self.lr_lambdas = dict(lr_lambda)
        elif callable(lr_lambda):
            self.lr_lambdas = {k: lr_lambda for k in getattr(optimizer, "lr", {})}
        else:
            raise ValueError(f"LambdaLR: option 'lr_lambda' must be a callable or a dict name -> callable, "
                             f"got {lr_lambda!r}")
        for k, f in self.lr_lambdas.items():
            if not callable(f):
                raise ValueError(f"LambdaLR: lr_lambda[{k!r}] is not callable")
        super().__init__(optimizer)

    def _chained(self):
        return {k: b * self.lr_lambdas[k](self.last_epoch) for k, b in self.base_lrs.items()}

    def state_dict(self):
        """As :meth:`LRScheduler.state_dict`, plus ``lr_lambdas``: the ``__dict__`` of callable objects.

        Example::

            sd = sched.state_dict(); sd["lr_lambdas"]      # {} for plain lambdas
        """
        sd = super().state_dict()
        sd["lr_lambdas"] = {k: dict(f.__dict__) for k, f in self.lr_lambdas.items()
                            if not isinstance(f, types.FunctionType) and hasattr(f, "__dict__")}
        return sd

    def load_state_dict(self, state_dict):
        """Restore counters and rates, and update callable objects' attributes from ``lr_lambdas``.

        Example::

            sched.load_state_dict(saved)
        """
        where = "LambdaLR.load_state_dict"
        new = self._check_sd(where, state_dict, ("last_epoch", "step_count", "base_lrs", "last_lr", "lr_lambdas"))
        lam = new["lr_lambdas"]
        if not isinstance(lam, Mapping):
            raise ValueError(f"{where}: 'lr_lambdas' must be a dict name -> attribute dict")
        for k, d in lam.items():
            if k not in self.lr_lambdas:
                raise ValueError(f"{where}: lr_lambdas names unknown parameter {k!r}")
            if not isinstance(d, Mapping) or not hasattr(self.lr_lambdas[k], "__dict__"):
                raise ValueError(f"{where}: lr_lambdas[{k!r}] cannot be restored into {self.lr_lambdas[k]!r}")
        for k, d in lam.items():
            self.lr_lambdas[k].__dict__.update(d)
        self.last_epoch, self._step_count = new["last_epoch"], new["step_count"]
        self.base_lrs, self._last_lr = new["base_lrs"], new["last_lr"]


class SequentialLR(LRScheduler):
    """Run ``schedulers`` one after another, switching at the ``milestones`` epochs.

    Scheduler i runs from epoch ``milestones[i-1]`` on; at its milestone it
    restarts from its own epoch 0 (closed form from the initial lrs), exactly
    as ``torch.optim.lr_scheduler.SequentialLR``. The schedulers must be
    built on the same optimizer beforehand; building them applied their own
    epoch-0 rates, which this constructor undoes.

    Example::

        warm = LinearLR(opt, start_factor=0.01, total_iters=10)
        decay = CosineAnnealingLR(opt, T_max=90)
        sched = SequentialLR(opt, [warm, decay], milestones=[10])
    """

    def __init__(self, optimizer, schedulers, milestones):
        name = "SequentialLR"
        if not isinstance(optimizer, Optimizer):
            raise ValueError(f"{name}: expected a gradc.optim optimizer, got {type(optimizer).__name__}")
        schedulers = list(schedulers)
        if not schedulers:
            raise ValueError(f"{name}: expects at least one scheduler")
        for i, s in enumerate(schedulers):
            if not isinstance(s, LRScheduler):
                raise ValueError(f"{name}: schedulers[{i}] is not a scheduler ({type(s).__name__})")
            if s.optimizer is not optimizer:
                raise ValueError(f"{name}: schedulers[{i}] ({type(s).__name__}) belongs to another optimizer")
        try:
            milestones = [_count(name, "milestones", m) for m in milestones]
        except TypeError:
            raise ValueError(f"{name}: option 'milestones' must be a list of ints, got {milestones!r}") from None
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"{name}: needs one milestone fewer than schedulers, got {len(schedulers)} schedulers "
                             f"and {len(milestones)} milestones")
        if any(a >= b for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"{name}: option 'milestones' must be strictly increasing, got {milestones}")
        self.optimizer = optimizer
        self._schedulers = schedulers
        self.milestones = tuple(milestones)
        self.last_epoch = 0
        self.base_lrs = {k: optimizer.initial_lr[k] for k in optimizer.lr}
        for k in optimizer.lr:
            optimizer.lr[k] = optimizer.initial_lr[k]
        self._undo(self)
        idx = bisect_right(self.milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = self._schedulers[idx].get_last_lr()
        self._step_count = 1

    @property
    def schedulers(self):
        """The wrapped schedulers, in order.

        Example::

            sched.schedulers[1].T_max
        """
        return list(self._schedulers)

    @staticmethod
    def _undo(s):
        # the schedulers' own construction stepped them to epoch 0; the sequence starts them itself
        if isinstance(s, SequentialLR):
            for c in s._schedulers:
                SequentialLR._undo(c)
        else:
            s.last_epoch -= 1

    def step(self):
        """Advance one epoch: the scheduler whose turn it is steps (or restarts at its milestone).

        Example::

            opt.step(g); sched.step()
        """
        self.last_epoch += 1
        self._step_count += 1
        idx = bisect_right(self.milestones, self.last_epoch)
        s = self._schedulers[idx]
        if idx > 0 and self.milestones[idx - 1] == self.last_epoch:
            s._update_lr(0)
        else:
            s.step()
        self._last_lr = s.get_last_lr()

    def state_dict(self):
        """The sequence's counters and every wrapped scheduler's state.

        Example::

            sd = sched.state_dict(); sd["schedulers"][0]["last_epoch"]
        """
        return {"last_epoch": self.last_epoch, "step_count": self._step_count, "milestones": self.milestones,
                "last_lr": dict(self._last_lr), "schedulers": [s.state_dict() for s in self._schedulers]}

    def load_state_dict(self, state_dict):
        """Restore the sequence and each wrapped scheduler; on error nothing changes.

        Example::

            sched = warmup(opt, 100, after=CosineAnnealingLR(opt, T_max=900))
            sched.load_state_dict(saved)
        """
        where = "SequentialLR.load_state_dict"
        new = self._check_sd(where, state_dict, ("last_epoch", "step_count", "milestones", "last_lr", "schedulers"))
        subs = new["schedulers"]
        if not isinstance(subs, (list, tuple)) or len(subs) != len(self._schedulers):
            raise ValueError(f"{where}: 'schedulers' must be a list of {len(self._schedulers)} state dicts")
        ms = tuple(_count(where, "milestones", m) for m in new["milestones"])
        if ms != self.milestones:
            raise ValueError(f"{where}: milestones {list(ms)} differ from this sequence's {list(self.milestones)}")
        # check every part before changing any
        saved = [s.state_dict() for s in self._schedulers]
        try:
            for s, sd in zip(self._schedulers, subs):
                s.load_state_dict(sd)
        except ValueError:
            for s, sd in zip(self._schedulers, saved):
                s.load_state_dict(sd)
            raise
        self.last_epoch, self._step_count, self._last_lr = new["last_epoch"], new["step_count"], new["last_lr"]

    def __repr__(self):
        return (f"SequentialLR([{', '.join(type(s).__name__ for s in self._schedulers)}], "
                f"milestones={list(self.milestones)}; last_epoch={self.last_epoch})")


def warmup(optimizer, warmup_steps, after=None, start_factor=None):
    """Linear warm-up over ``warmup_steps`` steps, then ``after`` (or the plain lr).

    Returns ``SequentialLR(optimizer, [LinearLR(optimizer, start_factor, 1.0,
    warmup_steps), after], milestones=[warmup_steps])``. The default
    ``start_factor`` is ``1 / (warmup_steps + 1)``, so the lr at step e < warmup_steps
    is ``lr * (e + 1) / (warmup_steps + 1)`` and ``after`` takes over at its own
    epoch 0 at step ``warmup_steps``. Build ``after`` on the same optimizer first.

    Example::

        sched = warmup(opt, 500, after=CosineAnnealingLR(opt, T_max=9500))
        sched = warmup(opt, 100)                  # then constant lr
    """
    steps = _count("warmup", "warmup_steps", warmup_steps)
    if start_factor is None:
        start_factor = 1.0 / (steps + 1)
    lin = LinearLR(optimizer, start_factor=start_factor, end_factor=1.0, total_iters=steps)
    if after is None:
        return SequentialLR(optimizer, [lin], [])
    return SequentialLR(optimizer, [lin, after], [steps])
