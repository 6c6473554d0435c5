"""Target cuda, on a machine without a GPU.

* The CUDA source of every example (and of the bench-local workload models), float32 and float64,
  compiles with ``nvcc -Werror all-warnings`` (skipped when nvcc is not installed).
* The same source built with ``-DGRADC_CUDA_EMULATE`` is strict C++ (``-Wall -Wextra -Werror``) that
  runs every kernel launch as a loop over its threads on the CPU. The emulated module must give what
  the C target gives: loss, gradients and outputs of every example (1e-10 float64, 1e-4 float32) and
  of 30 random models from the fuzz generator; SGD and Adam steps on device parameters; identical
  bits from two runs (no atomics, fixed reduction order); the same errors for bad arguments.
* Without a GPU, a real nvcc build loads and then says clearly that it needs one.

On a machine with a GPU, ``bench/gpu_check.sh`` runs the real kernels against the C target.
"""
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gradc
from batches import random_batch, rel
from conftest import EXAMPLES, ROOT

NVCC = shutil.which(os.environ.get("NVCC", "nvcc"))
GXX = shutil.which("g++")
TOL = {"float64": 1e-10, "float32": 1e-4}
SEVERAL = {"risk": ("logreg", "mlp"), "private_risk": ("logreg", "mlp")}     # files with several models


def _models():
    out = []
    for path in sorted(glob.glob(os.path.join(EXAMPLES, "*", "model.py"))) + \
            sorted(glob.glob(os.path.join(ROOT, "bench", "workload_models", "*.py"))):
        name = os.path.basename(os.path.dirname(path)) if path.endswith("model.py") else \
            os.path.splitext(os.path.basename(path))[0]
        for m in SEVERAL.get(name, (None,)):
            out.append((name if m is None else f"{name}-{m}", path, m))
    return out


MODELS = _models()
BY_ID = {i: (p, m) for i, p, m in MODELS}


def _render(path, model, dtype):
    from gradc.api import load_model_file, lower_model
    from gradc.autodiff import differentiate
    from gradc.codegen.cuda import render_cuda
    prog = lower_model(load_model_file(path, model))
    return render_cuda(prog, differentiate(prog), dtype)


def _write(src, d):
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{src.name}.cu").write_text(src.c)
    (d / f"{src.name}.h").write_text(src.h)
    return d / f"{src.name}.cu"


def _compile(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"$ {' '.join(map(str, cmd))}\n{p.stdout}{p.stderr}"
    assert "warning" not in (p.stdout + p.stderr).lower(), p.stdout + p.stderr


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda-src")
    return {(i, dt): _write(_render(p, m, dt), root / f"{i}-{dt}") for i, p, m in MODELS
            for dt in ("float32", "float64")}


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_every_example_compiles_with_nvcc_werror(sources):
    """All examples, both dtypes, two nvcc processes at a time."""
    jobs, failures = [], []
    for (name, dt), cu in sorted(sources.items()):
        cmd = [NVCC, "-Werror", "all-warnings", "-O3", "-c", str(cu), "-o", str(cu.with_suffix(".o"))]
        jobs.append(((name, dt), cmd, subprocess.Popen(cmd, cwd=cu.parent, stdout=subprocess.PIPE,
                                                        stderr=subprocess.STDOUT, text=True)))
        if len(jobs) >= 2 or (name, dt) == max(sources):
            for key, cmd, p in jobs:
                out, _ = p.communicate(timeout=600)
                if p.returncode != 0 or "warning" in out.lower():
                    failures.append(f"{key}: $ {' '.join(cmd)}\n{out}")
            jobs = []
    for key, cmd, p in jobs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0 or "warning" in out.lower():
            failures.append(f"{key}: $ {' '.join(cmd)}\n{out}")
    assert not failures, "\n\n".join(failures)
    assert len(sources) == 2 * len(MODELS) >= 16


@pytest.mark.skipif(GXX is None, reason="g++ is not installed")
@pytest.mark.parametrize("name", ["moons", "recsys", "w5_mf"])
def test_the_emulated_source_is_strict_cxx(sources, name):
    for dt in ("float32", "float64"):
        cu = sources[(name, dt)]
        _compile([GXX, "-x", "c++", "-std=c++11", "-DGRADC_CUDA_EMULATE", "-Wall", "-Wextra", "-Werror",
                  "-O1", "-c", str(cu), "-o", str(cu.with_suffix(".emu.o"))], cu.parent)


# ---- the emulated module against the C target ------------------------------------------------

@pytest.fixture
def emulate(monkeypatch):
    monkeypatch.setenv("GRADC_CUDA_EMULATE", "1")


@pytest.mark.skipif(GXX is None, reason="g++ is not installed")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("which", list(BY_ID))
def test_emulated_cuda_equals_the_c_target(emulate, which, dtype):
    path, model = BY_ID[which]
    mc = gradc.load(path, dtype=dtype, model=model)
    mg = gradc.load(path, dtype=dtype, target="cuda", model=model)
    assert mg.target == "cuda" and mc.target == "c"
    c = mc._compiled
    rng = np.random.default_rng(0)
    p = mc.init_params(seed=0)
    for n in (1, 33, 70):           # one sample, a partial chunk, several chunks
        data = random_batch(mc, n, rng, dtype)
        L1, g1 = mc.loss_and_grad(p, **data)
        L2, g2 = mg.loss_and_grad(p, **data)
        assert rel(L2, L1) <= TOL[dtype], f"n={n}: loss {L2} against {L1}"
        for k in g1:
            assert rel(g2[k], g1[k]) <= TOL[dtype], f"n={n}: gradient of {k}"
        assert rel(mg.loss(p, **data), mc.loss(p, **data)) <= TOL[dtype]
        ins = {a["name"]: data[a["name"]] for a in c.meta["inputs"]}
        o1, o2 = mc.forward(p, **ins), mg.forward(mg.to_device(p), **ins)
        for k in o1:
            assert rel(o2[k], o1[k]) <= TOL[dtype], f"n={n}: output {k}"


def test_device_training_equals_the_c_target(emulate):
    """SGD and Adam on device parameters: only batches in and losses out; then to_host."""
    path = os.path.join(EXAMPLES, "digits", "model.py")
    mc, mg = gradc.load(path), gradc.load(path, target="cuda")
    rng = np.random.default_rng(1)
    batches = [random_batch(mc, 40, rng, "float64") for _ in range(6)]
    p = mc.init_params(seed=2)
    dp = mg.to_device(p)
    ref = p.copy()
    for b in batches:
        L1 = mc.sgd_step(ref, 0.1, **b)
        L2 = mg.sgd_step(dp, 0.1, **b)
        assert rel(L2, L1) <= 1e-12
    back = mg.to_host(dp)
    for k in ref:
        assert rel(back[k], ref[k]) <= 1e-12, k
    st_c, st_g = mc.adam_state(), mg.adam_state()
    for b in batches:
        L1 = mc.adam_step(ref, st_c, lr=0.01, **b)
        L2 = mg.adam_step(dp, st_g, lr=0.01, **b)
        assert rel(L2, L1) <= 1e-12
    assert st_g["step"] == st_c["step"] == 6
    back = mg.to_host(dp)
    for k in ref:
        assert rel(back[k], ref[k]) <= 1e-12, k
    assert rel(st_g["exp_avg"].numpy(), st_c["exp_avg"]) <= 1e-12
    # the optimizers' train_step works on a cuda module too (host parameters, copied each step)
    from gradc import optim
    p1, p2 = mc.init_params(seed=3), mc.init_params(seed=3)
    o1, o2 = optim.Adam(p1, lr=0.01), optim.Adam(p2, lr=0.01)
    for b in batches:
        o1.train_step(mc, **b)
        o2.train_step(mg, **b)
    for k in p1:
        assert rel(p2[k], p1[k]) <= 1e-12, k


def test_two_runs_give_identical_bits(emulate):
    path = os.path.join(ROOT, "bench", "workload_models", "w5_mf.py")
    mg = gradc.load(path, dtype="float32", target="cuda")
    data = random_batch(mg, 300, np.random.default_rng(4), "float32")
    p = mg.init_params(seed=0)
    (L1, g1), (L2, g2) = mg.loss_and_grad(p, **data), mg.loss_and_grad(p, **data)
    assert L1 == L2 and np.array_equal(g1.flat, g2.flat)


def test_bad_arguments_are_refused_as_for_the_c_target(emulate):
    path = os.path.join(ROOT, "bench", "workload_models", "w5_mf.py")
    mg = gradc.load(path, target="cuda")
    data = random_batch(mg, 20, np.random.default_rng(5), "float64")
    dp = mg.to_device(mg.init_params(seed=0))
    before = mg.to_host(dp).flat.copy()
    bad = dict(data, item=data["item"].copy())
    bad["item"][7] = 1700
    with pytest.raises(ValueError, match=r"'item': sample 7 holds 1700, outside 0..1699"):
        mg.sgd_step(dp, 0.1, **bad)
    with pytest.raises(ValueError, match="argument 'rating' has shape"):
        mg.loss_and_grad(dp, **dict(data, rating=data["rating"][:, None]))
    with pytest.raises(ValueError, match="missing input or target 'mu'"):
        mg.loss(dp, **{k: v for k, v in data.items() if k != "mu"})
    np.testing.assert_array_equal(mg.to_host(dp).flat, before)
    with pytest.raises(ValueError, match="DeviceParams of this model"):
        mg.to_host(before)
    with pytest.raises(ValueError, match="adam_state"):
        mg.adam_step(dp, {"step": 0}, **data)


@pytest.mark.skipif(GXX is None, reason="g++ is not installed")
def test_emulated_cuda_equals_the_c_target_on_random_models(emulate):
    sys.path.insert(0, os.path.dirname(__file__))
    import fuzz
    cases = fuzz.sample_cases(20, label="cuda")
    failures = []
    for j, case in enumerate(cases):
        m = case.build()
        mc = gradc.compile_model(m, "float64")
        mg = gradc.compile_model(m, "float64", target="cuda")
        params, inputs, targets = fuzz.draw_values(case, np.random.default_rng(j))
        p = mc.init_params(seed=0)
        for k, v in params.items():
            p[k] = v
        L1, g1 = mc.loss_and_grad(p, **inputs, **targets)
        L2, g2 = mg.loss_and_grad(p, **inputs, **targets)
        errs = [rel(L2, L1)] + [rel(g2[k], g1[k]) for k in g1]
        if inputs:
            o1, o2 = mc.forward(p, **inputs), mg.forward(p, **inputs)
            errs += [rel(o2[k], o1[k]) for k in o1]
        if not max(errs) <= 1e-10:
            failures.append(f"case {j} (error {max(errs):.3g}):\n{case.source}")
    assert not failures, "\n\n".join(failures)


# ---- no GPU here ------------------------------------------------------------------------------

@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_without_a_gpu_the_real_build_says_it_needs_one(monkeypatch):
    monkeypatch.delenv("GRADC_CUDA_EMULATE", raising=False)
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True) \
        if shutil.which("nvidia-smi") else None
    if probe is not None and probe.returncode == 0 and "GPU" in probe.stdout:
        pytest.skip("this machine has a GPU: bench/gpu_check.sh runs the real kernels")
    from gradc.errors import BuildError
    with pytest.raises(BuildError, match="target cuda: .*needs an NVIDIA GPU to run .*target='c'"):
        gradc.load(os.path.join(EXAMPLES, "moons", "model.py"), target="cuda")
    # and the C target keeps working in the same process
    assert gradc.load(os.path.join(EXAMPLES, "moons", "model.py")).target == "c"


def test_a_missing_nvcc_is_named(monkeypatch, tmp_path):
    monkeypatch.delenv("GRADC_CUDA_EMULATE", raising=False)
    monkeypatch.setenv("NVCC", str(tmp_path / "no-such-nvcc"))
    from gradc.errors import BuildError
    with pytest.raises(BuildError, match="needs the CUDA compiler, but .*no-such-nvcc.* is not on PATH"):
        gradc.load(os.path.join(EXAMPLES, "moons", "model.py"), target="cuda")


def test_an_unknown_target_is_named():
    from gradc.errors import ModelError
    with pytest.raises(ModelError, match="target must be one of c, cuda, not 'opencl'"):
        gradc.load(os.path.join(EXAMPLES, "moons", "model.py"), target="opencl")


def test_cli_compile_target_cuda_writes_the_cu_source(emulate, run_cli, tmp_path):
    r = run_cli("compile", os.path.join(EXAMPLES, "moons", "model.py"), "-o", str(tmp_path), "--target", "cuda",
                env={"GRADC_CUDA_EMULATE": "1"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "moons.cu").is_file() and (tmp_path / "moons.h").is_file()
    assert "target cuda" in r.stdout
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); import moons; "
            "p = moons.to_device(moons.init_params(seed=0)); "
            "print(moons.target, moons.sgd_step(p, 0.1, x=np.zeros((3, 2)), y=np.ones(3)))")
    env = dict(os.environ, GRADC_CUDA_EMULATE="1")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.startswith("cuda "), p.stderr


def test_the_emulation_catches_a_kernel_whose_threads_write_one_element(emulate, monkeypatch, tmp_path):
    """The ownership rule is what makes the GPU kernels race-free, and sequential emulation alone
    would not notice a broken one: every write is checked. Here the rule is broken on purpose (every
    loop variable 'owned', so threads that differ in a reduction index write one element)."""
    from gradc.codegen import c, cuda
    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path / "cache"))   # this broken build stays here,
    monkeypatch.setattr(c, "_digest", {"cuda": "a deliberately broken generator"})   # a key of its own
    monkeypatch.setattr(cuda._CudaBuilder, "_owned", lambda self, ups, loop_syms: list(loop_syms))
    mg = gradc.load(os.path.join(EXAMPLES, "digits", "model.py"), target="cuda")
    data = random_batch(mg, 5, np.random.default_rng(0), "float64")
    with pytest.raises(RuntimeError, match=r"CUDA failed: threads \d+ and \d+ of digits_k\d+ write one element"):
        mg.loss_and_grad(mg.init_params(seed=0), **data)


def test_the_gpu_check_script_runs_emulated(emulate, tmp_path):
    """bench/gpu_check.py is what a GPU machine runs; here it runs emulated, on two models."""
    env = dict(os.environ, GRADC_CUDA_EMULATE="1")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--models", "moons,recsys",
                        "--sizes", "1,40", "--no-timing", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.count("| ok |") == 4 and "FAILED" not in md
    sh = subprocess.run(["bash", "-n", os.path.join(ROOT, "bench", "gpu_check.sh")], capture_output=True, text=True)
    assert sh.returncode == 0, sh.stderr
