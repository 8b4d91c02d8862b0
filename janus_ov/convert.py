"""Convert a Janus checkpoint into the seven OpenVINO IR parts named in janus_ov/parts.py.

Each part is a small torch.nn.Module wrapper around the transformers modules, traced with
`openvino.convert_model`, given the names of parts.py, compressed (compress.py), saved, and
released before the next part is traced, so peak memory stays near the size of the stored
checkpoint plus one part.

Weights stay in the checkpoint's stored dtype (bf16) while tracing: OpenVINO's
`__make_16bit_traceable` turns Linear/Embedding layers into 16-bit constants with fp32
activations, so no fp32 copy of a 7B model is ever made; compress.py then decides the
final weight type of each part.
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from pathlib import Path

from . import parts
from .errors import ConversionError

# Example sizes for tracing. Every batch/length dimension is dynamic in the IR; the
# language model is traced with a non-empty cache and T > 1 so no "first step" or
# "single token" branch gets frozen into the graph.
_B, _T, _P = 2, 3, 2
_PATCH_NAME = "_janus_ov_orig_forward"
GC_BYTES = 32 * 2**20  # release() collects garbage after parts that held at least this much


def convert_checkpoint(model_dir, output_dir, weights: str = "int4", progress=print) -> Path:
    """Write the 7 IR parts + model_info.json + tokenizer.json of `model_dir` into `output_dir`."""
    from .checkpoint import load_checkpoint

    if weights not in parts.WEIGHT_FORMATS:
        raise ConversionError(f"Unknown weight format {weights!r}; choose one of {', '.join(parts.WEIGHT_FORMATS)}.")
    progress = progress or (lambda message: None)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    progress(f"Loading checkpoint {model_dir}")
    ckpt = load_checkpoint(model_dir)
    mapped_files = sorted(Path(model_dir).glob("*.safetensors"))  # what transformers memory-maps
    ckpt.info.save(output_dir)
    (output_dir / "tokenizer.json").write_text(ckpt.tokenizer_json, encoding="utf-8")
    model = ckpt.model
    del ckpt
    for i, name in enumerate(parts.PARTS):
        progress(f"Converting {name} ({weights})")
        convert_part(model, name, output_dir, weights, mapped_files)
        release(model, name, remaining=parts.PARTS[i + 1:])  # its torch weights are no longer needed
    return output_dir


def convert_part(model, name: str, output_dir: Path, weights: str, mapped_files=()) -> None:
    import openvino as ov

    from .compress import compress

    with _shedding(mapped_files):
        ov_model = trace_part(model, name)
        ov_model = compress(ov_model, name, weights)
        # OpenVINO's own fp16 compression handles the leftover f32 constants (norms, biases),
        # keeping the ones fp16 cannot represent.
        ov.save_model(ov_model, output_dir / f"{name}.xml", compress_to_fp16=weights != "fp32")
    # Dropped here; the traced graph's reference cycles go in release's gc.collect, which follows
    # each part of real size.
    del ov_model


def trace_part(model, name: str):
    """Trace one part to an ov.Model with the input/output names of parts.py."""
    import openvino as ov
    import torch
    from openvino.frontend.pytorch.patch_model import __make_16bit_traceable as make_16bit_traceable
    from openvino.frontend.pytorch.patch_model import unpatch_model
    from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

    module, example, shapes = _WRAPPERS[name](model)
    make_16bit_traceable(module, _PATCH_NAME)
    try:
        with torch.no_grad():
            # torch.jit.trace's own check runs the part twice more to compare the trace with eager
            # PyTorch; the parity tests compare the converted IR itself with PyTorch, so here that
            # check only costs time (a quarter of a tiny model's conversion).
            decoder = TorchScriptPythonDecoder(module, example_input=example, trace_kwargs={"check_trace": False})
            ov_model = ov.convert_model(decoder, input=shapes)
    except Exception as err:  # the frontend raises many types; report which part failed
        raise ConversionError(f"OpenVINO could not convert the {name} part: {err}") from err
    finally:
        # The patch also replaces torch.bmm process-wide; leave torch as we found it.
        unpatch_model(module, _PATCH_NAME)
    _name_ports(ov_model.inputs, parts.INPUTS[name] if name != "language_model" else _lm_input_names(model))
    _name_ports(ov_model.outputs, parts.OUTPUTS[name] if name != "language_model" else _lm_output_names(model))
    if name == "language_model":
        make_stateful(ov_model, _lm_cache_names(model))
    return ov_model


def _name_ports(ports, names) -> None:
    for port, port_name in zip(ports, names, strict=True):
        port.get_tensor().set_names({port_name})


def _part_modules(model, name: str) -> list:
    janus = model.model
    return {
        "vision": [janus.vision_model, janus.aligner],
        "text_embeddings": [janus.language_model.embed_tokens],
        "language_model": [janus.language_model],
        "lm_head": [model.lm_head],
        "gen_embeddings": [janus.generation_embeddings, janus.generation_aligner],
        "gen_head": [janus.generation_head],
        "vq_decoder": [janus.vqmodel],
    }[name]


@contextmanager
def _shedding(files, every_s: float = 0.5):
    """While a part is traced, compressed and saved, keep dropping the pages of the memory-mapped
    checkpoint files that have been read (transformers maps safetensors copy-on-write; conversion
    never writes to a weight). Compression reads each weight once and writes a smaller copy, so
    without this the part's whole stored size (13 GB of bf16 for Janus-Pro-7B's language model)
    sits in RSS beside the compressed result; with it, only what was read in the last `every_s`.
    A page read again is faulted back in from the page cache or the file."""
    from .memory import drop_file_pages

    done = threading.Event()

    def shed():
        while not done.wait(every_s):
            drop_file_pages(files)

    thread = threading.Thread(target=shed, name="janus-ov-convert-shed", daemon=True)
    if files:
        thread.start()
    try:
        yield
    finally:
        done.set()
        if files:
            thread.join()


def release(model, name: str, remaining=()) -> None:
    """Return a converted part's torch weights to the OS before the next part is converted.

    Weights shared with a part still to convert (tied embeddings) are kept.
    """
    keep = {id(p) for later in remaining for m in _part_modules(model, later) for p in m.parameters()}
    held = 0
    for module in _part_modules(model, name):
        for param in module.parameters():
            if id(param) not in keep and param.device.type == "cpu":
                held += param.numel() * param.element_size()
                _drop_pages(param)
        if not any(id(p) in keep for p in module.parameters()):
            module.to("meta")
    # The traced graph's reference cycles still hold tensors. A full collection costs ~0.3 s with
    # torch and transformers loaded: worth it after the real checkpoints' parts (75 MB - 13 GB of
    # weights; the 8 MB gen_embeddings aside), not after a tiny model's.
    if held >= GC_BYTES:
        gc.collect()


def _drop_pages(tensor) -> None:
    """Drop the whole pages inside a tensor we will never read again from our RSS.

    transformers memory-maps the safetensors file: every page a part's conversion read stays
    in our RSS until the file is unmapped, which happens only when *all* its tensors are gone.
    Dropping the pages one part at a time keeps peak RSS near the largest part instead of the
    whole checkpoint. Only pages wholly inside this tensor are touched, so neighbours are safe.
    """
    from .memory import dontneed

    if tensor.numel():
        start = tensor.data_ptr()
        dontneed(start, start + tensor.numel() * tensor.element_size())


# ---------------------------------------------------------------------------------------------
# Part wrappers: each returns (module, example_input, input shapes/types for convert_model).


def _vision(model):
    import openvino as ov
    import torch

    class Vision(torch.nn.Module):
        def __init__(self, janus):
            super().__init__()
            self.vision_model, self.aligner = janus.vision_model, janus.aligner

        def forward(self, pixel_values):
            return self.aligner(self.vision_model(pixel_values).last_hidden_state)

    size = model.config.vision_config.image_size
    example = (torch.zeros(1, 3, size, size),)
    return Vision(model.model), example, [(ov.PartialShape([-1, 3, size, size]), ov.Type.f32)]


def _text_embeddings(model):
    import openvino as ov
    import torch

    class TextEmbeddings(torch.nn.Module):
        def __init__(self, embed):
            super().__init__()
            self.embed = embed

        def forward(self, input_ids):
            return self.embed(input_ids)

    example = (torch.zeros(_B, _T, dtype=torch.int64),)
    return TextEmbeddings(model.model.language_model.embed_tokens), example, [(ov.PartialShape([-1, -1]), ov.Type.i64)]


def _lm_head(model):
    import openvino as ov
    import torch

    class LMHead(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, hidden_states):
            return self.head(hidden_states)

    hidden = model.config.text_config.hidden_size
    example = (torch.zeros(_B, _T, hidden),)
    return LMHead(model.lm_head), example, [(ov.PartialShape([-1, -1, hidden]), ov.Type.f32)]


def _gen_embeddings(model):
    import openvino as ov
    import torch

    class GenEmbeddings(torch.nn.Module):
        def __init__(self, janus):
            super().__init__()
            self.embed, self.aligner = janus.generation_embeddings, janus.generation_aligner

        def forward(self, image_ids):
            return self.aligner(self.embed(image_ids))

    example = (torch.zeros(_B, _T, dtype=torch.int64),)
    return GenEmbeddings(model.model), example, [(ov.PartialShape([-1, -1]), ov.Type.i64)]


def _gen_head(model):
    import openvino as ov
    import torch

    class GenHead(torch.nn.Module):
        """Generation head with classifier-free guidance folded in (one call per image step)."""

        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, hidden_states, cfg_weight):
            cond, uncond = self.head(hidden_states).chunk(2, dim=0)
            return uncond + cfg_weight * (cond - uncond)

    hidden = model.config.text_config.hidden_size
    example = (torch.zeros(2 * _B, hidden), torch.tensor(5.0))
    shapes = [(ov.PartialShape([-1, hidden]), ov.Type.f32), (ov.PartialShape([]), ov.Type.f32)]
    return GenHead(model.model.generation_head), example, shapes


def _vq_decoder(model):
    import openvino as ov
    import torch

    class VQDecoder(torch.nn.Module):
        """transformers' JanusVQVAE.decode, but for any number of whole token rows (a whole
        image is 24 rows of 24): a preview decodes only the rows made so far (text_to_image.py).
        The decoder is convolutional, so the rows in the traced graph stay a dynamic size."""

        def __init__(self, vq):
            super().__init__()
            self.vq = vq

        def forward(self, image_ids):
            quantize = self.vq.quantize
            codes = torch.nn.functional.normalize(quantize.embedding(image_ids), p=2, dim=-1)
            codes = codes.view(image_ids.shape[0], -1, quantize.quant_state_dims[1], codes.shape[-1])
            return self.vq.decoder(self.vq.post_quant_conv(codes.permute(0, 3, 1, 2)))

    tokens = model.config.vq_config.num_patches ** 2
    example = (torch.zeros(1, tokens, dtype=torch.int64),)
    return VQDecoder(model.model.vqmodel), example, [(ov.PartialShape([-1, -1]), ov.Type.i64)]


# ---------------------------------------------------------------------------------------------
# The language model: traced with explicit past/present KV tensors, then made stateful.


def _lm_geometry(model):
    text = model.config.text_config
    heads_kv = text.num_key_value_heads or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return text.num_hidden_layers, heads_kv, head_dim, text.hidden_size


def _lm_cache_names(model):
    layers = _lm_geometry(model)[0]
    past = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    return dict(zip(past, present))


def _lm_input_names(model):
    return ["inputs_embeds", "attention_mask", "position_ids", *_lm_cache_names(model)]


def _lm_output_names(model):
    return ["last_hidden_state", *_lm_cache_names(model).values()]


def _language_model(model):
    import openvino as ov
    import torch
    from transformers import DynamicCache

    layers, heads_kv, head_dim, hidden = _lm_geometry(model)
    text_config = model.config.text_config

    class LanguageModel(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, inputs_embeds, attention_mask, position_ids, *past):
            # Fill the cache from the inputs up front: a DynamicCache layer that starts empty
            # concatenates onto a 0-size tensor, which the converter cannot trace.
            cache = DynamicCache(config=text_config)
            for i, layer in enumerate(cache.layers):
                layer.keys, layer.values = past[2 * i], past[2 * i + 1]
                layer.dtype, layer.device, layer.is_initialized = past[0].dtype, past[0].device, True
            out = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                          past_key_values=cache, use_cache=True)
            present = [t for layer in cache.layers for t in (layer.keys, layer.values)]
            return (out.last_hidden_state, *present)

    kv = torch.zeros(_B, heads_kv, _P, head_dim)
    example = (torch.zeros(_B, _T, hidden), torch.ones(_B, _P + _T, dtype=torch.int64),
               torch.arange(_P, _P + _T).repeat(_B, 1), *[kv] * (2 * layers))
    shapes = [(ov.PartialShape([-1, -1, hidden]), ov.Type.f32), (ov.PartialShape([-1, -1]), ov.Type.i64),
              (ov.PartialShape([-1, -1]), ov.Type.i64)]
    shapes += [(ov.PartialShape([-1, heads_kv, -1, head_dim]), ov.Type.f32)] * (2 * layers)
    return LanguageModel(model.model.language_model), example, shapes


def make_stateful(ov_model, cache_names: dict) -> None:
    """Hold the KV cache as OpenVINO state, reorderable by a `beam_idx` input.

    Same recipe as optimum-intel's patch_stateful: a Gather(beam_idx) before every cache read
    (so a request can reorder or drop rows, e.g. for CFG or beams), then OpenVINO's
    MakeStateful transformation, then zero-length initial states sized by the batch.
    """
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    beam_idx = ops.parameter(ov.PartialShape([-1]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for past_name in cache_names:
        port = ov_model.input(past_name)
        consumers = port.get_target_inputs()
        gathered = ops.gather(port, beam_idx, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gathered.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, cache_names)

    # A fresh state must have the request's batch size and zero cached tokens.
    embeds = ov_model.input("inputs_embeds")
    batch = ops.gather(ops.shape_of(embeds, output_type="i64"), ops.constant([0]), ops.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [batch if i == 0 else ops.constant(np.array([max(d.get_min_length(), 0)], dtype=np.int64))
                    for i, d in enumerate(op.get_output_partial_shape(0))]
            zeros = ops.broadcast(ops.constant(0.0, dtype=op.get_output_element_type(0)), ops.concat(dims, axis=0))
            op.set_arguments([zeros])
    ov_model.validate_nodes_and_infer_types()


_WRAPPERS = {
    "vision": _vision,
    "text_embeddings": _text_embeddings,
    "language_model": _language_model,
    "lm_head": _lm_head,
    "gen_embeddings": _gen_embeddings,
    "gen_head": _gen_head,
    "vq_decoder": _vq_decoder,
}
