"""Optimizers for parameter dicts, with PyTorch's names and update rules.

Parameters are a dict ``name -> numpy array`` (float32 or float64); gradients
are a dict with the same names and shapes, as ``mod.loss_and_grad`` returns.
Each optimizer updates the caller's arrays in place::

    import gradc.optim as optim
    opt = optim.Adam(p, lr=1e-3)
    for epoch in range(100):
        L, g = mod.loss_and_grad(p, x=X, y=Y)
        opt.step(g)                 # p's arrays change in place

The updates are those of ``torch.optim`` (single-tensor, ``foreach=False``
code path), with the floating-point operations in the same order, so a
float64 run agrees with PyTorch to rounding (PyTorch's vectorised CPU kernels
fuse some multiply-adds, which numpy cannot, so agreement is to ~1e-15, not
bit for bit).

Per-parameter hyperparameters and freezing replace PyTorch's parameter
groups::

    opt = optim.Adam(p, lr=1e-3, options={"W1": {"lr": 1e-4}}, frozen=["b1"])

The layout follows ``torch.optim``: ``optimizer.py`` holds the base class and the registry
(``OPTIMIZERS``, ``available()``), each algorithm its own module (``sgd``, ``adam``,
``rmsprop``, ``adagrad``, ``lbfgs``: the class, a functional core, the fused C step where there
is one), ``clip_grad.py`` gradient clipping, and :mod:`gradc.optim.lr_scheduler` the learning-rate
schedules. This file only re-exports.
"""
from .optimizer import OPTIMIZERS, Optimizer, available, register
# in the order the optimizers register, which is the order fit() and `gradc train --help` list them
from .sgd import SGD, sgd  # noqa: I001
from .adam import Adam, AdamW, adam, adamw
from .rmsprop import RMSprop, rmsprop
from .adagrad import Adagrad, adagrad
from .lbfgs import LBFGS, lbfgs
from .clip_grad import clip_grad_norm, clip_grad_norm_
from . import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "LBFGS", "clip_grad_norm",
           "clip_grad_norm_", "lr_scheduler", "sgd", "adam", "adamw", "rmsprop", "adagrad", "lbfgs",
           "OPTIMIZERS", "available", "register"]
