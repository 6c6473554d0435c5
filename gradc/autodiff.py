"""Reverse-mode differentiation over stages.

For each stage ``T[o] = body`` (or a reduction of it), the derivative of the
**body** with respect to each distinct read ``R[map(o, r)]`` is taken with
``sympy.diff`` (bodies are small), and becomes an update of ``R``'s adjoint
in the same loop nest::

    dR[map(o, r)] += dT[o] * d(body)/d(R[map(o, r)])

A read through an int32 input (``E[u, k]``) is the same rule: a scatter-add
into row ``u``. Forward values are reused: in ``h = tanh(z)`` the derivative
``1 - tanh(z)**2`` becomes ``1 - h**2``.

Non-smooth points follow PyTorch: relu'(0) = 0, |x|'(0) = 0, and ``Max``
gives the gradient to the first maximal argument.

Example::

    adj = differentiate(prog)
    for a in adj.sample:
        for u in a.updates: print(u)
"""
from dataclasses import dataclass, field

import sympy as sp

from .errors import ModelError
from .ir import Stage, guarded, read_symbol, reads, unflat
from .simplify import live_stages


@dataclass
class Update:
    """``d<tensor>[idx] += expr`` (``expr`` already holds the incoming adjoint)."""
    tensor: str
    idx: tuple
    expr: sp.Expr

    def __str__(self):
        lhs = f"d{self.tensor}[{', '.join(map(str, self.idx))}]" if self.idx else f"d{self.tensor}"
        return f"{lhs} += {self.expr}"


@dataclass
class Adjoint:
    """The backward loop nest of one stage: the same loops, a list of updates."""
    stage: object
    updates: list


@dataclass
class Gradient:
    """The backward pass of a program."""
    live: list                   # forward stages the loss needs, in order
    adjoints: list               # backward nests, in execution order (reverse of forward)
    has_grad: set = field(default_factory=set)   # tensors that carry an adjoint (params and stages)


def adjoint_symbol(name):
    """The SymPy base of tensor ``name``'s adjoint (printed as its adjoint buffer)."""
    return sp.Symbol("\u2202" + name, real=True)


def adjoint_read(t, idx):
    base = adjoint_symbol(t.name)
    return sp.IndexedBase(base)[tuple(idx)] if t.shape else base


def _relu_first(e):
    # Max/Min as Piecewise, first argument winning ties; a 0 argument (relu)
    # wins its ties so that relu'(0) = 0 as in PyTorch.
    args = list(e.args)
    if 0 in args:
        args.remove(0)
        args.insert(0, sp.S.Zero)
    # nested two at a time, Max(a, b, c) = a if a >= Max(b, c) else Max(b, c): the derivative of
    # argument k is then k comparisons with the max of the arguments after it (a 2x2 max-pool's
    # backward pass: 3 tests, not the 30-term conjunctions sympy makes of the flat form)
    better = (lambda a, b: a >= b) if isinstance(e, sp.Max) else (lambda a, b: a <= b)
    if len(args) > 2:
        rest = type(e)(*args[1:], evaluate=False)
        return sp.Piecewise((args[0], better(args[0], rest)), (_relu_first(rest), True), evaluate=False)
    return sp.Piecewise((args[0], better(args[0], args[1])), (args[1], True), evaluate=False)


def local_derivatives(body, wrt):
    """d(body)/d(w) for each read ``w`` in ``wrt``, in terms of the reads themselves."""
    dummies = {w: sp.Dummy(f"w{k}", real=True) for k, w in enumerate(wrt)}
    b = body.xreplace(dummies)
    b = b.replace(lambda e: isinstance(e, (sp.Max, sp.Min)), _relu_first)
    back = {d: w for w, d in dummies.items()}
    out = []
    for w in wrt:
        g = sp.diff(b, dummies[w])
        g = g.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)
        # floor, ceiling and sign are flat almost everywhere; sympy may wrap their derivative in a Subs
        # (or leave sign's unevaluated, when it cannot prove the argument real: sign(p / sqrt(s + 1)))
        flat = (sp.floor, sp.ceiling, sp.sign)
        g = g.replace(lambda e: isinstance(e, sp.Subs) and isinstance(e.expr, sp.Derivative)
                      and isinstance(e.expr.expr, flat), lambda e: sp.S.Zero)
        g = g.replace(lambda e: isinstance(e, sp.Derivative) and isinstance(e.expr, flat), lambda e: sp.S.Zero)
        if g.has(sp.Derivative):
            raise ModelError(f"cannot differentiate {body} with respect to {w}")
        out.append(g.xreplace(back))
    return out


def differentiate(prog, frozen=frozenset()):
    """The backward pass of ``prog``: adjoint nests for every stage the loss needs. Parameters in
    ``frozen`` are constants here (a partial fine-tuning export): no gradient reaches them."""
    live = live_stages(prog, [prog.loss, prog.reg])
    # the loss and the regularization always own an adjoint: the kernel seeds them
    has_grad = {t.name for t in prog.params if t.name not in frozen} | {n for n in (prog.loss, prog.reg) if n}
    for st in live:
        if st.grad and any(n in has_grad for b in st.bodies() for n, _, _ in reads(b, prog.tensors)):
            has_grad.add(st.name)
    adjoints = []
    # per-sample stages run backward inside the sample loop, batch stages after it
    order = [s for s in reversed(live) if s.scope == "sample"] + \
            [s for s in reversed(live) if s.scope == "batch"]
    for st in order:
        if st.name not in has_grad:
            continue
        t = prog.tensors[st.name]
        updates = []
        guard = guarded(st, t.shape)
        if guard is not None:
            adjoints.append(_guarded_adjoint(prog, st, guard, has_grad))
            continue
        if st.elements is not None:
            for e, body in enumerate(st.elements):
                g = adjoint_read(t, unflat(e, t.shape))
                own = read_symbol(t) if not t.shape else sp.IndexedBase(read_symbol(t))[unflat(e, t.shape)]
                updates += _updates(prog, body, g, own, has_grad)
        else:
            out_read = read_symbol(t) if not t.shape else sp.IndexedBase(read_symbol(t))[st.idx]
            updates = _updates(prog, st.body, adjoint_read(t, st.idx), out_read if not st.red else None, has_grad)
        adjoints.append(Adjoint(st, _merge(updates)))
    return Gradient(live, adjoints, has_grad)



def _guarded_adjoint(prog, st, guard, has_grad):
    """The backward pass of a guarded read (zero padding, ``P[i] = x[i - p]`` where ``p <= i <=
    hi``): a nest over the box where the guard holds, shifted to start at 0, so that every
    adjoint it writes is in range: ``dx[i] += dP[i + p]`` over x's elements."""
    val, bounds = guard
    t = prog.tensors[st.name]
    sub = {k: k + bounds[k][0] for k in st.idx}
    ups = [Update(u.tensor, tuple(sp.sympify(i).xreplace(sub) for i in u.idx), u.expr.xreplace(sub))
           for u in _updates(prog, val, adjoint_read(t, st.idx), None, has_grad)]
    box = tuple((k, bounds[k][1] - bounds[k][0] + 1) for k in st.idx)
    nest = Stage(st.name, (), box, "sum", val.xreplace(sub), scope=st.scope, where=st.where)
    return Adjoint(nest, _merge(ups))


def _updates(prog, body, g, own, has_grad):
    rds = [(n, idx, r) for n, idx, r in reads(body, prog.tensors) if n in has_grad]
    if not rds:
        return []
    ds = local_derivatives(body, [r for _, _, r in rds])
    out = []
    for (n, idx, _), d in zip(rds, ds):
        if own is not None:
            d = d.xreplace({body: own})     # reuse the forward value
        if d != 0:
            out.append(Update(n, idx, g * d))
    return out


def _merge(updates):
    # several elements updating the same adjoint element add up in one statement
    merged = {}
    for u in updates:
        key = (u.tensor, u.idx)
        merged[key] = merged[key] + u.expr if key in merged else u.expr
    return [Update(n, idx, e) for (n, idx), e in merged.items()]
