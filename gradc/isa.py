"""The vector unit the generated C is tuned for: its register width and count.

The C target sizes its register tiles (how many outputs of a contraction one pass over the reduced
operand computes) so that the accumulators fit in the vector registers. What the compiler will
target is read from its own predefined macros under the build flags (``cc -march=native -dM -E``),
never assumed: these machines change kind between sessions (AVX2 one day, AVX-512 the next).

The result goes into the cache key (``gradc.build.c_identity``), so a cache shared between
machines never serves a library tiled, or compiled, for another vector unit.

Example::

    >>> from gradc.isa import ISA, GENERIC
    >>> ISA("avx2", 32, 16).tile_budget(lanes=16, real_bytes=4)   # float32: 2 registers a lane block
    6
    >>> GENERIC.name
    'generic'
"""
import functools
import os
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class ISA:
    name: str           # "avx512", "avx2", "neon", "sse2", "generic"
    vector_bytes: int   # one vector register
    registers: int      # vector registers the compiler can allocate

    def tile_budget(self, lanes, real_bytes):
        """How many accumulators of a block of ``lanes`` samples fit in the registers, keeping
        four for the operands a step loads and broadcasts."""
        per_acc = max(1, -(-lanes * real_bytes // self.vector_bytes))
        return max(1, (self.registers - 4) // per_acc)


# what each vector extension gives the compiler (x86-64 AVX-512: 32 zmm; AVX/AVX2: 16 ymm;
# AArch64 NEON: 32 q registers; SSE2: 16 xmm); without a known unit, tiles as for SSE2
_TABLE = (("__AVX512F__", ISA("avx512", 64, 32)), ("__AVX2__", ISA("avx2", 32, 16)),
          ("__AVX__", ISA("avx", 32, 16)), ("__aarch64__", ISA("neon", 16, 32)),
          ("__ARM_NEON", ISA("neon", 16, 16)), ("__SSE2__", ISA("sse2", 16, 16)))
GENERIC = ISA("generic", 16, 16)


def from_macros(text):
    """The ISA that a compiler's predefined macros (``-dM -E`` output) announce."""
    defined = {line.split()[1] for line in text.splitlines() if line.startswith("#define ") and len(line.split()) > 1}
    for macro, isa in _TABLE:
        if macro in defined:
            return isa
    return GENERIC


@functools.lru_cache(maxsize=None)
def _probe(cc, flags):
    try:
        p = subprocess.run([cc, *flags, "-dM", "-E", "-x", "c", os.devnull],
                           capture_output=True, text=True, errors="replace", timeout=60)
    except (OSError, subprocess.SubprocessError):
        return GENERIC
    return from_macros(p.stdout) if p.returncode == 0 else GENERIC


# what the C target compiles with to target this machine's vector unit (gradc.build adds it to its flags)
ARCH_FLAGS = ("-march=native",)


def host():
    """The vector unit the C target builds for on this machine (``$CC`` or ``cc`` with
    ``ARCH_FLAGS``); set ``GRADC_ISA`` to avx512, avx2, avx, neon, sse2 or generic to tile for
    another one."""
    forced = os.environ.get("GRADC_ISA")
    if forced:
        for _, isa in _TABLE + (("", GENERIC),):
            if isa.name == forced:
                return isa
        raise ValueError(f"GRADC_ISA must be one of avx512, avx2, avx, neon, sse2, generic, not {forced!r}")
    cc = shutil.which(os.environ.get("CC", "cc"))
    return _probe(cc, ARCH_FLAGS) if cc else GENERIC
