"""One module per framework: ``build_<name>(wl, ...)`` returns a ``timing.Runner`` or raises ``timing.Skip``."""
from .casadi_peer import build_casadi
from .gradc_peer import build_gradc
from .jax_peer import build_jax
from .micrograd_peer import build_micrograd
from .numpy_peer import build_numpy
from .torch_peer import build_torch, build_torch_compile, torch_lenet, torch_mf, torch_mlp

__all__ = ["build_casadi", "build_gradc", "build_jax", "build_micrograd", "build_numpy", "build_torch",
           "build_torch_compile", "torch_lenet", "torch_mf", "torch_mlp"]
