"""gradc: a symbolic-to-source gradient compiler.

Write the math of a model for one sample in SymPy; gradc differentiates it,
renders one fused forward+backward C kernel over a minibatch, compiles it
with cffi and hands back a module::

    import sympy as sp, gradc as gc
    m = gc.Model("line")
    x, y = m.input("x"), m.target("y")
    a, b = m.param("a", init=0.5), m.param("b")
    m.loss((a * x + b - y) ** 2)
    mod = gc.compile_model(m)
    L, g = mod.loss_and_grad(mod.init_params(), x=[1.0, 2.0], y=[3.0, 5.0])

Names are imported lazily so that ``import <generated module>`` (which uses
``gradc.runtime``) does not pay for importing SymPy.
"""
from ._version import __version__

_LAZY = {
    "Model": "model", "index": "model", "TensorExpr": "model", "Tensor": "model",
    "ModelError": "errors", "GradcError": "errors", "BuildError": "errors",
    "load": "api", "compile_model": "api", "load_model_file": "api",
    "Sigmoid": "functions", "Softplus": "functions",
    "fit": "train", "Trainer": "train", "EarlyStopping": "train", "Callback": "train",
    "GaussianNoise": "train", "Mixup": "train", "save_checkpoint": "train", "load_checkpoint": "train",
    "predict": "train", "lr_find": "lr_finder",
}
_NN = ("relu", "tanh", "exp", "log", "sqrt", "abs", "sigmoid", "softplus", "dense", "logsumexp",
       "log_softmax", "softmax", "softmax_cross_entropy", "bce_with_logits", "binary_cross_entropy",
       "mse", "hinge", "embedding", "sum_squares", "elementwise", "dropout")
_LAZY.update({n: "nn" for n in _NN})
_SUBMODULES = ("init", "model", "nn", "ir", "autodiff", "simplify", "rewrite", "functions", "build",
               "runtime", "api", "cli", "codegen", "errors", "optim", "train", "lr_finder", "metrics", "show",
               "privacy", "dp", "weighting", "sklearn")

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    import importlib
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if not name.startswith("_"):      # an elementwise helper declared in the primitives table (gc.log1p)
        helpers = importlib.import_module(".nn", __name__).PRIMITIVE_HELPERS
        if name in helpers:
            return helpers[name]
    raise AttributeError(f"module 'gradc' has no attribute {name!r}")


def __dir__():
    return __all__ + list(_SUBMODULES)
