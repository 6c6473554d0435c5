"""The parts of ``bench/workloads.py``, the benchmark of gradc and its peers on the shared workloads.

Each part imports only the ones listed before it:

* ``lenet_numpy``: W6's LeNet-5 in numpy by hand (numpy only), the numpy peer of W6 and the float64
  reference of its generated data;
* ``definitions``: the six workloads (``Workload``, ``workloads()``), their data (``load_data`` from
  ``../shared/workloads``, or ``generate_data`` by the same recipes), the peers' names and labels;
* ``timing``: one framework's training step on one workload (``Runner``; ``Skip`` when a peer cannot
  run here), the loss check against gradc's, W6's check against its stored float64 losses, the
  interleaved timing, the machine's GEMM rate, the pinning to one core;
* ``peers/``: one module per framework, each a ``build_<name>(wl)`` that returns a ``Runner``
  (gradc, numpy by hand, PyTorch eager, torch.compile, JAX jit, micrograd, CasADi code generation);
* ``report``: the Markdown report, the chart and the run's metadata (versions, commit, CPU).

Importing this package sets one thread everywhere (the variables below are read by BLAS, OpenMP and
XLA when they are first imported), so a script imports it before numpy.
"""
import os

# one thread everywhere; these must be set before numpy (and its BLAS) is imported
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
           "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
