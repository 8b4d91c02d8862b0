"""The language model's activation group is measured on this machine at first launch (tuning.py):
on the model's own int4 weights, both groups taking turns; the verdict is kept per CPU, OpenVINO
version and weight layout beside the compiled-model cache, used by every later launch, and measured
again when its record is unreadable. Real OpenVINO calls throughout (the tiny model's int4 weights)."""

import json

import numpy as np
import openvino as ov
import pytest

from janus_ov import tuning
from janus_ov.parts import int4_group_size
from janus_ov.runtime import Runtime, streaming_config

CORE = ov.Core()
DEFAULT = int(CORE.get_property("CPU", "DYNAMIC_QUANTIZATION_GROUP_SIZE"))


@pytest.fixture()
def lm(tiny_ir_lm_int4):
    """(the tiny int4 language model, its weights' group); each test starts as a new process would."""
    tuning._measured.clear()
    model = CORE.read_model(tiny_ir_lm_int4 / "language_model.xml")
    return model, int4_group_size(model)


def int4_matmuls(model) -> list:
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "MatMul" and tuning._int4_bytes(op.input_value(1))]


def test_the_chain_is_the_models_own_first_int4_matmuls_and_runs(lm, tiny_ir_fp32):
    model, group = lm
    assert group and group != DEFAULT  # the tiny model's groups differ from the plugin's: there is a choice
    chain = tuning.weight_chain(model)
    # 2 layers x q, k, v, o, gate, up, down, less the last (NNCF keeps a tiny model's last matmul INT8)
    assert len(int4_matmuls(chain)) == len(int4_matmuls(model)) == 13
    own = {op.get_name() for op in model.get_ops() if op.get_type_name() == "Constant"}
    assert {op.get_name() for op in chain.get_ops() if op.get_output_element_type(0).get_type_name() == "u4"} <= own
    hidden = model.input("inputs_embeds").get_partial_shape()[-1].get_length()
    out = CORE.compile_model(chain, "CPU")(np.ones((3, hidden), np.float32))[0]
    assert out.shape[0] == 3 and np.isfinite(out).all() and np.abs(out).max() > 0
    # A budget smaller than one weight takes the first input's matmuls only (q, k, v read one input).
    assert len(int4_matmuls(tuning.weight_chain(model, budget=1))) == 1
    with pytest.raises(ValueError, match="no int4"):
        tuning.weight_chain(CORE.read_model(tiny_ir_fp32 / "language_model.xml"))


def test_the_weights_group_unless_a_chat_token_gets_slower():
    times = {32: {1: 40.0, 8: 80.0}, 64: {1: 41.0, 8: 70.0}}
    assert tuning.choose(times, 32, 64) == 64  # within the tolerance: prompts and image rows gain
    times[64][1] = 42.0
    assert tuning.choose(times, 32, 64) == 32  # 5 % slower at one row (Zen 4): the plugin's own
    times[64][1] = 35.0
    assert tuning.choose(times, 32, 64) == 64


def test_measured_once_then_read_from_the_record(lm, tmp_path, tiny_ir_lm_int4):
    model, group = lm
    verdict = tuning.activation_group(model, group, tmp_path)
    assert verdict in (group, None)
    record = json.loads((tmp_path / tuning.RECORD).read_text(encoding="utf-8"))
    (key, entry), = record.items()
    assert key.startswith(tuning.machine_key()) and ov.get_version() in key and f"group {group}" in key
    assert set(entry["ms"]) == {str(DEFAULT), str(group)}
    assert all(entry["ms"][g][r] > 0 for g in entry["ms"] for r in ("1", "8"))
    assert entry["group"] == (verdict or DEFAULT)
    # A later launch (a new process: nothing in memory) follows the record instead of measuring again.
    for kept in (DEFAULT, group):
        tuning._measured.clear()
        (tmp_path / tuning.RECORD).write_text(json.dumps({key: {**entry, "group": kept}}), encoding="utf-8")
        assert tuning.activation_group(model, group, tmp_path) == (None if kept == DEFAULT else group)
        assert streaming_config(model, "CPU", {"CACHE_DIR": str(tmp_path)}).get(
            "DYNAMIC_QUANTIZATION_GROUP_SIZE") == (None if kept == DEFAULT else str(group))
        compiled = Runtime(tiny_ir_lm_int4, cache_dir=tmp_path, warm_up=False).compiled["language_model"]
        assert compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == kept


@pytest.mark.parametrize("text", ['{"half a rec', "[1, 2]", "{KEY: {}}", '{KEY: {"group": 7}}'],
                         ids=["cut short", "not a record", "no verdict", "a group not in question"])
def test_an_unreadable_record_is_measured_again_and_replaced(lm, tmp_path, text):
    model, group = lm
    key = f"{tuning.machine_key()}|{tuning.layout_key(model, group)}"
    (tmp_path / tuning.RECORD).write_text(text.replace("KEY", json.dumps(key)), encoding="utf-8")  # e.g. a full disk
    assert tuning.activation_group(model, group, tmp_path) in (group, None)
    record = json.loads((tmp_path / tuning.RECORD).read_text(encoding="utf-8"))
    assert record[key]["group"] in (group, DEFAULT) and record[key]["ms"]  # measured and replaced
    assert not list(tmp_path.glob(".*"))  # whole, and no temporary file left


def test_a_cache_folder_that_cannot_be_written_costs_a_measurement_not_a_failure(lm, tmp_path):
    model, group = lm
    blocked = tmp_path / "a-file"
    blocked.write_text("", encoding="utf-8")
    assert tuning.activation_group(model, group, blocked / "compiled") in (group, None)
    assert tuning.activation_group(model, group, None) in (group, None)  # no cache: once per process


def test_the_callers_setting_and_other_parts_need_no_measurement(lm, tmp_path, tiny_ir_fp32):
    model, _ = lm
    config = {"CACHE_DIR": str(tmp_path), "DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}
    assert streaming_config(model, "CPU", config)["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "32"
    assert streaming_config(model, "GPU", {"CACHE_DIR": str(tmp_path)}) == {"CACHE_DIR": str(tmp_path)}
    fp32 = CORE.read_model(tiny_ir_fp32 / "language_model.xml")
    assert streaming_config(fp32, "CPU", {"CACHE_DIR": str(tmp_path)}) == {"CACHE_DIR": str(tmp_path)}
    assert not (tmp_path / tuning.RECORD).exists()
