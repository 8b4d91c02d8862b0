"""Conversations -> prompt strings, in each model family's reference format.

"pro" (Janus-Pro, transformers-format repos) reproduces the deepseek-community chat template with
JanusProcessor(use_default_system_prompt=True):
    {system}\n\n<|User|>: <image_placeholder>\n{question}\n\n<|Assistant|>: {answer}<eos><|User|>: ...<|Assistant|>:
"legacy" (Janus-1.3B) is DeepSeek's "deepseek_old" sft format (roles User / Assistant):
    {system}\n\nUser: <image_placeholder>\n{question}\n\nAssistant: {answer}<eos>User: ...Assistant:
A turn's images come before its text, laid out as the template lays out content=[image, ..., text]:
placeholders joined by "\n\n", then "\n" + text.

A message is {"role": "user" | "assistant", "content": str, "images": [image, ...]} (images: user only).
"""

from __future__ import annotations

from . import special_tokens
from .errors import InvalidInputError

IMAGE_TAG = special_tokens.IMAGE
EOS_TEXT = special_tokens.EOS
# Text that would desynchronise image tokens and image embeddings if a user typed it.
_RESERVED = (special_tokens.IMAGE, special_tokens.BOI, special_tokens.EOI)
_ROLE_NAMES = {"pro": (special_tokens.USER, special_tokens.ASSISTANT), "legacy": ("User", "Assistant")}
PROMPT_STYLES = tuple(_ROLE_NAMES)
# A request's work before the model is bounded by its size: longer inputs are refused, not processed.
MAX_MESSAGES = 256
MAX_TEXT_CHARS = 32_000  # per message or prompt: several times the longest context window in tokens


def check_text(name: str, text) -> str:
    """`text` as the tokenizer can take it: a str of valid Unicode (no lone surrogates, which JSON
    allows), at most MAX_TEXT_CHARS long."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{name} must be a string, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInputError(f"{name} is {len(text)} characters long; at most {MAX_TEXT_CHARS} are accepted")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInputError(f"{name} is not valid Unicode text (a lone surrogate {text[e.start]!r} at "
                                f"character {e.start + 1})") from None
    return text


def check_prompt_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise InvalidInputError(f"prompt_style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    return style


def _roles(info) -> tuple[str, str]:
    try:
        return _ROLE_NAMES[info.prompt_style]
    except KeyError:
        raise InvalidInputError(f"unknown prompt style {info.prompt_style!r}; expected 'pro' or 'legacy'") from None


def validate_messages(messages) -> list[dict]:
    """Check a conversation; return it as a list of {"role", "content", "images"} dicts (normalised copies).

    Rules: a non-empty list; roles "user"/"assistant" alternating and starting and ending with "user";
    each user turn has text or at least one image; assistant turns have no images (their text may be blank).
    """
    if isinstance(messages, dict) or not isinstance(messages, (list, tuple)):
        raise InvalidInputError("messages must be a list of {'role', 'content', 'images'} dicts")
    if not messages:
        raise InvalidInputError("the conversation is empty: give at least one user message")
    if len(messages) > MAX_MESSAGES:
        raise InvalidInputError(f"the conversation has {len(messages)} messages; at most {MAX_MESSAGES} are "
                                "accepted (older ones would not fit the context window anyway)")
    out = []
    for i, m in enumerate(messages):
        where = f"message {i + 1}"
        if not isinstance(m, dict):
            raise InvalidInputError(f"{where} must be a dict with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if not isinstance(role, str) or role.lower() not in ("user", "assistant"):
            raise InvalidInputError(f"{where} has unknown role {role!r}; use 'user' or 'assistant'")
        role = role.lower()
        content = m.get("content")
        if content is None:
            content = ""
        content = check_text(f"{where}: 'content'", content)
        images = m.get("images")
        if images is None:
            images = []
        if not isinstance(images, (list, tuple)):
            raise InvalidInputError(f"{where}: 'images' must be a list, got {type(images).__name__}")
        for tag in _RESERVED:
            if tag in content:
                raise InvalidInputError(f"{where} contains the reserved text {tag!r}; pass images in 'images'")
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            raise InvalidInputError(
                f"{where} is from the {role} but should be from the {expected}: "
                "turns must alternate user, assistant, user, ... starting with the user")
        if role == "user" and not content.strip() and not images:
            raise InvalidInputError(f"{where} (user) is empty: give some text or an image")
        # An assistant turn may be blank: the model can answer with its end token at once, and the
        # conversation must go on from there (a soak's follow-up after such an answer was refused).
        if role == "assistant" and images:
            raise InvalidInputError(f"{where} (assistant) cannot carry images")
        out.append({"role": role, "content": content, "images": list(images)})
    if out[-1]["role"] != "user":
        raise InvalidInputError("the conversation must end with a user message (the one to answer)")
    return out


def _user_body(text: str, num_images: int) -> str:
    body = "\n\n".join([IMAGE_TAG] * num_images)
    text = text.strip()
    if text:
        body = f"{body}\n{text}" if body else text
    return body


def chat_prompt(messages, info) -> str:
    """The understanding prompt (system prompt first, one "<image_placeholder>" per image, ending
    with the assistant tag); feed it to JanusTokenizer.encode_chat."""
    return render(validate_messages(messages), info)


def render(messages: list[dict], info, system: str | None = None) -> str:
    """chat_prompt for messages validate_messages (or fit_conversation) already returned; `system`
    replaces the checkpoint's own system prompt ("" for none)."""
    return "".join(_prompt_parts(messages, info, system))


def system_prompt(info, system: str | None) -> str:
    """The system prompt a conversation starts with: the checkpoint's own, or the caller's (checked)."""
    if system is None:
        return info.system_prompt
    system = check_text("the system prompt", system).strip()
    for tag in _RESERVED:
        if tag in system:
            raise InvalidInputError(f"the system prompt contains the reserved text {tag!r}")
    return system


def _prompt_parts(messages: list[dict], info, system: str | None = None) -> list[str]:
    """The prompt's pieces, for validated messages: [system], one per message, the assistant tag."""
    user, assistant = _roles(info)
    system = system_prompt(info, system)
    parts = [f"{system}\n\n"] if system else []
    for m in messages:
        if m["role"] == "user":
            parts.append(f"{user}: {_user_body(m['content'], len(m['images']))}\n\n")
        else:
            parts.append(f"{assistant}: {m['content'].strip()}{EOS_TEXT}")
    parts.append(f"{assistant}:")
    return parts


def image_prompt(prompt: str, info, name: str = "prompt") -> str:
    """The text-to-image prompt: one user turn, no system prompt, ending right before <begin_of_image>
    (JanusTokenizer.encode_image_prompt appends it). `name`: what errors call it (prompt, negative prompt)."""
    prompt = check_text(f"the {name}", prompt)
    if not prompt.strip():
        raise InvalidInputError(f"the {name} is empty: describe the image to generate")
    for tag in _RESERVED:
        if tag in prompt:
            raise InvalidInputError(f"the {name} contains the reserved text {tag!r}")
    user, assistant = _roles(info)
    return f"{user}: {prompt.strip()}\n\n{assistant}:"


def collect_images(messages) -> list:
    """Every image of a conversation in prompt order (the order encode_chat expects embeddings in)."""
    return [img for m in validate_messages(messages) for img in m["images"]]


def fit_conversation(messages, info, tokenizer, max_new_tokens: int, system: str | None = None) -> list[dict]:
    """Context-window policy: drop the oldest whole exchanges (user turn + its answer) until
    prompt + max_new_tokens fits in info.max_position_embeddings. The system prompt and the last user
    turn are always kept; if they alone do not fit, raise InvalidInputError saying by how much.
    Returns the kept messages, validated and normalised (validate_messages).

    Linear in the conversation's length: each turn is tokenized once, the cut is found from the
    per-turn counts, and the chosen prompt is counted once more as a whole (tokens can merge
    across a turn's edge, so the sum is only an estimate; a cut that still overflows moves on)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidInputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    messages = validate_messages(messages)
    limit = int(info.max_position_embeddings) - max_new_tokens
    parts = _prompt_parts(messages, info, system)
    head = 1 if system_prompt(info, system) else 0  # parts[head + i] is messages[i]
    counts = tokenizer.count_pieces(parts)
    fixed = 1 + sum(counts[:head]) + counts[-1]  # BOS, system prompt, assistant tag
    suffix = [0] * (len(messages) + 1)  # suffix[i]: tokens of messages[i:]
    for i in range(len(messages) - 1, -1, -1):
        suffix[i] = suffix[i + 1] + counts[head + i]
    start = 0
    while start < len(messages) - 1 and fixed + suffix[start] > limit:
        start += 2  # the oldest user turn and the answer to it
    while True:
        kept = messages[start:]
        needed = tokenizer.count_chat_tokens("".join(parts[:head] + parts[head + start:]))
        if needed <= limit:
            return kept
        if len(kept) == 1:
            raise InvalidInputError(
                f"the last message needs {needed} prompt tokens + max_new_tokens={max_new_tokens} "
                f"= {needed + max_new_tokens}, but the model's context window is {limit + max_new_tokens} tokens; "
                "shorten the text, send fewer images or lower max_new_tokens")
        start += 2
