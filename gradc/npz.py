"""One safe reader for the ``.npz`` files gradc is given: training data, checkpoints, weights.

``numpy.load`` trusts the file: a 450-byte ``.npy`` header may declare a 2 TiB array, and a
2 MiB zip bomb is decompressed in full before anything is checked. ``read_npz`` checks first and
allocates after:

- every member's declared size (``.npy`` header: shape and dtype) must agree with the size the
  zip says it decompresses to, and that size with what its compressed bytes can hold (stored:
  equal; deflate: at most 1032 times);
- the total must fit ``limit_bytes`` (by default this machine's memory, or its cgroup's limit);
- only plain numeric arrays are read (no objects, no pickles, no structured or string dtypes);
- data are read in bounded chunks straight into the array, and the zip's CRC is checked.

Any failure, whatever its kind deep inside ``zipfile``, ``zlib`` or ``numpy``, becomes one
``ValueError`` naming the file.

Example::

    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "d.npz")
    >>> np.savez(path, x=np.arange(3.0))
    >>> read_npz(path, "--data")["x"]
    array([0., 1., 2.])
"""
import math
import os
import zipfile

import numpy as np
from numpy.lib import format as _fmt

from .runtime import memory as _memory

# deflate never expands more than 1032:1 (RFC 1951: a 258-byte match per 2 bits at best)
_DEFLATE_MAX_RATIO = 1032
_CHUNK = 1 << 20
_HEADER_MAX = 10000          # numpy's own default bound on an .npy header


class NpzError(ValueError):
    """An .npz file that cannot be read safely; the message names the file, ``why`` says the rest."""

    def __init__(self, message, why=""):
        super().__init__(message)
        self.why = why or message


def _cgroup_limit():
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(p) as f:
                v = f.read().strip()
        except OSError:
            continue
        if v.isdigit() and int(v) < 1 << 60:
            return int(v)
    return None


def machine_bytes():
    """The most memory an array read from a file may take: physical memory, or the cgroup's limit.

    None when neither is known. Example: ``machine_bytes() / 2**30`` (GiB).
    """
    mems = [m for m in (_memory.physical_memory(), _cgroup_limit()) if m]
    return min(mems) if mems else None


def _gib(n):
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n:,} bytes"


def _read_header(f, name, bad):
    version = _fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = _fmt.read_array_header_1_0(f, max_header_size=_HEADER_MAX)
    elif version == (2, 0):
        shape, fortran, dtype = _fmt.read_array_header_2_0(f, max_header_size=_HEADER_MAX)
    else:
        raise bad(f"member {name!r} is an .npy of version {version}, which gradc does not read")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape):
        raise bad(f"member {name!r} declares an invalid shape {shape!r}")
    if dtype.hasobject:
        raise bad(f"member {name!r} holds Python objects (a pickle), which gradc never loads")
    if dtype.kind not in "biufc" or dtype.fields is not None or dtype.subdtype is not None:
        raise bad(f"member {name!r} holds {dtype} values; gradc reads numbers only")
    return shape, bool(fortran), dtype


def _read_member(zf, info, name, bad):
    with zf.open(info) as f:
        shape, fortran, dtype = _read_header(f, name, bad)
        header = f.tell()
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if info.file_size != header + nbytes:
            raise bad(f"member {name!r} declares {_gib(nbytes)} of {dtype} data {shape}, but the zip "
                      f"says it holds {_gib(max(info.file_size - header, 0))}")
        a = np.empty(count, dtype=dtype)
        buf = memoryview(a).cast("B") if nbytes else memoryview(bytearray())
        got = 0
        while got < nbytes:
            chunk = f.read(min(_CHUNK, nbytes - got))
            if not chunk:
                raise bad(f"member {name!r} ends after {got:,} of its {nbytes:,} bytes")
            buf[got:got + len(chunk)] = chunk
            got += len(chunk)
        if f.read(1):                           # reaching the end also checks the CRC
            raise bad(f"member {name!r} holds more than its header declares")
    if fortran:
        return a.reshape(shape[::-1]).transpose()
    return a.reshape(shape)


def read_npz(path, what, limit_bytes=None):
    """The arrays of the .npz file ``path`` as a dict, checked before anything large is allocated.

    ``what`` names the file's role in messages (``"--data"``, ``"checkpoint"``); ``limit_bytes``
    bounds the total decompressed size (default: ``machine_bytes()``). Raises ``NpzError`` (a
    ``ValueError``) naming the file.

    Example: ``data = read_npz("data.npz", "--data")``.
    """
    label = f"{what} {os.fspath(path)}" if what else os.fspath(path)

    def bad(why):
        return NpzError(f"{label}: {why}", why)

    try:
        size = os.path.getsize(path)
        if not zipfile.is_zipfile(path):
            raise bad("not an .npz file (not a zip archive)")
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            limit = limit_bytes if limit_bytes is not None else machine_bytes()
            seen, total, packed = set(), 0, 0
            for info in infos:
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                if name in seen:
                    raise bad(f"member {name!r} appears twice")
                seen.add(name)
                if info.flag_bits & 0x1:
                    raise bad(f"member {name!r} is encrypted")
                if info.compress_type == zipfile.ZIP_STORED:
                    if info.file_size != info.compress_size:
                        raise bad(f"member {name!r} is stored uncompressed, yet its sizes differ")
                elif info.compress_type == zipfile.ZIP_DEFLATED:
                    if info.file_size > info.compress_size * _DEFLATE_MAX_RATIO + 1024:
                        raise bad(f"member {name!r} claims {_gib(info.file_size)} from "
                                  f"{_gib(info.compress_size)} of compressed data, more than deflate can hold")
                else:
                    raise bad(f"member {name!r} uses compression method {info.compress_type}; "
                              "gradc reads stored or deflated members")
                total += info.file_size
                packed += info.compress_size
            if packed > size:
                raise bad(f"its members claim {_gib(packed)} of data in a file of {_gib(size)}")
            if limit and total > limit:
                bound = (f"the {_gib(limit)} it may hold" if limit_bytes is not None
                         else f"this machine's {_gib(limit)} of memory")
                raise bad(f"it would decompress to {_gib(total)}, more than {bound}")
            out = {}
            for info in infos:
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                out[name] = _read_member(zf, info, name, bad)
            return out
    except NpzError:
        raise
    except OSError as e:
        if not isinstance(e, zipfile.BadZipFile) and e.strerror:
            raise bad(f"cannot read it ({e.strerror})") from None
        raise bad(f"not a readable .npz file ({str(e).strip() or type(e).__name__})") from None
    except MemoryError:
        raise bad("not enough memory to read it") from None
    except Exception as e:         # zipfile, zlib, struct, numpy's header parser: any damage
        why = str(e).strip() or type(e).__name__
        if "pickle" in why.lower():
            why = "it holds Python objects"
        raise bad(f"not a readable .npz file ({why})") from None
