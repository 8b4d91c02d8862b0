"""Janus (DeepSeek) multimodal chat and text-to-image on OpenVINO.

Public API:
    JanusPipeline.from_pretrained(model, weights="int4", device="CPU") -> pipeline
    pipeline.chat(messages, ...) / pipeline.chat_stream(messages, ...)
    pipeline.generate_images(prompt, ...)
    build_tiny_model(output)            # tiny random checkpoint for tests and demos
"""

from .errors import ConversionError, InvalidInputError, JanusError, ModelNotFoundError


def __getattr__(name):
    # Lazy: importing janus_ov must not import torch/transformers/openvino.
    if name == "JanusPipeline":
        from .pipeline import JanusPipeline

        return JanusPipeline
    if name == "build_tiny_model":
        from .tiny import build_tiny_model

        return build_tiny_model
    raise AttributeError(name)


__all__ = ["JanusPipeline", "build_tiny_model", "JanusError", "ModelNotFoundError", "ConversionError",
           "InvalidInputError"]
