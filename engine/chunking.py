"""When a served stream's frames leave: the first at once, later ones gathered into fewer, longer chunks while the
listener holds enough audio ahead of playback. Under load the engine runs far ahead of real time, and every
response costs the same downstream however short (in Triton, one request to the single `postprocess` instance,
the served bottleneck at many streams); a listener running short gets every frame as soon as it exists."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from engine.config import CHUNK_AHEAD_SECONDS, MAX_FRAMES_PER_CHUNK, SAMPLE_RATE


class FrameChunker:
    """One stream's frames in, the chunks to send out. Playback is taken to start when the first chunk leaves."""

    def __init__(self, max_frames: int = MAX_FRAMES_PER_CHUNK, ahead_seconds: float = CHUNK_AHEAD_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, not {max_frames}")
        self.max_frames, self.ahead_seconds, self.clock = max_frames, ahead_seconds, clock
        self._pending: list[np.ndarray] = []
        self._sent_seconds = 0.0
        self._started: float | None = None

    def add(self, audio: np.ndarray | None, finished: bool) -> np.ndarray | None:
        """Take one frame's output (audio None for a frame without speech): the chunk to send now (empty when a
        stream ends with nothing held), or None to hold it for later."""
        if audio is not None:
            self._pending.append(audio)
        now = self.clock()
        ahead = self._sent_seconds - (now - self._started) if self._started is not None else 0.0
        due = finished or (self._pending and (ahead < self.ahead_seconds or len(self._pending) >= self.max_frames))
        if not due:
            return None
        chunk = np.concatenate(self._pending) if self._pending else np.zeros(0, dtype=np.float32)
        self._pending = []
        if self._started is None and len(chunk):
            self._started = now
        self._sent_seconds += len(chunk) / SAMPLE_RATE
        return chunk
