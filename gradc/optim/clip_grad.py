"""Gradient clipping, as ``torch.nn.utils.clip_grad_norm_``, on gradient dicts.

Example::

    L, g = mod.loss_and_grad(p, x=X, y=Y)
    clip_grad_norm(g, max_norm=1.0)
    opt.step(g)
"""
import math
from collections.abc import Mapping

import numpy as np

from .optimizer import real_option


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
    max_norm = real_option(where, "max_norm", max_norm, lo=0.0)
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
