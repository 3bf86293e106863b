"""Synthesises the demo voices alice.wav and bob.wav: glottal pulses through formant resonators, deterministic.

Run after `make venv`: .venv/bin/python examples/voices/make_voices.py
"""
from pathlib import Path

import numpy as np

from engine.audio import write_audio
from engine.config import SAMPLE_RATE

# (F1, F2, F3) in Hz of an adult male voice; a higher voice scales them up.
VOWELS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (270, 2290, 3010),
          "o": (570, 840, 2410), "u": (300, 870, 2240)}
BANDWIDTHS = (90, 110, 170)
SYLLABLE_SECONDS, PAUSE_SECONDS, RAMP_SECONDS = 0.22, 0.06, 0.03


def glottal_flow_derivative(f0: np.ndarray) -> np.ndarray:
    """Rosenberg glottal pulses (open 40% of a period, closing 20%) at the pitch contour f0, differentiated."""
    phase = np.cumsum(f0 / SAMPLE_RATE) % 1.0
    opening = 0.5 * (1 - np.cos(np.pi * phase / 0.4))
    closing = np.cos(np.pi * (phase - 0.4) / 0.4)
    flow = np.where(phase < 0.4, opening, np.where(phase < 0.6, closing, 0.0))
    return np.diff(flow, prepend=0.0)


def formant_filter(source: np.ndarray, formants: np.ndarray) -> np.ndarray:
    """`source` through a cascade of two-pole resonators whose centre frequencies follow `formants` [n, 3]."""
    radius = np.exp(-np.pi * np.array(BANDWIDTHS) / SAMPLE_RATE)
    b1 = 2 * radius * np.cos(2 * np.pi * formants / SAMPLE_RATE)
    b2 = -radius**2
    gain = 1 - b1 - b2
    out = np.zeros_like(source)
    state = np.zeros((len(BANDWIDTHS), 2))  # per resonator: y[n-1], y[n-2]
    for n, x in enumerate(source):
        for k in range(len(BANDWIDTHS)):
            y = gain[n, k] * x + b1[n, k] * state[k, 0] + b2[k] * state[k, 1]
            state[k] = y, state[k, 0]
            x = y
        out[n] = x
    return out


def voice(pitch_hz: float, formant_scale: float, vowels: str, seed: int) -> np.ndarray:
    """About 3 s of a voice saying `vowels` as syllables, with falling intonation, vibrato and breath noise."""
    syllable, pause = int(SYLLABLE_SECONDS * SAMPLE_RATE), int(PAUSE_SECONDS * SAMPLE_RATE)
    n = len(vowels) * (syllable + pause)
    t = np.arange(n) / SAMPLE_RATE
    f0 = pitch_hz * (1 - 0.15 * t / t[-1]) * (1 + 0.015 * np.sin(2 * np.pi * 5.0 * t))

    targets = np.repeat([VOWELS[v] for v in vowels], syllable + pause, axis=0) * formant_scale
    glide = np.ones(int(0.04 * SAMPLE_RATE)) / int(0.04 * SAMPLE_RATE)
    formants = np.stack([np.convolve(np.pad(track, len(glide), mode="edge"), glide, "same")[len(glide):-len(glide)]
                         for track in targets.T], axis=1)

    ramp = np.sin(np.linspace(0, np.pi / 2, int(RAMP_SECONDS * SAMPLE_RATE))) ** 2
    syllable_envelope = np.concatenate([ramp, np.ones(syllable - 2 * len(ramp)), ramp[::-1], np.zeros(pause)])
    envelope = np.tile(syllable_envelope, len(vowels))

    breath = np.random.default_rng(seed).standard_normal(n) * 0.002
    speech = formant_filter((glottal_flow_derivative(f0) + breath) * envelope, formants)
    return 0.5 * speech / np.abs(speech).max()


def main() -> None:
    here = Path(__file__).parent
    write_audio(here / "alice.wav", voice(pitch_hz=215, formant_scale=1.17, vowels="aiueoaiuea", seed=1))
    write_audio(here / "bob.wav", voice(pitch_hz=110, formant_scale=1.0, vowels="oaeiuoaeio", seed=2))


if __name__ == "__main__":
    main()
