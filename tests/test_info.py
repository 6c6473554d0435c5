"""``NAME_info()``: the exported model's record for firmware that inspects it.

A C client prints the record of a few exports (reals and int32 ids, training and inference-only,
16 lanes and 1); every field must equal what the Python module says: the tensors of the C
interface in order with their names (a hostile name survives as its exact bytes), kinds, shapes,
offsets and the id range of each int32 element, the sizes a caller allocates, the hash; and the
stack estimate must bound the deepest call chain gcc reports (``-fcallgraph-info=su``) at -Os and
-O2.
"""
import functools
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import gradc
from conftest import EXAMPLES

GCC = shutil.which("gcc")
pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not installed")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow", "-Wconversion"]

CLIENT = r"""
#include <stdio.h>
#include "@M@.h"
static void put_name(const char *s)
{
    printf("name");
    for (; *s; ++s) printf(" %u", (unsigned)(unsigned char)*s);
    printf("\n");
}
int main(void)
{
    const @M@_info_t *i = @M@_info();
    printf("record %d %d %d %d %d %zu %zu %zu %zu %zu %s %s\n", i->abi_version, i->real_bytes, i->lanes,
           i->n_params, i->n_tensors, i->workspace_bytes, i->param_bytes, i->grad_bytes, i->adam_bytes,
           i->stack_bytes, i->model_hash, i->gradc_version);
    printf("workspace_size %zu\n", @M@_workspace_size(1000));
    for (int t = 0; t < i->n_tensors; ++t) {
        const @M@_tensor_info_t *x = &i->tensors[t];
        put_name(x->name);
        printf("tensor %s %d %d %d %d %d", x->c_name, x->kind, x->is_int, x->rank, x->size, x->offset);
        printf(" shape");
        for (int r = 0; r < x->rank; ++r) printf(" %d", x->shape[r]);
        if (x->id_limit) {
            printf(" ids");
            for (int j = 0; j < x->size; ++j) printf(" %d", (int)x->id_limit[j]);
        }
        printf("\n");
    }
    return 0;
}
"""

HOSTILE = '''
import gradc as gc
m = gc.Model("hostile")
x, y = m.input("x\\u00e9 \\"q\\"", 2), m.target("y")
w = m.param("w?\\\\n??=", (1, 2), init=gc.init.uniform(-1, 1))
m.output("s", (w @ x)[0])
m.loss(((w @ x)[0] - y) ** 2)
'''


def _chain(ci):
    """The deepest call chain's stack in gcc's -fcallgraph-info=su output (bytes)."""
    nodes, edges = {}, {}
    for m in re.finditer(r'node: \{ title: "([^"]+)" label: "([^"]*)"', ci):
        su = re.search(r"(\d+) bytes \(", m.group(2))
        nodes[m.group(1)] = int(su.group(1)) if su else 0
    for m in re.finditer(r'edge: \{ sourcename: "([^"]+)" targetname: "([^"]+)"', ci):
        edges.setdefault(m.group(1), []).append(m.group(2))

    @functools.lru_cache(maxsize=None)
    def depth(n):
        return nodes.get(n, 0) + max((depth(c) for c in edges.get(n, []) if c != n), default=0)
    return max(depth(n) for n in nodes)


CASES = [("moons", "float32", 16, False), ("recsys", "float64", 16, False), ("digits_cnn", "float32", 1, False),
         ("timeseries", "float64", 1, False), ("digits", "float32", 16, True), ("hostile", "float64", 16, False)]


@pytest.mark.parametrize("name,dtype,lanes,inference", CASES)
def test_info_record_matches_the_module_and_bounds_the_stack(tmp_path, name, dtype, lanes, inference):
    from gradc.api import export, load_model_file
    from gradc.abi import ABI_VERSION
    from gradc.runtime import runtime_of
    if name == "hostile":
        path = tmp_path / "hostile.py"
        path.write_text(HOSTILE)
        path = str(path)
    else:
        path = os.path.join(EXAMPLES, name, "model.py")
    model = load_model_file(path)
    mod = gradc.load(path, dtype=dtype)
    info = runtime_of(mod).info
    d = tmp_path / "export"
    export(model, str(d), dtype=dtype, inference_only=inference, lanes=lanes)
    src = next(p for p in d.iterdir() if p.suffix == ".c")
    M = src.stem
    (tmp_path / "client.c").write_text(CLIENT.replace("@M@", M))
    p = subprocess.run([GCC, *STRICT, "-O1", f"-I{d}", "client.c", str(src), "-lm", "-o", "client"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = subprocess.run(["./client"], cwd=tmp_path, capture_output=True, text=True).stdout.splitlines()
    rec = out[0].split()[1:]
    real = np.dtype(dtype).itemsize
    n_params = sum(int(np.prod(s, dtype=int)) for s in mod.param_shapes.values())
    assert [int(v) for v in rec[:4]] == [ABI_VERSION, real, lanes, n_params]
    assert int(rec[5]) == int(out[1].split()[1]) > 0                       # workspace_bytes = workspace_size
    assert [int(v) for v in rec[6:9]] == [n_params * real] + ([0, 0] if inference else [n_params * real, 2 * n_params * real])
    assert rec[10] == info.model_hash and rec[11] == gradc.__version__
    # the tensors: parameters, inputs, targets (training export), outputs, in declaration order
    want = [(k, 0, s) for k, s in mod.param_shapes.items()] + [(k, 1, s) for k, s in mod.input_shapes.items()]
    want += [] if inference else [(k, 2, s) for k, s in mod.target_shapes.items()]
    want += [(k, 3, s) for k, s in mod.output_shapes.items()]
    assert int(rec[4]) == len(want) == (len(out) - 2) // 2
    offset = 0
    for (k, kind, shape), name_line, line in zip(want, out[2::2], out[3::2]):
        assert bytes(int(b) for b in name_line.split()[1:]).decode("utf-8") == k     # the exact name, escaped safely
        f = line.split()
        assert int(f[2]) == kind and int(f[4]) == len(shape) and int(f[5]) == int(np.prod(shape, dtype=int))
        sh = f[f.index("shape") + 1:f.index("ids") if "ids" in f else len(f)]
        assert [int(v) for v in sh] == list(shape)
        is_int = kind in (1, 2) and np.dtype({**mod.input_dtypes, **mod.target_dtypes}[k]) == np.int32
        assert int(f[3]) == int(is_int)
        if kind == 0:
            assert int(f[6]) == offset
            offset += int(np.prod(shape, dtype=int))
        limits = [int(v) for v in f[f.index("ids") + 1:]] if "ids" in f else None
        if is_int:          # the rows of the embedding tables a user or item id picks, the classes of a label
            assert limits == [{"user": 1000, "item": 1700, "label": 10}[k]], (k, limits)
        else:
            assert limits is None
    # the stack estimate bounds the deepest call chain of optimized builds
    stack = int(rec[9])
    for opt in ("-Os", "-O2"):
        p = subprocess.run([GCC, "-std=c99", opt, "-fcallgraph-info=su", "-c", str(src), "-o", "m.o"], cwd=tmp_path,
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        deepest = _chain((tmp_path / "m.ci").read_text())
        assert deepest <= stack, f"{M} at {opt}: the deepest call chain takes {deepest} bytes, the estimate is {stack}"
