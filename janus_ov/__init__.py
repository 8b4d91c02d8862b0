"""Janus (DeepSeek) multimodal chat and text-to-image on OpenVINO.

Public API:
    JanusPipeline.from_pretrained(model, weights="int4", device="CPU") -> pipeline
    pipeline.chat(messages, ...) -> ChatResult (a str with .stats) / pipeline.chat_stream(messages, ...) -> ChatStream
    pipeline.generate_images(prompt, ...) -> ImageResult (images, stats, cancelled)
    pipeline.generate_images_stream(prompt, ...) -> ImageProgress events, then the ImageResult
    build_tiny_model(output)            # tiny random checkpoint for tests and demos
What the app needs besides: DEFAULT_MODEL, SUPPORTED_MODELS, WEIGHT_FORMATS, PROMPT_STYLES,
summary(stats), upscale(images, size), tiny_demo_checkpoint(cache_dir).
"""

from importlib import import_module

from .errors import ConversionError, InvalidInputError, JanusError, ModelNotFoundError

# name -> module. Lazy: importing janus_ov must not import torch, transformers or openvino.
_LAZY = {
    "JanusPipeline": "pipeline", "build_tiny_model": "tiny", "tiny_demo_checkpoint": "tiny",
    "ChatResult": "results", "ChatStream": "results", "ImageProgress": "results", "ImageResult": "results",
    "summary": "results", "upscale": "images", "DEFAULT_MODEL": "resolve", "SUPPORTED_MODELS": "deepseek_format",
    "WEIGHT_FORMATS": "parts", "PROMPT_STYLES": "prompts",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = [*_LAZY, "JanusError", "ModelNotFoundError", "ConversionError", "InvalidInputError"]
