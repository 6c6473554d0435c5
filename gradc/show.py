"""Human-readable listings of a model's stages and their gradients: text, LaTeX, or notebook formulas.

Example::

    print(listing(prog, differentiate(prog)))
    print(listing(prog, differentiate(prog), latex=True))   # a LaTeX fragment (needs amsmath)
    gc.formulas(m)                                          # in a notebook: the formulas, typeset

The LaTeX names gradc's intermediates ``\\tilde{t}^{(r1)}`` and indexes them below,
``\\tilde{t}^{(r1)}_{i}``; a user tensor whose name has a subscript is indexed outside parentheses,
``\\left(W_{1}\\right)_{i,j}``, so no subscript is stacked on another. ``d<name>`` is the adjoint of
``<name>`` in both forms.
"""
import html

import sympy as sp
from sympy.printing.latex import LatexPrinter

_LETTERS = "ijklmnpqrs"


def _loop_names(st):
    loops = list(st.idx) + [k for k, _ in st.red]
    return {k: sp.Symbol(_LETTERS[n] if n < len(_LETTERS) else f"i{n}", integer=True)
            for n, k in enumerate(loops)}


def _scripts_at_top(tex):
    """Whether ``tex`` has a sub- or superscript outside every brace group."""
    depth = 0
    for ch in tex:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch in "_^" and depth == 0:
            return True
    return False


def _latex_text(s):
    """``s`` as upright text in math: ``\\mathrm{loss\\_4}``."""
    esc = "".join("\\" + c if c in "_#$%&{}" else c for c in s)
    return r"\mathrm{%s}" % esc


class _Printer(LatexPrinter):
    """SymPy's LaTeX, with gradc's display names and no stacked or double scripts."""

    def __init__(self, names):
        super().__init__()
        self.names = names

    def _print_Symbol(self, expr, style="plain"):
        if expr.name in self.names:
            return self.names[expr.name]
        if not expr.name.isascii():        # pdflatex has no math glyph for most non-ASCII letters
            return r"\text{%s}" % "".join("\\" + c if c in "_#$%&{}" else c for c in expr.name)
        tex = super()._print_Symbol(expr, style)
        word = len(tex) - len(tex.lstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        if word > 1:                        # score, not s c o r e
            tex = r"\mathit{%s}%s" % (tex[:word], tex[word:])
        return tex

    def _print_Indexed(self, expr):
        base = self._print(expr.base.label)
        idx = ",".join(self._print(i) for i in expr.indices)
        if self.names.get(str(expr.base.label), "").startswith((r"\tilde{t}^", r"d\tilde{t}^")):
            return f"{base}_{{{idx}}}"          # \tilde{t}^{(r1)}_{i}: a subscript below a superscript
        if _scripts_at_top(base):
            return rf"\left({base}\right)_{{{idx}}}"
        return f"{base}_{{{idx}}}"

    def _print_Pow(self, expr):
        b, e = expr.base, expr.exp
        if isinstance(b, (sp.Indexed, sp.Symbol)) and not (e.is_Rational and (e.q != 1 or e.is_negative)):
            base = self._print(b)
            if "^" in base:                 # a second superscript: the base in parentheses
                return rf"\left({base}\right)^{{{self._print(e)}}}"
            return f"{base}^{{{self._print(e)}}}"     # x_{i}^{2}: one subscript, one superscript
        return super()._print_Pow(expr)


class _Fmt:
    """Formats expressions; in LaTeX, gradc's "~" intermediates (a non-breaking space there) become t-tilde."""

    def __init__(self, prog, latex):
        self.latex = latex
        self.display = {}
        for t in prog.tensors.values():
            for pre in ("", "d", "\u2202"):
                shown = ("d" if pre else "") + (self._internal(t.name) if latex else t.name)
                self.display[pre + t.name] = shown
        self.printer = _Printer(self.display) if latex else None

    @staticmethod
    def _internal(name):
        if name.startswith("~"):
            return r"\tilde{t}^{(%s)}" % _latex_text(name[1:])
        return _Printer({})._print_Symbol(sp.Symbol(name))

    def name(self, n):
        return self.display.get(n, n)

    def expr(self, e):
        if self.latex:
            return self.printer.doprint(e)
        def sym(s):
            return sp.Symbol(self.name(s.name), **s.assumptions0)
        rep = {s: sym(s) for s in e.free_symbols if isinstance(s, sp.Symbol) and s.name in self.display}
        e = e.replace(lambda x: isinstance(x, sp.Indexed),
                      lambda x: sp.IndexedBase(sym(x.base.label))[x.indices]).xreplace(rep)
        return sp.sstr(e)

    def lhs(self, name, idx):
        if not idx:
            return self.expr(sp.Symbol(name, real=True))
        return self.expr(sp.IndexedBase(sp.Symbol(name, real=True))[tuple(idx)])

    def max_over(self, body, lim):
        """``max`` of ``body`` over the loops ``lim`` [(var, 0, n - 1)]."""
        if not self.latex:
            return self.expr(sp.Function("max")(body, *[v for v, _, _ in lim]))
        under = r"\\".join(rf"0 \leq {self.expr(v)} \leq {self.expr(hi)}" for v, _, hi in lim)
        sub = under if len(lim) == 1 else rf"\substack{{{under}}}"
        return rf"\max_{{{sub}}} \left({self.expr(body)}\right)"


class _Listing:
    """A model's listing as rows, printed as text, as a LaTeX fragment or for a notebook."""

    def __init__(self, prog, grad, latex):
        f = self.f = _Fmt(prog, latex)
        shapes = lambda ts: ", ".join(f"{t.name}{list(t.shape) if t.shape else ''}" for t in ts)  # noqa: E731
        self.title = (f"model {prog.name}: inputs {shapes(prog.inputs) or '-'}; targets {shapes(prog.targets) or '-'}; "
                      f"parameters {shapes(prog.params)} ({sum(t.size for t in prog.params)} values)")
        self.forward = []               # (lhs, rhs, note)
        for st in prog.stages:
            r = _loop_names(st)
            note = "once per batch" if st.scope == "batch" else ""
            if st.elements is not None:
                for k, e in enumerate(st.elements):
                    self.forward.append((f.lhs(st.name, [k]), f.expr(e), note))
                continue
            body = st.body.xreplace(r)
            if st.red and st.op != "sum":
                rhs = f.max_over(body, [(r[k], 0, n - 1) for k, n in st.red])
            else:
                if st.red:
                    body = sp.Sum(body, *[(r[k], 0, n - 1) for k, n in st.red])
                rhs = f.expr(body)
            self.forward.append((f.lhs(st.name, [r[k] for k in st.idx]), rhs, note))
        if latex:
            loss = rf"\operatorname{{mean}}_{{\text{{batch}}}} {f.name(prog.loss)}" + \
                (f" + {f.name(prog.reg)}" if prog.reg else "")
            self.loss = (r"\text{loss}", loss)
        else:
            self.loss = ("loss", f"mean over the batch of {f.name(prog.loss)}" +
                         (f", plus {f.name(prog.reg)}" if prog.reg else ""))
        self.gradient = None
        if grad is not None:
            self.gradient = []
            for a in grad.adjoints:
                r = _loop_names(a.stage)
                for u in a.updates:
                    idx = [sp.sympify(i).xreplace(r) for i in u.idx]
                    self.gradient.append((f.lhs("d" + u.tensor, idx), f.expr(u.expr.xreplace(r))))

    FORWARD = "forward (per sample; '~' names are intermediates gradc introduced):"
    FORWARD_TEX = r"forward (per sample; \tilde{t} names are intermediates gradc introduced):"
    GRADIENT = "gradient (reverse mode; d<name> is the adjoint of <name>, summed over each stage's loops):"

    def text(self):
        out = [self.title, self.FORWARD]
        out += [f"  {lhs} = {rhs}" + (f"  [{note}]" if note else "") for lhs, rhs, note in self.forward]
        out.append(f"{self.loss[0]} = {self.loss[1]}")
        if self.gradient is not None:
            out.append(self.GRADIENT)
            out += [f"  {lhs} += {rhs}" for lhs, rhs in self.gradient]
        return "\n".join(out)

    def _rows(self):
        fwd = [rf"{lhs} &= {rhs}" + (rf" && \text{{{note}}}" if note else "") for lhs, rhs, note in self.forward]
        fwd.append(rf"{self.loss[0]} &= {self.loss[1]}")
        grad = [rf"{lhs} &\mathrel{{+}}= {rhs}" for lhs, rhs in self.gradient or []]
        return fwd, grad

    def latex(self):
        """A LaTeX fragment for a document's body (with ``\\usepackage{amsmath}``): prose as comments."""
        fwd, grad = self._rows()
        out = [f"% {self.title}", f"% {self.FORWARD_TEX}", r"\begin{align*}", " \\\\\n".join(fwd), r"\end{align*}"]
        if grad:
            out += [f"% {self.GRADIENT}", r"\begin{align*}", " \\\\\n".join(grad), r"\end{align*}"]
        return "\n".join(out)

    def blocks(self):
        """(caption, ``$$\\begin{aligned}...\\end{aligned}$$``) for a notebook."""
        fwd, grad = self._rows()
        wrap = lambda rows: "$$\\begin{aligned}\n" + " \\\\\n".join(rows) + "\n\\end{aligned}$$"  # noqa: E731
        out = [(self.FORWARD_TEX.replace(r"\tilde{t}", "t\u0303"), wrap(fwd))]
        if grad:
            out.append((self.GRADIENT, wrap(grad)))
        return out


def listing(prog, grad=None, latex=False):
    """The forward definitions of ``prog`` and, given ``grad``, the adjoint updates: text, or with
    ``latex`` a LaTeX fragment (the prose as ``%`` comments, the formulas in ``align*``)."""
    lst = _Listing(prog, grad, latex)
    return lst.latex() if latex else lst.text()


class Formulas:
    """A model's forward definitions and gradients as formulas, for a notebook: Jupyter shows
    ``_repr_html_`` (MathJax ``$$...$$``) or ``_repr_latex_``; ``str()`` is ``gradc show``'s text.

    Example: ``gc.formulas(m)`` as the last line of a cell; ``print(gc.formulas(m))``.
    """

    def __init__(self, prog, grad=None):
        self.prog, self.grad = prog, grad
        self._text = _Listing(prog, grad, False).text()
        self._tex = _Listing(prog, grad, True)

    def __str__(self):
        return self._text

    def __repr__(self):
        return self._text

    def _repr_pretty_(self, p, cycle):
        p.text(self._text)

    def latex(self):
        """The LaTeX fragment ``gradc show --latex`` prints."""
        return self._tex.latex()

    def _repr_latex_(self):
        return "\n".join(block for _, block in self._tex.blocks())

    def _repr_html_(self):
        parts = [f"<p><b>{html.escape(self._tex.title)}</b></p>"]
        for caption, block in self._tex.blocks():
            parts.append(f"<p>{html.escape(caption)}</p>\n<div>{html.escape(block, quote=False)}</div>")
        return '<div class="gradc-formulas">\n' + "\n".join(parts) + "\n</div>"


def formulas(model, gradients=True):
    """The formulas of ``model`` (a ``gradc.Model``, or a lowered program) and, with ``gradients``,
    of its gradient, as a ``Formulas`` object that a notebook typesets.

    Example::

        m = gc.Model("line"); ...
        gc.formulas(m)            # the last line of a Jupyter cell: typeset with MathJax
        print(gc.formulas(m))     # the text of ``gradc show``
    """
    from .api import deep_guard
    from .autodiff import differentiate
    from .ir import lower
    prog = lower(model.spec()) if hasattr(model, "spec") else model
    if not hasattr(prog, "stages"):
        raise TypeError(f"formulas takes a gradc.Model (or a lowered program), not {type(model).__name__}")
    with deep_guard(prog, "differentiating and printing"):
        return Formulas(prog, differentiate(prog) if gradients else None)
