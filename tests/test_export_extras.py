"""What `gradc export` writes beside the C (issue 15 item 5, in part): a CMakeLists.txt that builds the
model as a static library, and with `--test-vectors N` a self-test of N stored inputs against the
outputs gradc computed for them, run by CTest and by a plain gcc build under the sanitizers."""
import os
import shutil
import subprocess

import numpy as np
import pytest

import gradc
from conftest import EXAMPLES

GCC, CMAKE = shutil.which("gcc"), shutil.which("cmake")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]


def _weights(tmp_path, example, dtype, seed, model=None):
    mod = gradc.load(os.path.join(EXAMPLES, example, "model.py"), dtype=dtype, model=model)
    p = mod.init_params(seed=seed)
    path = tmp_path / f"w{seed}_{dtype}.npz"
    np.savez(path, **{k: np.asarray(v) for k, v in p.items()})
    return str(path)


def _export(tmp_path, example, dtype, seed, n=6, name="out"):
    from gradc.api import export, load_model_file
    out = tmp_path / f"{name}_{example}_{dtype}_{seed}"
    export(load_model_file(os.path.join(EXAMPLES, example, "model.py")), str(out), dtype=dtype,
           weights=_weights(tmp_path, example, dtype, seed), test_vectors=n)
    return out


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
@pytest.mark.parametrize("example,dtype", [("moons", "float64"), ("digits", "float32"), ("recsys", "float64")])
def test_selftest_passes_under_sanitizers_and_catches_other_weights(tmp_path, example, dtype):
    d = _export(tmp_path, example, dtype, seed=1)
    M = example
    san = ["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g"]
    srcs = [d / f"{M}_selftest.c", d / f"{M}.c", d / f"{M}_weights.c"]
    p = subprocess.run([GCC, *STRICT, *san, *map(str, srcs), "-lm", "-o", str(d / "st")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = subprocess.run([str(d / "st")], capture_output=True, text=True)
    assert r.returncode == 0 and "6 samples match" in r.stdout, (r.stdout, r.stderr)
    # the same self-test linked with the weights of another training run: it says which sample differs
    other = _export(tmp_path, example, dtype, seed=2, name="other")
    srcs[2] = other / f"{M}_weights.c"
    p = subprocess.run([GCC, *STRICT, *map(str, srcs), "-lm", "-o", str(d / "st2")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = subprocess.run([str(d / "st2")], capture_output=True, text=True)
    assert r.returncode == 1 and "sample 1 differs" in r.stdout, r.stdout


@pytest.mark.skipif(CMAKE is None or GCC is None, reason="cmake is not installed")
def test_cmake_builds_the_library_and_ctest_runs_the_selftest(tmp_path):
    d = _export(tmp_path, "digits", "float32", seed=1, n=4)
    b = tmp_path / "build"
    for cmd in ([CMAKE, "-S", str(d), "-B", str(b), "-DCMAKE_C_FLAGS=" + " ".join(STRICT[1:])],
                [CMAKE, "--build", str(b)]):
        p = subprocess.run(cmd, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    assert (b / "libdigits.a").is_file()
    p = subprocess.run(["ctest", "--test-dir", str(b), "--output-on-failure"], capture_output=True, text=True)
    assert p.returncode == 0 and "100% tests passed" in p.stdout, p.stdout + p.stderr


def test_cmakelists_is_gradcs_and_test_vectors_need_weights(tmp_path, run_cli):
    from gradc.api import written_by_gradc
    model = os.path.join(EXAMPLES, "moons", "model.py")
    out = tmp_path / "e"
    r = run_cli("export", model, "-o", str(out))
    assert r.returncode == 0, r.stderr
    text = (out / "CMakeLists.txt").read_text()
    assert "add_library(moons STATIC moons.c)" in text and "selftest" not in text
    assert written_by_gradc(str(out / "CMakeLists.txt"))
    assert run_cli("export", model, "-o", str(out)).returncode == 0        # ours: replaced without --force
    (out / "CMakeLists.txt").write_text("project(mine)\n")
    r = run_cli("export", model, "-o", str(out))
    assert r.returncode == 2 and "CMakeLists.txt" in r.stderr
    r = run_cli("export", model, "-o", str(tmp_path / "f"), "--test-vectors", "3")
    assert r.returncode == 2 and "test vectors need the weights" in r.stderr


def test_lanes_are_fixed_in_the_source_and_checked(tmp_path, run_cli):
    """--lanes N writes GC_L N into NAME.c and NAME_LANES N into the header (no #ifndef to override);
    a count outside 1..64 is refused by name."""
    model = os.path.join(EXAMPLES, "moons", "model.py")
    r = run_cli("export", model, "-o", str(tmp_path / "one"), "--lanes", "1")
    assert r.returncode == 0, r.stderr
    c, h = (tmp_path / "one" / "moons.c").read_text(), (tmp_path / "one" / "moons.h").read_text()
    assert "#define GC_L 1\n" in c and "#define MOONS_LANES 1\n" in h and "#ifndef MOONS_LANES" not in h
    for bad in ("0", "65"):
        r = run_cli("export", model, "-o", str(tmp_path / "bad"), "--lanes", bad)
        assert r.returncode == 2 and "lanes must be a whole number from 1 to 64" in r.stderr, r.stderr
