"""RMSprop, as ``torch.optim.RMSprop``: the class and its functional core ``rmsprop`` (no fused C
step: ``train_step`` runs ``loss_and_grad``, then the numpy update on the flat buffer).

Example::

    opt = RMSprop(p, lr=1e-2, centered=True, momentum=0.9)
    opt.step(g)
"""
import numpy as np

from .optimizer import Optimizer, flag_option, lerp_, nonnegative_option, register, regularized_grad


def rmsprop(params, grads, square_avgs, grad_avgs, momentum_buffers, *, lr, alpha, eps, weight_decay=0.0,
            momentum=0.0, centered=False, maximize=False):
    """One RMSprop step of each array in ``params``, in place (``torch.optim.rmsprop``'s functional form).

    ``square_avgs`` (and with ``centered``, ``grad_avgs``; with ``momentum > 0``,
    ``momentum_buffers``) are the state buffers, updated in place; the others may be None.

    Example::

        v = [np.zeros_like(q) for q in ps]
        rmsprop(ps, gs, v, [None] * len(ps), [None] * len(ps), lr=1e-2, alpha=0.99, eps=1e-8)
    """
    for i, p in enumerate(params):
        g = regularized_grad(p, grads[i], weight_decay, maximize)
        v = square_avgs[i]
        v *= alpha
        v += (1 - alpha) * g * g
        if centered:
            ga = grad_avgs[i]
            lerp_(ga, g, 1 - alpha)
            avg = np.sqrt(v - ga * ga)
        else:
            avg = np.sqrt(v)
        avg += eps
        if momentum > 0:
            buf = momentum_buffers[i]
            buf *= momentum
            buf += g / avg
            p -= lr * buf
        else:
            p -= lr * g / avg


@register("rmsprop")
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

    _OPTIONS = dict(lr=nonnegative_option, alpha=nonnegative_option, eps=nonnegative_option,
                    weight_decay=nonnegative_option, momentum=nonnegative_option, centered=flag_option,
                    maximize=flag_option)

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
        rmsprop([p], [g], [st["square_avg"]], [st.get("grad_avg")], [st.get("momentum_buffer")], lr=lr,
                alpha=h["alpha"], eps=h["eps"], weight_decay=h["weight_decay"], momentum=h["momentum"],
                centered=h["centered"], maximize=h["maximize"])
