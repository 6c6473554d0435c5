"""Each example under examples/ reaches the number its docstring promises.

The examples are plain scripts; each one's ``main(argv)`` runs in-process
(imported by path) with its default settings, which take a few seconds.
"""
import importlib.util
import os

import pytest

from conftest import EXAMPLES


def run_example(name, argv=()):
    path = os.path.join(EXAMPLES, name, "train.py")
    spec = importlib.util.spec_from_file_location(f"gradc_example_{name}_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(list(argv))


@pytest.fixture(scope="module")
def moons(tmp_path_factory):
    png = tmp_path_factory.mktemp("moons") / "moons.png"
    return run_example("moons", ["--png", str(png)]), png


def test_moons_reaches_100_percent_training_accuracy(moons):
    acc, _ = moons
    assert acc == 1.0


def test_moons_draws_the_decision_boundary_png_when_matplotlib_is_installed(moons):
    _, png = moons
    if importlib.util.find_spec("matplotlib") is None:
        assert not png.exists()
        pytest.skip("matplotlib is not installed: no PNG is drawn")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed_mlp_reaches_95_percent_validation_accuracy():
    res = run_example("seed_mlp")
    assert res["val_accuracy"] >= 0.95


def test_digits_reaches_95_percent_test_accuracy():
    pytest.importorskip("sklearn")
    assert run_example("digits") >= 0.95


def test_recsys_factorization_beats_bias_only_which_beats_the_global_mean():
    res = run_example("recsys")
    assert res["factorization"] < res["bias_only"] < res["global_mean"]


def test_risk_reaches_roc_auc_099_with_both_models():
    pytest.importorskip("sklearn")
    res = run_example("risk")
    assert set(res) == {"logreg", "mlp"}
    for which, r in res.items():
        assert r["auc"] >= 0.99, which


def test_finetune_beats_training_from_scratch_by_10_points():
    res = run_example("finetune")
    assert res["finetuned"] >= res["scratch"] + 0.10
