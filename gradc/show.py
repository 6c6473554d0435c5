"""Human-readable listings of a model's stages and their gradients (text or LaTeX).

Example::

    print(listing(prog, differentiate(prog)))
    print(listing(prog, differentiate(prog), latex=True))
"""
import sympy as sp

_LETTERS = "ijklmnpqrs"


def _rename(st):
    loops = list(st.idx) + [k for k, _ in st.red]
    return {k: sp.Symbol(_LETTERS[n] if n < len(_LETTERS) else f"i{n}", integer=True)
            for n, k in enumerate(loops)}


def _fmt(e, latex):
    return sp.latex(e) if latex else sp.sstr(e)


def _lhs(name, idx, latex):
    if not idx:
        return sp.latex(sp.Symbol(name)) if latex else name
    base = sp.IndexedBase(sp.Symbol(name))[tuple(idx)]
    return _fmt(base, latex)


def listing(prog, grad=None, latex=False):
    """The forward definitions of ``prog`` and, given ``grad``, the adjoint updates."""
    out = []
    arrow = r" \mathrel{+}= " if latex else " += "
    eq = " = "
    shapes = lambda ts: ", ".join(f"{t.name}{list(t.shape) if t.shape else ''}" for t in ts)  # noqa: E731
    out.append(f"model {prog.name}: inputs {shapes(prog.inputs) or '-'}; targets {shapes(prog.targets) or '-'}; "
               f"parameters {shapes(prog.params)} ({sum(t.size for t in prog.params)} values)")
    out.append("forward (per sample; '~' names are intermediates gradc introduced):")
    for st in prog.stages:
        r = _rename(st)
        if st.elements is not None:
            for k, e in enumerate(st.elements):
                out.append(f"  {st.name}[{k}]{eq}{_fmt(e, latex)}")
            continue
        body = st.body.xreplace(r)
        if st.red:
            lim = [(r[k], 0, n - 1) for k, n in st.red]
            body = sp.Sum(body, *lim) if st.op == "sum" else sp.Function("max")(body, *[l[0] for l in lim])
        tag = "  [once per batch]" if st.scope == "batch" else ""
        out.append(f"  {_lhs(st.name, [r[k] for k in st.idx], latex)}{eq}{_fmt(body, latex)}{tag}")
    out.append(f"loss = mean over the batch of {prog.loss}" + (f", plus {prog.reg}" if prog.reg else ""))
    if grad is not None:
        out.append("gradient (reverse mode; d<name> is the adjoint of <name>, summed over each stage's loops):")
        for a in grad.adjoints:
            r = _rename(a.stage)
            for u in a.updates:
                idx = [sp.sympify(i).xreplace(r) for i in u.idx]
                lhs = _lhs("d" + u.tensor, idx, latex)
                rhs = u.expr.xreplace(r).xreplace({s: sp.Symbol("d" + s.name[1:], real=True)
                                                    for s in u.expr.free_symbols if s.name.startswith("\u2202")})
                rhs = rhs.replace(lambda e: isinstance(e, sp.Indexed) and e.base.label.name.startswith("\u2202"),
                                  lambda e: sp.IndexedBase(sp.Symbol("d" + e.base.label.name[1:]))[e.indices])
                out.append(f"  {lhs}{arrow}{_fmt(rhs, latex)}")
    return "\n".join(out)
