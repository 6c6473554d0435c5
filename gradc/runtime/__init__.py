"""The generated module's Python side: numpy in, numpy out. Imports no SymPy.

A build hands the runtime a ``ModuleMeta`` (``meta.py``); the runtime class of the model's target
(named by the target registry, ``gradc.targets``: ``CModule`` in ``c.py``, ``CudaModule`` in
``cuda.py``) loads the extension and
implements the module contract, with parameters as ``Params`` (``params.py``); ``bind`` and
``as_module`` (``module.py``) put it into a module. Already generated modules call
``gradc.runtime.bind``.

Example::

    from gradc.runtime import as_module, runtime_of
    mod = as_module(entry, meta)
    p = mod.init_params(seed=0)
    L, g = mod.loss_and_grad(p, x=X, y=Y)
    runtime_of(mod).info.n_params
"""
from .c import CModule
from .cuda import CudaModule, DeviceArray, DeviceParams
from .memory import check_alloc, physical_memory
from .meta import ArgMeta, ModuleMeta, OutputMeta, ParamMeta
from .module import EXPORTS, as_module, bind, runtime_class, runtime_of
from .params import Params
from .updates import adam_apply_scalars, adam_bias_correction, adam_hyper, checked_rate

#: the C runtime class under its earlier name
Compiled = CModule

__all__ = ["ArgMeta", "CModule", "Compiled", "CudaModule", "DeviceArray", "DeviceParams", "EXPORTS",
           "ModuleMeta", "OutputMeta", "ParamMeta", "Params", "adam_apply_scalars", "adam_bias_correction",
           "adam_hyper", "as_module", "bind", "check_alloc", "checked_rate", "physical_memory",
           "runtime_class", "runtime_of"]
