"""Encoding generated audio into the formats clients ask for, and decoding stored files back to samples."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile

from engine.config import SAMPLE_RATE
from engine.errors import InvalidRequest


@dataclass(frozen=True)
class AudioFormat:
    name: str
    container: str | None  # soundfile's format; None for headerless PCM
    subtype: str | None
    media_type: str
    extension: str


FORMATS = {f.name: f for f in (
    AudioFormat("wav", "WAV", "PCM_16", "audio/wav", "wav"),
    AudioFormat("flac", "FLAC", "PCM_16", "audio/flac", "flac"),
    AudioFormat("ogg", "OGG", "VORBIS", "audio/ogg", "ogg"),
    AudioFormat("opus", "OGG", "OPUS", "audio/ogg", "opus"),
    AudioFormat("mp3", "MP3", "MPEG_LAYER_III", "audio/mpeg", "mp3"),
    AudioFormat("pcm", None, None, "audio/pcm", "pcm"),  # 16-bit little-endian mono at 24 kHz
)}


def _supported(fmt: AudioFormat) -> bool:
    if fmt.container is None:
        return True
    return (fmt.container in soundfile.available_formats()
            and fmt.subtype in soundfile.available_subtypes(fmt.container))


SUPPORTED = {name: fmt for name, fmt in FORMATS.items() if _supported(fmt)}


def audio_format(name: str) -> AudioFormat:
    fmt = SUPPORTED.get(str(name).lower())
    if fmt is None:
        raise InvalidRequest(f"audio format {name!r} is not available here; choose one of {', '.join(SUPPORTED)}")
    return fmt


def pcm16(samples: np.ndarray) -> np.ndarray:
    """Samples as int16, with no gain: Triton's postprocess already limits peaks below full scale, and a fixed
    conversion lets streamed chunks and the stored file hold the same samples."""
    return np.round(np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767).astype(np.int16)


def encode(samples: np.ndarray, fmt: AudioFormat) -> bytes:
    """24 kHz mono float samples -> the bytes of a file in `fmt` (PCM16 where the format has a choice)."""
    pcm = pcm16(samples)
    if fmt.container is None:
        return pcm.astype("<i2").tobytes()
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, SAMPLE_RATE, format=fmt.container, subtype=fmt.subtype)
    return buffer.getvalue()


def decode(data: bytes, fmt: AudioFormat) -> np.ndarray:
    """A stored file's samples as float32 mono at 24 kHz, on pcm16's scale (1.0 = 32767), so that decoding and
    encoding again gives back the same PCM16 samples (a transcode between lossless formats is exact)."""
    if fmt.container is None:
        pcm = np.frombuffer(data, dtype="<i2")
    else:
        pcm, _ = soundfile.read(io.BytesIO(data), dtype="int16")
    samples = pcm.astype(np.float32) / 32767
    return samples if samples.ndim == 1 else samples.mean(axis=1)


def transcode(data: bytes, source: AudioFormat, target: AudioFormat) -> bytes:
    return data if source == target else encode(decode(data, source), target)


def streaming_wav_header() -> bytes:
    """A WAV header for PCM16 mono of unknown length (sizes at their maximum), to stream WAV as it is made."""
    rate, block = SAMPLE_RATE, 2
    return (b"RIFF" + (0xFFFFFFFF).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
            + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + rate.to_bytes(4, "little")
            + (rate * block).to_bytes(4, "little") + block.to_bytes(2, "little") + (16).to_bytes(2, "little")
            + b"data" + (0xFFFFFFFF).to_bytes(4, "little"))
