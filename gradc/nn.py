"""Helpers for the usual pieces of a model: thin builders of SymPy expressions.

Each works on a SymPy scalar expression, on a ``sympy.Matrix`` (elementwise)
and on a tensor expression (lazily, elementwise). Nothing here is special to
the compiler: writing ``sp.Max(0, z)`` instead of ``relu(z)`` gives the same
code.

Example::

    h = gc.relu(W1 @ x + b1)
    m.loss(gc.softmax_cross_entropy(W2 @ h + b2, label))
"""
import sympy as sp

from .functions import PRIMITIVES, Sigmoid, Softplus
from .model import ModelError, Tensor, TensorExpr, current_model


def elementwise(f, name=None, doc=None):
    """Lift a scalar SymPy function to tensors and matrices: ``gelu = elementwise(lambda x: ...)``.

    The helper applies ``f`` to a SymPy expression, to each element of a ``sympy.Matrix`` and,
    lazily, to each element of a tensor expression. ``name`` and ``doc`` name and describe it
    (by default ``f``'s own, except a SymPy function's, whose long docstring is SymPy's business).
    """
    def apply(x):
        if isinstance(x, TensorExpr):
            return x.map(f)
        if isinstance(x, sp.MatrixBase):
            return x.applyfunc(f)
        return f(sp.sympify(x))
    own = getattr(f, "__name__", None)
    from_sympy = isinstance(f, type) or (getattr(f, "__module__", None) or "").startswith("sympy")
    name = name or (own if own and own != "<lambda>" else "apply")
    if doc is None:
        doc = (f"{name}(x), elementwise (gradc.nn.elementwise over sympy.{own})" if from_sympy
               else f.__doc__)
    apply.__name__ = apply.__qualname__ = name
    apply.__doc__ = doc
    return apply


def _doc(formula, how):
    """A helper's docstring: its formula, what it accepts, and how gradc builds it."""
    return (f"{formula}\n\nElementwise: takes a SymPy expression, a sympy.Matrix or a gradc tensor expression\n"
            f"(``gradc.nn.elementwise`` over {how}); the compiler differentiates it.")


relu = elementwise(lambda x: sp.Max(0, x), "relu",
                   _doc("relu(x) = max(0, x); relu'(0) = 0 as in PyTorch.", "``sympy.Max(0, x)``"))
tanh = elementwise(sp.tanh, "tanh", _doc("tanh(x), the hyperbolic tangent.", "``sympy.tanh``"))
exp = elementwise(sp.exp, "exp", _doc("exp(x) = e**x.", "``sympy.exp``"))
log = elementwise(sp.log, "log", _doc("log(x), the natural logarithm (x > 0).", "``sympy.log``"))
sqrt = elementwise(sp.sqrt, "sqrt", _doc("sqrt(x), the square root (x >= 0).", "``sympy.sqrt``"))
abs = elementwise(sp.Abs, "abs", _doc("abs(x) = |x|.", "``sympy.Abs``"))


def _primitive_helpers():
    """One elementwise helper per primitive that declares an ``api`` name (sigmoid, softplus,
    log1p, expm1, ...): the table in ``gradc.functions`` is the one place a primitive is declared."""
    out = {}
    for p in PRIMITIVES:
        if p.api:
            f = elementwise(p.sympy, p.api, _doc(f"{p.api}(x) = {p.doc}", f"gradc's primitive ``{p.name}``"))
            out[p.api] = f
    return out


PRIMITIVE_HELPERS = _primitive_helpers()
globals().update(PRIMITIVE_HELPERS)


def dense(x, W, b=None):
    """``W @ x + b`` with W stored as (fan_out, fan_in)."""
    z = W @ x
    return z if b is None else z + b


def _model_of(*xs):
    for x in xs:
        if isinstance(x, TensorExpr):
            return x.model
    return current_model()


def _as_tensor_expr(x, what):
    if isinstance(x, TensorExpr):
        return x
    if isinstance(x, (sp.MatrixBase, list, tuple)):
        # scalar-style elements become one unrolled tensor
        m = current_model()
        els = list(x)
        name = m.auto_name()
        m.define(name, (len(els),), els)
        return Tensor(m, m.decls[name])
    raise ModelError(f"{what} must be a tensor expression, a Matrix or a list, not {type(x).__name__}")


def logsumexp(z):
    """log(sum(exp(z))) with the max subtracted, so a logit of 1000 stays finite."""
    z = _as_tensor_expr(z, "logsumexp's argument")
    if z.rank != 1:
        raise ModelError(f"logsumexp needs a vector, got shape {z.shape}")
    m = z.model
    Z = m.materialize(z)
    mx = m.max_over(Z)
    j = m.fresh_index()
    return mx + sp.log(sp.Sum(sp.exp(Z.fn(j) - mx), (j, 0, Z.shape[0] - 1)))


def log_softmax(z):
    """z - logsumexp(z), elementwise, as a tensor expression."""
    z = _as_tensor_expr(z, "log_softmax's argument")
    Z = z.model.materialize(z)
    lse = logsumexp(Z)
    return Z.map(lambda e: e - lse)


def softmax(z):
    """exp(z - logsumexp(z)), as a tensor expression."""
    return log_softmax(z).map(sp.exp)


def softmax_cross_entropy(logits, label):
    """-log softmax(logits)[label] for an int32 class label, or
    -sum(p * log softmax(logits)) for a vector of target probabilities."""
    z = _as_tensor_expr(logits, "the logits")
    Z = z.model.materialize(z)
    lse = logsumexp(Z)
    if isinstance(label, TensorExpr):
        if label.shape != Z.shape:
            raise ModelError(f"mismatched shapes for softmax_cross_entropy: logits {Z.shape}, targets {label.shape}")
        j = Z.model.fresh_index()
        return sp.Sum(label.fn(j) * (lse - Z.fn(j)), (j, 0, Z.shape[0] - 1))
    label = sp.sympify(label)
    if not (label.is_integer or label.is_Integer):
        raise ModelError("softmax_cross_entropy needs an int32 label (declare it with dtype='int32') or a probability vector")
    return lse - Z.fn(label)


def bce_with_logits(logit, y):
    """Binary cross-entropy of a logit against y in [0, 1], stable for any logit."""
    return elementwise(lambda s: y * Softplus(-s) + (1 - y) * Softplus(s))(logit)


def binary_cross_entropy(p, y):
    """-(y log p + (1 - y) log(1 - p)) for a probability p (rewritten stably when p is a sigmoid,
    also when p is a scalar output defined as one: ``p = m.output("p", gc.sigmoid(z))``)."""
    if isinstance(p, sp.Symbol):
        d = _definition(p)
        if d is not None and isinstance(d, Sigmoid):
            return bce_with_logits(d.args[0], y)
    return elementwise(lambda q: -(y * sp.log(q) + (1 - y) * sp.log(1 - q)))(p)


def _definition(sym):
    """The body of the scalar tensor ``sym`` names in the current model, if it is one."""
    try:
        m = current_model()
    except ModelError:
        return None
    for d in m.defs:
        if d.name == sym.name and d.shape == () and d.body is not None and not d.idx:
            return d.body
    return None


def mse(pred, target):
    """Mean squared error over the elements of one sample."""
    if isinstance(pred, TensorExpr) or isinstance(target, TensorExpr):
        d = pred - target
        n = 1
        for s in d.shape:
            n *= s
        return (d * d).sum() / n
    return (sp.sympify(pred) - sp.sympify(target)) ** 2


def hinge(score, y):
    """max(0, 1 - y * score) for y in {-1, +1}."""
    return sp.Max(0, 1 - y * score)


def embedding(E, ids):
    """Rows of the table ``E`` (a gather by int32 inputs), as PyTorch's ``F.embedding``: one id gives
    a row, ``P_u = gc.embedding(P, user)``; a vector of ids (an int32 input of shape (T,), a
    sequence of tokens or the items a user rated) gives a (T, D) tensor, row t being ``E[ids[t]]``:
    ``X = gc.embedding(E, tokens)``. Each id is checked against E's rows when the model runs."""
    if not isinstance(E, Tensor) or E.rank != 2:
        raise ModelError(f"embedding needs a rank-2 parameter table, got "
                         f"{E.label() if isinstance(E, TensorExpr) else type(E).__name__}")
    if isinstance(ids, TensorExpr):
        if not (isinstance(ids, Tensor) and ids.decl.dtype == "int32"):
            raise ModelError(f"embedding: the ids must be an int32 input (m.input(name, T, dtype='int32')), "
                             f"not {ids.label()}")
        if ids.rank != 1:
            raise ModelError(f"embedding: the ids must be a vector of shape (T,), got {ids.label()}")
        return TensorExpr(E.model, (ids.shape[0], E.shape[1]), lambda t, k: E.fn(ids.fn(t), k))
    try:
        ids = sp.sympify(ids)
    except (sp.SympifyError, TypeError):
        raise ModelError(f"embedding: the ids must be an int32 input, not {type(ids).__name__}")
    if not (ids.is_integer or ids.is_Integer):
        raise ModelError(f"embedding: the id {ids} is not an integer; declare it with dtype='int32'")
    return TensorExpr(E.model, E.shape[1:], lambda k: E.fn(ids, k))


def dropout(x, p, name=None):
    """Inverted dropout on ``x`` (see ``Model.dropout``): ``h = gc.dropout(h, 0.2)``."""
    m = x.model if isinstance(x, TensorExpr) else current_model()
    return m.dropout(x, p, name)


def sum_squares(*tensors):
    """The sum of squares of every element of the given tensors (for L2 regularization)."""
    total = sp.Integer(0)
    for t in tensors:
        if isinstance(t, TensorExpr):
            total += (t * t).sum()
        else:
            total += sp.sympify(t) ** 2
    return total
