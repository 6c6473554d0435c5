"""Hostile names: parameters, inputs, targets, outputs and models named like C keywords,
shell commands, comment ends, non-ASCII words, case twins or 200 characters compile, through
the CLI, to strict C99 in which user text appears only as sanitized identifiers, and the
module computes the right loss and gradient under the user's own names."""
import concurrent.futures
import importlib
import keyword
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

GCC = shutil.which("gcc")

CASES = {
    "c_keywords": dict(model="names_keywords", params=["int", "return"], inputs=["double"],
                       target="float", output="static"),
    "shell_command": dict(model="names_shell", params=['x; system("id")'], inputs=['u; system("rm -rf /")'],
                          target="y", output='s"); system("id'),
    "comment_end_and_preprocessor": dict(model="names_comment", params=["*/ evil", "#define int float"],
                                         inputs=["/* x */ y", "a\\\nb"], target="*/ t", output="*/ out /*"),
    "non_ascii_letters": dict(model="names_unicode", params=["Gewicht_äöü", "ω"], inputs=["größe"],
                              target="ÿ", output="Ausgabe_ß"),
    "case_twins": dict(model="names_case", params=["W", "w", "W_2"], inputs=["X", "x"], target="y",
                       output="S"),
    "very_long": dict(model="names_long", params=["p" * 200, "p" * 199 + "q"], inputs=["i" * 200],
                      target="t" * 200, output="o" * 200),
    "model_named_class": dict(model="class", params=["a"], inputs=["x"], target="y", output="s"),
    "model_named_9lives": dict(model="9lives", params=["a"], inputs=["x"], target="y", output="s"),
    "cli_name_option": dict(model="names_plain", params=["a"], inputs=["x"], target="y", output="s",
                            cli=["--name", 'my model; system("id")']),
    "model_named_like_a_stdlib_module": dict(model="json", params=["a"], inputs=["x"], target="y", output="s"),
    "model_name_with_python_string_syntax": dict(model='q"""uote \\N{x} \\x', params=["a"], inputs=["x"],
                                                 target="y", output="s"),
}

# user text that must never reach the C source, whatever the case
FORBIDDEN = ['system(', '"id"', "rm -rf", "*/ evil", "#define int", "/* x", "*/ t", "*/ out"]


def model_source(c):
    """A model whose score weighs every parameter differently, so swapped names give a wrong loss."""
    return "\n".join([
        "import gradc as gc",
        f"m = gc.Model({c['model']!r})",
        f"xs = [m.input(n) for n in {c['inputs']!r}]",
        f"ps = [m.param(n) for n in {c['params']!r}]",
        f"y = m.target({c['target']!r})",
        "score = sum((i + 1) * p * xs[i % len(xs)] for i, p in enumerate(ps))",
        f"s = m.output({c['output']!r}, score)",
        "m.loss((s - y) ** 2)",
        "",
    ])


def _compile(root, key, c):
    d = os.path.join(root, key)
    os.makedirs(d)
    path = os.path.join(d, "model.py")
    with open(path, "w", encoding="utf-8") as f:
        f.write(model_source(c))
    out = os.path.join(d, "out")
    r = subprocess.run([sys.executable, "-m", "gradc.cli", "compile", path, "-o", out, *c.get("cli", [])],
                       capture_output=True, text=True, timeout=300)
    return dict(rc=r.returncode, stdout=r.stdout, stderr=r.stderr, out=out, case=c)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Every case compiled through the CLI, in parallel (each is a separate process)."""
    root = str(tmp_path_factory.mktemp("names"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
        futs = {k: ex.submit(_compile, root, k, c) for k, c in CASES.items()}
        return {k: f.result() for k, f in futs.items()}


def _files(out):
    fs = os.listdir(out)
    by = lambda ext: sorted(f[:-len(ext)] for f in fs if f.endswith(ext))  # noqa: E731
    return by(".c"), by(".h"), by(".py")


def check_case(b, tmp_path):
    """The checks every case must pass; returns the imported module."""
    assert b["rc"] == 0, b["stderr"]
    assert "Traceback" not in b["stderr"]
    out = b["out"]
    cs, hs, pys = _files(out)
    assert len(cs) == 1 and cs == hs == pys, (cs, hs, pys)
    name = cs[0]
    assert name.isascii() and name.isidentifier() and not keyword.iskeyword(name), name

    # user text reaches C only as sanitized identifiers
    c = b["case"]
    users = c["params"] + c["inputs"] + [c["target"], c["output"], c["model"]] + c.get("cli", [])[1:]
    for fn in (f"{name}.c", f"{name}.h"):
        with open(os.path.join(out, fn), "rb") as f:
            raw = f.read()
        text = raw.decode("ascii")           # fails on any non-ASCII byte
        for bad in FORBIDDEN:
            assert bad not in text, f"{bad!r} appears in {fn}"
        for u in users:   # a name holding anything but [A-Za-z0-9_] must not appear as written
            if re.search(r"[^A-Za-z0-9_]", u):
                assert u not in text, f"user name {u!r} appears verbatim in {fn}"
        assert text.count("/*") == text.count("*/"), f"unbalanced comments in {fn}"

    # strict C99
    if GCC is None:
        pytest.skip("gcc not found")
    r = subprocess.run([GCC, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c",
                        os.path.join(out, f"{name}.c"), "-o", str(tmp_path / "m.o")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

    # the module imports from OUTDIR under that name
    sys.path.insert(0, out)
    try:
        mod = importlib.import_module(name)
    finally:
        sys.path.remove(out)
        sys.modules.pop(name, None)
    return mod


def check_numbers(mod, c):
    """Loss, gradient and output, under the user's names, against numpy."""
    assert set(mod.param_shapes) == set(c["params"])
    assert set(mod.input_shapes) == set(c["inputs"])
    assert set(mod.target_shapes) == {c["target"]}
    rng = np.random.default_rng(0)
    n = 5
    X = [rng.normal(size=n) for _ in c["inputs"]]
    Y = rng.normal(size=n)
    pv = [0.5 - 0.75 * i for i in range(len(c["params"]))]
    score = sum((i + 1) * v * X[i % len(X)] for i, v in enumerate(pv))
    r = score - Y
    data = dict(zip(c["inputs"], X))
    data[c["target"]] = Y
    params = dict(zip(c["params"], pv))
    L, g = mod.loss_and_grad(params, **data)
    assert L == pytest.approx(np.mean(r ** 2), rel=1e-12)
    for i, name in enumerate(c["params"]):
        assert g[name] == pytest.approx(np.mean(2 * r * (i + 1) * X[i % len(X)]), rel=1e-12), name
    assert mod.loss(params, **data) == pytest.approx(L, rel=1e-14)
    out = mod.forward(params, **dict(zip(c["inputs"], X)))
    assert list(out) == [c["output"]]
    np.testing.assert_allclose(out[c["output"]], score, rtol=1e-12)


def run(built, key, tmp_path):
    mod = check_case(built[key], tmp_path)
    check_numbers(mod, CASES[key])
    return mod


def test_c_keywords_as_names_compile_and_compute_the_loss(built, tmp_path):
    run(built, "c_keywords", tmp_path)


def test_shell_command_in_names_never_reaches_the_c_source(built, tmp_path):
    run(built, "shell_command", tmp_path)


def test_comment_end_and_preprocessor_text_in_names_never_reach_the_c_source(built, tmp_path):
    run(built, "comment_end_and_preprocessor", tmp_path)


def test_non_ascii_names_become_ascii_identifiers(built, tmp_path):
    run(built, "non_ascii_letters", tmp_path)


def test_names_differing_only_in_case_stay_distinct(built, tmp_path):
    # W, w and W_2 would collide as upper-case macros (W, W, W_2); x and X likewise
    run(built, "case_twins", tmp_path)
    with open(os.path.join(built["case_twins"]["out"], "names_case.h")) as f:
        h = f.read()
    macros = re.findall(r"#define (\w+)", h)
    assert len(macros) == len(set(macros))


def test_200_character_names_compile_and_stay_distinct(built, tmp_path):
    run(built, "very_long", tmp_path)


def test_model_named_class_gives_an_importable_module(built, tmp_path):
    run(built, "model_named_class", tmp_path)


def test_model_named_9lives_gives_an_importable_module(built, tmp_path):
    run(built, "model_named_9lives", tmp_path)


def test_cli_name_option_is_sanitized(built, tmp_path):
    mod = run(built, "cli_name_option", tmp_path)
    assert re.fullmatch(r"\w+", os.path.splitext(os.path.basename(mod.__file__))[0])


def test_model_name_with_python_string_syntax_gives_an_importable_module(built, tmp_path):
    run(built, "model_name_with_python_string_syntax", tmp_path)


def test_model_named_like_a_stdlib_module_gives_an_importable_module(built):
    b = built["model_named_like_a_stdlib_module"]
    assert b["rc"] == 0, b["stderr"]
    cs, hs, pys = _files(b["out"])
    assert len(pys) == 1
    name = pys[0]
    # a fresh interpreter started in OUTDIR, as a user would: the generated module, not the stdlib one
    code = (f"import {name} as M; print(M.loss({{'a': 0.5}}, x=[1.0, 2.0], y=[0.0, 0.0]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=b["out"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == pytest.approx(0.625)
