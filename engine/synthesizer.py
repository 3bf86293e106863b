"""The engine's front door: load a model once, then stream or synthesise requests through the batch engine."""
from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from engine.batch import BatchEngine, FrameOutput
from engine.config import EngineSettings
from engine.prompt import prepare_prompt
from engine.request import SynthesisRequest
from engine.runtime import load_runtime
from engine.runtime.base import Runtime
from engine.scheduler import Job, StreamScheduler


@dataclass
class SynthesisResult:
    audio: np.ndarray  # float32 samples at 24 kHz, exactly as the model produced them
    seed: int          # the seed used (drawn at random when the request gave none)
    frames: int
    reason: str        # why generation stopped


class Synthesizer:
    """A loaded model and its batch engine. Not thread-safe: one caller drives it."""

    def __init__(self, runtime: Runtime, processor, settings: EngineSettings = EngineSettings()):
        self.runtime = runtime
        self.processor = processor
        self.engine = BatchEngine(runtime, settings)
        self.scheduler = StreamScheduler(self.engine)

    @classmethod
    def load(cls, model: str, runtime: str = "auto", device: str | None = None,
             settings: EngineSettings = EngineSettings(), precision: str = "auto",
             compile: bool = False) -> "Synthesizer":
        rt, processor = load_runtime(model, runtime, device, precision=precision, compile=compile)
        return cls(rt, processor, settings)

    def run(self, requests: Iterable[SynthesisRequest]) -> Iterator[tuple[int, int, FrameOutput]]:
        """Generate several requests with continuous batching: yields (request index, seed, frame output) as
        frames are produced; a request starts as soon as a stream slot is free. A request that cannot start raises."""
        produced: deque[tuple[int, int, FrameOutput]] = deque()
        failures: list[Exception] = []
        jobs = []
        for index, request in enumerate(requests):
            seed = request.options.seed if request.options.seed is not None else secrets.randbits(63)

            def emit(output, index=index, seed=seed):
                produced.append((index, seed, output))

            def prepare(request=request, seed=seed):
                return prepare_prompt(self.runtime, self.processor, request, seed)

            jobs.append(Job(prepare=prepare, options=request.options, emit=emit, fail=failures.append))
        for job in jobs:
            self.scheduler.submit(job)
        unfinished = len(jobs)
        try:
            while unfinished:
                self.scheduler.run_once()
                if failures:
                    raise failures[0]
                while produced:
                    item = produced.popleft()
                    unfinished -= item[2].finished
                    yield item
        finally:  # the consumer stopped early (or a request failed): free everything this call holds
            for job in jobs:
                self.scheduler.cancel(job)
            self.scheduler.reap()

    def stream(self, request: SynthesisRequest) -> Iterator[np.ndarray]:
        """The request's audio, one 3200-sample frame at a time."""
        for _, _, output in self.run([request]):
            if output.audio is not None:
                yield output.audio

    def synthesize(self, request: SynthesisRequest) -> SynthesisResult:
        chunks, seed, reason = [], 0, ""
        for _, seed, output in self.run([request]):
            if output.audio is not None:
                chunks.append(output.audio)
            reason = output.reason or reason
        audio = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        return SynthesisResult(audio=audio, seed=seed, frames=len(chunks), reason=reason)
