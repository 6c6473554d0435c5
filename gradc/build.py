"""Compile generated C into a Python extension with cffi, through a content-hash cache.

The cache key hashes what determines the artifact: the model's canonical
stages, the dtype and target, the templates, the compiler (its path, size and
mtime: no compiler run on a warm load) and its flags, and the gradc version.
A warm load therefore needs neither differentiation nor a compiler.

An entry is built in a private temporary folder and published with one
``rename``; a process that loses the race uses the winner's entry. On load
the hashes stored in ``meta.json`` are checked against the files and the stored key
against the key asked for; a truncated, altered or swapped entry is rebuilt.

Trust: the cache folder is created private (0700); a folder owned by another user or
writable by group or others is refused with a warning (a private temporary folder is
used instead), and an entry whose folder or files another user owns or could write is
never loaded, since loading a library runs its code in this process. A loader holds a
shared ``flock`` on its entry from the check until the library is in memory; eviction
takes the lock exclusively and skips entries in use, so ``build`` returns an entry whose
library is already loaded (a later eviction cannot take it away). Writing the cache
(full disk, quota, read-only) and a compiler that runs past ``$GRADC_COMPILE_TIMEOUT``
seconds raise ``BuildError`` naming the folder or the limit.

Example::

    entry, meta = build(prog, "float64", "c", make_source)   # cached; compiles on a miss
    lib, ffi = load_extension(entry, meta)                   # already in memory: no disk access
"""
import contextlib
import errno
import hashlib
import io
import importlib.machinery
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import uuid
import warnings

try:
    import fcntl
except ImportError:                # Windows: no locks; a vanished entry is rebuilt instead
    fcntl = None

from ._version import __version__
from .errors import BuildError
from .isa import ARCH_FLAGS, host

FLAGS = ["-O3", *ARCH_FLAGS, "-fPIC", "-fno-math-errno", "-fopenmp-simd", "-DGRADC_SIMD"]


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
    return "c", cc_id + " " + " ".join(flags(cc_id)) + " isa " + host().name    # the tiles are sized for it


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


def _euid():
    return os.geteuid() if hasattr(os, "geteuid") else None


def _untrusted(st, what="folder"):
    """Why a file or folder with ``os.stat`` result ``st`` cannot be trusted, or "" when it can: it
    must be this user's and writable by no one else (a library there runs in this process).

    Example: ``_untrusted(os.stat(root))`` is "" for a folder gradc made, and
    "is writable by group and others (mode 0o1777)" for ``/tmp``.
    """
    uid = _euid()
    if uid is None:
        return ""
    if st.st_uid != uid:
        return f"is owned by another user (uid {st.st_uid}, not {uid})"
    if st.st_mode & 0o022:
        who = {0o020: "group", 0o002: "others", 0o022: "group and others"}[st.st_mode & 0o022]
        return f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):#o})"
    return ""


def _writable_root():
    """The cache folder to use: ``cache_root()``, created private (0700), when this user owns it, no
    one else can write it and it can be written; else a private temporary folder, with a warning."""
    root = cache_root()
    try:
        os.makedirs(os.path.dirname(root), exist_ok=True)
        try:
            os.mkdir(root, 0o700)
        except FileExistsError:
            pass
        st = os.stat(root)
        why = "is not a folder" if not stat.S_ISDIR(st.st_mode) else _untrusted(st)
        if why:
            fallback = _private_fallback()
            warnings.warn(f"gradc cache folder {root} {why}: refusing it, since another user could put a "
                          f"library there that would run in this process; using {fallback} (make the "
                          f"folder yours with mode 0700, or set GRADC_CACHE_DIR)", stacklevel=3)
            return fallback
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
        if stat.S_ISDIR(st.st_mode) and not _untrusted(st):
            return path
    except OSError:
        pass
    return tempfile.mkdtemp(prefix="gradc-cache-")


def _meta_digest(meta):
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def entry_ok(entry, key=None):
    """The entry's metadata when it is complete and unaltered (meta.json and every file it
    lists match their stored hashes) and, given ``key``, was built for that key; else None.

    Example: ``entry_ok(entry, key)`` is None for another model's entry moved to this name.
    """
    try:
        with open(os.path.join(entry, META)) as f:
            meta = json.load(f)
        if meta.get("meta_sha256") != _meta_digest(meta):
            return None
        if key is not None and meta.get("key") != key:
            return None
        for fname, digest in meta["files"].items():
            if _sha256_file(os.path.join(entry, fname)) != digest:
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _trusted_files(entry, meta):
    """True when meta.json and every file of the entry are plain files of this user's that no one
    else can write (a folder or file someone else controls is never loaded)."""
    try:
        for fname in [META, *meta["files"]]:
            st = os.lstat(os.path.join(entry, fname))
            if not stat.S_ISREG(st.st_mode) or _untrusted(st):
                return False
        return True
    except (OSError, KeyError, TypeError, AttributeError):
        return False


def _open_dir(path):
    """A descriptor of the folder ``path`` (not of a link) to lock; None where folders cannot be
    opened (Windows: there a vanished entry is rebuilt instead). Raises OSError when it is not there."""
    if fcntl is None:
        if not os.path.isdir(path) or os.path.islink(path):
            raise FileNotFoundError(errno.ENOENT, "no folder", path)
        return None
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def _close(fd):
    if fd is not None:
        os.close(fd)


def _fstat(fd, path):
    return os.fstat(fd) if fd is not None else os.lstat(path)


def _same(fd, path):
    try:
        return os.path.samestat(_fstat(fd, path), os.lstat(path))
    except OSError:
        return False


def _load_pinned(entry, key, fd=None):
    """The meta of ``entry`` with its library loaded into this process, when the entry is trusted,
    complete and built for ``key``; None when it is missing, bad or vanished meanwhile (a miss).

    The entry's folder is held with a shared lock from the checks until the library is loaded,
    so eviction by another process (which takes it exclusively) waits or skips it.
    ``fd``: a descriptor of the folder, already locked, that the caller keeps and closes.
    """
    own = fd is None
    if own:
        try:
            fd = _open_dir(entry)
        except OSError:
            return None
    try:
        if own and fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)     # an evictor holds it exclusively only for a rename
        st = _fstat(fd, entry)
        if not _same(fd, entry) or not stat.S_ISDIR(st.st_mode) or _untrusted(st):
            return None
        meta = entry_ok(entry)
        if meta is None or meta.get("key") != key or not _trusted_files(entry, meta):
            return None
        try:
            load_extension(entry, meta)
        except BuildError:
            if os.path.isfile(os.path.join(entry, meta["so"])) and _same(fd, entry):
                raise
            return None                         # removed under us (bypassing the lock): rebuild
        return meta
    finally:
        if own:
            _close(fd)


_ATTEMPTS = 8


def build(prog, dtype="float64", target="c", make_source=None):
    """The cache entry (a folder) for ``prog``, compiling it on a miss, with its library loaded.

    ``make_source()`` is called only on a miss; it returns a ``Source`` and
    the module metadata (a dict), so that a hit costs no differentiation.
    Returns (entry folder, meta dict); ``load_extension(entry, meta)`` then needs no disk
    access, so an entry evicted by another process after ``build`` returns does no harm.

    Example::

        entry, meta = build(prog, "float64", "c", make_source)
        lib, ffi = load_extension(entry, meta)
    """
    from .codegen.c import template_digest
    key = cache_key(prog, dtype, target, template_digest(target))
    root = _writable_root()
    entry = os.path.join(root, f"{_safe(prog.name)}-{key[:24]}")
    made = None
    for _ in range(_ATTEMPTS):
        meta = _load_pinned(entry, key)
        if meta is not None:
            _touch(entry)
            if made is not None:
                evict(root, keep=entry)
            return entry, meta
        # a corrupt, untrusted or swapped entry is replaced when ours is published (below), and
        # only if it is still bad then: another process may be repairing it right now
        if made is None:
            _sweep(root)
            made = make_source()
        meta = _publish(made, key, root, entry)
        if meta is not None:
            evict(root, keep=entry)
            return entry, meta
    raise BuildError(f"the cache entry {entry} kept vanishing while it was loaded ({_ATTEMPTS} tries): "
                     "other processes evict it as fast as it is built; raise GRADC_CACHE_MAX_BYTES")


def _publish(made, key, root, entry):
    """Compile into a private temporary folder and rename it to ``entry``; returns the meta with the
    library loaded (ours, or a good one another process published first), or None when the entry
    vanished before it could be loaded. An OSError writing the cache becomes a BuildError."""
    src, info = made
    tmp = None
    try:
        tmp = tempfile.mkdtemp(prefix=".build-", dir=root)
        _compile(src, info, key, tmp)
        fd = _open_dir(tmp)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)     # held across the rename: no one evicts it before we load
            for _ in range(_ATTEMPTS):
                try:
                    os.rename(tmp, entry)
                except OSError:
                    # another process published first: use its entry if it is good; a bad one is
                    # replaced, even while someone checks it (they find it bad, or gone, and retry)
                    other = _load_pinned(entry, key)
                    if other is not None:
                        return other
                    _discard(entry, root, force=True)
                    continue
                tmp = None
                return _load_pinned(entry, key, fd=fd)
            return None
        finally:
            _close(fd)
    except OSError as e:
        raise _write_error(e, root) from None
    finally:
        if tmp is not None and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _write_error(e, root):
    code = errno.errorcode.get(e.errno, "")
    where = f" ({e.filename})" if e.filename else ""
    return BuildError(f"cannot write the gradc cache folder {root}{where}: {e.strerror or e}"
                      f"{f' [{code}]' if code else ''}; free some space there or set GRADC_CACHE_DIR "
                      "to a folder that can be written")


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
    """Delete least recently used entries until the cache holds at most ``limit`` bytes.

    Safe under any concurrency: entries that vanish meanwhile are skipped, ``keep`` and entries
    another process is loading (locked) are never removed.

    Example: ``evict(root, keep=entry, limit=0)`` leaves only ``entry`` (and entries in use).
    """
    limit = max_cache_bytes() if limit is None else limit
    entries = []
    try:
        names = os.listdir(root)
    except OSError:
        return
    for n in names:
        p = os.path.join(root, n)
        if n.startswith("."):
            continue
        try:
            st = os.lstat(p)
            if not stat.S_ISDIR(st.st_mode):
                continue
            size = 0
            for f in os.listdir(p):
                try:
                    size += os.lstat(os.path.join(p, f)).st_size
                except OSError:
                    pass
            entries.append((st.st_mtime, size, p))
        except OSError:
            continue
    try:
        keep_st = os.stat(keep) if keep is not None else None
    except OSError:
        keep_st = None
    total = sum(e[1] for e in entries)
    for _, size, p in sorted(entries):
        if total <= limit:
            break
        if keep is not None and os.path.abspath(p) == os.path.abspath(keep):
            continue
        try:
            if keep_st is not None and os.path.samestat(os.lstat(p), keep_st):
                continue
        except OSError:
            total -= size                       # gone already
            continue
        if _discard(p, root):
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


def _discard(path, root, force=False):
    """Move ``path`` out of the way and delete it; False when it is gone already or, unless ``force``
    (a bad entry), in use: another process holds its lock while loading it."""
    try:
        fd = _open_dir(path)
    except OSError:
        if os.path.islink(path):                # not ours to follow: remove the link itself
            with contextlib.suppress(OSError):
                os.unlink(path)
                return True
        return False
    trash = os.path.join(root, f".trash-{uuid.uuid4().hex}")
    try:
        if fcntl is not None and not force:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _same(fd, path):
            return False
        os.rename(path, trash)
    except OSError:
        return False
    finally:
        _close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def compile_timeout():
    """``$GRADC_COMPILE_TIMEOUT``: the seconds a compiler run may take (default 600); 0 or less: no limit.

    Example: ``GRADC_COMPILE_TIMEOUT=3600 gradc compile big.py`` for a very large model.
    """
    try:
        t = float(os.environ.get("GRADC_COMPILE_TIMEOUT", 600))
    except ValueError:
        return 600.0
    return t if t > 0 else None


def _kill(proc):
    # the compiler runs in its own process group: its children (cc1, as, ld) go with it
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except OSError:
        pass


def _compiler_run(cmd, what, M):
    """Run a compiler under the time limit; returns (exit status, its output). Raises BuildError when
    it cannot start or runs past the limit (it is killed, with its children)."""
    limit = compile_timeout()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                start_new_session=os.name == "posix")
    except OSError as e:
        raise BuildError(f"{what} {cmd[0]!r} cannot be run: {e}") from None
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill(proc)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out, err = "", ""
        raise BuildError(f"{what} did not finish on model {M!r} within the time limit of {limit:g} s "
                         f"and was stopped (set GRADC_COMPILE_TIMEOUT to more seconds for a very large "
                         f"model, or use the index style instead of unrolling):\n$ {' '.join(cmd)}\n{out}{err}") from None
    except BaseException:
        _kill(proc)
        proc.wait()
        raise
    return proc.returncode, out + err


def _run(cmd, what, M):
    code, output = _compiler_run(cmd, what, M)
    if code != 0:
        raise BuildError(f"{what} failed on model {M!r} (exit {code}):\n"
                         f"$ {' '.join(cmd)}\n{output}")


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
    code, output = _compiler_run(cmd, "the C compiler", M)
    if code != 0 or not os.path.isfile(os.path.join(tmp, so_name)):
        why = f"exit {code}" if code else "it exited 0 but wrote no library"
        raise BuildError(f"the C compiler failed on model {M!r} ({why}):\n"
                         f"$ {' '.join(cmd)}\n{output}")
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
    for fn in [*names, META]:                   # whatever the umask: writable by this user only
        p = os.path.join(tmp, fn)
        os.chmod(p, stat.S_IMODE(os.stat(p).st_mode) & ~0o022)
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
