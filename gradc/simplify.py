"""Dead-code elimination and common subexpressions.

Example::

    live = live_stages(prog, [prog.loss])          # the stages the loss needs
    temps, exprs = cse_block([e1, e2], prefix="t")  # shared subexpressions once
"""
import sympy as sp

from .ir import reads


def live_stages(prog, roots):
    """The stages needed to compute the tensors in ``roots``, in program order."""
    need = set(r for r in roots if r)
    for st in reversed(prog.stages):
        if st.name in need:
            for b in st.bodies():
                need |= {name for name, _, _ in reads(b, prog.tensors)}
    return [st for st in prog.stages if st.name in need]


def cse_block(exprs, prefix="t"):
    """``sympy.cse`` over a small block: (list of (symbol, expr) temporaries, reduced exprs).

    Only bodies are passed here (a few nodes each), never a whole model, so
    the cost stays linear in the size of the model.
    """
    # Dummy symbols cannot collide with a tensor that happens to be named t0
    syms = sp.numbered_symbols(prefix, cls=sp.Dummy, real=True)
    exprs = [sp.sympify(e) for e in exprs]
    # A branch's condition is computed on its own, never from subexpressions shared with the rest of
    # the block: the backward pass of a Max or Min evaluates one condition in several loop nests (one
    # per adjoint it updates), and when the two sides tie (one value reached by two paths, a row of a
    # tensor and a stage gathered from it) a condition rounded one way in one nest and another way in
    # the next sends the gradient down both paths, or neither.
    conds = []
    for e in exprs:
        for pw in e.atoms(sp.Piecewise):
            conds += [c for _, c in pw.args if isinstance(c, sp.logic.boolalg.Boolean)
                      and not isinstance(c, (sp.logic.boolalg.BooleanTrue, sp.logic.boolalg.BooleanFalse))
                      and c not in conds]
    if not conds:
        temps, reduced = sp.cse(exprs, symbols=syms)
        return temps, reduced
    flags = {c: sp.Dummy(f"q{k}") for k, c in enumerate(conds)}
    pre = []
    for c, q in flags.items():
        ct, (cr,) = sp.cse([c], symbols=syms)
        pre += ct + [(q, cr)]
    temps, reduced = sp.cse([e.xreplace(flags) for e in exprs], symbols=syms)
    return pre + temps, reduced
