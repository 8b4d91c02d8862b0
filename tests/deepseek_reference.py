"""DeepSeek's own processing of its original-format repos, reproduced for tests from its published code.

The `janus` package is not a dependency (and is not installable beside our pins), so this module
follows deepseek-ai/Janus line by line where it matters:
- janus/models/processing_vlm.py, VLChatProcessor: the image tag is added to the tokenizer when the
  vocabulary lacks it; the prompt is the sft template of `sft_format` with the processor's system
  prompt; `tokenizer.encode` (BOS added); each image tag becomes boi + 576 x image tag + eoi.
- janus/utils/conversation.py: the "deepseek" / "deepseek_old" templates (SeparatorStyle.DeepSeek).
- janus/models/image_processing_vlm.py, VLMImageProcessor: truncating resize, `expand2square`,
  transformers' BaseImageProcessor.rescale / normalize. Its resize calls torchvision's
  `functional.resize` on a PIL image, which is PIL's own `resize` with the size reversed.
- generation_inference.py: the text-to-image prompt (empty system prompt + `<begin_of_image>`) and
  the unconditional row (every token but the first and last replaced by the pad id).
DeepSeek's messages carry the roles as text ("<|User|>" / "User") and the image tags in the content.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
TEMPLATES = {  # conversation.py: name -> roles; both use sep "\n\n", sep2 EOS
    "deepseek": ("<|User|>", "<|Assistant|>"),
    "deepseek_old": ("User", "Assistant"),
}
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"


def sft_prompt(conversation: list[dict], system_prompt: str) -> str:
    """Conversation.get_prompt for SeparatorStyle.DeepSeek, then .strip() (apply_sft_template_for_multi_turn_prompts)."""
    seps = ["\n\n", EOS]
    ret = system_prompt + seps[0] if system_prompt else ""
    for i, message in enumerate(conversation):
        role, text = message["role"], message["content"].strip()
        ret += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
    return ret.strip()


class VLMImageProcessor:
    def __init__(self, image_size, min_size=14, image_mean=(0.48145466, 0.4578275, 0.40821073),
                 image_std=(0.26862954, 0.26130258, 0.27577711), rescale_factor=1.0 / 255.0, do_normalize=True,
                 **kwargs):
        from transformers.image_processing_utils import BaseImageProcessor

        self.base = BaseImageProcessor()
        self.image_size, self.min_size = image_size, min_size
        self.image_mean, self.image_std = image_mean, image_std
        self.rescale_factor, self.do_normalize = rescale_factor, do_normalize
        # __init__ sets this after super().__init__(**kwargs): a background_color key is overridden.
        self.background_color = (127, 127, 127) if image_mean is None else tuple(int(x * 255) for x in image_mean)

    def resize(self, pil_img: Image.Image) -> np.ndarray:
        from transformers.image_utils import to_numpy_array

        width, height = pil_img.size
        max_size = max(width, height)
        size = [max(int(height / max_size * self.image_size), self.min_size),
                max(int(width / max_size * self.image_size), self.min_size)]
        pil_img = pil_img.resize((size[1], size[0]), Image.BICUBIC)  # torchvision F.resize on PIL
        pil_img = expand2square(pil_img, self.background_color)
        return np.transpose(to_numpy_array(pil_img), (2, 0, 1))

    def __call__(self, images) -> np.ndarray:
        out = []
        for image in images:
            x = self.base.rescale(image=self.resize(image), scale=self.rescale_factor, input_data_format="channels_first")
            if self.do_normalize:
                x = self.base.normalize(image=x, mean=self.image_mean, std=self.image_std,
                                        input_data_format="channels_first")
            out.append(x)
        return np.stack(out)


def expand2square(pil_img, background_color):
    width, height = pil_img.size
    if width == height:
        return pil_img
    if width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    result = Image.new(pil_img.mode, (height, height), background_color)
    result.paste(pil_img, ((height - width) // 2, 0))
    return result


class VLChatProcessor:
    def __init__(self, model_dir):
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        config = json.loads((model_dir / "processor_config.json").read_text(encoding="utf-8"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)  # DeepSeek: LlamaTokenizerFast.from_pretrained
        self.image_tag = config.get("image_tag", "<image_placeholder>")
        if self.tokenizer.vocab.get(self.image_tag) is None:
            self.tokenizer.add_special_tokens({"additional_special_tokens": [self.image_tag]})
        self.sft_format = config.get("sft_format", "deepseek")
        self.num_image_tokens = config.get("num_image_tokens", 576)
        preprocessor = json.loads((model_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
        self.image_processor = VLMImageProcessor(**preprocessor)
        vocab = self.tokenizer.vocab
        self.image_id = vocab[self.image_tag]
        self.image_start_id, self.image_end_id = vocab["<begin_of_image>"], vocab["<end_of_image>"]
        self.pad_id = vocab["<\uff5c\u2581pad\u2581\uff5c>"]

    @property
    def roles(self):
        return TEMPLATES[self.sft_format]

    def _with_image_tokens(self, ids: list[int]) -> list[int]:
        out = []
        for t in ids:  # add_image_token with add_special_token=False
            out += ([self.image_start_id] + [self.image_id] * self.num_image_tokens + [self.image_end_id]
                    if t == self.image_id else [t])
        return out

    def chat_ids(self, conversation: list[dict]) -> list[int]:
        """process_one(conversations=...).input_ids; the conversation ends with an empty assistant turn."""
        return self._with_image_tokens(self.tokenizer.encode(sft_prompt(conversation, SYSTEM_PROMPT)))

    def image_prompt_ids(self, text: str) -> list[int]:
        """generation_inference.py: the conditional row of a text-to-image batch."""
        user, assistant = self.roles
        prompt = sft_prompt([{"role": user, "content": text}, {"role": assistant, "content": ""}], "")
        return self.tokenizer.encode(prompt + "<begin_of_image>")

    def unconditional_ids(self, cond: list[int]) -> list[int]:
        return [cond[0]] + [self.pad_id] * (len(cond) - 2) + [cond[-1]]
