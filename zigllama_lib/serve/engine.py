"""One engine, many clients: continuous batching over a paged KV cache.

    engine = Engine(max_batch=8); engine.start()
    job = engine.submit(model, prompt_ids, params, loop)   # from the event loop; returns at once
    event = await job.events.get()                          # {"text", "tokens", "logprobs"} ... then
                                                            # {"done": True, "finish_reason", "usage"}
    job.cancel()                                            # the client left: stops within one token

The event loop never runs a forward pass: it only moves events. The worker keeps one
:class:`~..inference.batching.ContinuousBatcher` per model; every step it admits the requests that
arrived (up to ``max_batch`` running per model, the rest wait in arrival order), runs one decode
token of every running request in one forward pass and one prefill chunk, and retires the requests
that finished, stopped on a stop string or lost their client. Each request's tokens are those it
would get alone (the batcher's guarantee). ``max_batch=1`` serves one request at a time.
``zigllama serve`` runs the engine on its main thread (:meth:`Engine.run`) and uvicorn's event loop
on another.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field

from ..inference.batching import BatchEvent, BatchRequest, BatchSequence, ContinuousBatcher
from ..inference.generation import make_sampler
from ..inference.sampling import LogitBias, log_softmax, top_logprobs
from ..inference.streaming import Utf8Stream
from ..models.decoder import numerics_named
from .params import GenParams
from .stop import StopMatcher


@dataclass
class Job:
    model: object                      # LanguageModel
    prompt_ids: list[int]
    params: GenParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: bool = False             # the worker is done with this job

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, event: dict) -> None:
        """Hand ``event`` to the event loop's queue (called from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancel()


def token_logprob_entry(tokenizer, logits, token: int, n_top: int) -> dict:
    """The chosen token's log-probability and the ``n_top`` most likely, as the wire needs them."""
    lp = log_softmax(logits)

    def item(t, value):
        raw = tokenizer.token_bytes(int(t), render_special=True)
        return {"token": raw.decode("utf-8", "replace"), "logprob": float(value), "bytes": list(raw)}

    ids, values = top_logprobs(logits, n_top, log_probs=lp)
    return {**item(token, lp[token]), "top_logprobs": [item(t, v) for t, v in zip(ids, values)]}


def error_event(e: Exception) -> dict:
    """The event that ends a job with ``e``; a grammar that admits no token (code ``grammar_dead_end``)
    or that is too ambiguous to follow (``grammar_too_ambiguous``) is the request's own doing, a 400;
    anything else a 500."""
    from ..inference.grammar import GrammarError

    if isinstance(e, GrammarError):
        if "too ambiguous" in str(e):
            return {"error": str(e), "status": 400, "code": "grammar_too_ambiguous"}
        return {"error": f"the grammar admits no token here: {e}", "status": 400, "code": "grammar_dead_end"}
    return {"error": f"{type(e).__name__}: {e}"}


def _chain(processors):
    """One logits processor applying ``processors`` in order (None if there are none)."""
    if not processors:
        return None
    if len(processors) == 1:
        return processors[0]

    def apply(logits):
        for f in processors:
            logits = f(logits)
        return logits

    return apply


@dataclass(eq=False)
class _Active:
    """A job inside a batcher: its text assembly and stop matching."""

    job: Job
    batcher: ContinuousBatcher
    seq: BatchSequence
    utf8: Utf8Stream = field(default_factory=Utf8Stream)
    stops: StopMatcher | None = None
    n_generated: int = 0
    stopped: bool = False        # a stop string matched: the batcher's "cancelled" that follows is ours
    cancel_sent: bool = False


class Engine:
    """The generation worker. ``start()`` runs it on a thread of its own; ``run()`` on the calling
    thread (what ``zigllama serve`` does with its main thread, the one that loaded the models:
    with Numba's OpenMP layer each thread that launches parallel kernels gets a worker team of
    its own, and two teams spin against each other on the same cores: on 2 cores, decode on a
    second thread was slower, and back on the first thread it slowed to a crawl).

    ``max_batch``: requests decoded together per model; ``prefill_chunk``: prompt tokens per step.
    """

    def __init__(self, max_batch: int = 8, prefill_chunk: int = 512):
        self.max_batch, self.prefill_chunk = max_batch, prefill_chunk
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._batchers: dict[int, ContinuousBatcher] = {}   # id(model) -> its batcher
        self._active: dict[BatchSequence, _Active] = {}
        self._stopping = False
        self.tokens_generated = 0     # over all jobs
        self.cancelled_jobs = 0       # jobs stopped early because their client left
        self.tokens_after_cancel = 0  # tokens whose forward pass finished after their job's cancel(): at most
                                      # one per cancelled job, the step that was in flight
        self.steps = 0                # batcher steps run
        self.max_running = 0          # the most requests decoding together so far

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def depth(self) -> int:
        """Requests waiting plus those being generated."""
        return self._queue.qsize() + self.running

    def start(self) -> None:
        """Run the worker on a new daemon thread."""
        self._thread = threading.Thread(target=self.run, name="zigllama-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the jobs at hand, then stop (joins the worker thread if :meth:`start` made one)."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, model, prompt_ids: list[int], params: GenParams, loop) -> Job:
        job = Job(model, list(prompt_ids), params, loop)
        self._queue.put(job)
        return job

    def warm_up(self, model) -> None:
        """Compile (or load from Numba's cache) what a batched step runs, before the first request."""
        b = self._batcher(model)
        for _ in range(4):  # BATCH_MIN_ROWS: the batched step too
            b.submit(BatchRequest(model.tokenizer.encode("Hi"), make_sampler(0.0, 40, 0.95, 0.05, None), 2,
                                  model.tokenizer.is_eog, stop_at_eog=False))
        b.run()

    # -- the loop ------------------------------------------------------------------------
    def run(self, keep_going=lambda: True, poll_s: float = 0.5) -> None:
        """The worker loop on this thread, until :meth:`stop` (after the jobs at hand) or ``keep_going()``
        turns false (asked every ``poll_s`` seconds while idle)."""
        while True:
            if not self._active:
                if self._stopping:
                    return
                try:
                    job = self._queue.get(timeout=poll_s)
                except queue.Empty:
                    if not keep_going():
                        return
                    continue
                self._take(job)
            while True:  # whatever else arrived joins this step
                try:
                    self._take(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._step()

    def _take(self, job: Job | None) -> None:
        if job is None:
            self._stopping = True
            return
        if job.cancelled.is_set():  # its client left while it waited: no forward pass at all
            self.cancelled_jobs += 1
            self._close(job, {"done": True, "finish_reason": None, "cancelled": True, "usage": None})
            return
        try:
            request = self._request(job)
            batcher = self._batcher(job.model)
            seq = batcher.submit(request)
        except Exception as e:  # noqa: BLE001 -- a bad request must not kill the worker
            self._close(job, error_event(e))
            return
        self._active[seq] = _Active(job, batcher, seq, stops=StopMatcher(job.params.stop))

    def _batcher(self, model) -> ContinuousBatcher:
        b = self._batchers.get(id(model))
        if b is None:
            b = ContinuousBatcher(model.decoder, numerics_named(model.numerics), model.n_ctx,
                                  max_batch=self.max_batch, prefill_chunk=self.prefill_chunk)
            self._batchers[id(model)] = b
        return b

    def _request(self, job: Job) -> BatchRequest:
        """The batcher's view of a job: its prompt, sampler chain, logit bias, grammar and length limit.

        The grammar's mask runs after the logit bias (a bias cannot revive a token the grammar forbids);
        its matcher hears every sampled token."""
        m, p = job.model, job.params
        max_tokens = p.max_tokens if p.max_tokens is not None else max(1, m.n_ctx - len(job.prompt_ids))
        sampler = make_sampler(p.temperature, p.top_k, p.top_p, p.min_p, p.seed, tokenizer=m.tokenizer,
                               n_ctx=m.n_ctx, **p.sampler_kwargs())
        processors = [LogitBias(p.logit_bias, m.n_vocab)] if p.logit_bias else []
        on_token = None
        if p.grammar is not None:
            matcher = m.grammar_matcher(p.grammar)
            processors.append(matcher.mask)
            on_token = matcher.accept
        return BatchRequest(job.prompt_ids, sampler, max_tokens, m.tokenizer.is_eog,
                            logits_processor=_chain(processors), on_token=on_token)

    def _step(self) -> None:
        for a in list(self._active.values()):
            if a.job.cancelled.is_set() and not a.cancel_sent:
                a.cancel_sent = True
                a.batcher.cancel(a.seq)  # no forward pass runs for it from here on
        for b in list(self._batchers.values()):
            if b.idle:
                continue
            try:
                events = b.step()
            except Exception as e:  # noqa: BLE001 -- a bug: this model's requests get a 500, the server goes on
                self._fail_batcher(b, e)
                continue
            self.steps += 1
            self.max_running = max(self.max_running, b.stats.n_decode)
            for event in events:
                self._on_event(event)

    def _on_event(self, event: BatchEvent) -> None:
        a = self._active.get(event.seq)
        if a is None:
            return
        job, m = a.job, a.job.model
        if event.step is not None:
            self.tokens_generated += 1
            if job.cancelled.is_set():
                self.tokens_after_cancel += 1
                self._cancelled(a)
                return
            a.n_generated += 1
            token = event.step.token
            text, stopped = a.stops.push(a.utf8.push(m.tokenizer.token_bytes(token, render_special=False)))
            n_top = job.params.logprobs
            entry = token_logprob_entry(m.tokenizer, event.step.logits, token, n_top) if n_top is not None else None
            job.emit({"text": text, "tokens": [token], "logprobs": [entry] if entry else []})
            if stopped:
                a.stopped = True
                a.batcher.cancel(a.seq)
                self._finish(a, "stop")
                return
        reason = event.stop_reason
        if reason is None:
            return
        if reason == "cancelled":
            if not a.stopped:
                self._cancelled(a)
        elif reason == "error":
            self._close(job, error_event(event.seq.error), a.seq)
        else:
            tail, stopped = a.stops.push(a.utf8.flush())
            tail += "" if stopped else a.stops.flush()
            if tail:
                job.emit({"text": tail, "tokens": [], "logprobs": []})
            self._finish(a, "stop" if stopped or reason == "eog" else "length")

    def _finish(self, a: _Active, finish_reason: str | None) -> None:
        n_prompt = len(a.job.prompt_ids)
        self._close(a.job, {"done": True, "finish_reason": finish_reason, "cancelled": a.job.cancelled.is_set(),
                            "usage": {"prompt_tokens": n_prompt, "completion_tokens": a.n_generated,
                                      "total_tokens": n_prompt + a.n_generated}}, a.seq)

    def _cancelled(self, a: _Active) -> None:
        self.cancelled_jobs += 1
        if not a.cancel_sent:
            a.cancel_sent = True
            a.batcher.cancel(a.seq)
        self._finish(a, None)

    def _close(self, job: Job, last_event: dict, seq: BatchSequence | None = None) -> None:
        job.emit(last_event)
        job.finished = True
        if seq is not None:
            self._active.pop(seq, None)

    def _fail_batcher(self, b: ContinuousBatcher, e: Exception) -> None:
        for seq, a in list(self._active.items()):
            if a.batcher is b:
                self._close(a.job, error_event(e), seq)
        for key, other in list(self._batchers.items()):
            if other is b:
                del self._batchers[key]  # a fresh cache for the next requests
