"""examples/private_risk: DP-SGD's test ROC AUC against epsilon on a synthetic credit table (issue 16).

The example's default run (an MLP 12-16-1 trained six times on 15,000 applicants: without privacy
and at five noise multipliers) takes about 6 s on two cores, so these tests run it in full, twice
(once more through ``readme_table``, which also checks that the numbers are reproducible).

What is checked: the data look like the docstring says; epsilon shrinks as the noise grows and is
``gradc.privacy.epsilon`` of the steps taken, at an order inside the accountant's range; the
non-private run is at least as good as the best private one, the smallest noise costs little, and
at an epsilon between 1 and 3 the model is still clearly useful; the same seed gives the same bits,
whichever other runs are made; README.md's table, once it is pasted there, is the one the example
prints.
"""
import importlib.util
import math
import os
import warnings

import numpy as np
import pytest

from conftest import EXAMPLES, ROOT
from gradc import privacy


def _load_example():
    path = os.path.join(EXAMPLES, "private_risk", "train.py")
    spec = importlib.util.spec_from_file_location("gradc_example_private_risk_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ex():
    return _load_example()


@pytest.fixture(scope="module")
def result(ex):
    return ex.rows()


def _private(result):
    return [r for r in result if r["noise_multiplier"] is not None]


def test_the_data_look_like_a_credit_table(ex):
    X, y = ex.make_applicants()
    assert X.shape == (20_000, len(ex.FEATURES)) == (20_000, 12)
    assert 0.10 <= y.mean() <= 0.20
    X2, y2 = ex.make_applicants()
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    train, test = ex.load_split()
    assert len(train["y"]) == 15_000 and len(test["y"]) == 5_000
    np.testing.assert_allclose(train["x"].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(train["x"].std(0), 1, rtol=1e-12)
    util = ex.FEATURES.index("revolving_utilization")
    assert np.corrcoef(X[:, util], y)[0, 1] > 0.1        # the riskier, the more defaults


def test_epsilon_shrinks_as_the_noise_grows(result):
    private = _private(result)
    assert [r["noise_multiplier"] for r in private] == sorted(r["noise_multiplier"] for r in private)
    eps = [r["epsilon"] for r in private]
    assert all(a > b for a, b in zip(eps, eps[1:])), eps
    assert math.isinf(result[0]["epsilon"]) and result[0]["noise_multiplier"] is None


def test_epsilon_is_the_accountants_for_the_steps_taken(ex, result):
    cfg = ex.SETTINGS
    n = 15_000
    q = cfg["batch_size"] / n
    steps = cfg["epochs"] * round(n / cfg["batch_size"])
    for r in _private(result):
        assert r["sample_rate"] == q and r["steps"] == steps
        with warnings.catch_warnings():
            warnings.simplefilter("error")       # the final epsilon's best order is inside the range
            want, order = privacy.epsilon(q, r["noise_multiplier"], steps, cfg["delta"])
        assert r["epsilon"] == pytest.approx(want, rel=1e-12)
        assert 1.1 < order < 63
    assert cfg["delta"] < 1 / n
    # the table reaches the region the example is about: an epsilon between 1 and 3, and below 1
    assert any(1 <= r["epsilon"] <= 3 for r in result) and min(r["epsilon"] for r in result) < 0.5


def test_the_auc_degrades_gracefully_as_epsilon_shrinks(result):
    plain, private = result[0], _private(result)
    aucs = [r["auc"] for r in private]
    assert plain["auc"] >= max(aucs) - 0.005
    assert private[0]["auc"] >= plain["auc"] - 0.02          # the smallest noise costs a few points at most
    for a, b in zip(aucs, aucs[1:]):                          # more noise, no better, and no cliff
        assert b <= a + 0.002 and b >= a - 0.02
    useful = [r for r in private if 1 <= r["epsilon"] <= 3]
    assert useful and all(r["auc"] >= plain["auc"] - 0.02 and r["auc"] >= 0.75 for r in useful)
    assert plain["auc"] >= 0.78


def test_the_same_seed_gives_the_same_numbers_whichever_runs_are_made(ex, result):
    again = ex.rows(noise=(1.0,))
    one = next(r for r in result if r["noise_multiplier"] == 1.0)
    assert again[0] == result[0]
    assert again[1] == one


def test_readme_table_is_the_tables_text_and_readme_shows_it(ex, result):
    text = ex.readme_table()             # a second full run: the same bits as the first
    base_rate = float(np.mean(ex.load_split()[1]["y"]))
    assert text == ex.table(result, base_rate=base_rate)
    lines = text.splitlines()
    assert lines[0].startswith("| noise multiplier | epsilon at delta = 1e-5 |")
    assert len(lines) == 2 + len(result) + 1 and text.endswith("|\n")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read().splitlines()
    if lines[0] not in readme:
        pytest.skip("README.md does not show the private_risk table yet")
    start = readme.index(lines[0])
    shown = readme[start:start + len(lines)]
    assert shown == lines, "README.md's table is not what examples/private_risk/train.py prints"


def test_main_prints_the_table_and_returns_the_rows(ex, capsys):
    res = ex.main(["--epochs", "1", "--noise", "1"])
    out = capsys.readouterr().out
    assert [r["noise_multiplier"] for r in res] == [None, 1.0]
    assert out == ex.table(res, base_rate=float(np.mean(ex.load_split()[1]["y"])))
    res = ex.main(["--model", "logreg", "--epochs", "1", "--noise", "1"])
    assert res[1]["auc"] > 0.75
