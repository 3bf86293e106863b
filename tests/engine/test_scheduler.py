"""The stream scheduler: jobs queue for a slot and join the batch between steps without changing each other's audio;
cancellation, departed consumers, bad requests and failed steps end only the jobs they concern; the background
thread serves submissions and fails what is left when it stops."""
import threading

import numpy as np
import pytest

import engine.scheduler
from engine.batch import BatchEngine
from engine.config import EngineSettings
from engine.errors import Cancelled, InvalidRequest
from engine.prompt import prepare_prompt
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.runtime import load_runtime
from engine.scheduler import Job, SchedulerObserver, StreamScheduler
from engine.synthesizer import Synthesizer

SETTINGS = EngineSettings(max_streams=2, max_context=1024)
TOLERANCE = 1e-4  # max |batched - alone| / max |alone|


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_runtime(str(tiny_checkpoint), runtime="torch", device="cpu")


@pytest.fixture(scope="module")
def alone(model):
    """The audio of a request generated on its own, by a one-stream synthesizer."""
    synth = Synthesizer(*model, EngineSettings(max_streams=1, max_context=1024))
    return lambda req: synth.synthesize(req).audio


def request(voices, seed: int, frames: int, voice="low", **options) -> SynthesisRequest:
    return SynthesisRequest("Speaker 0: Hi there.", {0: Voice(audio=voices[voice])},
                            SynthesisOptions(seed=seed, exact_frames=frames, **options))


class Recorder(SchedulerObserver):
    def __init__(self):
        self.queue, self.steps, self.first_audio_count, self.loop_errors, self.phases = [], [], 0, [], []

    def queue_changed(self, active, queued):
        self.queue.append((active, queued))

    def stepped(self, batch_size, seconds, frames):
        self.steps.append((batch_size, frames))

    def first_audio(self, seconds):
        self.first_audio_count += 1

    def loop_failed(self, error):
        self.loop_errors.append(error)

    def phase(self, name, seconds):
        assert seconds >= 0
        self.phases.append(name)


class Tracked:
    """A job for `req` and what became of it. emit returns `reply(n)` once the job has n frames of audio."""

    def __init__(self, model, req, reply=lambda n: None, **fields):
        self.req, self.reply, self.audio, self.errors, self.finished, self.prepared = req, reply, [], [], False, False
        self.done = threading.Event()
        self.job = Job(prepare=self._prepare(model), options=req.options, emit=self._emit, fail=self._fail,
                       **fields)

    def _prepare(self, model):
        def prepare():
            self.prepared = True
            return prepare_prompt(*model, self.req, self.req.options.seed)
        return prepare

    def _emit(self, output):
        self.audio += [] if output.audio is None else [output.audio]
        self.finished |= output.finished
        if output.finished:
            self.done.set()
        return self.reply(len(self.audio))

    def _fail(self, error):
        self.errors.append(error)
        self.done.set()

    def matches(self, alone) -> bool:
        reference = alone(self.req)
        ours = np.concatenate(self.audio)
        return ours.shape == reference.shape and np.abs(ours - reference).max() <= TOLERANCE * np.abs(reference).max()


@pytest.fixture
def scheduler(model):
    return StreamScheduler(BatchEngine(model[0], SETTINGS), Recorder())


def submit_all(scheduler, *tracked):
    for t in tracked:
        scheduler.submit(t.job)


def drain(scheduler, limit=100):
    for _ in range(limit):
        if not scheduler.run_once():
            return
    raise AssertionError("the scheduler did not go idle")


def test_jobs_wait_for_a_slot_and_match_running_alone(model, scheduler, voices, alone):
    a, b, c = (Tracked(model, request(voices, 1, 3)),
               Tracked(model, request(voices, 2, 5, "high", cfg_scale=2.0, diffusion_steps=4)),
               Tracked(model, request(voices, 3, 4, diffusion_steps=6)))
    submit_all(scheduler, a, b, c)
    scheduler.run_once()
    assert (scheduler.active, scheduler.queued) == (2, 1) and (2, 1) in scheduler.observer.queue
    assert a.prepared and b.prepared and not c.prepared  # a queued job is prepared only when it gets a slot
    drain(scheduler)
    # a ends after step 3, when frame 4 (a's row wasted) is already queued: c takes a's slot from frame 5, so step 4
    # hands out b's frame alone; b ends after step 5, c runs alone to step 8
    assert scheduler.observer.steps == [(2, 2)] * 3 + [(1, 1)] + [(2, 2)] + [(1, 1)] * 3
    assert scheduler.observer.first_audio_count == 3 and scheduler.observer.queue[-1] == (0, 0)
    assert scheduler.observer.phases == ["reap", "admit", "emit"] * 8  # each step's cycle, timed outside the step
    assert [len(t.audio) for t in (a, b, c)] == [3, 5, 4] and all(t.finished and not t.errors for t in (a, b, c))
    assert all(t.matches(alone) for t in (a, b, c))
    assert scheduler.engine.active == 0 and not scheduler.run_once()


def test_cancelling_a_running_job_frees_its_slot_before_the_next_step(model, scheduler, voices, alone):
    a, b, c = Tracked(model, request(voices, 4, 6)), Tracked(model, request(voices, 5, 4)), \
        Tracked(model, request(voices, 6, 3, "high"))
    submit_all(scheduler, a, b, c)
    scheduler.run_once()
    scheduler.cancel(a.job)
    drain(scheduler)
    assert len(a.audio) == 1 and not a.finished
    assert len(a.errors) == 1 and isinstance(a.errors[0], Cancelled)
    # c took the slot a left after step 1, from frame 3 on (frame 2 was queued): step 2 hands out b's frame alone
    assert scheduler.observer.steps == [(2, 2), (1, 1), (2, 2), (2, 2), (1, 1)]
    assert b.matches(alone) and c.matches(alone) and not b.errors and not c.errors


def test_cancelling_a_queued_job_fails_it_before_it_starts(model, scheduler, voices):
    a, b, c = (Tracked(model, request(voices, 7, 2)) for _ in range(3))
    submit_all(scheduler, a, b, c)
    scheduler.cancel(c.job)
    drain(scheduler)
    assert not c.prepared and not c.audio and len(c.errors) == 1 and isinstance(c.errors[0], Cancelled)
    assert "before it started" in str(c.errors[0])
    assert a.finished and b.finished and scheduler.observer.steps == [(2, 2)] * 2


def test_a_request_that_cannot_be_prepared_fails_alone(model, scheduler, voices, alone):
    a, c = Tracked(model, request(voices, 8, 3)), Tracked(model, request(voices, 9, 3, "high"))
    bad = Tracked(model, SynthesisRequest("Speaker 0: Hi.", {0: Voice(latents=np.zeros((4, 32), np.float32))}))
    submit_all(scheduler, a, bad, c)
    drain(scheduler)
    assert len(bad.errors) == 1 and isinstance(bad.errors[0], InvalidRequest) and "[frames, 64]" in str(bad.errors[0])
    assert scheduler.observer.steps == [(2, 2)] * 3  # c took the slot bad never held
    assert a.matches(alone) and c.matches(alone)


@pytest.mark.parametrize("answer", [False, "raise"])
def test_a_consumer_that_goes_away_cancels_its_job(model, scheduler, voices, answer):
    def reply(n):
        if n == 2 and answer == "raise":
            raise BrokenPipeError("client disconnected")
        return answer if n == 2 else None

    gone, stays = Tracked(model, request(voices, 10, 6), reply=reply), Tracked(model, request(voices, 11, 4))
    submit_all(scheduler, gone, stays)
    drain(scheduler)
    assert len(gone.audio) == 2 and len(gone.errors) == 1 and isinstance(gone.errors[0], Cancelled)
    assert "consumer went away" in str(gone.errors[0])
    assert stays.finished and len(stays.audio) == 4 and scheduler.observer.steps == [(2, 2)] * 2 + [(1, 1)] * 2


def test_is_cancelled_is_polled_between_steps(model, scheduler, voices, monkeypatch):
    monkeypatch.setattr(engine.scheduler, "CANCEL_POLL_SECONDS", 0.0)
    stays = Tracked(model, request(voices, 12, 4))
    client = Tracked(model, request(voices, 13, 6), is_cancelled=lambda: len(client.audio) >= 2)
    submit_all(scheduler, client, stays)
    drain(scheduler)
    assert len(client.audio) == 2 and isinstance(client.errors[0], Cancelled) and stays.finished
    assert scheduler.observer.steps == [(2, 2)] * 2 + [(1, 1)] * 2


def test_is_cancelled_polls_are_throttled(model, scheduler, voices, monkeypatch):
    monkeypatch.setattr(engine.scheduler, "CANCEL_POLL_SECONDS", 3600.0)
    polls = []
    job = Tracked(model, request(voices, 14, 4), is_cancelled=lambda: polls.append(1) or False)
    scheduler.submit(job.job)
    drain(scheduler)  # the first reap polled the waiting job and opened an interval that outlasts it
    assert job.finished and polls == [1] and scheduler.observer.steps == [(1, 1)] * 4


def test_a_failed_step_fails_the_running_jobs_and_serving_goes_on(model, scheduler, voices, alone, monkeypatch):
    step, calls = scheduler.engine.step, []

    def failing_step():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return step()

    monkeypatch.setattr(scheduler.engine, "step", failing_step)
    a, b, c = Tracked(model, request(voices, 15, 5)), Tracked(model, request(voices, 16, 5)), \
        Tracked(model, request(voices, 17, 3, "high"))
    submit_all(scheduler, a, b, c)
    drain(scheduler)
    for t in (a, b):
        assert len(t.audio) == 1 and [str(e) for e in t.errors] == ["device lost"]
    assert c.finished and not c.errors and c.matches(alone)  # the engine was left clean for the next job
    assert scheduler.engine.active == 0 and scheduler.observer.loop_errors == []


def test_background_thread_serves_and_stop_fails_what_is_left(model, scheduler, voices, alone):
    scheduler.start()
    try:
        a, b = Tracked(model, request(voices, 18, 3)), Tracked(model, request(voices, 19, 4, "high"))
        submit_all(scheduler, a, b)
        assert a.done.wait(60) and b.done.wait(60)
        assert a.matches(alone) and b.matches(alone)
        started = threading.Event()
        long = [Tracked(model, request(voices, 20 + i, 500), reply=lambda n: started.set()) for i in range(3)]
        submit_all(scheduler, *long)
        assert started.wait(60)
    finally:
        scheduler.stop()
    assert all(len(t.errors) == 1 and "shutting down" in str(t.errors[0]) for t in long)
    assert not long[2].prepared and scheduler.engine.active == 0 and scheduler.queued == 0


def test_closing_a_synthesizer_run_early_frees_its_slots(model, voices):
    synth = Synthesizer(*model, SETTINGS)
    run = synth.run([request(voices, 30 + i, 20) for i in range(3)])
    _, _, output = next(run)
    assert output.audio is not None and synth.engine.active == 2 and synth.scheduler.queued == 1
    run.close()
    assert synth.engine.active == 0 and synth.scheduler.active == 0 and synth.scheduler.queued == 0
    assert synth.synthesize(request(voices, 40, 2)).frames == 2


def test_joining_jobs_are_prefilled_in_batches_of_admit_batch(model, voices, alone, monkeypatch):
    """Three jobs for three free slots with ADMIT_BATCH 2: two engine admissions, and the same audio."""
    monkeypatch.setattr(engine.scheduler, "ADMIT_BATCH", 2)
    scheduler = StreamScheduler(BatchEngine(model[0], EngineSettings(max_streams=3, max_context=512)), Recorder())
    admitted, add_many = [], scheduler.engine.add_many
    monkeypatch.setattr(scheduler.engine, "add_many", lambda requests: admitted.append(len(requests))
                        or add_many(requests))
    jobs = [Tracked(model, request(voices, 15 + i, 3)) for i in range(3)]
    submit_all(scheduler, *jobs)
    drain(scheduler)
    assert admitted == [2, 1] and all(job.finished and job.matches(alone) for job in jobs)
