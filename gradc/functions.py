"""The primitive functions of a model body, declared once as data: ``PRIMITIVES``.

Each ``Primitive`` names its SymPy class (whose ``fdiff`` is its derivative, beside its
definition), how C prints it (a libm function, or a helper whose body is given here for every
dtype), the helper function users call (``gc.log1p``) and a numpy reference for the tests. The
C printer, both template sets (C and CUDA), the front end's list of supported functions, the
helpers in ``gradc.nn`` and the fuzz tests' oracle all read this table, so a new elementwise
primitive is one entry here.

``Sigmoid`` and ``Softplus`` exist as functions (rather than as ``1/(1+exp(-x))`` and
``log(1+exp(x))``) so that the C code can evaluate them in a numerically stable way and the
backward pass can reuse the forward value.

Example::

    >>> import sympy as sp
    >>> x = sp.Symbol("x", real=True)
    >>> sp.diff(Softplus(x), x)
    Sigmoid(x)
    >>> PRIMITIVE_OF[Softplus].helper
    'gc_softplus'
"""
import math
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import expm1, log1p


class Sigmoid(sp.Function):
    """The logistic function 1 / (1 + exp(-x)); d/dx = s (1 - s)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return self * (1 - self)

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return 1 / (1 + sp.exp(-x))
        return None

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))

    def _eval_is_real(self):
        return self.args[0].is_real


class Softplus(sp.Function):
    """log(1 + exp(x)), evaluated without overflow; d/dx = Sigmoid(x)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sp.log(1 + sp.exp(x))
        return None

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return sp.log(1 + sp.exp(x))

    def _eval_is_real(self):
        return self.args[0].is_real



@dataclass(frozen=True)
class Primitive:
    """One function a model body may contain.

    ``sympy``: its SymPy class. ``c``: the C function that computes it (``exp``; a float32 build
    appends ``f``), or ``helper``: the name of a static helper gradc emits from ``c_body`` (a Jinja
    snippet over ``R`` (the real type), ``s`` (the libm suffix, ``f`` or nothing) and ``lit``
    (a real literal)) for the arguments ``params``. ``api``: the name of the elementwise helper
    ``gradc.nn`` (and ``gradc``) export for it, or None. ``numpy``: a reference for tests.
    """
    name: str
    sympy: type
    c: str = None
    helper: str = None
    params: tuple = ("x",)
    c_body: str = None
    api: str = None
    numpy: object = None
    doc: str = ""


def _np_sigmoid(x):
    x = np.asarray(x, dtype=float)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _np_softplus(x):
    x = np.asarray(x, dtype=float)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


PRIMITIVES = (
    Primitive("sigmoid", Sigmoid, helper="gc_sigmoid", api="sigmoid", numpy=_np_sigmoid,
              doc="1 / (1 + exp(-x)), evaluated stably.",
              c_body="""if (x >= 0) {
    const {{ R }} e = exp{{ s }}(-x);
    return {{ lit("1.0") }} / ({{ lit("1.0") }} + e);
} else {
    const {{ R }} e = exp{{ s }}(x);
    return e / ({{ lit("1.0") }} + e);
}"""),
    Primitive("softplus", Softplus, helper="gc_softplus", api="softplus", numpy=_np_softplus,
              doc="log(1 + exp(x)), evaluated stably.",
              c_body="""/* log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow for large |x| */
return (x > 0 ? x : {{ lit("0.0") }}) + log1p{{ s }}(exp{{ s }}(-fabs{{ s }}(x)));"""),
    # a ternary, not fmax: the first argument wins ties, as in the derivative rule, and the code
    # does not depend on libm's fmax
    Primitive("max", sp.Max, helper="gc_max", params=("a", "b"), numpy=np.maximum,
              c_body="return a >= b ? a : b;"),
    Primitive("min", sp.Min, helper="gc_min", params=("a", "b"), numpy=np.minimum,
              c_body="return a <= b ? a : b;"),
    Primitive("log1p", log1p, c="log1p", api="log1p", numpy=np.log1p,
              doc="log(1 + x), accurate for tiny x."),
    Primitive("expm1", expm1, c="expm1", api="expm1", numpy=np.expm1,
              doc="exp(x) - 1, accurate for tiny x."),
    Primitive("exp", sp.exp, c="exp", numpy=np.exp),
    Primitive("log", sp.log, c="log", numpy=np.log),
    Primitive("sqrt", sp.sqrt, c="sqrt", numpy=np.sqrt),
    Primitive("abs", sp.Abs, c="fabs", numpy=np.abs),
    Primitive("sign", sp.sign, numpy=np.sign),
    Primitive("piecewise", sp.Piecewise),
    Primitive("tanh", sp.tanh, c="tanh", numpy=np.tanh),
    Primitive("sinh", sp.sinh, c="sinh", numpy=np.sinh),
    Primitive("cosh", sp.cosh, c="cosh", numpy=np.cosh),
    Primitive("sin", sp.sin, c="sin", numpy=np.sin),
    Primitive("cos", sp.cos, c="cos", numpy=np.cos),
    Primitive("tan", sp.tan, c="tan", numpy=np.tan),
    Primitive("asin", sp.asin, c="asin", numpy=np.arcsin),
    Primitive("acos", sp.acos, c="acos", numpy=np.arccos),
    Primitive("atan", sp.atan, c="atan", numpy=np.arctan),
    Primitive("asinh", sp.asinh, c="asinh", numpy=np.arcsinh),
    Primitive("acosh", sp.acosh, c="acosh", numpy=np.arccosh),
    Primitive("atanh", sp.atanh, c="atanh", numpy=np.arctanh),
    Primitive("erf", sp.erf, c="erf", numpy=np.vectorize(math.erf, otypes=[np.float64])),
    Primitive("floor", sp.floor, c="floor", numpy=np.floor),
    Primitive("ceiling", sp.ceiling, c="ceil", numpy=np.ceil),
)
PRIMITIVE_OF = {p.sympy: p for p in PRIMITIVES}

# Functions a model body may contain. Anything else is refused by the front end with a message
# naming it, rather than failing inside the C compiler.
SUPPORTED_FUNCTIONS = set(PRIMITIVE_OF)


def numpy_functions():
    """{SymPy class name: numpy function} for ``sympy.lambdify`` of expressions with gradc's
    primitives (the tests' oracles): ``lambdify(xs, e, [numpy_functions(), "numpy"])``."""
    return {p.sympy.__name__: p.numpy for p in PRIMITIVES if p.numpy is not None}
