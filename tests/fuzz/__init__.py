"""Random well-formed gradc models, and the checks the fuzz tests run on them.

Three parts, each importing only the ones before it (no cycles):

* ``oracle.py``: what a model must compute, independently of gradc. Element-wise
  SymPy expressions (``symbols``, ``emap``, ``scalar_array``, ``gather``; the
  references of the layers as PyTorch defines them: ``conv``, ``max_pool``, ``avg_pool``,
  ``normalize``, ``rms_normalize``, ``gru_cell``, ``lstm_cell``),
  evaluated by ``sympy.lambdify`` in numpy (``oracle``), at values from
  ``draw_values``.
* ``generator.py``: the random model writer (``Gen``, the operation tables
  ``UNARY``, ``POS_UNARY``, ``NARY``, ``ACTIVATIONS``, ``KNOWN_BUGS``; ``NEW_OPS`` the
  steps over NumPy habits, zero padding and ``gradc.layers``): each ``FuzzCase`` holds the
  model's source text and, built alongside with the oracle's helpers, its
  expected outputs and loss. ``fuzz_models()`` (hypothesis), ``random_case``,
  ``sample_cases`` (a fixed list).
* ``checks.py``: ``check_case`` compiles a case and compares it with finite
  differences, the oracle and its own float32 build; ``run_cases`` checks many
  in forked processes.

The names below are re-exported, so a test reads ``import fuzz`` (pytest puts tests/ on
``sys.path``) and ``fuzz.sample_cases``, ``fuzz.check_case`` ... Note that
``fuzz.oracle`` is the module; its function is ``fuzz.oracle.oracle``.
"""
from .oracle import ORACLE_MODULES, draw_values, emap, gather, scalar_array, symbols
from .generator import (ACTIVATIONS, HAVE_LAYERS, HEADER, KNOWN_BUGS, NARY, NARY_BY_NAME, NEW_OPS, POS_LO,
                        POS_UNARY, UNARY, UNARY_BY_NAME, DataDecl, FuzzCase, Gen, Node, fuzz_models, random_case,
                        sample_cases, uses)
from .checks import (F32_FLOOR, F32_RTOL, FD_FLOOR, FD_RTOL, FWD_FLOOR, FWD_RTOL, MAX_COORDS, check_case,
                     check_gradient, close, coords_of, default_jobs, finite_differences, rel_err, run_cases)

__all__ = ["ORACLE_MODULES", "draw_values", "emap", "gather", "scalar_array", "symbols",
           "ACTIVATIONS", "HAVE_LAYERS", "HEADER", "KNOWN_BUGS", "NARY", "NARY_BY_NAME", "NEW_OPS", "POS_LO",
           "POS_UNARY", "UNARY", "UNARY_BY_NAME", "DataDecl", "FuzzCase", "Gen", "Node", "fuzz_models",
           "random_case", "sample_cases", "uses",
           "F32_FLOOR", "F32_RTOL", "FD_FLOOR", "FD_RTOL", "FWD_FLOOR", "FWD_RTOL", "MAX_COORDS", "check_case",
           "check_gradient", "close", "coords_of", "default_jobs", "finite_differences", "rel_err", "run_cases"]
