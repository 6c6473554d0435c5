"""Human-readable listings of a model's stages and their gradients (text or LaTeX).

Example::

    print(listing(prog, differentiate(prog)))
    print(listing(prog, differentiate(prog), latex=True))
"""
import sympy as sp

_LETTERS = "ijklmnpqrs"


def _loop_names(st):
    loops = list(st.idx) + [k for k, _ in st.red]
    return {k: sp.Symbol(_LETTERS[n] if n < len(_LETTERS) else f"i{n}", integer=True)
            for n, k in enumerate(loops)}


class _Fmt:
    """Formats expressions; in LaTeX, gradc's "~" intermediates (a non-breaking space there) become t-tilde."""

    def __init__(self, prog, latex):
        self.latex = latex
        self.display = {}
        for t in prog.tensors.values():
            for pre in ("", "d", "\u2202"):
                shown = ("d" if pre else "") + (self._internal(t.name) if latex else t.name)
                self.display[pre + t.name] = shown

    @staticmethod
    def _internal(name):
        return r"\tilde{t}_{%s}" % name[1:] if name.startswith("~") else name

    def name(self, n):
        return self.display.get(n, n)

    def expr(self, e):
        def sym(s):
            return sp.Symbol(self.name(s.name), **s.assumptions0)
        rep = {s: sym(s) for s in e.free_symbols if isinstance(s, sp.Symbol) and s.name in self.display}
        e = e.replace(lambda x: isinstance(x, sp.Indexed),
                      lambda x: sp.IndexedBase(sym(x.base.label))[x.indices]).xreplace(rep)
        return sp.latex(e) if self.latex else sp.sstr(e)

    def lhs(self, name, idx):
        if not idx:
            return self.expr(sp.Symbol(name, real=True))
        return self.expr(sp.IndexedBase(sp.Symbol(name, real=True))[tuple(idx)])


def listing(prog, grad=None, latex=False):
    """The forward definitions of ``prog`` and, given ``grad``, the adjoint updates."""
    f = _Fmt(prog, latex)
    arrow = r" \mathrel{+}= " if latex else " += "
    shapes = lambda ts: ", ".join(f"{t.name}{list(t.shape) if t.shape else ''}" for t in ts)  # noqa: E731
    out = [f"model {prog.name}: inputs {shapes(prog.inputs) or '-'}; targets {shapes(prog.targets) or '-'}; "
           f"parameters {shapes(prog.params)} ({sum(t.size for t in prog.params)} values)",
           "forward (per sample; '~' names are intermediates gradc introduced):"]
    for st in prog.stages:
        r = _loop_names(st)
        tag = "  [once per batch]" if st.scope == "batch" else ""
        if st.elements is not None:
            for k, e in enumerate(st.elements):
                out.append(f"  {f.lhs(st.name, [k])} = {f.expr(e)}{tag}")
            continue
        body = st.body.xreplace(r)
        if st.red:
            lim = [(r[k], 0, n - 1) for k, n in st.red]
            body = sp.Sum(body, *lim) if st.op == "sum" else sp.Function("max")(body, *[v for v, _, _ in lim])
        out.append(f"  {f.lhs(st.name, [r[k] for k in st.idx])} = {f.expr(body)}{tag}")
    out.append(f"loss = mean over the batch of {f.name(prog.loss)}" + (f", plus {f.name(prog.reg)}" if prog.reg else ""))
    if grad is not None:
        out.append("gradient (reverse mode; d<name> is the adjoint of <name>, summed over each stage's loops):")
        for a in grad.adjoints:
            r = _loop_names(a.stage)
            for u in a.updates:
                idx = [sp.sympify(i).xreplace(r) for i in u.idx]
                out.append(f"  {f.lhs('d' + u.tensor, idx)}{arrow}{f.expr(u.expr.xreplace(r))}")
    return "\n".join(out)
