"""Continuous batching: one scheduler thread owns the language model and, at every step, runs the
next rows of every active request in one call.

Why: the language model is memory-bound -- its int4 weights stream from RAM once per call, almost
whatever the number of rows -- so requests that share a call share that cost. This is vLLM's and
OpenVINO GenAI's continuous batching, on the PagedAttention model of kv_cache.py.

A step:
1. Drop the requests that were cancelled or whose reader went away (their blocks return at once),
   then admit waiting ones, first come first served: the head of the queue is never overtaken, so
   none starves; it waits only while the block pool cannot hold it.
2. Gather one token for every decoding row (a chat's next token, an image batch's 2N CFG rows) and
   at most `prefill_chunk` prompt tokens of the requests still prefilling, oldest first (chunked
   prefill: a newcomer's long prompt delays the others by one chunk per step, not its whole prefill);
   in a step with no decoding row, up to IDLE_PREFILL_CHUNK.
3. One language-model call; then one lm_head call for every chat row that needs a token and one
   gen_head call per image request (each has its own CFG weight); each request samples with its own
   sampler and gets its tokens through its own queue.

KV cache: one pool of blocks for everyone (BlockPool). A request reserves at admission the blocks its
longest sequence can need and takes them as its rows grow; when it ends (done, cancelled, failed)
they go back. A finished chat turn stays in the pool as a reusable prefix until its blocks are
wanted: the conversation's next turn shares its whole blocks and prefills only the rest. Shared
blocks are full and never written again, so sharing needs no copy; the one block written by several
rows -- the partly filled last prompt block of an image batch -- is copied for each image
(copy-on-write), its full blocks are shared.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections import OrderedDict, deque

import numpy as np
import openvino as ov

from .errors import InvalidInputError, ServerBusyError
from .kv_cache import BLOCK_SIZE, bind_tensors, by_block, new_cache_tensors

PREFILL_CHUNK = 256  # prompt tokens per step, shared by all prefilling requests, while others decode
# ... and while nobody decodes: no one waits for the call, and each call unpacks every int4 weight once,
# so fewer, longer calls prefill faster (a 741-token prompt 5 %, 2448 tokens 10 %, figures in
# benchmarks/results/design-measurements.md); still bounded, so a newcomer waits at most one such call.
IDLE_PREFILL_CHUNK = 1024
POOL_TOKENS = 16384  # KV-cache capacity in tokens, all requests together
MAX_WAITING = 32  # requests queued for blocks before new ones are refused as "busy"
PREFIXES_KEPT = 16  # finished conversations whose cache is kept for their next turn
IMAGES_KEPT = 16  # image embeddings kept for later turns of their conversations

_END = object()


class BlockPool:
    """The KV-cache blocks of all requests: cache tensors bound once to the language model's infer
    request, a free list and a reference count per block."""

    def __init__(self, request: ov.InferRequest, device: str, tokens: int, also=()):
        """also: infer requests of other compiled models of the language model (the runtime's prompt
        model), bound to the same tensors."""
        self.request = request
        self.block_size = BLOCK_SIZE.get(device.split(".")[0], 32)
        self.blocks = -(-tokens // self.block_size)
        # Untouched pages cost nothing: memory grows with the blocks in use, not the pool.
        tensors = new_cache_tensors(request, self.blocks)
        bind_tensors((request, *also), tensors)
        self.names = list(tensors)
        self.free = list(range(self.blocks))[::-1]  # a block freed last is reused first: its pages are warm
        self.refs = np.zeros(self.blocks, np.int32)
        self.reserved = 0  # promised to admitted requests, not yet taken

    def blocks_for(self, tokens) -> int:
        return -(-int(tokens) // self.block_size)

    def available(self) -> int:
        return len(self.free) - self.reserved

    def take(self, job: "Job") -> int:
        """One free block, out of `job`'s reservation."""
        job.reserved -= 1
        self.reserved -= 1
        block = self.free.pop()
        self.refs[block] = 1
        return block

    def share(self, blocks) -> None:
        self.refs[blocks] += 1

    def release(self, blocks) -> None:
        for block in blocks:
            self.refs[block] -= 1
            if self.refs[block] == 0:
                self.free.append(block)

    def copy(self, src: int, dst: int) -> None:
        for name in self.names:
            cache = by_block(self.request.get_tensor(name), self.blocks)
            cache[dst] = cache[src]

    def in_use(self) -> int:
        return self.blocks - len(self.free)


class Row:
    """One sequence in the cache: its block table and how many tokens it holds."""

    def __init__(self, blocks=(), past: int = 0):
        self.blocks, self.past = list(blocks), past


class Job:
    """A request as the scheduler sees it. Subclasses (chat.ChatJob, text_to_image.ImageJob) say
    which rows it has, what it feeds each step and what it does with the hidden states; the
    reader iterates the job for its events."""

    def __init__(self, stop_event=None):
        self.rows: list[Row] = []
        self.reserved = 0
        self.cancelled = threading.Event()
        self.stop_event = stop_event
        self.error: BaseException | None = None
        self.finished = False  # set by the job when it has nothing more to do
        self.submitted_step = self.step_no = 0  # the scheduler's step count at submission / at this call
        self._events: queue.Queue = queue.Queue()

    # -- reader side
    def __iter__(self):
        while (event := self._events.get()) is not _END:
            yield event
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        """The reader is gone (stream closed, client dropped): the rows are freed at the next step."""
        self.cancelled.set()

    # -- scheduler side
    def emit(self, event) -> None:
        self._events.put(event)

    def stopped(self) -> bool:
        return self.cancelled.is_set() or (self.stop_event is not None and self.stop_event.is_set())

    def blocks_needed(self, pool: BlockPool, shared: int) -> int:
        raise NotImplementedError

    def start(self, pool: BlockPool, prefix) -> None:
        """Admitted: make the rows (a chat's first row shares `prefix`'s blocks, if any)."""
        raise NotImplementedError

    def prefill(self, budget: int, sched: "Scheduler") -> list[tuple[Row, np.ndarray]]:
        """Up to `budget` prompt tokens: (row, embeddings [L,H]) pieces; [] once prefilled."""
        return []

    def decode_ids(self) -> tuple[str, list[Row], np.ndarray] | None:
        """("text"|"image", rows, the token id each row is fed) for this step, or None."""
        return None

    def hidden(self, got: list[tuple[Row, np.ndarray]], sched: "Scheduler") -> np.ndarray | None:
        """The last hidden state [H] of each of this job's rows in the call; returns the one row whose
        next-token logits it wants from the batched lm_head, or None."""
        raise NotImplementedError

    def logits(self, logits: np.ndarray) -> None:
        """The lm_head logits [V] of the row `hidden` asked for."""

    def key(self):
        """A chat's keyed ids in its first row, to keep as a prefix when it ends; None: nothing to keep."""
        return None


class Scheduler:
    """Owns the language model, the heads and the block pool; one thread runs the steps."""

    def __init__(self, runtime, pool_tokens: int = POOL_TOKENS, prefill_chunk: int = PREFILL_CHUNK,
                 max_waiting: int = MAX_WAITING):
        from .runtime import Context

        if prefill_chunk < 1 or pool_tokens < 1:
            raise ValueError(f"prefill_chunk and pool_tokens must be >= 1, got {prefill_chunk}, {pool_tokens}.")
        runtime.wait_warm()
        self.runtime = runtime
        self.ctx = Context(runtime)  # the scheduler's own infer requests for the per-step parts
        self.pool = BlockPool(self.ctx.req["language_model"], runtime.device, pool_tokens, self.ctx.also_lm)
        self.prefill_chunk, self.max_waiting = prefill_chunk, max_waiting
        self.waiting: deque[Job] = deque()
        self.active: list[Job] = []
        self.prefixes: OrderedDict[int, tuple[np.ndarray, list[int]]] = OrderedDict()  # LRU: keyed ids, blocks
        self._prefix_ids = iter(range(1 << 62))
        self.images: OrderedDict[int, np.ndarray] = OrderedDict()  # fingerprint -> [576,H], LRU
        self.images_lock = threading.Lock()
        self.steps = 0
        self.closed = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="janus-ov-scheduler", daemon=True)
        self._thread.start()
        atexit.register(self.shutdown)

    # ------------------------------------------------------------------ requests' side

    def submit(self, job: Job) -> Job:
        """Queue `job`; InvalidInputError if it could never fit the pool, ServerBusyError if the queue is full."""
        need = job.blocks_needed(self.pool, 0)
        if need > self.pool.blocks:
            raise InvalidInputError(f"This request needs {need * self.pool.block_size} tokens of KV cache; this "
                                    f"server holds {self.pool.blocks * self.pool.block_size} for all requests "
                                    "together. Ask for fewer images or fewer new tokens.")
        with self._wake:
            if self.closed:
                raise ServerBusyError("The server is shutting down.")
            if len(self.waiting) >= self.max_waiting:
                raise ServerBusyError(f"The server is busy: {len(self.waiting)} requests are waiting. "
                                      "Try again in a minute.")
            job.submitted_step = self.steps
            self.waiting.append(job)
            self._wake.notify()
        return job

    def image_embeddings(self, prints: list[int], pixel_values) -> dict:
        """fingerprint -> embeddings [576,H] of a prompt's images; those not kept from earlier turns
        are encoded here, in the caller's thread (the vision part is not the scheduler's to run)."""
        with self.images_lock:
            kept = {p: self.images[p] for p in prints if p in self.images}
        missing = [i for i, p in enumerate(prints) if p not in kept]
        if missing:
            kept.update(zip((prints[i] for i in missing), self.runtime.vision(np.ascontiguousarray(pixel_values[missing]))))
        with self.images_lock:
            for p in prints:
                self.images[p] = kept[p]
                self.images.move_to_end(p)
            while len(self.images) > IMAGES_KEPT:
                self.images.popitem(last=False)
        return kept

    def close(self, timeout: float | None = 30) -> None:
        """Stop the scheduler thread once the requests under way are done (new ones are refused), and
        wait up to `timeout` s for it: a process that exits while the thread is inside OpenVINO aborts
        ("terminate called without an active exception")."""
        with self._wake:
            self.closed = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def shutdown(self, timeout: float = 10) -> None:
        """At exit: cancel every request (their readers are going away too), then close."""
        with self._wake:
            for job in [*self.active, *self.waiting]:
                job.cancel()
        self.close(timeout)

    def stats(self) -> dict:
        with self._wake:
            return {"active": len(self.active), "waiting": len(self.waiting), "blocks_in_use": self.pool.in_use(),
                    "blocks": self.pool.blocks, "prefixes": len(self.prefixes), "steps": self.steps}

    # ------------------------------------------------------------------ the scheduler thread

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._retire(lambda job: job.stopped())
                while not self.active and not self.waiting:
                    if self.closed:
                        return
                    self._wake.wait()
                self._admit()
                jobs = list(self.active)
            if not jobs:  # the head waits for blocks held by prefixes that just went (cannot happen)
                continue
            try:
                self._step(jobs)
            except Exception as error:  # noqa: BLE001 - every request in the failed call hears of it
                with self._wake:
                    for job in jobs:
                        job.error = error
                    self._retire(lambda job, failed=jobs: job in failed)

    def _admit(self) -> None:
        while self.waiting:
            job = self.waiting[0]
            if job.stopped():
                self.waiting.popleft()
                job.emit(_END)
                continue
            prefix = self._match(job.key())
            shared = len(prefix[1]) if prefix else 0
            need = job.blocks_needed(self.pool, shared)
            while self.pool.available() < need and self._evict(keep=prefix):
                pass
            if self.pool.available() < need:
                return  # first come, first served: the rest wait behind it
            self.waiting.popleft()
            self.pool.reserved += need
            job.reserved = need
            job.start(self.pool, prefix)
            self.active.append(job)

    def _match(self, key):
        """(keyed ids, the whole blocks of the kept prefix that `key` starts with) -- the longest -- or None."""
        if key is None:
            return None
        best, best_len, bs = None, 0, self.pool.block_size
        for pid, (ids, _) in self.prefixes.items():
            n = min(len(ids), len(key) - 1)  # at least one prompt token is prefilled: it gives the logits
            differ = np.flatnonzero(ids[:n] != key[:n])
            common = (int(differ[0]) if len(differ) else n) // bs
            if common > best_len:
                best, best_len = pid, common
        if best is None:
            return None
        self.prefixes.move_to_end(best)
        return best, self.prefixes[best][1][:best_len]

    def _evict(self, keep=None) -> bool:
        for pid in self.prefixes:
            if keep is None or pid != keep[0]:
                self.pool.release(self.prefixes.pop(pid)[1])
                return True
        return False

    def _retire(self, done) -> None:
        """End the active jobs `done(job)` picks: a chat turn's blocks become a kept prefix, every
        other block and the unused reservation go back to the pool."""
        for job in [j for j in self.active if done(j)]:
            self.active.remove(job)
            key = job.key() if job.error is None else None
            rows = job.rows
            if key is not None and rows and rows[0].past:
                n = rows[0].past
                self.prefixes[next(self._prefix_ids)] = (key[:n].copy(), rows[0].blocks)
                rows = rows[1:]
                while len(self.prefixes) > PREFIXES_KEPT:
                    self._evict()
            for row in rows:
                self.pool.release(row.blocks)
            self.pool.reserved -= job.reserved
            job.rows, job.reserved = [], 0
            job.emit(_END)

    def _step(self, jobs: list[Job]) -> None:
        pieces: list[tuple[Job, Row, np.ndarray]] = []
        by_kind: dict[str, list] = {"text": [], "image": []}
        for job in jobs:
            if (fed := job.decode_ids()) is not None:
                by_kind[fed[0]].append((job, fed[1], fed[2]))
        for kind, embed in (("text", self.ctx.embed_text), ("image", self.ctx.embed_image_tokens)):
            if by_kind[kind]:
                ids = np.concatenate([fed for _, _, fed in by_kind[kind]]).astype(np.int64)[None]
                embeds = np.array(embed(ids)[0])
                at = 0
                for job, rows, _ in by_kind[kind]:
                    pieces += [(job, row, embeds[at + i:at + i + 1]) for i, row in enumerate(rows)]
                    at += len(rows)
        budget = self.prefill_chunk if pieces else max(self.prefill_chunk, IDLE_PREFILL_CHUNK)
        for job in jobs:
            for row, embeds in job.prefill(budget, self) if budget > 0 else []:
                pieces.append((job, row, embeds))
                budget -= len(embeds)
        if not pieces:
            return
        hidden = self._language_model(pieces)
        self.steps += 1
        per_job: dict[int, list] = {}
        for job in jobs:
            job.step_no = self.steps
        for (job, row, _), h in zip(pieces, hidden):
            per_job.setdefault(id(job), (job, []))[1].append((row, h))
        heads = [(job, got) for job, got in per_job.values()]
        needs_logits = []
        for job, got in heads:
            wanted = job.hidden(got, self)  # images run gen_head themselves; chats may want logits
            if wanted is not None:
                needs_logits.append((job, wanted))
        if needs_logits:
            logits = self.ctx.lm_head(np.stack([h for _, h in needs_logits])[:, None])  # [R,1,V], one call
            for (job, _), row_logits in zip(needs_logits, logits):
                job.logits(row_logits[0])
        with self._wake:
            self._retire(lambda job: job.finished)

    def _language_model(self, pieces) -> np.ndarray:
        """pieces: (job, row, embeds [L,H]); append each piece's embeds to its row. The last hidden state
        of each piece, f32 [pieces,H] (a copy)."""
        pool = self.pool
        rows, embeds = [row for _, row, _ in pieces], [e for _, _, e in pieces]
        lengths = np.array([len(e) for e in embeds], np.int32)
        past = np.array([row.past for row in rows], np.int32)
        total = past + lengths
        for (job, row, _), t in zip(pieces, total):
            while len(row.blocks) * pool.block_size < t:
                row.blocks.append(pool.take(job))
        used = -(-total // pool.block_size)
        hidden = self.ctx._run(self.ctx.lm_part(int(lengths.sum())), {
            "inputs_embeds": np.concatenate(embeds),
            "position_ids": np.concatenate([np.arange(p, t) for p, t in zip(past, total)]).astype(np.int64),
            "past_lens": past,
            "subsequence_begins": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
            "block_indices": np.concatenate([row.blocks[:u] for row, u in zip(rows, used)]).astype(np.int32),
            "block_indices_begins": np.concatenate([[0], np.cumsum(used)]).astype(np.int32),
            "max_context_len": np.array(total.max(), np.int32),
        })
        for row, n in zip(rows, lengths):
            row.past += int(n)
        hidden = hidden.reshape(-1, hidden.shape[-1])
        return np.array(hidden[np.cumsum(lengths) - 1])
