"""The entry points: load a model file, compile a model, get its module.

Example::

    mod = gradc.load("examples/moons/model.py")          # compiles or takes the cache
    p = mod.init_params(seed=0)
    print(mod.loss(p, x=X, y=Y))
"""
import os
import signal
import sys
import threading

from .errors import ModelError, nested_too_deeply

_lock = threading.Lock()


class _Timeout(BaseException):
    """Raised inside a model file that runs past its time limit (BaseException: user code's
    ``except Exception`` does not swallow it)."""


class _Forbidden(BaseException):
    """Raised inside a model file that calls ``os.fork`` or ``os._exit`` (BaseException: user code's
    ``except Exception`` does not swallow it)."""


def _forbid(name):
    def refuse(*args, **kwargs):
        raise _Forbidden(name)
    refuse.__name__ = name
    return refuse


# a forked child would go on to run gradc's compile too (and hang in the CLI's watchdog), and
# os._exit ends the process with the caller's status and no message: neither is a model definition
_FORBIDDEN = ("fork", "forkpty", "_exit")


def default_timeout():
    try:
        return float(os.environ.get("GRADC_MODEL_TIMEOUT", "60"))
    except ValueError:
        return 60.0


def load_model_file(path, model=None, timeout=None):
    """Run a model file and return the ``gradc.Model`` it defines.

    ``model`` picks one by variable or model name when the file defines
    several. Errors name the file and line. A file that runs longer than
    ``timeout`` seconds (default ``$GRADC_MODEL_TIMEOUT`` or 60) is stopped
    with a ``ModelError``; the limit needs the main thread of a POSIX system.
    """
    from .model import Model
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelError(f"no such model file: {path}", where=None)
    with open(path, "rb") as f:
        text = f.read()
    if b"\0" in text:
        line = text[:text.index(b"\0")].count(b"\n") + 1
        raise ModelError("the file holds a NUL byte; a model file is Python source text", where=(path, line))
    try:
        code = compile(text, path, "exec")
    except SyntaxError as e:
        raise ModelError(f"syntax error: {e.msg}", where=(path, e.lineno or 1)) from None
    ns = {"__name__": "__gradc_model__", "__file__": os.path.abspath(path)}
    limit = default_timeout() if timeout is None else float(timeout)
    alarm = limit > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if alarm:
        def on_alarm(signum, frame):
            raise _Timeout()
        old = signal.signal(signal.SIGALRM, on_alarm)
        # repeating: a model file that swallows one alarm (a bare except) gets the next
        signal.setitimer(signal.ITIMER_REAL, limit, 0.05)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    pid = os.getpid()
    saved = {n: getattr(os, n) for n in _FORBIDDEN if hasattr(os, n)}
    for n in saved:
        setattr(os, n, _forbid(n))
    try:
        exec(code, ns)
    except _Forbidden as e:
        raise ModelError(f"a model file must not fork or end the process (it called os.{e.args[0]}); it "
                         f"should only define a model", where=_frame_in(sys.exc_info()[2], path)) from None
    except _Timeout:
        raise ModelError(f"the model file did not finish within {limit:g} s (an endless loop? "
                         f"GRADC_MODEL_TIMEOUT sets the limit)", where=_frame_in(sys.exc_info()[2], path)) from None
    except ModelError as e:
        if e.where is None or os.path.abspath(e.where[0]) != os.path.abspath(path):
            e.where = _frame_in(sys.exc_info()[2], path) or e.where
        raise
    except SystemExit as e:
        raise ModelError(f"the model file called sys.exit({e.code!r}) instead of defining a model",
                         where=_frame_in(sys.exc_info()[2], path)) from None
    except RecursionError:
        raise nested_too_deeply("running the model file", _frame_in(sys.exc_info()[2], path)) from None
    except KeyboardInterrupt:
        raise
    except BaseException as e:     # anything else a model file raises, even a BaseException
        where = _frame_in(sys.exc_info()[2], path)
        raise ModelError(f"{type(e).__name__}: {_safe_str(e)}", where=where) from e
    finally:
        for n, f in saved.items():
            setattr(os, n, f)
        if os.getpid() != pid:
            # a child forked by other means (posix.fork, a C extension): it must not compile as well
            saved["_exit"](3)
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        sys.path.pop(0)
    models = {k: v for k, v in ns.items() if isinstance(v, Model)}
    if model is not None:
        hits = [v for k, v in models.items() if k == model or v.name == model]
        if not hits:
            raise ModelError(f"no model named {model!r}; found {', '.join(sorted(models)) or 'none'}", where=(path, 1))
        return hits[0]
    distinct = list({id(v): v for v in models.values()}.values())
    if not distinct:
        raise ModelError("no model found: define one with m = gradc.Model(\"name\")", where=(path, 1))
    if len(distinct) > 1:
        raise ModelError("several models found (" + ", ".join(sorted(models))
                         + "); choose one with --model NAME", where=(path, 1))
    return distinct[0]


def _safe_str(e):
    try:
        return str(e)
    except BaseException:
        return f"<{type(e).__name__} whose message cannot be shown>"


def _frame_in(tb, path):
    """The innermost traceback line inside ``path``."""
    where, ap = None, os.path.abspath(path)
    while tb is not None:
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == ap:
            where = (path, tb.tb_lineno)
        tb = tb.tb_next
    return where


def lower_model(model):
    from .ir import lower
    return lower(model.spec())


def module_info(prog, src, dtype, target):
    """The ``ModuleMeta`` the generated module needs (shapes, dtypes, initializers, layout), before
    the build adds its own fields; ``.to_json()`` is what the build stores.

    Example::

        info = module_info(prog, render(prog, differentiate(prog), "float64"), "float64", "c")
        info.param("W1").offset, info.n_params
    """
    from .codegen.c import LANES
    from .runtime.meta import ArgMeta, ModuleMeta, OutputMeta, ParamMeta
    L = src.layout
    params = [ParamMeta(p["name"], p["shape"], p["offset"], p["size"], prog.tensors[p["name"]].init)
              for p in L["params"]]
    return ModuleMeta(name=prog.name, prefix=src.name, dtype=dtype, target=target, params=params,
                      model_hash=prog.digest(), n_params=L["n_params"],
                      inputs=[ArgMeta(t.name, t.shape, t.dtype, t.dropout) for t in prog.inputs],
                      targets=[ArgMeta(t.name, t.shape, t.dtype, t.dropout) for t in prog.targets],
                      outputs=[OutputMeta(o, prog.tensors[o].shape) for o in prog.outputs],
                      int_bounds=prog.int_bounds, ws_reals=L["ws"].at(LANES), ws_ints=L["ints"].at(LANES))


def build_model(model_or_prog, dtype="float64", target="c"):
    """Compile (or take from the cache) and return (cache entry folder, meta)."""
    from .build import build
    from .ir import Program
    from .targets import get_target
    tgt = get_target(target)
    if dtype not in ("float32", "float64"):
        raise ModelError(f"dtype must be float32 or float64, not {dtype!r}", where=None)
    prog = model_or_prog if isinstance(model_or_prog, Program) else lower_model(model_or_prog)

    def make_source():
        from .autodiff import differentiate
        src = tgt.render(prog, differentiate(prog), dtype)
        return src, module_info(prog, src, dtype, target).to_json()

    with _lock, deep_guard(prog, "differentiating and rendering"):
        return build(prog, dtype, target, make_source)


class deep_guard:
    """A ``RecursionError`` inside turns into a ``ModelError`` naming the most deeply nested stage
    of ``prog``: ``with deep_guard(prog, "differentiating"): differentiate(prog)``."""

    def __init__(self, prog, during):
        self.prog, self.during = prog, during

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind is not None and issubclass(kind, RecursionError):
            from .ir import deepest_where
            raise nested_too_deeply(self.during, deepest_where(self.prog)) from None
        return False


def compile_model(model, dtype="float64", target="c"):
    """A ``gradc.Model`` compiled to a module object with the module contract.

    Example: ``mod = compile_model(m, dtype="float32"); mod.init_params(seed=0)``.
    """
    from .runtime import ModuleMeta, as_module
    entry, meta = build_model(model, dtype, target)
    return as_module(entry, ModuleMeta.from_json(meta))


def load(path, dtype="float64", target="c", model=None):
    """Compile the model file at ``path`` (or take it from the cache) and return its module.

    Example: ``moons = gradc.load("examples/moons/model.py")``.
    """
    return compile_model(load_model_file(path, model), dtype, target)


def read_weights(path, prog):
    """Parameters for ``prog`` from a gradc checkpoint or an .npz of arrays named like the parameters.

    Checks the model hash (for a checkpoint), the names and the shapes; raises ``ValueError``
    naming the file. The file is read by ``gradc.npz.read_npz``, bounded by what a checkpoint of
    this model can hold, so a lying header or a zip bomb is refused before anything is allocated.

    Example: ``params = read_weights("run/checkpoint.npz", lower_model(m))``.
    """
    from .npz import NpzError, machine_bytes, read_npz
    from .train import checkpoint_limit
    limit = checkpoint_limit({t.name: tuple(t.shape) for t in prog.params})
    mem = machine_bytes()
    try:
        files = read_npz(path, "weights", min(limit, mem) if mem else limit)
    except NpzError as e:
        raise ValueError(f"cannot read weights {path}: {e.why}") from None
    return check_weights(files, prog, f"weights {path}")


def check_weights(files, prog, what="weights"):
    """The parameters of ``prog`` from a dict of arrays (or a checkpoint's), checked: names, shapes, real values.

    Example: ``check_weights({"w": np.zeros((1, 3)), "b": np.zeros(1)}, prog)``.
    """
    import numpy as np

    from .train import checkpoint_params
    if "state_json" in files:                   # a checkpoint written by gradc.fit / gradc train
        if "model_hash" not in files:
            raise ValueError(f"{what}: a checkpoint without its model hash (damaged)")
        got = bytes(np.asarray(files["model_hash"]).tobytes()).decode("utf-8", "replace")
        if got != prog.digest():
            raise ValueError(f"{what} were trained for another model (hash {got[:12]}, "
                             f"this model {prog.digest()[:12]})")
        files = checkpoint_params(files, what)
    out = {}
    for t in prog.params:
        if t.name not in files:
            raise ValueError(f"{what}: parameter {t.name!r} is missing")
        a = np.asarray(files[t.name])
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{what}: parameter {t.name!r} holds {a.dtype} values, not real numbers")
        if a.shape != t.shape:
            raise ValueError(f"{what}: parameter {t.name!r} has shape {a.shape}, expected {t.shape}")
        out[t.name] = a
    extra = sorted(set(files) - set(out))
    if extra:
        raise ValueError(f"{what}: unknown parameter {extra[0]!r}")
    return out


def export(model, outdir, weights=None, dtype="float64", inference_only=False, force=False, test_vectors=0,
           lanes=16, trainable=None, quantize=None, calibrate=None):
    """Write ``NAME.h``, ``NAME.c``, ``CMakeLists.txt`` (and ``NAME_weights.c`` from ``weights``) into
    ``outdir``.

    ``weights`` is a path (checkpoint or .npz of parameters) or a dict of arrays. ``test_vectors=N``
    (needs ``weights``) also writes ``NAME_selftest.c``: N seeded inputs and the outputs this
    module computes for them, checked against ``NAME_forward`` (a CTest test in the CMake build).
    ``lanes``: the samples of a block, fixed in ``NAME.c`` (1 to 64; 1 needs the least workspace).
    ``trainable``: the names of the parameters the device trains (fine-tuning the last layer:
    ``["W3", "b3"]``); the others become constants of ``NAME.c`` with their values from ``weights``,
    and ``params``, the gradient and Adam's state hold the trainable ones only.
    ``quantize="int8"`` writes an int8 inference export instead (``gradc.quantize``): float32 in and
    out, integer dense and convolution stages, the quantized weights constants of ``NAME.c``; it
    needs ``weights`` and ``calibrate`` (a path to an .npz of inputs by name, or a dict of arrays),
    whose samples set the activation ranges; the list returned then has ``.report``: how each stage
    runs, and which stay in float (the CLI prints it).
    Returns the paths written. A file in the way that gradc did not write is left alone
    (``OutputError``) unless ``force``. Example: ``gradc.api.export(m, "out", weights="run/checkpoint.npz")``.
    """
    from .codegen.c import render, render_cmake, render_selftest, render_weights
    if isinstance(test_vectors, bool) or not isinstance(test_vectors, int) or not 0 <= test_vectors <= 10000:
        raise ModelError(f"test_vectors must be a whole number from 0 to 10000, not {test_vectors!r}", where=None)
    if test_vectors and weights is None:
        raise ModelError("test vectors need the weights they check (give --weights)", where=None)
    if dtype not in ("float32", "float64"):
        raise ModelError(f"dtype must be float32 or float64, not {dtype!r}", where=None)
    if quantize is not None:
        return _export_int8(model, outdir, weights, force, test_vectors, lanes, trainable, quantize, calibrate)
    if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= 64:
        raise ModelError(f"lanes must be a whole number from 1 to 64, not {lanes!r}", where=None)
    prog = lower_model(model)
    params = None
    if weights is not None:
        params = read_weights(weights, prog) if isinstance(weights, (str, os.PathLike)) \
            else check_weights(dict(weights), prog)
    frozen = _frozen(prog, trainable, params, inference_only)
    with deep_guard(prog, "differentiating and rendering"):
        if inference_only:
            src = render(prog, None, dtype, inference_only=True, lanes=lanes)
        else:
            from .autodiff import differentiate
            src = render(prog, differentiate(prog, frozenset(frozen)), dtype, lanes=lanes, frozen=frozen)
    files = {f"{src.name}.h": src.h, f"{src.name}.c": src.c}
    if params is not None:
        files[f"{src.name}_weights.c"] = render_weights(src, params, dtype)
    if test_vectors:
        inputs, outputs = _test_vectors(model, prog, params, dtype, test_vectors)
        files[f"{src.name}_selftest.c"] = render_selftest(src, inputs, outputs, dtype)
    files["CMakeLists.txt"] = render_cmake(src, weights is not None, test_vectors)
    return _write_export(outdir, files, force)


def _write_export(outdir, files, force, report=()):
    """Write {file name: text} into outdir (after checking that nothing of the user's is in the way)."""
    prepare_outputs(outdir, list(files), force, "export")
    written = []
    for fn, text in files.items():
        path = os.path.join(outdir, fn)
        write_output(path, text.encode())
        written.append(path)
    return Written(written, report)


class Written(list):
    """The paths an export wrote, and (``report``) how an int8 export runs each stage."""

    def __init__(self, paths, report=()):
        super().__init__(paths)
        self.report = list(report)


def _export_int8(model, outdir, weights, force, test_vectors, lanes, trainable, quantize, calibrate):
    import numpy as np

    from .codegen.c import render_cmake, render_selftest
    from .codegen.int8 import render_int8
    from .ir import INT
    from .quantize import plan
    if quantize != "int8":
        raise ModelError(f"quantize must be 'int8', not {quantize!r}", where=None)
    if weights is None:
        raise ModelError("--quantize int8 needs the trained weights it quantizes (give --weights)", where=None)
    if calibrate is None:
        raise ModelError("--quantize int8 needs calibration data: --calibrate DATA.npz, a few hundred "
                         "typical inputs by input name (the training data will do)", where=None)
    for what, bad in (("--trainable", trainable is not None), ("--lanes", lanes != 16)):
        if bad:
            raise ModelError(f"{what} is for a float export; an int8 export is inference only, one sample "
                             f"at a time (drop {what} or --quantize)", where=None)
    prog = lower_model(model)
    params = read_weights(weights, prog) if isinstance(weights, (str, os.PathLike)) \
        else check_weights(dict(weights), prog)
    if isinstance(calibrate, (str, os.PathLike)):
        from .npz import read_npz
        calibrate = read_npz(calibrate, "--calibrate")
    calib = {}
    for t in prog.inputs:
        if t.dropout is not None:
            continue
        if t.name not in calibrate:
            raise ModelError(f"--calibrate: no array {t.name!r} for input {t.name!r} (it holds "
                             f"{', '.join(sorted(calibrate)) or 'nothing'})", where=None)
        a = np.asarray(calibrate[t.name])
        if a.ndim != len(t.shape) + 1 or a.shape[1:] != tuple(t.shape) or a.shape[0] < 1:
            raise ModelError(f"--calibrate: input {t.name!r} has shape {a.shape}, expected (n, "
                             f"{', '.join(map(str, t.shape))}) with n >= 1", where=None)
        if a.dtype.kind not in "fiub":
            raise ModelError(f"--calibrate: input {t.name!r} holds {a.dtype} values, not numbers", where=None)
        calib[t.name] = a
    try:
        qp = plan(prog, params, calib)
    except ValueError as e:
        raise ModelError(str(e), where=None) from None
    src = render_int8(qp)
    files = {f"{src.name}.h": src.h, f"{src.name}.c": src.c}
    if test_vectors:
        # rows of the calibration data (typical inputs), and the integer path's outputs for them
        n_cal = len(next(iter(calib.values())))
        rows = np.random.default_rng(0).choice(n_cal, test_vectors, replace=test_vectors > n_cal)
        inputs = {t.name: np.asarray(calib[t.name])[rows].astype(np.int32 if t.dtype == INT else np.float32)
                  for t in prog.inputs if t.dropout is None}
        try:
            outputs = qp.reference(inputs)
        except ValueError as e:
            raise ModelError(str(e), where=None) from None
        files[f"{src.name}_selftest.c"] = render_selftest(src, inputs, outputs, "float32",
                                                          int8_tol="2e-2" if qp.float_stages else "0")
    files["CMakeLists.txt"] = render_cmake(src, False, test_vectors)
    return _write_export(outdir, files, force, qp.report())


def _frozen(prog, trainable, params, inference_only):
    """For ``export(trainable=...)``: the other parameters with their values (they become constants
    of the source), or {} when every parameter is trained."""
    if trainable is None:
        return {}
    names = [trainable] if isinstance(trainable, str) else list(trainable)
    known = [t.name for t in prog.params]
    if not names:
        raise ModelError("trainable names no parameter: give at least one (e.g. --trainable W3,b3)", where=None)
    for n in names:
        if n not in known:
            raise ModelError(f"trainable: {n!r} is not a parameter of model {prog.name!r} (its parameters: "
                             f"{', '.join(known)})", where=None)
    if inference_only:
        raise ModelError("trainable parameters need a training export; drop --inference-only", where=None)
    if params is None:
        raise ModelError("the parameters that are not trainable become constants of the source: give their "
                         "values with --weights", where=None)
    return {n: params[n] for n in known if n not in names}


def _test_vectors(model, prog, params, dtype, n):
    """(inputs, outputs) for ``n`` seeded samples: reals standard normal, ids uniform in their range,
    dropout masks ones; the outputs of this model's compiled module (its forward pass, in ``dtype``)
    with ``params``, the values ``NAME_weights.c`` holds."""
    import numpy as np
    mod = compile_model(model, dtype)
    rng = np.random.default_rng(0)
    inputs = {}
    for t in prog.inputs:
        shape = (n, *t.shape)
        if t.dropout is not None:
            inputs[t.name] = np.ones(shape, dtype=mod.dtype)
        elif mod.input_dtypes[t.name] == np.int32:
            bounds = [b if b is not None else 1 for b in prog.int_bounds.get(t.name, [1] * t.size)]
            hi = np.array(bounds).reshape(t.shape) if t.shape else bounds[0]
            inputs[t.name] = (rng.random(shape) * hi).astype(np.int32)
        else:
            inputs[t.name] = rng.standard_normal(shape).astype(mod.dtype)
    p = mod.init_params(seed=0)
    for k in p:
        p[k][...] = np.asarray(params[k], dtype=np.float64)
    return inputs, mod.forward(p, **inputs)


# the head comment of every C file gradc writes says so (templates/c, templates/cuda)
_C_MARKERS = (b"generated by gradc", b"compiled by gradc", b"written by gradc")
PY_MARKER = "# generated by gradc"


def written_by_gradc(path):
    """Whether the file at ``path`` carries gradc's marker, so that a new compile may replace it.

    C sources and headers open with a comment saying "generated by gradc" (or "compiled by",
    "written by"); a generated module's first line is ``# generated by gradc ...``; its JSON record
    holds the keys ``gradc`` and ``meta_sha256``; its extension is a ``_gradc_*`` library that
    exports ``PyInit__gradc_*``. Example: ``written_by_gradc("build/moons.py")  # True``.
    """
    base = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if base.endswith(".py"):
                first = head.split(b"\n", 1)[0]
                # wrappers from before the marker: their docstring's first line
                return first.startswith(PY_MARKER.encode()) or (
                    first.startswith(b'"""') and b": a model compiled by gradc " in first)
            if base.endswith(".json"):
                import json
                f.seek(0)
                text = f.read(64 << 20)
                try:
                    d = json.loads(text)
                except ValueError:
                    return False
                return isinstance(d, dict) and "gradc" in d and "meta_sha256" in d
            if base.startswith("_gradc_") and head[:4] in (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"MZ\x90\x00"):
                import mmap
                stem = base.split(".", 1)[0]
                if os.fstat(f.fileno()).st_size == 0:
                    return False
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    return mm.find(b"PyInit_" + stem.encode()) >= 0
            if head.startswith(b"/*"):
                comment = head.split(b"*/", 1)[0]
                return any(m in comment for m in _C_MARKERS)
            if base == "CMakeLists.txt":
                return head.startswith(b"# written by gradc export")
    except OSError:
        return False
    return False


def prepare_outputs(outdir, names, force=False, command="compile", protect=()):
    """Make ``outdir`` and check that writing ``names`` there loses nothing: every one that exists
    must be a file gradc wrote (or ``force``), and none may be a file in ``protect`` (the model
    file itself). Raises ``OutputError`` naming the file, before anything is written.

    Example: ``prepare_outputs("build", ["moons.c", "moons.h"], force=False)``.
    """
    from .errors import OutputError
    if os.path.lexists(outdir) and not os.path.isdir(outdir):
        raise OutputError(f"{command} -o {outdir}: that is a file, not a folder; give the folder to write into")
    try:
        os.makedirs(outdir, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the output folder {outdir}: {e.strerror or e}") from None
    protect = {os.path.realpath(p) for p in protect}
    for fn in names:
        path = os.path.join(outdir, fn)
        if not os.path.lexists(path):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            raise OutputError(f"{path} is a folder; {command} would write a file of that name there "
                              f"(choose another -o or --name)")
        if force:
            continue
        if os.path.realpath(path) in protect:
            raise OutputError(f"{path} is the model file itself; {command} would replace it with generated "
                              f"code. Choose another -o folder or --name")
        if not written_by_gradc(path):
            raise OutputError(f"{path} exists and was not written by gradc; {command} will not replace it. "
                              f"Choose another -o folder or --name, or pass --force to replace it")


def write_output(path, data):
    """Write ``data`` (bytes) to ``path`` atomically: a private temporary file beside it, then a
    rename, so a reader never sees half a file and no other file name is touched.

    Example: ``write_output("build/moons.py", text.encode())``.
    """
    import tempfile
    d, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=d or ".", prefix=f".{base}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
