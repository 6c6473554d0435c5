"""Each sample's gradient kept lane by lane: the per-sample backward pass rewritten for gradient norms.

The backward pass of a block sums the samples' contributions to a parameter's gradient over the
block's lanes (``LaneSum`` into ``G_W[...]``, ``RankOneUpdate`` into ``G_W``). For the norm of each
sample's gradient (DP-SGD's clipping) the same statements instead add lane ``b``'s contribution to
``L_W[(...) * GC_L + b]``, a copy of the gradient per lane: one pass over a block yields the
gradients of its samples side by side, and their norms, at about the cost of the summed pass.

``rewrite(nodes)`` returns the rewritten statements, or None when a statement cannot keep its
gradient per lane: a scatter through an index input (``SampleLoop``) or a sum into the adjoint of a
tensor computed once per batch (whose backward pass runs after the blocks). Those models take the
path of one sample at a time.

Example::

    >>> from gradc.codegen.kir import Expr, LaneSum, Accumulate, lit
    >>> s = LaneSum(("r0",), (Expr("G_b[l0]", {"G_b"}, "G_b"),), (Accumulate(lit("r0"), Expr("D_z[b]", {"D_z"})),))
    >>> print(rewrite([s])[0].body[0].target)
    L_b[(l0) * GC_L + b]
"""
import re
from dataclasses import replace

from . import kir

_REF = re.compile(r"^G_(\w+)\[(.*)\]$", re.S)


class _Unsupported(Exception):
    """A statement whose gradient cannot be kept lane by lane."""


def _lanes_ref(target):
    m = _REF.match(target.text)
    if not m or target.array != "G_" + m.group(1):
        raise _Unsupported(target.text)
    name = "L_" + m.group(1)
    return kir.Expr(f"{name}[({m.group(2)}) * GC_L + b]", (target.names - {target.array}) | {name}, name)


def _writes_gradient(n):
    return any(a.startswith("G_") for a in n.writes())


def _node(n):
    if isinstance(n, kir.LaneSum):
        regs = {r: _lanes_ref(t) for r, t in zip(n.regs, n.targets)}
        body = []
        for s in n.body:
            if isinstance(s, kir.Accumulate) and s.target.text in regs:
                body.append(kir.Accumulate(regs[s.target.text], s.value))
            else:
                body.append(_node(s))
        return kir.LaneLoop(tuple(body))
    if isinstance(n, kir.LaneTile) and n.totals:
        post = n.post + tuple(kir.Accumulate(_lanes_ref(t), kir.lit(f"{a.name}[b]")) for a, t in zip(n.accs, n.totals))
        return replace(n, post=post, totals=())
    if isinstance(n, kir.RankOneUpdate):
        if not n.grad.startswith("G_"):
            raise _Unsupported(n.grad)
        return kir.RankOneLanes(src=n.src, d=n.d, grad="L_" + n.grad[2:], rows=n.rows, cols=n.cols, coef=n.coef)
    if isinstance(n, kir.Nest):
        return replace(n, pre=_all(n.pre), body=_all(n.body), post=_all(n.post))
    if isinstance(n, (kir.Loop, kir.LaneLoop)):
        return replace(n, body=_all(n.body))
    if _writes_gradient(n) or isinstance(n, kir.SampleLoop):
        raise _Unsupported(n.kind)
    return n


def _all(nodes):
    return tuple(_node(n) for n in nodes)


def rewrite(nodes, batch_adjoints=()):
    """``nodes`` (a block's backward pass) with every gradient kept per lane, or None when some
    statement cannot be (see the module's docstring). ``batch_adjoints``: the C names of adjoints
    of tensors computed once per batch; a statement summing into one of them makes it None."""
    try:
        out = _all(nodes)
    except _Unsupported:
        return None
    if set(batch_adjoints) & kir.arrays(out):
        return None
    return out
