"""Mistakes in a model file: one clear message naming the file, the line and the thing at fault.

Through the API (``gradc.load_model_file`` / ``gradc.load``) a ``gradc.ModelError``
with ``.where == (file, line)``; through the CLI exit status 2, one line on
stderr naming ``file:line`` and the problem, no traceback (unless ``--debug``).
"""
import pytest

import gradc

HEADER = """\
import sympy as sp
import gradc as gc
m = gc.Model("bad")
x, y = m.input("x", 3), m.target("y")
W = m.param("W", (2, 3))
a = m.param("a")
"""


def _case(body, expect, stage, line=None, header=HEADER):
    """A bad model: its source, the line at fault (marked ``# ERROR``), the words its
    message must hold, and whether running the file ("file") or compiling it ("lower")
    finds the mistake."""
    src = header + body
    if line is None:
        hits = [n for n, text in enumerate(src.splitlines(), 1) if "# ERROR" in text]
        assert len(hits) == 1, "mark exactly one line with # ERROR"
        line = hits[0]
    return dict(src=src, line=line, expect=expect, stage=stage)


CASES = {
    "syntax_error": _case(
        'b = m.param("b"   # ERROR\n', ["syntax error"], "file"),
    "no_model_found": _case(
        'import sympy as sp\nx = sp.Symbol("x")\n', ["no model found"], "file", line=1, header=""),
    "unknown_symbol_is_named": _case(
        'm.loss((a * x[0] + sp.Symbol("zeta", real=True) - y) ** 2)   # ERROR\n',
        ["unknown symbol", "'zeta'"], "lower"),
    "symbol_shadowing_a_parameter_is_named": _case(
        'm.loss((sp.Symbol("a") * x[0] - y) ** 2)   # ERROR\n', ["unknown symbol", "'a'"], "lower"),
    "unsupported_function_is_named": _case(
        'm.loss((sp.gamma(a * x[0]) - y) ** 2)   # ERROR\n', ["unsupported function", "'gamma'"], "lower"),
    "undefined_function_is_named": _case(
        'f = sp.Function("mystery")\nm.loss((f(a * x[0]) - y) ** 2)   # ERROR\n',
        ["unsupported function", "'mystery'"], "lower"),
    "tensor_loss_is_not_a_scalar": _case(
        'm.loss(W @ x)   # ERROR\n', ["loss", "scalar", "(2,)"], "file"),
    "matrix_loss_is_not_a_scalar": _case(
        'm.loss(W.M * x.M)   # ERROR\n', ["loss", "scalar", "(2, 1)"], "file"),
    "matmul_shape_mismatch_names_both_shapes": _case(
        'v = m.input("v", 2)\nh = W @ v   # ERROR\nm.loss((h[0] * a - y) ** 2)\n',
        ["mismatched shapes", "(2, 3)", "(2,)"], "file"),
    "elementwise_shape_mismatch_names_both_shapes": _case(
        'b = m.param("b", 2)\nh = x + b   # ERROR\nm.loss((h[0] * a - y) ** 2)\n',
        ["mismatched shapes", "(3,)", "(2,)"], "file"),
    "defined_tensor_shape_mismatch_names_tensor_and_shapes": _case(
        'z = m.define("z", 3, W @ x)   # ERROR\nm.loss((z[0] - y) ** 2)\n', ["'z'", "(3,)", "(2,)"], "file"),
    "constant_index_out_of_range_names_tensor_and_size": _case(
        'm.loss((a * x[3] - y) ** 2)   # ERROR\n', ["index 3", "'x'", "(3,)"], "file"),
    "python_error_in_model_file_is_named": _case(
        'm.loss(undefined_name)   # ERROR\n', ["NameError", "undefined_name"], "file"),
    "missing_loss_points_at_the_model": _case(
        "", ["no loss", "'bad'"], "lower", line=3),
    "loss_without_parameters_is_refused": _case(
        'm.loss((x[0] - y) ** 2)   # ERROR\n', ["no parameter"], "lower"),
    "duplicate_name_is_named": _case(
        'x2 = m.input("x", 2)   # ERROR\n', ["'x'", "already"], "file"),
    "sum_index_out_of_range_names_tensor_and_range": _case(
        'k = gc.index("k")\nm.loss((sp.Sum(a * x[k], (k, 0, 3)) - y) ** 2)   # ERROR\n',
        ["'x'", "0..3", "size 3"], "lower"),
    "piecewise_without_otherwise_branch_is_refused": _case(
        'm.loss((sp.Piecewise((a * x[0], x[0] > 0)) - y) ** 2)   # ERROR\n', ["Piecewise"], "lower"),
}


def _check_message(msg, case):
    for word in case["expect"]:
        assert word in msg, f"{word!r} missing from {msg!r}"
    assert "'~" not in msg, f"message names an internal tensor: {msg!r}"


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_api_raises_model_error_naming_file_line_and_problem(case, write_model):
    path = write_model(case["src"])
    if case["stage"] == "file":
        with pytest.raises(gradc.ModelError) as ei:
            gradc.load_model_file(path)
    else:
        gradc.load_model_file(path)          # the file runs; compiling finds the mistake
        with pytest.raises(gradc.ModelError) as ei:
            gradc.load(path)
    e = ei.value
    assert e.where == (path, case["line"])
    assert str(e).startswith(f"{path}:{case['line']}: ")
    _check_message(e.message, case)


# The CLI runs in a subprocess (about a second each): one case per kind of mistake
# the design names, plus the cases where the CLI itself misbehaves.
CLI_CASES = ["syntax_error", "no_model_found", "unknown_symbol_is_named", "unsupported_function_is_named",
             "tensor_loss_is_not_a_scalar", "matmul_shape_mismatch_names_both_shapes",
             "sum_index_out_of_range_names_tensor_and_range", "piecewise_without_otherwise_branch_is_refused"]


@pytest.mark.parametrize("case", [CASES[k] for k in CLI_CASES], ids=CLI_CASES)
def test_cli_exits_2_with_one_line_naming_file_line_and_problem(case, write_model, run_cli, tmp_path):
    path = write_model(case["src"])
    out = tmp_path / "out"
    r = run_cli("compile", path, "-o", str(out))
    assert "Traceback" not in r.stderr
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"gradc: error: {path}:{case['line']}: "), lines[0]
    _check_message(lines[0], case)
    assert not out.exists() or not any(out.iterdir()), "nothing is written for a bad model"


def test_cli_show_reports_a_bad_model_like_compile(write_model, run_cli):
    case = CASES["unknown_symbol_is_named"]
    path = write_model(case["src"])
    r = run_cli("show", path)
    assert "Traceback" not in r.stderr
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert r.stderr.startswith(f"gradc: error: {path}:{case['line']}: ")
    assert "'zeta'" in r.stderr


def test_cli_debug_shows_the_traceback_and_the_message(write_model, run_cli, tmp_path):
    case = CASES["unknown_symbol_is_named"]
    path = write_model(case["src"])
    r = run_cli("compile", path, "-o", str(tmp_path / "out"), "--debug")
    assert r.returncode != 0
    assert "Traceback" in r.stderr
    assert "ModelError" in r.stderr
    assert f"{path}:{case['line']}: " in r.stderr and "'zeta'" in r.stderr


def test_missing_model_file_is_named_without_a_bogus_location(tmp_path, run_cli):
    path = str(tmp_path / "nope.py")
    with pytest.raises(gradc.ModelError) as ei:
        gradc.load_model_file(path)
    assert path in str(ei.value)
    assert ei.value.where is None or ei.value.where[0] == path
    r = run_cli("compile", path, "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"gradc: error: no such model file: {path}" or \
        r.stderr.startswith(f"gradc: error: {path}")
    assert "runpy" not in r.stderr


def test_cli_unavailable_target_is_reported_without_a_bogus_location(write_model, run_cli, tmp_path):
    path = write_model(HEADER + "m.loss((a * x[0] - y) ** 2)\n")
    r = run_cli("compile", path, "-o", str(tmp_path / "out"), "--target", "cuda",
                env={"NVCC": str(tmp_path / "no-nvcc"), "GRADC_CUDA_EMULATE": "0"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "target cuda needs the CUDA compiler" in r.stderr and "no-nvcc" in r.stderr
    assert "runpy" not in r.stderr and "<frozen" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_nul_byte_in_model_file_is_reported_with_a_line_number(tmp_path, run_cli):
    p = tmp_path / "model.py"
    p.write_bytes(HEADER.encode() + b"b = 1\x00\n")
    path = str(p)
    with pytest.raises(gradc.ModelError) as ei:
        gradc.load_model_file(path)
    assert ei.value.where[0] == path and isinstance(ei.value.where[1], int)
    r = run_cli("compile", path, "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert ":None:" not in r.stderr
