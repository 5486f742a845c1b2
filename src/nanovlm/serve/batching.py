"""Batching for the server: requests that arrive within a few milliseconds run through the model together.

One worker thread owns the model. Web handlers (on the event loop) `submit()` a Job and await its result or
read its stream; submit() refuses at once (QueueFull -> HTTP 503) when the bounded queue is full.

The worker takes the first waiting job and collects more while they keep coming: until as many jobs as the last
batch had have arrived (clients answered together tend to come back together, but their requests reach the
worker one by one as the event loop parses them), then while each next job arrives within `window_ms` of the
one before; never longer than `max_wait_ms` in all. A job that finds the server idle after a batch of one starts
at once, since nothing suggests company is coming: that keeps the lone client's latency at the model's. Measured
on 2 cores, `mini`, 32 closed-loop clients: a fixed 5 ms window made batches of 16 on average (its arrivals are
spread over ~100 ms), 3.5x the throughput of no batching; see README "Serving". It runs up to `max_batch_size` jobs
that can share one sampler (all greedy ones together; sampled ones with equal temperature / top-k / top-p; a
seeded one alone, so that its answer does not depend on its neighbours) as one left-padded batch through
`model.generate_steps()`. Each job keeps its own max_new_tokens and stop strings: after every step each job
checks its own text and finishes on its own; the batch ends when the last of its jobs is done. A job held to a JSON
schema (response_format) has its own row of the logits masked (nanovlm.structured), so it can share any batch.

This is batch-per-window, not continuous batching: a job that arrives while a batch runs waits for that batch to
end (at most the batch's longest answer). shutdown() stops taking jobs and finishes every job already taken.
"""
from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from ..data.transforms import normalise_batch, to_pixels
from ..predict import left_pad
from ..sampling import GenerationConfig
from ..structured import JsonConstraint, ResponseFormatError, mask_logits


class QueueFull(RuntimeError):
    """The server has as many requests waiting as it may hold: come back later (HTTP 503)."""


class ShuttingDown(RuntimeError):
    """The server is finishing the requests it has and takes no new ones (HTTP 503)."""


@dataclass
class Job:
    """One request's generation: its prompt, images, parameters, and (filled by the worker) its answer."""
    prompt_ids: list[int]
    images: list[Image.Image | torch.Tensor]  # PIL images, or to_pixels() of them (the server's handlers resize
                                              # them in their threads, off the model's critical path)
    generation: GenerationConfig
    stream: bool = False                      # push text deltas to `deltas` as they are generated
    constraint: JsonConstraint | None = None  # structured output: the answer must match this JSON schema
    # results
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None          # "stop" (EOS or a stop string) or "length"
    error: BaseException | None = None
    queued_at: float = field(default_factory=time.perf_counter)
    batch_size: int = 0                       # how many jobs shared its batch
    # plumbing
    _loop: asyncio.AbstractEventLoop | None = None
    _done: asyncio.Future | None = None
    deltas: asyncio.Queue | None = None
    _sent: int = 0                            # characters of `text` already streamed

    @property
    def confidence(self) -> float | None:
        """Geometric mean of the chosen tokens' probabilities (exp of the mean log-probability)."""
        return math.exp(sum(self.logprobs) / len(self.logprobs)) if self.logprobs else None

    def sampler_key(self):
        g = self.generation
        if g.temperature == 0:
            return ("greedy",)
        if g.seed is not None:
            return ("seeded", id(self))
        return ("sample", g.temperature, g.top_k, g.top_p)

    async def result(self) -> "Job":
        await self._done
        if self.error is not None:
            raise self.error
        return self


class Batcher:
    def __init__(self, model, max_batch_size: int = 32, window_ms: float = 5.0, queue_size: int = 64,
                 on_batch=None, threads: int | None = None, max_wait_ms: float | None = None):
        self.model = model
        self.threads = threads              # torch threads of the worker (None: leave torch's setting)
        self.tokenizer = model.tokenizer
        # bf16 on CPU: every Linear weight prepacked for oneDNN once, used by every batch (faster inference)
        self.packed_weights = model.pack_inference_weights()
        self.max_batch_size = max(1, max_batch_size)
        self.window_s = window_ms / 1000
        self.max_wait_s = max(self.window_s, (10 * window_ms if max_wait_ms is None else max_wait_ms) / 1000)
        self._last_batch_size = None        # how many jobs to wait for (after a batch of ONE: none)
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self._held: list[Job] = []          # taken from the queue but not fitting the current batch's sampler
        self._accepting = True
        self._stop = threading.Event()
        self._on_batch = on_batch           # callback(batch_size, seconds) for metrics
        self._thread = threading.Thread(target=self._work, name="nanovlm-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called from the event loop

    def submit(self, job: Job) -> Job:
        if not self._accepting:
            raise ShuttingDown("the server is shutting down")
        job._loop = asyncio.get_running_loop()
        job._done = job._loop.create_future()
        if job.stream:
            job.deltas = asyncio.Queue()
        try:
            if len(self._held) >= self._queue.maxsize:     # held jobs count against the bound too
                raise queue.Full
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"the server's queue is full ({self._queue.maxsize} requests waiting); "
                            f"retry in a moment") from None
        return job

    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._held)

    def shutdown(self, timeout: float | None = None):
        """Take no new jobs, finish the ones taken, stop the worker."""
        self._accepting = False
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """The worker runs and new jobs are taken (what /health reports)."""
        return self._accepting and self._thread.is_alive()

    # ------------------------------------------------------------------ the worker thread

    def _work(self):
        if self.threads:
            torch.set_num_threads(self.threads)
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            start = time.perf_counter()
            try:
                self._run(batch)
            except Exception as e:  # noqa: BLE001 - a failing batch fails its requests, never the worker
                for job in batch:
                    if job.finish_reason is None:
                        job.error = e
            for job in batch:
                self._finish(job)
            if self._on_batch is not None:
                self._on_batch(len(batch), time.perf_counter() - start)

    def _take(self, timeout: float) -> Job | None:
        if self._held:
            return self._held.pop(0)
        try:
            return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _next_batch(self) -> list[Job] | None:
        first = None
        while first is None:
            first = self._take(timeout=0.05)
            if first is None and self._stop.is_set() and self._queue.empty() and not self._held:
                return None
        batch, key = [first], first.sampler_key()
        alone = self._last_batch_size == 1 and self._queue.empty() and not self._held
        expected = min(self._last_batch_size or 1, self.max_batch_size)
        start = last_arrival = time.perf_counter()
        skipped = []
        while len(batch) < self.max_batch_size and not alone:
            if len(batch) < expected:           # the last batch's company is probably on its way
                deadline = start + self.max_wait_s
            else:                               # more only while they keep coming
                deadline = min(last_arrival + self.window_s, start + self.max_wait_s)
            job = self._take(timeout=deadline - time.perf_counter())
            if job is None:
                break
            last_arrival = time.perf_counter()
            (batch if job.sampler_key() == key else skipped).append(job)
        self._held = skipped + self._held
        self._last_batch_size = len(batch)
        return batch

    def _run(self, batch: list[Job]):
        model, tok = self.model, self.tokenizer
        for job in batch:
            job.batch_size = len(batch)
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        ids, mask = left_pad([job.prompt_ids for job in batch], tok.pad_token_id)
        pixels = [image if isinstance(image, torch.Tensor) else to_pixels(image, model.cfg.vision)
                  for job in batch for image in job.images]
        pixels = normalise_batch(torch.stack(pixels), model.cfg.vision).to(device, dtype) if pixels else None
        g = batch[0].generation
        # Rows of finished jobs (padding from then on) are left free.
        constrain = None if all(job.constraint is None for job in batch) else (lambda logits: mask_logits(
            logits, [job.constraint if job.finish_reason is None else None for job in batch]))
        steps = model.generate_steps(ids.to(device), pixels, attention_mask=mask.to(device),
                                     max_new_tokens=max(job.generation.max_new_tokens for job in batch),
                                     temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, seed=g.seed,
                                     packed_weights=self.packed_weights, constrain=constrain)
        eos = model.cfg.eos_token_id
        try:
            for step in steps:
                tokens, logprobs = step.tokens.tolist(), step.logprobs.tolist()
                for job, token, logprob in zip(batch, tokens, logprobs):
                    if job.finish_reason is None:
                        self._advance(job, token, logprob, eos)
                if all(job.finish_reason is not None for job in batch):
                    break
        finally:
            steps.close()
        for job in batch:
            if job.finish_reason is None:        # the model stopped every row at EOS or the longest max_new_tokens
                job.finish_reason = "length"

    def _advance(self, job: Job, token: int, logprob: float, eos: int):
        if job.constraint is not None:
            if token != eos:
                job.constraint.advance(token)
            if job.constraint.error:     # this job fails alone; its batch neighbours go on
                job.error = ResponseFormatError(f"the answer could not be held to the JSON schema: "
                                                f"{job.constraint.error}")
                job.finish_reason = "stop"
                return
        if token == eos:
            job.finish_reason = "stop"
            return
        job.tokens.append(token)
        job.logprobs.append(logprob)
        text = self.tokenizer.decode(job.tokens)
        cut = job.generation.cut_at_stop(text)
        if cut != text:
            job.text, job.finish_reason = cut, "stop"
            return
        job.text = text
        if len(job.tokens) >= job.generation.max_new_tokens:
            job.finish_reason = "length"
            return
        if job.stream:
            # Hold back what could still become a stop string, and a half-decoded multi-byte character.
            hold = max((len(s) - 1 for s in job.generation.stop), default=0)
            safe = len(text) - hold
            while safe > job._sent and text[safe - 1] == "\ufffd":
                safe -= 1
            if safe > job._sent:
                self._push(job, text[job._sent:safe])
                job._sent = safe

    def _push(self, job: Job, delta: str | None):
        _call_in_loop(job._loop, job.deltas.put_nowait, delta)

    def _finish(self, job: Job):
        if job.stream:
            if job.error is None and len(job.text) > job._sent:
                self._push(job, job.text[job._sent:])
            self._push(job, None)                   # end of stream
        _call_in_loop(job._loop, _set_done, job._done)


def _call_in_loop(loop: asyncio.AbstractEventLoop, fn, *args):
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:        # the client's event loop is closed (server gone): nobody is waiting any more
        pass


def _set_done(future: asyncio.Future):
    if not future.done():
        future.set_result(None)
