"""DeepSeek's original "multi_modality" checkpoints (Janus-1.3B, Janus-Pro-1B/7B) as transformers' Janus.

transformers cannot load these repos, so we rebuild them in its layout: the config from the
tensor shapes (config names such as `siglip_large_patch16_384` do not always tell the truth),
the weights by renaming keys (after transformers' own convert_janus_weights_to_hf.py), and the
prompt/tokenizer/preprocessing facts into a ModelInfo. The model is built on the meta device and
filled one tensor at a time, so a 7B checkpoint is never held twice in memory.

Only the converter imports this module; torch/transformers are imported inside functions.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from . import special_tokens
from .errors import ConversionError
from .model_info import DEFAULT_SYSTEM_PROMPT, ModelInfo

# The model picker's list: DeepSeek's original repos, then the transformers-format ones.
SUPPORTED_MODELS = (
    "deepseek-ai/Janus-Pro-1B",
    "deepseek-ai/Janus-Pro-7B",
    "deepseek-ai/Janus-1.3B",
    "deepseek-community/Janus-Pro-1B",
    "deepseek-community/Janus-Pro-7B",
)

SUB_CONFIGS = ("language_config", "vision_config", "aligner_config",
               "gen_vision_config", "gen_aligner_config", "gen_head_config")

# The attention head count is not visible in any tensor shape. DeepSeek's siglip_vit.py names its
# towers (width, heads); when the tensors have the named width we trust the name, otherwise (a
# shrunk test model) we assume SigLIP-L/16's head size.
SIGLIP_HEADS = {"siglip_large_patch16_384": (1024, 16), "siglip_so400m_patch14_384": (1152, 16),
                "siglip_so400m_patch14_224": (1152, 16)}
VISION_HEAD_DIM = 64


# ----------------------------------------------------------------------------- detection

def is_original_format(model_dir) -> bool:
    """True for a directory holding DeepSeek's "multi_modality" config (never raises)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict):
        return False
    return config.get("model_type") == "multi_modality" or all(k in config for k in SUB_CONFIGS)


# DeepSeek's conversation templates (janus/utils/conversation.py): "deepseek" writes the roles
# <|User|>/<|Assistant|> (Janus-Pro), "deepseek_old" User/Assistant (Janus-1.3B since the Pro release).
SFT_FORMATS = {"deepseek": "pro", "deepseek_old": "legacy"}
ROLE_TOKENS = (special_tokens.USER, special_tokens.ASSISTANT)


def prompt_style_for(model_dir, processor: dict, has_role_tokens: bool, hidden_size: int) -> str:
    """"pro" (<|User|>/<|Assistant|>) or "legacy" (User/Assistant) for an original checkpoint.

    The files decide: processor_config.json's sft_format. Before Janus-Pro, DeepSeek's "deepseek"
    template wrote User/Assistant (it was renamed "deepseek_old" when Pro came out), so an old
    snapshot saying "deepseek" whose tokenizer has no <|User|>/<|Assistant|> tokens (Janus-1.3B's
    never had them) keeps the old roles. Only a snapshot without the field falls back to its
    path (a Hub cache path looks like .../models--deepseek-ai--Janus-Pro-1B/snapshots/<sha>),
    then to the width (only Janus-Pro-7B is 4096 wide), then to the tokenizer's role tokens.
    """
    sft = processor.get("sft_format")
    if sft in SFT_FORMATS:
        return "legacy" if sft == "deepseek" and not has_role_tokens else SFT_FORMATS[sft]
    if sft is not None:
        raise ConversionError(f"processor_config.json names sft_format {sft!r}; Janus uses "
                              f"{' or '.join(map(repr, SFT_FORMATS))}. Pass prompt_style='pro' or 'legacy' to choose.")
    for path in (Path(model_dir).absolute(), Path(model_dir).resolve()):
        for part in reversed(path.parts):
            name = part.lower().replace("_", "-")
            if "janus-pro" in name or "januspro" in name:
                return "pro"
            if "janus-1.3b" in name:
                return "legacy"
    return "pro" if hidden_size >= 4096 or has_role_tokens else "legacy"


# ----------------------------------------------------------------------------- weights on disk

class WeightFiles:
    """The checkpoint's tensors: model.safetensors / pytorch_model.bin, sharded or not.

    Reading goes one file at a time, so memory holds at most one shard beyond the model.
    .bin files are opened with weights_only=True: pickled code is never executed.
    """

    def __init__(self, model_dir: Path):
        self.files = _weight_files(Path(model_dir))
        self._shapes = None

    def shapes(self) -> dict:
        if self._shapes is None:
            self._shapes, origin = {}, {}
            for path in self.files:
                for name, shape in self._file_shapes(path):
                    if name in origin:
                        raise ConversionError(f"Tensor {name!r} appears in both {origin[name]} and {path.name}.")
                    origin[name] = path.name
                    self._shapes[name] = shape
        return self._shapes

    def tensors(self):
        """Yield (name, tensor) for every tensor, file by file."""
        for path in self.files:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    for name in f.keys():
                        try:
                            tensor = f.get_tensor(name)
                        except Exception as err:  # safetensors' own error types
                            raise ConversionError(f"{path}: tensor {name!r} cannot be read ({err}).") from err
                        yield name, tensor
            else:
                state = _torch_load(path)
                for name in list(state):
                    yield name, state.pop(name)  # drop our reference as soon as it is consumed
                del state

    def _file_shapes(self, path: Path):
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    return [(k, tuple(f.get_slice(k).get_shape())) for k in f.keys()]
            except Exception as err:  # safetensors raises its own error types for corrupt headers
                raise ConversionError(f"{path} is not a readable safetensors file: {err}") from err
        return [(k, tuple(t.shape)) for k, t in _torch_load(path).items()]


def _weight_files(model_dir: Path) -> list:
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = model_dir / index_name
        if index.is_file():
            try:
                names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise ConversionError(f"{index} is not a valid weight index ({err}).") from err
            missing = [n for n in names if not (model_dir / n).is_file()]
            if missing:
                raise ConversionError(f"{model_dir} lacks weight shard(s) {missing} listed in {index_name}; "
                                      "the download is incomplete.")
            return [model_dir / n for n in names]
        if (model_dir / single).is_file():
            return [model_dir / single]
    raise ConversionError(f"{model_dir} has no weights: expected model.safetensors or pytorch_model.bin "
                          "(or a sharded index of either).")


def _torch_load(path: Path) -> dict:
    import torch

    def load(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            state = load(mmap=True)  # tensors stay in the page cache until used
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            state = load(mmap=False)  # pre-zipfile format: cannot be mapped, read it plainly
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConversionError(
            f"{path} could not be loaded safely. It is opened with torch.load(weights_only=True), "
            f"which refuses pickled code and non-tensor objects: {first_line}") from err
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a dictionary of tensors.")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor.")
    return state


# ----------------------------------------------------------------------------- config from shapes

def _shape(shapes: dict, name: str) -> tuple:
    if name not in shapes:
        raise ConversionError(f"The checkpoint has no tensor {name!r}; it is not a complete Janus checkpoint.")
    return shapes[name]


def _count(shapes: dict, prefix: str) -> int:
    """Number of numbered children under `prefix` (e.g. blocks.0, blocks.1, ... -> 2)."""
    found = {int(m.group(1)) for n in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", n))}
    if not found:
        raise ConversionError(f"The checkpoint has no tensors under {prefix!r}.")
    return max(found) + 1


def _mlp_depth(shapes: dict, prefix: str) -> int:
    """Linear layers of DeepSeek's MlpProjector "mlp_gelu": layers.0, layers.2, ... (GELUs between)."""
    return _count(shapes, prefix) // 2 + 1


def build_config(config: dict, shapes: dict, token_ids: dict):
    """transformers JanusConfig for an original checkpoint; sizes come from the tensor shapes."""
    from transformers import JanusConfig

    for key in ("aligner_config", "gen_aligner_config"):
        kind = (config[key].get("params") or {}).get("projector_type", "mlp_gelu")
        if kind != "mlp_gelu":
            raise ConversionError(f"{key} uses projector_type {kind!r}; transformers' Janus has only the "
                                  "GELU MLP projector (mlp_gelu).")
    text = _text_config(config["language_config"], shapes, token_ids)
    vision = _vision_config(shapes, text.hidden_size, (config["vision_config"].get("params") or {}).get("model_name"))
    vq = _vq_config(shapes, text.hidden_size)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                       image_token_id=token_ids["image"],
                       tie_word_embeddings=False)  # Janus has a separate lm_head


def _text_config(language: dict, shapes: dict, token_ids: dict):
    from transformers import LlamaConfig

    vocab, hidden = _shape(shapes, "language_model.model.embed_tokens.weight")
    layers = _count(shapes, "language_model.model.layers.")
    intermediate = _shape(shapes, "language_model.model.layers.0.mlp.gate_proj.weight")[0]
    heads = int(language.get("num_attention_heads", 32))  # DeepSeek's LlamaConfig(**language_config) default
    head_dim = int(language.get("head_dim") or (hidden // heads if heads else 0))
    q_rows = _shape(shapes, "language_model.model.layers.0.self_attn.q_proj.weight")[0]
    kv_rows = _shape(shapes, "language_model.model.layers.0.self_attn.k_proj.weight")[0]
    if not heads or heads * head_dim != q_rows or kv_rows % head_dim:
        raise ConversionError(f"language_config says {heads} heads of size {head_dim}, which does not fit the "
                              f"attention weights ({q_rows} query rows, {kv_rows} key rows).")
    # Drop bookkeeping and private keys (e.g. an "_attn_implementation" asking for flash attention).
    junk = {"torch_dtype", "dtype", "model_type", "architectures", "transformers_version"}
    kwargs = {k: v for k, v in language.items() if k not in junk and not k.startswith("_")}
    kwargs.update(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv_rows // head_dim, head_dim=head_dim,
                  bos_token_id=token_ids["bos"], eos_token_id=token_ids["eos"], pad_token_id=token_ids["pad"],
                  tie_word_embeddings=False)
    return LlamaConfig(**kwargs)


def _vision_config(shapes: dict, text_hidden: int, model_name: str | None):
    from transformers import JanusVisionConfig

    tower = "vision_model.vision_tower."
    width, channels, patch, _ = _shape(shapes, tower + "patch_embed.proj.weight")
    positions = _shape(shapes, tower + "pos_embed")[-2]
    side = math.isqrt(positions)
    mlp = _shape(shapes, tower + "blocks.0.mlp.fc1.weight")[0]
    projection = _shape(shapes, "aligner.layers.0.weight")[0]
    named_width, heads = SIGLIP_HEADS.get(model_name, (None, None))
    if named_width != width:
        heads = width // VISION_HEAD_DIM
    if side * side != positions or not heads or width % heads:
        raise ConversionError(f"Vision tower of width {width} with {positions} positions is not a SigLIP "
                              "ViT of the kind Janus uses.")
    if projection != text_hidden:
        raise ConversionError(f"The aligner projects to {projection}, but the language model is {text_hidden} wide.")
    return JanusVisionConfig(hidden_size=width, num_hidden_layers=_count(shapes, tower + "blocks."),
                             num_attention_heads=heads, num_channels=channels,
                             image_size=side * patch, patch_size=patch, mlp_ratio=mlp / width,
                             projection_dim=projection, depth=_mlp_depth(shapes, "aligner.layers."),
                             num_image_tokens=positions)


def _vq_config(shapes: dict, text_hidden: int):
    from transformers import JanusVQVAEConfig

    vq = "gen_vision_model."
    base = _shape(shapes, vq + "encoder.conv_in.weight")[0]
    levels = _count(shapes, vq + "encoder.conv_blocks.")
    res_blocks = _count(shapes, vq + "encoder.conv_blocks.0.res.")
    last = res_blocks - 1
    multipliers = [_shape(shapes, f"{vq}encoder.conv_blocks.{i}.res.{last}.conv2.weight")[0] // base
                   for i in range(levels)]
    embed_dim, latent = _shape(shapes, vq + "quant_conv.weight")[:2]
    codes, gen_embed_dim = _shape(shapes, "gen_embed.weight")
    head_hidden, head_in = _shape(shapes, "gen_head.output_mlp_projector.weight")
    aligner_out = _shape(shapes, "gen_aligner.layers.0.weight")[0]
    if head_in != text_hidden or aligner_out != text_hidden or head_hidden != aligner_out:
        # transformers uses one projection_dim for the generation aligner and the head's hidden layer.
        raise ConversionError(f"Generation head {head_in}->{head_hidden} and aligner ->{aligner_out} do not fit "
                              f"transformers' Janus layout for a {text_hidden}-wide language model.")
    if gen_embed_dim != embed_dim:
        raise ConversionError(f"gen_embed is {gen_embed_dim} wide but the VQ codebook is {embed_dim} wide.")
    return JanusVQVAEConfig(embed_dim=embed_dim, num_embeddings=codes, latent_channels=latent, base_channels=base,
                            channel_multiplier=multipliers, num_res_blocks=res_blocks,
                            projection_dim=aligner_out, num_hidden_layers=_mlp_depth(shapes, "gen_aligner.layers."),
                            image_token_embed_dim=head_in)


# ----------------------------------------------------------------------------- key mapping

def _aligner(prefix: str, target: str):
    """MlpProjector layers.0 -> fc1, layers.2k -> hidden_layers.(k-1); odd indices are GELUs (no tensors)."""
    def rename(m):
        index = int(m[1])
        if index % 2:
            return None
        return f"{target}.fc1.{m[2]}" if index == 0 else f"{target}.hidden_layers.{index // 2 - 1}.{m[2]}"
    return (prefix + r"\.layers\.(\d+)\.(weight|bias)", rename)


_VQ_MID = {"0": "block_1", "1": "attn_1", "2": "block_2"}  # DeepSeek's mid is a ModuleList


def _vq_rename(m):
    part, rest = m[1], m[2]  # encoder|decoder, the rest of the name
    rest = re.sub(r"^conv_blocks\.", "down." if part == "encoder" else "up.", rest)
    rest = re.sub(r"\.res\.", ".block.", rest)
    rest = re.sub(r"^mid\.([012])\.", lambda mid: f"mid.{_VQ_MID[mid[1]]}.", rest)
    return f"model.vqmodel.{part}.{rest}"


VISION = r"vision_model\.vision_tower"
LAYER = "model.vision_model.encoder.layers"
# (pattern matched against the whole original name, new name or callable(match) -> new name,
#  transform). New name None = dropped on purpose. First matching rule wins.
RULES = [
    # SigLIP's attention-pooling head makes a pooled vector Janus never uses (it takes all patch tokens).
    (VISION + r"\.attn_pool\..+", None, None),
    # Codebook usage statistics from VQ training; not a weight.
    (r"gen_vision_model\.quantize\.codebook_used", None, None),
    (VISION + r"\.pos_embed", "model.vision_model.embeddings.position_embedding.weight", "squeeze0"),
    (VISION + r"\.patch_embed\.proj\.(weight|bias)", r"model.vision_model.embeddings.patch_embedding.\1", None),
    (VISION + r"\.norm\.(weight|bias)", r"model.vision_model.post_layernorm.\1", None),
    (VISION + r"\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", LAYER + r".\1.self_attn.{}_proj.\2", "qkv"),
    (VISION + r"\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", LAYER + r".\1.self_attn.projection_layer.\2", None),
    (VISION + r"\.blocks\.(\d+)\.norm([12])\.(weight|bias)", LAYER + r".\1.layer_norm\2.\3", None),
    (VISION + r"\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", LAYER + r".\1.mlp.\2.\3", None),
    (*_aligner("aligner", "model.aligner"), None),
    (*_aligner("gen_aligner", "model.generation_aligner"), None),
    (r"gen_head\.output_mlp_projector\.(weight|bias)", r"model.generation_head.proj_out.\1", None),
    (r"gen_head\.vision_head\.(weight|bias)", r"model.generation_head.vision_head.\1", None),
    (r"gen_embed\.weight", "model.generation_embeddings.weight", None),
    (r"gen_vision_model\.quantize\.embedding\.weight", "model.vqmodel.quantize.embedding.weight", "codebook"),
    (r"gen_vision_model\.(quant_conv|post_quant_conv)\.(weight|bias)", r"model.vqmodel.\1.\2", None),
    (r"gen_vision_model\.(encoder|decoder)\.(.+)", _vq_rename, None),
    (r"language_model\.model\.(.+)", r"model.language_model.\1", None),
    (r"language_model\.lm_head\.weight", "lm_head.weight", None),
]
_COMPILED = [(re.compile(p), new, transform) for p, new, transform in RULES]


def map_name(name: str):
    """(new names, transform) for an original tensor name; ([], None) if dropped on purpose."""
    for pattern, new, transform in _COMPILED:
        m = pattern.fullmatch(name)
        if not m:
            continue
        if new is None:
            return [], None
        target = new(m) if callable(new) else m.expand(new)
        if target is None:
            break
        if transform == "qkv":
            return [target.format(p) for p in "qkv"], transform
        return [target], transform
    raise ConversionError(f"Unexpected tensor {name!r} in the checkpoint: it has no place in transformers' "
                          "Janus model. Is this a Janus checkpoint?")


def apply_transform(name: str, tensor, transform, num_embeddings: int) -> list:
    """The tensor(s) transformers wants for the original tensor `name` (works on meta tensors too)."""
    if transform == "qkv":  # SigLIP's fused [q; k; v] projection, split along the output rows
        if tensor.ndim < 1 or tensor.shape[0] % 3:
            raise ConversionError(f"Tensor {name!r} of shape {tuple(tensor.shape)} is not a fused q/k/v projection.")
        return list(tensor.chunk(3, dim=0))
    if transform == "squeeze0":  # timm keeps a leading batch axis on the position table
        if tensor.ndim != 3 or tensor.shape[0] != 1:
            raise ConversionError(f"Tensor {name!r} has shape {tuple(tensor.shape)}, expected (1, positions, width).")
        return [tensor.squeeze(0)]
    if transform == "codebook":
        # DeepSeek's VQ_16 always builds a 16384-entry codebook, whatever the generation head emits.
        # Only ids below the head's size ever reach the decoder, so the rows past it are never read
        # (the VQ encoder, which could pick them, is not used by Janus).
        if tensor.ndim != 2 or tensor.shape[0] < num_embeddings:
            raise ConversionError(f"Codebook {name!r} of shape {tuple(tensor.shape)} has fewer than the "
                                  f"{num_embeddings} entries the generation head can emit.")
        return [tensor[:num_embeddings]]
    return [tensor]


def plan(shapes: dict, model_shapes: dict, num_embeddings: int) -> dict:
    """Check the whole mapping on shapes alone: {original name: (new names, transform)}.

    Every original tensor is used once (or dropped by a named rule), every transformers
    tensor is produced exactly once, with the right shape. Errors name the offending key.
    """
    import torch

    result, produced = {}, {}
    for name, shape in shapes.items():
        targets, transform = map_name(name)
        outs = apply_transform(name, torch.empty(shape, device="meta"), transform, num_embeddings) if targets else []
        for target, out in zip(targets, outs):
            if target not in model_shapes:
                raise ConversionError(f"Unexpected tensor {name!r} in the checkpoint: transformers' Janus has no "
                                      f"{target!r} for it (the checkpoint does not match its own config).")
            if target in produced:
                raise ConversionError(f"Tensors {produced[target]!r} and {name!r} both map to {target!r}.")
            if tuple(out.shape) != tuple(model_shapes[target]):
                raise ConversionError(f"Tensor {name!r} has shape {tuple(shape)}, which gives {tuple(out.shape)} for "
                                      f"{target!r}; the model needs {tuple(model_shapes[target])}.")
            produced[target] = name
        result[name] = (targets, transform)
    missing = [t for t in model_shapes if t not in produced]
    if missing:
        raise ConversionError(f"The checkpoint is missing {len(missing)} tensor(s) the model needs, e.g. "
                              f"{missing[:3]}; the download may be incomplete or the file damaged.")
    return result


# ----------------------------------------------------------------------------- tokenizer and processor

def _read_json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise ConversionError(f"{path.parent} lacks {path.name}, which every Janus checkpoint ships.")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConversionError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{path} does not hold a JSON object.")
    return data


def _token_text(value, default: str) -> str:
    if isinstance(value, dict):  # {"content": "...", "lstrip": ...} form
        value = value.get("content")
    return value if isinstance(value, str) and value else default


def load_tokenizer(model_dir: Path, processor: dict):
    """(tokenizer.json text as DeepSeek's VLChatProcessor sees it, {role: token id}).

    The processor adds its image tag when the vocabulary lacks it (Janus-1.3B's has none: it
    becomes id 100581, after the last token); the file we keep includes it, and BOS is added by
    its post-processor as DeepSeek's LlamaTokenizerFast does. "user"/"assistant" are the role
    tokens' ids, None where the tokenizer has none.
    """
    from tokenizers import AddedToken, Tokenizer, processors

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ConversionError(f"{model_dir} lacks tokenizer.json (the fast tokenizer file every Janus repo ships).")
    try:
        tokenizer = Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as err:  # tokenizers raises a bare Exception subclass on bad JSON
        raise ConversionError(f"{path} is not a valid tokenizer file: {err}") from err
    cfg = _read_json(model_dir / "tokenizer_config.json", required=False)
    special = _read_json(model_dir / "special_tokens_map.json", required=False)
    names = {
        "bos": _token_text(cfg.get("bos_token") or special.get("bos_token"), special_tokens.BOS),
        "eos": _token_text(cfg.get("eos_token") or special.get("eos_token"), special_tokens.EOS),
        "pad": special_tokens.PAD,  # DeepSeek's processor pads with this token whatever the tokenizer config says
        "image": processor.get("image_tag", special_tokens.IMAGE),
        "boi": special_tokens.BOI,
        "eoi": special_tokens.EOI,
    }
    changed = False
    if tokenizer.token_to_id(names["image"]) is None:  # VLChatProcessor.__init__: add_special_tokens
        tokenizer.add_special_tokens([AddedToken(names["image"], special=True, normalized=False)])
        changed = True
    ids = {}
    for role, token in names.items():
        ids[role] = tokenizer.token_to_id(token)
        if ids[role] is None:
            raise ConversionError(f"The tokenizer in {model_dir} has no {token!r} token; is this a Janus checkpoint?")
    ids["user"], ids["assistant"] = (tokenizer.token_to_id(t) for t in ROLE_TOKENS)
    # DeepSeek's LlamaTokenizerFast prepends BOS at load time (add_bos_token); the runtime uses
    # plain `tokenizers`, so the file itself must do it.
    if cfg.get("add_bos_token", True) and tokenizer.encode("a").ids[:1] != [ids["bos"]]:
        bos = processors.TemplateProcessing(single=f"{names['bos']} $A", pair=f"{names['bos']} $A {names['bos']} $B",
                                            special_tokens=[(names["bos"], ids["bos"])])
        old = tokenizer.post_processor
        tokenizer.post_processor = processors.Sequence([old, bos]) if old is not None else bos
        changed = True
    return (tokenizer.to_str() if changed else path.read_text(encoding="utf-8")), ids


def model_info(model_dir: Path, sizes: dict, processor: dict, preprocess: dict, ids: dict,
               prompt_style: str | None = None) -> ModelInfo:
    """What the serving side needs: prompt style, token ids, sizes, the checkpoint's preprocessing.

    `sizes` (hidden_size, vocab_size, codebook_size, max_position_embeddings, and the vision
    tower's image_size / num_image_tokens) come from the weights (`_sizes_of`) when converting,
    from config.json alone (`_declared_sizes`) when only the metadata is read.
    """
    vocab = sizes["vocab_size"]
    too_big = {role: i for role, i in ids.items() if i is not None and i >= vocab}
    if too_big:
        raise ConversionError(f"Token ids {too_big} lie beyond the {vocab}-row embedding table: "
                              "the tokenizer does not belong to these weights.")
    num_image_tokens = int(processor.get("num_image_tokens", sizes["num_image_tokens"]))
    image_size = int(preprocess.get("image_size", sizes["image_size"]))
    if (num_image_tokens, image_size) != (sizes["num_image_tokens"], sizes["image_size"]):
        raise ConversionError(f"The processor config ({image_size}px, {num_image_tokens} image tokens) does not fit "
                              f"the vision tower ({sizes['image_size']}px, {sizes['num_image_tokens']} positions).")
    # Defaults are those of DeepSeek's VLMImageProcessor, for keys a checkpoint leaves out. Its
    # __init__ sets the padding colour from image_mean, overriding a background_color key.
    mean = [float(v) for v in preprocess.get("image_mean", (0.48145466, 0.4578275, 0.40821073))]
    std = [float(v) for v in preprocess.get("image_std", (0.26862954, 0.26130258, 0.27577711))]
    has_roles = ids.get("user") is not None and ids.get("assistant") is not None
    return ModelInfo(
        prompt_style=prompt_style or prompt_style_for(model_dir, processor, has_roles, sizes["hidden_size"]),
        system_prompt=DEFAULT_SYSTEM_PROMPT,  # VLChatProcessor.system_prompt, used for understanding
        bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"],
        image_id=ids["image"], boi_id=ids["boi"], eoi_id=ids["eoi"],
        hidden_size=int(sizes["hidden_size"]), vocab_size=int(vocab),
        codebook_size=int(sizes["codebook_size"]), num_image_tokens=num_image_tokens,
        max_position_embeddings=int(sizes["max_position_embeddings"]),
        image_size=image_size, min_size=int(preprocess.get("min_size", 14)),
        image_mean=mean, image_std=std, do_normalize=bool(preprocess.get("do_normalize", True)),
        rescale_factor=float(preprocess.get("rescale_factor", 1 / 255)),
        background_color=[int(v * 255) for v in mean],
        image_resize="deepseek",
    )


def _sizes_of(config) -> dict:
    """model_info's sizes from the JanusConfig built from the tensor shapes."""
    vision, text = config.vision_config, config.text_config
    return dict(hidden_size=text.hidden_size, vocab_size=text.vocab_size,
                codebook_size=config.vq_config.num_embeddings,
                max_position_embeddings=text.max_position_embeddings,
                image_size=vision.image_size, num_image_tokens=vision.num_image_tokens)


def _declared_sizes(config: dict) -> dict:
    """model_info's sizes as config.json declares them (DeepSeek's code builds LlamaConfig(**language_config),
    so an absent key has LlamaConfig's default, e.g. Janus-Pro-7B's hidden size 4096)."""
    from transformers import LlamaConfig

    language = LlamaConfig(**{k: v for k, v in config["language_config"].items() if not k.startswith("_")})
    vision = config["vision_config"].get("params") or {}
    image_size = int(vision.get("image_size", 384))
    named_patch = re.search(r"patch(\d+)", str(vision.get("model_name", "")))
    patch = int(named_patch.group(1)) if named_patch else 16
    codebook = (config["gen_vision_config"].get("params") or {}).get("image_token_size", 16384)
    return dict(hidden_size=language.hidden_size, vocab_size=language.vocab_size, codebook_size=int(codebook),
                max_position_embeddings=language.max_position_embeddings,
                image_size=image_size, num_image_tokens=(image_size // patch) ** 2)


def read_metadata(model_dir, prompt_style: str | None = None):
    """(ModelInfo, tokenizer.json text) of an original checkpoint from its small files alone, without
    reading any weight: what serving would use, for checks and tools that have no weights at hand."""
    model_dir = Path(model_dir)
    config = read_original_config(model_dir)
    processor = _read_json(model_dir / "processor_config.json", required=False)
    tokenizer_json, ids = load_tokenizer(model_dir, processor)
    info = model_info(model_dir, _declared_sizes(config), processor,
                      _read_json(model_dir / "preprocessor_config.json"), ids, prompt_style)
    return info, tokenizer_json


# ----------------------------------------------------------------------------- loading

def read_original_config(model_dir: Path) -> dict:
    config = _read_json(Path(model_dir) / "config.json")
    missing = [k for k in SUB_CONFIGS if not isinstance(config.get(k), dict)]
    if missing:
        raise ConversionError(f"{model_dir}/config.json is DeepSeek's multi_modality format but lacks {missing}.")
    return config


def load_parts(model_dir, dtype=None):
    """(transformers Janus model in eval mode, ModelInfo, tokenizer.json text) for an original checkpoint.

    `dtype=None` keeps the stored dtype (config's torch_dtype, bf16 for DeepSeek's repos).
    """
    import torch
    from transformers import JanusForConditionalGeneration

    model_dir = Path(model_dir)
    config = read_original_config(model_dir)
    processor = _read_json(model_dir / "processor_config.json", required=False)
    tokenizer_json, ids = load_tokenizer(model_dir, processor)
    weights = WeightFiles(model_dir)
    janus_config = build_config(config, weights.shapes(), ids)
    # Everything is checked on names and shapes before the first tensor is read.
    info = model_info(model_dir, _sizes_of(janus_config), processor,
                      _read_json(model_dir / "preprocessor_config.json"), ids)
    with torch.device("meta"):
        model = JanusForConditionalGeneration(janus_config)
    num_embeddings = janus_config.vq_config.num_embeddings
    mapping = plan(weights.shapes(), {k: tuple(v.shape) for k, v in model.state_dict().items()}, num_embeddings)
    target_dtype = _target_dtype(dtype, config)
    _stream_weights(model, weights, mapping, num_embeddings, target_dtype)
    _rebuild_derived_buffers(model)
    model.config.dtype = target_dtype
    _set_generation_config(model, ids)
    model.eval().requires_grad_(False)
    return model, info, tokenizer_json


def _target_dtype(dtype, config: dict):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in (None, "auto"):
        found = getattr(torch, str(dtype), None)
        if not isinstance(found, torch.dtype):
            raise ConversionError(f"Unknown dtype {dtype!r}; use e.g. torch.float32 or 'bfloat16'.")
        return found
    language = config["language_config"]
    stored = (config.get("torch_dtype") or config.get("dtype") or language.get("torch_dtype")
              or language.get("dtype") or "bfloat16")
    found = getattr(torch, str(stored), None)
    if not isinstance(found, torch.dtype):
        raise ConversionError(f"config.json names an unknown torch_dtype {stored!r}.")
    return found


def _stream_weights(model, weights: WeightFiles, mapping: dict, num_embeddings: int, dtype) -> None:
    """Assign each converted tensor straight into the meta-built model, one at a time."""
    for name, tensor in weights.tensors():
        if name not in mapping:  # plan() saw every name; a file changed while we read it
            raise ConversionError(f"Unexpected tensor {name!r}: the weight files changed during loading.")
        targets, transform = mapping[name]
        outs = apply_transform(name, tensor, transform, num_embeddings) if targets else []
        for target, out in zip(targets, outs):
            if out.is_floating_point() and out.dtype != dtype:
                out = out.to(dtype)
            _assign(model, target, out.contiguous())
        del tensor, outs
    leftover = [k for k, v in model.state_dict().items() if v.is_meta]
    if leftover:  # plan() checked the names; this catches a file that changed while we read it
        raise ConversionError(f"Tensors were not loaded: {leftover[:3]}")


def _assign(model, name: str, tensor) -> None:
    import torch

    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    if attr in module._parameters:
        module._parameters[attr] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[attr] = tensor


def _rebuild_derived_buffers(model) -> None:
    """Recompute the non-persistent buffers (never stored in any checkpoint) left on the meta device."""
    import torch

    for name, module in model.named_modules():
        if "RotaryEmbedding" in type(module).__name__ and any(b.is_meta for b in module.buffers()):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, type(module)(config=module.config))
    for name, buffer in list(model.named_buffers()):
        if not buffer.is_meta:
            continue
        if name.endswith("embeddings.position_ids"):
            _assign(model, name, torch.arange(buffer.shape[-1]).expand((1, -1)))
        else:
            raise ConversionError(f"Do not know how to rebuild the derived buffer {name!r} "
                                  "(transformers' Janus changed; update janus_ov/deepseek_format.py).")


def _set_generation_config(model, ids: dict) -> None:
    # Same settings transformers' conversion script writes for deepseek-community/Janus-Pro-*.
    gen = model.generation_config
    gen._from_model_config = False
    gen.temperature, gen.guidance_scale = 1.0, 5
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = ids["pad"], ids["bos"], ids["eos"]
    gen.generation_kwargs = {"boi_token_id": ids["boi"]}
