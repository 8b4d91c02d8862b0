"""Compiled OpenVINO parts and a bounded pool of per-request inference contexts.

One `Runtime` per loaded model compiles the seven IR parts of `parts.py` once (where our int4
matmuls run the language model, copies of it for the token counts of steps too, see STEP_TOKENS;
where they do not, on CPUs with AMX, a bf16 copy for prompts, see prompt_config). Each request
borrows a `Context`: its own infer requests for the language model (with its own paged KV
cache, kv_cache.py) and for the small per-step parts. The two big one-shot parts (vision encoder, VQ
decoder) have one shared infer request each, behind a lock: they run once per request and
their activation buffers are the largest, so sharing them keeps memory flat as the pool grows.

All calls share memory with OpenVINO both ways (`share_inputs`, `share_outputs`): outputs are
numpy views of the request's own output tensors, valid until that request runs again.

Warm-up: the first inference of each part pays OpenVINO's one-off costs (the CPU plugin repacks
weights into its kernels' layout and JIT-compiles them: seconds for a 1B language model). The
runtime pays them once, in a background thread started at load, so the app serves at once and
its first request is as fast as later ones (a request that arrives earlier waits for it). After
that the memory-mapped IR weights the plugin has copied are dropped from the process (see
memory.py): they stay on disk and in the page cache, not twice in our RSS.
"""

from __future__ import annotations

import atexit
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import openvino as ov
import psutil

from . import matmul
from .errors import ModelNotFoundError
from .kv_cache import PagedKVCache, cache_inputs, paged, uncached, with_tokens
from .memory import drop_mapped_pages
from .model_info import ModelInfo
from .parts import PARTS, int4_group_size, integer_weights
from .prefix_cache import PrefixCache
from .tuning import activation_group, cpu_flags

# Parts each request gets its own infer request for (called at every generation step).
PER_REQUEST = ("text_embeddings", "language_model", "lm_head", "gen_embeddings", "gen_head")
SHARED = ("vision", "vq_decoder")
# Parts whose every call streams all their weights (see streaming_config).
STREAMING = ("language_model", "lm_head", "gen_head")

_core = None
_core_lock = threading.Lock()
# Held while a Runtime reads and compiles its parts: our operations are read from IRs of their own
# (native.new_node), which must not run while another thread reads an IR -- another Runtime's too.
_loading_lock = threading.Lock()


def core() -> ov.Core:
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def compile_config(device: str, ov_config: dict | None, cache_dir: str | Path | None) -> dict:
    """LATENCY hint + compiled-model cache, then the caller's overrides (which win)."""
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if cache_dir is not None and str(cache_dir) != "":
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(cache_dir)
        except OSError:
            pass  # e.g. a read-only home: compile every time rather than fail
    config.update({k: (str(v) if not isinstance(v, (int, float, bool)) else v) for k, v in (ov_config or {}).items()})
    if config.get("CACHE_DIR") == "":
        config.pop("CACHE_DIR")  # ov_config={"CACHE_DIR": ""} turns the cache off
    return config


def streaming_config(model: ov.Model, device: str, config: dict) -> dict:
    """`config` for a part of STREAMING, with what suits its weights on this CPU; the caller's
    settings win.

    Those parts are memory-bound (each call reads all their weights for a few rows):
    - f32 activations when the weights are integer. The CPU plugin then quantizes the activations
      to int8 on the fly and runs its integer kernels, which unpack int4/int8 weights faster than
      the bf16 kernels that CPUs with bf16 (AVX-512 bf16, AMX) get by default: faster at 1, 2 and 8
      rows on every kind measured. On AVX2 f32 is the default anyway. The compute-bound parts
      (vision encoder, VQ decoder) keep the default: bf16 is faster there (1.2x and 1.9x on Zen 4).
      fp16 weights keep it too: with no integer kernels to reach, f32 only makes their arithmetic
      heavier (2.6x slower steps).
    - Activations quantized in groups as long as the int4 weights' (the plugin takes 32) where a
      measurement on this machine finds a chat token no slower with them (tuning.py: kinds with the
      same flags differ); prompts and image rows are faster with them wherever measured. The verdict
      is kept beside the compiled-model cache (config's CACHE_DIR).
    Figures of each kind: benchmarks/results/design-measurements.md.
    """
    if not (device.startswith("CPU") and integer_weights(model)):
        return config
    chosen = {"INFERENCE_PRECISION_HINT": "f32"}
    group = int4_group_size(model)
    if group and "DYNAMIC_QUANTIZATION_GROUP_SIZE" not in config:
        measured = activation_group(model, group, config.get("CACHE_DIR"))
        if measured:
            chosen["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(measured)
    return {**chosen, **config}


# Token counts of the calls most steps make (a chat token; the CFG rows of one image, of two -- the
# app's default -- and of four, the most it draws at once) that get a copy of the language model
# compiled for exactly that many tokens, where our int4 matmuls run it: the plugin then infers no
# shapes at each call (design-measurements.md; benchmarks/pipeline_steps.py --against-dynamic).
STEP_TOKENS = (1, 2, 4, 8)


def step_part(tokens: int) -> str:
    """The part name of the language model's copy compiled for calls of exactly `tokens` tokens."""
    return f"language_model.{tokens}"


# A language-model call of at least this many tokens runs on the prompt model where there is one:
# the two models' times cross between 32 and 64 tokens on the Intel kind (design-measurements.md).
PROMPT_TOKENS = 64


def prompt_config(model: ov.Model, device: str, config: dict, cpu: set | None = None,
                  free: int | None = None, weights: int = 0) -> dict | None:
    """Settings of a second compiled language model for prompt-sized calls, or None: one model then
    serves every call. cpu: the CPU's feature flags (default: this machine's, `cpu_flags()`).
    free: bytes of memory available (default: this machine's now); weights: the language model's IR
    weight bytes.

    On CPUs with AMX, bf16 activations put a prompt's matmuls on the AMX tiles: a 640-token prompt is
    1.6x faster than with the integer kernels streaming_config picks, which stay faster for a few rows
    (a chat token 1.4x, 8 image rows 1.9x). Runtime asks only where our int4 matmuls (matmul.py) do not
    run the language model: they serve prompts too, and with one model a request's numbers do not depend
    on what shares its calls. Elsewhere one model serves every call.
    Both models read and write the same KV cache (the plugin gives both its u8 layout; Runtime
    checks). Not where the caller chose a precision (one model with it), nor for float weights. The
    second model holds the weights once more (+0.9 GB for the 1B int4, +3.7 GB for the 7B), so it is
    compiled only while 3x the weights are free: both copies and room to spare.
    """
    if not (device.startswith("CPU") and integer_weights(model)) or "INFERENCE_PRECISION_HINT" in config:
        return None
    if (psutil.virtual_memory().available if free is None else free) < 3 * weights:
        return None
    if "amx_bf16" not in (cpu_flags() if cpu is None else cpu):
        return None
    return {**config, "INFERENCE_PRECISION_HINT": "bf16"}


def cache_ports(compiled: ov.CompiledModel) -> set:
    """(name, element type, shape) of a compiled PagedAttention model's cache inputs."""
    return {(p.get_any_name(), p.get_element_type().get_type_name(), str(p.get_partial_shape()))
            for p in cache_inputs(compiled)}


def _tensor(array: np.ndarray, dtype) -> tuple[ov.Tensor, np.ndarray]:
    """(tensor, the numpy array whose memory it uses): `array` itself unless it is not
    C-contiguous or not of `dtype` (then a copy). 0-d arrays stay 0-d (numpy would give [1]).
    The tensor does not own that memory: the caller must keep the array alive while it is bound."""
    data = array if array.flags.c_contiguous and array.dtype == dtype else np.ascontiguousarray(array, dtype=dtype)
    flat = data.reshape(-1)  # a view; the Shape argument restores the true shape (incl. 0-d)
    return ov.Tensor(flat, ov.Shape(list(array.shape)), ov.Type(dtype)), data


class Context:
    """One request's view of the model: private infer requests for the per-step parts."""

    def __init__(self, runtime: "Runtime"):
        self.runtime = runtime
        models = {name: runtime.compiled[name] for name in PER_REQUEST}
        if runtime.prompt_model is not None:
            models["prompt_model"] = runtime.prompt_model
        models.update({step_part(tokens): model for tokens, model in runtime.step_models.items()})
        self.req = {name: model.create_infer_request() for name, model in models.items()}
        self._dtypes = {name: {p.get_any_name(): p.get_element_type().to_dtype() for p in model.inputs}
                        for name, model in models.items()}
        self._bound = {name: {} for name in models}  # input -> (caller's array or None, array the tensor uses)
        # The other language models' requests work on the same cache tensors as the language model's.
        others = ["prompt_model", *map(step_part, runtime.step_models)]
        self.also_lm = [self.req[name] for name in others if name in self.req]
        self.kv = PagedKVCache(self.req["language_model"], runtime.device, self.also_lm)
        self.prefix = PrefixCache(self.kv.block_size)  # what the KV cache holds from the last chat turn

    # -- per-request parts: return views into this context's output tensors --

    def _run(self, part: str, inputs: dict) -> np.ndarray:
        """Bind each input as a zero-copy tensor and infer.

        The generation loops pass the same preallocated buffers at every step (token ids, cfg
        weight): those stay bound and are not re-wrapped, which keeps the Python cost of a call
        well under the cost of the generic `infer(dict)` path.
        """
        request, bound, dtypes = self.req[part], self._bound[part], self._dtypes[part]
        for name, array in inputs.items():
            if bound.get(name, (None,))[0] is not array:
                tensor, data = _tensor(array, dtypes[name])
                request.set_tensor(name, tensor)
                # Keep `data` alive while the tensor points at it. Skip re-binding next time only
                # if the tensor reads the caller's own buffer (a copy would go stale when the
                # caller updates its buffer in place).
                bound[name] = (array if data is array else None, data)
        request.infer()
        return request.get_output_tensor(0).data

    def embed_text(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids i64 [B,T] -> inputs_embeds f32 [B,T,H]"""
        return self._run("text_embeddings", {"input_ids": input_ids})

    def embed_image_tokens(self, image_ids: np.ndarray) -> np.ndarray:
        """image_ids i64 [B,T] -> inputs_embeds f32 [B,T,H]"""
        return self._run("gen_embeddings", {"image_ids": image_ids})

    def start(self, capacities, keep: int = 0) -> None:
        """Start new sequences in the language model, one per row; row i will hold at most
        capacities[i] tokens (prompt + generated). keep: see PagedKVCache.start."""
        self.prefix.forget()  # the caller records what the rows hold once it has written them
        self.kv.start(capacities, keep)

    def language_model(self, inputs_embeds: np.ndarray, lengths=None) -> np.ndarray:
        """Append tokens to the rows' sequences: inputs_embeds f32 [sum(lengths),H], row after row
        (lengths None: one token per row; a row may get none). Returns the last hidden state
        (after the final norm) of each row that got tokens, f32 [rows,H]: a view into the output
        tensor when every row got one token."""
        rows = len(self.kv.past)
        lengths = np.ones(rows, np.int32) if lengths is None else np.asarray(lengths, np.int32)
        hidden = self._run(self.lm_part(int(lengths.sum())), {"inputs_embeds": inputs_embeds, **self.kv.step_inputs(lengths)})
        self.kv.advance(lengths)
        hidden = hidden.reshape(-1, hidden.shape[-1])  # [tokens,1,H] -> [tokens,H]
        return hidden if len(hidden) == rows else hidden[np.cumsum(lengths)[lengths > 0] - 1]

    def lm_part(self, tokens: int) -> str:
        """Which compiled language model runs a call of `tokens` tokens (see STEP_TOKENS, prompt_config)."""
        if tokens in self.runtime.step_models:
            return step_part(tokens)
        return "prompt_model" if tokens >= PROMPT_TOKENS and "prompt_model" in self.req else "language_model"

    def lm_head(self, hidden_states: np.ndarray) -> np.ndarray:
        """hidden_states f32 [B,T,H] -> logits f32 [B,T,V]"""
        return self._run("lm_head", {"hidden_states": hidden_states})

    def gen_head(self, hidden_states: np.ndarray, cfg_weight: np.ndarray) -> np.ndarray:
        """hidden_states f32 [2N,H] (cond rows then uncond rows) -> CFG-mixed logits f32 [N,K]"""
        return self._run("gen_head", {"hidden_states": hidden_states, "cfg_weight": cfg_weight})

    # -- shared parts: serialised, results copied out (they are small next to the work) --

    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values f32 [N,3,S,S] -> image_embeds f32 [N,576,H] (a private copy)"""
        return self.runtime.vision(pixel_values)

    def vq_decode(self, image_ids: np.ndarray) -> np.ndarray:
        """image_ids i64 [N,576] -> images f32 [N,3,S,S] in about -1..1 (a private copy);
        [N,R*24] (R whole token rows) -> [N,3,R*16,S]: the top R*16 pixel rows of a picture"""
        return self.runtime.vq_decode(image_ids)


class Runtime:
    """The compiled parts of one converted model plus a pool of at most `max_concurrency` contexts."""

    def __init__(self, model_dir: str | Path, device: str = "CPU", ov_config: dict | None = None,
                 cache_dir: str | Path | None = None, max_concurrency: int = 2, warm_up: bool = True):
        """cache_dir: OpenVINO's compiled-model cache (CACHE_DIR); None = no cache.
        warm_up: run every part once in a background thread (see the module docstring)."""
        self.model_dir = Path(model_dir)
        missing = [p for p in PARTS if not (self.model_dir / f"{p}.xml").is_file()]
        if missing:
            raise ModelNotFoundError(f"{self.model_dir} is not a converted Janus model: missing "
                                     f"{', '.join(m + '.xml' for m in missing)}.")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}.")
        self.device = device
        self.config = compile_config(device, ov_config, cache_dir)
        self._warm = threading.Event()
        loading = threading.Event()  # set once compiling and the warm-up are over
        threading.Thread(target=self._shed_mapped_pages, args=(loading,), name="janus-ov-shed", daemon=True).start()
        # Compiling from the path (not a read_model result) lets a cache hit skip reading the IR.
        # Parts compile in parallel: OpenVINO releases the GIL, and the big part dominates anyway.
        try:
            # A first launch on this machine measures the language model's activation group (tuning.py):
            # here, alone, not while the parts compile in parallel below (which then find the verdict).
            # The language models' graphs are made here too: our operations are read from IRs of their
            # own (native.py), which must not run while other threads read IRs (_loading_lock).
            with _loading_lock:
                self._paged = self._paged_models()
                with ThreadPoolExecutor(max_workers=len(PARTS) + 1) as pool:
                    prompt_model = pool.submit(self._compile_prompt_model)
                    steps = {tokens: pool.submit(self._compile, step_part(tokens)) for tokens in STEP_TOKENS
                             if step_part(tokens) in self._paged}  # copies only where our int4 matmuls run
                    compiled = pool.map(self._compile, PARTS)
                    self.compiled = dict(zip(PARTS, compiled))
                    self.prompt_model = prompt_model.result()
                    self.step_models = {tokens: future.result() for tokens, future in steps.items()}
        except BaseException:
            loading.set()
            raise
        if self.prompt_model is not None and cache_ports(self.prompt_model) != cache_ports(self.compiled["language_model"]):
            print("janus_ov: the prompt model's KV cache layout differs from the language model's; not using it.")
            self.prompt_model = None
        self._shared = {name: (self.compiled[name].create_infer_request(), threading.Lock()) for name in SHARED}
        self._free: list[Context] = []  # idle contexts, the most recently used last
        self._created = 0
        self._max = max_concurrency
        self._pool = threading.Condition()
        self.warm_up_s: float | None = None
        if warm_up:
            threading.Thread(target=self._warm_up, args=(loading,), name="janus-ov-warm-up", daemon=True).start()
            # A process that ends while the warm-up thread is inside OpenVINO aborts ("terminate called
            # without an active exception", exit status -6): let it finish first. Only the Event is held.
            atexit.register(self._warm.wait, 120)
        else:
            loading.set()
            self._warm.set()

    def _paged_models(self) -> dict:
        """name -> (paged language model, its settings): the language model, and either its copies for
        steps (our int4 matmuls) or, where prompt_config gives one, the prompt model. The IR is read once
        per model (its weights stay mapped: cheap)."""
        xml = str(self.model_dir / "language_model.xml")
        lm = core().read_model(xml)
        config = streaming_config(lm, self.device, self.config)
        model = paged(lm, self.device, config)
        made = {"language_model": (model, config)}
        if matmul.OP_TYPE in {op.get_type_name() for op in model.get_ops()}:
            # Our int4 matmuls serve prompts too, so no prompt model: with one, whether a request's
            # prompt ran in bf16 or f32 depended on what else shared its call (a soak's reruns differed).
            made.update({step_part(tokens): (with_tokens(model, tokens), config) for tokens in STEP_TOKENS})
            return made
        weights = (self.model_dir / "language_model.bin").stat().st_size
        prompt = prompt_config(lm, self.device, self.config, weights=weights)
        if prompt is not None:
            made["prompt_model"] = (paged(core().read_model(xml), self.device, prompt), prompt)
        return made

    def _compile(self, part: str) -> ov.CompiledModel:
        xml = self.model_dir / f"{part}.xml"
        if part in self._paged:
            model, config = self._paged[part]
            return core().compile_model(model, self.device, uncached(config))
        if part not in STREAMING:
            return core().compile_model(str(xml), self.device, self.config)
        model = core().read_model(str(xml))  # weights stay mapped, not read: cheap
        # From the path, not `model`: a compiled-model cache hit then skips reading the IR.
        return core().compile_model(str(xml), self.device, streaming_config(model, self.device, self.config))

    def _compile_prompt_model(self) -> ov.CompiledModel | None:
        return self._compile("prompt_model") if "prompt_model" in self._paged else None

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Block until the warm-up is over (True), or `timeout` seconds pass (False)."""
        return self._warm.wait(timeout)

    def _shed_mapped_pages(self, loading: threading.Event, every_s: float = 0.2) -> None:
        """While the plugin compiles and first runs the parts it reads each IR's mapped weights once,
        to copy them into its own layout; pages it has read are dropped as it goes, so the mapped
        file and the plugin's copy are never both whole in our RSS (the peak of a 7B model would be
        their sum). A page read again is faulted back in from the page cache."""
        dirs = [self.model_dir, self.config.get("CACHE_DIR")]
        while not loading.wait(every_s):
            drop_mapped_pages(dirs)
        drop_mapped_pages(dirs)  # once more when the warm-up is over: nothing mapped stays resident

    def _warm_up(self, loading: threading.Event) -> None:
        t0 = time.perf_counter()
        try:
            ctx = self._take()
            try:
                warm_up_parts(ctx)  # the mapped pages it reads are dropped by _shed_mapped_pages as it goes
            finally:
                self._give(ctx)
        except Exception as err:  # noqa: BLE001 - a real request will meet (and report) the same problem
            print(f"janus_ov: warm-up failed ({type(err).__name__}: {err}); the first request will be slower.")
        finally:
            self.warm_up_s = time.perf_counter() - t0
            loading.set()
            self._warm.set()

    def vision(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.run_shared("vision", {"pixel_values": pixel_values})

    def vq_decode(self, image_ids: np.ndarray) -> np.ndarray:
        return self.run_shared("vq_decoder", {"image_ids": image_ids})

    def run_shared(self, part: str, inputs: dict) -> np.ndarray:
        request, lock = self._shared[part]
        with lock:
            return request.infer(inputs, share_inputs=True, share_outputs=False)[0]

    @contextmanager
    def context(self, prefer=None):
        """Borrow a context (blocks while `max_concurrency` requests are running, or the warm-up).

        prefer(ctx) -> int: among idle contexts take the one it scores highest, if above 0 (a
        chat's follow-up: the context whose prefix cache holds most of its prompt);
        otherwise the most recently used one (its memory is warm), or a new one.
        """
        self._warm.wait()
        ctx = self._take(prefer)
        try:
            yield ctx
        finally:
            self._give(ctx)

    def _take(self, prefer=None) -> Context:
        with self._pool:
            while not self._free and self._created >= self._max:
                self._pool.wait()
            if self._free:
                scores = [prefer(ctx) for ctx in self._free] if prefer else [0]
                best = int(np.argmax(scores)) if max(scores) > 0 else len(self._free) - 1
                return self._free.pop(best)
            self._created += 1
        try:
            return Context(self)
        except BaseException:
            with self._pool:
                self._created -= 1
                self._pool.notify()
            raise

    def _give(self, ctx: Context) -> None:
        with self._pool:
            self._free.append(ctx)
            self._pool.notify()


def warm_up_parts(ctx: Context, after_each=lambda: None) -> None:
    """One small inference of every part, with the batch and length kinds real requests use
    (a multi-token prefill and a one-token step of the language model).
    `after_each()` runs after each part (the runtime drops the pages that part no longer needs
    there, so peak memory holds one part's mapped weights at a time, not all of them)."""
    compiled = ctx.runtime.compiled
    hidden = compiled["lm_head"].input(0).get_partial_shape()[2].get_length()
    size = compiled["vision"].input(0).get_partial_shape()[2].get_length()
    tokens = ModelInfo.load(ctx.runtime.model_dir).num_image_tokens
    ids = np.zeros((2, 2), np.int64)
    ctx.start([3, 3])
    ctx.language_model(ctx.embed_text(ids).reshape(4, hidden), [2, 2])
    step = np.array(ctx.language_model(ctx.embed_image_tokens(ids[:, :1]).reshape(2, hidden)))  # [2,H]
    if "prompt_model" in ctx.req:  # a call long enough for it
        ctx.start([PROMPT_TOKENS])
        ctx.language_model(np.zeros((PROMPT_TOKENS, hidden), np.float32), [PROMPT_TOKENS])
    for rows in ctx.runtime.step_models:  # each step model's first call, one token a row
        ctx.start([1] * rows)
        ctx.language_model(np.zeros((rows, hidden), np.float32))
    after_each()
    for run in (lambda: ctx.lm_head(step[:1, None]), lambda: ctx.gen_head(step, np.array(1.0, np.float32)),
                lambda: ctx.vision(np.zeros((1, 3, size, size), np.float32)),
                lambda: ctx.vq_decode(np.zeros((1, tokens), np.int64))):
        run()
        after_each()
