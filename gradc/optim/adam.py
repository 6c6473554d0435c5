"""Adam, AMSGrad and AdamW, as ``torch.optim.Adam`` / ``AdamW``: the classes (their docstrings
hold the update rule), the functional cores ``adam`` and ``adamw``, and the fused C step for plain
Adam (the gradient, then the generated ``NAME_adam_apply``, in one runtime call).

The bias-correction scalars come from ``gradc.runtime.updates.adam_bias_correction``, the one
helper the numpy update here, ``mod.adam_step`` and the fused step share.

Example::

    opt = Adam(p, lr=1e-3)
    for X, Y in batches:
        L = opt.train_step(mod, x=X, y=Y)        # one runtime call per step
"""
import numpy as np

from ..runtime.updates import adam_apply_scalars, adam_bias_correction
from .optimizer import Optimizer, betas_option, flag_option, lerp_, nonnegative_option, register, regularized_grad


def adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1, beta2, eps,
         weight_decay=0.0, amsgrad=False, maximize=False, decoupled_weight_decay=False):
    """One Adam step of each array in ``params``, in place (``torch.optim.adam``'s functional form).

    ``exp_avgs``, ``exp_avg_sqs`` (and with ``amsgrad``, ``max_exp_avg_sqs``) are the moment
    buffers, updated in place; ``state_steps[i]`` is parameter i's step number t, counting this
    step (from 1). ``decoupled_weight_decay`` makes it AdamW. Gradients are only read.

    Example::

        m, v = [np.zeros_like(q) for q in ps], [np.zeros_like(q) for q in ps]
        adam(ps, gs, m, v, [None] * len(ps), [1] * len(ps), lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)
    """
    for i, p in enumerate(params):
        if decoupled_weight_decay and weight_decay != 0:
            p *= 1 - lr * weight_decay
        g = regularized_grad(p, grads[i], 0.0 if decoupled_weight_decay else weight_decay, maximize)
        m, v = exp_avgs[i], exp_avg_sqs[i]
        lerp_(m, g, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * g * g
        step_size, bias_correction2_sqrt = adam_bias_correction(lr, beta1, beta2, state_steps[i])
        if amsgrad:
            vmax = max_exp_avg_sqs[i]
            np.maximum(vmax, v, out=vmax)
            denom = np.sqrt(vmax) / bias_correction2_sqrt + eps
        else:
            denom = np.sqrt(v) / bias_correction2_sqrt + eps
        p -= step_size * m / denom


def adamw(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, **kw):
    """``adam`` with decoupled weight decay (``torch.optim.adamw``'s functional form).

    Example: ``adamw(ps, gs, m, v, [None] * len(ps), [1] * len(ps), lr=1e-3, beta1=0.9, beta2=0.999,
    eps=1e-8, weight_decay=1e-2)``.
    """
    adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, decoupled_weight_decay=True, **kw)


@register("adam")
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

    _OPTIONS = dict(lr=nonnegative_option, betas=betas_option, eps=nonnegative_option,
                    weight_decay=nonnegative_option, amsgrad=flag_option, maximize=flag_option)

    @staticmethod
    def _state_keys(h):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if h["amsgrad"] else ())

    def _init_state(self, p, h):
        st = {"step": 0, "exp_avg": np.zeros_like(p), "exp_avg_sq": np.zeros_like(p)}
        if h["amsgrad"]:
            st["max_exp_avg_sq"] = np.zeros_like(p)
        return st

    def _update(self, p, g, lr, h, st):
        st["step"] += 1
        beta1, beta2 = h["betas"]
        adam([p], [g], [st["exp_avg"]], [st["exp_avg_sq"]], [st.get("max_exp_avg_sq")], [st["step"]],
             lr=lr, beta1=beta1, beta2=beta2, eps=h["eps"], weight_decay=h["weight_decay"], amsgrad=h["amsgrad"],
             maximize=h["maximize"], decoupled_weight_decay=self._decoupled)

    # ---- the fused C step: loss_grad, then the generated NAME_adam_apply ----
    @staticmethod
    def _fusable(h):
        return h["weight_decay"] == 0 and not h["amsgrad"] and not h["maximize"]

    @staticmethod
    def _fused_step(rt, flat, st, lr, h, batch, dropout_rng):
        beta1, beta2 = h["betas"]
        return rt.apply_step_flat("adam", flat, (st["exp_avg"], st["exp_avg_sq"]),
                                  adam_apply_scalars(lr, beta1, beta2, h["eps"], st["step"] + 1), batch, dropout_rng)


@register("adamw")
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
