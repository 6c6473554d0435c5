"""Adagrad, as ``torch.optim.Adagrad``: the class and its functional core ``adagrad`` (no fused C
step: ``train_step`` runs ``loss_and_grad``, then the numpy update on the flat buffer).

Example::

    opt = Adagrad(p, lr=1e-2, lr_decay=1e-3)
    opt.step(g)
"""
import numpy as np

from .optimizer import Optimizer, flag_option, nonnegative_option, register, regularized_grad


def adagrad(params, grads, state_sums, state_steps, *, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
            maximize=False):
    """One Adagrad step of each array in ``params``, in place (``torch.optim.adagrad``'s functional form).

    ``state_sums`` are the accumulated squared gradients, updated in place; ``state_steps[i]`` is
    parameter i's step number t, counting this step (from 1).

    Example::

        s = [np.zeros_like(q) for q in ps]
        adagrad(ps, gs, s, [1] * len(ps), lr=1e-2)
    """
    for i, p in enumerate(params):
        g = regularized_grad(p, grads[i], weight_decay, maximize)
        clr = lr / (1 + (state_steps[i] - 1) * lr_decay)
        s = state_sums[i]
        s += g * g
        std = np.sqrt(s)
        std += eps
        p -= clr * g / std


@register("adagrad")
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

    _OPTIONS = dict(lr=nonnegative_option, lr_decay=nonnegative_option, weight_decay=nonnegative_option,
                    initial_accumulator_value=nonnegative_option, eps=nonnegative_option, maximize=flag_option)

    @staticmethod
    def _state_keys(h):
        return ("sum",)

    def _init_state(self, p, h):
        return {"step": 0, "sum": np.full_like(p, h["initial_accumulator_value"])}

    @staticmethod
    def _update(p, g, lr, h, st):
        st["step"] += 1
        adagrad([p], [g], [st["sum"]], [st["step"]], lr=lr, lr_decay=h["lr_decay"], weight_decay=h["weight_decay"],
                eps=h["eps"], maximize=h["maximize"])
