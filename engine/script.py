"""Dialogue scripts: parsing `Speaker N: text` (and DJZ 1.x `[N] text`) lines into turns, and rendering them back."""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.config import MAX_SPEAKERS
from engine.errors import InvalidRequest

# "Speaker 1: text" (any case, optional spaces) or "[1] text". A "-" is matched only to refuse negative ids by name.
_LABEL = re.compile(r"^(?:speaker\s*(?P<speaker>-?\d+)\s*:|\[\s*(?P<bracket>-?\d+)\s*\])(?P<text>.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Turn:
    """What one speaker says before the next one speaks; `speaker` is the script's own id."""

    speaker: int
    text: str


@dataclass(frozen=True)
class Script:
    """A dialogue: its turns in order."""

    turns: tuple[Turn, ...]

    @property
    def speakers(self) -> tuple[int, ...]:
        """The distinct speaker ids of the script, sorted."""
        return tuple(sorted({turn.speaker for turn in self.turns}))

    def prompt_speaker(self, script_id: int) -> int:
        """The 0-based speaker index of the VibeVoice prompt: the rank of `script_id` among the script's ids."""
        if script_id not in self.speakers:
            raise InvalidRequest(f"speaker {script_id} does not speak in this script; its speakers are "
                                 f"{_listed(self.speakers)}")
        return self.speakers.index(script_id)


def parse_script(text: str) -> Script:
    """The turns of a script; a line without a label continues the turn before it, and an unlabelled script is one
    turn of speaker 0."""
    lines = [(number, " ".join(line.split())) for number, line in enumerate(text.splitlines(), start=1)]
    lines = [(number, line) for number, line in lines if line]
    if not lines:
        raise InvalidRequest("the script is empty; write at least one line such as 'Speaker 0: Hello.'")
    labelled = [(number, _LABEL.match(line), line) for number, line in lines]
    if not any(label for _, label, _ in labelled):
        return Script((Turn(0, " ".join(line for _, line in lines)),))

    speakers: list[int] = []
    texts: list[str] = []
    for number, label, line in labelled:
        if label is None:
            if not texts:
                raise InvalidRequest(f"script line {number} has no speaker label but comes before the first "
                                     "labelled line; start it with 'Speaker N:'")
            texts[-1] += " " + line
            continue
        speaker = int(label["speaker"] or label["bracket"])
        if speaker < 0:
            raise InvalidRequest(f"script line {number} names speaker {speaker}; speaker ids are non-negative "
                                 "integers such as 0 or 1")
        if not label["text"].strip():
            raise InvalidRequest(f"script line {number} labels speaker {speaker} but has no text; "
                                 "write what the speaker says after the label")
        speakers.append(speaker)
        texts.append(label["text"].strip())

    script = Script(tuple(Turn(speaker, text) for speaker, text in zip(speakers, texts)))
    if len(script.speakers) > MAX_SPEAKERS:
        raise InvalidRequest(f"the script has {len(script.speakers)} speakers ({_listed(script.speakers)}); "
                             f"at most {MAX_SPEAKERS} can speak in one script")
    return script


def render_script(script: Script) -> str:
    """The script as `Speaker N: text` lines with its own ids, for display and logs."""
    return "\n".join(f"Speaker {turn.speaker}: {turn.text}" for turn in script.turns)


def _listed(speakers: tuple[int, ...]) -> str:
    return ", ".join(str(speaker) for speaker in speakers)
