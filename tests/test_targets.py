"""The target registry (``gradc.targets``): the one place a target is named."""
import os
from importlib import resources

import pytest

import gradc
from gradc.codegen.c import template_digest
from gradc.errors import ModelError
from gradc.targets import Target, get_target, names, register


def test_the_builtin_targets_are_registered_with_their_parts():
    assert names()[:2] == ("c", "cuda")
    for name in ("c", "cuda"):
        t = get_target(name)
        assert resources.files("gradc.templates").joinpath(t.templates).is_dir()
        for part in ("builder", "compiler", "identity", "runtime"):
            assert callable(t.part(part)), (name, part)


def test_an_unknown_target_names_the_known_ones():
    with pytest.raises(ModelError, match="target must be one of c, cuda"):
        get_target("metal")
    with pytest.raises(ModelError, match="not 'metal'"):
        gradc.api.build_model(gradc.Model("m"), target="metal")


def test_each_target_has_its_own_template_digest():
    assert template_digest("c") != template_digest("cuda")
    assert template_digest("c") == template_digest("c")


def test_a_registered_target_is_what_the_cli_offers(monkeypatch):
    from gradc import targets
    monkeypatch.setattr(targets, "_REGISTRY", dict(targets._REGISTRY))
    register(Target("c2", ".c", "c", builder="gradc.codegen.c:render", compiler="gradc.build:compile_c",
                    identity="gradc.build:c_identity", runtime="gradc.runtime.c:CModule", description="a copy of c"))
    from gradc.cli import _parser
    help_text = _parser()._subparsers._group_actions[0].choices["compile"].format_help()
    assert "c2" in help_text and "a copy of c" in help_text


def test_the_target_modules_do_not_import_sympy_to_say_which_runtime_serves_a_target():
    import subprocess
    import sys
    code = ("import sys, gradc.targets as t; t.get_target('c'); "
            "print('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False", out.stderr
