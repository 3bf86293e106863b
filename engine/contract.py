"""The Triton tensor contract (model_repository/README.md): request tensors -> a validated request, and the
packing of per-voice latents into padded tensors between models. Plain NumPy, so it is tested without Triton."""
from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, replace

import numpy as np

from engine.audio import prepare_voice
from engine.config import SAMPLE_RATE
from engine.errors import InvalidRequest
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.script import parse_script

ENSEMBLE = "vibevoice"
# Optional scalar inputs: tensor name -> (SynthesisOptions field, NumPy dtype). Zero frame counts mean "not set".
OPTION_INPUTS = {
    "CFG_SCALE": ("cfg_scale", np.float32),
    "DIFFUSION_STEPS": ("diffusion_steps", np.int32),
    "SEED": ("seed", np.int64),
    "MAX_FRAMES": ("max_frames", np.int32),
    "EXACT_FRAMES": ("exact_frames", np.int32),
}
VOICE_INPUTS = ("VOICE_AUDIO", "VOICE_LENGTHS", "VOICE_LATENTS", "VOICE_FRAMES")


@dataclass(frozen=True)
class ContractRequest:
    request: SynthesisRequest
    raw: bool  # skip postprocessing


def scalar(tensors: dict, name: str, dtype):
    """The one value of an optional [1] tensor, or None when it is absent."""
    value = tensors.get(name)
    if value is None:
        return None
    value = np.asarray(value)
    if value.size != 1:
        raise InvalidRequest(f"{name} must hold exactly one value, got shape {list(value.shape)}")
    return value.reshape(()).astype(dtype).item()


def read_text(tensors: dict) -> str:
    text = tensors.get("TEXT")
    if text is None:
        raise InvalidRequest("TEXT is missing: send the script as a BYTES tensor of shape [1]")
    text = np.asarray(text, dtype=object).reshape(-1)
    if text.size != 1:
        raise InvalidRequest(f"TEXT must hold exactly one script, got {text.size} elements")
    value = text[0]
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"TEXT is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_options(tensors: dict) -> SynthesisOptions:
    given = {}
    for name, (field, dtype) in OPTION_INPUTS.items():
        value = scalar(tensors, name, dtype)
        if value is not None and not (field in ("max_frames", "exact_frames") and value == 0):
            given[field] = value
    try:
        return SynthesisOptions(**given)
    except InvalidRequest as exc:  # name the tensor, not the Python field
        names = {field: name for name, (field, _) in OPTION_INPUTS.items()}
        message = str(exc)
        for field, name in names.items():
            message = message.replace(field, name)
        raise InvalidRequest(message) from None


def read_voices(tensors: dict, speakers: tuple[int, ...], latent_dim: int) -> dict[int, Voice]:
    """One voice per script speaker, rows in ascending speaker id: audio (VOICE_AUDIO [S, N] with VOICE_LENGTHS
    [S]) or cached latents (VOICE_LATENTS [S, T, D] with VOICE_FRAMES [S])."""
    audio, latents = tensors.get("VOICE_AUDIO"), tensors.get("VOICE_LATENTS")
    if (audio is None) == (latents is None):
        raise InvalidRequest("give the voices as VOICE_AUDIO with VOICE_LENGTHS, or as VOICE_LATENTS with "
                             "VOICE_FRAMES (exactly one of the two)")
    data, lengths_name, rank = ((audio, "VOICE_LENGTHS", 2) if audio is not None else (latents, "VOICE_FRAMES", 3))
    data_name = "VOICE_AUDIO" if audio is not None else "VOICE_LATENTS"
    lengths = tensors.get(lengths_name)
    if lengths is None:
        raise InvalidRequest(f"{data_name} needs {lengths_name} (the valid length of each row)")
    data = np.asarray(data)
    if data.ndim != rank:
        raise InvalidRequest(f"{data_name} must have {rank} dimensions, got shape {list(data.shape)}")
    if data.shape[0] != len(speakers):
        raise InvalidRequest(f"the script has {len(speakers)} speaker(s) {list(speakers)} but {data_name} holds "
                             f"{data.shape[0]} voice(s); give one row per speaker, in ascending speaker id")
    if latents is not None and data.shape[2] != latent_dim:
        raise InvalidRequest(f"VOICE_LATENTS has width {data.shape[2]}; this model's latents are {latent_dim} wide "
                             f"(shape [voices, frames, {latent_dim}])")
    voices = {}
    for row, (speaker, values) in enumerate(zip(speakers, rows(data, lengths, data_name, lengths_name))):
        name = f"{data_name}[{row}] (speaker {speaker})"
        if audio is not None:
            voices[speaker] = Voice(audio=prepare_voice(values, SAMPLE_RATE, name=name))
        elif not np.isfinite(values).all():
            raise InvalidRequest(f"{name} contains NaN or infinite values")
        else:
            voices[speaker] = Voice(latents=values.astype(np.float32))
    return voices


def rows(data: np.ndarray, lengths: np.ndarray, data_name: str, lengths_name: str) -> list[np.ndarray]:
    """The valid part of each zero-padded row of `data`, checking `lengths` against it."""
    lengths = np.asarray(lengths).reshape(-1)
    if lengths.shape[0] != data.shape[0]:
        raise InvalidRequest(f"{lengths_name} has {lengths.shape[0]} entries for {data.shape[0]} rows of {data_name}")
    out = []
    for row, length in enumerate(lengths.tolist()):
        if not 0 < length <= data.shape[1]:
            raise InvalidRequest(f"{lengths_name}[{row}] = {length} is outside 1..{data.shape[1]} "
                                 f"(the padded length of {data_name})")
        out.append(data[row, :length])
    return out


def read_request(tensors: dict, latent_dim: int) -> ContractRequest:
    """A validated request from the ensemble's input tensors (name -> array; absent optional inputs missing)."""
    script = parse_script(read_text(tensors))
    voices = read_voices(tensors, script.speakers, latent_dim)
    raw = scalar(tensors, "RAW", np.bool_)
    return ContractRequest(SynthesisRequest(script, voices, read_options(tensors)), bool(raw))


def encode_options(contract: ContractRequest) -> bytes:
    """The request's options as the generator receives them (OPTIONS, JSON), with the seed drawn if none was given."""
    options = contract.request.options
    if options.seed is None:
        options = replace(options, seed=secrets.randbits(63))
    return json.dumps({**asdict(options), "raw": contract.raw}).encode()


def decode_options(data: bytes) -> tuple[SynthesisOptions, bool]:
    """(options, raw) from encode_options' JSON."""
    fields = json.loads(data)
    raw = bool(fields.pop("raw"))
    return SynthesisOptions(**fields), raw


def pad_rows(values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-padded float32 [V, T, ...] and the lengths [V] int32 of arrays [length, ...] (clips or latents)."""
    lengths = np.array([v.shape[0] for v in values], dtype=np.int32)
    padded = np.zeros((len(values), int(lengths.max()), *values[0].shape[1:]), dtype=np.float32)
    for row, v in enumerate(values):
        padded[row, :v.shape[0]] = v
    return padded, lengths


def unpad_rows(padded: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return [padded[row, :n] for row, n in enumerate(np.asarray(lengths).reshape(-1).tolist())]
