"""The targets gradc compiles for, one registered object each: the one place a target is named.

A ``Target`` says where its parts live: the builder that renders a program (``gradc.codegen.c``),
its template folder, the file suffix of its source, the function that compiles that source into a
loadable library and the one that says what of the toolchain goes into the cache key (both in
``gradc.build``), and the runtime class that wraps the library (``gradc.runtime``). The parts are
named as ``"module:attribute"`` and imported on first use, so that asking which runtime serves a
target (what a generated module does when it is imported) does not import SymPy or a compiler.

``api``, ``build``, ``cli``, the cache key and the runtime all ask this registry; adding a target is
one builder module, one template folder and one ``register`` call here.

Example::

    >>> from gradc.targets import get_target, names
    >>> names()
    ('c', 'cuda')
    >>> get_target("cuda").suffix
    '.cu'
"""
import importlib
from dataclasses import dataclass

from .errors import ModelError


@dataclass(frozen=True)
class Target:
    """One compilation target. ``builder``, ``compiler``, ``identity`` and ``runtime`` are
    ``"module:attribute"`` references (see the module docstring)."""
    name: str
    suffix: str             # of the generated source: ".c", ".cu"
    templates: str          # folder under gradc/templates
    builder: str            # render(prog, grad, dtype) -> codegen Source
    compiler: str           # compile(src, tmp, modname, wrapper, so_name) -> the files to keep
    identity: str           # identity() -> (cache-key label, the toolchain's part of the key)
    runtime: str            # the module class: Compiled(entry, meta)
    description: str = ""

    def part(self, which):
        """The object a reference names, imported now: ``get_target("c").part("builder")``."""
        mod, attr = getattr(self, which).split(":")
        return getattr(importlib.import_module(mod), attr)

    def render(self, prog, grad, dtype):
        """The ``Source`` of ``prog`` and its gradient for this target."""
        return self.part("builder")(prog, grad, dtype)


_REGISTRY = {}


def register(target):
    """Add a target (a name already taken is replaced, so a plugin may override a built-in one)."""
    _REGISTRY[target.name] = target
    return target


def names():
    """The registered targets' names, in registration order."""
    return tuple(_REGISTRY)


def get_target(name):
    """The target called ``name``; ``ModelError`` listing the others when there is none."""
    t = _REGISTRY.get(name)
    if t is None:
        raise ModelError(f"target must be one of {', '.join(names())}, not {name!r}", where=None)
    return t


register(Target("c", ".c", "c", builder="gradc.codegen.c:render", compiler="gradc.build:compile_c",
                identity="gradc.build:c_identity", runtime="gradc.runtime.c:CModule",
                description="portable C99, built with the C compiler (cc or $CC)"))
register(Target("cuda", ".cu", "cuda", builder="gradc.codegen.cuda:render_cuda",
                compiler="gradc.build:compile_cuda", identity="gradc.build:cuda_identity",
                runtime="gradc.runtime.cuda:CudaModule",
                description="CUDA C++ for NVIDIA GPUs, built with nvcc"))
