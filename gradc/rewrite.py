"""Numerical-stability rewrites, as named rules.

Each rule is a ``Rule(name, match, apply)``: ``match(e)`` says whether a
SymPy node has the unstable form, ``apply(e)`` returns the stable one. They
run bottom-up over every forward body before differentiation, so both the
loss and its gradient are computed in the stable form.

Example::

    >>> import sympy as sp
    >>> x = sp.Symbol("x", real=True)
    >>> stabilize(sp.log(1 + sp.exp(x)))
    Softplus(x)
"""
from collections import namedtuple

import sympy as sp

from .functions import Sigmoid, Softplus

Rule = namedtuple("Rule", "name match apply")


def _one_plus_exp(e):
    """If e == 1 + exp(a), return a, else None."""
    if isinstance(e, sp.Add) and len(e.args) == 2 and sp.S.One in e.args:
        other = e.args[0] if e.args[1] == 1 else e.args[1]
        if isinstance(other, sp.exp):
            return other.args[0]
    return None


def _sigmoid_of_inverse(e):
    # 1 / (1 + exp(-u))  ->  Sigmoid(u)
    return (isinstance(e, sp.Pow) and e.exp == -1 and _one_plus_exp(e.base) is not None)


def _exp_over_one_plus_exp(e):
    # exp(u) / (1 + exp(u))  ->  Sigmoid(u)
    if not isinstance(e, sp.Mul) or len(e.args) != 2:
        return False
    a, b = e.args
    for num, den in ((a, b), (b, a)):
        if isinstance(num, sp.exp) and isinstance(den, sp.Pow) and den.exp == -1 \
                and _one_plus_exp(den.base) == num.args[0]:
            return True
    return False


def _num_exp(e):
    return next(a for a in e.args if isinstance(a, sp.exp)).args[0]


def _one_minus_sigmoid(e):
    """If e == 1 - Sigmoid(u), return u, else None."""
    if isinstance(e, sp.Add) and len(e.args) == 2 and sp.S.One in e.args:
        other = e.args[0] if e.args[1] == 1 else e.args[1]
        if isinstance(other, sp.Mul) and len(other.args) == 2 and sp.S.NegativeOne in other.args:
            s = other.args[0] if other.args[1] == -1 else other.args[1]
            if isinstance(s, Sigmoid):
                return s.args[0]
    return None


STABILITY_RULES = (
    # before "sigmoid", which would otherwise leave exp(u) * Sigmoid(-u)
    Rule("sigmoid_ratio", _exp_over_one_plus_exp, lambda e: Sigmoid(_num_exp(e))),
    Rule("sigmoid", _sigmoid_of_inverse, lambda e: Sigmoid(-_one_plus_exp(e.base))),
    Rule("softplus",
         lambda e: isinstance(e, sp.log) and _one_plus_exp(e.args[0]) is not None,
         lambda e: Softplus(_one_plus_exp(e.args[0]))),
    Rule("log_sigmoid",
         lambda e: isinstance(e, sp.log) and isinstance(e.args[0], Sigmoid),
         lambda e: -Softplus(-e.args[0].args[0])),
    Rule("log_one_minus_sigmoid",
         lambda e: isinstance(e, sp.log) and _one_minus_sigmoid(e.args[0]) is not None,
         lambda e: -Softplus(_one_minus_sigmoid(e.args[0]))),
)


def is_log_sum_exp(e):
    """log(Sum(exp(u), limits)): rewritten by the lowering, which adds a max stage."""
    return (isinstance(e, sp.log) and isinstance(e.args[0], sp.Sum)
            and isinstance(e.args[0].function, sp.exp))


def stabilize(expr, rules=STABILITY_RULES):
    """Apply ``rules`` bottom-up until none matches."""
    for _ in range(8):
        before = expr
        for r in rules:
            expr = expr.replace(r.match, r.apply)
        if expr == before:
            break
    return expr
