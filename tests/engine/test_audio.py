"""engine.audio: reading audio, preparing and normalising voice prompts, writing results."""
from pathlib import Path

import numpy as np
import pytest
import soundfile
from transformers import VibeVoiceAcousticTokenizerFeatureExtractor

from engine.audio import normalize_voice, prepare_voice, read_audio, to_pcm16, voice_frames, write_audio
from engine.config import HOP_SAMPLES, MAX_VOICE_SECONDS, SAMPLE_RATE, VOICE_TARGET_DBFS
from engine.errors import InvalidRequest

EXAMPLE_VOICES = Path(__file__).parents[2] / "examples" / "voices"


def sine(hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def dbfs(samples: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))))


# read_audio and write_audio

def test_raw_float_wav_round_trip_is_exact(tmp_path):
    samples = np.random.default_rng(0).uniform(-1.5, 1.5, SAMPLE_RATE).astype(np.float32)
    write_audio(tmp_path / "raw.wav", samples, raw=True)
    read, rate = read_audio(tmp_path / "raw.wav")
    assert rate == SAMPLE_RATE and read.dtype == np.float32
    np.testing.assert_array_equal(read, samples)


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".WAV"])
def test_pcm16_round_trip_gives_back_to_pcm16(tmp_path, suffix):
    samples = sine(220, 0.5, SAMPLE_RATE, amplitude=0.3)
    write_audio(tmp_path / f"out{suffix}", samples)
    read, rate = read_audio(tmp_path / f"out{suffix}")
    assert rate == SAMPLE_RATE and read.shape == samples.shape
    np.testing.assert_array_equal(read * 32768, to_pcm16(samples))


def test_read_audio_accepts_bytes_and_keeps_channels(tmp_path):
    stereo = np.stack([sine(300, 0.2, 16000), sine(500, 0.2, 16000)], axis=1)
    soundfile.write(tmp_path / "stereo.wav", stereo, 16000, subtype="FLOAT")
    samples, rate = read_audio((tmp_path / "stereo.wav").read_bytes())
    assert rate == 16000 and samples.shape == (3200, 2) and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, stereo)


def test_unreadable_file_is_refused_naming_it_and_the_formats_that_work(tmp_path):
    (tmp_path / "notes.wav").write_text("not audio")
    with pytest.raises(InvalidRequest, match=r"notes\.wav.*cannot be read.*WAV, FLAC, OGG"):
        read_audio(tmp_path / "notes.wav")


def test_unreadable_bytes_are_refused():
    with pytest.raises(InvalidRequest, match=r"audio data \(9 bytes\) cannot be read.*WAV, FLAC"):
        read_audio(b"not audio")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match=r"missing\.wav' does not exist"):
        read_audio(str(tmp_path / "missing.wav"))


def test_unsupported_suffix_is_refused_listing_the_supported_ones(tmp_path):
    with pytest.raises(InvalidRequest, match=r"'\.mp3' is not one of \.wav, \.flac"):
        write_audio(tmp_path / "out.mp3", sine(220, 0.1, SAMPLE_RATE))


def test_raw_flac_is_refused_pointing_at_wav(tmp_path):
    with pytest.raises(InvalidRequest, match=r"FLAC cannot hold float samples; use a \.wav path"):
        write_audio(tmp_path / "out.flac", sine(220, 0.1, SAMPLE_RATE), raw=True)


# to_pcm16

def test_to_pcm16_brings_a_loud_peak_down_to_minus_1_dbfs():
    pcm = to_pcm16(sine(220, 0.1, SAMPLE_RATE, amplitude=2.0))
    assert pcm.dtype == np.int16
    assert np.abs(pcm).max() == round(10 ** (-1 / 20) * 32767)


def test_to_pcm16_keeps_quiet_audio_at_its_level():
    samples = sine(220, 0.1, SAMPLE_RATE, amplitude=0.1)
    np.testing.assert_array_equal(to_pcm16(samples), np.round(samples * 32767).astype(np.int16))


def test_to_pcm16_keeps_silence_silent():
    assert not to_pcm16(np.zeros(100, dtype=np.float32)).any()
    assert to_pcm16(np.zeros(0, dtype=np.float32)).shape == (0,)


def test_to_pcm16_refuses_nan():
    with pytest.raises(InvalidRequest, match="NaN or infinite"):
        to_pcm16(np.array([0.0, np.nan], dtype=np.float32))


# prepare_voice

def test_48k_stereo_becomes_24k_mono_with_the_same_pitch():
    left, right = sine(440, 2.0, 48000, amplitude=0.6), sine(440, 2.0, 48000, amplitude=0.2)
    voice = prepare_voice(np.stack([left, right], axis=1), 48000)
    assert voice.dtype == np.float32 and voice.shape == (2 * SAMPLE_RATE,)
    assert dominant_hz(voice, SAMPLE_RATE) == pytest.approx(440, abs=1)
    assert np.abs(voice[1000:-1000]).max() == pytest.approx(0.4, abs=1e-3)  # the mean of the channels


def test_voice_at_24k_mono_is_kept_as_it_is():
    samples = sine(300, 1.0, SAMPLE_RATE, amplitude=0.01)
    np.testing.assert_array_equal(prepare_voice(samples, SAMPLE_RATE), samples)


def test_ten_minute_voice_is_refused_saying_its_length_and_the_limit():
    with pytest.raises(InvalidRequest, match=rf"alice lasts 600\.0 s.*at most {MAX_VOICE_SECONDS:g} s"):
        prepare_voice(np.full(600 * 8000, 0.1, dtype=np.float32), 8000, name="alice")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_voice_is_refused(bad):
    samples = sine(300, 1.0, SAMPLE_RATE)
    samples[100] = bad
    with pytest.raises(InvalidRequest, match="bob contains NaN or infinite samples"):
        prepare_voice(samples, SAMPLE_RATE, name="bob")


@pytest.mark.parametrize("samples, problem", [
    (np.zeros(0, dtype=np.float32), "is empty"),
    (np.zeros((0, 2), dtype=np.float32), "is empty"),
    (np.zeros(SAMPLE_RATE, dtype=np.float32), "is silent"),
    (np.full(SAMPLE_RATE, 1e-6, dtype=np.float32), "is silent"),
    (np.zeros((2, SAMPLE_RATE), dtype=np.float32), r"not \[samples\] or \[samples, channels\]"),
    (np.zeros(SAMPLE_RATE, dtype=np.int16), "give float samples"),
])
def test_unusable_voice_is_refused_by_name(samples, problem):
    with pytest.raises(InvalidRequest, match=f"carol.*{problem}"):
        prepare_voice(samples, SAMPLE_RATE, name="carol")


def test_voice_shorter_than_one_frame_is_refused():
    with pytest.raises(InvalidRequest, match=rf"shorter than one frame.*{HOP_SAMPLES} samples"):
        prepare_voice(sine(300, 0.12, 48000), 48000)


def test_one_frame_of_voice_is_enough():
    assert prepare_voice(sine(300, HOP_SAMPLES / SAMPLE_RATE, SAMPLE_RATE), SAMPLE_RATE).shape == (HOP_SAMPLES,)


@pytest.mark.parametrize("rate", [0, -24000])
def test_non_positive_sample_rate_is_refused(rate):
    with pytest.raises(InvalidRequest, match=f"voice: sample rate {rate} Hz is not positive"):
        prepare_voice(sine(300, 1.0, SAMPLE_RATE), rate)


def test_example_voices_are_usable_prompts():
    for name in ("alice", "bob"):
        samples, rate = read_audio(EXAMPLE_VOICES / f"{name}.wav")
        assert rate == SAMPLE_RATE and samples.ndim == 1
        assert 2.5 < len(prepare_voice(samples, rate, name=name)) / SAMPLE_RATE < 3.5


# normalize_voice and voice_frames

@pytest.mark.parametrize("make", [
    lambda rng: 0.01 * rng.standard_normal(10000),                          # quiet noise: scaled up to the target
    lambda rng: 0.7 * np.sin(np.arange(7000) / 5.0),                         # loud tone: scaled down to the target
    lambda rng: np.where(np.arange(9600) % 3000 == 0, 0.9, 0.001),           # clicks: peak-limited after scaling
    lambda rng: prepare_voice(*read_audio(EXAMPLE_VOICES / "bob.wav")),      # a real prepared voice
])
def test_normalize_voice_matches_transformers_feature_extractor(make):
    samples = np.asarray(make(np.random.default_rng(0)), dtype=np.float32)
    extracted = VibeVoiceAcousticTokenizerFeatureExtractor()(samples, sampling_rate=SAMPLE_RATE)["input_values"]
    normalized = normalize_voice(samples)
    assert normalized.dtype == np.float32 and normalized.shape == samples.shape
    np.testing.assert_allclose(normalized, extracted[0, 0, : len(samples)].numpy(), rtol=0, atol=1e-7)


def test_normalize_voice_reaches_the_target_level_and_never_exceeds_full_scale():
    tone = normalize_voice(sine(300, 1.0, SAMPLE_RATE, amplitude=0.9))
    assert dbfs(tone) == pytest.approx(VOICE_TARGET_DBFS, abs=1e-3)
    clicks = np.where(np.arange(9600) % 3000 == 0, 0.9, 0.001).astype(np.float32)
    assert np.abs(normalize_voice(clicks)).max() <= 1.0


def test_normalize_voice_leaves_its_input_alone():
    samples = sine(300, 1.0, SAMPLE_RATE)
    before = samples.copy()
    normalize_voice(samples)
    np.testing.assert_array_equal(samples, before)


@pytest.mark.parametrize("num_samples, frames", [(0, 0), (1, 1), (HOP_SAMPLES, 1), (HOP_SAMPLES + 1, 2),
                                                 (10 * HOP_SAMPLES, 10)])
def test_voice_frames_is_one_frame_per_started_hop(num_samples, frames):
    assert voice_frames(num_samples) == frames
