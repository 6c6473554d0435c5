"""The front end: a model for one sample, written in SymPy.

A ``Model`` collects declarations (inputs, targets, parameters), tensor
definitions, named outputs, a per-sample loss and parameter-only
regularization. Nothing here differentiates or generates code: lowering to
stages happens in ``gradc.ir``.

Two styles, both first-class:

* scalar SymPy: a rank-0 declaration returns a plain ``sympy.Symbol``;
  ``W.M`` turns a declared tensor into a ``sympy.Matrix`` of its elements;
* index level: ``W[i, k]`` is a ``sympy.Indexed`` read, reductions are
  ``sp.Sum``, and ``W @ x + b`` builds such bodies for you.

Example::

    m = Model("tiny")
    x, y = m.input("x", 2), m.target("y")
    W, b = m.param("W", (1, 2), init=gc.init.uniform(-1, 1)), m.param("b", 1)
    score = m.output("score", (W @ x + b)[0])
    m.loss((score - y) ** 2)
"""
from dataclasses import dataclass, field

import sympy as sp

from . import init as _init
from .errors import ModelError, user_location

REAL, INT = "real", "int32"
_DTYPES = {"real": REAL, "float": REAL, "float32": REAL, "float64": REAL,
           "int": INT, "int32": INT}

_current = [None]

# the generated C indexes with int: every tensor, and all parameters together, stay below 2**31;
# so do a Sum's extent and the iterations of one loop nest (an int loop counter would never end)
MAX_ELEMENTS = 2**31 - 1
# an unrolled (scalar-style) tensor: at most this many terms (elements, or tensor reads in them);
# measured (2 busy cores): a 20x20 W.M model (420 terms) compiles in 10 s, a 40x40 (1,640) in 103 s
UNROLL_LIMIT = 1024


def unroll_hint(name, n):
    """The message for an unrolled definition of ``n`` terms, past ``UNROLL_LIMIT``."""
    return (f"{name} is unrolled into {n:,} scalar terms; gradc unrolls at most {UNROLL_LIMIT:,} per tensor "
            f"(differentiating and compiling more takes minutes to hours). Write it in index style, "
            f"one loop instead of one expression per element: m.define(\"z\", n, lambda i: "
            f"sp.Sum(W[i, k] * x[k], (k, 0, K - 1))), or W @ x, instead of W.M * x.M or a list")


def current_model():
    """The model most recently created (used by helpers given only SymPy expressions)."""
    if _current[0] is None:
        raise ModelError("no gradc.Model has been created yet")
    return _current[0]


@dataclass
class Decl:
    """A tensor the model names: an input, target, parameter or defined tensor."""
    name: str
    kind: str                  # "input" | "target" | "param" | "stage"
    shape: tuple
    dtype: str = REAL
    init: dict = None
    where: tuple = None
    dropout: float = None      # an input that is a dropout mask, dropping with this probability


@dataclass
class Def:
    """A tensor definition as the user wrote it (before splitting into stages).

    ``body`` is a SymPy expression in the index symbols ``idx`` (one per
    dimension of ``shape``); or, for a tensor built from a SymPy Matrix,
    ``elements`` lists one scalar expression per element in row-major order.
    ``op == "max"`` marks a max-reduction over ``red`` (used as a
    stabilizing shift; it carries no gradient).
    """
    name: str
    shape: tuple
    idx: tuple = ()
    body: sp.Expr = None
    elements: list = None
    op: str = None
    red: tuple = ()
    where: tuple = None


@dataclass
class ModelSpec:
    """Everything the user declared, in declaration order; input to ``gradc.ir.lower``."""
    name: str
    decls: dict
    defs: list
    outputs: list
    loss: sp.Expr
    loss_where: tuple
    reg: list = field(default_factory=list)


def _shape(shape, what):
    if shape is None:
        return ()
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ModelError(f"shape of {what} must be an int or a tuple of ints, not {shape!r}")
    n = 1
    for d in shape:
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ModelError(f"shape of {what} must hold positive ints, got {shape!r}")
        n *= d
    if n > MAX_ELEMENTS:
        raise ModelError(f"{what} of shape {shape} has {n:,} elements; a tensor may hold at most "
                         f"{MAX_ELEMENTS:,} (the kernels index with 32-bit ints)")
    return shape


class TensorExpr:
    """A lazily indexed tensor expression: ``shape`` plus a function from
    index expressions to a SymPy expression. Elementwise arithmetic composes
    the functions; ``@`` builds an ``sp.Sum``."""

    def __init__(self, model, shape, fn):
        self.model = model
        self.shape = tuple(shape)
        self.fn = fn
        # where the user wrote it: a stage made from it later (when it is consumed) points here
        self.where = user_location()

    @property
    def rank(self):
        return len(self.shape)

    def __getitem__(self, idx):
        """An element (``h[2]``, ``W[i, k]``: a SymPy expression) or, NumPy style, a view: slices
        (``x[2:5]``, ``h[:, 0]``, ``x[::2]``), fewer indices than the rank (``W[0]`` is a row),
        ``...`` and negative integers; a view is a tensor expression."""
        if not isinstance(idx, tuple):
            idx = (idx,)
        if any(i is Ellipsis for i in idx):
            if sum(i is Ellipsis for i in idx) > 1:
                raise ModelError(f"{self.label()} was indexed with more than one '...'")
            e = idx.index(Ellipsis)
            idx = idx[:e] + (slice(None),) * (self.rank - (len(idx) - 1 - idx.count(None))) + idx[e + 1:]
        if len(idx) - idx.count(None) > self.rank:
            raise ModelError(f"{self.label()} has rank {self.rank} but was indexed with "
                             f"{len(idx) - idx.count(None)} indices")
        idx = idx + (slice(None),) * (self.rank - len(idx) + idx.count(None))
        view = any(isinstance(i, slice) or i is None for i in idx)
        parts = []       # per dimension: ("at", expr), ("range", start, step, count) or ("new", ..)
        dims = iter(enumerate(self.shape))
        for i in idx:
            if i is None:            # a new axis of size 1, as x[:, None] in NumPy
                parts.append(("new", 0, 0, 1))
                continue
            d, n = next(dims)
            if isinstance(i, slice):
                for v in (i.start, i.stop, i.step):
                    if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                        raise ModelError(f"a slice of {self.label()} needs int bounds, got {i}")
                if i.step == 0:
                    raise ModelError(f"a slice of {self.label()} needs a nonzero step, got {i}")
                r = range(n)[i]
                if len(r) == 0:
                    raise ModelError(f"the slice {i.start}:{i.stop}:{i.step} of dimension {d} of "
                                     f"{self.label()} is empty")
                parts.append(("range", r.start, r.step, len(r)))
                continue
            if isinstance(i, (TensorExpr, sp.MatrixBase, list, tuple, slice)) or hasattr(i, "__array__"):
                raise ModelError(f"index {d} of {self.label()} must be an int, an index symbol or a slice, "
                                 f"not {type(i).__name__} (to gather rows by a vector of ids, use gc.embedding)")
            if isinstance(i, int) and not isinstance(i, bool) and -n <= i < 0:
                i += n          # x[-1], as in NumPy
            try:
                i = sp.sympify(i)
            except (sp.SympifyError, TypeError):
                raise ModelError(f"index {d} of {self.label()} must be an int or an index symbol, not {i!r}")
            if i.is_Integer and not 0 <= int(i) < n:
                raise ModelError(f"index {i} out of range for dimension {d} of {self.label()} (size {n})")
            parts.append(("at", i))
        if not view:
            idx = tuple(p[1] for p in parts)
            out = self.fn(*idx)
            if not isinstance(self, Tensor) and self._gathers_through_arithmetic(idx, out):
                # a gather by an int32 input from a lazy view that reads at arithmetic of the id
                # (P.flatten()[u] reads P[u // 3, u % 3], S[::-1][u] reads S[5 - u]): the view becomes
                # a stage, read at the id itself, as a gather must be
                out = self.model.materialize(self).fn(*idx)
            return out
        shape = tuple(p[3] for p in parts if p[0] != "at")

        def fn(*j):
            j, out = list(j), []
            for p in parts:
                if p[0] == "new":
                    j.pop(0)
                else:
                    out.append(p[1] if p[0] == "at" else p[1] + p[2] * j.pop(0))
            return self.fn(*out)
        return TensorExpr(self.model, shape, fn)

    def _gathers_through_arithmetic(self, idx, out):
        """Whether ``out`` (this view's element at ``idx``) reads some tensor at an index computed
        from an int32 input among ``idx`` (``u // 3``, ``5 - u``) rather than at the input itself:
        the IR takes an id only as a whole index."""
        ids = set()
        for i in idx:
            for s in sp.sympify(i).free_symbols:
                d = self.model.decls.get(getattr(s, "name", None))
                if d is not None and d.dtype == INT:
                    ids.add(s.name)
        if not ids:
            return False
        for r in sp.sympify(out).atoms(sp.Indexed):
            for c in r.indices:
                c = sp.sympify(c)
                names = {getattr(s, "name", None) for s in c.free_symbols}
                bare = c.is_Symbol or (isinstance(c, sp.Indexed) and c.base.label.name in ids)
                if names & ids and not bare:
                    return True
        return False

    def _sympy_(self):
        # a tensor given to a SymPy function (sp.exp(t)) or mixed into a SymPy expression: say what
        # to write instead. A SympifyError too, so that ``2 * sp.Symbol("a") * t`` still reaches
        # TensorExpr.__rmul__ (SymPy's operators try sympify first and step aside on that error)
        raise TensorInSymPy(self)

    def label(self):
        """How messages name it: ``tensor expression of shape (3, 4)``, ``input 'x' of shape (4,)``."""
        return "tensor expression of shape %s" % (self.shape,)

    def map(self, f):
        """Apply ``f`` (SymPy expr -> SymPy expr) to every element: ``h = z.map(sp.tanh)``."""
        return TensorExpr(self.model, self.shape, lambda *i: f(self.fn(*i)))

    # elementwise arithmetic, broadcast as NumPy does (trailing dimensions aligned, size 1 stretched)
    def _zip(self, other, f, opname):
        if isinstance(other, TensorExpr):
            if other.shape == self.shape:
                return TensorExpr(self.model, self.shape, lambda *i: f(self.fn(*i), other.fn(*i)))
            shape = broadcast_shapes(self.shape, other.shape, opname)
            a, b = _stretch(self, shape), _stretch(other, shape)
            return TensorExpr(self.model, shape, lambda *i: f(a(*i), b(*i)))
        if isinstance(other, sp.MatrixBase):
            raise ModelError(f"cannot combine a tensor of shape {self.shape} with a sympy Matrix; use T.M for matrix style")
        try:
            o = sp.sympify(other)
        except (sp.SympifyError, TypeError):
            return NotImplemented
        return TensorExpr(self.model, self.shape, lambda *i: f(self.fn(*i), o))

    def __add__(self, o): return self._zip(o, lambda a, b: a + b, "+")
    def __radd__(self, o): return self._zip(o, lambda a, b: b + a, "+")
    def __sub__(self, o): return self._zip(o, lambda a, b: a - b, "-")
    def __rsub__(self, o): return self._zip(o, lambda a, b: b - a, "-")
    def __mul__(self, o): return self._zip(o, lambda a, b: a * b, "*")
    def __rmul__(self, o): return self._zip(o, lambda a, b: b * a, "*")
    def __truediv__(self, o): return self._zip(o, lambda a, b: a / b, "/")
    def __rtruediv__(self, o): return self._zip(o, lambda a, b: b / a, "/")
    def __pow__(self, o): return self._zip(o, lambda a, b: a ** b, "**")
    def __rpow__(self, o): return self._zip(o, lambda a, b: b ** a, "**")
    def __neg__(self): return self.map(lambda a: -a)
    def __pos__(self): return self

    @property
    def T(self):
        """The transpose of a rank-2 tensor expression."""
        if self.rank != 2:
            raise ModelError(f".T needs rank 2, got shape {self.shape}")
        return TensorExpr(self.model, self.shape[::-1], lambda i, j: self.fn(j, i))

    def __matmul__(self, other):
        if not isinstance(other, TensorExpr):
            return NotImplemented
        return self.model._matmul(self, other)

    def sum(self, axis=None):
        """The sum of all elements, a SymPy expression (``sp.Sum``); over ``axis`` (an int or a
        tuple, negative counting from the end, as NumPy), a tensor expression of the rest:
        ``W.sum(1)`` is the vector of row sums."""
        axes = self._axes(axis, "sum")
        keep = [d for d in range(self.rank) if d not in axes]
        shape = tuple(self.shape[d] for d in keep)

        def fn(*o):
            idx = [self.model.fresh_index() for _ in axes]
            full = dict(zip(keep, o))
            full.update(zip(axes, idx))
            body = self.fn(*(full[d] for d in range(self.rank)))
            return sp.Sum(body, *[(k, 0, self.shape[d] - 1) for k, d in zip(idx, axes)]) if idx else body
        return TensorExpr(self.model, shape, fn) if keep else fn()

    def mean(self, axis=None):
        """The mean of all elements, or over ``axis`` (see ``sum``): ``x.mean()``, ``h.mean(-1)``."""
        n = 1
        for d in self._axes(axis, "mean"):
            n *= self.shape[d]
        return self.sum(axis) / n

    def _axes(self, axis, what):
        if axis is None:
            return tuple(range(self.rank))
        axes = axis if isinstance(axis, tuple) else (axis,)
        out = []
        for a in axes:
            if not isinstance(a, int) or isinstance(a, bool) or not -self.rank <= a < self.rank:
                raise ModelError(f"{what}: axis {a!r} is not a dimension of {self.label()}")
            out.append(a % self.rank)
        if len(set(out)) != len(out):
            raise ModelError(f"{what}: axis {axis!r} names a dimension twice")
        return tuple(sorted(out))

    def reshape(self, *shape):
        """The same elements in row-major order under another shape (``-1``: the one size that
        fits): ``p.reshape(-1)`` flattens a (C, H, W) map, read through ``//`` and ``%``."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        n = 1
        for s in self.shape:
            n *= s
        if sum(1 for s in shape if s == -1) > 1:
            raise ModelError(f"reshape: at most one -1, got {shape}")
        known = 1
        for s in shape:
            if s != -1:
                known *= s if isinstance(s, int) and s > 0 else 0
        if known == 0 or n % known:
            raise ModelError(f"reshape: cannot view {self.label()} ({n} elements) as {shape}")
        shape = _shape(tuple(n // known if s == -1 else s for s in shape), "reshape")
        if shape == self.shape:
            return self
        src = self.model.materialize(self)

        def fn(*j):
            flat = 0
            for i, s in zip(j, shape):
                flat = flat * s + i
            idx, stride = [], n
            for s in src.shape:
                stride //= s
                idx.append(sp.floor(flat / stride) if stride > 1 else flat)
                idx[-1] = sp.Mod(idx[-1], s) if len(idx) > 1 else idx[-1]
            return src.fn(*idx)
        return TensorExpr(self.model, shape, fn)

    def flatten(self):
        """``reshape(-1)``: the elements as a vector, row-major."""
        return self.reshape(-1)

    def __iter__(self):
        raise TypeError("tensor expressions are not iterable; index them (T[i]) or use T.M")

    def __repr__(self):
        return f"<gradc {self.label()}>"


class Tensor(TensorExpr):
    """A named tensor of a model: ``W[i, k]`` is a ``sympy.Indexed`` read."""

    def __init__(self, model, decl):
        self.decl = decl
        assumptions = {"integer": True} if decl.dtype == INT else {"real": True}
        self.base = sp.IndexedBase(sp.Symbol(decl.name, **assumptions))
        if decl.shape == ():
            super().__init__(model, (), lambda: self.base.label)
        else:
            super().__init__(model, decl.shape, lambda *i: self.base[i])

    @property
    def name(self):
        return self.decl.name

    def label(self):
        return f"{self.decl.kind} {self.decl.name!r} of shape {self.shape}"

    @property
    def M(self):
        """The elements as a ``sympy.Matrix`` (a vector becomes a column)."""
        if self.rank == 1:
            return sp.Matrix([self.base[i] for i in range(self.shape[0])])
        if self.rank == 2:
            return sp.Matrix(self.shape[0], self.shape[1], lambda i, j: self.base[i, j])
        raise ModelError(f".M needs rank 1 or 2, got shape {self.shape}")

    def __repr__(self):
        return f"<gradc {self.label()}>"


class Model:
    """A model for one sample. See the module docstring for an example."""

    def __init__(self, name):
        if not isinstance(name, str) or not name:
            raise ModelError("a model needs a non-empty name")
        self.name = name
        self.decls = {}
        self.defs = []
        self.outputs = []
        self._loss = None
        self._loss_where = None
        self._reg = []
        self._n_auto = 0
        self._n_index = 0
        self.where = user_location()
        _current[0] = self

    # ---- declarations -------------------------------------------------
    def _declare(self, name, kind, shape, dtype=REAL, init=None):
        if not isinstance(name, str) or not name:
            raise ModelError(f"a {kind} needs a non-empty string name, got {name!r}")
        if name in self.decls:
            raise ModelError(f"name {name!r} is already used by the {self.decls[name].kind} declared at line {self.decls[name].where[1] if self.decls[name].where else '?'}")
        decl = Decl(name, kind, _shape(shape, f"{kind} {name!r}"), dtype, init, user_location())
        self.decls[name] = decl
        t = Tensor(self, decl)
        if decl.shape == ():
            return t.base.label
        return t

    def _dtype(self, dtype, what):
        if dtype not in _DTYPES:
            raise ModelError(f"dtype of {what} must be 'real' or 'int32', not {dtype!r}")
        return _DTYPES[dtype]

    def input(self, name, shape=(), dtype="real"):
        """A per-sample input: ``x = m.input("x", 784)``; ids: ``u = m.input("user", dtype="int32")``.

        A rank-0 input is returned as a ``sympy.Symbol``; others as a ``Tensor``.
        An int32 input may index a tensor (an embedding row ``E[u, k]``).
        """
        return self._declare(name, "input", shape, self._dtype(dtype, f"input {name!r}"))

    def target(self, name, shape=(), dtype="real"):
        """A per-sample target: ``y = m.target("y")``; class labels: ``m.target("label", dtype="int32")``."""
        return self._declare(name, "target", shape, self._dtype(dtype, f"target {name!r}"))

    def param(self, name, shape=(), init=None):
        """A trainable parameter: ``W = m.param("W", (16, 2), init=gc.init.uniform(-1, 1))``.

        Without ``init``, a parameter starts as PyTorch starts the same layer's:
        a weight (rank 2 or more, stored (fan_out, fan_in, ...) as PyTorch stores a linear or
        convolution weight) is drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in the product
        of its trailing dimensions (``gc.init.linear()``); a vector or a scalar (a bias, a scale)
        starts at zero, since its fan-in is not its own. ``init=0`` asks for zeros on purpose.
        """
        if init is None:
            init = _init.linear() if len(_shape(shape, f"param {name!r}")) >= 2 else 0
        try:
            spec = _init.as_spec(init)
        except TypeError as e:
            raise ModelError(f"parameter {name!r}: {e}")
        return self._declare(name, "param", shape, REAL, spec)

    def dropout(self, x, p, name=None):
        """Inverted dropout: ``x * mask``, where the mask is an input the runtime draws.

        In training the mask holds 0 with probability ``p`` and ``1/(1-p)``
        otherwise, drawn from the training loop's seeded RNG (so runs
        reproduce); in evaluation it is all ones. In C the mask is an
        ordinary input, named ``name`` (default ``dropoutN``)::

            h = m.dropout(gc.relu(W1 @ x + b1), 0.2)
        """
        try:
            p = float(p)
        except (TypeError, ValueError):
            raise ModelError(f"dropout probability must be a number, not {p!r}")
        if not 0.0 <= p < 1.0:
            raise ModelError(f"dropout probability must be in [0, 1), got {p}")
        if name is None:
            k = 1
            while f"dropout{k}" in self.decls:
                k += 1
            name = f"dropout{k}"
        shape = x.shape if isinstance(x, TensorExpr) else ()
        mask = self._declare(name, "input", shape, REAL)
        self.decls[name].dropout = p
        return x * mask

    def tensor(self, name):
        """The handle of a declared tensor, by name."""
        d = self.decls[name]
        t = Tensor(self, d)
        return t.base.label if d.shape == () else t

    # ---- definitions --------------------------------------------------
    def fresh_index(self):
        """A new index symbol, distinct from every other in the model (for helpers that build sums):
        ``k = m.fresh_index(); sp.Sum(W[i, k] * x[k], (k, 0, 9))``."""
        self._n_index += 1
        return sp.Symbol(f"i.{self._n_index}", integer=True)

    def auto_name(self):
        """A new name for an intermediate tensor a helper defines (``~3``), never a user's name:
        ``m.define(m.auto_name(), (4,), elements)``."""
        self._n_auto += 1
        return f"~{self._n_auto}"

    def define(self, name, shape, body=None):
        """Define an intermediate tensor, elementwise over its indices.

        ``body`` is a callable of one index symbol per dimension, a
        ``TensorExpr`` of the same shape, a ``sympy.Matrix``, a list of
        scalar expressions, or (shape ``()``) a scalar expression::

            k = gc.index("k")
            z = m.define("z", 256, lambda i: sp.Sum(W1[i, k] * x[k], (k, 0, 783)) + b1[i])
        """
        if body is None:           # define(name, body): shape taken from the body
            shape, body = None, shape
        where = user_location()
        if shape is None:
            shape = _infer_shape(body)
        shape = _shape(shape, f"tensor {name!r}")
        d = Def(name, shape, where=where)
        if isinstance(body, TensorExpr):
            if body.shape != shape:
                raise ModelError(f"tensor {name!r} declared with shape {shape} but its body has shape {body.shape}")
            d.idx = tuple(self.fresh_index() for _ in shape)
            d.body = sp.sympify(body.fn(*d.idx))
        elif isinstance(body, sp.MatrixBase) or isinstance(body, (list, tuple)):
            els = list(body) if not isinstance(body, sp.MatrixBase) else list(body)
            n = 1
            for s in shape:
                n *= s
            if len(els) != n:
                raise ModelError(f"tensor {name!r} has shape {shape} ({n} elements) but {len(els)} expressions were given")
            if n > UNROLL_LIMIT:
                raise ModelError(unroll_hint(f"tensor {name!r}", n))
            d.elements = [_scalar(e, f"element of {name!r}") for e in els]
        elif callable(body) and not isinstance(body, sp.Basic):
            d.idx = tuple(self.fresh_index() for _ in shape)
            d.body = _scalar(body(*d.idx), f"body of {name!r}")
        else:
            if shape != ():
                raise ModelError(f"tensor {name!r} has shape {shape}; give a callable of its indices, not a scalar")
            d.body = _scalar(body, f"body of {name!r}")
        decl = self._declare(name, "stage", shape)
        self.defs.append(d)
        return decl

    def materialize(self, te):
        """``te`` as a named tensor (defining an intermediate one when needed)."""
        if isinstance(te, Tensor):
            return te
        name = self.auto_name()
        self.define(name, te.shape, te if te.shape else te.fn())
        if getattr(te, "where", None):
            self.defs[-1].where = te.where
        return Tensor(self, self.decls[name])

    def max_over(self, te):
        """A stop-gradient max over all elements of ``te`` (a stabilizing shift), as a rank-0 tensor:
        ``mx = m.max_over(z)`` then ``sp.exp(z[j] - mx)``."""
        t = self.materialize(te)
        idx = tuple(self.fresh_index() for _ in t.shape)
        name = self.auto_name()
        d = Def(name, (), body=t.fn(*idx), op="max",
                red=tuple((k, n) for k, n in zip(idx, t.shape)), where=user_location())
        sym = self._declare(name, "stage", ())
        self.defs.append(d)
        return sym

    def _matmul(self, a, b):
        if a.rank not in (1, 2) or b.rank not in (1, 2):
            raise ModelError(f"@ needs operands of rank 1 or 2, got shapes {a.shape} and {b.shape}")
        if a.shape[-1] != b.shape[0]:
            raise ModelError(f"mismatched shapes for @: {a.shape} @ {b.shape} (inner sizes {a.shape[-1]} and {b.shape[0]} differ)")
        A, B = self.materialize(a), self.materialize(b)
        K = a.shape[-1]
        k = self.fresh_index()
        shape = a.shape[:-1] + b.shape[1:]
        if a.rank == 2 and b.rank == 2:
            fn = lambda i, j: sp.Sum(A.fn(i, k) * B.fn(k, j), (k, 0, K - 1))
        elif a.rank == 2:
            fn = lambda i: sp.Sum(A.fn(i, k) * B.fn(k), (k, 0, K - 1))
        elif b.rank == 2:
            fn = lambda j: sp.Sum(A.fn(k) * B.fn(k, j), (k, 0, K - 1))
        else:
            fn = lambda: sp.Sum(A.fn(k) * B.fn(k), (k, 0, K - 1))
        return TensorExpr(self, shape, fn)

    def output(self, name, expr):
        """A named output, returned by ``forward``: ``score = m.output("score", (W3 @ h + b3)[0])``.

        Returns a ``sympy.Symbol`` for a scalar output (usable in the loss), else a ``Tensor``.
        """
        h = self.define(name, None, expr)
        self.outputs.append(name)
        return h

    def loss(self, expr):
        """The per-sample loss, a scalar; the batch mean is implicit: ``m.loss(sp.Max(0, 1 - y * score))``."""
        if self._loss is not None:
            raise ModelError("the loss is already set; add terms into one expression")
        self._loss_where = user_location()
        self._loss = _scalar(expr, "the loss")

    def regularize(self, expr):
        """A term added once per batch, over parameters only: ``m.regularize(1e-4 * gc.sum_squares(W1, b1))``."""
        self._reg.append((_scalar(expr, "a regularization term"), user_location()))

    def spec(self):
        """The declarations as a ``ModelSpec`` for lowering."""
        if self._loss is None:
            raise ModelError(f"model {self.name!r} has no loss: call m.loss(expr)", where=self.where)
        return ModelSpec(self.name, dict(self.decls), list(self.defs), list(self.outputs),
                         self._loss, self._loss_where, list(self._reg))

    def __repr__(self):
        return f"<gradc.Model {self.name!r}: {len(self.decls)} tensors>"


class TensorInSymPy(ModelError, sp.SympifyError):
    """A tensor expression where SymPy needs a scalar (``sp.exp(t)``): names the gradc way."""

    def __init__(self, t):
        cls = _sympy_caller()
        f = cls.__name__ if cls is not None else None
        if f is None:
            msg = (f"{t.label()} was used where SymPy needs a scalar; index it (t[i]), reduce it "
                   f"(t.sum()), or apply a function to each element with gc.exp(t) or t.map(f)")
        elif f.lower() in _ELEMENTWISE:
            msg = f"sympy.{f} was given {t.label()}; SymPy functions take scalars. For every element use gc.{f.lower()}(t)"
        elif getattr(cls, "nargs", None) == sp.FiniteSet(1):
            msg = (f"sympy.{f} was given {t.label()}; SymPy functions take scalars. For every element use "
                   f"t.map(sympy.{f}), or gc.elementwise(sympy.{f})(t)")
        else:
            msg = (f"sympy.{f} was given {t.label()}; SymPy functions take scalars. For every element use "
                   f"t.map(lambda e: sympy.{f}(e, ...))" + (", or gc.relu(t) for Max(0, t)" if f == "Max" else ""))
        ModelError.__init__(self, msg)


# the gradc helpers named after a SymPy function, suggested when that function is given a tensor
_ELEMENTWISE = ("exp", "log", "tanh", "sqrt", "abs", "sigmoid", "softplus")


def _sympy_caller():
    """The SymPy function whose construction is sympifying a tensor, if any."""
    import inspect
    frame = inspect.currentframe()
    try:
        for _ in range(12):
            frame = frame.f_back
            if frame is None:
                return None
            cls = frame.f_locals.get("cls")
            if frame.f_code.co_name == "__new__" and isinstance(cls, type) and issubclass(cls, sp.Basic) \
                    and cls.__module__.startswith("sympy.functions"):
                return cls
    finally:
        del frame
    return None


def broadcast_shapes(a, b, opname="an operation"):
    """The shape NumPy broadcasts ``a`` and ``b`` to, or a ModelError naming both."""
    out = []
    for d in range(1, max(len(a), len(b)) + 1):
        x = a[-d] if d <= len(a) else 1
        y = b[-d] if d <= len(b) else 1
        if x != y and 1 not in (x, y):
            raise ModelError(f"mismatched shapes for {opname}: {a} and {b} (they do not broadcast: "
                             f"size {x} against {y} in the dimension {d} from the end)")
        out.append(max(x, y))
    return tuple(reversed(out))


def _stretch(t, shape):
    """``t``'s element function over the broadcast ``shape``."""
    lead = len(shape) - t.rank

    def fn(*i):
        return t.fn(*(sp.S.Zero if n == 1 else k for k, n in zip(i[lead:], t.shape)))
    return fn


def _infer_shape(body):
    if isinstance(body, TensorExpr):
        return body.shape
    if isinstance(body, sp.MatrixBase):
        r, c = body.shape
        return (r,) if c == 1 else (r, c)
    if isinstance(body, (list, tuple)):
        return (len(body),)
    return ()


def _scalar(expr, what):
    """``expr`` as a scalar SymPy expression, or a ModelError naming ``what``."""
    if isinstance(expr, TensorExpr):
        if expr.rank == 0:
            return sp.sympify(expr.fn())
        raise ModelError(f"{what} must be a scalar, but it is a tensor of shape {expr.shape}")
    if isinstance(expr, sp.MatrixBase):
        if expr.shape == (1, 1):
            return expr[0, 0]
        raise ModelError(f"{what} must be a scalar, but it is a Matrix of shape {expr.shape}")
    try:
        e = sp.sympify(expr)
    except (sp.SympifyError, TypeError):
        raise ModelError(f"{what} must be a SymPy expression, not {type(expr).__name__}")
    if not isinstance(e, sp.Expr):
        raise ModelError(f"{what} must be a scalar SymPy expression, not {type(e).__name__}")
    return e


def index(name):
    """An index symbol for sums and definitions: ``k = gc.index("k")``."""
    return sp.Symbol(name, integer=True)
