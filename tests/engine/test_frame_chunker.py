"""A served stream's frames: the first alone, then grouped while the listener is ahead, never held at the end."""
import numpy as np
import pytest

from engine.chunking import FrameChunker
from engine.config import HOP_SAMPLES, SAMPLE_RATE

FRAME_SECONDS = HOP_SAMPLES / SAMPLE_RATE


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def frame(value: float) -> np.ndarray:
    return np.full(HOP_SAMPLES, value, dtype=np.float32)


def test_a_fast_engine_sends_the_first_frame_alone_then_groups_once_the_listener_is_ahead():
    clock = Clock()
    chunker = FrameChunker(max_frames=4, ahead_seconds=0.5, clock=clock)
    sent = []
    for i in range(20):  # an engine 20x faster than real time
        clock.now += FRAME_SECONDS / 20
        chunk = chunker.add(frame(i), finished=i == 19)
        if chunk is not None:
            sent.append(chunk)
    # frames go one by one until 0.5 s is held ahead (4 frames); playback drains that below 0.5 s during the next
    # three, which leave together; from then on the listener is over 0.5 s ahead and chunks hold four frames
    assert [len(c) // HOP_SAMPLES for c in sent] == [1, 1, 1, 1, 3, 4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate(sent), np.concatenate([frame(i) for i in range(20)]))


def test_a_listener_running_short_gets_every_frame_at_once():
    clock = Clock()
    chunker = FrameChunker(max_frames=8, ahead_seconds=0.5, clock=clock)
    for i in range(10):  # an engine slower than real time: never ahead
        clock.now += 2 * FRAME_SECONDS
        assert len(chunker.add(frame(i), finished=False)) == HOP_SAMPLES


def test_frames_without_speech_send_nothing_until_the_end():
    clock = Clock()
    chunker = FrameChunker(max_frames=4, ahead_seconds=0.5, clock=clock)
    assert chunker.add(None, finished=False) is None
    assert len(chunker.add(frame(1), finished=False)) == HOP_SAMPLES
    assert chunker.add(None, finished=False) is None  # nothing held: no response, however short the listener is
    end = chunker.add(None, finished=True)
    assert end is not None and len(end) == 0 and end.dtype == np.float32  # the end is always sent


def test_at_least_one_frame_per_chunk():
    with pytest.raises(ValueError, match="at least 1"):
        FrameChunker(max_frames=0)
