"""SymPy functions gradc adds, each with its derivative beside its definition.

``Sigmoid`` and ``Softplus`` exist as functions (rather than as ``1/(1+exp(-x))``
and ``log(1+exp(x))``) so that the C code can evaluate them in a numerically
stable way and the backward pass can reuse the forward value.

Example::

    >>> import sympy as sp
    >>> x = sp.Symbol("x", real=True)
    >>> sp.diff(Softplus(x), x)
    Sigmoid(x)
"""
import sympy as sp


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


# Functions a model body may contain. Anything else is refused by the front
# end with a message naming it, rather than failing inside the C compiler.
SUPPORTED_FUNCTIONS = {
    sp.exp, sp.log, sp.sqrt, sp.Abs, sp.sign, sp.Max, sp.Min, sp.Piecewise,
    sp.tanh, sp.sinh, sp.cosh, sp.sin, sp.cos, sp.tan, sp.asin, sp.acos, sp.atan,
    sp.asinh, sp.acosh, sp.atanh, sp.erf, sp.floor, sp.ceiling,
    Sigmoid, Softplus,
}
