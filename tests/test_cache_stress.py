"""The build cache under stress: many processes at once, a corrupt entry rebuilt while others
load, a cache folder that cannot be written, and a size limit that evicts the least recently
used entries.

Each test uses its own fresh ``GRADC_CACHE_DIR`` and models with a random constant, so no test
shares an entry with another (or with another run).
"""
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import warnings

import pytest

import gradc
import gradc.build
from conftest import ROOT
from gradc.api import build_model, load_model_file
from gradc.build import entry_ok
from gradc.runtime import as_module

from cachekit import X, Y, entries, fallback_cache, hidden, tiny_loss, write_tiny


def entry_size(path):
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def _rewrite(path, data):
    """New content through a new inode: a library some process has mapped stays intact."""
    tmp = str(path) + ".corrupt"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def truncate_so(entry, meta):
    so = os.path.join(entry, meta["so"])
    with open(so, "rb") as f:
        data = f.read()
    _rewrite(so, data[:len(data) // 3])
    assert entry_ok(entry) is None


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("GRADC_CACHE_DIR", str(d))
    return d


def _wait_for(path, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.005)


# ---- many processes at once --------------------------------------------------------------

# imports gradc (and SymPy) first, then waits until every worker is ready, so that the loads
# themselves start together
WORKER = r"""
import json, os, sys, time
import gradc, gradc.api, gradc.model
path, barrier, total, me = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
open(os.path.join(barrier, me), "w").close()
deadline = time.time() + 120
while len(os.listdir(barrier)) < total and time.time() < deadline:
    time.sleep(0.002)
mod = gradc.load(path)
meta = mod._compiled.meta
L = mod.loss(mod.init_params(), x=[[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], y=[1.0, -1.0, 0.5])
print(json.dumps(dict(so=sys.modules[meta["module"]].__file__, key=meta["key"], loss=L)))
"""


def run_together(jobs, barrier, env=None):
    """Start one WORKER per model path in ``jobs`` at once; returns their parsed results."""
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, path, str(barrier), str(len(jobs)), str(k)],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, path in enumerate(jobs)]
    out = []
    for p in procs:
        so, se = p.communicate(timeout=300)
        assert p.returncode == 0, f"a worker failed:\n{se}"
        out.append(json.loads(so.strip().splitlines()[-1]))
    return out


def test_eight_processes_compiling_same_and_different_models_at_once_leave_one_entry_per_model(cache, tmp_path):
    models = dict(write_tiny(tmp_path, n) for n in ("stress_a", "stress_b", "stress_c", "stress_d", "stress_e"))
    paths = list(models)
    jobs = [paths[0]] * 4 + paths[1:]                       # four race on one model, four compile others
    random.Random(0).shuffle(jobs)
    results = run_together(jobs, tmp_path / "barrier")

    by_model = {}
    for path, r in zip(jobs, results):
        assert r["loss"] == pytest.approx(tiny_loss(models[path]), rel=1e-12)
        by_model.setdefault(path, []).append(r)
    for path, rs in by_model.items():
        assert len({r["so"] for r in rs}) == 1, f"{path}: processes loaded different artifacts"
        assert len({r["loss"] for r in rs}) == 1
    names = entries(cache)
    assert len(names) == 5, names
    for n in ("stress_a", "stress_b", "stress_c", "stress_d", "stress_e"):
        assert sum(e.startswith(n + "-") for e in names) == 1, f"not exactly one entry for {n}: {names}"
    assert hidden(cache) == [], f"temporaries left in the cache: {hidden(cache)}"
    for e in names:
        assert entry_ok(str(cache / e)) is not None, f"{e} is not a complete, unaltered entry"
        assert any(r["so"].startswith(str(cache / e) + os.sep) for r in results)


# R rebuilds the corrupt entry, but holds on just before compiling until told to go on
REBUILDER = r"""
import json, os, sys, time
import gradc, gradc.build
path, barrier = sys.argv[1:3]
real_compile = gradc.build._compile

def held_compile(*args, **kw):
    open(os.path.join(barrier, "r_compiling"), "w").close()
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(barrier, "go")) and time.time() < deadline:
        time.sleep(0.002)
    return real_compile(*args, **kw)

gradc.build._compile = held_compile
mod = gradc.load(path)
meta = mod._compiled.meta
L = mod.loss(mod.init_params(), x=[[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], y=[1.0, -1.0, 0.5])
print(json.dumps(dict(so=sys.modules[meta["module"]].__file__, loss=L)))
"""

LOADER = ("import json, sys, gradc; m = gradc.load(sys.argv[1]); meta = m._compiled.meta; "
          "L = m.loss(m.init_params(), x=[[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]], y=[1.0, -1.0, 0.5]); "
          "print(json.dumps(dict(so=sys.modules[meta['module']].__file__, loss=L)))")


def test_a_process_loading_while_another_rebuilds_a_corrupt_entry_both_succeed(cache, tmp_path):
    path, c = write_tiny(tmp_path, "stress_rebuild")
    entry, meta = build_model(load_model_file(path))
    truncate_so(entry, meta)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    rebuilder = subprocess.Popen([sys.executable, "-c", REBUILDER, path, str(barrier)], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(barrier / "r_compiling")
        # meanwhile another process loads the model: the entry is still the corrupt one (it is
        # replaced only when a good one is published), so it builds and publishes its own
        loader = subprocess.run([sys.executable, "-c", LOADER, path], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert loader.returncode == 0, loader.stderr
        assert entry_ok(entry) is not None
    finally:
        (barrier / "go").touch()
        r_out, r_err = rebuilder.communicate(timeout=300)
    assert rebuilder.returncode == 0, r_err
    r, lo = json.loads(r_out.strip().splitlines()[-1]), json.loads(loader.stdout.strip().splitlines()[-1])
    assert r["loss"] == lo["loss"] == pytest.approx(tiny_loss(c), rel=1e-12)
    assert r["so"] == lo["so"], "the rebuilder did not take the entry the loader published"
    assert entries(cache) == [os.path.basename(entry)] and hidden(cache) == [], os.listdir(cache)
    assert entry_ok(entry) is not None


# A builds (its build repairs the corrupt entry) and loads the library only once told to
BUILD_THEN_LOAD = r"""
import json, os, sys, time
from gradc.api import build_model, load_model_file
from gradc.runtime import as_module
path, barrier = sys.argv[1:3]
entry, meta = build_model(load_model_file(path))
print("built", flush=True)
deadline = time.time() + 120
while not os.path.exists(os.path.join(barrier, "go")) and time.time() < deadline:
    time.sleep(0.002)
mod = as_module(entry, meta)
print(json.dumps(dict(loss=mod.loss(mod.init_params(), x=[[0.5, -1.0]], y=[1.0]))))
"""


def test_a_stale_corruption_check_never_deletes_the_entry_another_process_just_published(cache, tmp_path,
                                                                                         monkeypatch):
    path, c = write_tiny(tmp_path, "stress_stale")
    entry, meta = build_model(load_model_file(path))
    truncate_so(entry, meta)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    other = {}
    real_entry_ok, real_compile = gradc.build.entry_ok, gradc.build._compile

    def slow_check(e):
        # this process reads the corrupt entry; before it acts on that, process A repairs the entry
        result = real_entry_ok(e)
        if not other:
            other["p"] = subprocess.Popen([sys.executable, "-c", BUILD_THEN_LOAD, path, str(barrier)], cwd=ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert other["p"].stdout.readline().strip() == "built"
            assert real_entry_ok(e) is not None, "A did not publish a good entry"
        return result

    def compile_after_a_loads(*args, **kw):
        (barrier / "go").touch()
        other["out"], other["err"] = other["p"].communicate(timeout=300)
        return real_compile(*args, **kw)

    monkeypatch.setattr(gradc.build, "entry_ok", slow_check)
    monkeypatch.setattr(gradc.build, "_compile", compile_after_a_loads)
    try:
        build_model(load_model_file(path))
    finally:
        (barrier / "go").touch()
        if "p" in other and "out" not in other:
            other["out"], other["err"] = other["p"].communicate(timeout=300)
    assert other["p"].returncode == 0, f"process A failed to load the entry it had just built:\n{other['err']}"


# ---- a cache folder that cannot be written -------------------------------------------------

def _deny_mkdtemp_in(root, monkeypatch):
    """Simulate a read-only cache folder (root ignores permissions, so chmod cannot)."""
    real = tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kw):
        if dir is not None and os.path.abspath(dir) == os.path.abspath(root):
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=dir, **kw)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)


def test_unwritable_cache_folder_falls_back_to_a_temporary_one_with_a_warning(cache, tmp_path, private_tmp,
                                                                              monkeypatch):
    cache.mkdir()
    _deny_mkdtemp_in(cache, monkeypatch)
    path, c = write_tiny(tmp_path, "stress_readonly")
    with pytest.warns(UserWarning, match=rf"gradc cache folder {re.escape(str(cache))} is not writable .*"
                                         rf"using {re.escape(str(private_tmp))}"):
        mod = gradc.load(path)
    assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(c), rel=1e-12)
    assert os.listdir(cache) == [], "something was written into the unwritable cache"
    assert len(entries(fallback_cache(private_tmp))) == 1 and hidden(fallback_cache(private_tmp)) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into a chmod 0o555 folder anyway; the simulated test covers this")
def test_chmod_555_cache_folder_falls_back_to_a_temporary_one_with_a_warning(cache, tmp_path, private_tmp):
    cache.mkdir()
    os.chmod(cache, 0o555)
    try:
        path, c = write_tiny(tmp_path, "stress_chmod")
        with pytest.warns(UserWarning, match="is not writable"):
            mod = gradc.load(path)
        assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(c), rel=1e-12)
        assert os.listdir(cache) == []
    finally:
        os.chmod(cache, 0o755)


def test_fallback_cache_never_uses_a_folder_that_others_can_write(cache, tmp_path, private_tmp, monkeypatch):
    cache.mkdir()
    _deny_mkdtemp_in(cache, monkeypatch)
    planted = fallback_cache(private_tmp)
    planted.mkdir()
    os.chmod(planted, 0o777)                              # as another user on a shared machine could
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.chown(planted, 65534, 65534)                   # ... and own it
    path, c = write_tiny(tmp_path, "stress_planted")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mod = gradc.load(path)
    assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(c), rel=1e-12)
    assert entries(planted) == [], "gradc published into (and would load from) a folder others control"


# ---- a size limit: least recently used entries go ------------------------------------------

def _age(entry, seconds):
    t = time.time() - seconds
    os.utime(entry, (t, t))


def test_cache_over_max_bytes_evicts_the_least_recently_used_entries_and_keeps_the_newest(cache, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setenv("GRADC_CACHE_MAX_BYTES", str(1 << 40))
    a_path, _ = write_tiny(tmp_path, "lru_a")
    b_path, cb = write_tiny(tmp_path, "lru_b")
    c_path, _ = write_tiny(tmp_path, "lru_c")
    ea, _ = build_model(load_model_file(a_path))
    eb, mb = build_model(load_model_file(b_path))
    mod_b = as_module(eb, mb)                              # loaded before its entry is evicted
    _age(ea, 300)                                          # a is the oldest...
    _age(eb, 200)
    assert build_model(load_model_file(a_path))[0] == ea   # ... until it is used again (a hit)
    size = max(entry_size(ea), entry_size(eb))
    monkeypatch.setenv("GRADC_CACHE_MAX_BYTES", str(int(2.5 * size)))
    ec, _ = build_model(load_model_file(c_path))
    assert os.path.isdir(ea), "the recently used entry was evicted"
    assert os.path.isdir(ec), "the newest entry was evicted"
    assert not os.path.exists(eb), "the least recently used entry was kept over the limit"
    assert hidden(cache) == []
    assert sum(entry_size(str(cache / e)) for e in entries(cache)) <= 2.5 * size
    # a module already loaded from an evicted entry keeps working in its process
    assert mod_b.loss(mod_b.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(cb), rel=1e-12)


def test_an_entry_larger_than_the_limit_is_kept_when_it_is_the_newest(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADC_CACHE_MAX_BYTES", str(1 << 40))
    old_path, _ = write_tiny(tmp_path, "lru_old")
    build_model(load_model_file(old_path))
    monkeypatch.setenv("GRADC_CACHE_MAX_BYTES", "1")
    new_path, c = write_tiny(tmp_path, "lru_new")
    e, meta = build_model(load_model_file(new_path))
    assert entries(cache) == [os.path.basename(e)]
    mod = as_module(e, meta)
    assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(c), rel=1e-12)


def test_eviction_spares_a_build_in_progress_and_sweeping_removes_an_abandoned_one(cache, tmp_path, monkeypatch):
    cache.mkdir()
    active, abandoned = cache / ".build-active", cache / ".build-abandoned"
    for d in (active, abandoned):
        d.mkdir()
        (d / "big.bin").write_bytes(b"\0" * 100_000)
    _age(abandoned, 2 * 3600)                              # a process killed two hours ago
    monkeypatch.setenv("GRADC_CACHE_MAX_BYTES", "1")
    path, _ = write_tiny(tmp_path, "lru_sweep")
    build_model(load_model_file(path))
    assert active.is_dir() and (active / "big.bin").stat().st_size == 100_000, "another process's build was removed"
    assert not abandoned.exists(), "a build folder abandoned for two hours was left behind"
    assert len(entries(cache)) == 1
