"""The build cache: races, warm loads, corrupt entries, failed compiles, its location.

Every test that needs an empty cache points ``GRADC_CACHE_DIR`` at its own
folder, and compiles a model no other test compiles (a random constant in
its loss), so nothing here depends on test order.
"""
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

import gradc
from conftest import EXAMPLES, ROOT

MOONS = os.path.join(EXAMPLES, "moons", "model.py")


def tiny_source(name="cachetiny", c=None):
    """A small model whose cache key no other test shares."""
    c = random.Random().uniform(1.0, 2.0) if c is None else c
    return textwrap.dedent(f"""\
        import sympy as sp
        import gradc as gc

        m = gc.Model("{name}")
        x, y = m.input("x", 2), m.target("y")
        w, b = m.param("w", 2, init=gc.init.uniform(-1, 1)), m.param("b", init=0)
        m.loss({c!r} * (w[0] * x[0] + w[1] * x[1] + b - y) ** 2)
        """)


def entries(root):
    """The published cache entries (folders not starting with a dot)."""
    return sorted(n for n in os.listdir(root) if not n.startswith(".")) if os.path.isdir(root) else []


def hidden(root):
    """Temporaries (.build-*, .trash-*, .probe-*) in the cache folder."""
    return sorted(n for n in os.listdir(root) if n.startswith(".")) if os.path.isdir(root) else []


def _env(**kw):
    e = dict(os.environ)
    e.update({k: str(v) for k, v in kw.items()})
    return e


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty cache folder for this test (also for its subprocesses)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("GRADC_CACHE_DIR", str(d))
    return d



# ---- (a) two processes race on one new model ------------------------------------
RACER = r"""
import json, os, sys, time
import gradc, gradc.build
path, barrier, me = sys.argv[1:4]
real_compile, compiled = gradc.build._compile, []


def compile_then_wait(*args, **kw):
    # both processes compile; each publishes only once the other has compiled too, so
    # the two renames race for real and one of them must lose
    out = real_compile(*args, **kw)
    compiled.append(1)
    open(os.path.join(barrier, me), "w").close()
    deadline = time.time() + 60
    while len(os.listdir(barrier)) < 2 and time.time() < deadline:
        time.sleep(0.002)
    return out


gradc.build._compile = compile_then_wait
mod = gradc.load(path)
meta = mod._compiled.meta
p = mod.init_params(seed=0)
L = mod.loss(p, x=[[0.5, -1.0], [2.0, 0.25]], y=[1.0, -1.0])
print(json.dumps(dict(so=sys.modules[meta["module"]].__file__, key=meta["key"], loss=L, compiled=len(compiled))))
"""


def test_two_processes_compiling_the_same_new_model_share_one_entry(cache, tmp_path):
    path = tmp_path / "race.py"
    path.write_text(tiny_source("race"))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(path), str(barrier), str(k)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, f"a racing process failed:\n{err}"
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["compiled"] for r in results] == [1, 1], "the two processes did not both compile"
    (entry,) = entries(cache)                 # exactly one entry, and no temporaries left over
    assert hidden(cache) == [], f"left in the cache: {hidden(cache)}"
    edir = cache / entry
    for r in results:
        assert os.path.dirname(r["so"]) == str(edir), "a process loaded an artifact outside the published entry"
        assert os.path.isfile(r["so"])
    assert results[0]["so"] == results[1]["so"] and results[0]["key"] == results[1]["key"]
    assert results[0]["loss"] == results[1]["loss"]
    from gradc.build import entry_ok
    assert entry_ok(str(edir)) is not None


# ---- (b) a warm load: no differentiation, no compiler, fast ------------------------------
WARM = r"""
import json, os, statistics, subprocess, sys, time
import gradc, gradc.autodiff, gradc.build, gradc.codegen.c

def forbidden(what):
    def f(*a, **k):
        raise AssertionError(f"{what} called on a warm load")
    return f

gradc.autodiff.differentiate = forbidden("gradc.autodiff.differentiate")
gradc.codegen.c.render = forbidden("gradc.codegen.c.render")
gradc.build._compile = forbidden("gradc.build._compile")
for name in ("run", "Popen", "call", "check_call", "check_output"):
    setattr(subprocess, name, forbidden("subprocess." + name))
os.system = forbidden("os.system")
path = sys.argv[1]
t0 = time.perf_counter()
mod = gradc.load(path)
first = time.perf_counter() - t0
times = []
for _ in range(9):
    t0 = time.perf_counter()
    m2 = gradc.load(path)
    times.append(time.perf_counter() - t0)
p = m2.init_params(seed=0)
L = m2.loss(p, x=[[0.5, -1.0], [2.0, 0.25]], y=[1.0, -1.0])
print(json.dumps(dict(first=first, median=statistics.median(times), times=times, loss=L)))
"""


def test_warm_load_needs_no_differentiation_no_compiler_and_takes_under_0_3_s(cache):
    cold = gradc.load(MOONS)                   # fills the fresh cache in this process
    p = cold.init_params(seed=0)
    L = cold.loss(p, x=[[0.5, -1.0], [2.0, 0.25]], y=[1.0, -1.0])
    n_entries = entries(cache)
    r = subprocess.run([sys.executable, "-c", WARM, MOONS], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["loss"] == L
    assert entries(cache) == n_entries, "a warm load wrote a new entry"
    # the "done when": gradc.load of moons inside a running process, from the cache
    assert res["median"] < 0.3, f"warm gradc.load took {res['median']:.3f} s (median of {res['times']})"


# ---- (c) a corrupt entry is detected and rebuilt ---------------------------------------
def _rewrite(path, data):
    """Replace a file's content through a new inode: a library this process has mapped stays intact."""
    tmp = str(path) + ".corrupt"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _truncate(path):
    data = path.read_bytes()
    _rewrite(path, data[:len(data) // 2])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    _rewrite(path, bytes(data))


def _append(path):
    _rewrite(path, path.read_bytes() + b"\n/* edited */\n")


CORRUPTIONS = {
    "so-truncated": ("so", _truncate),
    "so-byte-flipped": ("so", _flip),
    "so-emptied": ("so", lambda p: _rewrite(p, b"")),
    "so-deleted": ("so", lambda p: p.unlink()),
    "c-edited": ("c", _append),
    "c-truncated": ("c", _truncate),
    "h-byte-flipped": ("h", _flip),
    "meta-truncated": ("meta", _truncate),
    "meta-deleted": ("meta", lambda p: p.unlink()),
}


def _entry_files(entry, meta):
    return {"so": entry / meta["so"], "c": entry / (meta["prefix"] + ".c"), "h": entry / (meta["prefix"] + ".h"),
            "meta": entry / "meta.json"}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_truncated_or_altered_entry_is_detected_and_rebuilt(cache, tmp_path, count_differentiate, case):
    from gradc.api import build_model, load_model_file
    from gradc.build import entry_ok
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source())
    e1, meta = build_model(load_model_file(str(path)))
    assert len(count_differentiate) == 1
    entry = cache / os.path.basename(e1)
    good = {k: f.read_bytes() for k, f in _entry_files(entry, meta).items() if k != "meta"}
    e_again, _ = build_model(load_model_file(str(path)))          # a hit: nothing rebuilt
    assert e_again == e1 and len(count_differentiate) == 1

    what, corrupt = CORRUPTIONS[case]
    corrupt(_entry_files(entry, meta)[what])
    assert entry_ok(str(entry)) is None, "the corruption is not even visible to entry_ok"
    e2, meta2 = build_model(load_model_file(str(path)))
    assert e2 == e1, "the rebuilt entry moved"
    assert len(count_differentiate) == 2, "the corrupt entry was used instead of rebuilt"
    assert entry_ok(str(entry)) is not None
    files = _entry_files(entry, meta2)
    assert files["c"].read_bytes() == good["c"] and files["h"].read_bytes() == good["h"]
    assert len(files["so"].read_bytes()) > 0
    assert entries(cache) == [entry.name] and hidden(cache) == [], f"left over: {os.listdir(cache)}"


def test_rebuilt_entry_loads_in_a_fresh_process(cache, tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source())
    mod = gradc.load(str(path))
    L = mod.loss(mod.init_params(seed=0), x=[[0.5, -1.0], [2.0, 0.25]], y=[1.0, -1.0])
    (entry,) = entries(cache)
    so = cache / entry / mod._compiled.meta["so"]
    _truncate(so)
    # a fresh process must neither crash on the truncated library nor load it: it rebuilds
    script = ("import gradc, sys; m = gradc.load(sys.argv[1]); "
              "print(repr(m.loss(m.init_params(seed=0), x=[[0.5, -1.0], [2.0, 0.25]], y=[1.0, -1.0])))")
    r = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip()) == L
    from gradc.build import entry_ok
    assert entry_ok(str(cache / entry)) is not None


def test_edited_meta_json_is_detected(cache, tmp_path, count_differentiate):
    from gradc.api import build_model, load_model_file
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source())
    e1, meta = build_model(load_model_file(str(path)))
    mj = os.path.join(e1, "meta.json")
    with open(mj) as f:
        m = json.load(f)
    m["n_params"] += 1
    _rewrite(mj, json.dumps(m, indent=1, sort_keys=True).encode())
    _, meta2 = build_model(load_model_file(str(path)))
    assert meta2["n_params"] == meta["n_params"] and len(count_differentiate) == 2


# ---- (d) a failed compile ---------------------------------------------------------------
@pytest.fixture
def failing_cc(tmp_path):
    cc = tmp_path / "bin" / "fakecc"
    cc.parent.mkdir()
    cc.write_text("#!/bin/sh\n"
                  "echo 'fakecc: stdout line' \n"
                  "echo 'fakecc: error: deliberate failure 4711' >&2\n"
                  # leave a half-written output behind, as a crashing compiler may
                  "for a in \"$@\"; do if [ \"$prev\" = -o ]; then printf 'half' > \"$a\"; fi; prev=$a; done\n"
                  "exit 1\n")
    cc.chmod(0o755)
    return str(cc)


def test_failed_compile_raises_build_error_with_compiler_output_and_leaves_no_entry(cache, tmp_path,
                                                                                    monkeypatch, failing_cc):
    monkeypatch.setenv("CC", failing_cc)
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source())
    with pytest.raises(gradc.BuildError) as ei:
        gradc.load(str(path))
    msg = str(ei.value)
    assert "deliberate failure 4711" in msg and "fakecc: stdout line" in msg
    assert "exit 1" in msg
    assert entries(cache) == [] and hidden(cache) == [], f"left in the cache: {os.listdir(cache)}"
    # the same model then builds with a working compiler
    monkeypatch.delenv("CC")
    mod = gradc.load(str(path))
    assert mod.loss(mod.init_params(), x=[[1.0, 2.0]], y=[0.5]) >= 0
    assert len(entries(cache)) == 1 and hidden(cache) == []


def test_compiler_that_succeeds_without_output_raises_build_error(cache, tmp_path, monkeypatch):
    cc = tmp_path / "bin" / "silentcc"
    cc.parent.mkdir()
    cc.write_text("#!/bin/sh\necho 'silentcc: did nothing'\nexit 0\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source())
    try:
        with pytest.raises(gradc.BuildError, match="silentcc: did nothing"):
            gradc.load(str(path))
    finally:
        assert entries(cache) == [] and hidden(cache) == []


def test_cc_false_raises_build_error(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "false")
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source())
    with pytest.raises(gradc.BuildError, match="exit 1"):
        gradc.load(str(path))
    assert entries(cache) == [] and hidden(cache) == []


def test_missing_compiler_raises_build_error(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-gradc-test")
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source())
    with pytest.raises(gradc.BuildError, match="no-such-compiler-gradc-test"):
        gradc.load(str(path))
    assert entries(cache) == [] and hidden(cache) == []


def test_cli_reports_a_failed_compile_and_writes_nothing(cache, tmp_path, failing_cc, run_cli):
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source("clifail"))
    out = tmp_path / "out"
    r = run_cli("compile", str(path), "-o", str(out), env={"CC": failing_cc, "GRADC_CACHE_DIR": str(cache)})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "deliberate failure 4711" in r.stderr
    assert not out.exists() or os.listdir(out) == []
    assert entries(cache) == [] and hidden(cache) == []


# ---- (e) where the cache lives ----------------------------------------------------------
LOAD = ("import gradc, sys; m = gradc.load(sys.argv[1]); "
        "print(m.loss(m.init_params(), x=[[1.0, 2.0]], y=[0.5]))")


def test_gradc_cache_dir_is_honoured(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source())
    home, xdg, mine = tmp_path / "home", tmp_path / "xdg", tmp_path / "my cache"
    home.mkdir()
    r = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=120,
                       env=_env(GRADC_CACHE_DIR=mine, HOME=home, XDG_CACHE_HOME=xdg))
    assert r.returncode == 0, r.stderr
    assert len(entries(mine)) == 1 and hidden(mine) == []
    assert os.listdir(home) == [] and not xdg.exists(), "gradc wrote outside GRADC_CACHE_DIR"
    # a relative GRADC_CACHE_DIR is taken relative to the working folder
    work = tmp_path / "work"
    work.mkdir()
    r = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=120,
                       cwd=work, env=_env(GRADC_CACHE_DIR="rel", HOME=home, XDG_CACHE_HOME=xdg))
    assert r.returncode == 0, r.stderr
    assert len(entries(work / "rel")) == 1


def test_without_gradc_cache_dir_the_user_cache_folder_is_used(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source())
    env = _env(HOME=tmp_path / "home", XDG_CACHE_HOME=tmp_path / "xdg")
    env.pop("GRADC_CACHE_DIR")
    r = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert len(entries(tmp_path / "xdg" / "gradc")) == 1


# ---- the key covers the generator itself ------------------------------------------------
GENERATOR_EDIT = '''

# --- test edit: the generator now appends a comment to every NAME.c ---
_test_original_render = render


def render(prog, grad, dtype="float64"):
    src = _test_original_render(prog, grad, dtype)
    src.c += "/* generator edited */\\n"
    return src
'''

BUILD = ("import sys, gradc.api as a; e, m = a.build_model(a.load_model_file(sys.argv[1])); "
         "print(open(e + '/' + m['prefix'] + '.c').read().endswith('/* generator edited */\\n'))")


def test_editing_the_code_generator_invalidates_the_cache(cache, tmp_path):
    import shutil
    pkg = tmp_path / "pkg"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "gradc"), pkg / "gradc", ignore=skip)
    shutil.copytree(os.path.join(ROOT, "templates"), pkg / "gradc" / "templates", ignore=skip)
    path = tmp_path / "tiny.py"
    path.write_text(tiny_source())
    env = _env(PYTHONPATH=pkg, GRADC_CACHE_DIR=cache)
    r = subprocess.run([sys.executable, "-c", BUILD, str(path)], capture_output=True, text=True, env=env, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    with open(pkg / "gradc" / "codegen" / "c.py", "a") as f:
        f.write(GENERATOR_EDIT)
    r = subprocess.run([sys.executable, "-c", BUILD, str(path)], capture_output=True, text=True, env=env, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "True", "the artifact of the old generator was loaded after the generator changed"
