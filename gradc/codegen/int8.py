"""Render a ``quantize.QuantPlan`` as C99: ``NAME.h`` and ``NAME.c`` of an int8 inference export.

Each op of the plan becomes one loop nest in ``NAME_sample`` (one sample at a time, so the
workspace holds one sample's activations, reused between stages whose lives do not overlap); the
quantized weights, per-channel multipliers and tables are ``const`` arrays (flash on a
microcontroller). Every integer and float32 operation is the one ``QuantPlan.reference`` performs,
in the same order: ``gc_q_quantize`` divides (no multiply that a compiler could fuse into an FMA),
``gc_q_requant`` rounds a 64-bit product with an explicit floor (no implementation-defined shift of
a negative number). ``templates/c/int8.c.j2`` and ``int8.h.j2`` lay the files out.

Example::

    src = render_int8(plan(prog, params, calib))
    open("digits.c", "w").write(src.c)
"""
import numpy as np
import sympy as sp

from .. import abi
from .._version import __version__
from ..ir import INT, REAL
from .c import Printer, Source, c_literal, comment_text, helper_functions, templates
from .names import Namer, ident


def _ints(a, per_row=16):
    flat = [str(int(v)) for v in np.asarray(a).reshape(-1)]
    return [", ".join(flat[i:i + per_row]) for i in range(0, len(flat), per_row)]


def _floats(a, per_row=8):
    flat = [c_literal(float(v), "float32") for v in np.asarray(a, dtype=np.float32).reshape(-1)]
    return [", ".join(flat[i:i + per_row]) for i in range(0, len(flat), per_row)]


class _Render:
    def __init__(self, qp):
        self.qp, self.prog = qp, qp.prog
        self.M = ident(self.prog.name, "model")
        self.MU = self.M.upper()
        names = Namer()
        self.c = {t.name: names(t.name) for t in self.prog.tensors.values()}
        self.consts = []            # dicts: ctype, var, count, rows
        self.helpers = set()
        self.libm = False
        self._layout()

    # ---- memory: one sample's values, first fit by lifetime ---------------------------------
    def _layout(self):
        ops = self.qp.ops
        last = {}
        for k, op in enumerate(ops):
            for v in op.ins:
                last[v] = k
        for o in self.qp.outputs:
            last[(o, "f")] = len(ops)
        self.buf = {}            # value -> (var, ctype, offset, bytes)
        live, top = [], 0
        for k, op in enumerate(ops):
            v = op.out
            size = int(np.prod(self.qp.shapes[v[0]], dtype=np.int64))
            nbytes = (size * (1 if v[1] == "q" else 4) + 3) // 4 * 4
            live.sort()
            off = 0
            for lo, hi, _ in live:
                if off + nbytes <= lo:
                    break
                off = max(off, hi)
            var = f"v{k}"
            self.buf[v] = (var, "int8_t" if v[1] == "q" else "float", off, nbytes)
            live.append((off, off + nbytes, v))
            top = max(top, off + nbytes)
            live = [x for x in live if last.get(x[2], -1) > k or x[2] == v]
        self.work_bytes = max(top, 4)

    def where(self, op):
        """Printer placement of every tensor an op reads or writes."""
        w = {}
        for t in self.prog.tensors.values():
            if t.kind == "input" and t.name not in self.qp.consts:
                w[t.name] = ("in_" + self.c[t.name], t.shape, t.dtype, False, 0)
        for v in op.ins + [op.out]:
            if v in self.buf:
                w[v[0]] = (self.buf[v][0], self.qp.shapes[v[0]], REAL, False, 0)
        return w

    def const(self, kind, a, prefix):
        var = f"gc_{prefix}{len(self.consts)}"
        a = np.asarray(a)
        rows = _floats(a) if kind == "float" else _ints(a)
        self.consts.append(dict(ctype=kind, var=var, count=max(1, a.size), rows=rows))
        return var

    def loops(self, syms_ext, names, indent):
        lines = []
        for s, e in syms_ext:
            lines.append("    " * indent + f"for (int {names[s]} = 0; {names[s]} < {int(e)}; ++{names[s]})")
        return lines

    # ---- ops ---------------------------------------------------------------------------------
    def op_lines(self, k, op):
        st = op.stage
        pname = lambda v: self.buf[v][0]  # noqa: E731
        if op.kind == "const":
            var = self.const("float", op.info["values"], "c")
            return [f"for (int i = 0; i < {op.info['values'].size}; ++i) {pname(op.out)}[i] = {var}[i];"]
        if op.kind in ("quantize", "dequantize"):
            size = int(np.prod(self.qp.shapes[op.src], dtype=np.int64))
            if op.kind == "quantize":
                is_input = (op.src, "f") not in self.buf        # checked finite on entry
                src = ("in_" + self.c[op.src]) if is_input else pname((op.src, "f"))
                dst = pname(op.out)
                check = [] if is_input else [f"    if (!({src}[i] - {src}[i] == 0.0F)) return {self.MU}_ENONFINITE;"]
                return [f"for (int i = 0; i < {size}; ++i) {{", *check,
                        f"    {dst}[i] = gc_q_quantize({src}[i], {c_literal(op.q_out.scale, 'float32')}, "
                        f"{op.q_out.zero_point});",
                        "}"]
            return [f"for (int i = 0; i < {size}; ++i)",
                    f"    {pname(op.out)}[i] = (float)((int32_t){pname((op.src, 'q'))}[i] - "
                    f"({op.q_in.zero_point})) * {c_literal(op.q_in.scale, 'float32')};"]
        shape = self.qp.shapes[st.name]
        names = {s: f"l{j}" for j, s in enumerate(st.idx)}
        names.update({s: f"r{j}" for j, (s, _) in enumerate(st.red)})
        w = self.where(op)
        out_name = op.out[0]
        w[out_name] = (pname(op.out), self.qp.shapes[out_name], REAL, False, 0)
        pr = Printer("float32", w, names, "float", self.helpers)
        dst = pr.flat(out_name, st.idx) if st.elements is None else None
        lines = self.loops(list(zip(st.idx, shape)), names, 0)
        body = []
        if op.kind == "linear":
            i = op.info
            wvar = self.const("int8_t", i["wq"], "wq")
            w[i["W"]] = (wvar, i["wq"].shape, REAL, False, 0)
            w["__chan"] = ("", tuple(np.shape(i["m0"])), REAL, False, 0)
            chan = pr.flat("__chan", i["chan"]) if i["chan"] else "[0]"
            init = "0"
            if i["bias"] is not None:
                bvar = self.const("int32_t", i["bq"], "bq")
                w["__bias"] = (bvar, tuple(np.shape(i["bq"])), REAL, False, 0)
                init = pr.flat("__bias", i["bias_index"]) if i["bias_index"] else f"{bvar}[0]"
            wread = pr.read(self._read_of(st.body, i["W"]), cast=False)
            aread = pr.read(self._read_of(st.body, i["A"]), cast=False)
            body.append(f"int32_t acc = {init};")
            body += self.loops(list(st.red), names, 0)
            body.append(f"    acc += (int32_t){wread} * ((int32_t){aread} - ({op.q_in.zero_point}));")
            if op.out[1] == "q":
                m0 = self.const("int32_t", i["m0"], "m0_")
                sh = self.const("int8_t", i["sh"], "sh")
                r = f"gc_q_requant(acc, {m0}{chan}, {sh}{chan}, {i['zo']}, {i['lo_q']}, {i['hi_q']})"
                if i.get("table") is not None:
                    lut = self.const("int8_t", i["table"], "lut")
                    r = f"{lut}[{r} + 128]"
                body.append(f"{dst} = {r};")
            else:
                s = self.const("float", i["scale"], "s")
                body.append(f"{{ float y = (float)acc * {s}{chan};")
                if i["lo_f"] is not None:
                    body.append(f"  y = y < {c_literal(i['lo_f'], 'float32')} ? {c_literal(i['lo_f'], 'float32')} : y;")
                if i["hi_f"] is not None:
                    body.append(f"  y = y > {c_literal(i['hi_f'], 'float32')} ? {c_literal(i['hi_f'], 'float32')} : y;")
                body.append(f"  {dst} = y; }}")
        elif op.kind == "move":
            b = op.info["body"]
            if isinstance(b, sp.Piecewise):
                (val, cond), _ = b.args
                body.append(f"{dst} = ({pr.doprint(cond)}) ? {pr.read(val, cast=False)} : "
                            f"(int8_t)({op.q_in.zero_point});")
            else:
                body.append(f"{dst} = {pr.read(b, cast=False)};")
        elif op.kind == "max":
            if st.op == "max":
                body.append("int8_t m = -128;")
                body += self.loops(list(st.red), names, 0)
                rd = pr.read(st.body, cast=False)
                body.append(f"    m = {rd} > m ? {rd} : m;")
            else:
                args = [pr.read(a, cast=False) for a in st.body.args]
                body.append(f"int8_t m = {args[0]};")
                body += [f"m = {a} > m ? {a} : m;" for a in args[1:]]
            body.append(f"{dst} = m;")
        elif op.kind == "table":
            lut = self.const("int8_t", op.info["table"], "lut")
            body.append(f"{dst} = {lut}[(int){pr.read(op.info['read'], cast=False)} + 128];")
        elif op.kind == "float":
            body += self._float_body(op, st, pr, w, dst, names)
        return lines + ["{"] + ["    " + x for x in body] + ["}"] if st.elements is None or op.kind != "float" \
            else body

    def _float_body(self, op, st, pr, w, dst, names):
        self.libm = True
        for name in self._const_reads(st):
            if name not in self._pvars:
                self._pvars[name] = self.const("float", self.qp.consts[name], "p")
            w[name] = (self._pvars[name], self.qp.shapes[name], REAL, False, 0)
        if st.elements is not None:           # straight-line code, one element a line
            var = self.buf[op.out][0]
            return [f"{var}[{j}] = {pr.doprint(e)};" for j, e in enumerate(st.elements)]
        if st.red:
            init = "0.0F" if st.op == "sum" else "-HUGE_VALF"
            x = pr.doprint(st.body)
            step = f"acc += {x};" if st.op == "sum" else f"{{ const float t = {x}; acc = acc >= t ? acc : t; }}"
            return [f"float acc = {init};"] + self.loops(list(st.red), names, 0) + ["    " + step, f"{dst} = acc;"]
        return [f"{dst} = {pr.doprint(st.body)};"]

    def _const_reads(self, st):
        from ..ir import reads
        return [n for b in st.bodies() for n, _, _ in reads(b, self.prog.tensors) if n in self.qp.consts]

    @staticmethod
    def _read_of(body, name):
        for n in sp.preorder_traversal(body):
            if isinstance(n, sp.Indexed) and n.base.label.name == name:
                return n
            if isinstance(n, sp.Symbol) and n.name == name:
                return n
        raise AssertionError(name)

    def render(self):
        self._pvars = {}
        prog, qp = self.prog, self.qp
        ops = []
        for k, op in enumerate(qp.ops):
            label = comment_text(qp.report_line(op), 100)
            ops.append(dict(comment=label, lines=self.op_lines(k, op)))
        ins = [dict(name=self.c[t.name], raw=t.name, size=t.size, is_int=t.dtype == INT,
                    ctype="int32_t" if t.dtype == INT else "float", shape=list(t.shape),
                    bounds=[(j, int(b)) for j, b in enumerate(prog.int_bounds.get(t.name, []) or [])
                            if b is not None])
               for t in prog.inputs if t.name not in qp.consts]
        outs = [dict(name=self.c[o], size=prog.tensors[o].size, shape=list(prog.tensors[o].shape),
                     var=self.buf[(o, "f")][0] if (o, "f") in self.buf else "in_" + self.c[o],
                     cast="(float)" if prog.tensors[o].dtype == INT else "") for o in qp.outputs]
        bufs = [dict(var=v, ctype=ct, off=off) for v, ct, off, _ in self.buf.values()]
        helpers = helper_functions(self.helpers, "float32")
        ctx = dict(M=self.M, MU=self.MU, ops=ops, ins=ins, outs=outs, bufs=bufs, consts=self.consts,
                   helpers=helpers, libm=self.libm or bool(helpers), work_bytes=self.work_bytes,
                   abi_version=abi.ABI_VERSION, model_hash=qp.digest(), gradc_version=__version__,
                   report=[comment_text(x, 100) for x in qp.report()], errors=abi.error_codes("c"),
                   flash=self.flash_bytes(), name=comment_text(prog.name, 60),
                   uses_quantize=any(op.kind == "quantize" for op in qp.ops),
                   uses_requant=any(op.kind == "linear" and op.out[1] == "q" for op in qp.ops))
        env = templates()
        h = env.get_template("c/int8.h.j2").render(**ctx)
        c = env.get_template("c/int8.c.j2").render(**ctx)
        return Source(self.M, c, h, "", dict(work_bytes=self.work_bytes, model_hash=ctx["model_hash"],
                                      const_bytes=ctx["flash"], c_names=self.c))

    def flash_bytes(self):
        size = {"int8_t": 1, "int32_t": 4, "float": 4}
        return sum(size[c["ctype"]] * c["count"] for c in self.consts)


def render_int8(qp):
    """The ``Source`` of a ``QuantPlan`` (no cdef: an int8 export is for C programs, not cffi)."""
    return _Render(qp).render()
