"""Continuous batching: jobs queue for a stream slot, join the batch engine between steps and leave when they finish,
fail or are cancelled. Driven step by step by one caller, or by its own thread (the Triton generator)."""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.batch import BatchEngine, FrameOutput
from engine.errors import Cancelled
from engine.prompt import PreparedPrompt
from engine.request import SynthesisOptions

# How often a job's `is_cancelled` is polled: cheap in process, an IPC round trip inside Triton.
CANCEL_POLL_SECONDS = 0.05
# Joining requests are prefilled this many at a time (engine admission does not wait for the device)
ADMIT_BATCH = 16


class SchedulerObserver:
    """Hooks for metrics; every method runs on the scheduler's thread and must be quick."""

    def queue_changed(self, active: int, queued: int) -> None: ...

    def stepped(self, batch_size: int, seconds: float, frames: int) -> None: ...

    def first_audio(self, seconds: float) -> None: ...

    def phase(self, name: str, seconds: float) -> None:
        """Time spent outside the batched step in one loop cycle: 'reap' (cancellations), 'admit' (prefill of joining
        requests), 'emit' (handing every stream its frame). Where a served step lags the engine, these say why."""

    def loop_failed(self, error: Exception) -> None:
        """The loop hit an unexpected error; the jobs it held were failed and it carries on."""


@dataclass(eq=False)
class Job:
    """One request: how to build its prompt (called on the scheduler's thread, which owns the runtime), its options,
    and where its output goes. `emit` returning False means the consumer is gone: the job is cancelled."""

    prepare: Callable[[], PreparedPrompt]
    options: SynthesisOptions
    emit: Callable[[FrameOutput], bool | None]
    fail: Callable[[Exception], None]
    is_cancelled: Callable[[], bool] = lambda: False
    submitted_at: float = field(default_factory=time.perf_counter)
    stream_id: int | None = None
    heard: bool = False  # a speech frame has been emitted


class StreamScheduler:
    """Owns a BatchEngine. `submit` and `cancel` are thread-safe; `run_once`, `reap` and the thread own the engine."""

    def __init__(self, engine: BatchEngine, observer: SchedulerObserver | None = None):
        self.engine = engine
        self.observer = observer or SchedulerObserver()
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._cancelled: set[Job] = set()
        self._running: dict[int, Job] = {}  # stream id -> job
        self._last_poll = -math.inf  # the first reap polls, however young the clock (perf_counter starts near boot)
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def active(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def submit(self, job: Job) -> None:
        with self._lock:
            self._waiting.append(job)
            self._lock.notify()

    def cancel(self, job: Job) -> None:
        """Stop a job; its slot is freed before the next step."""
        with self._lock:
            self._cancelled.add(job)
            self._lock.notify()

    def reap(self) -> None:
        """Apply cancellations now: jobs cancelled through `cancel`, and (every CANCEL_POLL_SECONDS) jobs whose
        `is_cancelled` says so, leave the queue or free their slots."""
        now = time.perf_counter()
        poll = now - self._last_poll >= CANCEL_POLL_SECONDS
        if poll:
            self._last_poll = now
        if poll:  # asked outside the lock: inside Triton each answer is an IPC round trip, and submit() waits on it
            with self._lock:
                waiting = list(self._waiting)
            asked = {job for job in waiting if _asks_to_cancel(job)}
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            if poll:
                cancelled |= asked
            dropped = [j for j in self._waiting if j in cancelled]
            self._waiting = deque(j for j in self._waiting if j not in cancelled)
        for job in dropped:
            job.fail(Cancelled("the request was cancelled before it started"))
        for stream_id, job in list(self._running.items()):
            if job in cancelled or (poll and _asks_to_cancel(job)):
                self._drop(stream_id)
                job.fail(Cancelled("the request was cancelled"))

    def run_once(self) -> bool:
        """Admit waiting jobs into free slots, then advance every running job by one frame. False when idle."""
        began = time.perf_counter()
        self.reap()
        reaped = time.perf_counter()
        self._admit()
        started = time.perf_counter()
        if not self._running:
            return False
        self.observer.phase("reap", reaped - began)
        self.observer.phase("admit", started - reaped)
        try:
            outputs = self.engine.step()
        except Exception as exc:  # the whole batch shares the failed step: fail every running job, keep serving
            self._fail_running(exc)
            return True
        now = time.perf_counter()
        self.observer.stepped(len(outputs), now - started, sum(o.audio is not None for o in outputs))
        for output in outputs:
            job = self._running[output.stream_id]
            if output.audio is not None and not job.heard:
                job.heard = True
                self.observer.first_audio(now - job.submitted_at)
            if output.finished:
                del self._running[output.stream_id]
            try:
                delivered = job.emit(output) is not False
            except Exception:  # a consumer that cannot take output is treated as gone
                delivered = False
            if not delivered and not output.finished:
                self._drop(output.stream_id)
                job.fail(Cancelled("the request's consumer went away"))
        self.observer.phase("emit", time.perf_counter() - now)
        self._report()
        return True

    def _admit(self) -> None:
        """Start as many waiting jobs as there are free slots, their prompts prefilled together, ADMIT_BATCH at a
        time: the device prefills one batch while the host prepares the next one's prompts."""
        ready = []
        while self.engine.free_slots > len(ready):
            with self._lock:
                if not self._waiting:
                    break
                job = self._waiting.popleft()
            try:
                prompt = job.prepare()
                self.engine.check(prompt)
            except Exception as exc:  # a bad request fails alone
                job.fail(exc)
                continue
            ready.append((job, prompt))
            if len(ready) == ADMIT_BATCH:
                self._start(ready)
                ready = []
        self._start(ready)
        self._report()

    def _start(self, ready: list[tuple[Job, PreparedPrompt]]) -> None:
        if not ready:
            return
        try:
            ids = self.engine.add_many([(prompt, job.options) for job, prompt in ready])
        except Exception as exc:  # e.g. out of memory for this prefill: these jobs fail, serving goes on
            for job, _ in ready:
                job.fail(exc)
            return
        for (job, _), stream_id in zip(ready, ids):
            job.stream_id = stream_id
            self._running[stream_id] = job

    def _drop(self, stream_id: int) -> None:
        self.engine.cancel(stream_id)
        del self._running[stream_id]
        self._report()

    def _fail_running(self, error: Exception) -> None:
        for stream_id, job in list(self._running.items()):
            self._drop(stream_id)
            job.fail(error)

    def _report(self) -> None:
        self.observer.queue_changed(self.active, self.queued)

    # --- background thread ---------------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="djz-frame-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; jobs still queued or running are failed."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # stuck inside a step: the loop still owns its jobs
                return
        shutdown = RuntimeError("the model is shutting down")
        self._fail_running(shutdown)
        with self._lock:
            waiting, self._waiting = list(self._waiting), deque()
        for job in waiting:
            job.fail(shutdown)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not (self._stopping or self._waiting or self._running or self._cancelled):
                    self._lock.wait()
                if self._stopping:
                    return
            try:
                self.run_once()
            except Exception as exc:  # never let one bad step end serving: fail what it held, then go on
                self._fail_running(exc)
                self.observer.loop_failed(exc)


def _asks_to_cancel(job: Job) -> bool:
    try:
        return job.is_cancelled()
    except Exception:  # a consumer that cannot even say is treated as gone
        return True
