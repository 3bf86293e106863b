"""Long scripts split under a character limit at natural boundaries; pieces joined by a crossfade; speed changes."""
import numpy as np
import pytest

from engine.script import parse_script, render_script
from orchestrator.services.chunking import Crossfader, split_script
from orchestrator.services.speed import change_speed

SCRIPT = parse_script(
    "Speaker 0: Good morning. The weather is fine today, and the sea is calm. We sail at nine.\n"
    "Speaker 1: Good. I packed the charts, the radio, and lunch for everyone on board.\n"
    "Speaker 0: Then let us go.")


def words(script) -> list[tuple[int, str]]:
    return [(turn.speaker, word) for turn in script.turns for word in turn.text.split()]


@pytest.mark.parametrize("limit", [20, 45, 80, 1000])
def test_pieces_fit_the_limit_and_keep_every_word_with_its_speaker(limit):
    pieces = split_script(SCRIPT, limit)
    assert all(sum(len(t.text) for t in piece.turns) <= limit for piece in pieces)
    assert [w for piece in pieces for w in words(piece)] == words(SCRIPT)
    assert len(pieces) == 1 if limit == 1000 else len(pieces) > 1


def test_cuts_fall_between_sentences_before_clauses_before_words():
    assert render_script(split_script(SCRIPT, 65)[0]) == (
        "Speaker 0: Good morning. The weather is fine today, and the sea is calm.")  # whole sentences that fit
    assert render_script(split_script(SCRIPT, 45)[0]) == (
        "Speaker 0: Good morning. The weather is fine today,")  # a sentence longer than the limit: at a clause
    clauses = split_script(parse_script("Speaker 0: one two three, four five six, seven eight nine"), 20)
    assert [p.turns[0].text for p in clauses] == ["one two three,", "four five six,", "seven eight nine"]


def test_a_word_longer_than_the_limit_stays_whole():
    pieces = split_script(parse_script("Speaker 0: a Llanfairpwllgwyngyll b"), 5)
    assert [p.turns[0].text for p in pieces] == ["a", "Llanfairpwllgwyngyll", "b"]


def stream_through(crossfader, pieces, chunk):
    out = []
    for piece in pieces:
        crossfader.start_piece()
        for start in range(0, piece.size, chunk):
            out.append(crossfader.push(piece[start:start + chunk]))
    out.append(crossfader.finish())
    return np.concatenate(out)


@pytest.mark.parametrize("chunk", [7, 100, 3200, 100000])
def test_the_crossfade_is_the_same_whatever_the_chunk_sizes(chunk):
    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal(n).astype(np.float32) for n in (6400, 3200, 9600)]
    joined = stream_through(Crossfader(960), pieces, chunk)
    assert joined.size == sum(p.size for p in pieces) - 2 * 960
    assert np.allclose(joined, stream_through(Crossfader(960), pieces, 100000), atol=1e-6)
    assert np.array_equal(joined[:6400 - 960], pieces[0][:6400 - 960])  # untouched outside the overlaps
    # equal-power weights at the middle of the first overlap
    middle = 6400 - 960 + 480
    angle = np.pi / 4 * (961 / 960)
    expected = pieces[0][6400 - 480] * np.cos(angle) + pieces[1][480] * np.sin(angle)
    assert joined[middle] == pytest.approx(expected, abs=1e-5)


def test_speed_changes_length_and_keeps_pitch():
    t = np.arange(48000) / 24000
    tone = np.sin(2 * np.pi * 220 * t).astype(np.float32)
    for speed in (0.5, 1.5, 3.0):
        out = change_speed(tone, speed)
        assert out.size == round(tone.size / speed)
        spectrum = np.abs(np.fft.rfft(out[2400:-2400]))
        assert np.argmax(spectrum) / (out.size - 4800) * 24000 == pytest.approx(220, abs=2)
    assert np.array_equal(change_speed(tone, 1.0), tone)
