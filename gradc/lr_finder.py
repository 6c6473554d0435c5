"""The learning-rate range test (Smith, 2017; fastai's ``lr_find``): an exponential sweep of the
learning rate over minibatches, on a copy of the parameters, that suggests a rate.

Example::

    res = gradc.lr_find(mod, p, {"x": X, "y": Y}, optimizer="sgd", batch_size=32, plot="lr.png")
    gradc.fit(mod, p, {"x": X, "y": Y}, optimizer="sgd", lr=res.suggestion)

The module is called ``lr_finder`` (not ``lr_find``) so that importing it never replaces the
function ``gradc.lr_find`` by the module of the same name on the package.
"""
import math
from typing import NamedTuple

import numpy as np

from .runtime import Params
from .train import Trainer


class LRFindResult(NamedTuple):
    """What ``lr_find`` measured: ``lrs[i]`` is the rate of step i, ``losses[i]`` the smoothed
    (bias-corrected exponential moving average) loss of the batch before that step, ``raw_losses``
    the unsmoothed ones; ``suggestion`` the suggested rate (None when too few steps ran);
    ``stopped`` why the sweep ended before ``end_lr`` (None when it ran to the end)."""
    lrs: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    suggestion: object
    stopped: object


def _suggest(lrs, losses, how):
    """The suggested rate: "steepest", the rate where the smoothed loss falls fastest against
    log(lr), between the first tenth of the sweep (where the moving average is still mostly one
    batch's noise) and the minimum; or "minimum", a tenth of the rate at the minimum."""
    best = int(np.argmin(losses)) if len(losses) else 0
    if how == "minimum":
        return float(lrs[best] / 10) if len(losses) >= 3 else None
    skip = max(1, len(losses) // 10)
    if best - skip < 2:
        return None
    slope = np.gradient(losses[skip:best + 1], np.log(lrs[skip:best + 1]))
    return float(lrs[skip + int(np.argmin(slope))])


def _plot(res, path):
    """Draw loss against rate (log scale) to ``path``; False (with a message) without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"lr_find: matplotlib is not installed, so {path} was not drawn "
              "(pip install gradc[plot]); the rates and losses are in the result")
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(res.lrs, res.raw_losses, color="0.75", lw=0.8, label="loss")
    ax.plot(res.lrs, res.losses, label="smoothed loss")
    if res.suggestion is not None:
        ax.axvline(res.suggestion, color="C3", ls="--", label=f"suggested lr {res.suggestion:.3g}")
    ax.set_xscale("log")
    if len(res.losses) > 1:            # the diverged last steps would flatten the rest of the curve
        lo, hi = min(res.losses.min(), res.raw_losses.min()), max(res.losses[0], res.losses[:-1].max())
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.2 * (hi - lo))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def lr_find(module, params, data, *, start_lr=1e-7, end_lr=10.0, num_steps=100, optimizer="adam",
            optimizer_options=None, options=None, frozen=(), batch_size=32, seed=0, smoothing=0.98,
            diverge=4.0, suggest="steepest", plot=None):
    """Sweep the learning rate from ``start_lr`` to ``end_lr`` geometrically over ``num_steps``
    minibatch steps of ``optimizer`` (chosen and configured as in ``fit``: a name, with
    ``optimizer_options``, ``options`` and ``frozen``); returns an ``LRFindResult``.

    The sweep trains a copy: ``params`` are never written, so they stay bit-identical. Batches
    are drawn as ``fit`` draws them (reshuffled each pass, dropout on) from a generator seeded
    by ``seed``. Each step's loss is smoothed by a bias-corrected exponential moving average
    (``smoothing``, 0 for none); the sweep stops early when a loss is not finite or the smoothed
    loss exceeds ``diverge`` times the best so far (``result.stopped`` says which).

    ``suggest="steepest"`` (the default) suggests the rate where the smoothed loss falls fastest
    against log(lr), before its minimum; ``suggest="minimum"`` a tenth of the rate at the minimum
    of the smoothed loss. ``plot="lr.png"`` draws the curve when matplotlib is installed (and
    prints a message otherwise).

    Example::

        res = gradc.lr_find(mod, p, {"x": X, "y": Y}, optimizer="sgd", plot="lr.png")
        res.suggestion, res.lrs[:len(res.losses)], res.losses
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 2:
        raise ValueError(f"lr_find: num_steps must be a whole number >= 2, not {num_steps!r}")
    if not (0 < start_lr < end_lr < math.inf):
        raise ValueError(f"lr_find: need 0 < start_lr < end_lr (finite), got start_lr={start_lr!r}, "
                         f"end_lr={end_lr!r}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"lr_find: smoothing must be in [0, 1), not {smoothing!r}")
    if not diverge > 1:
        raise ValueError(f"lr_find: diverge must be > 1 (a multiple of the best loss), not {diverge!r}")
    if suggest not in ("steepest", "minimum"):
        raise ValueError(f"lr_find: suggest must be 'steepest' or 'minimum', not {suggest!r}")
    # a copy with its own buffer (a dict's copy() would share the arrays)
    work = params.copy() if isinstance(params, Params) else {k: np.array(v, copy=True) for k, v in params.items()}
    t = Trainer(module, work, optimizer=optimizer, lr=start_lr, optimizer_options=optimizer_options,
                options=options, frozen=frozen, batch_size=batch_size, seed=seed)
    if getattr(t.optimizer, "needs_closure", False):
        raise ValueError(f"lr_find: {type(t.optimizer).__name__} chooses its own step length (a line search "
                         "on full batches), so there is no learning rate to sweep; use sgd, adam or another "
                         "first-order optimizer")
    data = t.check_data(data, finite=True)
    n = len(next(iter(data.values())))
    rng = np.random.default_rng(seed)
    rates = start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / (num_steps - 1))
    lrs, raw, smooth = [], [], []
    avg, best, stopped, order = 0.0, math.inf, None, []
    base = dict(t.optimizer.lr)       # per-parameter rates (``options``) keep their ratios
    for i, lr in enumerate(rates):
        if not order:
            perm = rng.permutation(n)
            order = [perm[j:j + t.batch_size] for j in range(0, n, t.batch_size)][::-1]
        idx = order.pop()
        loss, grads = module.loss_and_grad(work, dropout_rng=rng, **{k: v[idx] for k, v in data.items()})
        if not math.isfinite(loss):
            stopped = f"the loss is {loss} at lr {lr:.3g}"
            break
        avg = smoothing * avg + (1 - smoothing) * loss
        s = avg / (1 - smoothing ** (i + 1))
        lrs.append(float(lr))
        raw.append(float(loss))
        smooth.append(s)
        if s > diverge * best:
            stopped = f"the smoothed loss {s:.4g} exceeds {diverge:g} x the best {best:.4g} at lr {lr:.3g}"
            break
        best = min(best, s)
        for k, b in base.items():
            t.optimizer.lr[k] = float(b * lr / start_lr)
        t.optimizer.step(grads)
    lrs, smooth = np.array(lrs), np.array(smooth)
    res = LRFindResult(lrs, smooth, np.array(raw), _suggest(lrs, smooth, suggest), stopped)
    if plot is not None:
        _plot(res, plot)
    return res
