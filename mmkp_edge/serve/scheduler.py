"""Continuous batching: one worker thread owns the ORT sessions and every running batch.

Why one thread: a running batch's KV cache is state with exactly one owner, and on a few cores one
decoder call at a time over the whole batch beats parallel calls. HTTP handlers never touch the
model: they prepare posts (image decoding, tokenization) in a thread pool, `submit()` a Job and wait
for its callback. Between decode steps the worker
  - frees the rows of cancelled jobs (client gone, timeout) with `Generator.cancel()`,
  - admits waiting posts, oldest first, while fewer than `max_batch` rows are in use, with
    `Generator.add()` — the next step prefills them and aligns their KV cache with the running rows
    (mmkp_edge/generate.py), so each post's greedy output is its one-by-one output,
  - steps every lane: the newcomers' prefill if any, then one token for every row (so arrivals
    delay a running row by at most one prefill per token), finishing each post the moment its
    row stops (`Generator.pop()`).
Think modes decode in separate lanes, one Generator each built by `KeyphrasePredictor.generator()`,
so a mode's decoding rules (e.g. think=off's suppression) stay where they are defined.
The queue is bounded in posts: `submit()` raises Overloaded when full (→ 429) and Draining once
`close()` has begun (→ 503). A failing decoder call fails that lane's posts, not the server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..generate import Generator
from ..predictor import KeyphrasePredictor, Prediction, _Prepared
from .telemetry import Telemetry

log = logging.getLogger("mmkp_edge.serve")


class Overloaded(Exception):
    """The queue is full; try again later."""


class Draining(Exception):
    """The server is shutting down and takes no new work."""


@dataclass(eq=False)
class Slot:
    """One post of a job, from the queue to its prediction."""
    prepared: _Prepared                  # from KeyphrasePredictor._prepare
    think: str
    job: "Job" = field(repr=False, default=None)
    index: int = -1                      # request index in its lane's Generator, once admitted
    joined_at: float | None = None
    first_token_at: float | None = None
    vision_s: float = 0.0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    rows: int = 0                        # sum over its decode steps of the rows decoded together
    steps: int = 0
    prediction: Prediction | None = None

    def timings(self, now: float) -> dict:
        """Seconds for this post (Prediction.timings adds preprocess_s)."""
        joined = self.joined_at or now
        return {"queue_s": joined - self.job.submitted_at, "vision_s": self.vision_s,
                "prefill_s": self.prefill_s, "decode_s": self.decode_s,
                "ttft_s": (self.first_token_at or now) - self.job.arrived_at,
                "total_s": now - self.job.arrived_at,
                "batch_size": self.rows / self.steps if self.steps else 1.0}


@dataclass(eq=False)
class Job:
    """The posts of one HTTP request; `done(job)` is called once, from the worker thread."""
    slots: list[Slot]
    done: Callable[["Job"], None]
    arrived_at: float = field(default_factory=time.perf_counter)     # the request arrived
    submitted_at: float = field(default_factory=time.perf_counter)   # its posts were queued
    cancelled: str | None = None         # why it was abandoned ("timeout", "disconnected")
    error: str | None = None             # why it failed (internal)
    remaining: int = 0

    def __post_init__(self):
        self.remaining = len(self.slots)
        for slot in self.slots:
            slot.job = self


class _Lane:
    """The running batch of one think mode."""

    def __init__(self, think: str):
        self.think = think
        self.gen: Generator | None = None
        self.slots: dict[int, Slot] = {}   # request index → slot, while admitted


class Scheduler:
    def __init__(self, predictor: KeyphrasePredictor, *, max_batch: int, max_queue: int,
                 telemetry: Telemetry | None = None, before_step: Callable[[], None] | None = None):
        self.predictor = predictor
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.telemetry = telemetry or Telemetry()
        self.before_step = before_step     # tests hold the worker here to build up a queue
        self._cv = threading.Condition()
        self._waiting: deque[Slot] = deque()
        self._cancelled: list[Job] = []
        self._lanes: dict[str, _Lane] = {}
        self._rows = 0                     # slots admitted into lanes (read by metrics, /healthz)
        self._closing = False
        self._abort = False
        self._abandoned = 0
        self._thread = threading.Thread(target=self._run, name="mmkp-serve-worker", daemon=True)
        self.telemetry.watch(lambda: self.queue_depth, lambda: self.running_rows)

    # ------------------------------------------------------------ called from any thread

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running_rows(self) -> int:
        return self._rows

    @property
    def closing(self) -> bool:
        return self._closing

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closing:
                raise Draining()
            if len(self._waiting) + len(job.slots) > self.max_queue:
                raise Overloaded()
            self._waiting.extend(job.slots)
            self._cv.notify()

    def cancel(self, job: Job, reason: str) -> None:
        """Abandon `job`: its waiting posts leave the queue now, its rows at the next step."""
        with self._cv:
            if job.cancelled or job.remaining == 0:
                return
            job.cancelled = reason
            self._waiting = deque(s for s in self._waiting if s.job is not job)
            self._cancelled.append(job)
            self._cv.notify()

    def close(self, timeout: float) -> int:
        """Stop taking work, finish what was accepted (up to `timeout` s), stop the worker.
        Returns how many posts were abandoned unfinished."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():            # past the deadline: the worker fails the rest
            with self._cv:
                self._abort = True
                self._cv.notify()
            self._thread.join()
        else:
            self._abort_all()                  # never started, or finished: nothing left normally
        return self._abandoned

    # ------------------------------------------------------------ the worker

    def _busy(self) -> bool:
        return any(lane.slots for lane in self._lanes.values())

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._waiting or self._cancelled or self._busy() or self._closing):
                    self._cv.wait()
                if self._closing and not self._waiting and not self._busy():
                    return
                if self._abort:
                    break
                cancelled, self._cancelled = self._cancelled, []
                admitted = []
                while self._waiting and self._rows + len(admitted) < self.max_batch:
                    admitted.append(self._waiting.popleft())
                self._rows += len(admitted)
            for job in cancelled:
                self._drop(job)
            for slot in admitted:
                self._admit(slot)
            if self.before_step is not None:
                self.before_step()
            for lane in list(self._lanes.values()):
                if lane.slots and lane.gen.pending:
                    self._step(lane)            # the newcomers' prefill (the join)
                if lane.slots:
                    self._step(lane)            # one token for every row: joins never starve decoding
        self._abort_all()

    def _abort_all(self) -> None:
        with self._cv:
            jobs = {s.job for s in self._waiting} | {s.job for lane in self._lanes.values()
                                                     for s in lane.slots.values()}
        self._abandoned += sum(job.remaining for job in jobs)
        for job in jobs:
            self._fail(job, "the server shut down before this request finished")

    def _admit(self, slot: Slot) -> None:
        lane = self._lanes.setdefault(slot.think, _Lane(slot.think))
        if not lane.slots:    # a fresh generator per busy period: indices restart, nothing kept
            lane.gen = self.predictor.generator([], think=slot.think,
                                                max_new_tokens=slot.prepared.budget)
        slot.joined_at = time.perf_counter()
        slot.index = lane.gen.add([slot.prepared.request], [slot.prepared.budget])[0]
        lane.slots[slot.index] = slot

    def _drop(self, job: Job, finish: str = "cancelled") -> None:
        """Free the rows of `job` at once; its queued posts leave the queue."""
        with self._cv:
            self._waiting = deque(s for s in self._waiting if s.job is not job)
        for lane in self._lanes.values():
            for index in [i for i, s in lane.slots.items() if s.job is job]:
                lane.gen.cancel(index)
                lane.gen.pop(index)
                del lane.slots[index]
                self._release(1)
                self.telemetry.posts.labels(finish).inc()

    def _release(self, rows: int) -> None:
        with self._cv:
            self._rows -= rows

    def _step(self, lane: _Lane) -> None:
        gen = lane.gen
        joining = gen.pending > 0
        vision_before = gen.times.vision_s
        t0 = time.perf_counter()
        try:
            emitted = gen.step()
        except Exception as exc:   # an ORT failure: this lane's posts fail, the server goes on
            log.exception("mmkp-serve: decoder step failed (%d posts of think=%s)", len(lane.slots),
                          lane.think)
            self.telemetry.errors.labels("internal").inc()
            for job in {s.job for s in lane.slots.values()}:
                self._fail(job, f"generation failed: {type(exc).__name__}")
            return
        now = time.perf_counter()
        took = now - t0
        vision = gen.times.vision_s - vision_before
        self.telemetry.tokens.inc(len(emitted))
        self.telemetry.model_seconds.inc(took)
        if joining:
            self.telemetry.prefill.observe(len(emitted))
        else:
            self.telemetry.batch.observe(len(emitted))
            self.telemetry.step.observe(took)
        for index, _ in emitted:
            slot = lane.slots[index]
            if slot.first_token_at is None:
                slot.first_token_at = now
                slot.vision_s, slot.prefill_s = vision, took - vision
                self.telemetry.ttft.observe(now - slot.job.arrived_at)
            else:
                slot.decode_s += took
                slot.steps += 1
                slot.rows += len(emitted)
            if gen.outputs[index].finish:
                self._finish(lane, slot, now)

    def _finish(self, lane: _Lane, slot: Slot, now: float) -> None:
        out = lane.gen.pop(slot.index)
        del lane.slots[slot.index]
        self._release(1)
        slot.prediction = self.predictor._finish(slot.prepared, out.tokens, out.finish,
                                                 slot.timings(now), slot.think)
        self.telemetry.posts.labels(out.finish).inc()
        job = slot.job
        job.remaining -= 1
        if job.remaining == 0 and not job.cancelled:
            job.done(job)

    def _fail(self, job: Job, message: str) -> None:
        """Answer `job` with an error and free all its rows and queue places."""
        self._drop(job, "failed")
        if job.error is None and not job.cancelled and job.remaining:
            job.error = message
            job.remaining = 0
            job.done(job)
