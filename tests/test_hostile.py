"""Hostile and broken inputs: each gets a clear error (or the right answer), never a crash, a
hang, a half-done job or an allocation that would exhaust the machine.

Model files that raise, hang or define no model (or two); names that are reserved in C; shapes
too large for memory; NaN in data and gradients; integers out of range; read-only, broadcast,
byte-swapped and zero-size arrays; compilers that are missing, crash or babble; checkpoints and
weights that are damaged or foreign. What the older test files already cover (test_errors,
test_names, test_module_args, test_cache, test_train) is not repeated here.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gradc
import gradc as gc
import gradc.runtime
from conftest import ROOT, peak_during
from gradc.optim.lr_scheduler import StepLR
from gradc.train import Trainer, load_checkpoint, save_checkpoint

GCC = shutil.which("gcc")


# ==== model files that raise ===============================================================

RAISES = {
    "ValueError": "raise ValueError('bad value 17')\n",
    "ZeroDivisionError": "x = 1 / 0\n",
    "KeyError": "d = {}\nd['missing_key']\n",
    "AssertionError": "assert 1 == 2, 'assertion text'\n",
    "ImportError": "import gradc_no_such_module_xyz\n",
    "RecursionError": "def f():\n    return f()\nf()\n",
    "MemoryError": "buf = bytearray(10 ** 18)\n",
    "StopIteration": "next(iter([]))\n",
    "custom Exception subclass": "class Boom(Exception):\n    pass\nraise Boom('custom text')\n",
    "exception raised inside gradc": "import gradc as gc\nm = gc.Model('r')\nm.param('W', (0, 3))\n",
    "sys.exit(3)": "import sys\nsys.exit(3)\n",
    "BaseException subclass": pytest.param(
        "class Boom(BaseException):\n    pass\nraise Boom('base text')\n"),
    "GeneratorExit": pytest.param(
        "raise GeneratorExit('gen text')\n"),
    "exception whose str() raises": pytest.param(
        "class Boom(Exception):\n    def __str__(self):\n        raise RuntimeError('str broke')\nraise Boom()\n"),
}


@pytest.mark.parametrize("src", list(RAISES.values()), ids=list(RAISES))
def test_model_file_raising_any_exception_gives_a_model_error_naming_the_file_and_line(src, write_model):
    path = write_model(src)
    try:
        gradc.load_model_file(path, timeout=10)
    except gradc.ModelError as e:
        assert e.where is not None and e.where[0] == path, e.where
        assert 1 <= e.where[1] <= src.count("\n")
        assert str(e).startswith(f"{path}:{e.where[1]}: ")
    except BaseException as e:               # anything else is the failure under test
        pytest.fail(f"{type(e).__name__} escaped load_model_file: {e!r}")
    else:
        pytest.fail("no error")


def test_model_error_names_the_exception_type_and_its_text(write_model):
    path = write_model("class Boom(Exception):\n    pass\nraise Boom('custom text')\n")
    with pytest.raises(gradc.ModelError, match=r"Boom: custom text") as ei:
        gradc.load_model_file(path)
    assert ei.value.where == (path, 3)


# ==== model files that hang ================================================================

@pytest.fixture
def alarm_untouched():
    """Checks that a test leaves SIGALRM as it found it: no timer running, the same handler."""
    before = signal.getsignal(signal.SIGALRM)
    yield
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "the timer was left running"
    assert signal.getsignal(signal.SIGALRM) is before, "the SIGALRM handler was not restored"


def test_endless_loop_is_stopped_by_gradc_model_timeout(write_model, monkeypatch, alarm_untouched):
    monkeypatch.setenv("GRADC_MODEL_TIMEOUT", "1")
    path = write_model("import gradc as gc\nm = gc.Model('hang')\nwhile True:\n    pass\n")
    t0 = time.monotonic()
    with pytest.raises(gradc.ModelError, match=r"did not finish within 1 s.*GRADC_MODEL_TIMEOUT") as ei:
        gradc.load_model_file(path)
    assert time.monotonic() - t0 < 10
    assert ei.value.where in ((path, 3), (path, 4))


def test_endless_loop_that_catches_exception_is_still_stopped(write_model, monkeypatch, alarm_untouched):
    monkeypatch.setenv("GRADC_MODEL_TIMEOUT", "1")
    path = write_model("n = 0\nwhile True:\n    try:\n        n += sum(range(50))\n"
                       "    except Exception:\n        pass\n")
    t0 = time.monotonic()
    with pytest.raises(gradc.ModelError, match="did not finish within 1 s"):
        gradc.load_model_file(path)
    assert time.monotonic() - t0 < 10


def test_model_file_sleeping_past_the_limit_is_stopped(write_model, alarm_untouched):
    path = write_model("import time\ntime.sleep(3600)\n")
    t0 = time.monotonic()
    with pytest.raises(gradc.ModelError, match=r"did not finish within 0\.3 s") as ei:
        gradc.load_model_file(path, timeout=0.3)
    assert time.monotonic() - t0 < 10 and ei.value.where == (path, 2)


def test_a_model_file_finishing_in_time_leaves_no_alarm_behind(write_model, alarm_untouched):
    path = write_model("import gradc as gc\nm = gc.Model('quick')\n")
    assert gradc.load_model_file(path, timeout=5).name == "quick"


def test_cli_stops_an_endless_model_file_with_one_line_and_exit_2(tmp_path):
    path = tmp_path / "endless.py"
    path.write_text("while True:\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "gradc.cli", "compile", str(path), "-o", str(tmp_path / "out")],
                       cwd=ROOT, env=dict(os.environ, GRADC_MODEL_TIMEOUT="0.5"), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gradc: error: {path}:"), r.stderr
    assert "did not finish within 0.5 s" in lines[0]


# Hangs the limit cannot stop in-process: each runs in a fresh process, both started at once,
# and is killed when it is still running GRACE seconds after the model file started.
GRACE = 3.0
HANGS = {
    "bare_except": "n = 0\nwhile True:\n    try:\n        n += sum(range(50))\n    except:\n        pass\n",
    "c_level_loop": "total = sum(range(10 ** 15))\n",
}
RUN_MODEL = ("import sys, gradc, gradc.model; print('ready', flush=True); "
             "gradc.load_model_file(sys.argv[1])")


@pytest.fixture(scope="module")
def hangs(tmp_path_factory):
    d = tmp_path_factory.mktemp("hangs")
    procs = {}
    for name, src in HANGS.items():
        path = d / f"{name}.py"
        path.write_text(src)
        procs[name] = subprocess.Popen([sys.executable, "-c", RUN_MODEL, str(path)], cwd=ROOT,
                                       env=dict(os.environ, GRADC_MODEL_TIMEOUT="0.5"), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    results = {}
    try:
        for name, p in procs.items():
            line = p.stdout.readline().strip()
            results[name] = dict(ready=time.monotonic())
            assert line == "ready", f"{name} did not start: {line!r}"
        for name, p in procs.items():
            try:
                _, err = p.communicate(timeout=max(0.1, results[name]["ready"] + GRACE - time.monotonic()))
                results[name].update(rc=p.returncode, stderr=err, hung=False)
            except subprocess.TimeoutExpired:
                results[name].update(rc=None, hung=True)
    finally:                                       # never leave a spinning process behind
        for name, p in procs.items():
            if p.poll() is None:
                p.kill()
            _, err = p.communicate()
            results.setdefault(name, {}).setdefault("stderr", err)
    return results


def test_endless_loop_with_a_bare_except_is_still_stopped(hangs):
    r = hangs["bare_except"]
    assert not r["hung"], f"still running {GRACE} s after it started, with GRADC_MODEL_TIMEOUT=0.5"
    assert "ModelError" in r["stderr"] and "did not finish" in r["stderr"]


@pytest.mark.xfail(strict=True, reason="LIMITATION: a long C-level call (sum(range(10**15))) never returns to the "
                   "interpreter, so no Python-level time limit can act inside gradc.load; the gradc CLI ends such "
                   "a process with a watchdog (faulthandler) instead")
def test_a_long_c_level_computation_is_still_stopped(hangs):
    r = hangs["c_level_loop"]
    assert not r["hung"], f"still running {GRACE} s after it started, with GRADC_MODEL_TIMEOUT=0.5"
    assert "did not finish" in r["stderr"]


# ==== no model, two models ================================================================

TWO = """\
import gradc as gc
first = gc.Model("alpha")
x, a = first.input("x"), first.param("a")
first.loss((a * x) ** 2)
second = gc.Model("beta")
y, b = second.input("y"), second.param("b")
second.loss((b * y - 1) ** 2)
"""


def test_file_defining_two_models_is_refused_naming_both(write_model):
    path = write_model(TWO)
    with pytest.raises(gradc.ModelError, match=r"several models found \(first, second\).*--model") as ei:
        gradc.load_model_file(path)
    assert ei.value.where[0] == path


@pytest.mark.parametrize("pick,name", [("first", "alpha"), ("beta", "beta")])
def test_model_option_picks_one_of_two_by_variable_or_model_name(write_model, pick, name):
    assert gradc.load_model_file(write_model(TWO), model=pick).name == name


def test_model_option_naming_no_model_lists_the_ones_found(write_model):
    with pytest.raises(gradc.ModelError, match=r"no model named 'gamma'; found first, second"):
        gradc.load_model_file(write_model(TWO), model="gamma")


def test_one_model_bound_to_two_variables_is_one_model(write_model):
    path = write_model(TWO.split("second =")[0] + "alias = first\n")
    assert gradc.load_model_file(path).name == "alpha"


def test_file_defining_only_other_objects_is_refused(write_model):
    path = write_model("import gradc as gc\nimport sympy as sp\nModel = gc.Model\nx = sp.Symbol('x')\n")
    with pytest.raises(gradc.ModelError, match="no model found"):
        gradc.load_model_file(path)


# ==== names reserved in C ==================================================================

RESERVED = ["_Bool", "__y", "_Y", "__FILE__", "__LINE__", "exp", "log", "sqrt", "fabs", "log1p", "NULL", "errno",
            "main", "size_t", "int32_t", "INFINITY", "restrict", "n", "s", "j", "params", "grad", "work", "ws",
            "loss", "inv_n", "_", "__", "a b", "a-b", "a_b", "w??/", "v??=define", "q\n#include </etc/passwd>",
            "p" * 10_000, "p" * 9_999 + "q"]
# identifiers the C standard reserves (leading underscore + capital, or two underscores)
RESERVED_ID = re.compile(r"(?<![\w])(_[A-Z]\w*|__\w+)")


def _reserved_names_model(model_name="_Bool", params=RESERVED):
    m = gc.Model(model_name)
    ps = [m.param(nm, init=0.01 * (i + 1)) for i, nm in enumerate(params)]
    x, y = m.input("__x"), m.target("_X")
    s = m.output("__LINE__out" if "__LINE__" in params else "__LINE__", sum((i + 1) * p * x for i, p in enumerate(ps)))
    m.loss((s - y) ** 2)
    return m


_BASELINE = []


def _baseline_reserved():
    """Reserved identifiers that gradc's C uses by itself (_Pragma, __cplusplus, ...): those of a model
    with plain names. Only identifiers beyond these can come from user names."""
    if not _BASELINE:
        from gradc.api import lower_model
        from gradc.autodiff import differentiate
        from gradc.codegen.c import render
        m = gc.Model("plain")
        x, y, a, b = m.input("x"), m.target("y"), m.param("a"), m.param("b")
        m.loss((m.output("s", a * x + b) - y) ** 2)
        prog = lower_model(m)
        src = render(prog, differentiate(prog), "float64")
        _BASELINE.append(set(RESERVED_ID.findall(src.c + src.h)))
    return _BASELINE[0]


def _check_c(entry_or_dir, prefix, tmp_path):
    text = ""
    for ext in (".c", ".h"):
        with open(os.path.join(entry_or_dir, prefix + ext)) as f:
            text += f.read()
    bad = sorted(set(RESERVED_ID.findall(text)) - _baseline_reserved())
    assert not bad, f"reserved identifiers made from user names in the generated C: {bad}"
    assert "??" not in text, "a trigraph-like sequence reached the C source"
    assert "/etc/passwd" not in text
    for line in text.splitlines():
        if line.lstrip().startswith("#include"):
            assert re.fullmatch(r'#include (<[a-z0-9_]+\.h>|"\w+\.h")', line.strip()), line
    if GCC is None:
        return
    r = subprocess.run([GCC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow", "-trigraphs",
                        "-fsyntax-only", "-I", entry_or_dir, os.path.join(entry_or_dir, prefix + ".c")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_reserved_identifiers_libm_names_and_runtime_names_compile_and_compute_the_loss(tmp_path):
    from gradc.api import build_model
    from gradc.runtime import as_module
    entry, meta = build_model(_reserved_names_model())
    _check_c(entry, meta["prefix"], tmp_path)
    mod = as_module(entry, meta)
    assert set(mod.param_shapes) == set(RESERVED)
    X, Y = np.array([0.5, -1.0, 2.0]), np.array([0.25, 0.0, -1.0])
    pv = {nm: 0.01 * (i + 1) for i, nm in enumerate(RESERVED)}
    score = sum((i + 1) * pv[nm] * X for i, nm in enumerate(RESERVED))
    L, g = mod.loss_and_grad({k: np.float64(v) for k, v in pv.items()}, __x=X, _X=Y)
    assert L == pytest.approx(np.mean((score - Y) ** 2), rel=1e-12)
    for i, nm in enumerate(RESERVED):
        assert g[nm] == pytest.approx(np.mean(2 * (score - Y) * (i + 1) * X), rel=1e-12), nm[:20]


@pytest.mark.parametrize("model_name", ["__x", "_X", "_Bool", "__STDC__", "exp"])
def test_model_named_like_a_reserved_c_identifier_gives_clean_c(model_name, tmp_path):
    from gradc.api import lower_model
    from gradc.autodiff import differentiate
    from gradc.codegen.c import render
    prog = lower_model(_reserved_names_model(model_name, params=["a", "b"]))
    src = render(prog, differentiate(prog), "float64")
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", src.name), src.name
    (tmp_path / f"{src.name}.c").write_text(src.c)
    (tmp_path / f"{src.name}.h").write_text(src.h)
    _check_c(str(tmp_path), src.name, tmp_path)


# ==== shapes too large for memory ==========================================================



def test_param_of_a_million_by_a_million_is_refused_when_declared():
    m = gc.Model("huge_param")
    out, peak = peak_during(lambda: m.param("W", (10 ** 6, 10 ** 6)))
    assert isinstance(out, gradc.ModelError), out
    assert "'W'" in str(out) and "(1000000, 1000000)" in str(out) and "1,000,000,000,000" in str(out)
    assert peak < 1 << 20
    assert "W" not in m.decls


@pytest.mark.parametrize("kind", ["parameters", "intermediate tensors"])
def test_tensors_whose_total_exceeds_the_limit_are_refused_before_allocating(kind):
    from gradc.api import lower_model
    m = gc.Model(f"huge_total_{kind[:5]}")
    x, a = m.input("x", 2 ** 15), m.param("a")
    if kind == "parameters":
        A, B = m.param("A", (2 ** 15, 2 ** 15)), m.param("B", (2 ** 15, 2 ** 15))
        m.loss(A[0, 0] * B[0, 0] * x[0] * a)
    else:
        Z = m.define("Z", (2 ** 15, 2 ** 15), lambda i, j: a * x[i] * x[j])
        Z2 = m.define("Z2", (2 ** 15, 2 ** 15), lambda i, j: 2 * Z[i, j])
        m.loss(Z2[0, 0])
    out, peak = peak_during(lambda: lower_model(m))
    assert isinstance(out, gradc.ModelError), out
    assert f"the model's {kind} hold 2,147,483,6" in str(out) and "32-bit" in str(out)
    assert peak < 16 << 20, f"{peak:,} bytes allocated before refusing"


RT_SRC = """\
import gradc as gc
m = gc.Model("hostile_rt")
x, u, y = m.input("x", 3), m.input("u", dtype="int32"), m.target("y")
W = m.param("W", 3, init=gc.init.uniform(-1, 1))
E = m.param("E", 4, init=gc.init.uniform(-1, 1))      # u indexes E (4 rows) and F (6): u < 4
F = m.param("F", 6, init=gc.init.uniform(-1, 1))
s = m.output("s", (W * x).sum() + E[u] * F[u])
m.loss((s - y) ** 2)
"""


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "model.py"
    path.write_text(RT_SRC)
    return gradc.load(str(path))


def rt_data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return {"x": X, "u": (np.arange(n) % 4).astype(np.int32), "y": X @ np.array([1.0, -2.0, 0.5])}


def rt_reference(p, x, u, y):
    s = x @ p["W"] + p["E"][u] * p["F"][u]
    return np.mean((s - y) ** 2)


def test_forward_whose_outputs_exceed_physical_memory_is_refused_before_allocating(rt, monkeypatch):
    p = rt.init_params()
    n = 200_000                                  # outputs: n doubles = 1.6 MB > the 1 MiB "machine"
    need = n * 8
    x, u = np.zeros((n, 3)), np.zeros(n, dtype=np.int32)
    monkeypatch.setattr(gradc.runtime.memory, "physical_memory", lambda: 1 << 20)
    out, peak = peak_during(lambda: rt.forward(p, x=x, u=u))
    assert isinstance(out, ValueError), out
    assert f"the outputs of a batch of {n:,}" in str(out) or f"the outputs of a batch of {n}" in str(out)
    assert "memory" in str(out)
    # checking the ids takes a few bytes per sample; the 8 bytes per sample of the outputs were never taken
    assert peak < need // 2, f"{peak:,} bytes allocated before refusing"


def test_forward_within_physical_memory_is_not_refused(rt, monkeypatch):
    monkeypatch.setattr(gradc.runtime.memory, "physical_memory", lambda: 1 << 20)
    d = rt_data(100)
    assert rt.forward(rt.init_params(), x=d["x"], u=d["u"])["s"].shape == (100,)


def test_init_params_larger_than_physical_memory_is_refused_before_allocating(rt, monkeypatch):
    monkeypatch.setattr(gradc.runtime.memory, "physical_memory", lambda: 64)        # 13 doubles = 104 bytes
    with pytest.raises(ValueError, match="the parameters would need"):
        rt.init_params()


def test_unknown_physical_memory_does_not_block_allocation(rt, monkeypatch):
    monkeypatch.setattr(gradc.runtime.memory, "physical_memory", lambda: None)
    d = rt_data(4)
    assert rt.forward(rt.init_params(), x=d["x"], u=d["u"])["s"].shape == (4,)


def test_broadcast_input_whose_copy_exceeds_physical_memory_is_refused_before_allocating(rt, monkeypatch):
    p = rt.init_params()
    n = 200_000                                  # the copy of x: 4.8 MB > the 1 MiB "machine"
    x = np.broadcast_to(np.array([0.5, 1.0, -1.0]), (n, 3))
    u, y = np.broadcast_to(np.int32(1), (n,)), np.broadcast_to(0.0, (n,))
    monkeypatch.setattr(gradc.runtime.memory, "physical_memory", lambda: 1 << 20)
    out, peak = peak_during(lambda: rt.loss(p, x=x, u=u, y=y))
    assert isinstance(out, ValueError) and "'x'" in str(out), out
    assert peak < 1 << 20, f"{peak:,} bytes allocated before refusing"


# ==== NaN and Inf ===========================================================================

def test_nan_in_a_target_is_reported_with_the_batch_index_and_skipped_on_request(rt):
    d = rt_data(16)
    d["y"][9] = np.nan
    t = Trainer(rt, rt.init_params(0), optimizer="sgd", lr=0.01, batch_size=4, shuffle=False)
    with pytest.raises(ValueError, match=r"epoch 0, batch 2: 'y' holds NaN or Inf \(row 1 of the batch\)"):
        t.fit(d, epochs=1)
    t = Trainer(rt, rt.init_params(0), optimizer="sgd", lr=0.01, batch_size=4, shuffle=False, nan="skip")
    hist = t.fit(d, epochs=2)
    assert hist["skipped_batches"] == [1, 1]
    assert all(np.isfinite(v).all() for v in t.params.values())


def test_nan_in_the_initial_parameters_stops_training_at_batch_0(rt):
    p = rt.init_params(0)
    p["F"][2] = np.nan
    t = Trainer(rt, p, optimizer="adam", lr=0.01, batch_size=4, shuffle=False)
    with pytest.raises(ValueError, match=r"epoch 0, batch 0: the loss is nan"):
        t.fit(rt_data(8), epochs=1)


SQRT_SRC = """\
import sympy as sp
import gradc as gc
m = gc.Model("hostile_sqrt")
x, w = m.input("x"), m.param("w", init=1.0)
m.loss(sp.sqrt(sp.Abs(w - x)))          # finite loss at w == x, but a 0/0 gradient
"""


@pytest.fixture(scope="module")
def sqrt_mod(tmp_path_factory):
    path = tmp_path_factory.mktemp("sqrt") / "model.py"
    path.write_text(SQRT_SRC)
    return gradc.load(str(path))


def test_a_finite_loss_can_have_a_non_finite_gradient(sqrt_mod):
    L, g = sqrt_mod.loss_and_grad(sqrt_mod.init_params(), x=[1.0, 1.0])
    assert L == 0.0 and not np.isfinite(g["w"])       # the premise of the next two tests


def test_a_non_finite_gradient_stops_training_at_its_batch_and_leaves_params_finite(sqrt_mod):
    p = sqrt_mod.init_params()
    t = Trainer(sqrt_mod, p, optimizer="sgd", lr=0.1, batch_size=2, shuffle=False)
    with pytest.raises(ValueError, match=r"epoch 0, batch 0: .*(gradient|NaN|nan)"):
        t.fit({"x": np.array([1.0, 1.0, 2.0, 3.0])}, epochs=1)
    assert np.isfinite(p["w"])


def test_a_non_finite_gradient_is_skipped_with_nan_skip_and_training_goes_on(sqrt_mod):
    p = sqrt_mod.init_params()
    t = Trainer(sqrt_mod, p, optimizer="sgd", lr=0.1, batch_size=2, shuffle=False, nan="skip")
    hist = t.fit({"x": np.array([1.0, 1.0, 2.0, 3.0, 0.5, 0.25])}, epochs=1)
    assert hist["skipped_batches"] == [1]
    assert np.isfinite(p["w"]) and p["w"] != 1.0


# ==== integers out of range =================================================================

@pytest.mark.parametrize("fn", ["forward", "loss", "loss_and_grad"])
def test_int_input_indexing_two_tables_is_bounded_by_the_smaller_one(rt, fn):
    p, d = rt.init_params(), rt_data(6)
    d["u"] = np.array([0, 1, 2, 3, 3, 0], dtype=np.int32)
    args = d if fn != "forward" else {k: v for k, v in d.items() if k != "y"}
    getattr(rt, fn)(p, **args)                                 # 3 is inside both tables
    for bad in (4, 5):                                         # inside F (6 rows), outside E (4 rows)
        args["u"] = np.array([0, 1, bad, 3, 3, 0], dtype=np.int32)
        with pytest.raises(ValueError, match=rf"'u': sample 2 holds {bad}, outside 0\.\.3"):
            getattr(rt, fn)(p, **args)


def test_training_data_with_an_id_beyond_the_smaller_table_is_refused_before_training(rt):
    d = rt_data(8)
    d["u"][5] = 4
    p = rt.init_params(0)
    before = {k: v.copy() for k, v in p.items()}
    with pytest.raises(ValueError, match=r"training data: 'u': sample 5 holds 4, outside 0\.\.3"):
        Trainer(rt, p, optimizer="sgd", lr=0.1).fit(d, epochs=1)
    assert all(np.array_equal(before[k], p[k]) for k in p)


@pytest.mark.parametrize("index", ["E[u + 1]", "E[2 * u]", "E[u * u]"])
def test_an_index_computed_from_an_int_input_is_refused_when_compiling(index, write_model):
    src = RT_SRC.replace("E[u] * F[u]", f"{index} * F[u]")
    path = write_model(src)
    with pytest.raises(gradc.ModelError, match=r"index .* of 'E' must be an affine function") as ei:
        gradc.api.lower_model(gradc.load_model_file(path))
    assert ei.value.where == (path, 7)


# ==== read-only, broadcast, byte-swapped and zero-size arrays ================================

def _readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("fn", ["forward", "loss", "loss_and_grad"])
def test_read_only_inputs_targets_and_params_give_the_same_results(rt, fn):
    p, d = rt.init_params(seed=3), rt_data(6)
    p_ro, d_ro = {k: _readonly(v) for k, v in p.items()}, {k: _readonly(v) for k, v in d.items()}
    if fn == "forward":
        d, d_ro = {k: v for k, v in d.items() if k != "y"}, {k: v for k, v in d_ro.items() if k != "y"}
    want, got = getattr(rt, fn)(p, **d), getattr(rt, fn)(p_ro, **d_ro)
    if fn == "loss_and_grad":
        assert got[0] == want[0] and all(np.array_equal(got[1][k], want[1][k]) for k in p)
    elif fn == "forward":
        assert np.array_equal(got["s"], want["s"])
    else:
        assert got == want == pytest.approx(rt_reference(p, **rt_data(6)), rel=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_read_only_params_are_refused_by_training_naming_them_and_nothing_changes(rt, optimizer):
    p = dict(rt.init_params(0))                    # a plain dict: Params would copy into its buffer
    p["F"] = _readonly(p["F"])
    before = {k: v.copy() for k, v in p.items()}
    with pytest.raises(ValueError, match=r"parameter 'F' is a read-only array"):
        Trainer(rt, p, optimizer=optimizer, lr=0.1, batch_size=4).fit(rt_data(8), epochs=1)
    assert all(np.array_equal(before[k], p[k]) for k in p), "a parameter changed before the refusal"


def test_read_only_training_data_trains_and_is_left_untouched(rt):
    d = {k: _readonly(v) for k, v in rt_data(8).items()}
    copy = {k: v.copy() for k, v in d.items()}
    hist = Trainer(rt, rt.init_params(0), optimizer="sgd", lr=0.05, batch_size=4).fit(d, epochs=2)
    assert np.isfinite(hist["loss"]).all()
    assert all(np.array_equal(copy[k], d[k]) for k in d)


def test_zero_stride_broadcast_inputs_give_the_results_of_their_copies(rt):
    p = rt.init_params(seed=1)
    xb = np.broadcast_to(np.array([0.5, -1.0, 2.0]), (5, 3))
    ub, yb = np.broadcast_to(np.int32(2), (5,)), np.broadcast_to(0.25, (5,))
    assert not xb.flags.writeable and xb.strides[0] == 0
    want = rt.loss_and_grad(p, x=xb.copy(), u=ub.copy(), y=yb.copy())
    got = rt.loss_and_grad(p, x=xb, u=ub, y=yb)
    assert got[0] == want[0] and all(np.array_equal(got[1][k], want[1][k]) for k in p)


@pytest.mark.parametrize("kind", ["big-endian", "float16", "int16 ids"])
def test_byte_swapped_and_narrow_dtypes_give_the_results_of_the_converted_values(rt, kind):
    p, d = rt.init_params(seed=2), rt_data(6)
    if kind == "big-endian":
        odd = {"x": d["x"].astype(">f8"), "u": d["u"].astype(">i4"), "y": d["y"].astype(">f4")}
        conv = {"x": d["x"], "u": d["u"], "y": d["y"].astype(np.float32).astype(np.float64)}
        podd = {k: v.astype(">f8") for k, v in p.items()}
    elif kind == "float16":
        odd = dict(d, x=d["x"].astype(np.float16))
        conv = dict(d, x=odd["x"].astype(np.float64))
        podd = {k: v.astype(np.float16) for k, v in p.items()}
        p = {k: v.astype(np.float64) for k, v in podd.items()}
    else:
        odd, conv, podd = dict(d, u=d["u"].astype(np.int16)), d, p
    got, want = rt.loss_and_grad(podd, **odd), rt.loss_and_grad(p, **conv)
    assert got[0] == want[0] and all(np.array_equal(got[1][k], want[1][k]) for k in p)


ZERO_SIZE = {
    "input with a zero-size feature axis": (dict(x=np.zeros((6, 0))), None, r"argument 'x' has shape \(6, 0\)"),
    "every array with zero samples": (dict(x=np.zeros((0, 3)), u=np.zeros(0, np.int32), y=np.zeros(0)), None,
                                      r"the batch is empty"),
    "one array with zero samples": (dict(y=np.zeros(0)), None, r"'y' has 0 samples but 'x' has 6"),
    "zero-size parameter": ({}, dict(W=np.zeros(0)), r"parameter 'W' has shape \(0,\), expected \(3,\)"),
    "zero-size ids": (dict(u=np.zeros((6, 0), np.int32)), None, r"argument 'u' has shape \(6, 0\)"),
}


@pytest.mark.parametrize("fn", ["loss", "loss_and_grad"])
@pytest.mark.parametrize("case", list(ZERO_SIZE), ids=list(ZERO_SIZE))
def test_zero_size_arrays_are_refused_naming_the_argument(rt, case, fn):
    data, params, match = ZERO_SIZE[case]
    p = dict(rt.init_params(), **(params or {}))
    with pytest.raises(ValueError, match=match):
        getattr(rt, fn)(p, **dict(rt_data(6), **data))


def test_zero_size_training_data_is_refused_before_training(rt):
    with pytest.raises(ValueError, match="training data is empty"):
        Trainer(rt, rt.init_params(0)).fit({k: v[:0] for k, v in rt_data(4).items()}, epochs=1)


# ==== C compilers that are missing, crash or babble =========================================

def _tiny(name):
    m = gc.Model(name)
    x, w = m.input("x"), m.param("w", init=0.5)
    m.loss((w * x - 1.25) ** 2)
    return m


def _fake_cc(tmp_path, name, body):
    cc = tmp_path / "bin" / name
    cc.parent.mkdir(exist_ok=True)
    cc.write_bytes(body)
    cc.chmod(0o755)
    return str(cc)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("GRADC_CACHE_DIR", str(d))
    return d


def _left_in(cache):
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def test_compiler_killed_by_a_signal_raises_build_error_with_its_output(tmp_path, monkeypatch, fresh_cache):
    monkeypatch.setenv("CC", _fake_cc(tmp_path, "segvcc", b"#!/bin/sh\necho 'segvcc: about to crash' >&2\n"
                                                          b"kill -SEGV $$\n"))
    with pytest.raises(gradc.BuildError) as ei:
        gc.compile_model(_tiny("cc_segv"))
    assert "segvcc: about to crash" in str(ei.value) and "exit -11" in str(ei.value)
    assert _left_in(fresh_cache) == []


def test_cc_naming_a_folder_raises_build_error(tmp_path, monkeypatch, fresh_cache):
    (tmp_path / "ccdir").mkdir()
    monkeypatch.setenv("CC", str(tmp_path / "ccdir"))
    with pytest.raises(gradc.BuildError, match="no C compiler found"):
        gc.compile_model(_tiny("cc_dir"))


def test_compiler_that_cannot_start_raises_build_error(tmp_path, monkeypatch, fresh_cache):
    monkeypatch.setenv("CC", _fake_cc(tmp_path, "brokencc", b"#!/nonexistent/interpreter\n"))
    with pytest.raises(gradc.BuildError, match="brokencc"):
        gc.compile_model(_tiny("cc_broken"))
    assert _left_in(fresh_cache) == []


def test_compiler_output_that_is_not_utf8_is_shown_in_the_build_error(tmp_path, monkeypatch, fresh_cache):
    monkeypatch.setenv("CC", _fake_cc(tmp_path, "latin1cc", b"#!/bin/sh\nprintf 'latin1cc: Fehler in Zeile 7 "
                                                            b"\\374ber \\377\\n' >&2\nexit 1\n"))
    with pytest.raises(gradc.BuildError, match="latin1cc: Fehler in Zeile 7"):
        gc.compile_model(_tiny("cc_latin1"))
    assert _left_in(fresh_cache) == []


# ==== checkpoints: verified on load, never half-loaded =======================================

def _trainer(rt, seed=0):
    return Trainer(rt, rt.init_params(seed), optimizer="adam", lr=0.01, batch_size=4, seed=seed,
                   scheduler=lambda opt: StepLR(opt, step_size=1, gamma=0.5))


@pytest.fixture(scope="module")
def good_checkpoint(rt, tmp_path_factory):
    ck = str(tmp_path_factory.mktemp("ck") / "good.npz")
    _trainer(rt).fit(rt_data(16), epochs=2, checkpoint=ck)
    with np.load(ck, allow_pickle=False) as z:
        return ck, {k: z[k] for k in z.files}


def _state(files):
    return json.loads(files["state_json"].tobytes().decode())


def _set(state, key, value=None, delete=False):
    """The checkpoint's state (JSON as written by save_checkpoint) with ``key`` set or deleted."""
    items = [[k, v] for k, v in state["__dict__"] if not (delete and k == key)]
    for kv in items:
        if kv[0] == key:
            kv[1] = value
    return {"__dict__": items}


def _with_state(files, state):
    return dict(files, state_json=np.frombuffer(json.dumps(state).encode(), dtype=np.uint8))


def _xf(reason):
    # the bugs these marked are fixed; the reasons stay as the record of what each case guards
    return []


HALF = ("Trainer.restore loads the optimizer, the scheduler and the parameters before it reads epoch, step, rng "
        "and history, none of which load_checkpoint validates")
DAMAGE = {
    "parameter of the wrong shape": (lambda f: dict(f, **{"param/W": np.zeros(4)}), r"'W' has shape \(4,\)"),
    "parameter of int dtype": (lambda f: dict(f, **{"param/E": np.zeros(4, np.int64)}), r"'E' holds int64"),
    "parameter of complex dtype": (lambda f: dict(f, **{"param/E": np.zeros(4, complex)}), r"'E' holds complex"),
    "parameter missing": (lambda f: {k: v for k, v in f.items() if k != "param/F"}, r"'F' is missing"),
    "extra parameter": (lambda f: dict(f, **{"param/G": np.zeros(2)}), r"unknown parameter 'G'"),
    "pickled object array": (lambda f: dict(f, **{"param/W": np.array([1, "a", None], dtype=object)}),
                             r"holds Python objects"),
    "state that is not UTF-8": (lambda f: dict(f, state_json=np.frombuffer(b"\xff\xfe{", np.uint8)),
                                r"training state is damaged"),
    "state naming a missing array": (lambda f: _with_state(f, {"__array__": "state/999"}),
                                     r"training state is damaged"),
    "another model's hash": (lambda f: dict(f, model_hash=np.frombuffer(b"0" * 64, np.uint8)), r"another model"),
    "damaged optimizer state": (lambda f: _with_state(f, _set(_state(f), "optimizer", {"__dict__": [["x", 1]]})),
                                r"Adam"),
    "model hash that is not UTF-8": pytest.param(
        lambda f: dict(f, model_hash=np.frombuffer(b"\xff\xfe", np.uint8)), r"checkpoint",
        marks=_xf("load_checkpoint decodes model_hash without a guard: a bare UnicodeDecodeError, "
                  "naming neither the file nor the problem")),
    "state that is a JSON list": pytest.param(
        lambda f: _with_state(f, [1, 2]), r"checkpoint",
        marks=_xf("a state_json that is not an object makes restore raise TypeError (st['optimizer'])")),
    "damaged scheduler state": pytest.param(
        lambda f: _with_state(f, _set(_state(f), "scheduler", {"__dict__": [["bogus", 1]]})), r"checkpoint|StepLR",
        marks=_xf("restore loads the optimizer state, then the scheduler fails: the optimizer is half-loaded")),
    "damaged rng state": pytest.param(
        lambda f: _with_state(f, _set(_state(f), "rng", "garbage")), r"checkpoint",
        marks=_xf(HALF + "; a bad rng raises TypeError after params and optimizer were replaced")),
    "epoch missing": pytest.param(
        lambda f: _with_state(f, _set(_state(f), "epoch", delete=True)), r"checkpoint",
        marks=_xf(HALF + "; a missing epoch raises KeyError after params and optimizer were replaced")),
    "epoch that is not an int": pytest.param(
        lambda f: _with_state(f, _set(_state(f), "epoch", "two")), r"checkpoint",
        marks=_xf(HALF + "; epoch='two' is accepted silently")),
    "history that is not a dict": pytest.param(
        lambda f: _with_state(f, _set(_state(f), "history", 5)), r"checkpoint",
        marks=_xf(HALF + "; history=5 raises TypeError after everything else was replaced")),
}


def _snapshot(t):
    return dict(params={k: v.tobytes() for k, v in t.params.items()},
                opt=json.dumps(gradc.train._to_json(t.optimizer.state_dict(), {}, "a"), sort_keys=True,
                               default=str),
                opt_arrays={k: {b: v.tobytes() for b, v in st.items() if isinstance(v, np.ndarray)}
                            for k, st in t.optimizer.state_dict()["state"].items()},
                sched=t.scheduler.state_dict(), epoch=t.epoch, step=t.step_count,
                rng=t.rng.bit_generator.state, history=json.dumps(t.history, default=str))


@pytest.mark.parametrize("damage,match", list(DAMAGE.values()), ids=list(DAMAGE))
def test_damaged_or_foreign_checkpoint_gives_a_clear_error_and_changes_nothing(rt, good_checkpoint, tmp_path,
                                                                               damage, match):
    _, files = good_checkpoint
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, **damage({k: v.copy() for k, v in files.items()}))
    t = _trainer(rt, seed=5)
    t.fit(rt_data(16, seed=5), epochs=1)                       # state that a half-load would disturb
    before = _snapshot(t)
    with pytest.raises(ValueError, match=match) as ei:
        t.restore(bad)
    assert "bad.npz" in str(ei.value) or "load_state_dict" in str(ei.value)
    after = _snapshot(t)
    for k in before:
        assert after[k] == before[k], f"{k} changed by the failed restore"


def test_good_checkpoint_restores_params_optimizer_scheduler_and_rng(rt, good_checkpoint):
    ck, files = good_checkpoint
    t = _trainer(rt, seed=9)
    t.restore(ck)
    assert all(np.array_equal(t.params[k], files[f"param/{k}"]) for k in t.params)
    assert t.epoch == 2 and t.scheduler.state_dict()["last_epoch"] == 2
    params, state = load_checkpoint(ck, rt)
    assert state["rng"] == t.rng.bit_generator.state


def test_checkpoint_written_for_float32_params_loads_into_float64_params_by_value(rt, good_checkpoint, tmp_path):
    ck, files = good_checkpoint
    params, state = load_checkpoint(ck, rt)
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    path = str(tmp_path / "f32.npz")
    save_checkpoint(path, p32, state, rt._compiled.meta["model_hash"])
    t = _trainer(rt, seed=9)
    t.restore(path)
    assert all(t.params[k].dtype == np.float64 and np.array_equal(t.params[k], p32[k]) for k in p32)


# ==== weights for export that do not fit the model ==========================================

def _export_model():
    m = gc.Model("hostile_export")
    x, y = m.input("x", 3), m.target("y")
    W, b = m.param("W", 3), m.param("b")
    m.loss(((W * x).sum() + b - y) ** 2)
    return m


GOOD_W = {"W": np.array([0.5, -0.25, 1.0]), "b": np.array(0.125)}
EXPORT_BAD = {
    "NaN and Inf": (dict(GOOD_W, W=np.array([np.nan, np.inf, 1.0])), r"'W' holds NaN or Inf"),
    "wrong shape": pytest.param(dict(GOOD_W, W=np.zeros(4)), r"'W'.*shape",
                                marks=_xf("export(weights=dict) skips read_weights' checks: a (4,) array for a "
                                          "(3,) parameter writes a weights.c with 4 values (excess initializer; "
                                          "a (2,) W with a (2,) b would silently shift every weight)")),
    "a parameter missing": pytest.param({"W": GOOD_W["W"]}, r"'b'.*missing",
                                        marks=_xf("export(weights=dict) without 'b' raises a bare KeyError('b')")),
    "complex values": pytest.param(dict(GOOD_W, W=np.array([1j, 2.0, 3.0])), r"'W'",
                                   marks=_xf("complex weights are exported with the imaginary part dropped "
                                             "(only a ComplexWarning)")),
}


@pytest.mark.parametrize("weights,match", list(EXPORT_BAD.values()), ids=list(EXPORT_BAD))
def test_export_refuses_weights_that_do_not_fit_and_writes_nothing(weights, match, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        gradc.api.export(_export_model(), str(out), weights=weights, inference_only=True)
    assert not out.exists() or os.listdir(out) == []


def test_export_refuses_an_npz_of_complex_weights(tmp_path):
    path = str(tmp_path / "w.npz")
    np.savez(path, W=np.array([1j, 2.0, 3.0]), b=np.array(0.5))
    with pytest.raises(ValueError, match="'W'"):
        gradc.api.export(_export_model(), str(tmp_path / "out"), weights=path, inference_only=True)


def test_read_weights_of_a_checkpoint_with_a_damaged_hash_raises_value_error(tmp_path):
    from gradc.api import lower_model, read_weights
    path = str(tmp_path / "ck.npz")
    np.savez(path, **{"param/W": GOOD_W["W"], "param/b": GOOD_W["b"], "state_json": np.frombuffer(b"{}", np.uint8),
                      "model_hash": np.frombuffer(b"\xff\xfe", np.uint8)})
    with pytest.raises(ValueError, match="ck.npz"):
        read_weights(path, lower_model(_export_model()))
