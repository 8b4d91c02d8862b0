"""The benchmark harness: full-size model shapes, and a --quick run end to end on the tiny model.

No timing assertions (speed belongs to the benchmark's own report); the quick run must produce
the markdown and JSON reports with every measurement present, positive and consistent.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from janus_ov.tuning import cpu_flags

REPO = Path(__file__).resolve().parents[1]


def test_full_size_shapes_match_janus_pro_1b():
    """Built on the meta device: no memory, but the real parameter layout."""
    import torch
    from transformers import JanusForConditionalGeneration

    from benchmarks.models import build_config, build_tokenizer
    from janus_ov.tiny import SPECIAL_TOKENS

    tok = build_tokenizer()
    config = build_config("janus-pro-1b", {t: tok.token_to_id(t) for t in SPECIAL_TOKENS})
    with torch.device("meta"):
        model = JanusForConditionalGeneration(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["model.language_model.embed_tokens.weight"] == (102400, 2048)
    assert shapes["lm_head.weight"] == (102400, 2048)
    assert shapes["model.language_model.layers.23.mlp.gate_proj.weight"] == (5632, 2048)
    assert "model.language_model.layers.24.mlp.gate_proj.weight" not in shapes
    assert shapes["model.vision_model.encoder.layers.23.mlp.fc1.weight"] == (4096, 1024)
    assert shapes["model.vqmodel.quantize.embedding.weight"] == (16384, 8)
    assert shapes["model.generation_head.vision_head.weight"] == (16384, 2048)
    assert shapes["model.aligner.hidden_layers.0.weight"] == (2048, 2048)
    params = sum(v.numel() for v in model.state_dict().values())
    assert 2.0e9 < params < 2.2e9  # Janus-Pro-1B has ~2.09 B parameters


def test_tokenizer_covers_the_whole_vocabulary():
    """Random weights emit any id: each must decode to text, and fillers must never be encoded."""
    from benchmarks.models import VOCAB_SIZE, build_tokenizer

    tok = build_tokenizer()
    assert tok.get_vocab_size() == VOCAB_SIZE
    for i in range(1000, VOCAB_SIZE - 14, 4999):  # fillers: plain ASCII words
        assert re.fullmatch(r" w\d+", tok.decode([i])), i
    assert all(tok.id_to_token(i) is not None for i in range(0, VOCAB_SIZE, 997))
    assert max(tok.encode("Describe the image in detail, please.", add_special_tokens=False).ids) < 1000


def test_bound_and_ratios_arithmetic():
    from benchmarks import report

    res = {"bandwidth": {"start": {"gbps_median": 20.0}, "end": {"gbps_median": 10.0}},
           "openvino": {"int4": {"chat": {"decode_tok_s_median": 18.0, "bytes": {"text_token": 1e9}},
                                 "image_1": {"image_s_median": 20.0, "steps_per_s_median": 30.0,
                                             "bytes": {"image_step": 5e8}},
                                 "image_4": {"image_s_median": 30.0}}},
           "pytorch": {"fp32": {"chat": {"decode_tok_s_median": 3.0}}}}
    s = report.summarize(res)
    row = s["rows"]["openvino-int4"]
    assert s["bandwidth_gbps"] == 20.0  # the better of start/end
    assert row["decode_bound_tok_s"] == pytest.approx(20.0)
    assert row["decode_of_bound"] == pytest.approx(0.9)
    assert row["steps_bound_per_s"] == pytest.approx(40.0)
    assert row["image1_bound_s"] == pytest.approx(576 / 40)
    assert row["image4_over_1"] == pytest.approx(1.5)
    assert s["ratios"]["int4_vs_pytorch_fp32"]["decode_speedup"] == pytest.approx(6.0)
    met = {t["target"]: t["met"] for t in s["targets"]}
    assert met["chat decode >= 18 tok/s"] and met["four images <= 1.5 x one"]
    assert met["one image <= 25 s"] and met["VQ decode <= 1 s"] is None  # not measured -> unknown, not "met"


@pytest.mark.skipif(not {"avx512_vnni", "avx512bw"} <= cpu_flags(),
                    reason="our int4 matmul runs on CPUs with AVX-512 VNNI only")
def test_kernels_against_ours_times_both_on_the_same_weights():
    """benchmarks.kernels --ours on a one-layer chain: every matmul swapped, both timed at each row
    count, and their outputs the same to float rounding (the same weights and activation grid)."""
    from benchmarks import kernels

    res = kernels.against_ours(rows=(1, 9), reps=2, layers=1, hidden=128, mlp=256)
    assert res["matmuls_swapped"] == 7 and set(res["rows"]) == {1, 9}
    for row in res["rows"].values():
        assert row["plugin_ms"] > 0 and row["ours_ms"] > 0 and row["ours_weights_gb_per_s"] > 0
        assert row["max_relative_difference_one_layer"] < 1e-4


@pytest.mark.skipif(not {"avx512_vnni", "avx512bw"} <= cpu_flags(),
                    reason="our int4 matmul runs on CPUs with AVX-512 VNNI only")
def test_kernels_static_times_our_chain_with_dynamic_and_static_rows():
    """benchmarks.kernels --static on a one-layer chain: both compilations timed at each row count,
    with the same outputs (the same kernel on the same weights)."""
    from benchmarks import kernels

    res = kernels.static_rows(rows=(1, 3), reps=2, layers=1, hidden=128, mlp=256)
    assert set(res["rows"]) == {1, 3}
    for row in res["rows"].values():
        assert row["dynamic_ms"] > 0 and row["static_ms"] > 0 and row["same_outputs"]


@pytest.mark.skipif(not {"avx512_vnni", "avx512bw"} <= cpu_flags(),
                    reason="our int4 matmul runs on CPUs with AVX-512 VNNI only")
def test_matmul_chain_times_two_versions_of_the_kernel(tmp_path):
    """benchmarks.matmul_chain on a one-layer chain, the last commit's matmul.cpp against the working
    tree's: both built, timed at each row count, and (where AMX takes a call) equal to the vector kernel."""
    out = tmp_path / "chain.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.matmul_chain", "--against", "HEAD", "--rows", "1,3",
                          "--rounds", "1", "--repeats", "1", "--layers", "1", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["layers"] == 1
    for side in ("before", "after"):
        assert set(res["median_chain_ms"][side]) == {"1", "3"} and all(v > 0 for v in res["median_chain_ms"][side].values())
    if "amx_int8" in cpu_flags():
        assert res["equal_to_vector_kernel_at_3_8_11_rows"] == {"before": [True] * 3, "after": [True] * 3}


def test_kernel_sweep_runs_every_setting_and_recipe_on_the_plugin():
    """benchmarks.kernels --sweep on a one-layer chain: each CPU-plugin setting and NNCF recipe
    compiles and runs, and the bytes its GB/s divide by are the compressed weights' own."""
    from benchmarks import kernels

    res = kernels.sweep(rows=(1, 2), reps=2, layers=1, hidden=128, mlp=256)
    assert set(res["settings"]) == set(kernels.SETTINGS) and set(res["recipes"]) == set(kernels.RECIPES)
    for _, value in _walk(res):
        assert value > 0
    size = {name: r["weight_bytes"] for name, r in res["recipes"].items()}
    params = 4 * 128 * 128 + 3 * 128 * 256
    # u4 weights packed two to a byte, per group of 64 an fp16 scale and a u4 zero point (+ a few shape constants)
    assert size["int4_asym_g64"] == pytest.approx(params / 2 + params / 64 * 2.5, rel=0.01)
    assert size["int4_asym_per_channel"] < size["int4_asym_g128"] < size["int4_asym_g64"]
    assert size["int4_sym_g64"] < size["int4_asym_g64"]
    assert res["recipes"]["int4_asym_g64"] is res["settings"]["default"]


def _walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}/{i}")
    else:
        yield path, node


def test_quick_run_writes_complete_reports(tiny_model_dir, tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--model-dir", str(tiny_model_dir), "--out", str(out),
           "--cache-dir", str(tmp_path / "cache"), "--note", "test run"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (json_path,) = out.glob("*.json")
    (md_path,) = out.glob("*.md")
    assert json_path.stem == md_path.stem and json_path.stem.endswith("-quick")
    res = json.loads(json_path.read_text(encoding="utf-8"))

    errors = [p for p, _ in _walk(res) if p.endswith("/error")]
    assert not errors, [res_path for res_path in errors]
    m = res["machine"]
    assert m["cpu"] and m["logical_cpus"] >= 1 and m["ram_gib"] > 0 and m["versions"]["openvino"]
    assert res["bandwidth"]["start"]["gbps_median"] > 0 and res["bandwidth"]["end"]["gbps_median"] > 0

    ov = res["openvino"]["int4"]
    assert ov["convert"]["convert_s"] > 0 and ov["convert"]["peak_rss_bytes"] > 0
    assert set(ov["convert"]["bytes"]["parts"]) == {"vision", "text_embeddings", "language_model", "lm_head",
                                                     "gen_embeddings", "gen_head", "vq_decoder"}
    assert ov["warm_start"]["first"]["ready_s"] > 0 and ov["warm_start"]["runs"][0]["ready_s"] > 0
    chat = ov["chat"]
    assert chat["new_tokens_median"] == 16 and chat["forced_length_ok"]
    assert 600 < chat["prompt_tokens_median"] < 700  # one image (576 tokens) + system prompt + question
    assert chat["ttft_s_median"] > 0 and chat["decode_tok_s_median"] > 0
    # Each run is a new conversation (another picture): at most the system prompt comes from the cache.
    assert chat["cached_tokens_median"] < 100
    # Its follow-up goes on from the cached conversation, image included.
    assert chat["follow_up_cached_tokens_median"] > 600 and chat["follow_up_ttft_s_median"] > 0
    for n in (1, 4):
        img = ov[f"image_{n}"]
        assert img["num_images"] == n and img["image_s_median"] > 0 and img["steps_per_s_median"] > 0
        assert img["vq_decode_s_median"] > 0 and img["peak_rss_bytes"] > 0
    # One image again as the app makes it: a preview every 96 steps, the five before the end.
    assert ov["image_1"]["app_image_s_median"] > 0 and ov["image_1"]["app_runs"][0]["previews"] == 5
    assert ov["vq_decode"]["vq_decode_s_median"] > 0

    pt = res["pytorch"]["fp32"]["chat"]
    assert pt["new_tokens"] == [16] and pt["ttft_s_median"] > 0 and pt["decode_tok_s_median"] > 0
    assert pt["prompt_tokens"] == chat["prompt_tokens_median"]  # same prompt on both sides

    rows = res["summary"]["rows"]
    assert rows["openvino-int4"]["decode_bound_tok_s"] > 0 and rows["pytorch-fp32"]["decode_bound_tok_s"] > 0
    assert res["summary"]["ratios"]["int4_vs_pytorch_fp32"]["decode_speedup"] > 0
    assert res["total_s"] > 0

    md = md_path.read_text(encoding="utf-8")
    for text in ("| engine |", "| openvino-int4 |", "| pytorch-fp32 |", "GB/s", "test run", m["cpu"], "Targets",
                 "follow-up question", "as the app makes it"):
        assert text in md


def test_serving_benchmark_runs_both_modes_and_reports_the_targets(tiny_ir_fp32, tmp_path):
    """benchmarks.serve on the tiny model: every scenario in both modes, the step costs, the report."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.serve", "--ir", str(tiny_ir_fp32), "--users", "1,late-chat,4",
                          "--new-tokens", "8", "--out", str(tmp_path), "--name", "serve"], cwd=REPO,
                         capture_output=True, encoding="utf-8", errors="replace", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "serve.json").read_text(encoding="utf-8"))
    assert not [r for r in res["results"] if "error" in r], res["results"]
    assert set(res["summary"]) == {f"{m}/{u}" for m in ("batched", "pool") for u in ("1", "late-chat", "4")}
    assert set(res["step_costs"]["decode_ms"]) == {"1", "2", "4", "6", "8"}
    for key in ("batched/4", "pool/4"):
        row = res["summary"][key]
        assert row["chat_tokens_per_s"] > 0 and row["image_steps_per_s"] > 0 and row["peak_rss_gib"] > 0
    report = (tmp_path / "serve.md").read_text(encoding="utf-8")
    assert "| batched/4 |" in report and "faster than the pool" in report and "first token while an image runs" in report


def test_step_profile_times_chat_image_and_fused_steps_per_layer_type(tiny_ir_fp32):
    """benchmarks.step_profile on the tiny model: each kind of step runs and the plugin's counters
    account for it (the GenAI side needs an optimum export: benchmarks/requirements-genai.txt)."""
    import openvino as ov

    from benchmarks import step_profile

    core = ov.Core()
    results = step_profile.run_steps({"chat": step_profile.ours(core, tiny_ir_fp32, past=40),
                                      "image": step_profile.ours(core, tiny_ir_fp32, past=40, images=2),
                                      "fused": step_profile.ours_fused(core, tiny_ir_fp32, past=40)}, steps=3)
    # The attention as the runtime compiles it: ours (the plugin shows it as a "Reference" node) or the plugin's.
    from janus_ov import attention
    from janus_ov.runtime import streaming_config

    model = core.read_model(str(tiny_ir_fp32 / "language_model.xml"))
    ours = attention.wanted("CPU", streaming_config(model, "CPU", dict(step_profile.CONFIG)))
    kind = step_profile.OUR_ATTENTION if ours else "PagedAttentionExtension"
    for result in results.values():
        # The counters name what ran (not a timing check: the VM's noise is larger than these tiny steps).
        assert result["step_ms"] > 0 and result["profiled_ms"] > 0, result
        assert kind in result["layers_ms"] and any(
            kind.startswith("FullyConnected") for kind in result["layers_ms"]), result
        assert abs(sum(result["calls_ms"].values()) - result["profiled_ms"]) < 0.01 + 0.01 * result["profiled_ms"]
    assert set(results["image"]["calls_ms"]) == {"gen_embeddings", "language_model", "gen_head"}
    assert set(results["chat"]["calls_ms"]) == {"text_embeddings", "language_model", "lm_head"}


def test_step_profile_steps_read_a_written_cache(tiny_ir_fp32):
    """The cached tokens a profiled step attends to were written by a real prefill, row by row: a fresh
    tensor's pages all map the OS's one zero page, whose reads never reach memory."""
    import openvino as ov

    from benchmarks import step_profile
    from janus_ov.kv_cache import by_block

    _, requests = step_profile.ours(ov.Core(), tiny_ir_fp32, past=40, images=2)  # 4 rows of 40 tokens
    lm = requests["language_model"]
    key = lm.get_tensor("key_cache.0")
    blocks = by_block(key, key.get_shape()[0])
    per_row = -(-41 // 32)  # each row's blocks, the last one holding the 41st token's slot
    for row in range(4):
        first = blocks[row * per_row]  # every row's first block holds 32 of its tokens
        assert np.count_nonzero(first) > first.size // 2, row


def test_recipe_deviation_is_zero_against_itself_and_orders_the_recipes(tiny_model_dir, tiny_ir_fp32, tmp_path):
    """benchmarks.recipe_deviation: the reference against itself deviates by nothing (same inputs, same
    numbers), and per matmul int8 < int4 < int4-sym128 on the checkpoint's own weights."""
    from benchmarks import recipe_deviation

    recipe_deviation.main(["--ir", f"fp32={tiny_ir_fp32}", "--ir", f"int8={tiny_ir_fp32}", "--prompt-tokens", "16",
                           "--steps", "4", "--checkpoint", str(tiny_model_dir), "--out", str(tmp_path)])
    res = json.loads(next(tmp_path.glob("*-recipe-deviation.json")).read_text(encoding="utf-8"))
    same = res["formats"]["int8"]
    assert same["language_model"]["hidden_rel_error_max"] == 0.0
    for part in ("text", "image"):
        assert same["as_shipped"][part]["top1_agreement"] == 1.0 and same["as_shipped"][part]["kl_max"] < 1e-9
    layers = recipe_deviation.layer_errors(tiny_model_dir, ["int8", "int4", "int4-sym128"])
    for layer in recipe_deviation.LAYER_0:
        assert 0 < layers["int8"][layer] < 0.03 and layers["int8"][layer] < layers["int4"][layer] < 0.2
        assert layers["int4-sym128"][layer] > 0
    # FORMAT:LABEL names one format under other plugin settings; outlier channels raise every error.
    dq = {"int4:dq16": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": "16"}}
    spiky = recipe_deviation.layer_errors(tiny_model_dir, ["int4", "int4:dq16"], configs=dq, outliers=20.0)
    for layer in recipe_deviation.LAYER_0:
        assert 0 < spiky["int4:dq16"][layer] < 0.2 and 0 < spiky["int4"][layer] < 0.2


def test_recipe_deviation_measures_the_kv_cache_against_an_f32_cache_reference(tiny_ir_fp32, tmp_path):
    """The reference takes plugin settings too: fp32 weights with an f32 KV cache against the same IR
    with the plugin's u8 cache (keys by channel) and with keys by token. fp32:LABEL names have no
    per-matmul errors (no weight recipe), so the run does not stop there."""
    from benchmarks import recipe_deviation

    recipe_deviation.main(["--ir", f"fp32={tiny_ir_fp32}", "--config", 'fp32={"KV_CACHE_PRECISION": "f32"}',
                           "--ir", f"fp32:u8={tiny_ir_fp32}", "--ir", f"fp32:u8-by-token={tiny_ir_fp32}",
                           "--config", 'fp32:u8-by-token={"KEY_CACHE_QUANT_MODE": "BY_TOKEN"}',
                           "--prompt-tokens", "48", "--steps", "8", "--out", str(tmp_path),
                           "--checkpoint", str(tmp_path / "no-checkpoint")])  # none needed, as on CI
    res = json.loads(next(tmp_path.glob("*-recipe-deviation.json")).read_text(encoding="utf-8"))
    for name in ("fp32:u8", "fp32:u8-by-token"):
        lm = res["formats"][name]["language_model"]
        assert 0 < lm["hidden_rel_error_median"] < 0.1, (name, lm)  # u8 rounding, nothing worse
    assert res["layer_0_output_rel_error"] == {}


def test_key_outliers_scale_each_heads_slowest_rotary_channels_only():
    """benchmarks.models --key-outliers: 8 of each head's key channels (the last 4 of each rotary half)."""
    import torch

    from benchmarks.models import _with_key_outliers

    k = torch.ones(2 * 16, 3)  # 2 heads of 16 channels
    other = torch.ones(32, 3)
    out = _with_key_outliers({"model.language_model.layers.0.self_attn.k_proj.weight": k.clone(),
                              "model.language_model.layers.0.self_attn.q_proj.weight": other.clone()}, 10.0, 16)
    scaled = {i for i in range(32) if out["model.language_model.layers.0.self_attn.k_proj.weight"][i, 0] == 10}
    assert scaled == {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31}
    assert torch.equal(out["model.language_model.layers.0.self_attn.q_proj.weight"], other)


def test_machine_names_tell_kinds_with_one_model_name_apart(monkeypatch):
    """Our AVX2 Zen 3, AVX-512 Zen 4 and Zen 5 VMs all call themselves "AMD EPYC": results files must differ."""
    from benchmarks import report

    monkeypatch.setattr(report, "cpu_model", lambda: "AMD EPYC")
    names = set()
    for family, flags in (("25", ["avx2"]), ("25", ["avx2", "avx512f", "avx512_vnni"]),
                          ("26", ["avx2", "avx512f", "avx512_vnni"]), ("6", ["avx2", "avx512f", "amx_bf16"])):
        monkeypatch.setattr(report, "cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(report, "cpu_family", lambda family=family: family)
        names.add(report.machine_slug())
    assert len(names) == 4 and all(n.startswith("amd-epyc-") for n in names)


def test_lm_head_benchmark_times_both_heads_and_keeps_the_top_token(tiny_ir_fp32, tmp_path):
    """benchmarks.lm_head on the tiny export: both heads timed at each row count; against the fp32 head
    the screened one keeps INT8 precision on the top logits and a larger error on the rest (the int4
    tail), and the fp32 top token always stays within the screen's candidates."""
    from benchmarks import lm_head

    res = lm_head.main(["--ir", str(tiny_ir_fp32), "--rows", "1,3", "--calls", "12", "--samples", "64",
                        "--out", str(tmp_path / "head.json")])
    assert json.loads((tmp_path / "head.json").read_text(encoding="utf-8")) == json.loads(json.dumps(res))
    for rows in ("1 rows", "3 rows"):
        assert set(res["ms_per_call"][rows]) == {"int8", "int8-screened"}
        assert all(ms > 0 for ms in res["ms_per_call"][rows].values())
    dev = res["deviation"]
    assert dev["int8-screened"]["top8_rel_error"] < 0.02 and dev["int8"]["top8_rel_error"] < 0.02
    assert dev["int8-screened"]["all_rel_error"] > 3 * dev["int8"]["all_rel_error"]
    assert dev["int4-channel"]["all_rel_error"] > dev["int8-screened"]["all_rel_error"] * 0.9
    assert dev["screen_rank_of_top1"]["max"] < dev["screen_rank_of_top1"]["candidates"]
    assert dev["int8-screened"]["top1_agreement"] >= 0.9 and dev["int8-screened"]["kl_t1"] > 0


def test_anchor_bare_side_times_our_decode_step_alone(tiny_ir_fp32):
    """benchmarks.anchor_child's bare side (what a pipeline adds over its own calls) runs on our graph;
    the GenAI side needs an optimum export and its own venv (benchmarks/requirements-genai.txt)."""
    from benchmarks import anchor_child

    figures = anchor_child.bare_side("ours_bare", str(tiny_ir_fp32), 40, 4)(0)
    assert figures["tpot_ms"] > 0 and abs(figures["tokens_per_s"] * figures["tpot_ms"] - 1e3) < 1e-6


def test_plugin_settings_benchmark_times_every_task_under_every_setting(tiny_ir_fp32):
    """benchmarks.plugin_settings on the tiny model: the shipped settings and each one asked for, every
    task (a prompt, then decode calls of each row count) timed; an unknown plugin setting is refused by
    OpenVINO itself rather than measured as if it applied."""
    import pytest

    from benchmarks import plugin_settings

    result = plugin_settings.main(["--ir", str(tiny_ir_fp32), "--setting", 'dq32={"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}',
                                   "--rounds", "2", "--prompt-tokens", "24", "--past-tokens", "8", "--rows", "1,3",
                                   "--calls", "2"])
    assert set(result) == {"shipped", "dq32"}
    for per_task in result.values():
        assert set(per_task) == {"prefill", "decode_1", "decode_3"} and all(ms > 0 for ms in per_task.values())
    several = plugin_settings.main(["--ir", str(tiny_ir_fp32), "--rounds", "1", "--prompt-tokens", "8,24",
                                    "--rows", "1", "--calls", "1"])  # where a prompt model would take over
    assert set(several["shipped"]) == {"prefill_8", "prefill_24", "decode_1"}
    with pytest.raises(Exception, match="NO_SUCH_SETTING"):
        plugin_settings.main(["--ir", str(tiny_ir_fp32), "--setting", 'bad={"NO_SUCH_SETTING": "1"}', "--rounds", "1"])


def test_step_profile_variants_take_turns_with_the_shipped_steps(tiny_ir_fp32, capsys):
    """benchmarks.step_profile --variant: one more of our models per setting, for each --images size."""
    from benchmarks import step_profile

    step_profile.main(["--ir", str(tiny_ir_fp32), "--images", "1,2", "--past-tokens", "8", "--steps", "2",
                       "--variant", 'dq16={"DYNAMIC_QUANTIZATION_GROUP_SIZE": "16"}'])
    out = json.loads(capsys.readouterr().out)
    assert {"ours_1_images", "ours_2_images", "ours_1_images_dq16", "ours_2_images_dq16"} <= set(out)
    assert out["config"] == step_profile.CONFIG and "DYNAMIC_QUANTIZATION_GROUP_SIZE" not in step_profile.CONFIG
    assert all(out[k]["step_ms"] > 0 for k in out if k.startswith("ours"))


def test_step_profile_takes_turns_between_our_attention_and_the_plugins(tiny_ir_fp32, capsys):
    """benchmarks.step_profile --plugin-attention: the same steps with the plugin's PagedAttention."""
    from benchmarks import step_profile
    from janus_ov import attention

    step_profile.main(["--ir", str(tiny_ir_fp32), "--images", "1", "--past-tokens", "40", "--steps", "2",
                       "--plugin-attention"])
    out = json.loads(capsys.readouterr().out)
    assert "PagedAttentionExtension" in out["ours_1_images_plugin_attention"]["layers_ms"]
    ours = attention.wanted("CPU", {**step_profile.CONFIG, "INFERENCE_PRECISION_HINT": "f32"})
    assert (step_profile.OUR_ATTENTION if ours else "PagedAttentionExtension") in out["ours_1_images"]["layers_ms"]
    assert "JANUS_OV_ATTENTION" not in os.environ


def test_step_profile_takes_turns_between_our_int4_matmuls_and_the_plugins(tiny_ir_lm_int4, capsys):
    """benchmarks.step_profile --plugin-matmul: the same steps with the plugin's int4 matmuls."""
    from benchmarks import step_profile

    step_profile.main(["--ir", str(tiny_ir_lm_int4), "--images", "1", "--past-tokens", "40", "--steps", "2",
                       "--plugin-matmul"])
    out = json.loads(capsys.readouterr().out)
    assert out["ours_1_images"]["step_ms"] > 0 and out["ours_1_images_plugin_matmul"]["step_ms"] > 0
    assert "JANUS_OV_MATMUL" not in os.environ
    if {"avx512_vnni", "avx512bw"} <= cpu_flags():  # ours in the shipped steps, none in the variant's
        assert "FullyConnectedCompressed" in out["ours_1_images_plugin_matmul"]["layers_ms"]
        assert out["ours_1_images"]["layers_ms"].get("FullyConnectedCompressed", 0) < \
            out["ours_1_images_plugin_matmul"]["layers_ms"]["FullyConnectedCompressed"]


@pytest.mark.skipif(not {"avx512_vnni", "avx512bw"} <= cpu_flags(),
                    reason="step copies exist only where our int4 matmuls (AVX-512 VNNI) run the language model")
def test_pipeline_steps_alternate_a_copy_and_the_dynamic_model(tiny_ir_lm_int4):
    """benchmarks.pipeline_steps --against-dynamic: a real request's image steps split evenly between the
    shipped copy and the dynamic model; with --add-copy a copy the runtime does not ship, for this run only."""
    from benchmarks import pipeline_steps
    from janus_ov import runtime

    shipped = pipeline_steps.against_dynamic(tiny_ir_lm_int4, images=1, requests=1)
    assert shipped["tokens"] == 2 and shipped["copy_ms"] > 0 and shipped["dynamic_ms"] > 0
    # The 575 steps after the prompt's call, in balanced turns (benchmarks.report.in_turns).
    assert sorted(shipped["calls"].items()) == [("language_model", 288), ("language_model.2", 287)]
    added = pipeline_steps.against_dynamic(tiny_ir_lm_int4, images=3, requests=1, add_copy=True)
    assert sorted(added["calls"].items()) == [("language_model", 288), ("language_model.6", 287)]
    assert 6 not in runtime.STEP_TOKENS
    with pytest.raises(SystemExit, match="no step copy for 6 tokens"):
        pipeline_steps.against_dynamic(tiny_ir_lm_int4, images=3, requests=1)


def test_pipeline_steps_profile_names_our_operations(tiny_ir_lm_int4, capsys):
    """benchmarks.pipeline_steps --profile: every step call of a two-image request counted, with the
    plugin's counters per layer type, our attention and our matmuls apart where they run."""
    from benchmarks import pipeline_steps, step_profile
    from janus_ov import attention

    out = json.loads(json.dumps(pipeline_steps.main(["--ir", str(tiny_ir_lm_int4), "--profile", "--images", "2"])))
    capsys.readouterr()
    steps = out["steps"]
    assert list(steps) == ["4"] and steps["4"]["calls"] == 575 and steps["4"]["wall_ms"] > 0
    layers = steps["4"]["layers_ms"]
    assert all(ms >= 0 for ms in layers.values()) and sum(layers.values()) > 0
    if attention.wanted("CPU", {"INFERENCE_PRECISION_HINT": "f32"}):
        assert step_profile.OUR_ATTENTION in layers and "PagedAttentionExtension" not in layers


def test_decode_attention_kernel_matches_the_plugins_attention_on_its_own_cache(tiny_ir_fp32):
    """benchmarks.decode_attention takes the runtime's build of its kernel and reads the cache the CPU plugin's
    PagedAttention wrote in a real decode step (rows of different blocks, a partial last block): its
    output for layer 0 must be the plugin's, and both sides must have been timed."""
    from benchmarks import decode_attention

    result = decode_attention.measure(tiny_ir_fp32, rows=(1, 3), past=40, rounds=1, steps=1)
    assert result["kernel_isa"] in ("avx512", "portable")
    for size in result["sizes"]:
        assert size["max_rel_diff_layer0"] < 1e-4, size
        assert size["plugin_ms_per_step"] > 0 and size["ours_ms_per_step"] > 0


def test_sides_taking_turns_each_go_second_half_the_time():
    """Of two identical models run call by call the second measured 5-6 % faster: in_turns reverses
    the order every other round."""
    from benchmarks.report import in_turns

    rounds = [in_turns({"a": 1, "b": 2}.items(), i) for i in range(4)]
    assert [[name for name, _ in r] for r in rounds] == [["a", "b"], ["b", "a"], ["a", "b"], ["b", "a"]]
