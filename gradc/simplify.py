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
    temps, reduced = sp.cse(list(exprs), symbols=syms)
    return temps, reduced
