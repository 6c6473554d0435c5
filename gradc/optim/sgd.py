"""SGD with optional (Nesterov) momentum, as ``torch.optim.SGD``: the class (its docstring holds
the update rule), its functional core ``sgd`` and its fused C step (the generated ``NAME_sgd_step``:
loss, gradient and update in one call, for plain SGD).

Example::

    opt = SGD(p, lr=0.1)
    for X, Y in batches:
        L = opt.train_step(mod, x=X, y=Y)        # one C call per step
"""
import numpy as np

from .optimizer import Optimizer, flag_option, nonnegative_option, real_option, register, regularized_grad


def sgd(params, grads, momentum_buffers, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
        maximize=False):
    """One SGD step of each array in ``params``, in place (``torch.optim.sgd``'s functional form).

    ``momentum_buffers[i]`` is parameter i's buffer, or None before its first step with momentum:
    it is then created (a copy of the gradient) and stored in the list. Gradients are only read.

    Example::

        bufs = [None] * len(ps)
        sgd(ps, gs, bufs, lr=0.1, momentum=0.9)       # bufs now hold the momentum
    """
    for i, p in enumerate(params):
        g = regularized_grad(p, grads[i], weight_decay, maximize)
        if momentum != 0:
            buf = momentum_buffers[i]
            if buf is None:
                # a copy: the caller's gradient array may be reused for the next batch
                buf = momentum_buffers[i] = np.array(g, copy=True)
            else:
                buf *= momentum
                buf += (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p -= lr * g


@register("sgd")
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

    _OPTIONS = dict(lr=nonnegative_option, momentum=nonnegative_option, dampening=real_option,
                    weight_decay=nonnegative_option, nesterov=flag_option, maximize=flag_option)

    def _check(self, h, where):
        out = super()._check(h, where)
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(f"{where}: option 'nesterov' requires momentum > 0 and dampening == 0")
        return out

    @staticmethod
    def _state_keys(h):
        return ("momentum_buffer",) if h["momentum"] != 0 else ()

    @staticmethod
    def _update(p, g, lr, h, st):
        st["step"] += 1
        bufs = [st.get("momentum_buffer")]
        sgd([p], [g], bufs, lr=lr, momentum=h["momentum"], dampening=h["dampening"],
            weight_decay=h["weight_decay"], nesterov=h["nesterov"], maximize=h["maximize"])
        if bufs[0] is not None:
            st["momentum_buffer"] = bufs[0]

    # ---- the fused C step: plain SGD is the generated NAME_sgd_step ----
    @staticmethod
    def _fusable(h):
        return h["momentum"] == 0 and h["weight_decay"] == 0 and not h["maximize"]

    @staticmethod
    def _fused_step(rt, flat, st, lr, h, batch, dropout_rng):
        return rt.sgd_step_flat(flat, lr, batch, dropout_rng)
