"""Where one decode step's time goes: our chat step against OpenVINO GenAI's model of the same weights.

Both graphs (and ours fused into one model with its LM head, "ours_fused") are made PagedAttention
models by the same OpenVINO transformation and compiled with the same settings (LATENCY, f32
inference precision, through runtime.streaming_config as our runtime compiles its streaming parts),
then fed one token after a --past-token cache, the way a chat decodes. --variant adds more of
our models with other plugin settings, to A/B a setting step by step.
The models take turns, one step each. Per model it prints the median wall time of a step (all of
the model's calls) and, from the CPU plugin's own profiling counters, the mean time per executed
layer type, so the two can be compared line by line (issue 21: "find where our extra ms per token go").

    python -m benchmarks.step_profile --ir OUR_IR [--genai DIR] [--past-tokens 640] [--steps 40]
    python -m benchmarks.step_profile --ir OUR_IR --images 1,4 --past-tokens 300   # image steps: what grows with rows
    python -m benchmarks.step_profile --ir OUR_IR --variant dq32='{"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}'  # A/B a setting
    python -m benchmarks.step_profile --ir OUR_IR --images 1,4 --plugin-attention  # our attention vs the plugin's
    python -m benchmarks.step_profile --ir OUR_IR --images 1,4 --plugin-matmul  # our int4 matmuls vs the plugin's

--genai: an optimum-intel export of our language model as a plain Llama (benchmarks.genai_anchor
writes one to benchmarks/models/genai-llama-<recipe>); only openvino is needed to read it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .models import MODELS_DIR
from .report import in_turns

CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def paged(core, xml: Path, config: dict):
    from janus_ov.kv_cache import compile_paged

    model = core.read_model(str(xml))
    return compile_paged(core, model, "CPU", shipped(model, config))


def shipped(model, config: dict) -> dict:
    """`config` with what our runtime adds for a streaming part (the caller's settings win). For GenAI's
    graph too: the rule follows the weights, and CONFIG already holds what GenAI is given."""
    from janus_ov.runtime import streaming_config

    return streaming_config(model, "CPU", config)


def bind_cache(request, past: int, rows: int = 1, kv=None, fill=None, width: int | None = None) -> dict:
    """Cache tensors for `rows` sequences of `past` cached tokens each, written by a real prefill of
    random tokens (one call per row), and the inputs of one new token per row. Written, not just
    bound: the pages of a fresh tensor all map the OS's one zero page, so attention over them would
    read the CPU's caches instead of memory (8 image rows' attention measured 10 ms too fast).
    kv: the request's PagedKVCache when it has one already (a second one would rebind its tensors).
    fill: an infer request of another compiled model of the same graph and settings to prefill with
    (bound to the same cache tensors); after a call of another shape the plugin's profiling counters
    of a model keep that call's times, so a profiled model must not prefill itself. width: the
    embeddings' width, where `request`'s output is not the hidden state (the fused model's logits)."""
    from janus_ov.kv_cache import PagedKVCache, bind_tensors, cache_inputs

    kv = kv or PagedKVCache(request)
    kv.start([past + 1] * rows)
    fill = fill or request
    compiled = request.get_compiled_model()
    names = [port.get_any_name() for port in fill.get_compiled_model().inputs]
    if fill is not request:
        caches = [port.get_any_name() for port in cache_inputs(fill.get_compiled_model())]
        bind_tensors([fill], {name: request.get_tensor(name) for name in caches})
    if "inputs_embeds" in names:
        width = width or compiled.output(0).get_partial_shape()[-1].get_length()  # the input's: dynamic here
    rng = np.random.default_rng(0)
    for row in range(rows if past else 0):
        if "inputs_embeds" in names:
            tokens = {"inputs_embeds": (rng.standard_normal((past, width)) * 0.02).astype(np.float32)}
        else:  # GenAI's graph embeds token ids itself
            tokens = {"input_ids": rng.integers(1000, 90000, past).astype(np.int64)}
        lengths = np.where(np.arange(rows) == row, past, 0).astype(np.int32)
        fill.infer({**tokens, **kv.step_inputs(lengths)})
        kv.advance(lengths)
    return kv.step_inputs(np.ones(rows, np.int32))


# Our operations run as the plugin's "Reference" nodes: our attention's are named attention.<layer>
# (janus_ov/attention.py); the rest are our int4 matmuls (and any op the plugin runs by reference).
OUR_ATTENTION, OTHER_REFERENCE = "Reference (our attention)", "Reference (our matmuls, others)"


def by_layer_type(request) -> dict:
    """ms per executed layer type (the plugin's node type, as it ran: fusions show as one node)."""
    totals: dict = defaultdict(float)
    for info in request.profiling_info:
        if info.status.name == "EXECUTED":
            kind = info.node_type
            if kind == "Reference":
                kind = OUR_ATTENTION if info.node_name.startswith("attention.") else OTHER_REFERENCE
            totals[kind] += info.real_time.total_seconds() * 1e3
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def run_steps(models: dict, steps: int) -> dict:
    """models: name -> (step, {call: its infer request}). The models take turns step by step, so this
    VM's slow and fast spells (+-20 % within minutes) hit them alike. Per model: the median step, and
    the plugin's counters per layer type and per call, averaged over the measured steps."""
    for step, _ in models.values():
        for _ in range(5):
            step()
    times = {name: [] for name in models}
    layers = {name: defaultdict(float) for name in models}
    calls = {name: defaultdict(float) for name in models}
    for i in range(steps):
        for name, (step, requests) in in_turns(models.items(), i):
            t0 = time.perf_counter()
            step()
            times[name].append((time.perf_counter() - t0) * 1e3)
            for call, request in requests.items():
                for layer, ms in by_layer_type(request).items():
                    layers[name][layer] += ms / steps
                    calls[name][call] += ms / steps
    return {name: {"step_ms": statistics.median(times[name]), "profiled_ms": sum(layers[name].values()),
                   "calls_ms": {k: round(v, 2) for k, v in calls[name].items()},
                   "layers_ms": {k: round(v, 3) for k, v in sorted(layers[name].items(), key=lambda kv: -kv[1])}}
            for name in models}


def ours(core, ir: Path, past: int, images: int = 0, settings: dict | None = None):
    """A chat step (images=0: text embedding, language model, lm_head) or an image step of `images`
    images (2 CFG rows each: image-token embedding, language model, gen_head with the CFG mix)."""
    config = {**CONFIG, **(settings or {}), "PERF_COUNT": True}
    rows = 2 * images or 1
    embed_part, head_part = ("gen_embeddings", "gen_head") if images else ("text_embeddings", "lm_head")
    xml = ir / "language_model.xml"
    lm = paged(core, xml, config).create_infer_request()
    inputs = bind_cache(lm, past, rows, fill=paged(core, xml, config).create_infer_request())
    embed = core.compile_model(str(ir / f"{embed_part}.xml"), "CPU", config).create_infer_request()
    head_model = core.read_model(str(ir / f"{head_part}.xml"))
    head = core.compile_model(head_model, "CPU", shipped(head_model, config)).create_infer_request()
    ids, cfg = np.zeros((rows, 1), np.int64), np.array(5.0, np.float32)

    def step():
        embeds = embed.infer([ids], share_inputs=True, share_outputs=True)[0]
        hidden = lm.infer({"inputs_embeds": embeds.reshape(rows, -1), **inputs}, share_inputs=True,
                          share_outputs=True)[0]
        if images:
            head.infer([hidden.reshape(rows, -1), cfg], share_inputs=True, share_outputs=True)
        else:
            head.infer([hidden.reshape(rows, 1, -1)], share_inputs=True, share_outputs=True)

    return step, {embed_part: embed, "language_model": lm, head_part: head}


def ours_fused(core, ir: Path, past: int):
    """Our chat step as one compiled model: the language model, the hidden state of the rows asked
    for (a `logit_rows` input), lm_head -- the "one call per step" alternative to ours()."""
    import openvino as ov
    import openvino.opset13 as ops

    from janus_ov import kv_cache

    lm, head = core.read_model(str(ir / "language_model.xml")), core.read_model(str(ir / "lm_head.xml"))
    kv_cache.paged(lm, "CPU", shipped(lm, CONFIG))  # as the runtime makes it, our attention included
    rows = ops.parameter([-1], ov.Type.i64, name="logit_rows")
    hidden = lm.output(0).get_node().input_value(0)  # [tokens,1,H], what the Result reads
    picked = ops.gather(hidden, rows, ops.constant(0))
    for target in list(head.get_parameters()[0].output(0).get_target_inputs()):
        target.replace_source_output(picked.output(0))
    model = ov.Model([ops.result(head.output(0).get_node().input_value(0))], [*lm.get_parameters(), rows])
    request = core.compile_model(model, "CPU", shipped(model, {**CONFIG, "PERF_COUNT": True})).create_infer_request()
    embed = core.compile_model(str(ir / "text_embeddings.xml"), "CPU", CONFIG).create_infer_request()
    width = head.get_parameters()[0].get_partial_shape()[-1].get_length()
    fill = paged(core, ir / "language_model.xml", {**CONFIG, "PERF_COUNT": True}).create_infer_request()
    inputs = {"logit_rows": np.zeros(1, np.int64), **bind_cache(request, past, fill=fill, width=width)}
    token = np.zeros((1, 1), np.int64)

    def step():
        embeds = embed.infer([token], share_inputs=True, share_outputs=True)[0]
        request.infer({"inputs_embeds": embeds.reshape(1, -1), **inputs}, share_inputs=True, share_outputs=True)

    return step, {"fused": request}


def genai(core, folder: Path, past: int):
    config = {**CONFIG, "PERF_COUNT": True}
    lm = paged(core, folder / "openvino_model.xml", config).create_infer_request()
    fill = paged(core, folder / "openvino_model.xml", config).create_infer_request()
    inputs = {"input_ids": np.zeros(1, np.int64), **bind_cache(lm, past, fill=fill)}
    return (lambda: lm.infer(inputs, share_inputs=True, share_outputs=True)), {"openvino_model": lm}


def main(argv=None):
    import openvino as ov

    p = argparse.ArgumentParser(prog="python -m benchmarks.step_profile", description=__doc__.splitlines()[0])
    p.add_argument("--ir", type=Path, required=True, help="our converted model (int4)")
    p.add_argument("--genai", type=Path, default=MODELS_DIR / "genai-llama-asym64")
    p.add_argument("--past-tokens", type=int, default=640)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--config", type=json.loads, default={},
                   help='extra CPU-plugin settings for every model, e.g. \'{"VALUE_CACHE_PRECISION": "u4"}\'')
    p.add_argument("--only", choices=("ours", "ours_fused", "genai"), default=None)
    p.add_argument("--variant", action="append", default=[], help="NAME=JSON: one more of our models (chat, or "
                   "each --images size) with these extra plugin settings, taking turns with the others")
    p.add_argument("--images", default=None, help="e.g. 1,4: our image steps of that many images instead "
                   "(2 CFG rows each, --past-tokens cached per row); GenAI has no image step")
    p.add_argument("--plugin-attention", action="store_true", help="one more of our models (chat, or each "
                   "--images size) with the CPU plugin's PagedAttention instead of ours, taking turns")
    p.add_argument("--plugin-matmul", action="store_true", help="one more of our models (chat, or each --images "
                   "size) with the CPU plugin's int4 matmuls instead of ours, taking turns")
    args = p.parse_args(argv)
    core = ov.Core()
    CONFIG.update(args.config)
    out = {"config": dict(CONFIG)}
    variants = dict(item.split("=", 1) for item in args.variant)
    if args.images:
        models = {f"ours_{n}_images": ours(core, args.ir, args.past_tokens, images=n)
                  for n in map(int, args.images.split(","))}
    else:
        models = {name: fn(core, where, args.past_tokens)
                  for name, fn, where in (("ours", ours, args.ir), ("ours_fused", ours_fused, args.ir),
                                          ("genai", genai, args.genai)) if args.only in (None, name)}
    for name, settings in variants.items():
        for n in map(int, args.images.split(",")) if args.images else [0]:
            models[f"ours_{n}_images_{name}" if n else f"ours_{name}"] = ours(core, args.ir, args.past_tokens, n,
                                                                             json.loads(settings))
    if args.plugin_matmul:
        os.environ["JANUS_OV_MATMUL"] = "plugin"  # read as each model is compiled (janus_ov.matmul.wanted)
        for n in map(int, args.images.split(",")) if args.images else [0]:
            models[f"ours_{n}_images_plugin_matmul" if n else "ours_plugin_matmul"] = ours(core, args.ir, args.past_tokens, n)
        del os.environ["JANUS_OV_MATMUL"]
    if args.plugin_attention:
        os.environ["JANUS_OV_ATTENTION"] = "plugin"  # read as each model is compiled (janus_ov.attention.wanted)
        for n in map(int, args.images.split(",")) if args.images else [0]:
            models[f"ours_{n}_images_plugin_attention" if n else "ours_plugin_attention"] = ours(
                core, args.ir, args.past_tokens, n)
        del os.environ["JANUS_OV_ATTENTION"]
    out.update(run_steps(models, args.steps))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
