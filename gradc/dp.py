"""Differentially private SGD (Abadi et al. 2016) in the training loop: ``fit(..., dp=dict(...))``.

Each step draws a batch by Poisson sampling (every training sample joins with probability
``q = batch_size / N``), clips each sample's gradient to ``max_grad_norm`` in the generated kernel
(``loss_and_grad_clipped``: no per-sample gradient leaves C), adds Gaussian noise of standard
deviation ``noise_multiplier * max_grad_norm`` to the clipped sum from the loop's seeded generator,
and divides by the expected batch size ``q * N``, as Opacus does. An epoch is ``round(1 / q)`` steps.
The regularization's gradient (a function of the parameters alone) is added without noise. The
privacy spent is tracked by the RDP accountant of ``gradc.privacy`` and logged as ``epsilon``.

Example::

    hist = gradc.fit(mod, p, data, epochs=10, batch_size=64, optimizer="sgd", lr=0.5,
                     dp=dict(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5))
    hist["epsilon"][-1]
"""
import math

import numpy as np

from .privacy import RDPAccountant
from .runtime import Params, runtime_of

_KEYS = ("noise_multiplier", "max_grad_norm", "delta")


def _number(cfg, key, low, high=math.inf, closed_low=False):
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
        raise ValueError(f"dp: {key} must be a finite number, not {v!r}")
    if not ((v >= low) if closed_low else (v > low)) or not v < high:
        bound = f">= {low}" if closed_low else f"> {low}"
        raise ValueError(f"dp: {key} must be {bound}" + (f" and < {high}" if high < math.inf else "") + f", not {v!r}")
    return float(v)


class DPSGD:
    """The DP-SGD state of one training run: settings, the accountant, the sample rate.

    ``config``: ``noise_multiplier`` (>= 0; 0 clips without noise and spends infinite epsilon),
    ``max_grad_norm`` (> 0) and ``delta`` (in (0, 1), well below 1 / N for N training samples),
    all required.
    """

    def __init__(self, config):
        if not isinstance(config, dict):
            raise ValueError("dp must be a dict with noise_multiplier, max_grad_norm and delta")
        unknown = sorted(set(config) - set(_KEYS))
        if unknown:
            raise ValueError(f"dp: unknown setting {unknown[0]!r}; the settings are {', '.join(_KEYS)}")
        missing = [k for k in _KEYS if k not in config]
        if missing:
            raise ValueError(f"dp: missing {missing[0]!r} (dp takes {', '.join(_KEYS)})")
        self.noise_multiplier = _number(config, "noise_multiplier", 0.0, closed_low=True)
        self.max_grad_norm = _number(config, "max_grad_norm", 0.0)
        self.delta = _number(config, "delta", 0.0, 1.0)
        self.accountant = RDPAccountant()

    def settings(self):
        return dict(noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm, delta=self.delta)

    def epsilon(self):
        """The epsilon spent so far at this run's delta (0 before any step; inf without noise)."""
        if not self.accountant.history:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        return float(self.accountant.get_epsilon(self.delta))

    def batches(self, n, batch_size, rng):
        """The index arrays of one epoch: ``round(n / batch_size)`` Poisson samples at rate
        ``batch_size / n`` (each may be empty), and the rate."""
        q = min(1.0, batch_size / n)
        steps = max(1, round(1 / q))
        return [np.flatnonzero(rng.random(n) < q) for _ in range(steps)], q

    def step_grad(self, module, params, batch, q, n_total, rng, dropout_rng):
        """(loss, noisy gradient) of one step on ``batch`` (maybe empty: then loss is NaN)."""
        rt = runtime_of(module)
        scale = 1.0 / (q * n_total)
        n = len(next(iter(batch.values()))) if batch else 0
        if n:
            loss, g, _ = rt.loss_and_grad_clipped(params, self.max_grad_norm, scale, dropout_rng=dropout_rng, **batch)
            g = g.flat.astype(np.float64)
        else:       # nothing sampled: the noise alone, and the regularization's gradient
            loss, g = math.nan, self._reg_grad(rt, params)
        sigma = self.noise_multiplier * self.max_grad_norm
        g += rng.standard_normal(rt.n_params) * (sigma * scale)
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=q)
        return loss, Params(g.astype(rt.dtype), rt.info.params)

    @staticmethod
    def _reg_grad(rt, params):
        """The regularization's gradient: a weighted loss whose one sample weighs 0."""
        zero = {}
        for s in rt.info.inputs + rt.info.targets:
            zero[s.name] = np.zeros((1, *s.shape), dtype=np.int32 if s.is_int else rt.dtype)
        _, g = rt.loss_and_grad_weighted(params, np.zeros(1), **zero)
        return g.flat.astype(np.float64)

    def state_dict(self):
        return dict(settings=self.settings(), accountant=self.accountant.state_dict())

    def load_state_dict(self, st):
        self.accountant.load_state_dict(st["accountant"])
