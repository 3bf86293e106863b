"""Engine speed: ms per frame, real-time factor and first-audio latency, for one stream or several batched."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from engine.config import HOP_SAMPLES, SAMPLE_RATE
from engine.prompt import encode_voices
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.synthesizer import Synthesizer

BENCH_SCRIPT = ("Speaker 0: Welcome back to the show. Today we talk about how speech synthesis got fast enough "
                "to hold a conversation, and what it costs to serve it to many listeners at once.")


@dataclass
class BenchResult:
    runtime: str
    streams: int
    frames_per_stream: int
    seconds: float                  # wall time for all streams
    ms_per_frame: float             # steady-state wall time of one batched step (a frame for every stream)
    rtf: float                      # wall time / audio time of one stream, prompt processing included
    aggregate_audio_per_second: float  # audio seconds produced per wall second, all streams together
    first_audio_ms: float           # mean time from submitting to a stream's first frame

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def bench_voice(seconds: float) -> np.ndarray:
    """A deterministic voice-like test signal (speed does not depend on what the voice sounds like)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def run_bench(synth: Synthesizer, frames: int, streams: int = 1, voice_seconds: float = 10.0,
              steps: int = 10, cfg: float = 1.3, cached_voice: bool = False) -> BenchResult:
    """Time `streams` requests of exactly `frames` frames each, submitted together, after a short warm-up.
    `cached_voice` sends the voice as latents encoded beforehand, as a server with a voice cache does."""
    voice = Voice(audio=bench_voice(voice_seconds))
    if cached_voice:
        voice = Voice(latents=encode_voices(synth.runtime, [voice.audio])[0])

    def request(seed: int, length: int = frames) -> SynthesisRequest:
        return SynthesisRequest(BENCH_SCRIPT, {0: voice}, SynthesisOptions(cfg_scale=cfg, diffusion_steps=steps,
                                                                           seed=seed, exact_frames=length))

    synth.synthesize(request(0, length=2))  # warm-up: first calls allocate and compile
    first_audio: dict[int, float] = {}
    start = time.perf_counter()
    for index, _, output in synth.run([request(i + 1) for i in range(streams)]):
        if output.audio is not None and index not in first_audio:
            first_audio[index] = time.perf_counter() - start
    seconds = time.perf_counter() - start
    audio_seconds = frames * HOP_SAMPLES / SAMPLE_RATE
    # once the last stream has its first frame, all streams advance together: one batched step per frame
    steady = (seconds - max(first_audio.values())) / max(1, frames - 1)
    return BenchResult(runtime=synth.runtime.describe(), streams=streams, frames_per_stream=frames, seconds=seconds,
                       ms_per_frame=1000 * steady, rtf=seconds / audio_seconds,
                       aggregate_audio_per_second=streams * audio_seconds / seconds,
                       first_audio_ms=1000 * float(np.mean(list(first_audio.values()))))
