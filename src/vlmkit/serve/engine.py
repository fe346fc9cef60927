"""The request queue and iteration-level scheduler behind `vlmkit serve` (transformers backend).

Requests are encoded by the web handlers, then queued here. One worker thread owns the model and loops one
token at a time (`vlmkit.serve.decode_batch`): between two decoding steps it prefills queued requests (up to
`max_batch_rows` rows, and about `_PREFILL_TOKENS` prompt tokens per step, so that a burst of prompts does
not stall the rows already decoding for long; a prompt longer than `_PREFILL_CHUNK` tokens is prefilled alone,
one chunk of that many tokens between two steps), and they join the running batch at the next step; a row that
ends (its own `max_tokens`, a stop token or string, its client gone) leaves the batch at once, and its reply is
sent. Every row samples with its own settings and generator (`vlmkit.serve.sampling`), so requests with any
sampling settings share the batch; rows of different adapters decode in separate batches (peft switches
adapters per forward). The worker never waits on a client, so a slow reader cannot hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlmkit.backends.transformers_backend import VLM, GenerationOptions
from vlmkit.serve import decode_batch
from vlmkit.serve.decode_batch import DecodeBatch, Prefilled
from vlmkit.serve.sampling import RowSampler

log = logging.getLogger("vlmkit.serve")

ENGINE_STOPPED = (
    "the server's generation thread has stopped (see the server log); the server is shutting down"
)
CLIENT_GONE = "the client disconnected before generation began"
SHUTTING_DOWN = "the server is shutting down; this request was not finished, send it again"
GENERATION_FAILED = "generation failed (see the server log)"
# Prompt tokens prefilled between two decoding steps (at least one request): new requests start promptly,
# and the running rows wait at most about this many tokens' prefill for their next token.
_PREFILL_TOKENS = 2048
# A longer prompt is prefilled this many tokens at a time, one chunk between two decoding steps (its media whole
# in the first chunk): a long prompt delays each running row's next token by one chunk, not by the whole prompt.
_PREFILL_CHUNK = 512
# Prompts are prefilled together only while the longest is at most twice the shortest plus this many tokens
# (left padding a short prompt to a long one costs the padding's compute).
_PADDING_SLACK = 256


@dataclass(eq=False)  # compared by identity: the queue removes jobs, and `==` on tensor dicts raises
class Job:
    """One chat-completion request: `n` rows of the same encoded prompt.

    `events` receives ("delta", choice, text), ("finish", choice, reason), then ("done", usage)
    or ("error", message); it is fed from the worker thread with `loop.call_soon_threadsafe`.
    """

    adapter: str | None
    encoded: dict[str, Any]
    options: GenerationOptions
    n: int
    stop: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    stream: bool = False
    cancelled: bool = False  # the client went away: its rows end at the next token
    # set by the engine's worker
    sampler: RowSampler | None = field(default=None, repr=False)  # made when the job is prefilled
    rows_left: int = 0  # rows still generating
    ended: list = field(default_factory=list, repr=False)  # its rows that have ended (_Row)
    failed: bool = False  # it got an error: its other rows are dropped

    @property
    def prompt_tokens(self) -> int:
        return int(self.encoded["input_ids"].shape[0])

    def emit(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class _Outbox:
    """The worker's events, held until the end of a step and then handed to each event loop in one call: one
    wake-up of a loop per step, not one per token of each row (each wake-up is a write to the loop's socket and
    a turn of the loop competing with the worker for the GIL)."""

    def __init__(self) -> None:
        self.held: list[tuple[Job, tuple]] = []

    def post(self, job: Job, *event: Any) -> None:
        self.held.append((job, event))

    def flush(self) -> None:
        by_loop: dict[int, tuple[Any, list[tuple[asyncio.Queue, tuple]]]] = {}
        for job, event in self.held:
            by_loop.setdefault(id(job.loop), (job.loop, []))[1].append((job.events, event))
        self.held = []
        for loop, events in by_loop.values():
            with contextlib.suppress(RuntimeError):  # that loop has closed: the server is exiting
                loop.call_soon_threadsafe(_deliver, events)


def _deliver(events: list[tuple[asyncio.Queue, tuple]]) -> None:
    for queue, event in events:
        queue.put_nowait(event)


@dataclass
class _Row:
    job: Job
    choice: int
    prompt: list[int] = field(default_factory=list)  # the prompt's ids (the repetition penalty reads them)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of `text` already streamed
    finish: str | None = None


class _RowTracker:
    """Follows each row token by token: its text, where it ends, and what its client has been sent."""

    def __init__(self, decode: Any, stop_ids: list[int], outbox: _Outbox):
        self.decode = decode  # VLM.decode: the text `vlmkit infer` would show for these ids
        self.stop_ids = set(stop_ids)
        self.outbox = outbox

    def advance(self, row: _Row, token: int) -> None:
        job = row.job
        row.tokens.append(token)
        # the text so far is needed at each token only to stream it or to look for a stop string; else once, at the end
        reads_text = job.stream or bool(job.stop)
        if token in self.stop_ids:
            row.finish = "stop"
        else:
            if reads_text:
                row.text = self.decode(row.tokens)
            cut = min((i for i in (row.text.find(s) for s in job.stop) if i >= 0), default=-1)
            if cut >= 0:
                row.text, row.finish = row.text[:cut], "stop"
            elif len(row.tokens) >= job.options.max_new_tokens:
                row.finish = "length"
            elif job.cancelled:
                row.finish = "cancelled"
        if row.finish is not None and not reads_text:
            row.text = self.decode(row.tokens)  # what decoding at every token would have left (stop ids dropped)
        if job.stream:
            self.send(row)

    def send(self, row: _Row) -> None:
        """Stream the text that is final: hold back an unfinished UTF-8 character and any tail that
        could still grow into a stop string."""
        end = len(row.text)
        if row.finish is None:
            end = len(row.text.rstrip("\ufffd"))  # an unfinished UTF-8 character decodes to U+FFFD
            hold = max((len(s) - 1 for s in row.job.stop), default=0)
            end -= hold
        if end > row.sent:
            self.outbox.post(row.job, "delta", row.choice, row.text[row.sent : end])
            row.sent = end
        if row.finish is not None:
            self.outbox.post(row.job, "finish", row.choice, row.finish)


class Engine:
    """Owns the model on one worker thread; `submit` jobs from any thread.

    `adapters` maps served adapter names to peft adapter names on `vlm.model` (None: the base
    model, with adapters disabled; the key None may map to a peft adapter when the main model
    is a LoRA checkpoint). A request that fails gets an error and the worker goes on; should the
    worker thread itself end (a bug), `failure` says why, every queued and later job gets an
    error, and `on_failure` is called (the server then exits non-zero so a supervisor restarts it).
    `batches` counts the decoding steps run (one forward of a batch of rows each).
    """

    def __init__(
        self,
        vlm: VLM,
        adapters: dict[str | None, str | None],
        max_batch_rows: int = 16,
        on_failure: Callable[[], None] | None = None,
    ):
        self.vlm = vlm
        self.adapters = adapters
        self.max_batch_rows = max_batch_rows
        self.on_failure = on_failure
        self.queue: deque[Job] = deque()
        self.ready = threading.Condition()
        self.stopping = False
        self.failure: str | None = None
        self.running: list[Job] = []  # jobs taken from the queue and not finished
        self.decoding: list[tuple[str | None, DecodeBatch]] = []  # (adapter, its rows decoding together)
        self.prefilling: deque[_Prefilling] = deque()  # long prompts prefilled a chunk per step, oldest first
        self.outbox = _Outbox()  # the worker's events to the clients' handlers, sent after each step
        self.tracker = _RowTracker(vlm.decode, vlm.template.stop_token_ids, self.outbox)
        self.model_lock = threading.Lock()  # held while the model runs (a step), and by `exclusive`
        self.batches = 0
        self.thread = threading.Thread(target=self._run, name="vlmkit-serve-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.ready:
            self.stopping = True
            self.ready.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout=30)

    def shut_down(self) -> None:
        """Stop generating now (the server is exiting): every queued and running request gets SHUTTING_DOWN at
        once, the worker stops after the step under way, and later requests are refused the same way."""
        with self.ready:
            self.stopping = True
            jobs, self.queue = self.running + list(self.queue), deque()
            self.ready.notify_all()
        for job in jobs:
            job.cancelled = True
            job.emit("error", SHUTTING_DOWN)

    def exclusive(self, change: Callable[[], Any]) -> Any:
        """Run `change` (e.g. loading an adapter onto the model) between two steps, never during one."""
        with self.model_lock:
            return change()

    @property
    def alive(self) -> bool:
        return self.failure is None and self.thread.is_alive()

    def submit(self, job: Job) -> None:
        with self.ready:
            if self.failure is not None or self.stopping:
                job.emit("error", ENGINE_STOPPED if self.failure is not None else SHUTTING_DOWN)
                return
            self.queue.append(job)
            self.ready.notify()

    def _run(self) -> None:
        try:
            while (jobs := self._admit()) is not None:
                for adapter, group in _prefill_groups(jobs):
                    self._start(adapter, group)
                if self.prefilling:
                    self._prefill_chunk(self.prefilling[0])
                self.outbox.flush()
                for adapter, batch in self.decoding:
                    self._step(adapter, batch)
                    self.outbox.flush()
                self.decoding = [(adapter, batch) for adapter, batch in self.decoding if len(batch)]
        except BaseException as e:  # a bug in the loop itself: fail loudly rather than hang every client
            log.exception("the engine thread stopped")
            with contextlib.suppress(BaseException):
                self.outbox.flush()  # the replies that were complete
            self._fail(f"{type(e).__name__}: {e}")

    def _rows(self) -> int:
        return sum(len(batch) for _, batch in self.decoding) + sum(p.job.n for p in self.prefilling)

    def _admit(self) -> list[Job] | None:
        """The queued jobs that start before the next step (None once stopping): oldest first, while their rows
        fit `max_batch_rows` and their prompts `_PREFILL_TOKENS` (one at least); waits while there is nothing
        to do."""
        with self.ready:
            while not self.queue and not self.decoding and not self.prefilling and not self.stopping:
                self.ready.wait()
            if self.stopping:
                return None
            taken: list[Job] = []
            rows, tokens = self._rows(), 0
            while self.queue and (rows == 0 or rows + self.queue[0].n <= self.max_batch_rows):
                prompt = min(self.queue[0].prompt_tokens, _PREFILL_CHUNK)  # a longer one runs a chunk a step
                if taken and tokens + prompt > _PREFILL_TOKENS:
                    break
                job = self.queue.popleft()
                taken.append(job)
                rows, tokens = rows + job.n, tokens + prompt
            self.running += taken  # under the lock: `shut_down` sees every job as queued or running
            return taken

    def _start(self, adapter: str | None, jobs: list[Job]) -> None:
        """Prefill `jobs` (one adapter) together, sample the first token of each of their rows, and put the rows
        that go on into a decode batch. If the prefill fails, each job is tried alone, so a bad one fails alone."""
        for job in jobs:
            if job.cancelled:  # its client left while it was queued; end its handler, which may still wait
                self.outbox.post(job, "error", CLIENT_GONE)
                self._forget(job)
        jobs = [job for job in jobs if not job.cancelled]
        if not jobs:
            return
        if len(jobs) == 1 and jobs[0].prompt_tokens > _PREFILL_CHUNK:
            self._start_chunked(adapter, jobs[0])
            return
        try:
            with self.model_lock, self._adapter(adapter):
                prompt = decode_batch.prefill(self.vlm.model, self._inputs(jobs))
            self._make_samplers(jobs)
        except Exception:  # a bug, a bad input the checks missed, out of memory
            log.exception("prefill of %d requests failed", len(jobs))
            for job in jobs:
                if len(jobs) > 1:
                    self._start(adapter, [job])
                else:
                    self._abort(job)
            return
        self._join(adapter, jobs, prompt)

    def _inputs(self, jobs: list[Job]) -> dict[str, Any]:
        """The model inputs of `jobs`' rows (each job's prompt `n` times), left-padded into one batch."""
        return self.vlm._inputs([job.encoded for job in jobs for _ in range(job.n)])

    def _make_samplers(self, jobs: list[Job]) -> None:
        for job in jobs:
            job.sampler, job.rows_left = RowSampler(job.options, self.vlm.model, job.prompt_tokens), job.n

    def _start_chunked(self, adapter: str | None, job: Job) -> None:
        """Queue a long prompt to be prefilled a chunk per step (`_prefill_chunk`)."""
        try:
            template = self.vlm.template
            media = tuple(i for i in (template.image_token_id, template.video_token_id) if i is not None)
            chunks = decode_batch.ChunkedPrefill(self.vlm.model, self._inputs([job]), _PREFILL_CHUNK, media)
        except Exception:
            log.exception("prefill of a request failed")
            self._abort(job)
            return
        self.prefilling.append(_Prefilling(adapter, job, chunks))

    def _prefill_chunk(self, pending: _Prefilling) -> None:
        """Run the next chunk of the oldest long prompt; once its last chunk has run, its rows join a batch."""
        job = pending.job
        if job.cancelled:
            self.prefilling.popleft()
            self.outbox.post(job, "error", CLIENT_GONE)
            self._forget(job)
            return
        try:
            with self.model_lock, self._adapter(pending.adapter):
                prompt = pending.chunks.advance(self.vlm.model)
            if prompt is not None:
                self._make_samplers([job])
        except Exception:
            log.exception("prefill of a request failed")
            self.prefilling.popleft()
            self._abort(job)
            return
        if prompt is not None:
            self.prefilling.popleft()
            self._join(pending.adapter, [job], prompt)

    def _join(self, adapter: str | None, jobs: list[Job], prompt: Prefilled) -> None:
        """Sample the first token of each row of `jobs` (prefilled as `prompt`); the rows that go on join a batch."""
        rows = [_Row(job, choice, prompt=job.encoded["input_ids"].tolist()) for job in jobs for choice in range(job.n)]
        batch = self._batch_for(adapter, prompt)
        first = len(batch)
        batch.join(rows, prompt)
        done = set()
        for k, (row, token) in enumerate(zip(rows, _next_tokens(rows, prompt.logits), strict=True)):
            self._advance(row, token)
            if row.finish is not None:
                done.add(first + k)
        if done:
            batch.leave(done)

    def _batch_for(self, adapter: str | None, prompt: Prefilled) -> DecodeBatch:
        """The decode batch that rows of `adapter` prefilled as `prompt` join (a new one if none can take them)."""
        if decode_batch.mergeable(prompt.cache):
            for own, batch in self.decoding:
                if own == adapter and batch.rows and decode_batch.mergeable(batch.cache):
                    return batch
        self.decoding.append((adapter, DecodeBatch()))
        return self.decoding[-1][1]

    def _step(self, adapter: str | None, batch: DecodeBatch) -> None:
        """One token for every row of `batch`; the rows that end leave it."""
        if not batch.rows:  # every row it was given ended at its first token
            return
        try:
            with self.model_lock, self._adapter(adapter):
                logits = batch.step(self.vlm.model, [row.tokens[-1] for row in batch.rows])  # (B, V)
        except Exception:  # out of memory or a bug: these requests fail, the others go on
            log.exception("a decoding step of %d rows failed", len(batch))
            for job in {id(row.job): row.job for row in batch.rows}.values():
                self._abort(job)
            batch.leave(set(range(len(batch))))
            return
        self.batches += 1
        done = set()
        for i, (row, token) in enumerate(zip(batch.rows, _next_tokens(batch.rows, logits), strict=True)):
            if row.job.failed:
                done.add(i)
                continue
            self._advance(row, token)
            if row.finish is not None:
                done.add(i)
        if done:
            batch.leave(done)

    def _advance(self, row: _Row, token: int) -> None:
        """`row`'s next token is `token`; a row that ends is answered."""
        self.tracker.advance(row, token)
        if row.finish is not None:
            self._row_ended(row)

    def _row_ended(self, row: _Row) -> None:
        job = row.job
        job.ended.append(row)
        job.rows_left -= 1
        if job.rows_left > 0 or self.stopping:
            return
        if not job.stream:
            for row in sorted(job.ended, key=lambda r: r.choice):
                self.outbox.post(job, "delta", row.choice, row.text)
                self.outbox.post(job, "finish", row.choice, row.finish)
        completion = sum(len(row.tokens) for row in job.ended)
        usage = {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": job.prompt_tokens + completion,
        }
        self.outbox.post(job, "done", usage)
        self._forget(job)

    def _abort(self, job: Job) -> None:
        if not job.failed:
            job.failed = True
            self.outbox.post(job, "error", GENERATION_FAILED)
            self._forget(job)

    def _forget(self, job: Job) -> None:
        with self.ready:
            self.running = [other for other in self.running if other is not job]

    def _fail(self, reason: str) -> None:
        with self.ready:
            self.failure = reason
            queued, self.queue = self.running + list(self.queue), deque()
        for job in queued:
            job.emit("error", ENGINE_STOPPED)
        if self.on_failure is not None:
            self.on_failure()

    def _adapter(self, served: str | None):
        """Context in which the model runs as the served model `served`."""
        from peft import PeftModel

        peft_name = self.adapters.get(served)
        model = self.vlm.model
        if not isinstance(model, PeftModel):  # no adapters loaded
            return contextlib.nullcontext()
        if peft_name is None:
            return model.disable_adapter()
        model.set_adapter(peft_name)
        return contextlib.nullcontext()


def _next_tokens(rows: list[_Row], logits: Any) -> list[int]:
    """Each row's next token from its logits (`logits` (B, V), in row order): one argmax for all the greedy rows
    that no logits processor changes, each other row by its own sampler (its own generator, in row order)."""
    plain = [i for i, row in enumerate(rows) if row.job.sampler.plain_greedy]
    tokens: list[int | None] = [None] * len(rows)
    if plain:
        for i, token in zip(plain, logits[plain].float().argmax(-1).tolist(), strict=True):
            tokens[i] = token
    for i, row in enumerate(rows):
        if tokens[i] is None:
            sampler = row.job.sampler
            tokens[i] = sampler(row.prompt + row.tokens if sampler.uses_ids else [], logits[i])
    return tokens


@dataclass
class _Prefilling:
    """A long prompt being prefilled a chunk per step."""

    adapter: str | None
    job: Job
    chunks: decode_batch.ChunkedPrefill


def _prefill_groups(jobs: list[Job]) -> list[tuple[str | None, list[Job]]]:
    """`jobs` in groups prefilled together: one adapter, prompts of comparable length; oldest first. A prompt over
    `_PREFILL_CHUNK` tokens is a group of its own (it is prefilled in chunks)."""
    groups: list[tuple[str | None, list[Job], list[int]]] = []  # adapter, jobs, [shortest, longest]
    for job in jobs:
        length = job.prompt_tokens
        if length > _PREFILL_CHUNK:
            groups.append((job.adapter, [job], [length, length]))
            continue
        for adapter, group, span in groups:
            low, high = min(span[0], length), max(span[1], length)
            if adapter == job.adapter and span[1] <= _PREFILL_CHUNK and high <= 2 * low + _PADDING_SLACK:
                group.append(job)
                span[:] = [low, high]
                break
        else:
            groups.append((job.adapter, [job], [length, length]))
    return [(adapter, group) for adapter, group, _ in groups]
