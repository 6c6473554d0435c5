"""gradc.runtime's typed module record and its target -> runtime class map, without compiling.

The record must read every JSON a build has written (cached entries, generated modules' NAME.gradc.json)
and write it back unchanged, since generated modules and tools read that JSON.
"""
import copy

import pytest

from gradc.runtime import CModule, CudaModule, ModuleMeta, runtime_class, runtime_of

RECORD = {
    "name": "mf", "prefix": "mf", "dtype": "float64", "target": "c", "model_hash": "ab" * 32,
    "n_params": 23,
    "params": [{"name": "P", "shape": [3, 5], "offset": 0, "size": 15, "init": {"kind": "normal", "mean": 0.0,
                                                                                "std": 0.3}},
               {"name": "b", "shape": [8], "offset": 15, "size": 8, "init": {"kind": "constant", "value": 0.0}}],
    "inputs": [{"name": "u", "shape": [], "dtype": "int32"},
               {"name": "drop", "shape": [5], "dtype": "real", "dropout": 0.25}],
    "targets": [{"name": "r", "shape": [], "dtype": "real"}],
    "outputs": [{"name": "rh", "shape": []}],
    "int_bounds": {"u": [3]}, "ws_reals": 40, "ws_ints": 0,
    "key": "k" * 64, "module": "_gradc_mf_123", "so": "_gradc_mf_123.so", "files": {"mf.c": "00"},
    "gradc": "0.1.0", "meta_sha256": "ff" * 32,
}


def test_the_json_record_round_trips_unchanged():
    assert ModuleMeta.from_json(copy.deepcopy(RECORD)).to_json() == RECORD


def test_the_record_is_typed_and_read_only():
    m = ModuleMeta.from_json(RECORD)
    assert m.param("b").offset == 15 and m.param("P").shape == (3, 5)
    assert m.inputs[0].is_int and not m.inputs[1].is_int
    assert m.dropout_inputs == ("drop",)
    assert m.int_bounds["u"] == (3,) and m.build["so"] == "_gradc_mf_123.so"
    with pytest.raises(AttributeError):
        m.n_params = 1
    with pytest.raises(TypeError):
        m.int_bounds["u"] = (4,)
    with pytest.raises(KeyError, match="'W' is not a parameter of model 'mf'"):
        m.param("W")


def test_an_older_record_without_target_or_hash_reads_as_c_and_unknown_keys_are_kept():
    old = {k: v for k, v in RECORD.items() if k not in ("target", "model_hash", "ws_reals", "ws_ints")}
    old["future_field"] = [1, 2]
    m = ModuleMeta.from_json(old)
    assert m.target == "c" and m.model_hash is None and m.extra["future_field"] == [1, 2]
    assert m.to_json() == dict(old, target="c")


def test_a_target_names_its_runtime_class_in_one_place():
    assert runtime_class("c") is CModule and runtime_class("cuda") is CudaModule
    assert issubclass(CudaModule, CModule)
    with pytest.raises(ValueError, match="no runtime for target 'metal'; the targets are c, cuda"):
        runtime_class("metal")
    assert runtime_of(object()) is None
