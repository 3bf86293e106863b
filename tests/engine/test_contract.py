"""The Triton tensor contract: request tensors become a validated request (or an error naming the tensor), options
travel between models as JSON, and per-voice arrays are padded into one tensor and recovered from it."""
import re
from dataclasses import replace

import numpy as np
import pytest

from engine.contract import decode_options, encode_options, pad_rows, read_request, rows, unpad_rows
from engine.errors import InvalidRequest
from engine.request import SynthesisOptions

LATENT_DIM = 64
# Speaker 3 speaks first, but voice rows follow ascending speaker id: row 0 is speaker 1, row 1 is speaker 3.
SCRIPT = "Speaker 3: Hello there.\nSpeaker 1: Hi, nice to meet you."


def text(script: str = SCRIPT) -> np.ndarray:
    return np.array([script.encode()], dtype=object)


@pytest.fixture
def clips(voices):
    return [voices["low"], voices["high"]]  # speaker 1, speaker 3


@pytest.fixture
def audio_tensors(clips):
    padded, lengths = pad_rows(clips)
    return {"TEXT": text(), "VOICE_AUDIO": padded, "VOICE_LENGTHS": lengths}


@pytest.fixture
def latents():
    rng = np.random.default_rng(0)
    return [rng.standard_normal((5, LATENT_DIM)).astype(np.float32),
            rng.standard_normal((3, LATENT_DIM)).astype(np.float32)]


@pytest.fixture
def latent_tensors(latents):
    padded, frames = pad_rows(latents)
    return {"TEXT": text(), "VOICE_LATENTS": padded, "VOICE_FRAMES": frames}


def refused(tensors: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        read_request(tensors, LATENT_DIM)


def test_voice_audio_rows_go_to_speakers_in_ascending_id(audio_tensors, clips):
    contract = read_request(audio_tensors, LATENT_DIM)
    request = contract.request
    assert request.script.speakers == (1, 3) and request.script.turns[0].speaker == 3
    assert sorted(request.voices) == [1, 3]
    np.testing.assert_array_equal(request.voices[1].audio, clips[0])
    np.testing.assert_array_equal(request.voices[3].audio, clips[1])
    assert request.voices[1].latents is None
    assert request.options == SynthesisOptions() and contract.raw is False


def test_voice_latent_rows_go_to_speakers_in_ascending_id(latent_tensors, latents):
    request = read_request(latent_tensors, LATENT_DIM).request
    assert [request.voices[s].latents.shape for s in (1, 3)] == [(5, LATENT_DIM), (3, LATENT_DIM)]
    np.testing.assert_array_equal(request.voices[1].latents, latents[0])
    np.testing.assert_array_equal(request.voices[3].latents, latents[1])
    assert request.voices[3].latents.dtype == np.float32 and request.voices[3].audio is None


def test_options_come_from_one_value_tensors(latent_tensors):
    contract = read_request({**latent_tensors, "CFG_SCALE": np.array([1.5], np.float32),
                             "DIFFUSION_STEPS": np.array([7], np.int32), "SEED": np.array([2**62 + 1], np.int64),
                             "MAX_FRAMES": np.array([40], np.int32), "EXACT_FRAMES": np.array([[5]], np.int32),
                             "RAW": np.array([True])}, LATENT_DIM)
    assert contract.request.options == SynthesisOptions(cfg_scale=1.5, diffusion_steps=7, seed=2**62 + 1,
                                                        max_frames=40, exact_frames=5)
    assert contract.raw is True


def test_zero_frame_counts_mean_unset(latent_tensors):
    contract = read_request({**latent_tensors, "MAX_FRAMES": np.array([0], np.int32),
                             "EXACT_FRAMES": np.array([0], np.int32), "RAW": np.array([False])}, LATENT_DIM)
    assert contract.request.options == SynthesisOptions() and contract.raw is False


def test_text_is_required_as_one_utf8_script(audio_tensors):
    del audio_tensors["TEXT"]
    refused(audio_tensors, "TEXT is missing")
    refused({**audio_tensors, "TEXT": np.array([b"Speaker 1: a", b"Speaker 3: b"], dtype=object)},
            "TEXT must hold exactly one script, got 2 elements")
    refused({**audio_tensors, "TEXT": np.array([b"Speaker 1: caf\xe9 au lait"], dtype=object)},
            "TEXT is not valid UTF-8 (invalid continuation byte at byte 14)")


@pytest.mark.parametrize("present, message", [
    (("VOICE_AUDIO", "VOICE_LENGTHS", "VOICE_LATENTS", "VOICE_FRAMES"), "exactly one of the two"),
    ((), "exactly one of the two"),
    (("VOICE_AUDIO",), "VOICE_AUDIO needs VOICE_LENGTHS"),
    (("VOICE_LATENTS", "VOICE_LENGTHS"), "VOICE_LATENTS needs VOICE_FRAMES"),
])
def test_voices_come_in_exactly_one_complete_form(audio_tensors, latent_tensors, present, message):
    everything = {**audio_tensors, **latent_tensors}
    refused({"TEXT": text(), **{name: everything[name] for name in present}}, message)


def test_voice_tensor_shapes_are_checked(audio_tensors, latent_tensors):
    audio, lengths = audio_tensors["VOICE_AUDIO"], audio_tensors["VOICE_LENGTHS"]
    width = audio.shape[1]
    refused({**audio_tensors, "VOICE_AUDIO": audio[0]}, f"VOICE_AUDIO must have 2 dimensions, got shape [{width}]")
    refused({**latent_tensors, "VOICE_LATENTS": latent_tensors["VOICE_LATENTS"][0]},
            f"VOICE_LATENTS must have 3 dimensions, got shape [5, {LATENT_DIM}]")
    refused({**audio_tensors, "VOICE_AUDIO": audio[:1], "VOICE_LENGTHS": lengths[:1]},
            "the script has 2 speaker(s) [1, 3] but VOICE_AUDIO holds 1 voice(s)")
    refused({**audio_tensors, "VOICE_LENGTHS": lengths[:1]}, "VOICE_LENGTHS has 1 entries for 2 rows of VOICE_AUDIO")
    refused({**latent_tensors, "VOICE_LATENTS": latent_tensors["VOICE_LATENTS"][:, :, :32]},
            f"VOICE_LATENTS has width 32; this model's latents are {LATENT_DIM} wide")


@pytest.mark.parametrize("row, length", [(0, 0), (1, -1), (1, "width + 1")])
def test_lengths_must_lie_within_the_padded_rows(audio_tensors, row, length):
    width = audio_tensors["VOICE_AUDIO"].shape[1]
    length = width + 1 if length == "width + 1" else length
    lengths = audio_tensors["VOICE_LENGTHS"].copy()
    lengths[row] = length
    refused({**audio_tensors, "VOICE_LENGTHS": lengths}, f"VOICE_LENGTHS[{row}] = {length} is outside 1..{width}")


def test_non_finite_voices_are_refused_by_row_and_speaker(audio_tensors, latent_tensors):
    latents = latent_tensors["VOICE_LATENTS"].copy()
    latents[1, 2, 7] = np.nan
    refused({**latent_tensors, "VOICE_LATENTS": latents}, "VOICE_LATENTS[1] (speaker 3) contains NaN")
    audio = audio_tensors["VOICE_AUDIO"].copy()
    audio[0, 100] = np.inf
    refused({**audio_tensors, "VOICE_AUDIO": audio}, "VOICE_AUDIO[0] (speaker 1) contains NaN or infinite samples")
    latents = latent_tensors["VOICE_LATENTS"].copy()
    latents[1, 3:] = np.nan  # beyond VOICE_FRAMES[1] = 3: padding, never read
    assert np.isfinite(read_request({**latent_tensors, "VOICE_LATENTS": latents}, LATENT_DIM)
                       .request.voices[3].latents).all()


@pytest.mark.parametrize("name, value, message", [
    ("CFG_SCALE", np.array([0.0], np.float32), "CFG_SCALE must be in (0, 20], got 0.0"),
    ("DIFFUSION_STEPS", np.array([0], np.int32), "DIFFUSION_STEPS must be in [1, 100], got 0"),
    ("SEED", np.array([-3], np.int64), "SEED must be in [0, 2**63), got -3"),
    ("EXACT_FRAMES", np.array([-2], np.int32), "EXACT_FRAMES must be at least 1, got -2"),
    ("MAX_FRAMES", np.array([4, 5], np.int32), "MAX_FRAMES must hold exactly one value, got shape [2]"),
    ("RAW", np.array([[True, False]]), "RAW must hold exactly one value, got shape [1, 2]"),
])
def test_bad_options_are_refused_by_tensor_name(latent_tensors, name, value, message):
    with pytest.raises(InvalidRequest) as refusal:
        read_request({**latent_tensors, name: value}, LATENT_DIM)
    assert message in str(refusal.value)
    assert not re.search(r"cfg_scale|diffusion_steps|seed |exact_frames|max_frames", str(refusal.value))


def test_options_round_trip_and_the_seed_is_drawn_once(latent_tensors):
    seeded = read_request({**latent_tensors, "SEED": np.array([9], np.int64), "CFG_SCALE": np.array([1.7], np.float32),
                           "EXACT_FRAMES": np.array([4], np.int32), "RAW": np.array([True])}, LATENT_DIM)
    assert decode_options(encode_options(seeded)) == (seeded.request.options, True)

    unseeded = read_request(latent_tensors, LATENT_DIM)
    first, raw = decode_options(encode_options(unseeded))
    second, _ = decode_options(encode_options(unseeded))
    assert raw is False and first.seed is not None and 0 <= first.seed < 2**63
    assert first.seed != second.seed  # each request draws its own seed...
    assert first == SynthesisOptions(seed=first.seed)
    fixed = replace(unseeded, request=replace(unseeded.request, options=first))
    assert decode_options(encode_options(fixed))[0] == first  # ...then keeps it


def test_pad_rows_round_trips_clips_and_latents(latents):
    clips = [np.arange(1, 6, dtype=np.float32), np.arange(1, 4, dtype=np.float32)]
    padded, lengths = pad_rows(clips)
    assert padded.dtype == np.float32 and lengths.dtype == np.int32 and lengths.tolist() == [5, 3]
    np.testing.assert_array_equal(padded, [[1, 2, 3, 4, 5], [1, 2, 3, 0, 0]])
    for original, recovered in zip(clips, unpad_rows(padded, lengths)):
        np.testing.assert_array_equal(recovered, original)

    padded, frames = pad_rows(latents)
    assert padded.shape == (2, 5, LATENT_DIM) and frames.tolist() == [5, 3] and not padded[1, 3:].any()
    for original, recovered in zip(latents, rows(padded, frames, "VOICE_LATENTS", "VOICE_FRAMES")):
        np.testing.assert_array_equal(recovered, original)


def test_rows_checks_lengths_against_the_data():
    data = np.ones((2, 4), np.float32)
    with pytest.raises(InvalidRequest, match=re.escape("L has 3 entries for 2 rows of D")):
        rows(data, np.array([1, 2, 3]), "D", "L")
    with pytest.raises(InvalidRequest, match=re.escape("L[1] = 5 is outside 1..4 (the padded length of D)")):
        rows(data, np.array([[4, 5]]), "D", "L")
    assert [r.shape for r in rows(data, np.array([[4], [1]]), "D", "L")] == [(4,), (1,)]
