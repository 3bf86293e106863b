"""A synthesis request: the script, one voice per speaker, and the generation options, all validated."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.config import DEFAULT_CFG_SCALE, DEFAULT_DIFFUSION_STEPS
from engine.errors import InvalidRequest
from engine.script import Script, parse_script

MAX_DIFFUSION_STEPS = 100


@dataclass(frozen=True)
class Voice:
    """A speaker's voice: prepared audio (24 kHz mono float32, see engine.audio.prepare_voice) or cached latents.

    Cached latents are the acoustic encoder's mean output [frames, latent_dim] for the normalised audio; the
    request's seed still draws the sigma-VAE noise, so a cached voice gives the same audio as its recording.
    """

    audio: np.ndarray | None = None
    latents: np.ndarray | None = None

    def __post_init__(self):
        if (self.audio is None) == (self.latents is None):
            raise InvalidRequest("a voice needs exactly one of audio or latents")


@dataclass(frozen=True)
class SynthesisOptions:
    cfg_scale: float = DEFAULT_CFG_SCALE
    diffusion_steps: int = DEFAULT_DIFFUSION_STEPS
    seed: int | None = None           # None: a fresh random seed, reported with the result
    max_frames: int | None = None     # cap on generated steps: speech frames + turn boundaries (None: default)
    exact_frames: int | None = None   # force exactly this many speech frames (benchmarks, parity)

    def __post_init__(self):
        if not np.isfinite(self.cfg_scale) or not 0.0 < self.cfg_scale <= 20.0:
            raise InvalidRequest(f"cfg_scale must be in (0, 20], got {self.cfg_scale}")
        if not 1 <= self.diffusion_steps <= MAX_DIFFUSION_STEPS:
            raise InvalidRequest(f"diffusion_steps must be in [1, {MAX_DIFFUSION_STEPS}], got {self.diffusion_steps}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidRequest(f"seed must be in [0, 2**63), got {self.seed}")
        for name in ("max_frames", "exact_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InvalidRequest(f"{name} must be at least 1, got {value}")


@dataclass(frozen=True)
class SynthesisRequest:
    """script: a parsed Script or its text; voices: script speaker id -> Voice."""

    script: Script
    voices: dict[int, Voice]
    options: SynthesisOptions = field(default_factory=SynthesisOptions)

    def __post_init__(self):
        if isinstance(self.script, str):
            object.__setattr__(self, "script", parse_script(self.script))
        speakers = set(self.script.speakers)
        missing = sorted(speakers - self.voices.keys())
        if missing:
            raise InvalidRequest(f"no voice for speaker(s) {missing}: give one voice per speaker in the script")
        unused = sorted(self.voices.keys() - speakers)
        if unused:
            raise InvalidRequest(f"voice(s) given for speaker(s) {unused}, who have no line in the script "
                                 f"(script speakers: {sorted(speakers)})")
