"""The request queue and dynamic batcher behind `vlmkit serve` (transformers backend).

Requests are encoded by the web handlers, then queued here. One worker thread owns the model:
it takes the oldest request, adds every queued request that can share its `generate` call
(same adapter and sampling settings; `n` choices are `n` rows) up to `max_batch_rows`, and
generates them as one left-padded batch with `VLM.generate_encoded`. A stopping criterion
follows every row token by token: it ends a row at its own `max_tokens`, at a stop string or
when its client has gone, and pushes the new text of streaming rows to their queues. The
worker never waits on a client, so a slow reader cannot hold up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from vlmkit.backends.transformers_backend import VLM, GenerationOptions

log = logging.getLogger("vlmkit.serve")

ENGINE_STOPPED = (
    "the server's generation thread has stopped (see the server log); the server is shutting down"
)
CLIENT_GONE = "the client disconnected before generation began"
SHUTTING_DOWN = "the server is shutting down; this request was not finished, send it again"
# A job joins a batch only while its longest prompt is at most twice its shortest plus this many tokens.
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

    @property
    def prompt_tokens(self) -> int:
        return int(self.encoded["input_ids"].shape[0])

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can be generated together (max_tokens is followed per row)."""
        return (self.adapter, replace(self.options, max_new_tokens=0))

    def emit(self, *event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class _Row:
    job: Job
    choice: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0  # characters of `text` already streamed
    finish: str | None = None


class _RowTracker(StoppingCriteria):
    """Follows every row of a batch; returns which rows are done (transformers pads them from then on)."""

    def __init__(self, rows: list[_Row], decode: Any, stop_ids: list[int]):
        self.rows = rows
        self.decode = decode  # VLM.decode: the text `vlmkit infer` would show for these ids
        self.stop_ids = set(stop_ids)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        new_tokens = input_ids[:, -1].tolist()  # (B,)
        for row, token in zip(self.rows, new_tokens, strict=True):
            if row.finish is None:
                self._advance(row, token)
        return torch.tensor([row.finish is not None for row in self.rows], device=input_ids.device)

    def _advance(self, row: _Row, token: int) -> None:
        job = row.job
        row.tokens.append(token)
        if token in self.stop_ids:
            row.finish = "stop"
        else:
            row.text = self.decode(row.tokens)
            cut = min((i for i in (row.text.find(s) for s in job.stop) if i >= 0), default=-1)
            if cut >= 0:
                row.text, row.finish = row.text[:cut], "stop"
            elif len(row.tokens) >= job.options.max_new_tokens:
                row.finish = "length"
            elif job.cancelled:
                row.finish = "cancelled"
        if job.stream:
            self._send(row)

    def _send(self, row: _Row) -> None:
        """Stream the text that is final: hold back an unfinished UTF-8 character and any tail that
        could still grow into a stop string."""
        end = len(row.text)
        if row.finish is None:
            end = len(row.text.rstrip("\ufffd"))  # an unfinished UTF-8 character decodes to U+FFFD
            hold = max((len(s) - 1 for s in row.job.stop), default=0)
            end -= hold
        if end > row.sent:
            row.job.emit("delta", row.choice, row.text[row.sent : end])
            row.sent = end
        if row.finish is not None:
            row.job.emit("finish", row.choice, row.finish)


class Engine:
    """Owns the model on one worker thread; `submit` jobs from any thread.

    `adapters` maps served adapter names to peft adapter names on `vlm.model` (None: the base
    model, with adapters disabled; the key None may map to a peft adapter when the main model
    is a LoRA checkpoint). A request that fails gets an error and the worker goes on; should the
    worker thread itself end (a bug), `failure` says why, every queued and later job gets an
    error, and `on_failure` is called (the server then exits non-zero so a supervisor restarts it).
    """

    def __init__(
        self,
        vlm: VLM,
        adapters: dict[str | None, str | None],
        max_batch_rows: int = 16,
        batch_wait: float = 0.005,
        on_failure: Callable[[], None] | None = None,
    ):
        self.vlm = vlm
        self.adapters = adapters
        self.max_batch_rows = max_batch_rows
        self.batch_wait = batch_wait
        self.on_failure = on_failure
        self.queue: deque[Job] = deque()
        self.ready = threading.Condition()
        self.stopping = False
        self.failure: str | None = None
        self.running: list[Job] = []  # the batch being generated
        self.model_lock = threading.Lock()  # held while generating, and by `exclusive` (loading an adapter)
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
        once, the running batch ends at its next token, and later requests are refused the same way."""
        with self.ready:
            self.stopping = True
            jobs, self.queue = self.running + list(self.queue), deque()
            self.ready.notify_all()
        for job in jobs:
            job.cancelled = True  # its rows end at the next token (see _RowTracker)
            job.emit("error", SHUTTING_DOWN)

    def exclusive(self, change: Callable[[], Any]) -> Any:
        """Run `change` (e.g. loading an adapter onto the model) between batches, never during one."""
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

    def _take_batch(self) -> list[Job] | None:
        """The oldest job and the queued jobs that can join it (waiting up to `batch_wait` for more)."""
        with self.ready:
            while not self.queue and not self.stopping:
                self.ready.wait()
            if self.stopping:
                return None
            deadline = time.monotonic() + self.batch_wait
            while True:
                batch, rows = self._compatible()
                left = deadline - time.monotonic()
                if rows >= self.max_batch_rows or left <= 0:
                    break
                self.ready.wait(left)
            taken = {id(job) for job in batch}
            self.queue = deque(job for job in self.queue if id(job) not in taken)
            self.running = batch  # under the lock: `shut_down` sees every job as queued or running
            return batch

    def _compatible(self) -> tuple[list[Job], int]:
        """The oldest job and the queued jobs that can share its `generate` call: same adapter and
        sampling settings, and a prompt of comparable length (left padding a short prompt to a long one
        would make every short request wait for the long prefill and pay for its padding)."""
        first = self.queue[0]
        batch, rows = [first], first.n
        shortest = longest = first.prompt_tokens
        for job in list(self.queue)[1:]:
            low, high = min(shortest, job.prompt_tokens), max(longest, job.prompt_tokens)
            if (
                job.batch_key == first.batch_key
                and rows + job.n <= self.max_batch_rows
                and high <= 2 * low + _PADDING_SLACK
            ):
                batch.append(job)
                rows += job.n
                shortest, longest = low, high
        return batch, rows

    def _run(self) -> None:
        try:
            while (batch := self._take_batch()) is not None:
                self._run_batch(batch)
                self.running = []
        except BaseException as e:  # a bug in the loop itself: fail loudly rather than hang every client
            log.exception("the engine thread stopped")
            self._fail(f"{type(e).__name__}: {e}")

    def _run_batch(self, batch: list[Job]) -> None:
        for job in batch:
            if job.cancelled:  # its client left while it was queued; end its handler, which may still wait
                job.emit("error", CLIENT_GONE)
        live = [job for job in batch if not job.cancelled]
        if not live:
            return
        try:
            self._generate(live)
        except Exception:  # a bug or out of memory: retry each job alone, so one bad job fails alone
            log.exception("batch of %d requests failed", len(live))
            for job in live:
                if len(live) > 1 and not job.stream:  # streamed text cannot be taken back: no retry
                    try:
                        self._generate([job])
                        continue
                    except Exception:
                        log.exception("request failed on its own too")
                job.emit("error", "generation failed (see the server log)")

    def _fail(self, reason: str) -> None:
        with self.ready:
            self.failure = reason
            queued, self.queue = self.running + list(self.queue), deque()
        for job in queued:
            job.emit("error", ENGINE_STOPPED)
        if self.on_failure is not None:
            self.on_failure()

    def _generate(self, jobs: list[Job]) -> None:
        rows = [_Row(job, choice) for job in jobs for choice in range(job.n)]
        options = replace(jobs[0].options, max_new_tokens=max(job.options.max_new_tokens for job in jobs))
        tracker = _RowTracker(rows, self.vlm.decode, self.vlm.template.stop_token_ids)
        encoded = [job.encoded for job in jobs for _ in range(job.n)]
        with self.model_lock, self._adapter(jobs[0].adapter):
            self.vlm.generate_encoded(encoded, options, stopping_criteria=StoppingCriteriaList([tracker]))
        self.batches += 1
        for row in rows:
            if row.finish is None:  # generate ended without the tracker seeing the last token
                row.finish = "length"
                if row.job.stream:
                    tracker._send(row)
        for job in jobs:
            own = [row for row in rows if row.job is job]
            if not job.stream:
                for row in own:
                    job.emit("delta", row.choice, row.text)
                    job.emit("finish", row.choice, row.finish)
            prompt = int(job.encoded["input_ids"].shape[0])
            completion = sum(len(row.tokens) for row in own)
            job.emit(
                "done",
                {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            )

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
