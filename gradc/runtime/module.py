"""A compiled model as a Python module: the runtime class for its target, bound into a namespace.

``bind(namespace, entry, meta)`` fills a module namespace with the contract of DESIGN.md
(``param_shapes``, ``forward``, ``loss_and_grad``, ...); generated modules call it, and
``as_module`` makes the module object ``gradc.load`` returns. The runtime class of a target is
what the target registry (``gradc.targets``) names; ``runtime_of`` gives gradc's own code
(training, optimizers) the runtime object behind a module.

Example::

    mod = as_module(entry, meta)          # meta: a ModuleMeta or its JSON dict
    runtime_of(mod).info.n_params
"""
import types

from ..errors import ModelError
from ..targets import get_target
from .c import CModule
from .meta import ModuleMeta

#: the names ``bind`` puts into a module, beside ``target``, ``dtype``, ``name`` (and for cuda
#: ``to_device``, ``to_host``)
EXPORTS = ("param_shapes", "input_shapes", "target_shapes", "output_shapes", "input_dtypes",
           "target_dtypes", "init_params", "forward", "loss", "loss_and_grad", "loss_and_grad_weighted",
           "grad_norms", "loss_and_grad_clipped", "sgd_step", "adam_state", "adam_step", "set_threads")
_DEVICE_EXPORTS = ("to_device", "to_host")


def runtime_class(target):
    """The runtime class of modules built for ``target``.

    Example: ``runtime_class("cuda")`` is ``CudaModule``; an unknown target raises ``ValueError``.
    """
    try:
        return get_target(target).part("runtime")
    except ModelError:
        from ..targets import names
        raise ValueError(f"no runtime for target {target!r}; the targets are {', '.join(names())}") from None


def bind(namespace, entry, meta):
    """Fill ``namespace`` (a module's globals) with the module contract of a compiled model.

    ``entry`` is the folder holding the extension; ``meta`` a ``ModuleMeta`` or its JSON dict.
    Returns the runtime object.

    Example (what a generated module does)::

        bind(globals(), here, json.load(open(os.path.join(here, "moons.gradc.json"))))
    """
    if not isinstance(meta, ModuleMeta):
        meta = ModuleMeta.from_json(meta)
    rt = runtime_class(meta.target)(entry, meta)
    for name in _DEVICE_EXPORTS:
        if hasattr(rt, name):
            namespace[name] = getattr(rt, name)
    namespace["target"] = meta.target
    for name in EXPORTS:
        namespace[name] = getattr(rt, name)
    namespace["dtype"] = rt.dtype.type
    namespace["name"] = meta.name
    namespace["_compiled"] = rt
    return rt


def as_module(entry, meta, name=None):
    """A fresh module object holding the contract (what ``gradc.load`` returns).

    Example: ``mod = as_module(entry, meta); mod.init_params(seed=0)``.
    """
    if not isinstance(meta, ModuleMeta):
        meta = ModuleMeta.from_json(meta)
    mod = types.ModuleType(name or meta.name, f"gradc model {meta.name!r}")
    bind(mod.__dict__, entry, meta)
    return mod


def runtime_of(module):
    """The runtime object (a ``CModule`` or ``CudaModule``) behind a loaded module, or None for
    anything else. A runtime object passed in is returned as is.

    Example::

        rt = runtime_of(mod)
        rt.info.model_hash, rt.fill_masks(batch, rng)
    """
    if isinstance(module, CModule):
        return module
    rt = getattr(module, "_compiled", None)
    return rt if isinstance(rt, CModule) else None
