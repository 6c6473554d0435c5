"""The build cache trusts no one (issue 17, items 2 and 3): its folder is private, a folder or
entry another user controls is never used, an entry is checked against the key asked for,
eviction is safe under any concurrency, a full disk and a compiler that never ends give a
``BuildError`` that says what happened.

Every test uses its own ``GRADC_CACHE_DIR`` and models with a random constant. Tests about
another user's files run as root only (they ``chown`` to uid 12345) and are skipped otherwise.
"""
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings

import pytest

import gradc
import gradc.build
from conftest import ROOT
from gradc.api import build_model, load_model_file
from gradc.build import _meta_digest, entry_ok, evict
from gradc.runtime import as_module

from cachekit import X, Y, entries, fallback_cache, hidden, tiny_loss, write_tiny

OTHER_UID = 12345
as_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                             reason="needs root to make files owned by another user")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("GRADC_CACHE_DIR", str(d))
    return d


# ==== item 1: the cache folder and its entries are this user's alone ==========================

def test_a_new_cache_folder_is_created_private_to_the_user(cache, tmp_path):
    path, c = write_tiny(tmp_path, "trust_private")
    mod = gradc.load(path)
    assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(c), rel=1e-12)
    assert oct(os.stat(cache).st_mode & 0o777) == oct(0o700)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775, 0o757], ids=oct)
def test_a_cache_folder_others_can_write_is_refused_with_a_warning_and_a_private_fallback(cache, tmp_path,
                                                                                          private_tmp, mode):
    cache.mkdir()
    os.chmod(cache, mode)
    path, c = write_tiny(tmp_path, "trust_shared")
    with pytest.warns(UserWarning, match=rf"gradc cache folder {re.escape(str(cache))} is writable by .*"
                                         rf"mode {oct(mode)}.*using {re.escape(str(private_tmp))}"):
        mod = gradc.load(path)
    assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(c), rel=1e-12)
    assert os.listdir(cache) == [], "gradc wrote into (and would load from) a folder others can write"
    assert len(entries(fallback_cache(private_tmp))) == 1


@as_root
def test_a_cache_folder_owned_by_another_user_is_refused_with_a_warning(cache, tmp_path, private_tmp):
    cache.mkdir(mode=0o755)
    os.chown(cache, OTHER_UID, OTHER_UID)
    path, c = write_tiny(tmp_path, "trust_foreign")
    with pytest.warns(UserWarning, match=rf"gradc cache folder {re.escape(str(cache))} is owned by another "
                                         rf"user \(uid {OTHER_UID}.*using {re.escape(str(private_tmp))}"):
        mod = gradc.load(path)
    assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(c), rel=1e-12)
    assert os.listdir(cache) == []


def _plant(entry, meta, so_bytes):
    """Replace the entry's library by ``so_bytes`` and make meta.json consistent with it again, as an
    attacker who can write the entry would: the hashes alone then no longer tell."""
    so = os.path.join(entry, meta["so"])
    os.chmod(entry, 0o700)
    os.remove(so)
    with open(so, "wb") as f:
        f.write(so_bytes)
    m = dict(meta)
    m["files"] = dict(m["files"], **{meta["so"]: gradc.build._sha256_file(so)})
    m["meta_sha256"] = _meta_digest(m)
    mj = os.path.join(entry, "meta.json")
    os.remove(mj)
    with open(mj, "w") as f:
        json.dump(m, f, indent=1, sort_keys=True)
    assert entry_ok(entry) is not None


@pytest.fixture(scope="module")
def evil_so(tmp_path_factory):
    """A library whose constructor writes the file named by $GRADC_TEST_PWNED when loaded."""
    d = tmp_path_factory.mktemp("evil")
    (d / "evil.c").write_text('#include <stdio.h>\n#include <stdlib.h>\n'
                              '__attribute__((constructor)) static void pwn(void) {\n'
                              '  const char *p = getenv("GRADC_TEST_PWNED"); FILE *f = p ? fopen(p, "w") : 0;\n'
                              '  if (f) { fputs("constructor ran", f); fclose(f); } }\n')
    cc, _ = gradc.build.compiler()
    subprocess.run([cc, "-shared", "-fPIC", str(d / "evil.c"), "-o", str(d / "evil.so")], check=True)
    return (d / "evil.so").read_bytes()


LOADER = r"""
import json, sys
import gradc
mod = gradc.load(sys.argv[1])
print(json.dumps(dict(loss=mod.loss(mod.init_params(), x=json.loads(sys.argv[2]), y=json.loads(sys.argv[3])))))
"""


def _load_in_fresh_process(path, pwned):
    env = dict(os.environ, GRADC_TEST_PWNED=str(pwned))
    r = subprocess.run([sys.executable, "-c", LOADER, path, json.dumps(X), json.dumps(Y)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=180)
    return r


def _owned_by_other(entry, meta):
    for fn in os.listdir(entry):
        os.chown(os.path.join(entry, fn), OTHER_UID, OTHER_UID)
    os.chown(entry, OTHER_UID, OTHER_UID)


def _so_owned_by_other(entry, meta):
    os.chown(os.path.join(entry, meta["so"]), OTHER_UID, OTHER_UID)


def _entry_world_writable(entry, meta):
    os.chmod(entry, 0o777)


def _so_group_writable(entry, meta):
    os.chmod(os.path.join(entry, meta["so"]), 0o664)


PLANTS = {"entry-owned-by-another-user": (_owned_by_other, True),
          "library-owned-by-another-user": (_so_owned_by_other, True),
          "entry-folder-writable-by-all": (_entry_world_writable, False),
          "library-writable-by-group": (_so_group_writable, False)}


@pytest.mark.parametrize("case", list(PLANTS))
def test_a_planted_entry_another_user_controls_is_never_loaded_and_is_rebuilt(cache, tmp_path, evil_so, case):
    how, needs_root = PLANTS[case]
    if needs_root and os.geteuid() != 0:
        pytest.skip("needs root to make files owned by another user")
    path, c = write_tiny(tmp_path, "trust_planted")
    entry, meta = build_model(load_model_file(path))
    _plant(entry, meta, evil_so)
    how(entry, meta)
    pwned = tmp_path / "pwned"
    r = _load_in_fresh_process(path, pwned)
    assert not pwned.exists(), "the planted library's constructor ran in the loading process"
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["loss"] == pytest.approx(tiny_loss(c), rel=1e-12)
    st = os.stat(entry)
    assert st.st_uid == os.geteuid() and not st.st_mode & 0o022, "the rebuilt entry is not private"


def test_entries_built_under_a_group_writable_umask_are_still_trusted(cache, tmp_path, count_differentiate):
    path, _ = write_tiny(tmp_path, "trust_umask")
    old = os.umask(0o002)
    try:
        entry, _ = build_model(load_model_file(path))
    finally:
        os.umask(old)
    for fn in os.listdir(entry):
        assert not os.stat(os.path.join(entry, fn)).st_mode & 0o022, fn
    build_model(load_model_file(path))
    assert len(count_differentiate) == 1, "an entry gradc wrote itself was not trusted on the next load"


# ==== item 2: the stored key is compared with the key asked for ================================

def test_an_entry_swapped_for_another_models_consistent_entry_is_rebuilt(cache, tmp_path, count_differentiate):
    a_path, ca = write_tiny(tmp_path, "trust_swap_a")
    b_path, cb = write_tiny(tmp_path, "trust_swap_b")
    ea, ma = build_model(load_model_file(a_path))
    eb, mb = build_model(load_model_file(b_path))
    assert entry_ok(eb) is not None and ma["key"] != mb["key"]
    shutil.rmtree(ea)
    shutil.copytree(eb, ea)                       # self-consistent: every hash matches
    assert entry_ok(ea) is not None
    assert entry_ok(ea, ma["key"]) is None, "entry_ok does not compare the stored key"
    e2, m2 = build_model(load_model_file(a_path))
    assert e2 == ea and m2["key"] == ma["key"], "another model's entry was served for this one"
    assert len(count_differentiate) == 3, "the swapped entry was not rebuilt"
    mod = as_module(e2, m2)
    assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(ca), rel=1e-12)
    assert entry_ok(ea, ma["key"]) is not None


# ==== item 3: eviction under any concurrency ==================================================

def _fake_entries(root, n, size=1000):
    os.makedirs(root, mode=0o700, exist_ok=True)
    out = []
    for k in range(n):
        d = os.path.join(root, f"fake{k:02d}-{'0' * 24}")
        os.mkdir(d, 0o700)
        with open(os.path.join(d, "blob.bin"), "wb") as f:
            f.write(b"\0" * size)
        t = time.time() - 1000 + k
        os.utime(d, (t, t))
        out.append(d)
    return out


def test_evict_tolerates_entries_and_keep_vanishing_while_it_runs(tmp_path, monkeypatch):
    root = str(tmp_path / "cache")
    fakes = _fake_entries(root, 6)
    keep = os.path.join(root, "gone-keep")          # the caller's entry, evicted by someone else already
    real_listdir = os.listdir

    def racing_listdir(p):
        names = real_listdir(p)
        if os.path.abspath(p) == os.path.abspath(root):
            return names + ["listed-but-gone"]
        if p in (fakes[1], fakes[3]):               # another process removes it between the stat and the discard
            shutil.rmtree(p)
        return names
    monkeypatch.setattr(os, "listdir", racing_listdir)
    evict(root, keep=keep, limit=1)
    monkeypatch.setattr(os, "listdir", real_listdir)
    assert entries(root) == [] and hidden(root) == []


@pytest.mark.skipif(sys.platform == "win32", reason="no flock here")
def test_evict_never_removes_an_entry_another_process_is_loading(tmp_path):
    import fcntl
    root = str(tmp_path / "cache")
    fakes = _fake_entries(root, 3)
    fd = os.open(fakes[0], os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)              # what a loader holds from its checks to its dlopen
        evict(root, limit=1)
        assert entries(root) == [os.path.basename(fakes[0])]
    finally:
        os.close(fd)
    evict(root, limit=1)
    assert entries(root) == []


def test_a_loader_survives_its_entry_being_evicted_right_after_build_returns(cache, tmp_path):
    path, c = write_tiny(tmp_path, "trust_evicted_after")
    entry, meta = build_model(load_model_file(path))
    shutil.rmtree(entry)                            # another process's eviction, before this one loads
    mod = as_module(entry, meta)
    assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(c), rel=1e-12)


def test_an_entry_evicted_between_its_check_and_its_load_is_rebuilt(cache, tmp_path, monkeypatch):
    path, c = write_tiny(tmp_path, "trust_evicted_during")
    build_model(load_model_file(path))
    gradc.build._loaded.clear()                     # as in a fresh process: the library is not in memory
    real, calls = gradc.build.entry_ok, []

    def check_then_vanish(entry):
        meta = real(entry)
        if not calls and meta is not None:
            calls.append(entry)
            shutil.rmtree(entry)                    # an evictor that does not wait for the lock
        return meta
    monkeypatch.setattr(gradc.build, "entry_ok", check_then_vanish)
    entry, meta = build_model(load_model_file(path))
    assert calls, "the check was never made"
    mod = as_module(entry, meta)
    assert mod.loss(mod.init_params(), x=X, y=Y) == pytest.approx(tiny_loss(c), rel=1e-12)
    assert os.path.isdir(entry) and entry_ok(entry, meta["key"]) is not None


WORKER = r"""
import json, os, sys, time
import gradc, gradc.api, gradc.model
path, barrier, total, me = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
open(os.path.join(barrier, me), "w").close()
deadline = time.time() + 120
while len(os.listdir(barrier)) < total and time.time() < deadline:
    time.sleep(0.002)
mod = gradc.load(path)
print(json.dumps(dict(loss=mod.loss(mod.init_params(), x=json.loads(sys.argv[5]), y=json.loads(sys.argv[6])))))
"""


def test_eight_concurrent_loads_with_max_bytes_1_over_a_full_cache_all_succeed(cache, tmp_path):
    _fake_entries(str(cache), 40, size=20_000)
    jobs = [write_tiny(tmp_path, f"trust_conc{k}") for k in range(8)]
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, GRADC_CACHE_MAX_BYTES="1")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, p, str(barrier), str(len(jobs)), str(k),
                               json.dumps(X), json.dumps(Y)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k, (p, _) in enumerate(jobs)]
    failures = []
    for (p, c), proc in zip(jobs, procs):
        so, se = proc.communicate(timeout=300)
        if proc.returncode != 0:
            failures.append(se[-2000:])
            continue
        assert json.loads(so.strip().splitlines()[-1])["loss"] == pytest.approx(tiny_loss(c), rel=1e-12)
    assert not failures, "\n----\n".join(failures)
    assert not any(n.startswith("fake") for n in entries(cache)), "nothing was evicted"
    assert not [n for n in hidden(cache) if n.startswith(".trash-")], "eviction left trash behind"


# ==== item 3: a full disk =======================================================================

def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["source", "meta"])
def test_a_full_disk_while_writing_the_cache_gives_a_build_error_naming_the_folder(cache, tmp_path, monkeypatch,
                                                                                   where):
    path, _ = write_tiny(tmp_path, f"trust_full_{where}")
    if where == "source":
        real_open = open

        def full_open(file, mode="r", *a, **k):
            if "w" in mode:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
            return real_open(file, mode, *a, **k)
        monkeypatch.setattr(gradc.build, "open", full_open, raising=False)
    else:
        monkeypatch.setattr(json, "dump", _enospc)
    with pytest.raises(gradc.BuildError) as ei:
        gradc.load(path)
    msg = str(ei.value)
    assert str(cache) in msg and "No space left on device" in msg and "ENOSPC" in msg, msg
    assert entries(cache) == [] and hidden(cache) == [], os.listdir(cache)


# ==== item 3/6: a compiler that never ends ======================================================

def test_a_compiler_that_never_ends_is_stopped_by_the_time_limit(cache, tmp_path, monkeypatch):
    cc = tmp_path / "bin" / "hangcc"
    cc.parent.mkdir()
    cc.write_text("#!/bin/sh\necho 'hangcc: thinking' >&2\nsleep 120\n")   # sleep: a child holding the pipes
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("GRADC_COMPILE_TIMEOUT", "1")
    path, _ = write_tiny(tmp_path, "trust_hang")
    t0 = time.monotonic()
    with pytest.raises(gradc.BuildError, match=r"did not finish .* time limit of 1 s .*GRADC_COMPILE_TIMEOUT") as ei:
        gradc.load(path)
    assert time.monotonic() - t0 < 30, "the compiler (or its child) was waited for past the limit"
    assert "hangcc: thinking" in str(ei.value)
    assert entries(cache) == [] and hidden(cache) == []


def test_run_stops_a_linker_past_the_time_limit(monkeypatch):
    monkeypatch.setenv("GRADC_COMPILE_TIMEOUT", "0.5")
    t0 = time.monotonic()
    with pytest.raises(gradc.BuildError, match=r"the linker did not finish on model 'm' within the time limit"):
        gradc.build._run(["sh", "-c", "sleep 60"], "the linker", "m")
    assert time.monotonic() - t0 < 20


@pytest.mark.parametrize("value, limit", [(None, 600.0), ("30", 30.0), ("0", None), ("junk", 600.0)])
def test_compile_timeout_comes_from_the_environment(monkeypatch, value, limit):
    if value is None:
        monkeypatch.delenv("GRADC_COMPILE_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("GRADC_COMPILE_TIMEOUT", value)
    assert gradc.build.compile_timeout() == limit


def test_warnings_module_is_quiet_on_a_good_cache(cache, tmp_path):
    path, _ = write_tiny(tmp_path, "trust_quiet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradc.load(path)
