"""Audio in and out: reading files, preparing and normalising voice prompts, and writing WAV/FLAC results."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile
import soxr

from engine.config import HOP_SAMPLES, MAX_VOICE_SECONDS, SAMPLE_RATE, VOICE_TARGET_DBFS
from engine.errors import InvalidRequest

NORMALIZE_EPS = 1e-6            # transformers' VibeVoice feature extractor's eps, for the same voice prompts
SILENCE_PEAK = 1 / 32768        # a voice peaking below one 16-bit step is silence
PCM16_PEAK = 10 ** (-1 / 20)    # -1 dBFS: the loudest a PCM16 result may peak
WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


def read_audio(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """The float32 samples ([n] mono, [n, channels] otherwise) and sample rate of an audio file or its bytes."""
    if isinstance(source, bytes):
        described, opened = f"the audio data ({len(source)} bytes)", io.BytesIO(source)
    else:
        described, opened = f"audio file '{source}'", str(source)
        if not Path(source).is_file():
            raise InvalidRequest(f"{described} does not exist; give the path of a {_readable_formats()} file")
    try:
        samples, sample_rate = soundfile.read(opened, dtype="float32")
    except soundfile.SoundFileError as error:
        raise InvalidRequest(f"{described} cannot be read ({getattr(error, 'error_string', error)}); "
                             f"use {_readable_formats()}") from error
    return samples, sample_rate


def prepare_voice(samples: np.ndarray, sample_rate: int, name: str = "voice") -> np.ndarray:
    """A voice sample as VibeVoice hears it: mono, SAMPLE_RATE, float32; its loudness is left as it is."""
    samples = np.asarray(samples)
    if sample_rate <= 0:
        raise InvalidRequest(f"{name}: sample rate {sample_rate} Hz is not positive; give the file's own rate")
    if not np.issubdtype(samples.dtype, np.floating):
        raise InvalidRequest(f"{name}: samples are {samples.dtype}; give float samples in [-1, 1] (read_audio does)")
    if samples.size == 0:
        raise InvalidRequest(f"{name} is empty; give a recording of the speaker of at least "
                             f"{HOP_SAMPLES / SAMPLE_RATE:.3f} s")
    if samples.ndim not in (1, 2) or (samples.ndim == 2 and samples.shape[1] > samples.shape[0]):
        raise InvalidRequest(f"{name}: samples of shape {samples.shape} are not [samples] or [samples, channels]")
    if not np.isfinite(samples).all():
        raise InvalidRequest(f"{name} contains NaN or infinite samples; give finite samples in [-1, 1]")
    seconds = samples.shape[0] / sample_rate
    if seconds > MAX_VOICE_SECONDS:
        raise InvalidRequest(f"{name} lasts {seconds:.1f} s; voice samples may last at most {MAX_VOICE_SECONDS:g} s, "
                             "so cut it shorter")
    mono = (samples.mean(axis=1) if samples.ndim == 2 else samples).astype(np.float32)
    if np.abs(mono).max() < SILENCE_PEAK:
        raise InvalidRequest(f"{name} is silent; give a recording in which the speaker can be heard")
    if sample_rate != SAMPLE_RATE:
        mono = soxr.resample(mono, sample_rate, SAMPLE_RATE, quality="HQ")
    if mono.shape[0] < HOP_SAMPLES:
        raise InvalidRequest(f"{name} lasts {seconds:.3f} s, shorter than one frame; voice samples must last at least "
                             f"{HOP_SAMPLES / SAMPLE_RATE:.3f} s ({HOP_SAMPLES} samples at {SAMPLE_RATE} Hz)")
    return mono


def normalize_voice(samples: np.ndarray) -> np.ndarray:
    """Prepared voice samples at VOICE_TARGET_DBFS RMS, peak-limited to 1: the same float32 operations, in the same
    order, as transformers' VibeVoiceAcousticTokenizerFeatureExtractor(normalize_audio=True)."""
    import torch  # here, not at the top: the orchestrator reads and checks audio without loading torch

    audio = torch.tensor(samples, dtype=torch.float32)
    if audio.ndim != 1 or audio.numel() == 0:
        raise InvalidRequest(f"normalize_voice takes non-empty mono samples, not shape {tuple(audio.shape)}; "
                             "pass the output of prepare_voice")
    rms = torch.sqrt(torch.mean(audio**2))
    audio *= 10 ** (VOICE_TARGET_DBFS / 20) / (rms + NORMALIZE_EPS)
    max_abs = torch.max(torch.abs(audio))
    if max_abs > 1.0:
        audio = audio / (max_abs + NORMALIZE_EPS)
    return audio.numpy()


def voice_frames(num_samples: int) -> int:
    """How many prompt frames (audio placeholders) a voice of `num_samples` samples at SAMPLE_RATE fills."""
    return -(-num_samples // HOP_SAMPLES)


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """int16 samples; audio peaking above -1 dBFS is scaled down to peak there, quieter audio is kept as it is."""
    samples = np.asarray(samples, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise InvalidRequest("audio to write contains NaN or infinite samples; only finite samples can be written")
    peak = float(np.abs(samples).max(initial=0.0))
    gain = PCM16_PEAK / peak if peak > PCM16_PEAK else 1.0
    return np.round(samples * gain * 32767).astype(np.int16)


def write_audio(path: str | Path, samples: np.ndarray, raw: bool = False) -> None:
    """Write SAMPLE_RATE audio as .wav or .flac: PCM16 via to_pcm16, or with raw=True the samples unchanged as
    32-bit float WAV."""
    path = Path(path)
    file_format = WRITE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise InvalidRequest(f"cannot write '{path}': its suffix '{path.suffix}' is not one of "
                             f"{', '.join(WRITE_FORMATS)}")
    if raw and file_format != "WAV":
        raise InvalidRequest(f"cannot write '{path}' raw: {file_format} cannot hold float samples; use a .wav path")
    if raw:
        soundfile.write(path, np.asarray(samples, dtype=np.float32), SAMPLE_RATE, subtype="FLOAT", format="WAV")
    else:
        soundfile.write(path, to_pcm16(samples), SAMPLE_RATE, subtype="PCM_16", format=file_format)


def _readable_formats() -> str:
    """The audio formats read_audio accepts with this machine's libsndfile."""
    return ", ".join(name for name in ("WAV", "FLAC", "OGG", "MP3") if name in soundfile.available_formats())
