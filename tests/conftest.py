"""Shared test set-up: a private gradc cache for the whole session."""
import os
import shutil
import sys
import tempfile
import tracemalloc

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def pytest_configure(config):
    # the register tiles are sized for one vector unit whatever the machine (gradc.isa), so the
    # README's generated numbers (lines of C, footprints, seeded accuracies) are the same on every
    # machine kind; tests/test_isa.py checks the detection and other tile sizes
    os.environ.setdefault("GRADC_ISA", "avx2")
    # one cache per test session: no test depends on (or pollutes) the user's cache
    if "GRADC_CACHE_DIR" not in os.environ or os.environ.get("GRADC_TEST_KEEP_CACHE") != "1":
        d = tempfile.mkdtemp(prefix="gradc-test-cache-")
        os.environ["GRADC_CACHE_DIR"] = d
        config._gradc_cache = d


def pytest_unconfigure(config):
    d = getattr(config, "_gradc_cache", None)
    if d:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def write_model(tmp_path):
    """Write model source text to a file and return its path: ``path = write_model(src)``."""
    def write(src, name="model.py"):
        p = tmp_path / name
        p.write_text(src)
        return str(p)
    return write


@pytest.fixture
def run_cli():
    """Run ``gradc ARGS`` in a subprocess; returns CompletedProcess with text output."""
    import subprocess

    def run(*args, cwd=None, env=None):
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run([sys.executable, "-m", "gradc.cli", *args], capture_output=True, text=True,
                              cwd=cwd, env=e, timeout=300)
    return run


@pytest.fixture
def count_differentiate(monkeypatch):
    """Counts calls of gradc.autodiff.differentiate (that is, cache misses) in this process."""
    import gradc.autodiff
    real, calls = gradc.autodiff.differentiate, []

    def counting(prog):
        calls.append(prog.name)
        return real(prog)
    monkeypatch.setattr(gradc.autodiff, "differentiate", counting)
    return calls


def peak_during(fn):
    """(result or exception, peak bytes traced while running fn): ``out, peak = peak_during(load)``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            out = fn()
        except Exception as e:               # noqa: BLE001 (returned for the caller to check)
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile.gettempdir() inside this test's folder, so a fallback cache lands there."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def logistic_regression(name, n_features):
    """A compiled logistic regression on ``n_features`` inputs (output ``p``, target ``y`` in {0, 1}),
    BCE with logits and L2 1e-3 on the weights: the small model of the weighting and DP tests."""
    import gradc as gc
    m = gc.Model(name)
    x, y = m.input("x", n_features), m.target("y")
    w, b = m.param("w", (1, n_features), init=gc.init.uniform(-0.1, 0.1)), m.param("b", 1, init=0)
    z = (w @ x + b)[0]
    m.output("p", gc.sigmoid(z))
    m.loss(gc.bce_with_logits(z, y))
    m.regularize(1e-3 * gc.sum_squares(w))
    return gc.compile_model(m)
