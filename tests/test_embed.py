"""``gradc export``: self-contained C for other programs, held to what a user's C project needs.

Trained moons and digits models (examples/embed/prepare.py: a short training run, then
``gradc.api.export`` with the weights), in float64 and float32:

1. examples/embed/main.c, built with gcc (and clang when installed) at -O0 and -O3 under
   ``-std=c99 -Wall -Wextra -Werror -pedantic -Wdouble-promotion -Wfloat-conversion``, at -O1
   under AddressSanitizer + UBSan (also exported with ``--lanes 1``), and at -O2 with
   ``-fopenmp-simd -DGRADC_SIMD``, prints the same first outputs, SGD losses, final loss and
   final outputs as the Python module doing the same steps (1e-12 relative in float64, 1e-5 in
   float32);
2. ``NAME_adam_step`` over 20 steps equals ``gradc.optim.Adam`` (29 samples: a partial block of
   lanes; a workspace of exactly ``workspace_size`` bytes, aligned only for the real type);
3. ``NAME.h`` compiles in a C++17 translation unit (full and inference-only exports);
4. two threads calling ``NAME_loss_grad`` at once, each with its own workspace, give bitwise
   the sequential results (also under ThreadSanitizer when it works here);
5. ``--inference-only`` defines only forward and workspace_size and is small;
6. the header documents ABI version, sizes, footprint and an example call, and
   ``NAME_weights.c`` reads back exactly the weights it was exported from;
7. ``gradc export`` refuses weights of another model and missing files with one line, status 2;
8. ``make`` in a copy of examples/embed works end to end for moons.

Footprint measured by ``test_inference_only_object_is_small_and_footprint_is_reported``
(gcc 12, x86-64, the working tree of this writing; run with ``-s`` to print it afresh). Code =
``size`` text of the inference-only object; RAM = parameter bytes + workspace bytes
(``NAME_N_PARAMS * sizeof(real) + NAME_WORKSPACE_BYTES``), at the default 16 lanes and with
``gradc export --lanes 1`` (code at -Os); "full" = the training export (forward, loss, loss_grad,
sgd_step, adam_step), its RAM with the gradient buffer:

| model  | dtype   | code -Os | code -O2 |     RAM | 1 lane: code | 1 lane: RAM | full -Os | full -O2 | full RAM |
|--------|---------|---------:|---------:|--------:|-------------:|------------:|---------:|---------:|---------:|
| moons  | float64 |    950 B |   1413 B | 11528 B |        505 B |      3248 B |   5773 B |   8174 B |  23040 B |
| moons  | float32 |    887 B |   1257 B |  5764 B |        477 B |      1624 B |   5526 B |   7652 B |  11520 B |
| digits | float64 |    879 B |   1235 B | 38288 B |        547 B |     20468 B |   4831 B |   6910 B |  68960 B |
| digits | float32 |    877 B |   1133 B | 19176 B |        547 B |     10236 B |   4781 B |   6424 B |  34512 B |
"""
import concurrent.futures
import functools
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

import gradc
from conftest import EXAMPLES

GCC = shutil.which("gcc")
GXX = shutil.which("g++")
CLANG = shutil.which("clang")
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not installed")

EMBED = os.path.join(EXAMPLES, "embed")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-Wshadow", "-Wdouble-promotion", "-Wfloat-conversion"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]
SAN_ENV = dict(ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
RTOL = {"float64": 1e-12, "float32": 1e-5}
DTYPES = ("float64", "float32")
MODELS = ("moons", "digits")
COMBOS = [(m, d) for m in MODELS for d in DTYPES]
STEPS, LR = 20, "0.05"          # examples/embed/Makefile's defaults
ADAM = dict(steps=20, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, n=29)     # 29 samples: not whole blocks

SIZES = {}                      # (model, dtype) -> footprint numbers, filled by the size test


# ---- helpers ------------------------------------------------------------------------

def _run(cmd, cwd=None, env=None, timeout=120):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _build(cmd, cwd, what):
    p = _run(cmd, cwd=cwd)
    assert p.returncode == 0, f"{what}: {' '.join(map(str, cmd))}\n{p.stderr[-4000:]}"


def _run_sanitized(cmd, cwd, what):
    p = _run(cmd, cwd=cwd, env=dict(os.environ, **SAN_ENV))
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, f"{what}:\n{p.stderr[-4000:]}"
    assert p.returncode == 0, f"{what} exited {p.returncode}:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p.stdout


def _assert_close(c, py, rtol, what):
    """max |c - py| relative to max |py|: as tests/test_c_strict.py compares C with Python."""
    c, py = np.asarray(c, dtype=np.float64).ravel(), np.asarray(py, dtype=np.float64).ravel()
    assert c.shape == py.shape, f"{what}: C gives {c.size} numbers, Python {py.size}"
    assert np.all(np.isfinite(c)) and np.all(np.isfinite(py)), f"{what}: not finite"
    scale = max(float(np.max(np.abs(py))), np.finfo(np.float64).tiny)
    err = float(np.max(np.abs(c - py))) / scale
    assert err <= rtol, f"{what}: C and Python differ by {err:.3g} (relative to max |value| {scale:.3g}) > {rtol}"


def _macros(header):
    """``#define NAME value`` lines of a header: name -> value text (comments stripped)."""
    out = {}
    for m in re.finditer(r"^#define\s+(\w+)(?:[ \t]+([^\n]*?))?[ \t]*(?:/\*.*?\*/)?[ \t]*$", header, re.M):
        out[m.group(1)] = (m.group(2) or "").strip()
    return out


PROBE = r"""
#include <stdio.h>
#include "@M@.h"
int main(void)
{
@LINES@
    printf("sizeof_real %d\n", (int)sizeof(@M@_real));
    printf("workspace_size_1 %lld\n", (long long)@M@_workspace_size(1));
    printf("workspace_size_1000 %lld\n", (long long)@M@_workspace_size(1000));
    return 0;
}
"""


def _probe(d, M, tmp_path, defines=()):
    """The header's integer macros as the C compiler evaluates them (they may be expressions,
    e.g. of NAME_LANES), and what NAME_workspace_size returns."""
    with open(os.path.join(d, M + ".h")) as f:
        names = [k for k, v in _macros(f.read()).items()
                 if k.startswith(M.upper() + "_") and v and not v.startswith('"')]     # not the hash
    lines = "\n".join(f'    printf("{k} %lld\\n", (long long)({k}));' for k in names)
    tag = "probe" + "".join(x.replace("=", "_").replace("-D", "_") for x in defines)
    (tmp_path / f"{tag}.c").write_text(PROBE.replace("@LINES@", lines).replace("@M@", M))
    _build([GCC, *STRICT, "-O0", *defines, f"-I{d}", f"{tag}.c", os.path.join(d, M + ".c"), "-lm", "-o", tag],
           tmp_path, "building the macro probe")
    p = _run([str(tmp_path / tag)], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    return {line.split()[0]: int(line.split()[1]) for line in p.stdout.splitlines()}


def _text_size(obj):
    p = _run(["size", str(obj)])
    assert p.returncode == 0, p.stderr
    return int(p.stdout.strip().splitlines()[-1].split()[0])


class Prepared:
    """One run of examples/embed/prepare.py: the export folder, its weights and samples, the module."""

    def __init__(self, model, dtype, outdir):
        self.model, self.dtype, self.dir = model, dtype, str(outdir)
        self.model_file = os.path.join(EXAMPLES, model, "model.py")
        self.M = next(f[:-len("_weights.c")] for f in os.listdir(self.dir) if f.endswith("_weights.c"))
        self.MU = self.M.upper()
        self.mod = gradc.load(self.model_file, dtype=dtype)
        self.real = np.dtype(dtype)
        with np.load(os.path.join(self.dir, "weights.npz")) as z:
            self.npz = {k: z[k] for k in z.files}
        self.x_name, = self.mod.input_shapes
        self.y_name, = self.mod.target_shapes
        self.out_name, = self.mod.output_shapes
        self.x, self.y = self._samples()
        # the documented layout: parameters in declaration order, each row-major
        self.layout, off = [], 0
        for k, shape in self.mod.param_shapes.items():
            size = int(np.prod(shape, dtype=np.int64))
            self.layout.append(dict(name=k, shape=list(shape), size=size, offset=off))
            off += size
        self.n_params = off

    def path(self, suffix):
        return os.path.join(self.dir, self.M + suffix)

    def _samples(self):
        with open(os.path.join(self.dir, "samples.bin"), "rb") as f:
            raw = f.read()
        assert raw[:4] == b"GRDC"
        size, n = struct.unpack("<ii", raw[4:12])
        assert size == self.real.itemsize
        xs = self.mod.input_shapes[self.x_name]
        ys = self.mod.target_shapes[self.y_name]
        nx = n * int(np.prod(xs, dtype=np.int64))
        x = np.frombuffer(raw, dtype=self.real.newbyteorder("<"), count=nx, offset=12)
        int_target = np.dtype(self.mod.target_dtypes[self.y_name]).kind == "i"
        ydt = np.dtype("<i4") if int_target else self.real.newbyteorder("<")
        y = np.frombuffer(raw, dtype=ydt, offset=12 + nx * self.real.itemsize)
        assert y.size == n * int(np.prod(ys, dtype=np.int64))
        return (x.astype(self.real).reshape((n, *xs)),
                y.astype(np.int32 if ydt.kind == "i" else self.real).reshape((n, *ys)))

    def params(self):
        """Fresh copies of the exported weights, in the module's dtype."""
        return {k: np.array(self.npz[k], dtype=self.real) for k in self.mod.param_shapes}

    def data(self, lo=None, hi=None):
        return {self.x_name: self.x[lo:hi], self.y_name: self.y[lo:hi]}

    @functools.cached_property
    def reference(self):
        """What main.c computes, done by the Python module: outputs, STEPS SGD steps, loss, outputs."""
        mod, p, lr = self.mod, self.params(), float(LR)
        first = mod.forward(p, **{self.x_name: self.x})[self.out_name]
        losses = []
        for _ in range(STEPS):
            L, g = mod.loss_and_grad(p, **self.data())
            losses.append(L)
            for k in p:
                p[k] -= lr * g[k]
        final = mod.loss(p, **self.data())
        last = mod.forward(p, **{self.x_name: self.x})[self.out_name]
        return dict(first=first, losses=np.array(losses), final=final, last=last)


def _load_prepare():
    spec = importlib.util.spec_from_file_location("gradc_embed_prepare", os.path.join(EMBED, "prepare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(model, dtype) -> Prepared: prepare.py run once per module into a temporary folder."""
    cache = {}

    def get(model, dtype):
        if model == "digits":
            pytest.importorskip("sklearn")
        if (model, dtype) not in cache:
            out = tmp_path_factory.mktemp(f"embed-{model}-{dtype}")
            prep = _load_prepare()
            # prepare.py puts examples/MODEL on sys.path and imports its train.py as "train"
            saved_path, saved_train = list(sys.path), sys.modules.pop("train", None)
            try:
                prep.main([model, "--dtype", dtype, "-o", str(out)])
            finally:
                sys.path[:] = saved_path
                sys.modules.pop("train", None)
                if saved_train is not None:
                    sys.modules["train"] = saved_train
            cache[model, dtype] = Prepared(model, dtype, out)
        return cache[model, dtype]
    return get


@pytest.fixture(scope="module")
def inference_export(prepared, tmp_path_factory):
    """(model, dtype, lanes=16) -> folder of ``gradc export --inference-only --weights --lanes N``
    (through the CLI's main)."""
    from gradc.cli import main as cli_main
    cache = {}

    def get(model, dtype, lanes=16):
        if (model, dtype, lanes) not in cache:
            P = prepared(model, dtype)
            out = tmp_path_factory.mktemp(f"inference-{model}-{dtype}-{lanes}")
            rc = cli_main(["export", P.model_file, "--weights", os.path.join(P.dir, "weights.npz"),
                           "--dtype", dtype, "--inference-only", "--lanes", str(lanes), "-o", str(out)])
            assert rc == 0
            cache[model, dtype, lanes] = str(out)
        return cache[model, dtype, lanes]
    return get


@pytest.fixture(scope="module")
def lanes1_export(prepared, tmp_path_factory):
    """(model, dtype) -> folder of the training export with ``--lanes 1`` and the trained weights."""
    from gradc.api import export, load_model_file
    cache = {}

    def get(model, dtype):
        if (model, dtype) not in cache:
            P = prepared(model, dtype)
            out = tmp_path_factory.mktemp(f"lanes1-{model}-{dtype}")
            export(load_model_file(P.model_file), str(out), os.path.join(P.dir, "weights.npz"), dtype, lanes=1)
            cache[model, dtype] = str(out)
        return cache[model, dtype]
    return get


def _parse_main(stdout, n):
    """main.c's output: (first outputs, step losses, final loss, last outputs)."""
    lines = stdout.splitlines()
    outs, steps, final = [[], []], [], None
    for line in lines:
        if line.startswith("output "):
            head, vals = line.split(":", 1)
            outs[0 if not steps and final is None else 1].append(
                (int(head.split()[1]), [float(v) for v in vals.split()]))
        elif line.startswith("step "):
            _, k, word, v = line.split()
            assert word == "loss" and int(k) == len(steps), line
            steps.append(float(v))
        elif line.startswith("final loss "):
            final = float(line.split()[2])
        else:
            raise AssertionError(f"unexpected line from main: {line!r}")
    for block in outs:
        assert [s for s, _ in block] == list(range(n)), f"output lines are not samples 0..{n - 1}"
    return (np.array([v for _, v in outs[0]]), np.array(steps), final, np.array([v for _, v in outs[1]]))


# ---- 1. examples/embed/main.c against the Python module ---------------------------------

# The sanitizer build at -O1: at -O3, ASan makes gcc take 15 s over moons.c. Also the two builds
# the generated source offers: --lanes 1 (least memory) and -fopenmp-simd -DGRADC_SIMD (gradc's own).
VARIANTS = [pytest.param("gcc", "-O0", False, id="gcc-O0"),
            pytest.param("gcc", "-O3", False, id="gcc-O3"),
            pytest.param("gcc", "-O1", True, id="gcc-O1-asan-ubsan"),
            pytest.param("gcc", "-O1 LANES=1", True, id="gcc-O1-asan-ubsan-lanes1"),
            pytest.param("gcc", "-O2 SIMD", False, id="gcc-O2-openmp-simd"),
            pytest.param("clang", "-O0", False, id="clang-O0"),
            pytest.param("clang", "-O3", False, id="clang-O3"),
            pytest.param("clang", "-O1", True, id="clang-O1-asan-ubsan")]


@pytest.mark.parametrize("model,dtype", COMBOS)
@pytest.mark.parametrize("cc,opt,sanitize", VARIANTS)
def test_embed_main_with_trained_weights_matches_python_module_sgd(prepared, lanes1_export, tmp_path, model, dtype,
                                                                   cc, opt, sanitize):
    compiler = {"gcc": GCC, "clang": CLANG}[cc]
    if compiler is None:
        pytest.skip(f"{cc} is not installed")
    P = prepared(model, dtype)
    opt, *extra = opt.split()
    with open(P.path(".c")) as f:
        source = f.read()
    d = P.dir
    if extra == ["LANES=1"]:        # gradc export --lanes 1: the same numbers from blocks of one sample
        d, extra = lanes1_export(model, dtype), []
    elif extra == ["SIMD"]:
        if "GRADC_SIMD" not in source:
            pytest.skip(f"{P.M}.c has no GRADC_SIMD build")
        extra = ["-fopenmp-simd", "-DGRADC_SIMD"]
    exe = tmp_path / "main"
    _build([compiler, *STRICT, opt, *extra, *(SANITIZE if sanitize else []), f"-I{d}",
            f'-DGRADC_HEADER="{P.M}.h"', os.path.join(EMBED, "main.c"), os.path.join(d, P.M + ".c"),
            os.path.join(d, P.M + "_weights.c"),
            "-lm", "-o", str(exe)], tmp_path, f"building main.c for {model} {dtype} with {cc} {opt}")
    stdout = _run_sanitized([str(exe), os.path.join(P.dir, "samples.bin"), str(STEPS), LR], tmp_path,
                            f"main ({cc} {opt}{' sanitized' if sanitize else ''})")
    first, losses, final, last = _parse_main(stdout, len(P.x))
    ref, rtol = P.reference, RTOL[dtype]
    assert len(losses) == STEPS and final is not None
    _assert_close(first, ref["first"].reshape(first.shape), rtol, "outputs with the trained weights")
    _assert_close(losses, ref["losses"], rtol, "SGD step losses")
    for k in range(STEPS):
        _assert_close([losses[k]], [ref["losses"][k]], rtol, f"loss at step {k}")
    _assert_close([final], [ref["final"]], rtol, "final loss")
    _assert_close(last, ref["last"].reshape(last.shape), rtol, "outputs after on-device training")
    assert final < ref["losses"][0], "on-device training did not lower the loss"


# ---- 2. NAME_adam_step against gradc.optim.Adam ---------------------------------------------

ADAM_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define GRADC_GENERIC
#include "@M@.h"

int main(int argc, char **argv)
{
    if (argc != 8) return 2;
    const int steps = atoi(argv[2]), use = atoi(argv[7]);
    const @M@_real lr = (@M@_real)atof(argv[3]), beta1 = (@M@_real)atof(argv[4]);
    const @M@_real beta2 = (@M@_real)atof(argv[5]), eps = (@M@_real)atof(argv[6]);
    FILE *f = fopen(argv[1], "rb");
    char magic[4];
    int32_t real_size = 0, n = 0;
    if (!f || fread(magic, 1, 4, f) != 4 || fread(&real_size, 4, 1, f) != 1 || fread(&n, 4, 1, f) != 1
        || real_size != (int32_t)sizeof(@M@_real) || n < 1) return 3;
    @M@_real *x = malloc(sizeof(@M@_real) * (size_t)n * GRADC_INPUT_SIZE);
    gradc_target *y = malloc(sizeof(gradc_target) * (size_t)n * GRADC_TARGET_SIZE);
    if (!x || !y || fread(x, sizeof(@M@_real), (size_t)n * GRADC_INPUT_SIZE, f) != (size_t)n * GRADC_INPUT_SIZE
        || fread(y, sizeof(gradc_target), (size_t)n * GRADC_TARGET_SIZE, f) != (size_t)n * GRADC_TARGET_SIZE)
        return 4;
    fclose(f);
    if (use < 1 || use > n) return 6;
    n = use;                                    /* the first samples only: a partial block of lanes */
    @M@_real *params = malloc(sizeof(@M@_real) * @MU@_N_PARAMS);
    @M@_real *grad = malloc(sizeof(@M@_real) * @MU@_N_PARAMS);
    @M@_real *m = calloc(@MU@_N_PARAMS, sizeof(@M@_real));
    @M@_real *v = calloc(@MU@_N_PARAMS, sizeof(@M@_real));
    /* exactly workspace_size(n) bytes (ASan sees any overrun), aligned only for @M@_real as the header
       allows (a static array of @M@_real): not at malloc's 16 bytes */
    char *block = malloc(@M@_workspace_size(n) + sizeof(@M@_real));
    if (!params || !grad || !m || !v || !block) return 5;
    void *work = block + sizeof(@M@_real);
    memcpy(params, @M@_weights, sizeof(@M@_real) * @MU@_N_PARAMS);
    int32_t step = 0;
    @M@_real beta_pow[2] = {1, 1};
    for (int k = 0; k < steps; ++k) {
        @M@_real loss = 0;
        const int rc = @M@_adam_step(n, params, x, y, lr, beta1, beta2, eps, &step, beta_pow, m, v, &loss, grad, work,
                                     @M@_workspace_size(n));
        if (rc != @MU@_OK) return 10 + rc;
        printf("step %d loss %.17g\n", k, (double)loss);
    }
    printf("t %d\n", (int)step);
    printf("params");
    for (int j = 0; j < @MU@_N_PARAMS; ++j) printf(" %.17g", (double)params[j]);
    printf("\n");
    free(x); free(y); free(params); free(grad); free(m); free(v); free(block);
    return 0;
}
"""


@pytest.mark.parametrize("model,dtype", COMBOS)
def test_c_adam_step_matches_gradc_optim_adam_over_20_steps(prepared, tmp_path, model, dtype):
    from gradc.optim import Adam
    P = prepared(model, dtype)
    (tmp_path / "adam.c").write_text(ADAM_DRIVER.replace("@MU@", P.MU).replace("@M@", P.M))
    # sanitized: a wrong index into m, v or params is caught here too
    _build([GCC, *STRICT, "-O1", *SANITIZE, f"-I{P.dir}", "adam.c", P.path(".c"), P.path("_weights.c"),
            "-lm", "-o", "adam"], tmp_path, "building the Adam driver")
    a = ADAM
    stdout = _run_sanitized([str(tmp_path / "adam"), os.path.join(P.dir, "samples.bin"), str(a["steps"]),
                             repr(a["lr"]), repr(a["beta1"]), repr(a["beta2"]), repr(a["eps"]), str(a["n"])],
                            tmp_path, "Adam driver")
    lines = stdout.splitlines()
    c_losses = np.array([float(line.split()[3]) for line in lines if line.startswith("step ")])
    assert f"t {a['steps']}" in lines, "the step counter does not count the steps"
    c_params = np.array([float(v) for v in lines[-1].split()[1:]])

    p = P.params()
    opt = Adam(p, lr=a["lr"], betas=(a["beta1"], a["beta2"]), eps=a["eps"], weight_decay=0.0)
    losses = []
    for _ in range(a["steps"]):
        L, g = P.mod.loss_and_grad(p, **P.data(0, a["n"]))
        losses.append(L)
        opt.step(g)
    rtol = RTOL[dtype]
    _assert_close(c_losses, losses, rtol, "Adam step losses")
    assert losses[-1] < losses[0]
    flat = np.concatenate([p[k].ravel() for k in P.mod.param_shapes])
    _assert_close(c_params, flat, rtol, "parameters after 20 Adam steps")
    # per parameter too, so that a wrong offset in one small tensor is not hidden by a large one
    off = 0
    for k, shape in P.mod.param_shapes.items():
        size = int(np.prod(shape, dtype=np.int64))
        _assert_close(c_params[off:off + size], p[k], rtol, f"parameter {k} after 20 Adam steps")
        off += size
    # and Adam moved them: the comparison is not of the initial weights with themselves
    start = np.concatenate([np.asarray(P.npz[k], dtype=np.float64).ravel() for k in P.mod.param_shapes])
    assert np.max(np.abs(flat - start)) > 10 * a["lr"] * 0.5


# ---- 3. the header in C++17 -------------------------------------------------------------

CXX_MAIN = r"""
#include <cstdio>
#include <vector>
#define GRADC_GENERIC
#include "@M@.h"

static_assert(@MU@_ABI_VERSION >= 1, "ABI version");
static_assert(@MU@_WORKSPACE_BYTES >= @MU@_WORKSPACE_REALS * sizeof(@M@_real), "workspace bytes");

int main()
{
    const int n = 4;
    std::vector<@M@_real> x(n * GRADC_INPUT_SIZE), out(n * GRADC_OUTPUT_SIZE);
    for (std::size_t j = 0; j < x.size(); ++j) x[j] = static_cast<@M@_real>(static_cast<int>(j % 7) - 3) / 8;
    if (@M@_workspace_size(n) > @MU@_WORKSPACE_BYTES) return 9;
    std::vector<unsigned char> work(@M@_workspace_size(n));
    int rc = @M@_forward(n, @M@_weights, x.data(), out.data(), work.data(), work.size());
    if (rc != @MU@_OK) return 10 + rc;
    std::printf("out");
    for (@M@_real v : out) std::printf(" %.17g", static_cast<double>(v));
    std::printf("\n");
#if @TRAIN@
    std::vector<gradc_target> y(n * GRADC_TARGET_SIZE);
    for (std::size_t j = 0; j < y.size(); ++j)
        y[j] = static_cast<gradc_target>(GRADC_TARGET_IS_INT ? static_cast<int>(j % 10) : (j % 2 ? 1 : -1));
    std::vector<@M@_real> grad(@MU@_N_PARAMS);
    @M@_real loss = 0;
    rc = gradc_loss_grad(n, @M@_weights, x.data(), y.data(), &loss, grad.data(), work.data(), work.size());
    if (rc != @MU@_OK) return 20 + rc;
    std::printf("loss %.17g\n", static_cast<double>(loss));
#endif
    return 0;
}
"""


@pytest.mark.skipif(GXX is None, reason="g++ is not installed")
@pytest.mark.parametrize("model,dtype,kind", [("moons", "float64", "full"), ("digits", "float32", "full"),
                                              ("moons", "float32", "inference-only"),
                                              ("digits", "float64", "inference-only")])
def test_header_compiles_in_cxx17_and_links_against_c_object(prepared, inference_export, tmp_path, model, dtype,
                                                             kind):
    P = prepared(model, dtype)
    d = P.dir if kind == "full" else inference_export(model, dtype)
    train = kind == "full"
    (tmp_path / "main.cpp").write_text(CXX_MAIN.replace("@MU@", P.MU).replace("@M@", P.M)
                                       .replace("@TRAIN@", "1" if train else "0"))
    _build([GCC, *STRICT, "-O2", "-c", os.path.join(d, P.M + ".c"), "-o", "model.o"], tmp_path, "NAME.c as C")
    _build([GCC, *STRICT, "-O2", "-c", os.path.join(d, P.M + "_weights.c"), "-o", "weights.o"], tmp_path,
           "NAME_weights.c as C")
    _build([GXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{d}", "main.cpp", "model.o",
            "weights.o", "-lm", "-o", "main"], tmp_path, f"{P.M}.h in a C++17 translation unit")
    p = _run([str(tmp_path / "main")], cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    r = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in p.stdout.splitlines()}
    n = 4
    x = (np.arange(n * P.x.shape[1]) % 7 - 3).astype(P.real).reshape(n, -1) / P.real.type(8)
    py = P.mod.forward(P.params(), **{P.x_name: x})[P.out_name]
    _assert_close(r["out"], py, RTOL[dtype], "forward from C++")
    if train:
        j = np.arange(n * int(np.prod(P.mod.target_shapes[P.y_name], dtype=np.int64)))
        y = (j % 10).astype(np.int32) if P.y.dtype == np.int32 else np.where(j % 2, 1, -1).astype(P.real)
        L = P.mod.loss(P.params(), **{P.x_name: x, P.y_name: y.reshape((n, *P.mod.target_shapes[P.y_name]))})
        _assert_close(r["loss"], [L], RTOL[dtype], "loss_grad from C++")


# ---- 4. two threads at once -------------------------------------------------------------

THREADS_DRIVER = r"""
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define GRADC_GENERIC
#include "@M@.h"
#define ITERS 200
#define SPLIT 13

typedef struct {
    int n;
    const gradc_real *x;
    const gradc_target *y;
    gradc_real loss_ref;
    gradc_real grad_ref[GRADC_N_PARAMS];
    int mismatches, rc;
} job_t;

static pthread_barrier_t start;

static void *run(void *arg)
{
    job_t *job = arg;
    const size_t work_bytes = gradc_workspace_size(job->n);
    void *work = malloc(work_bytes);       /* its own workspace */
    gradc_real *grad = malloc(sizeof(gradc_real) * GRADC_N_PARAMS);
    if (!work || !grad) { job->rc = 99; return NULL; }
    pthread_barrier_wait(&start);
    for (int it = 0; it < ITERS; ++it) {
        gradc_real loss = 0;
        const int rc = gradc_loss_grad(job->n, gradc_weights, job->x, job->y, &loss, grad, work, work_bytes);
        if (rc) job->rc = rc;
        if (memcmp(&loss, &job->loss_ref, sizeof loss) != 0
            || memcmp(grad, job->grad_ref, sizeof(gradc_real) * GRADC_N_PARAMS) != 0)
            job->mismatches++;
    }
    free(work);
    free(grad);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) return 2;
    FILE *f = fopen(argv[1], "rb");
    char magic[4];
    int32_t real_size = 0, n = 0;
    if (!f || fread(magic, 1, 4, f) != 4 || fread(&real_size, 4, 1, f) != 1 || fread(&n, 4, 1, f) != 1
        || real_size != (int32_t)sizeof(gradc_real) || n <= SPLIT) return 3;
    gradc_real *x = malloc(sizeof(gradc_real) * (size_t)n * GRADC_INPUT_SIZE);
    gradc_target *y = malloc(sizeof(gradc_target) * (size_t)n * GRADC_TARGET_SIZE);
    if (!x || !y || fread(x, sizeof(gradc_real), (size_t)n * GRADC_INPUT_SIZE, f) != (size_t)n * GRADC_INPUT_SIZE
        || fread(y, sizeof(gradc_target), (size_t)n * GRADC_TARGET_SIZE, f) != (size_t)n * GRADC_TARGET_SIZE)
        return 4;
    fclose(f);
    /* two different batches (the first SPLIT samples, the rest: partial blocks of lanes), their results
       computed sequentially first */
    static job_t jobs[2];
    jobs[0].n = SPLIT; jobs[0].x = x; jobs[0].y = y;
    jobs[1].n = n - SPLIT; jobs[1].x = x + (size_t)SPLIT * GRADC_INPUT_SIZE;
    jobs[1].y = y + (size_t)SPLIT * GRADC_TARGET_SIZE;
    const size_t work_bytes = gradc_workspace_size(n);
    void *work = malloc(work_bytes);
    if (!work) return 5;
    for (int t = 0; t < 2; ++t) {
        const int rc = gradc_loss_grad(jobs[t].n, gradc_weights, jobs[t].x, jobs[t].y, &jobs[t].loss_ref,
                                       jobs[t].grad_ref, work, work_bytes);
        if (rc) return 10 + rc;
    }
    if (memcmp(&jobs[0].loss_ref, &jobs[1].loss_ref, sizeof(gradc_real)) == 0) return 6;   /* distinct batches */
    pthread_t th[2];
    pthread_barrier_init(&start, NULL, 2);
    for (int t = 0; t < 2; ++t)
        if (pthread_create(&th[t], NULL, run, &jobs[t])) return 7;
    for (int t = 0; t < 2; ++t) pthread_join(th[t], NULL);
    pthread_barrier_destroy(&start);
    printf("rc %d %d\n", jobs[0].rc, jobs[1].rc);
    printf("mismatches %d %d\n", jobs[0].mismatches, jobs[1].mismatches);
    printf("loss %.17g %.17g\n", (double)jobs[0].loss_ref, (double)jobs[1].loss_ref);
    free(work); free(x); free(y);
    return 0;
}
"""


@functools.lru_cache(maxsize=None)
def _tsan_works():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "t.c"), "w") as f:
            f.write("#include <pthread.h>\nstatic void *g(void *a) { return a; }\n"
                    "int main(void) { pthread_t t; if (pthread_create(&t, 0, g, 0)) return 1;"
                    " pthread_join(t, 0); return 0; }\n")
        p = _run([GCC, "-fsanitize=thread", "-pthread", "-O1", "t.c", "-o", "t"], cwd=d)
        return p.returncode == 0 and _run([os.path.join(d, "t")], cwd=d).returncode == 0


@pytest.mark.parametrize("model,dtype", [("moons", "float64"), ("digits", "float32")])
@pytest.mark.parametrize("tsan", [False, True], ids=["pthread-O2", "tsan"])
def test_two_threads_calling_loss_grad_at_once_match_sequential_calls_bitwise(prepared, tmp_path, model, dtype,
                                                                           tsan):
    if tsan and not _tsan_works():
        pytest.skip("-fsanitize=thread does not build or run here")
    P = prepared(model, dtype)
    (tmp_path / "threads.c").write_text(THREADS_DRIVER.replace("@MU@", P.MU).replace("@M@", P.M))
    flags = ["-O1", "-g", "-fsanitize=thread"] if tsan else ["-O2"]
    _build([GCC, *STRICT, *flags, "-pthread", f"-I{P.dir}", "threads.c", P.path(".c"), P.path("_weights.c"),
            "-lm", "-o", "threads"], tmp_path, "building the threads driver")
    p = _run([str(tmp_path / "threads"), os.path.join(P.dir, "samples.bin")], cwd=tmp_path,
             env=dict(os.environ, TSAN_OPTIONS="halt_on_error=1"))
    assert "ThreadSanitizer" not in p.stderr, p.stderr[-4000:]
    assert p.returncode == 0, f"threads driver exited {p.returncode}:\n{p.stdout}\n{p.stderr[-4000:]}"
    r = {line.split()[0]: line.split()[1:] for line in p.stdout.splitlines()}
    assert r["rc"] == ["0", "0"]
    assert r["mismatches"] == ["0", "0"], "a call run alongside another thread differs from the sequential one"
    for t, (lo, hi) in enumerate([(0, 13), (13, None)]):
        _assert_close([float(r["loss"][t])], [P.mod.loss(P.params(), **P.data(lo, hi))], RTOL[dtype],
                      f"thread {t}'s reference loss")


# ---- 5. --inference-only ----------------------------------------------------------------

TRAINING_FUNCS = ("loss", "loss_grad", "sgd_step", "adam_step")


@pytest.mark.parametrize("model,dtype", COMBOS)
def test_inference_only_export_defines_only_forward_and_workspace_size(prepared, inference_export, tmp_path,
                                                                       model, dtype):
    """... and the identity and model-info records' functions, which every export has."""
    P = prepared(model, dtype)
    d = inference_export(model, dtype)
    assert sorted(os.listdir(d)) == sorted([P.M + ".h", P.M + ".c", P.M + "_weights.c", "CMakeLists.txt"])
    _build([GCC, *STRICT, "-O2", "-c", os.path.join(d, P.M + ".c"), "-o", "m.o"], tmp_path, "strict -O2")
    p = _run(["nm", "m.o"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    defined = sorted(line.split()[-1] for line in p.stdout.splitlines()
                     if len(line.split()) == 3 and line.split()[1] in "TDRB")
    assert defined == sorted([f"{P.M}_forward", f"{P.M}_workspace_size", f"{P.M}_identity", f"{P.M}_info"]), p.stdout
    for fn in TRAINING_FUNCS:
        assert not re.search(rf"\b{P.M}_{fn}\b", p.stdout), f"nm shows {P.M}_{fn}:\n{p.stdout}"
        with open(os.path.join(d, P.M + ".h")) as f:
            assert not re.search(rf"\b{P.M}_{fn}\s*\(", f.read()), f"the inference-only header declares {fn}"
    # the inference-only workspace is no larger than the training one
    (tmp_path / "full").mkdir()
    inf, full = _probe(d, P.M, tmp_path), _probe(P.dir, P.M, tmp_path / "full")
    assert inf[f"{P.MU}_WORKSPACE_BYTES"] <= full[f"{P.MU}_WORKSPACE_BYTES"]
    assert inf[f"{P.MU}_N_PARAMS"] == full[f"{P.MU}_N_PARAMS"] == P.n_params


def test_inference_only_object_is_small_and_footprint_is_reported(prepared, inference_export, tmp_path):
    jobs = []
    for model, dtype in COMBOS:
        P = prepared(model, dtype)
        d = inference_export(model, dtype)
        for kind, src in (("inf", os.path.join(d, P.M + ".c")), ("full", P.path(".c"))):
            for opt in ("-Os", "-O2"):
                obj = tmp_path / f"{model}-{dtype}-{kind}{opt}.o"
                jobs.append(((model, dtype, kind, opt), [GCC, *STRICT, opt, "-c", src, "-o", str(obj)], obj))
        # the least-memory build: gradc export --inference-only --lanes 1
        obj = tmp_path / f"{model}-{dtype}-inf1-Os.o"
        jobs.append(((model, dtype, "inf1", "-Os"), [GCC, *STRICT, "-Os", "-c",
                                                     os.path.join(inference_export(model, dtype, 1), P.M + ".c"),
                                                     "-o", str(obj)], obj))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        results = list(ex.map(lambda j: _run(j[1], cwd=tmp_path), jobs))
    for (key, cmd, _), p in zip(jobs, results):
        assert p.returncode == 0, f"{key}: {' '.join(cmd)}\n{p.stderr}"
    text = {key: _text_size(obj) for key, _, obj in jobs}
    rows = []
    for model, dtype in COMBOS:
        P = prepared(model, dtype)
        MU = P.MU
        sub = tmp_path / f"probe-{model}-{dtype}"
        (sub / "full").mkdir(parents=True)
        inf = _probe(inference_export(model, dtype), P.M, sub)
        full = _probe(P.dir, P.M, sub / "full")
        params = inf[f"{MU}_N_PARAMS"] * inf["sizeof_real"]
        # RAM: parameters + workspace (inference-only); training also holds the gradient
        ram_inf = params + inf[f"{MU}_WORKSPACE_BYTES"]
        ram_full = 2 * params + full[f"{MU}_WORKSPACE_BYTES"]
        assert inf["workspace_size_1"] <= inf[f"{MU}_WORKSPACE_BYTES"]
        lanes = inf[f"{MU}_LANES"]
        (sub / "one").mkdir()
        one = _probe(inference_export(model, dtype, 1), P.M, sub / "one")       # --lanes 1
        assert one[f"{MU}_LANES"] == 1 and one["workspace_size_1"] == one[f"{MU}_WORKSPACE_BYTES"]
        README_ROWS[model, dtype] = [text[model, dtype, "inf", "-Os"], text[model, dtype, "inf1", "-Os"],
                                     ram_inf, params + one[f"{MU}_WORKSPACE_BYTES"],
                                     text[model, dtype, "full", "-Os"], ram_full]
        ram_inf1 = f"{params + one[f'{MU}_WORKSPACE_BYTES']} B"
        code_inf1 = f"{text[model, dtype, 'inf1', '-Os']} B"
        SIZES[model, dtype] = s = dict(inf_Os=text[model, dtype, "inf", "-Os"], inf_O2=text[model, dtype, "inf", "-O2"],
                                       full_Os=text[model, dtype, "full", "-Os"],
                                       full_O2=text[model, dtype, "full", "-O2"], ram_inf=ram_inf, ram_full=ram_full,
                                       lanes=lanes)
        b = lambda v, w: f"{v} B".rjust(w)  # noqa: E731
        rows.append(f"| {model:6} | {dtype} | {b(s['inf_Os'], 8)} | {b(s['inf_O2'], 8)} | {b(ram_inf, 7)} "
                    f"| {code_inf1:>12} | {ram_inf1:>11} | {b(s['full_Os'], 8)} | {b(s['full_O2'], 8)} "
                    f"| {b(ram_full, 8)} |")
    print("\n| model  | dtype   | code -Os | code -O2 |     RAM | 1 lane: code | 1 lane: RAM | full -Os | full -O2 "
          "| full RAM |\n|--------|---------|---------:|---------:|--------:|-------------:|------------:|---------:"
          "|---------:|---------:|\n" + "\n".join(rows))
    for dtype in DTYPES:
        for opt in ("-Os", "-O2"):
            t = text["moons", dtype, "inf", opt]
            assert t < 8 * 1024, f"moons {dtype} inference-only object at {opt}: {t} bytes of text"
    for model, dtype in COMBOS:
        s = SIZES[model, dtype]
        assert s["inf_Os"] < s["full_Os"] and s["inf_O2"] < s["full_O2"], "inference-only is not smaller"
        assert s["ram_inf"] < s["ram_full"]
    _readme_footprint_matches(README_ROWS)


README_ROWS = {}                # (model, dtype) -> the numbers of the README's footprint table


def _readme_footprint_matches(rows):
    """The README's footprint table holds what this test measured (with the gcc major version the
    table names; another compiler makes other sizes, and the comparison is skipped)."""
    with open(os.path.join(os.path.dirname(EXAMPLES), "README.md")) as f:
        readme = f.read()
    stated = re.search(r"Footprint \(gcc (\d+)", readme)
    assert stated, "the README's footprint table does not name its compiler"
    major = _run([GCC, "-dumpversion"]).stdout.strip().split(".")[0]
    if major != stated.group(1) or len(rows) != len(COMBOS):
        return
    table = readme[stated.start():readme.index("\n\n", readme.index("| model | dtype |", stated.start()))]
    got = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 6 or not cells[1] in DTYPES:
            continue
        model = cells[0].split()[0]
        got[model, cells[1]] = [int(v.replace(",", "")) for c in cells[2:] for v in re.findall(r"[\d,]+(?= B)", c)]
    for key, want in rows.items():
        assert got.get(key) == want, (f"README footprint row {key} says {got.get(key)}, measured {want} "
                                      f"(regenerate it: pytest -s tests/test_embed.py -k footprint)")


# ---- 6. the header's documentation and the weights file ----------------------------------

def _doc_block(header):
    m = re.match(r"\s*/\*(.*?)\*/", header, re.S)
    assert m, "the header does not start with a comment"
    return m.group(1)


SIZE_MACRO = r"(_SIZE|_REALS|_INTS|_BYTES|N_PARAMS|_LANES)$"


def _header(P, inference_export, kind):
    d = P.dir if kind == "full" else inference_export(P.model, P.dtype)
    with open(os.path.join(d, P.M + ".h")) as f:
        return d, f.read()


@pytest.mark.parametrize("model,dtype", COMBOS)
@pytest.mark.parametrize("kind", ["full", "inference-only"])
def test_header_documents_abi_version_sizes_footprint_and_example(prepared, inference_export, tmp_path, model,
                                                                  dtype, kind):
    P = prepared(model, dtype)
    d, h = _header(P, inference_export, kind)
    MU, rb = P.MU, P.real.itemsize
    mac = _probe(d, P.M, tmp_path)            # the macros' values as C computes them
    text = _macros(h)                         # ... and as written
    doc = _doc_block(h)
    lines = h.splitlines()

    # the ABI version: a plain positive integer a program can test with #if
    assert re.fullmatch(r"[1-9]\d*", text.get(f"{MU}_ABI_VERSION", "")), text.get(f"{MU}_ABI_VERSION")

    # every size macro is documented: a comment on its line, its name in a comment, or a comment
    # heading its group of preprocessor lines
    comments = " ".join(re.findall(r"/\*(.*?)\*/", h, re.S))
    size_macros = [k for k in text if k.startswith(MU + "_") and re.search(SIZE_MACRO, k)]
    assert {f"{MU}_N_PARAMS", f"{MU}_WORKSPACE_REALS", f"{MU}_WORKSPACE_BYTES",
            f"{MU}_INPUT_{P.x_name.upper()}_SIZE", f"{MU}_OUTPUT_{P.out_name.upper()}_SIZE"} <= set(size_macros)
    for k in size_macros:
        i = next(i for i, line in enumerate(lines) if re.match(rf"#define\s+{k}\b", line))
        j = i
        while j > 0 and lines[j - 1].startswith("#"):
            j -= 1
        documented = "/*" in lines[i] or re.search(rf"\b{k}\b", comments) or lines[j - 1].rstrip().endswith("*/")
        assert documented, f"{k} is not documented"

    # ... and their values agree with the module and with the shapes their comments give
    assert mac[f"{MU}_N_PARAMS"] == P.n_params
    assert mac["sizeof_real"] == rb
    for p in P.layout:
        name = p["name"].upper()
        assert mac[f"{MU}_PARAM_{name}_SIZE"] == p["size"] and mac[f"{MU}_PARAM_{name}_OFFSET"] == p["offset"]
        line = next(line for line in lines if re.match(rf"#define\s+{MU}_PARAM_{name}_SIZE\b", line))
        assert f"shape ({', '.join(map(str, p['shape']))})" in line, line
    x_line = next(line for line in lines if re.match(rf"#define\s+{MU}_INPUT_{P.x_name.upper()}_SIZE\b", line))
    assert mac[f"{MU}_INPUT_{P.x_name.upper()}_SIZE"] == int(np.prod(P.mod.input_shapes[P.x_name]))
    assert f"shape ({', '.join(map(str, P.mod.input_shapes[P.x_name]))})" in x_line, x_line
    assert mac[f"{MU}_OUTPUT_{P.out_name.upper()}_SIZE"] == int(np.prod(P.mod.output_shapes[P.out_name]))
    assert mac[f"{MU}_TARGET_{P.y_name.upper()}_SIZE"] == int(np.prod(P.mod.target_shapes[P.y_name]))
    ws = mac[f"{MU}_WORKSPACE_BYTES"]
    assert mac[f"{MU}_WORKSPACE_REALS"] * rb <= ws
    assert mac["workspace_size_1"] == mac["workspace_size_1000"] <= ws, "workspace_size(n) depends on n or " \
        "exceeds NAME_WORKSPACE_BYTES"

    # the footprint table, in bytes, agreeing with the macros
    ctype = "double" if P.dtype == "float64" else "float"
    assert re.search(rf"Footprint \({ctype}, {rb} bytes a value\)", doc), doc
    rows = {m.group(1).strip(): int(m.group(2))
            for m in re.finditer(r"^\s*\*\s{3}(\w[\w ,()]*?)\s+(\d+) bytes", doc, re.M)}
    assert rows.get("parameters") == P.n_params * rb, rows
    assert rows.get("workspace") == ws, rows
    if kind == "full":
        assert rows.get("gradient buffer") == P.n_params * rb, rows
        assert rows.get("Adam state (m, v)") == 2 * P.n_params * rb, rows
    else:
        assert "gradient buffer" not in rows and "Adam state (m, v)" not in rows, rows

    # an example call, with as many arguments as the prototype takes
    assert "Example" in doc
    call = re.search(rf"{P.M}_forward\(([^;]*?)\)\s*!=\s*{MU}_OK", doc)
    assert call, f"no example call of {P.M}_forward in the header comment"
    proto = re.search(rf"^int {P.M}_forward\((.*?)\);", h, re.M | re.S)
    assert len(call.group(1).split(",")) == len(proto.group(1).split(","))
    if kind == "full":
        call = re.search(rf"{P.M}_sgd_step\(([^;]*?)\);", doc)
        proto = re.search(rf"^int {P.M}_sgd_step\((.*?)\);", h, re.M | re.S)
        assert call and len(call.group(1).split(",")) == len(proto.group(1).split(","))
    else:
        assert f"{P.M}_sgd_step" not in doc


@pytest.mark.parametrize("kind", ["full", "inference-only"])
def test_header_names_every_size_macro_in_a_comment(prepared, inference_export, kind):
    P = prepared("moons", "float64")
    _, h = _header(P, inference_export, kind)
    comments = " ".join(re.findall(r"/\*(.*?)\*/", h, re.S))
    lines = h.splitlines()
    undocumented = []
    for k in _macros(h):
        if k.startswith(P.MU + "_") and re.search(SIZE_MACRO, k):
            line = next(line for line in lines if re.match(rf"#define\s+{k}\b", line))
            if "/*" not in line and not re.search(rf"\b{k}\b", comments):
                undocumented.append(k)
    assert not undocumented, f"named in no comment: {undocumented}"


@pytest.mark.parametrize("model", MODELS)
def test_header_describes_inputs_without_dropout_as_plain_inputs(prepared, model):
    P = prepared(model, "float64")
    with open(P.path(".h")) as f:
        h = f.read()
    line = next(line for line in h.splitlines() if line.startswith(f"#define {P.MU}_INPUT_{P.x_name.upper()}_SIZE"))
    assert "dropout" not in line, f"{model} has no dropout, yet its header says: {line}"


WEIGHTS_DUMP = r"""
#include <stdio.h>
#include "@M@.h"
int main(void)
{
    for (int j = 0; j < @MU@_N_PARAMS; ++j) printf("%.17g\n", (double)@M@_weights[j]);
    return 0;
}
"""


def _dump_weights(d, M, tmp_path):
    (tmp_path / "dump.c").write_text(WEIGHTS_DUMP.replace("@MU@", M.upper()).replace("@M@", M))
    _build([GCC, *STRICT, "-O0", f"-I{d}", "dump.c", os.path.join(d, M + "_weights.c"), "-o", "dump"], tmp_path,
           "building the weights dump")
    p = _run([str(tmp_path / "dump")], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    return np.array([float(v) for v in p.stdout.split()])


@pytest.mark.parametrize("model,dtype", COMBOS)
def test_weights_file_reads_back_exactly_the_exported_npz(prepared, tmp_path, model, dtype):
    P = prepared(model, dtype)
    got = _dump_weights(P.dir, P.M, tmp_path)
    want = np.concatenate([np.asarray(P.npz[k]).ravel() for k in P.mod.param_shapes])
    assert P.npz[next(iter(P.npz))].dtype == P.real
    assert got.shape == want.shape
    bad = np.flatnonzero(got != want.astype(np.float64))
    assert bad.size == 0, f"{bad.size} weights differ, first at {bad[0]}: {got[bad[0]]!r} != {want[bad[0]]!r}"


def test_float64_weights_exported_as_float32_are_rounded_exactly_once(prepared, tmp_path):
    from gradc.api import export, load_model_file
    P = prepared("moons", "float64")
    out = tmp_path / "f32"
    export(load_model_file(P.model_file), str(out), weights=os.path.join(P.dir, "weights.npz"), dtype="float32")
    got = _dump_weights(str(out), P.M, tmp_path)
    want64 = np.concatenate([np.asarray(P.npz[k], dtype=np.float64).ravel() for k in P.mod.param_shapes])
    want = want64.astype(np.float32).astype(np.float64)      # round to nearest float32, once
    assert np.any(want != want64), "no weight needed rounding: the test would prove nothing"
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} weights differ, first at {bad[0]}: {got[bad[0]]!r} != {want[bad[0]]!r}"


# ---- 7. gradc export errors ----------------------------------------------------------------

OTHER_MOONS = open(os.path.join(EXAMPLES, "moons", "model.py")).read().replace("1e-4 * gc.sum_squares",
                                                                               "2e-4 * gc.sum_squares")


@pytest.fixture(scope="module")
def bad_weights(prepared, tmp_path_factory):
    """Weights files gradc export must refuse for examples/moons/model.py, by case."""
    from gradc.api import load_model_file, lower_model
    from gradc.train import save_checkpoint
    d = tmp_path_factory.mktemp("bad_weights")
    moons = prepared("moons", "float64")
    assert OTHER_MOONS != open(moons.model_file).read()
    (d / "other_moons.py").write_text(OTHER_MOONS)
    other = lower_model(load_model_file(str(d / "other_moons.py")))
    this = lower_model(load_model_file(moons.model_file))
    assert other.digest() != this.digest()
    # the same parameter names and shapes, but trained for another model: only the hash tells
    save_checkpoint(str(d / "other_checkpoint.npz"), moons.params(), {"epoch": 1}, other.digest())
    save_checkpoint(str(d / "good_checkpoint.npz"), moons.params(), {"epoch": 1}, this.digest())
    np.savez(d / "wrong_shape.npz", **dict(moons.params(), W2=np.zeros((16, 8))))
    np.savez(d / "missing_param.npz", **{k: v for k, v in moons.params().items() if k != "b3"})
    return d


ERROR_CASES = {
    # case: (weights file or None, model file or None (examples/moons), words the one line must hold)
    "checkpoint_of_another_model": ("other_checkpoint.npz", None, ["another model", "hash"]),
    "digits_weights_for_moons": ("DIGITS", None, ["'W1'", "shape (32, 64)", "expected (16, 2)"]),
    "wrong_shape": ("wrong_shape.npz", None, ["'W2'", "shape (16, 8)", "expected (16, 16)"]),
    "missing_parameter": ("missing_param.npz", None, ["'b3'", "missing"]),
    "missing_weights_file": ("no_such_weights.npz", None, ["no_such_weights.npz", "No such file"]),
    "missing_model_file": (None, "no_such_model.py", ["no such model file", "no_such_model.py"]),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_gradc_export_refuses_bad_input_with_one_line_and_status_2(prepared, bad_weights, run_cli, capsys, tmp_path,
                                                                   case):
    from gradc.cli import main as cli_main
    weights, model_file, words = ERROR_CASES[case]
    model_file = str(bad_weights / model_file) if model_file else os.path.join(EXAMPLES, "moons", "model.py")
    args = ["export", model_file, "-o", str(tmp_path / "out")]
    if weights == "DIGITS":
        weights = os.path.join(prepared("digits", "float64").dir, "weights.npz")
    elif weights:
        weights = str(bad_weights / weights)
    if weights:
        args += ["--weights", weights]
    if case == "missing_weights_file":      # one case through a real process: the exit status itself
        r = run_cli(*args)
        rc, stderr = r.returncode, r.stderr
    else:                                   # the others in this process (python -m gradc.cli exits with main())
        capsys.readouterr()
        rc = cli_main(args)
        stderr = capsys.readouterr().err
    assert rc == 2, f"exit {rc}\n{stderr}"
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"not one line:\n{stderr}"
    assert lines[0].startswith("gradc: error: "), lines[0]
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"
    assert not (tmp_path / "out").exists(), "a refused export wrote files"


def test_gradc_export_accepts_checkpoint_of_the_same_model(prepared, bad_weights, tmp_path):
    from gradc.cli import main as cli_main
    P = prepared("moons", "float64")
    assert cli_main(["export", P.model_file, "--weights", str(bad_weights / "good_checkpoint.npz"),
                     "-o", str(tmp_path)]) == 0
    with open(tmp_path / "moons_weights.c") as f, open(P.path("_weights.c")) as g:
        assert f.read() == g.read()


# ---- 8. make in examples/embed --------------------------------------------------------------

@pytest.mark.skipif(MAKE is None, reason="make is not installed")
def test_make_in_a_copy_of_examples_embed_builds_and_runs_moons(prepared, tmp_path):
    prepared("moons", "float64")        # the module cache is warm: prepare.py compiles nothing
    ex = tmp_path / "examples"
    (ex / "embed").mkdir(parents=True)
    for f in ("Makefile", "main.c", "prepare.py"):
        shutil.copy(os.path.join(EMBED, f), ex / "embed" / f)
    shutil.copytree(os.path.join(EXAMPLES, "moons"), ex / "moons",
                    ignore=shutil.ignore_patterns("__pycache__", "*.png", "build"))
    before = sorted(os.listdir(EMBED))
    p = _run([MAKE, "-C", str(ex / "embed"), f"PYTHON={sys.executable}"], timeout=300)
    assert p.returncode == 0, f"make failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    out = ex / "embed" / "build" / "moons-float64"
    assert {"main", "moons.c", "moons.h", "moons_weights.c", "samples.bin"} <= set(os.listdir(out))
    lines = [line for line in p.stdout.splitlines() if re.match(r"(output \d+:|step \d+ loss|final loss)", line)]
    first, losses, final, last = _parse_main("\n".join(lines), 32)
    assert len(losses) == STEPS and np.all(np.isfinite(losses)) and final < losses[0]
    assert sorted(os.listdir(EMBED)) == before, "the test left files in examples/embed"



# ---- identity: a stale or mismatched object or weights file is caught at init ---------------

IDENTITY = r"""
#include <stdio.h>
#include "@M@.h"
int main(void)
{
    const @M@_identity_t *id = @M@_identity();
    printf("%d %d %d %d %s %s\n", id->abi_version, id->real_bytes, id->lanes, id->n_params, id->model_hash,
           id->gradc_version);
    printf("%d\n", @M@_check_identity());
    /* a call with the workspace this header asks for: EWORKSPACE when the object needs more */
    static @M@_real work[@MU@_WORKSPACE_BYTES / sizeof(@M@_real)];
    static double params[64], x[3 * 17], out[17];     /* room for whichever object is linked in */
    printf("%d\n", @M@_forward(17, (@M@_real *)params, (@M@_real *)x, (@M@_real *)out, work, sizeof work));
#ifdef WEIGHTS
    printf("%d\n", @M@_check_weights());
#endif
    return 0;
}
"""

def _identity_run(tmp_path, tag, header_dir, objects, defines=(), weights=False):
    """Build the client with ``header_dir``'s header and ``defines``; each source of ``objects``
    is compiled apart, with its own folder's header and no defines, then linked in."""
    src = tmp_path / f"{tag}.c"
    src.write_text(IDENTITY.replace("@M@", "ident").replace("@MU@", "IDENT"))
    objs = []
    for i, o in enumerate(objects):
        out = tmp_path / f"{tag}_{i}.o"
        _build([GCC, *STRICT, "-O1", "-c", o, "-o", str(out)], tmp_path, f"{tag}: {o}")
        objs.append(str(out))
    _build([GCC, *STRICT, "-O1", *defines, *(["-DWEIGHTS"] if weights else []), f"-I{header_dir}", str(src),
            *objs, "-lm", "-o", str(tmp_path / tag)], tmp_path, tag)
    p = _run([str(tmp_path / tag)])
    assert p.returncode == 0, p.stderr
    return p.stdout.split("\n")


@pytest.mark.skipif(GCC is None, reason="gcc is not installed")
def test_identity_catches_other_dtype_lanes_model_and_weights(tmp_path):
    """The object's identity record is what it was built with; the header's check_identity returns
    EIDENTITY (6) for a float32 header on a float64 object, the header of a 1-lane export (--lanes 1)
    with a 16-lane object, and the header of a changed model on the old object; check_weights catches
    weights trained for another version of the model. A client that sizes its workspace from the
    1-lane header and calls the 16-lane object gets EWORKSPACE (8), not a heap overflow."""
    import gradc
    from gradc.api import export
    from gradc.abi import ABI_VERSION, EIDENTITY, EWORKSPACE
    from gradc.runtime import runtime_of
    models = {}
    for k in (3, 1):
        path = tmp_path / f"ident{k}.py"
        path.write_text("import gradc as gc\n"
                        "m = gc.Model('ident')\n"
                        "x, y = m.input('x', 3), m.target('y')\n"
                        f"w = m.param('w', (1, {k}), init=gc.init.uniform(-1, 1))\n"
                        f"z = m.output('z', {'(w @ x)[0]' if k == 3 else 'w[0, 0] * x[0]'})\n"
                        "m.loss((z - y) ** 2)\n")
        models[k] = str(path)
    dirs = {}
    for name, k, dtype, lanes in (("v1_64", 3, "float64", 16), ("v1_32", 3, "float32", 16),
                                  ("v2_64", 1, "float64", 16), ("v1_64_l1", 3, "float64", 1)):
        d = tmp_path / name
        mod = gradc.load(models[k], dtype=dtype)
        export(gradc.api.load_model_file(models[k]), str(d), dtype=dtype,
               weights={"w": mod.init_params(seed=0)["w"]}, lanes=lanes)
        dirs[name] = (d, runtime_of(mod).info.model_hash)
    d64, hash1 = dirs["v1_64"]
    obj = [str(d64 / "ident.c"), str(d64 / "ident_weights.c")]
    rec, ok, call, wok = _identity_run(tmp_path, "same", d64, obj, weights=True)[:4]
    assert rec.split() == [str(ABI_VERSION), "8", "16", "3", hash1, gradc.__version__]
    assert (ok, call, wok) == ("0", "0", "0")
    # a float32 header on the float64 object
    assert _identity_run(tmp_path, "dtype", dirs["v1_32"][0], obj)[1] == str(EIDENTITY)
    # the header of a --lanes 1 export, 16 lanes in the object: caught at init, and a call with the
    # workspace that header sizes is refused (it was a heap overflow when a define set the lanes)
    assert _identity_run(tmp_path, "lanes", tmp_path / "v1_64_l1", obj)[1:3] == [str(EIDENTITY), str(EWORKSPACE)]
    assert _identity_run(tmp_path, "lanes1", tmp_path / "v1_64_l1",
                         [str(tmp_path / "v1_64_l1" / "ident.c")])[1:3] == ["0", "0"]
    # the changed model's header on the old object, and old weights with the new model
    d2, hash2 = dirs["v2_64"]
    assert hash2 != hash1
    assert _identity_run(tmp_path, "model", d2, [str(d64 / "ident.c")])[1] == str(EIDENTITY)
    out = _identity_run(tmp_path, "weights", d2, [str(d2 / "ident.c"), str(d64 / "ident_weights.c")],
                        weights=True)
    assert out[1] == "0" and out[3] == str(EIDENTITY)


VALGRIND = shutil.which("valgrind")


@pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed")
@pytest.mark.parametrize("model,dtype", [("moons", "float64"), ("digits", "float32")])
def test_embed_main_is_clean_under_valgrind(prepared, tmp_path, model, dtype):
    """examples/embed/main.c with the export, built without sanitizers at -O1, under memcheck:
    no invalid read or write, no use of an uninitialized value, no leak, and the same numbers."""
    P = prepared(model, dtype)
    exe = tmp_path / "main"
    _build([GCC, *STRICT, "-O1", "-g", f"-I{P.dir}", f'-DGRADC_HEADER="{P.M}.h"', os.path.join(EMBED, "main.c"),
            P.path(".c"), P.path("_weights.c"), "-lm", "-o", str(exe)], tmp_path, "building main.c")
    p = _run([VALGRIND, "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=all",
              "--track-origins=yes", str(exe), os.path.join(P.dir, "samples.bin"), "3", LR], cwd=tmp_path, timeout=600)
    assert p.returncode == 0, f"valgrind exited {p.returncode}:\n{p.stderr[-4000:]}"
    assert "ERROR SUMMARY: 0 errors" in p.stderr, p.stderr[-2000:]
    first, losses, _, _ = _parse_main(p.stdout, len(P.x))
    _assert_close(first, P.reference["first"].reshape(first.shape), RTOL[dtype], "outputs under valgrind")
    _assert_close(losses, P.reference["losses"][:3], RTOL[dtype], "SGD losses under valgrind")
