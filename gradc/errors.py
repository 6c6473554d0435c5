"""Errors that users see: each names the file, line or argument at fault."""
import os
import sys

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
# SymPy's own frames are not the user's line either (sp.exp(tensor) fails inside sympify)
_SKIP = [_PKG_DIR + os.sep]
try:
    import importlib.util as _ilu
    _spec = _ilu.find_spec("sympy")
    if _spec is not None and _spec.origin:
        _SKIP.append(os.path.dirname(os.path.abspath(_spec.origin)) + os.sep)
except (ImportError, ValueError):
    pass


class GradcError(Exception):
    """Base class of every error gradc raises on purpose."""


_AUTO = object()


class ModelError(GradcError):
    """A model definition is wrong: the message says what, ``where`` says where.

    Example::

        raise ModelError("loss must be a scalar", where=("model.py", 12))
    """

    def __init__(self, message, where=_AUTO):
        super().__init__(message)
        self.message = message
        # by default the user's line that called into gradc; where=None: no location applies
        self.where = user_location() if where is _AUTO else where

    def __str__(self):
        if self.where:
            return f"{self.where[0]}:{self.where[1]}: {self.message}"
        return self.message


def nested_too_deeply(during, where=None):
    """The ``ModelError`` for a ``RecursionError`` met while ``during`` (``"differentiating"``...):
    SymPy walks expressions recursively, so a few hundred nested calls exhaust Python's stack.

    Example: ``except RecursionError: raise nested_too_deeply("lowering", d.where) from None``.
    """
    return ModelError(f"the expression is nested too deeply: {during} it reached Python's recursion limit "
                      f"({sys.getrecursionlimit():,} frames). Compute it in steps, each its own tensor "
                      f"(h = m.define(\"h\", ...), then use h), so that no expression nests hundreds of calls",
                      where=where)


class BuildError(GradcError):
    """The C compiler failed; the message carries its output."""


class OutputError(GradcError):
    """An output of ``compile`` or ``export`` cannot be written: it would replace a file gradc did
    not write, or the output folder is not a folder. The CLI exits with status 2.

    Example::

        raise OutputError("out/mlp.py exists and was not written by gradc; pass --force to replace it")
    """


def user_location():
    """The (file, line) of the innermost stack frame outside the gradc package.

    Front-end calls record it so that an error found later, during lowering,
    still points at the line of the model file that caused it.
    """
    f = sys._getframe(1)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if not any(fn.startswith(d) for d in _SKIP) and "importlib" not in fn:
            return (f.f_code.co_filename, f.f_lineno)
        f = f.f_back
    return None
