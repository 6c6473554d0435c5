"""The int8 export on the fuzz generator's models (tests/fuzz): whatever the model, the plan is made,
the numpy evaluator equals the compiled forward pass, the generated C builds under the strict flags
with ASan and UBSan and equals the Python reference of the integer path (bit for bit when every stage
is int8; to a few int8 steps when a float stage, with libm, feeds one), and int8 follows the float
model. 12 models by default; ``pytest -m slow tests/test_fuzz_int8.py`` runs 200.
"""
import functools
import shutil
import subprocess

import numpy as np
import pytest

import gradc as gc
from fuzz.generator import sample_cases
from fuzz.oracle import draw_values
from gradc import quantize as Q
from gradc.api import export, lower_model
from test_int8 import SANITIZE, STRICT, _driver

GCC = shutil.which("gcc")
pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not installed")


def _check(case, tmp_path):
    m = case.build()
    prog = lower_model(m)
    if not prog.outputs:
        pytest.skip("the model has no output")
    mod = gc.compile_model(m, dtype="float64")
    params, _, _ = draw_values(case, np.random.default_rng(case.seed))
    test = draw_values(case, np.random.default_rng(case.seed + 99))[1]
    # the calibration data hold the test samples: what is checked is the int8 arithmetic, not how
    # well a few samples' ranges generalize (a test value past them saturates, by design)
    cal = [draw_values(case, np.random.default_rng(case.seed + 1 + j))[1] for j in range(8)] + [test]
    calib = {k: np.concatenate([c[k] for c in cal]) for k in cal[0]}
    n = len(next(iter(test.values())))
    qp = Q.plan(prog, params, calib)

    # the evaluator (calibration, float stages) against the compiled forward pass
    P = Q._Planner(prog, params)
    env = {k: (v, False) for k, v in P.consts.items()}
    env.update({k: (np.asarray(v).astype(np.int64) if np.asarray(v).dtype.kind == "i" else np.asarray(v, float), True)
                for k, v in test.items()})
    for st in P.stages:
        env[st.name] = (Q.evaluate(st, env, n, prog.tensors[st.name].shape), True)
    want = mod.forward(params, **test)
    for o in prog.outputs:
        scale = max(float(np.abs(want[o]).max()), 1e-9)
        assert float(np.abs(env[o][0] - want[o]).max()) / scale < 1e-9, f"evaluator, output {o}\n{case}"

    # the C against the reference, the reference against the float model
    ref = qp.reference(test)
    d = tmp_path / "c"
    export(m, str(d), weights=params, quantize="int8", calibrate=calib)
    for k, v in test.items():
        np.asarray(v, np.int32 if np.asarray(v).dtype.kind == "i" else np.float32).tofile(d / f"in_{k}.bin")
    (d / "drv.c").write_text(_driver(prog, n))
    p = subprocess.run([GCC, *STRICT, *SANITIZE, "-O1", f"-I{d}", str(d / f"{prog.name}.c"), str(d / "drv.c"),
                        "-o", str(d / "drv"), "-lm"], capture_output=True, text=True)
    assert p.returncode == 0, f"{p.stderr[-3000:]}\n{case}"
    r = subprocess.run([str(d / "drv")], cwd=d, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "rc 0" in r.stdout and "runtime error" not in r.stderr, \
        f"{r.stdout}{r.stderr[-3000:]}\n{case}"
    for o in prog.outputs:
        got = np.fromfile(d / f"out_{o}.bin", dtype=np.float32)
        w = np.asarray(ref[o], np.float32).ravel()
        span = max(float(np.abs(want[o]).max()), 1e-6)
        if not qp.float_stages:
            assert np.array_equal(got.view(np.uint32), w.view(np.uint32)), f"C vs reference, output {o}\n{case}"
        else:
            assert float(np.abs(got - w).max()) <= 0.05 * span, f"C vs reference, output {o}\n{case}"
        err = float(np.abs(ref[o].ravel() - np.ravel(want[o])).max())
        assert err <= 0.1 * span, f"int8 vs float: {err / span:.1%} of the output's size, output {o}\n{case}"


_cases = functools.lru_cache(maxsize=None)(sample_cases)


@pytest.mark.parametrize("i", range(12))
def test_int8_on_fuzz_models(tmp_path, i):
    _check(_cases(12, label="int8")[i], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("i", range(200))
def test_int8_on_many_fuzz_models(tmp_path, i):
    _check(_cases(200, label="int8-many")[i], tmp_path)
