"""Build a tiny, deterministic, random-weight Janus checkpoint in transformers format.

No weights can be downloaded on our machines, so every test (and the offline `--tiny-demo`)
runs on this model. It keeps the *shapes that matter* of the real thing:
384x384 images in 16-px patches (576 image tokens, so the real processor logic applies),
a VQ-16 decoder with the real channel multipliers, Janus's special tokens and chat template;
only widths and depths are shrunk. Text hidden = vision projection_dim = VQ projection_dim
= image_token_embed_dim, as in the real checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import special_tokens

# The Janus-Pro chat template, as transformers' conversion script writes it into
# deepseek-community/Janus-Pro-* (processor_config / chat_template.jinja).
CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<\uff5cend\u2581of\u2581sentence\uff5c>']%}"
    "{%set i=0%}"
    "{%for message in messages%}"
    "{%if message['role']|lower=='user'%}"
    "<|User|>: "
    "{%elif message['role']|lower=='assistant'%}"
    "<|Assistant|>:{%if not (loop.last and not add_generation_prompt and message['content'][0]['type']=='text' and message['content'][0]['text']=='')%} {%endif%}"
    "{%else%}"
    "{{message['role'].capitalize()}}: "
    "{%endif%}"
    "{%for content in message['content']%}"
    "{%if content['type']=='image'%}"
    "{%if not loop.first%}{{'\n'}}{%endif%}"
    "<image_placeholder>"
    "{%if not loop.last%}{{'\n'}}{%endif%}"
    "{%elif content['type']=='text'%}"
    "{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}"
    "{{' '+text}}"
    "{%else%}"
    "{{text}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}"
    "{{seps[0]}}"
    "{%else%}"
    "{{seps[1]}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)

BOS, EOS, PAD, IMAGE_TOKEN, BOI, EOI = (special_tokens.BOS, special_tokens.EOS, special_tokens.PAD,
                                       special_tokens.IMAGE, special_tokens.BOI, special_tokens.EOI)
SPECIAL_TOKENS = special_tokens.ALL

# Training text: English plus multi-byte scripts, so byte-level BPE learns some merges
# and the model can emit characters that span several tokens (tests streaming).
_CORPUS = [
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural language.",
    "Describe the image in detail. What is in this picture? A cat sitting on a red sofa near a window.",
    "A photo of a mountain lake at sunrise, highly detailed, 4k. An astronaut riding a horse.",
    "Compare the two images. The first one shows a dog, the second one a bicycle.",
    "中文的句子，图片里有一只猫。日本語の文章です。Ελληνικά κείμενα. Русский текст. emoji 🙂🐱🚲",
]


def build_tokenizer(pad_to: int | None = None):
    """A small byte-level BPE (like DeepSeek's) with Janus's special tokens appended.

    `pad_to` pads the vocabulary with filler words (" w0", " w1", ...) to that many entries, so a
    full-size random model (vocab 102400) can emit any id and still decode to text. Fillers are
    ASCII and have no merges: encoding real text never produces them.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    if pad_to is not None:
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        for i in range(pad_to - len(SPECIAL_TOKENS) - len(vocab)):
            vocab[f"\u0120w{i}"] = len(vocab)  # \u0120 is byte-level BPE's space
        tok = Tokenizer.from_str(json.dumps(spec))
    tok.add_special_tokens(SPECIAL_TOKENS)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return tok


def build_config(vocab_size: int, image_token_id: int, pad_id: int, bos_id: int, eos_id: int):
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    hidden = 64
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                       pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id)
    vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=384,
                               patch_size=16, projection_dim=hidden, depth=2, num_image_tokens=576)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=256, latent_channels=32, base_channels=32,
                          channel_multiplier=[1, 1, 2, 2, 4], num_res_blocks=1, projection_dim=hidden,
                          image_token_embed_dim=hidden, num_hidden_layers=2)
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=image_token_id,
                       tie_word_embeddings=False)  # real Janus has a separate lm_head


def save_processor(raw_tokenizer, output: Path) -> dict:
    """Save tokenizer + JanusProcessor files as the real checkpoints ship them; return special-token ids."""
    from transformers import JanusImageProcessorPil, JanusProcessor, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw_tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=16384,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "boi_token": BOI, "eoi_token": EOI},
    )
    image_processor = JanusImageProcessorPil(size={"height": 384, "width": 384}, image_mean=[0.5] * 3,
                                             image_std=[0.5] * 3, min_size=14)
    JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE,
                   use_default_system_prompt=True).save_pretrained(output)
    return {t: raw_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}


def build_tiny_model(output: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Janus checkpoint (config, bf16 weights, tokenizer, processor) to `output`."""
    import torch
    from transformers import JanusForConditionalGeneration

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    raw = build_tokenizer()
    ids = save_processor(raw, output)
    config = build_config(raw.get_vocab_size(), ids[IMAGE_TOKEN], ids[PAD], ids[BOS], ids[EOS])
    torch.manual_seed(seed)
    # Real weights have std ~0.02; larger random weights give logits with some spread,
    # so greedy/sampled outputs differ between inputs (a useful property for tests).
    config.text_config.initializer_range = 0.2
    model = JanusForConditionalGeneration(config).eval()
    gen = model.generation_config
    gen._from_model_config = False
    gen.temperature, gen.guidance_scale = 1.0, 5
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = ids[PAD], ids[BOS], ids[EOS]
    # transformers' Janus image generation reads boi_token_id from generation_kwargs.
    gen.generation_kwargs = {"boi_token_id": ids[BOI]}
    model.to(torch.bfloat16).save_pretrained(output)
    return output


def tiny_demo_checkpoint(cache_dir=None, say=print) -> Path:
    """The tiny checkpoint `app.py --tiny-demo` serves, built once into the cache (in a staging
    directory renamed into place, under the cache's lock: a killed build never looks finished)."""
    from .cache import default_cache_dir, disk_full, entry_lock, staged
    from .errors import ConversionError

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = root / "tiny-demo-checkpoint"
    if (target / "config.json").is_file():
        return target
    with entry_lock(root, target.name, say):  # a cache that cannot be written is reported here
        if not (target / "config.json").is_file():  # not built by another process meanwhile
            say(f"Building the tiny random-weight demo model in {target} ...")
            try:
                with staged(target, root) as tmp:
                    build_tiny_model(tmp)
            except Exception as e:  # a full or read-only disk: say so, not a traceback
                reason = disk_full(root, e) or f"{type(e).__name__}: {e}"
                raise ConversionError(f"Could not build the tiny demo model in {root}: {reason}") from None
    return target


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m janus_ov tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="directory to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_model(args.output, seed=args.seed)
    print(json.dumps({"tiny_model": str(path)}))
