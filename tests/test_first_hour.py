"""A new user's first hour (issue 14): LaTeX that compiles, metrics that are never dropped
silently, a resumed split, a short ``help(gradc)``, a moons demo that says where things went,
a shadowed gradc that says so, and formulas in a notebook."""
import json
import os
import pydoc
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gradc as gc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLASSIFIER = '''
import gradc as gc

m = gc.Model("first_hour_clf")
x, y = m.input("x", 2), m.target("y")
W_1 = m.param("W_1", (3, 2), init=gc.init.uniform(-1, 1))
b_1 = m.param("b_1", 3, init=0.0)
w_out = m.param("w_out", (1, 3), init=gc.init.uniform(-1, 1))
h = gc.relu(W_1 @ x + b_1)
score = m.output("score", (w_out @ gc.tanh(h))[0])
m.loss(gc.bce_with_logits(score, y))
m.regularize(1e-4 * gc.sum_squares(W_1))
'''

NO_OUTPUT = '''
import gradc as gc

m = gc.Model("first_hour_no_output")
x, y = m.input("x", 2), m.target("y")
w = m.param("w", (1, 2), init=0.1)
m.loss(gc.bce_with_logits((w @ x)[0], y))
'''


# ---- a LaTeX checker ------------------------------------------------------------

_ARG_GROUPS = {r"\frac": 2, r"\sqrt": 1, r"\tilde": 1, r"\mathrm": 1, r"\mathit": 1, r"\text": 1,
               r"\operatorname": 1, r"\substack": 1, r"\begin": 1, r"\end": 1, r"\mathrel": 1}


def latex_problems(tex):
    """What in ``tex`` pdflatex rejects or typesets as stacked scripts, as a list of strings.

    Balanced braces, ``\\left``/``\\right`` and ``\\begin``/``\\end``; no second subscript (or
    superscript) on one atom at one brace level (``a_{b}_{c}``, TeX's "Double subscript"); and no
    subscript on a group that ends in a subscript (``{t_{r1}}_{i}``: accepted by TeX but printed as
    two staggered subscripts), the same for superscripts.
    """
    problems, i, n = [], 0, len(tex)
    # per brace level: [has_sub, has_sup, last group ended in sub, last group ended in sup, pending script]
    stack = [dict(sub=False, sup=False, gsub=False, gsup=False, script=None)]
    envs, lefts = [], 0
    while i < n:
        c = tex[i]
        top = stack[-1]
        if c == "%":                           # a comment, to the end of the line
            j = tex.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c.isspace():
            i += 1
            continue
        if c in "_^":
            kind = "sub" if c == "_" else "sup"
            if top[kind]:
                problems.append(f"double {kind}script at {i}: {tex[max(0, i - 30):i + 10]!r}")
            if top["g" + kind]:
                problems.append(f"stacked {kind}script at {i}: {tex[max(0, i - 30):i + 10]!r}")
            top[kind] = True
            top["script"] = kind            # the next token is the script's argument
            i += 1
            continue
        if c == "{":
            stack.append(dict(sub=False, sup=False, gsub=False, gsup=False, script=None,
                              as_script=top["script"] is not None))
            top["script"] = None
            i += 1
            continue
        if c == "}":
            if len(stack) == 1:
                problems.append(f"unbalanced '}}' at {i}")
                i += 1
                continue
            inner = stack.pop()
            outer = stack[-1]
            if not inner["as_script"]:         # a group is a new atom, ending in what its last atom had
                outer.update(sub=False, sup=False, gsub=inner["sub"], gsup=inner["sup"])
            i += 1
            continue
        # a token: a control word or symbol, or one character
        if c == "\\":
            j = i + 1
            while j < n and tex[j].isalpha():
                j += 1
            if j == i + 1:
                j += 1
            word = tex[i:j]
            if word == r"\left":
                lefts += 1
            elif word == r"\right":
                lefts -= 1
            elif word in (r"\begin", r"\end"):
                k = tex.find("}", j)
                name = tex[j + 1:k]
                if word == r"\begin":
                    envs.append(name)
                elif not envs or envs.pop() != name:
                    problems.append(f"\\end{{{name}}} without its \\begin")
                i = k + 1
                continue
            if word in (r"\left", r"\right") and j < n:
                j += 1 if tex[j] != "\\" else 2      # the delimiter
            i = j
        else:
            i += 1
        if top["script"] is not None:
            top["script"] = None                # the script's argument: the atom keeps its scripts
        else:
            top.update(sub=False, sup=False, gsub=False, gsup=False)
    if len(stack) != 1:
        problems.append(f"{len(stack) - 1} unclosed '{{'")
    if lefts:
        problems.append(f"\\left and \\right differ by {lefts}")
    if envs:
        problems.append(f"unclosed environments {envs}")
    return problems


def test_the_checker_finds_what_pdflatex_rejects_and_stacked_subscripts():
    assert latex_problems(r"x_{i}^{2} + \left(W_{1}\right)_{i,j} + \tilde{t}^{(r1)}_{i}") == []
    assert latex_problems(r"\sum_{j=0}^{1} a_{j}") == []
    assert any("double sub" in p for p in latex_problems(r"a_{b}_{c}"))
    assert any("double sup" in p for p in latex_problems(r"a^{2}^{3}"))
    assert any("stacked sub" in p for p in latex_problems(r"{\tilde{t}_{r1}}_{i}"))
    assert latex_problems(r"{a") and latex_problems(r"\left( a") and latex_problems(r"\begin{align*} a")


def _show(run_cli, path, *extra):
    r = run_cli("show", path, *extra)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def moons_latex():
    r = subprocess.run([sys.executable, "-m", "gradc.cli", "show", "--latex",
                        os.path.join(ROOT, "examples", "moons", "model.py")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_show_latex_has_no_double_or_stacked_scripts(write_model, run_cli, moons_latex):
    # the moons model (Sums, Max, Piecewise, adjoints) and one with W_1-style names, tanh and a regularizer
    for tex in (moons_latex, _show(run_cli, write_model(CLASSIFIER), "--latex")):
        assert latex_problems(tex) == []
        assert "~" not in tex.replace("\\~", "")              # gradc's intermediates are \tilde{t}
        for line in tex.splitlines():         # prose only in comments; formulas in align*
            assert line.startswith(("%", "\\begin", "\\end")) or "&" in line, line
        assert tex.count(r"\begin{align*}") == tex.count(r"\end{align*}") >= 1


def test_show_text_is_unchanged_in_form(write_model, run_cli):
    text = _show(run_cli, write_model(CLASSIFIER))
    assert text.startswith("model first_hour_clf: inputs x[2]")
    assert "~" in text and " += " in text and "\\" not in text


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_show_latex_compiles_with_pdflatex(write_model, run_cli, tmp_path, moons_latex):
    for k, tex in enumerate((moons_latex, _show(run_cli, write_model(CLASSIFIER), "--latex"))):
        (tmp_path / f"listing{k}.tex").write_text(tex)
        doc = tmp_path / f"doc{k}.tex"
        doc.write_text("\\documentclass{article}\n\\usepackage{amsmath}\n\\begin{document}\n"
                       f"\\input{{listing{k}.tex}}\n\\end{{document}}\n")
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-3000:]
        assert "Double subscript" not in r.stdout and (tmp_path / f"doc{k}.pdf").is_file()


# ---- metrics without validation data --------------------------------------------

def _clf_data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    return {"x": X, "y": (X[:, 0] + 0.5 * X[:, 1] > 0).astype(float)}


@pytest.fixture(scope="module")
def clf_module(tmp_path_factory):
    p = tmp_path_factory.mktemp("clf") / "model.py"
    p.write_text(CLASSIFIER)
    return gc.load(str(p)), str(p)


def test_cli_metrics_without_val_split_are_computed_on_the_training_data(clf_module, run_cli, tmp_path):
    _, model = clf_module
    np.savez(tmp_path / "d.npz", **_clf_data())
    r = run_cli("train", model, "--data", str(tmp_path / "d.npz"), "-o", str(tmp_path / "run"), "--epochs", "2",
                "--metrics", "loss,accuracy")
    assert r.returncode == 0, r.stderr
    assert "train_accuracy" in r.stdout and "--val-split" in r.stdout       # labelled, and says how to validate
    epochs = [line for line in r.stdout.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2 and all("train_accuracy" in line for line in epochs)
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(hist["train_accuracy"]) == 2 and all(0 <= a <= 1 for a in hist["train_accuracy"])


def test_fit_metrics_without_validation_data_are_computed_on_the_training_data(clf_module):
    mod, _ = clf_module
    data = _clf_data()
    p = mod.init_params(seed=0)
    hist = gc.fit(mod, p, data, epochs=2, metrics=["loss", "accuracy", "auc"], progress=False)
    assert len(hist["train_accuracy"]) == 2 and len(hist["train_auc"]) == 2
    t = gc.Trainer(mod, p, metrics=["accuracy"])
    # the last epoch's figure is the accuracy of the parameters it ended with, on the training data
    assert hist["train_accuracy"][-1] == t.evaluate(data)["accuracy"]
    hist = gc.fit(mod, mod.init_params(seed=0), data, epochs=1, metrics=["loss"], progress=False)
    assert not any(k.startswith("train_") for k in hist)         # nothing asked for, nothing added


def test_a_metric_on_a_model_without_an_output_says_how_to_name_one(write_model, tmp_path):
    mod = gc.load(write_model(NO_OUTPUT, "noout.py"))
    with pytest.raises(ValueError) as e:
        gc.fit(mod, mod.init_params(), _clf_data(), epochs=1, metrics=["accuracy"], progress=False)
    msg = str(e.value)
    assert "no output" in msg and 'm.output("score", expr)' in msg and "several" not in msg


def test_cli_metric_on_a_model_without_an_output_is_one_line(write_model, run_cli, tmp_path):
    np.savez(tmp_path / "d.npz", **_clf_data())
    r = run_cli("train", write_model(NO_OUTPUT, "noout.py"), "--data", str(tmp_path / "d.npz"),
                "-o", str(tmp_path / "run"), "--epochs", "1", "--metrics", "accuracy")
    assert r.returncode == 2 and "no output" in r.stderr and "m.output(" in r.stderr, r.stderr
    assert not (tmp_path / "run" / "checkpoint.npz").exists()        # refused before training


# ---- --resume keeps the validation split ----------------------------------------

def test_resume_keeps_the_validation_split_without_val_split_given_again(clf_module, run_cli, tmp_path):
    _, model = clf_module
    np.savez(tmp_path / "d.npz", **_clf_data(64))
    common = ("--data", str(tmp_path / "d.npz"), "--batch-size", "16", "--optimizer", "sgd", "--lr", "0.1",
              "--seed", "2", "--metrics", "loss,accuracy", "--quiet")

    def train(out, epochs, *extra):
        r = run_cli("train", model, "-o", str(tmp_path / out), "--epochs", str(epochs), *common, *extra)
        assert r.returncode == 0, r.stderr
        return json.loads((tmp_path / out / "history.json").read_text())

    straight = train("straight", 4, "--val-split", "0.25")
    train("first", 2, "--val-split", "0.25")
    resumed = train("resumed", 4, "--resume", str(tmp_path / "first" / "checkpoint.npz"))
    for k in ("epoch", "loss", "val_loss", "val_accuracy"):
        assert resumed[k] == straight[k], k
    _, st = gc.load_checkpoint(str(tmp_path / "resumed" / "checkpoint.npz"))
    assert st["settings"]["val_split"] == 0.25
    assert st["split"]["fraction"] == 0.25 and len(st["split"]["rows"]) == 16 and st["split"]["n"] == 64


def test_fit_resume_restores_the_split_rows(clf_module, tmp_path):
    mod, _ = clf_module
    data = _clf_data(40)
    ck = str(tmp_path / "ck.npz")
    kw = dict(batch_size=8, optimizer="sgd", lr=0.1, seed=5, metrics=["loss", "accuracy"], progress=False)
    straight = gc.fit(mod, mod.init_params(seed=1), data, epochs=3, val_split=0.3, **kw)
    gc.fit(mod, mod.init_params(seed=1), data, epochs=1, val_split=0.3, checkpoint=ck, **kw)
    resumed = gc.fit(mod, mod.init_params(seed=1), data, epochs=3, resume=ck, **kw)
    assert resumed["val_loss"] == straight["val_loss"] and resumed["val_accuracy"] == straight["val_accuracy"]
    with pytest.raises(ValueError, match="same data"):          # another data set cannot hold those rows
        gc.fit(mod, mod.init_params(seed=1), _clf_data(30), epochs=3, resume=ck, **kw)


# ---- help(gradc) ------------------------------------------------------------------

HELPERS = ["exp", "tanh", "log", "sqrt", "abs", "relu", "sigmoid", "softplus", "log1p", "expm1"]


def test_help_gradc_is_short_and_has_no_sympy_docstrings():
    text = pydoc.render_doc(gc, renderer=pydoc.plaintext)
    assert len(text.splitlines()) < 400, len(text.splitlines())
    for sympy_doc in ("sympy.core", "Examples\n        ========", "Methods inherited from sympy",
                      "exponential function"):
        assert sympy_doc not in text, sympy_doc
    assert "Model" in text and "Trainer" in text and "compile_model" in text    # the classes are listed
    assert gc.Model is not None and gc.Sigmoid is not None and "Model" in dir(gc)   # and still there


@pytest.mark.parametrize("name", HELPERS)
def test_each_helpers_help_is_gradcs_own(name):
    f = getattr(gc, name)
    text = pydoc.render_doc(f, renderer=pydoc.plaintext)
    assert f.__name__ == name and "gradc.nn.elementwise" in text
    assert len(text.splitlines()) < 15 and "sympy.core" not in text and "========" not in text


def test_elementwise_keeps_a_users_docstring_but_not_sympys():
    def gelu(x):
        """my gelu"""
        return x
    assert gc.elementwise(gelu).__doc__ == "my gelu" and gc.elementwise(gelu).__name__ == "gelu"
    import sympy as sp
    assert "gradc.nn.elementwise" in gc.elementwise(sp.sin).__doc__


# ---- the moons demo ---------------------------------------------------------------

def test_moons_demo_says_where_the_module_is_and_how_to_get_the_picture(tmp_path):
    png = tmp_path / "moons.png"
    hide = ("import sys, runpy; sys.modules['matplotlib'] = None; "       # import matplotlib raises ImportError
            f"sys.argv = ['train.py', '--png', {str(png)!r}]; "
            f"runpy.run_path({os.path.join(ROOT, 'examples', 'moons', 'train.py')!r}, run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pip install matplotlib" in r.stdout and not png.exists()
    first = r.stdout.splitlines()[0]
    cache = os.environ["GRADC_CACHE_DIR"]
    assert "compiled module" in first and os.path.realpath(cache) in os.path.realpath(first.split(" in ")[-1])


# ---- a gradc that shadows the installed one -------------------------------------

def test_a_partial_gradc_folder_says_it_is_not_a_complete_gradc(tmp_path):
    pkg = tmp_path / "gradc"
    pkg.mkdir()
    for f in ("__init__.py", "_version.py"):
        shutil.copy(os.path.join(ROOT, "gradc", f), pkg / f)
    # -S: no site-packages, so no editable install's finder fills the gaps; without -S it does, from elsewhere
    for flags in (["-S"], []):
        r = subprocess.run([sys.executable, *flags, "-c", "import gradc; gradc.Model"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=120)
        assert r.returncode == 1
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: gradc was imported from") and str(pkg) in last, r.stderr
        assert "not a complete gradc" in last


GRADC_SCRIPT = os.path.join(os.path.dirname(sys.executable), "gradc")


@pytest.mark.skipif(not os.path.isfile(GRADC_SCRIPT), reason="no gradc console script beside this Python")
def test_the_gradc_command_warns_of_a_gradc_py_in_the_current_folder(tmp_path, write_model):
    # the console script imports the installed gradc whatever the folder; `python script.py` there would not
    model = write_model(NO_OUTPUT, "m.py")

    def show():
        r = subprocess.run([GRADC_SCRIPT, "show", model], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stderr
    (tmp_path / "gradc.py").write_text("import gradc as gc\n")
    err = show()
    assert "gradc.py shadows the gradc package" in err and "rename" in err
    (tmp_path / "gradc.py").unlink()
    (tmp_path / "gradc").mkdir()
    (tmp_path / "gradc" / "__init__.py").write_text("")
    assert "gradc/ shadows the gradc package" in show()
    shutil.rmtree(tmp_path / "gradc")
    assert "shadows" not in show()


# ---- formulas in a notebook -------------------------------------------------------

def test_formulas_typeset_in_a_notebook(write_model):
    m = gc.load_model_file(write_model(CLASSIFIER))
    f = gc.formulas(m)
    assert callable(gc.formulas) and hasattr(gc.show, "listing")         # gradc.show stays the module
    tex = f._repr_latex_()
    assert tex.startswith("$$") and latex_problems(tex.replace("$$", "")) == []
    assert r"\begin{aligned}" in tex and r"\mathrel{+}=" in tex and r"\tilde{t}" in tex
    page = f._repr_html_()
    assert page.startswith("<div") and "$$" in page and "first_hour_clf" in page
    assert "&amp;=" in page and "<script" not in page                    # the formulas, HTML-escaped
    assert str(f).startswith("model first_hour_clf") and "+=" in str(f)
    assert latex_problems(f.latex()) == [] and "gradient" not in str(gc.formulas(m, gradients=False))
