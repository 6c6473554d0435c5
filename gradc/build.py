"""Compile generated C into a Python extension with cffi, through a content-hash cache.

The cache key hashes what determines the artifact: the model's canonical
stages, the dtype and target, the templates, the compiler (its path, size and
mtime: no compiler run on a warm load) and its flags, and the gradc version.
A warm load therefore needs neither differentiation nor a compiler.

An entry is built in a private temporary folder and published with one
``rename``; a process that loses the race uses the winner's entry. On load
the hashes stored in ``meta.json`` are checked against the files, and a
truncated or altered entry is rebuilt.

Example::

    entry = build(prog, "float64")       # cached; compiles on a miss
    lib = load_extension(entry)
"""
import contextlib
import hashlib
import io
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import uuid
import warnings

from ._version import __version__
from .errors import BuildError

FLAGS = ["-O3", "-march=native", "-fPIC", "-fno-math-errno", "-fopenmp-simd", "-DGRADC_SIMD"]


def openmp(cc_identity):
    """True when loss_grad_threads should run its threads in parallel: the compiler is gcc (whose
    OpenMP runtime ships with it) and ``$GRADC_OPENMP`` is not 0. Otherwise the threads' shares of
    the batch run one after the other, with the same result."""
    return os.environ.get("GRADC_OPENMP", "1") != "0" and "gcc" in os.path.basename(cc_identity.split(":")[0])


def flags(cc_identity):
    return [f for f in FLAGS if f != "-fopenmp-simd"] + ["-fopenmp"] if openmp(cc_identity) else list(FLAGS)
META = "meta.json"


def cache_root():
    """``$GRADC_CACHE_DIR``, else the user's cache folder (``~/.cache/gradc`` on Linux)."""
    env = os.environ.get("GRADC_CACHE_DIR")
    if env:
        return os.path.abspath(env)
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA", os.path.expanduser("~"))
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "gradc")


def compiler():
    """(command, identity) of the C compiler: ``$CC`` or ``cc``; identity needs no compiler run."""
    cc = os.environ.get("CC", "cc")
    path = shutil.which(cc)
    if path is None:
        raise BuildError(f"no C compiler found: {cc!r} is not on PATH (set CC to a C compiler)")
    real = os.path.realpath(path)
    st = os.stat(real)
    return path, f"{real}:{st.st_size}:{st.st_mtime_ns}"


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def nvcc():
    """(command, identity) of the CUDA compiler: ``$NVCC`` or ``nvcc``."""
    cmd = os.environ.get("NVCC", "nvcc")
    path = shutil.which(cmd)
    if path is None:
        raise BuildError(f"target cuda needs the CUDA compiler, but {cmd!r} is not on PATH "
                         "(install the CUDA toolkit or set NVCC; the C target needs neither)")
    real = os.path.realpath(path)
    st = os.stat(real)
    return path, f"{real}:{st.st_size}:{st.st_mtime_ns}"


def cuda_emulated():
    """True when ``$GRADC_CUDA_EMULATE`` is 1: target cuda builds its source as C++ that runs each
    kernel launch as a loop on the CPU (for tests on machines without a GPU)."""
    return os.environ.get("GRADC_CUDA_EMULATE") == "1"


def cuda_flags():
    arch = os.environ.get("GRADC_CUDA_ARCH", "native")
    return ["-O3", f"-arch={arch}", "-Xcompiler", "-fPIC", "-cudart", "static"]


_gpu = []


def gpu_identity():
    """What ``-arch=native`` resolves to, for the cache key: the GPUs' compute capabilities from
    nvidia-smi (asked once per process), so that a cache shared between machines never serves a
    library built for another GPU; "" without nvidia-smi or with GRADC_CUDA_ARCH set."""
    if os.environ.get("GRADC_CUDA_ARCH", "native") != "native":
        return ""
    if not _gpu:
        out = ""
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                p = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=30)
                out = p.stdout.strip() if p.returncode == 0 else ""
            except (OSError, subprocess.SubprocessError):
                out = ""
        _gpu.append(out)
    return _gpu[0]


def c_identity():
    """The C target's part of the cache key: (label, the compiler and its flags)."""
    _, cc_id = compiler()
    return "c", cc_id + " " + " ".join(flags(cc_id))


def cuda_identity():
    """The CUDA target's part of the cache key: the C compiler (for the cffi wrapper), and nvcc with
    its flags and the GPU ``-arch=native`` resolves to; or the emulation's C++ build."""
    label, cc = c_identity()
    if cuda_emulated():
        return "cuda-emulated", cc + " emulated"
    return "cuda", cc + " " + nvcc()[1] + " " + " ".join(cuda_flags()) + " gpu " + gpu_identity()


def cache_key(prog, dtype, target, template_digest):
    """The hash that names a cache entry: everything that determines the built library (the
    model's stages, dtype, target, the generator, the toolchain) and the source locations its
    comments cite."""
    from .targets import get_target
    label, toolchain = get_target(target).part("identity")()
    parts = [prog.canonical(), dtype, label, template_digest, toolchain, prog.locations(),
             __version__, sys.implementation.cache_tag, sysconfig.get_platform()]
    return hashlib.sha256("\n\x00".join(parts).encode()).hexdigest()


def _writable_root():
    root = cache_root()
    try:
        os.makedirs(root, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=".probe-", dir=root)
        os.rmdir(probe)
        return root
    except OSError as e:
        fallback = _private_fallback()
        warnings.warn(f"gradc cache folder {root} is not writable ({e.strerror}); using {fallback}")
        return fallback


def _private_fallback():
    """A temporary cache folder only this user can write: a folder someone else made at the usual
    name (who could plant a library there) is never used; a fresh private one is made instead."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    path = os.path.join(tempfile.gettempdir(), f"gradc-cache-{uid}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return tempfile.mkdtemp(prefix="gradc-cache-")
    try:
        st = os.lstat(path)
        import stat
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and not st.st_mode & 0o022:
            return path
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="gradc-cache-")


def _meta_digest(meta):
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def entry_ok(entry):
    """The entry's metadata when it is complete and unaltered (meta.json and every file it
    lists match their stored hashes), else None."""
    try:
        with open(os.path.join(entry, META)) as f:
            meta = json.load(f)
        if meta.get("meta_sha256") != _meta_digest(meta):
            return None
        for fname, digest in meta["files"].items():
            if _sha256_file(os.path.join(entry, fname)) != digest:
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build(prog, dtype="float64", target="c", make_source=None):
    """The cache entry (a folder) for ``prog``, compiling it on a miss.

    ``make_source()`` is called only on a miss; it returns a ``Source`` and
    the module metadata (a dict), so that a hit costs no differentiation.
    Returns (entry folder, meta dict).
    """
    from .codegen.c import template_digest
    key = cache_key(prog, dtype, target, template_digest(target))
    root = _writable_root()
    entry = os.path.join(root, f"{_safe(prog.name)}-{key[:24]}")
    meta = entry_ok(entry) if os.path.isdir(entry) else None
    if meta is not None:
        _touch(entry)
        return entry, meta
    # a corrupt or truncated entry is replaced when ours is published (below), and only if it
    # is still bad then: another process may be repairing it right now
    _sweep(root)
    src, info = make_source()
    tmp = tempfile.mkdtemp(prefix=".build-", dir=root)
    try:
        meta = _compile(src, info, key, tmp)
        try:
            os.rename(tmp, entry)
        except OSError:
            # another process published first: use its entry if it is good
            other = entry_ok(entry)
            if other is None:
                _discard(entry, root)
                os.rename(tmp, entry)
            else:
                meta = other
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    evict(root, keep=entry)
    return entry, meta


def _touch(entry):
    # the folder's mtime records its last use, for least-recently-used eviction
    try:
        os.utime(entry)
    except OSError:
        pass


def max_cache_bytes():
    """``$GRADC_CACHE_MAX_BYTES``, default 2 GiB."""
    try:
        return int(float(os.environ.get("GRADC_CACHE_MAX_BYTES", 2 * 2**30)))
    except ValueError:
        return 2 * 2**30


def evict(root, keep=None, limit=None):
    """Delete least recently used entries until the cache holds at most ``limit`` bytes."""
    limit = max_cache_bytes() if limit is None else limit
    entries = []
    try:
        names = os.listdir(root)
    except OSError:
        return
    for n in names:
        p = os.path.join(root, n)
        if n.startswith(".") or not os.path.isdir(p):
            continue
        try:
            size = sum(os.path.getsize(os.path.join(p, f)) for f in os.listdir(p))
            entries.append((os.path.getmtime(p), size, p))
        except OSError:
            continue
    total = sum(e[1] for e in entries)
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        if keep is not None and os.path.samefile(p, keep):
            continue
        _discard(p, root)
        total -= size


def _sweep(root, age=3600.0):
    """Remove build folders that a killed process left behind (older than ``age`` seconds)."""
    import time
    now = time.time()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for n in names:
        if n.startswith((".build-", ".trash-")):
            p = os.path.join(root, n)
            try:
                if now - os.path.getmtime(p) > age:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def _safe(name):
    from .codegen.names import ident
    return ident(name, "model")


def _discard(path, root):
    trash = os.path.join(root, f".trash-{uuid.uuid4().hex}")
    try:
        os.rename(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _run(cmd, what, M):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except OSError as e:
        raise BuildError(f"{what} {cmd[0]!r} cannot be run: {e}") from None
    if proc.returncode != 0:
        raise BuildError(f"{what} failed on model {M!r} (exit {proc.returncode}):\n"
                         f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def compile_cuda(src, tmp, modname, wrapper, so_name):
    """The CUDA extension: the cffi wrapper by the C compiler, the .cu by nvcc (or, emulated, by
    the C++ compiler), linked with the CUDA runtime static. Returns the files to keep."""
    M = src.name
    cc, _ = compiler()
    wobj, cobj = os.path.join(tmp, f"{modname}.o"), os.path.join(tmp, f"{M}.o")
    _run([cc, "-O2", "-fPIC", "-I", sysconfig.get_paths()["include"], "-I", tmp, "-c", wrapper, "-o", wobj],
         "the C compiler", M)
    cu, so = os.path.join(tmp, f"{M}.cu"), os.path.join(tmp, so_name)
    if cuda_emulated():
        cxx = os.environ.get("CXX", "c++")
        _run([cxx, "-O2", "-fPIC", "-DGRADC_CUDA_EMULATE", "-x", "c++", "-I", tmp, "-c", cu, "-o", cobj],
             "the C++ compiler (emulated CUDA)", M)
        _run([cxx, "-shared", wobj, cobj, "-o", so, "-lm"], "the linker", M)
    else:
        nv, _ = nvcc()
        _run([nv, *cuda_flags(), "-I", tmp, "-c", cu, "-o", cobj], "nvcc", M)
        _run([nv, "-shared", "-cudart", "static", wobj, cobj, "-o", so], "nvcc (linking)", M)
    for p in (wobj, cobj):
        os.remove(p)
    return [f"{M}.cu", f"{M}.h", so_name]


def compile_c(src, tmp, modname, wrapper, so_name):
    """The C extension: the cffi wrapper and NAME.c in one run of the C compiler. Returns the files to keep."""
    M = src.name
    cc, _ = compiler()
    link = ["-bundle", "-undefined", "dynamic_lookup"] if sys.platform == "darwin" else ["-shared"]
    cmd = [cc, *flags(compiler()[1]), *link, "-I", sysconfig.get_paths()["include"], "-I", tmp,
           wrapper, os.path.join(tmp, f"{M}.c"), "-o", os.path.join(tmp, so_name), "-lm"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except OSError as e:
        raise BuildError(f"the C compiler {cc!r} cannot be run: {e}") from None
    if proc.returncode != 0 or not os.path.isfile(os.path.join(tmp, so_name)):
        why = f"exit {proc.returncode}" if proc.returncode else "it exited 0 but wrote no library"
        raise BuildError(f"the C compiler failed on model {M!r} ({why}):\n"
                         f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    return [f"{M}.c", f"{M}.h", so_name]


def _compile(src, info, key, tmp):
    from cffi import FFI

    from .targets import get_target
    M = src.name
    target = get_target(info.get("target", "c"))
    modname = f"_gradc_{M}_{key[:12]}"
    with open(os.path.join(tmp, M + target.suffix), "w") as f:
        f.write(src.c)
    with open(os.path.join(tmp, f"{M}.h"), "w") as f:
        f.write(src.h)
    ffi = FFI()
    ffi.cdef(src.cdef)
    ffi.set_source(modname, f'#include "{M}.h"')
    wrapper = os.path.join(tmp, f"{modname}.c")
    with contextlib.redirect_stdout(io.StringIO()):     # cffi announces "generating ..."
        ffi.emit_c_code(wrapper)
    so_name = modname + importlib.machinery.EXTENSION_SUFFIXES[0]
    names = target.part("compiler")(src, tmp, modname, wrapper, so_name)
    os.remove(wrapper)
    return _finish(info, key, modname, so_name, names, tmp)


def _finish(info, key, modname, so_name, names, tmp):
    files = {fn: _sha256_file(os.path.join(tmp, fn)) for fn in names}
    meta = dict(info, key=key, module=modname, so=so_name, files=files, gradc=__version__)
    meta["meta_sha256"] = _meta_digest(meta)
    with open(os.path.join(tmp, META), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    return meta


_loaded = {}


def load_extension(entry, meta):
    """Import the compiled extension of a cache entry (or an output folder); returns its ``lib`` and ``ffi``."""
    modname = meta["module"]
    mod = _loaded.get(modname) or sys.modules.get(modname)
    if mod is None:
        path = os.path.join(entry, meta["so"])
        try:
            spec = importlib.util.spec_from_file_location(modname, path)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        except (ImportError, OSError) as e:
            raise BuildError(f"the compiled library {path} cannot be loaded: {e}") from None
        _loaded[modname] = mod
    return mod.lib, mod.ffi
