"""The language model's KV cache at run time: OpenVINO PagedAttention, one block table per row.

The language-model IR on disk is stateful (parts.py): the portable form, and the one the
converter writes and the parity tests check. At load we rewrite it with OpenVINO's own
SDPA-to-PagedAttention transformation (the one OpenVINO GenAI's continuous batching uses),
because on CPU the PagedAttention kernels cost far less per cached token than the stateful
SDPA ones (chat tokens, image steps and prefill all faster; figures in benchmarks/results/design-measurements.md).

After the rewrite the cache is plain tensors this module owns: per layer one key and one value
tensor of [blocks, heads, block rows, head dim] (the plugin picks the element type and adds
rows for quantization scales). Each sequence -- the one chat, or each CFG row of an image
batch -- gets its own run of blocks, so rows of different lengths need no padding and no
attention mask, and a token's position id is just the number of tokens before it.
"""

from __future__ import annotations

import numpy as np
import openvino as ov

# Tokens per cache block: what the CPU and GPU PagedAttention kernels expect (as OpenVINO GenAI).
BLOCK_SIZE = {"CPU": 32, "GPU": 16}


def paged(model: ov.Model, device: str, config: dict) -> ov.Model:
    """The stateful language model (read from its IR) as a PagedAttention model, in place, with our own
    operations where they apply to `config` and are loaded: attention (attention.py) and int4 matmuls
    (matmul.py); same cache layout, their build kept beside the compiled-model cache (config's
    CACHE_DIR). Not while other threads read IRs: see native.py."""
    from openvino._offline_transformations import paged_attention_transformation

    from . import attention, matmul

    paged_attention_transformation(model)
    if attention.prepare(device, config):
        attention.replace_paged_attention(model)
    if matmul.prepare(device, config):
        matmul.replace_int4_matmuls(model)
    return model


def with_tokens(model: ov.Model, tokens: int) -> ov.Model:
    """A copy of a paged language model for calls of exactly `tokens` tokens (any rows): its token
    inputs of static length, so the CPU plugin infers no shapes at each call (our operations
    included: attention's output takes its queries' shape). The copy's matmuls share our weights."""
    model = model.clone()
    shapes = {}
    for port in model.inputs:
        if port.get_any_name() in ("inputs_embeds", "position_ids"):
            shape = port.get_partial_shape()
            shapes[port] = ov.PartialShape([ov.Dimension(tokens)] + [shape[i] for i in range(1, shape.rank.get_length())])
    model.reshape(shapes)
    return model


def uncached(config: dict) -> dict:
    """No compiled-model cache for a paged model: the cache key of a model object is a hash of all
    its weights, which takes longer than compiling it."""
    return {k: v for k, v in config.items() if k != "CACHE_DIR"}


def compile_paged(core: ov.Core, model: ov.Model, device: str, config: dict) -> ov.CompiledModel:
    """Turn the stateful language model (read from its IR) into a paged model (`paged`), compile it."""
    return core.compile_model(paged(model, device, config), device, uncached(config))


class PagedKVCache:
    """Cache tensors bound to one infer request of a compiled PagedAttention model, and the
    bookkeeping (tokens cached per row, each row's blocks) behind the model's other inputs."""

    def __init__(self, request: ov.InferRequest, device: str = "CPU", also=()):
        """also: infer requests of other compiled models of the same language model (the runtime's
        prompt model) that must read and write the same cache tensors."""
        self.request, self._also = request, tuple(also)
        self.block_size = BLOCK_SIZE.get(device.split(".")[0], 32)
        self._names = [port.get_any_name() for port in cache_inputs(request.get_compiled_model())]
        self._blocks = 0  # blocks the bound tensors hold
        self.past = np.zeros(0, np.int32)
        self.start([0])

    def start(self, capacities, keep: int = 0) -> None:
        """Begin new sequences, one per row, row i holding at most capacities[i] tokens.

        keep: leave the first `keep` cached tokens of row 0 in place (one row before and after,
        `keep` a whole number of blocks): a chat's next turn goes on from the conversation so far.
        """
        capacity = np.array(capacities, np.int32).reshape(-1)
        if keep and not (len(capacity) == len(self.past) == 1 and keep % self.block_size == 0
                         and keep <= min(self.past[0], capacity[0])):
            raise ValueError(f"Cannot keep {keep} tokens of rows {self.past.tolist()} for rows {capacity.tolist()}.")
        per_row = -(-capacity // self.block_size)
        self._first_block = np.concatenate([[0], np.cumsum(per_row)[:-1]]).astype(np.int32)
        self.capacity = capacity
        self.past = np.array([keep] * len(capacity), np.int32)
        self._reserve(max(int(per_row.sum()), 1), keep // self.block_size)

    def _reserve(self, blocks: int, keep_blocks: int = 0) -> None:
        """Bind tensors for `blocks` blocks, the first `keep_blocks` as they were: new ones when
        they must grow, or when the old ones are over four times too big (say after an 8-image
        batch), so memory is given back. Fresh tensors cost nothing until written: the OS
        supplies their pages on first touch."""
        if self._blocks >= blocks and self._blocks <= 4 * blocks:
            return
        tensors = new_cache_tensors(self.request, blocks)
        for name, tensor in tensors.items() if keep_blocks else ():
            by_block(tensor, blocks)[:keep_blocks] = by_block(self.request.get_tensor(name), self._blocks)[:keep_blocks]
        bind_tensors((self.request, *self._also), tensors)
        self._blocks = blocks

    def copy_row(self, src: int, dsts) -> None:
        """Give the empty rows `dsts` a copy of row `src`'s cached tokens: a batch of images
        prefills its two prompts (conditional, unconditional) once, not once per image."""
        dsts = np.asarray(dsts, np.int64)
        if (self.past[dsts] != 0).any() or (self.capacity[dsts] < self.past[src]).any():
            raise ValueError(f"Cannot copy row {src} ({self.past[src]} tokens) into rows {dsts.tolist()}.")
        used = -(-int(self.past[src]) // self.block_size)
        first = self._first_block
        for name in self._names:
            blocks = by_block(self.request.get_tensor(name), self._blocks)
            for dst in dsts:
                blocks[first[dst]:first[dst] + used] = blocks[first[src]:first[src] + used]
        self.past[dsts] = self.past[src]

    def step_inputs(self, lengths: np.ndarray) -> dict:
        """The model's bookkeeping inputs for appending lengths[i] tokens to row i (the tokens'
        embeddings go row after row in inputs_embeds)."""
        total = self.past + lengths
        if len(lengths) != len(total) or (total > self.capacity).any():  # would write into another row's blocks
            raise ValueError(f"KV cache rows were started for at most {self.capacity.tolist()} tokens; "
                             f"{total.tolist()} asked.")
        used = -(-total // self.block_size)  # blocks in use per row after this call
        starts = self._first_block
        return {
            "position_ids": np.concatenate([np.arange(p, t) for p, t in zip(self.past, total)]).astype(np.int64),
            "past_lens": self.past.copy(),
            "subsequence_begins": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
            "block_indices": np.concatenate([np.arange(s, s + u) for s, u in zip(starts, used)]).astype(np.int32),
            "block_indices_begins": np.concatenate([[0], np.cumsum(used)]).astype(np.int32),
            "max_context_len": np.array(total.max(), np.int32),
        }

    def advance(self, lengths: np.ndarray) -> None:
        self.past += lengths.astype(np.int32)


def cache_inputs(compiled: ov.CompiledModel) -> list:
    """The compiled model's cache inputs (key_cache.<layer>, value_cache.<layer>)."""
    return [port for port in compiled.inputs if port.get_any_name().startswith(("key_cache.", "value_cache."))]


def new_cache_tensors(request: ov.InferRequest, blocks: int) -> dict:
    """name -> a fresh tensor of `blocks` blocks, for each cache input of the request's model. Fresh
    tensors cost nothing until written: the OS supplies their pages on first touch. (Not on huge
    pages: attention read them faster, but a chat's first token took 0.87 -> 1.7 s, design-measurements.md.)"""
    tensors = {}
    for port in cache_inputs(request.get_compiled_model()):
        shape = port.get_partial_shape()
        dims = [blocks] + [shape[i].get_length() for i in range(1, shape.rank.get_length())]
        tensors[port.get_any_name()] = ov.Tensor(port.get_element_type(), dims)
    return tensors


def bind_tensors(requests, tensors: dict) -> None:
    """Bind cache tensors (name -> tensor) to each request, and tell our attention operations of the
    requests that have them (attention.bound): every binding of a cache goes through here."""
    from . import attention

    for request in requests:
        for name, tensor in tensors.items():
            request.set_tensor(name, tensor)
        attention.bound(request, tensors)


def by_block(tensor: ov.Tensor, blocks: int) -> np.ndarray:
    """A cache tensor's bytes, one row per block (sub-byte types such as u4 come out of .data as
    packed bytes, so blocks are moved as bytes)."""
    return tensor.data.reshape(-1).view(np.uint8).reshape(blocks, -1)
