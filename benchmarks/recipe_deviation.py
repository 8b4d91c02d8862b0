"""How far each weight format's outputs are from the fp32 export's, on the same inputs (issue 21).

    PYTHONPATH=. python -m benchmarks.recipe_deviation --ir fp32=DIR --ir int4=DIR --ir int4-sym128=DIR [...]
                                                       [--prompt-tokens 192] [--steps 64]
                                                       [--config NAME='{"DYNAMIC_QUANTIZATION_GROUP_SIZE": "32"}']

A NAME is a weight format (compress.RECIPES), optionally with a label: FORMAT:LABEL. --config gives
one named IR extra CPU-plugin settings (over the runtime's own), so one IR can be measured under two
settings: --ir int4=DIR --ir int4:dq32=DIR --config int4:dq32='{...}'. The reference takes one too:
--config fp32='{"KV_CACHE_PRECISION": "f32"}' with --ir fp32:u8=DIR measures the KV cache's own error.

Every model gets the same token ids: a random prompt, then --steps tokens fed one at a time
(teacher forcing, so a different choice never changes what comes next). At each step the language
model's last hidden state is kept. Per format it reports:
- language_model: the hidden state's relative error, and what it does to the next-token choice when
  the *reference's* (fp32) heads read it -- text logits (lm_head) and image logits (gen_head): top-1
  agreement and KL(reference || format). This is the language model's own deviation, the part a
  recipe changes.
- as shipped: the same with the format's own heads (its int8 lm_head / gen_head), the end-to-end
  deviation a user gets.
- layer 0: each of the first layer's seven matmuls alone on random activations, the recipe's own error
  (a random network compounds errors over 24 layers far more than a trained one, whose residual
  stream dominates: the whole-model figures over-state every format alike).
The vision encoder and VQ decoder do not depend on the int4 recipe (compress.PLAN); their errors
are in design-measurements.md. f32 inference precision everywhere, so only the weights (and any
--config) differ.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from .models import default_path
from .report import machine, machine_slug
from .run import RESULTS

F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def hidden_states(ir: str, ids: np.ndarray, prompt_tokens: int, config: dict | None = None) -> tuple[np.ndarray, object]:
    """The last hidden state [steps,H] after each forced token, and the runtime (for its heads)."""
    from janus_ov.runtime import Runtime

    runtime = Runtime(ir, ov_config={**F32, **(config or {})}, cache_dir=None, max_concurrency=1, warm_up=False)
    out = []
    with runtime.context() as ctx:
        ctx.start([len(ids)])
        h = ctx.language_model(np.array(ctx.embed_text(ids[None, :prompt_tokens])[0]), [prompt_tokens])
        out.append(np.array(h[0]))
        for i in range(prompt_tokens, len(ids) - 1):
            out.append(np.array(ctx.language_model(np.array(ctx.embed_text(ids[None, i:i + 1])[0]))[0]))
    return np.stack(out), runtime


def heads(runtime, hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text logits [S,V], image logits [S,K]) of hidden states [S,H] through `runtime`'s heads."""
    with runtime.context() as ctx:
        text = np.array(ctx.lm_head(hidden[:, None])[:, 0])
        # cfg_weight 1 on (h, h): uncond + 1 * (cond - uncond) = the conditional logits themselves.
        image = np.array(ctx.gen_head(np.concatenate([hidden, hidden]), np.array(1.0, np.float32)))
    return text, image


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref.astype(np.float64)), log_softmax(got.astype(np.float64))
    kl = (np.exp(lp) * (lp - lq)).sum(-1)
    return {"top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()), "kl_mean": float(kl.mean()),
            "kl_max": float(kl.max()),
            "logits_rel_error": float(np.median(np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)))}


LAYER_0 = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")


def layer_errors(checkpoint, recipes, rows: int = 16, configs: dict | None = None, outliers: float = 0.0) -> dict:
    """Relative output error of each of layer 0's matmuls alone, per FORMAT[:LABEL] name (compress.RECIPES;
    `configs`: a name's extra plugin settings): the recipe's own error, before 24 layers of a random
    network compound it. outliers > 0 scales 1 % of the input channels by that factor, as trained LLMs'
    activations have a few outlier channels: the case where activations quantized in longer groups
    (DYNAMIC_QUANTIZATION_GROUP_SIZE) lose the most."""
    if not recipes:  # nothing to measure: the run needs no checkpoint (nor nncf)
        return {}
    import nncf
    import openvino as ov
    import openvino.opset13 as ops
    from safetensors import safe_open

    from janus_ov.compress import nncf_arguments
    from janus_ov.runtime import streaming_config  # as the runtime compiles the language model

    nncf.set_log_level(logging.ERROR)
    out = {name: {} for name in recipes}
    shard = sorted(checkpoint.glob("*.safetensors"))[0]
    rng = np.random.default_rng(0)
    with safe_open(shard, "pt") as f:
        for layer in LAYER_0:
            w = f.get_tensor(f"model.language_model.layers.0.{layer}.weight").float().numpy()
            x = rng.standard_normal((rows, w.shape[1])).astype(np.float32)
            if outliers:
                x[:, rng.choice(w.shape[1], max(1, w.shape[1] // 100), replace=False)] *= outliers
            ref = x.astype(np.float64) @ w.T.astype(np.float64)
            for name in recipes:
                weights, config = name.split(":")[0], (configs or {}).get(name, {})
                param = ops.parameter([-1, w.shape[1]], np.float32)
                model = ov.Model([ops.matmul(param, ops.convert(ops.constant(w.astype(np.float16)), np.float32),
                                             False, True)], [param])
                recipe = nncf_arguments(weights)
                if weights.startswith("int4"):  # a lone matmul would be NNCF's "last layer", kept in int8
                    recipe["all_layers"] = True
                model = nncf.compress_weights(model, **recipe)
                got = ov.Core().compile_model(model, "CPU", streaming_config(model, "CPU", {**F32, **config}))(x)[0]
                out[name][layer] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.recipe_deviation", description=__doc__.splitlines()[0])
    p.add_argument("--ir", action="append", required=True, help="NAME=DIR; one must be fp32=DIR (the reference)")
    p.add_argument("--config", action="append", default=[], help="NAME=JSON: extra plugin settings for that IR")
    p.add_argument("--prompt-tokens", type=int, default=192)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    p.add_argument("--checkpoint", type=Path, default=default_path("janus-pro-1b"),
                   help="the checkpoint the IRs came from (for the per-layer errors)")
    args = p.parse_args(argv)
    irs = dict(item.split("=", 1) for item in args.ir)
    configs = {name: json.loads(value) for name, value in (item.split("=", 1) for item in args.config)}
    if "fp32" not in irs:
        p.error("give the reference as --ir fp32=DIR")

    from janus_ov.model_info import ModelInfo

    vocab = ModelInfo.load(irs["fp32"]).vocab_size
    ids = np.random.default_rng(args.seed).integers(0, vocab, args.prompt_tokens + args.steps, dtype=np.int64)
    ref_hidden, ref_runtime = hidden_states(irs["fp32"], ids, args.prompt_tokens, configs.get("fp32"))
    ref_text, ref_image = heads(ref_runtime, ref_hidden)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "prompt_tokens": args.prompt_tokens,
              "steps": args.steps, "irs": irs, "configs": configs, "formats": {}}
    for name, ir in irs.items():
        if name == "fp32":
            continue
        hidden, runtime = hidden_states(ir, ids, args.prompt_tokens, configs.get(name))
        rel = np.linalg.norm(hidden - ref_hidden, axis=-1) / np.linalg.norm(ref_hidden, axis=-1)
        text, image = heads(ref_runtime, hidden)
        own_text, own_image = heads(runtime, hidden)
        result["formats"][name] = {
            "language_model": {"hidden_rel_error_median": float(np.median(rel)), "hidden_rel_error_max": float(rel.max()),
                               "text": compare(ref_text, text), "image": compare(ref_image, image)},
            "as_shipped": {"text": compare(ref_text, own_text), "image": compare(ref_image, own_image)}}
        print(name, json.dumps(result["formats"][name]), flush=True)
        del runtime
    from janus_ov.compress import RECIPES

    # Per-matmul errors belong to weight recipes; an fp32 IR under other settings (fp32:LABEL) has none.
    names = [n for n in irs if n.split(":")[0] in RECIPES]
    result["layer_0_output_rel_error"] = layer_errors(args.checkpoint, names, configs=configs)
    result["layer_0_output_rel_error_outlier_channels_x20"] = layer_errors(args.checkpoint, names, configs=configs,
                                                                           outliers=20.0)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("layer_0")}))
    out = args.out / f"{time.strftime('%Y-%m-%d')}-{machine_slug()}-recipe-deviation.json"
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print("written", out)


if __name__ == "__main__":
    main()
