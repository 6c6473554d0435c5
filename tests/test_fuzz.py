"""Property-based fuzzing: random well-formed models, compiled and checked.

``fuzz.fuzz_models()`` (a hypothesis strategy) writes small random models
with the public API: random DAGs of every supported function over scalar and
indexed stages, ``sp.Sum`` reductions, ``@``, gathers by int32 inputs,
several outputs, regularization. For each model:

(a) the float64 gradient of ``loss_and_grad`` matches finite differences of
    ``loss`` (a 5-point stencil, 1e-5 relative; at most 30 coordinates);
(b) ``forward`` and ``loss`` match ``sympy.lambdify`` of the generator's OWN
    record of every element as a SymPy expression (not gradc's lowering);
(c) on every 5th model, the float32 build matches the float64 build (1e-3).

The default run checks 50 models: a fixed list (``fuzz.sample_cases``, the
same generator driven by a seeded ``random.Random``, steered to cover every
operation), so CI is deterministic; they run in parallel over the available
cores (``GRADC_FUZZ_JOBS``). The slow tests check 1,000 more models the same way
(``-m slow``), and 100 drawn by the hypothesis strategy itself, which shrinks a
failure to a small model. A failing model prints its source, ready to become a
regression test in test_fuzz_regressions.py. The default models also draw NumPy habits
(slices, new axes, axis sums, reshapes, broadcasting), zero padding as a guarded read and
``gradc.layers``; test_fuzz_layers.py checks 40 more models that each use one of those.

Run: ``python -m pytest -q tests/test_fuzz.py`` (add ``-m slow -s`` for the long runs).
"""
import os
import time

import pytest
import sympy as sp

pytest.importorskip("hypothesis")

import gradc as gc  # noqa: E402
from hypothesis import HealthCheck, given, reject, settings  # noqa: E402

import fuzz  # noqa: E402

N_DEFAULT = int(os.environ.get("GRADC_FUZZ_MODELS", "50"))
N_SLOW = int(os.environ.get("GRADC_FUZZ_SLOW_MODELS", "1000"))


def _fail(case, status, msg):
    if status == "skipped":
        pytest.skip(msg)
    if status == "failed":
        pytest.fail(f"{case!r}\n{msg}", pytrace=False)


@pytest.fixture(scope="module")
def default_run():
    """Every default model checked once, in parallel: {index: (case, status, message)}."""
    cases = fuzz.sample_cases(N_DEFAULT, label="default")
    return {i: (cases[i], status, msg) for i, status, msg, _ in fuzz.run_cases(cases)}


@pytest.mark.parametrize("i", range(N_DEFAULT))
def test_random_model(default_run, i):
    _fail(*default_run[i])


def test_default_models_cover_the_generator(default_run):
    """The fixed default list exercises every family of construct (a generator change that loses one fails here)."""
    seen = set().union(*[case.features for case, _, _ in default_run.values()])
    for feature in ("int32_input", "embedding", "gather_bag", "explicit_Sum", "matmul_op", "explicit_matmul",
                    "logsumexp", "softmax", "output", "regularize", "materialize", "stack", "transpose",
                    "style_lazy", "style_define", "style_map", "loss_xent_int"):
        assert feature in seen, f"no default model exercises {feature!r}"
    unary = {u[0] for u in fuzz.UNARY} | {"pos_" + u[0] for u in fuzz.POS_UNARY}
    nary = {o[0] for o in fuzz.NARY}
    assert len(seen & unary) >= 0.8 * len(unary), f"default models miss {sorted(unary - seen)}"
    assert len(seen & nary) >= 0.8 * len(nary), f"default models miss {sorted(nary - seen)}"
    # the NumPy habits, zero padding as a guarded read and gradc.layers (test_fuzz_layers.py draws more)
    for feature in ("view_slice", "view_negative_index", "view_newaxis", "view_ellipsis", "view_sum_axis",
                    "view_mean_axis", "view_reshape", "broadcast_trailing", "broadcast_outer", "pad_read",
                    "pad_redundant", "pad_function"):
        assert feature in seen, f"no default model exercises {feature!r}"
    if fuzz.HAVE_LAYERS:
        for feature in ("conv1d", "conv2d", "conv_stride", "conv_dilation", "conv_groups", "conv_same",
                        "max_pool2d", "avg_pool1d", "global_avg_pool", "layer_norm", "group_norm", "rms_norm",
                        "gru_cell", "lstm_cell", "unroll_gru", "unroll_lstm", "pad_layers", "layers_flatten"):
            assert feature in seen, f"no default model exercises {feature!r}"
        acts = {"act_" + a[0] for a in fuzz.ACTIVATIONS}
        assert len(seen & acts) >= 0.8 * len(acts), f"default models miss {sorted(acts - seen)}"


def test_oracle_is_independent_of_gradc():
    """The oracle's expressions hold only element symbols and SymPy functions: no gradc tensors or stages."""
    case = fuzz.sample_cases(1, label="oracle")[0]
    exprs = [case.loss, case.reg] + [e for _, el in case.outputs for e in el.ravel()] + \
        [e for _, el in case.lets for e in el.ravel()]
    names = {s.name for e in exprs for s in e.free_symbols}
    assert all(n[:2] in ("P_", "X_", "Y_", "I_", "T_") for n in names), sorted(names)
    assert not any(e.has(sp.Indexed, sp.Sum) for e in exprs)


@pytest.mark.slow
def test_1000_random_models():
    """N_SLOW models (default 1,000); every one is checked, failures are listed together at the end."""
    t0 = time.perf_counter()
    cases = fuzz.sample_cases(N_SLOW, label="slow")
    counts, failures = {"passed": 0, "failed": 0, "skipped": 0}, []
    for done, (i, status, msg, dt) in enumerate(fuzz.run_cases(cases), 1):
        counts[status] += 1
        if status == "failed":
            failures.append((i, msg))
            print(f"\n==== model {i} FAILED ({dt:.1f} s)\n{cases[i]!r}\n{msg}", flush=True)
        if done % 50 == 0:
            print(f"[fuzz] {done}/{len(cases)} models, {counts}, {time.perf_counter() - t0:.0f} s", flush=True)
    summary = (f"[fuzz] {len(cases)} models: {counts['passed']} passed, {counts['failed']} failed, "
               f"{counts['skipped']} skipped (loss cancelled out), {time.perf_counter() - t0:.0f} s")
    print(summary, flush=True)
    assert not failures, summary + "\nfailed models: " + ", ".join(str(i) for i, _ in failures)


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("GRADC_FUZZ_SHRINK_MODELS", "100")), deadline=None,
          derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(case=fuzz.fuzz_models())
def test_random_models_hypothesis_shrinks(case):
    """The same check driven by hypothesis itself: a failure is shrunk to a small model before it is shown."""
    try:
        fuzz.check_case(case)
    except gc.ModelError as e:
        if "depends on no parameter" not in str(e):
            raise
        reject()                # the loss cancelled out: not a well-formed model
