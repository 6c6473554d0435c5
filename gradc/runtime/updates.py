"""The scalars of the optimizer updates the generated C applies, checked and computed in one place.

The runtime's fused steps (``mod.sgd_step``, ``mod.adam_step``, and the one-call
``opt.train_step``) and ``gradc.optim``'s numpy updates take their scalars from here, so the C
and the numpy paths round them alike and agree to rounding.

Example::

    lr, beta1, beta2, eps = adam_hyper(1e-3, (0.9, 0.999), 1e-8)
    step_size, bias_correction2_sqrt = adam_bias_correction(lr, beta1, beta2, step=1)
    rt.apply_step_flat("adam", p.flat, (m, v), adam_apply_scalars(lr, beta1, beta2, eps, 1), batch)
"""
import math


def checked_rate(x, fn, what):
    """``x`` as a float that is finite and >= 0, or ``ValueError`` naming ``fn`` and ``what``.

    Example: ``checked_rate(0.1, "sgd_step", "lr")`` is 0.1; ``checked_rate(-1, ...)`` raises.
    """
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: {what} must be a number, got {x!r}") from None
    if not 0 <= v < math.inf:
        raise ValueError(f"{fn}: {what} must be a finite number >= 0, got {x!r}")
    return v


def adam_hyper(lr, betas, eps, fn="adam_step"):
    """(lr, beta1, beta2, eps) as floats, checked; ``ValueError`` naming the bad one.

    Example: ``adam_hyper(1e-3, (0.9, 0.999), 1e-8)`` is ``(0.001, 0.9, 0.999, 1e-08)``.
    """
    lr, eps = checked_rate(lr, fn, "lr"), checked_rate(eps, fn, "eps")
    try:
        beta1, beta2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: betas must be a pair of numbers, got {betas!r}") from None
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"{fn}: betas must lie in [0, 1), got {betas!r}")
    return lr, beta1, beta2, eps


def adam_bias_correction(lr, beta1, beta2, step):
    """Adam's step size ``lr / (1 - beta1**t)`` and ``sqrt(1 - beta2**t)`` at step ``t`` (from 1).

    Computed in float64 exactly as ``torch.optim.Adam`` computes them (``** 0.5``, not
    ``math.sqrt``); the C update rounds them to its real type.

    Example::

        step_size, bc2_sqrt = adam_bias_correction(1e-3, 0.9, 0.999, step=1)   # (0.01, 0.0316...)
        p -= step_size * m / (np.sqrt(v) / bc2_sqrt + eps)
    """
    return lr / (1 - beta1 ** step), (1 - beta2 ** step) ** 0.5


def adam_apply_scalars(lr, beta1, beta2, eps, step):
    """The scalar arguments of the generated ``NAME_adam_apply`` for step ``step`` (from 1), in its
    order: ``(1 - beta1, beta2, 1 - beta2, step_size, sqrt(1 - beta2**t), eps)``.

    Example::

        rt.apply_step_flat("adam", p.flat, (m, v), adam_apply_scalars(1e-3, 0.9, 0.999, 1e-8, 1), batch)
    """
    step_size, bias_correction2_sqrt = adam_bias_correction(lr, beta1, beta2, step)
    return 1 - beta1, beta2, 1 - beta2, step_size, bias_correction2_sqrt, eps
