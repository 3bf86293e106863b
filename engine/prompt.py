"""Prompt assembly: a request's script and voices -> LM input embeddings, through the checkpoint's chat template."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from engine.audio import normalize_voice, voice_frames
from engine.checkpoint import CHAT_TEMPLATE
from engine.config import HOP_SAMPLES
from engine.errors import InvalidRequest
from engine.request import SynthesisRequest
from engine.runtime.base import Runtime


@dataclass
class PreparedPrompt:
    """What the batch engine needs to start a request: its prompt embeddings and its random generator."""

    embeds: torch.Tensor        # [L, H]
    generator: torch.Generator  # already advanced past the voice sampling
    seed: int

    @property
    def length(self) -> int:
        return self.embeds.shape[0]


def conversation(request: SynthesisRequest) -> tuple[list[dict], list[int]]:
    """The chat-template conversation (roles are 0-based prompt speakers) and the script speaker of each voice,
    in the order the template lists voices (each speaker's first turn carries its voice)."""
    messages, voice_order = [], []
    for turn in request.script.turns:
        content = [{"type": "text", "text": turn.text}]
        if turn.speaker not in voice_order:
            voice_order.append(turn.speaker)
            content.append({"type": "audio", "path": f"speaker-{turn.speaker}"})
        messages.append({"role": str(request.script.prompt_speaker(turn.speaker)), "content": content})
    return messages, voice_order


def prompt_token_ids(processor, request: SynthesisRequest, frames: list[int]) -> list[int]:
    """Render the template with one placeholder per voice, expand each to its frame count, tokenise."""
    messages, _ = conversation(request)
    template = getattr(processor, "chat_template", None) or CHAT_TEMPLATE
    text = processor.apply_chat_template(messages, chat_template=template, tokenize=False)
    pieces = text.split(processor.audio_token)
    if len(pieces) != len(frames) + 1:
        raise InvalidRequest(f"the chat template placed {len(pieces) - 1} voice placeholders for {len(frames)} voices")
    expanded = pieces[0] + "".join(processor.audio_token * n + piece for n, piece in zip(frames, pieces[1:]))
    return processor.tokenizer(expanded, add_special_tokens=False)["input_ids"]


def encode_voices(runtime: Runtime, clips: list[np.ndarray]) -> list[np.ndarray]:
    """Mean latents [frames, D] of prepared voice clips (see engine.audio.prepare_voice), normalised and encoded in
    one zero-padded batch. The acoustic_encoder Triton model and the in-process path both come through here."""
    clips = [normalize_voice(c) for c in clips]
    width = max(voice_frames(len(c)) for c in clips) * HOP_SAMPLES
    batch = np.zeros((len(clips), 1, width), dtype=np.float32)
    for row, clip in enumerate(clips):
        batch[row, 0, :len(clip)] = clip
    encoded = runtime.encode_voice(torch.from_numpy(batch).to(runtime.device, runtime.dtype)).float().cpu().numpy()
    return [encoded[row, :voice_frames(len(clip))] for row, clip in enumerate(clips)]


def check_latents(latents: np.ndarray, latent_dim: int, name: str) -> np.ndarray:
    """Given voice latents as float32 [frames, latent_dim], or InvalidRequest naming `name` and what is wrong."""
    latents = np.asarray(latents)
    if latents.ndim != 2 or latents.shape[1] != latent_dim or latents.shape[0] < 1:
        raise InvalidRequest(f"latents for {name} have shape {tuple(latents.shape)}; expected [frames, {latent_dim}]")
    if not np.isfinite(latents).all():
        raise InvalidRequest(f"latents for {name} contain NaN or infinite values")
    return latents.astype(np.float32, copy=False)


@dataclass
class PromptInputs:
    """A request reduced to what the frame loop needs: prompt token ids and each voice's mean latents, in the order
    the prompt places voices. This is what Triton's preprocess model sends to the generator."""

    token_ids: list[int]
    voice_latents: list[np.ndarray]  # [frames, D] each


def prompt_inputs(processor, request: SynthesisRequest, latent_dim: int,
                  encode: Callable[[list[np.ndarray]], list[np.ndarray]]) -> PromptInputs:
    """Tokenise the request's conversation; recorded voices are encoded with `encode` (clips -> mean latents)."""
    _, voice_order = conversation(request)
    latents: dict[int, np.ndarray] = {}
    recorded = [s for s in voice_order if request.voices[s].audio is not None]
    if recorded:
        latents.update(zip(recorded, encode([request.voices[s].audio for s in recorded])))
    for speaker in voice_order:
        given = request.voices[speaker].latents
        if given is not None:
            latents[speaker] = check_latents(given, latent_dim, f"speaker {speaker}")
    means = [latents[s] for s in voice_order]
    return PromptInputs(prompt_token_ids(processor, request, [m.shape[0] for m in means]), means)


def sample_voice_latents(means: list[torch.Tensor], generator: torch.Generator, vae_std: float) -> list[torch.Tensor]:
    """The sigma-VAE sample of each voice, drawing noise exactly as transformers does, so seeds reproduce its
    output: one padded batch, a scale per voice, then a normal filled into the encoder output's memory layout
    ([voices, D, frames] permuted; torch fills non-contiguous tensors element by element, a different stream)."""
    width = max(m.shape[0] for m in means)
    scale = vae_std * torch.randn(len(means), generator=generator)
    noise = torch.empty(len(means), means[0].shape[1], width).permute(0, 2, 1).normal_(generator=generator)
    return [m + (scale[i] * noise[i, :m.shape[0]]).to(m) for i, m in enumerate(means)]


def upload(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` (nested lists or an array) as a `dtype` tensor on `device`, queued behind the device's work rather
    than waiting for it: on CUDA staged through pinned memory (a copy from pageable memory would first wait for
    everything queued on the stream, a frame in flight included)."""
    host = torch.as_tensor(np.asarray(values), dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def embed_prompt(runtime: Runtime, inputs: PromptInputs, seed: int) -> PreparedPrompt:
    """Prompt embeddings [L, H]: token embeddings with each voice placeholder replaced by its sampled frame's
    embedding; the seed's generator draws the voice noise first, then the diffusion noise."""
    spec = runtime.spec
    generator = torch.Generator().manual_seed(seed)
    sampled = torch.cat(sample_voice_latents([torch.as_tensor(m) for m in inputs.voice_latents], generator,
                                             spec.vae_std))
    ids = np.asarray(inputs.token_ids, dtype=np.int64)
    placeholders = np.flatnonzero(ids == spec.audio_token_id)  # found on the host: no wait for the device
    if len(placeholders) != sampled.shape[0]:
        raise InvalidRequest(f"the prompt holds {len(placeholders)} voice placeholders for {sampled.shape[0]} "
                             "voice frames")
    embeds = runtime.embed(upload(ids, torch.long, runtime.device)).clone()
    voices = upload(sampled, runtime.dtype, runtime.device)
    embeds[upload(placeholders, torch.long, runtime.device)] = runtime.acoustic_connector(
        (voices + spec.latent_bias) * spec.latent_scale)
    return PreparedPrompt(embeds=embeds, generator=generator, seed=seed)


def prepare_prompt(runtime: Runtime, processor, request: SynthesisRequest, seed: int) -> PreparedPrompt:
    """A request's prompt, start to finish, in this process."""
    inputs = prompt_inputs(processor, request, runtime.spec.latent_dim, lambda clips: encode_voices(runtime, clips))
    return embed_prompt(runtime, inputs, seed)
