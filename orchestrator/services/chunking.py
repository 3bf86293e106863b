"""Long scripts in pieces: split at turn (paragraph) and sentence boundaries under a character limit, and the
generated pieces joined again with a short crossfade."""
from __future__ import annotations

import re

import numpy as np

from engine.script import Script, Turn

SENTENCE_END = re.compile(r"(?<=[.!?;:…。！？])\s+")
CLAUSE_END = re.compile(r"(?<=[,，、])\s+")


def split_script(script: Script, max_chars: int) -> list[Script]:
    """Consecutive pieces of `script`, each at most `max_chars` characters of text (a single word longer than that
    stays whole). Turns are kept whole where they fit; a longer turn is cut between sentences, then clauses, then
    words. Each piece keeps the script's own speaker ids."""
    pieces = [Turn(turn.speaker, part) for turn in script.turns for part in _split_text(turn.text, max_chars)]
    chunks: list[list[Turn]] = []
    size = 0
    for piece in pieces:
        if chunks and size + len(piece.text) <= max_chars:
            chunks[-1].append(piece)
            size += len(piece.text)
        else:
            chunks.append([piece])
            size = len(piece.text)
    return [Script(tuple(_merge_same_speaker(chunk))) for chunk in chunks]


def _split_text(text: str, max_chars: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    for boundary in (SENTENCE_END, CLAUSE_END, re.compile(r"\s+")):
        parts = [p for p in boundary.split(text) if p]
        if len(parts) > 1:
            return [piece for group in _pack(parts, max_chars) for piece in _split_text(group, max_chars)]
    return [text]  # one word longer than the limit: it cannot be cut without breaking it


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Join consecutive parts with spaces while they fit under max_chars."""
    groups: list[str] = []
    for part in parts:
        if groups and len(groups[-1]) + 1 + len(part) <= max_chars:
            groups[-1] += " " + part
        else:
            groups.append(part)
    return groups


def _merge_same_speaker(turns: list[Turn]) -> list[Turn]:
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].speaker == turn.speaker:
            merged[-1] = Turn(turn.speaker, merged[-1].text + " " + turn.text)
        else:
            merged.append(turn)
    return merged


class Crossfader:
    """Joins audio pieces that arrive in chunks: the last `overlap` samples of a piece are held back and blended
    (equal-power) with the first samples of the next, so streamed and stored audio are the same samples."""

    def __init__(self, overlap: int):
        self.overlap = overlap
        self._held = np.zeros(0, dtype=np.float32)
        self._fade_in_left = 0  # samples of the current piece still to blend with the held tail

    def start_piece(self) -> None:
        if self._held.size:
            self._fade_in_left = self._held.size

    def push(self, samples: np.ndarray) -> np.ndarray:
        """The samples that are final now, given the next samples of the current piece."""
        samples = np.asarray(samples, dtype=np.float32)
        out = []
        if self._fade_in_left:
            take = min(self._fade_in_left, samples.size)
            start = self._held.size - self._fade_in_left
            tail = self._held[start:start + take]
            t = (np.arange(start, start + take, dtype=np.float32) + 0.5) / self._held.size
            out.append(tail * np.cos(t * np.pi / 2) + samples[:take] * np.sin(t * np.pi / 2))
            samples = samples[take:]
            self._fade_in_left -= take
            if self._fade_in_left:
                return np.concatenate(out)
            self._held = np.zeros(0, dtype=np.float32)
        pending = np.concatenate([self._held, samples])
        keep = min(self.overlap, pending.size)
        self._held = pending[pending.size - keep:]
        out.append(pending[:pending.size - keep])
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def finish(self) -> np.ndarray:
        """The held tail, after the last piece."""
        held = self._held[self._held.size - self._fade_in_left:] if self._fade_in_left else self._held
        self._held = np.zeros(0, dtype=np.float32)
        self._fade_in_left = 0
        return held
