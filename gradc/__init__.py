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

The classes (``help(gradc.Model)`` and so on for each):

    Model                  one sample's model: inputs, targets, parameters, outputs, the loss
    Tensor, TensorExpr     tensor expressions inside a model (``W @ x + b``, ``t.sum()``)
    Trainer                the training loop behind ``fit`` (validation, metrics, checkpoints)
    EarlyStopping, Callback, GaussianNoise, Mixup   hooks and augmentation for ``Trainer``
    GradcError, ModelError, BuildError              what gradc raises
    Sigmoid, Softplus      SymPy functions behind ``sigmoid`` and ``softplus``

Submodules: ``gradc.layers`` (PyTorch's layers for one sample: ``conv2d``, pools, ``flatten``, norms,
``gru_cell``, ``lstm_cell``, ``unroll``), ``gradc.optim`` (optimizers and schedules), ``gradc.init`` (initializers),
``gradc.metrics``, ``gradc.show`` (listings and notebook formulas), ``gradc.sklearn``.
``__all__`` (what ``from gradc import *`` takes, and what ``help(gradc)`` lists in full) holds
the functions; the classes are ``gradc.Model`` and so on.
"""
from ._version import __version__

_LAZY = {
    "Model": "model", "index": "model", "TensorExpr": "model", "Tensor": "model",
    "ModelError": "errors", "GradcError": "errors", "BuildError": "errors",
    "load": "api", "compile_model": "api", "load_model_file": "api",
    "Sigmoid": "functions", "Softplus": "functions",
    "fit": "train", "Trainer": "train", "EarlyStopping": "train", "Callback": "train",
    "GaussianNoise": "train", "Mixup": "train", "save_checkpoint": "train", "load_checkpoint": "train",
    "predict": "train", "lr_find": "lr_finder", "formulas": "show",
}
_NN = ("relu", "tanh", "exp", "log", "sqrt", "abs", "sigmoid", "softplus", "dense", "logsumexp",
       "log_softmax", "softmax", "softmax_cross_entropy", "bce_with_logits", "binary_cross_entropy",
       "mse", "hinge", "embedding", "sum_squares", "elementwise", "dropout")
_LAZY.update({n: "nn" for n in _NN})
_SUBMODULES = ("init", "model", "nn", "ir", "autodiff", "simplify", "rewrite", "functions", "build",
               "runtime", "api", "cli", "codegen", "errors", "optim", "train", "lr_finder", "metrics", "show",
               "privacy", "dp", "weighting", "sklearn", "layers")

# the functions; a class's help (SymPy's Function subclasses run to thousands of lines) would drown
# them in help(gradc): the module docstring lists the classes instead
__all__ = sorted(n for n in _LAZY if not n[:1].isupper()) + ["__version__"]


def _incomplete(name, err):
    """The ImportError for a submodule missing from the folder this gradc was imported from."""
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    return ImportError(f"gradc was imported from {here}, which lacks {name.replace('.', os.sep)}.py: that folder "
                       "is not a complete gradc (a partial copy, or a folder named gradc that shadows the "
                       "installed package); run Python from another folder, or reinstall gradc", name=err.name)


_CHECKED = set()


def _submodule(name):
    import importlib
    try:
        mod = importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as e:
        if (e.name or "").startswith(__name__ + "."):      # one of ours, not a third-party package
            raise _incomplete(e.name[len(__name__) + 1:], e) from None
        raise
    if name not in _CHECKED:     # an editable install's finder fills the gaps of a partial copy from elsewhere
        import os
        here = os.path.dirname(os.path.abspath(__file__))
        where = getattr(mod, "__file__", None)
        if where and not os.path.abspath(where).startswith(here + os.sep):
            raise ImportError(f"gradc was imported from {here}, but its module {name} from {os.path.dirname(where)}: "
                              f"the folder {here} is not a complete gradc (a partial copy, or a folder named gradc "
                              "that shadows the installed package); run Python from another folder, or reinstall gradc",
                              name=f"{__name__}.{name}")
        _CHECKED.add(name)
    return mod


def __getattr__(name):
    if name in _LAZY:
        return getattr(_submodule(_LAZY[name]), name)
    if name in _SUBMODULES:
        return _submodule(name)
    if not name.startswith("_"):      # an elementwise helper declared in the primitives table (gc.log1p)
        helpers = _submodule("nn").PRIMITIVE_HELPERS
        if name in helpers:
            return helpers[name]
    raise AttributeError(f"module 'gradc' has no attribute {name!r}")


def __dir__():
    return sorted(_LAZY) + ["__version__"] + list(_SUBMODULES)
