"""Prompt assembly: a request's script and voices -> LM input embeddings, through the checkpoint's chat template."""
from __future__ import annotations

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


def voice_mean_latents(runtime: Runtime, request: SynthesisRequest, voice_order: list[int]) -> list[torch.Tensor]:
    """Mean latents [frames, D] per voice; recorded voices are normalised and encoded in one padded batch."""
    latents: dict[int, torch.Tensor] = {}
    recorded = [s for s in voice_order if request.voices[s].audio is not None]
    if recorded:
        clips = [normalize_voice(request.voices[s].audio) for s in recorded]
        width = max(voice_frames(len(c)) for c in clips) * HOP_SAMPLES
        batch = np.zeros((len(clips), 1, width), dtype=np.float32)
        for row, clip in enumerate(clips):
            batch[row, 0, :len(clip)] = clip
        encoded = runtime.encode_voice(torch.from_numpy(batch).to(runtime.device, runtime.dtype))
        for row, (speaker, clip) in enumerate(zip(recorded, clips)):
            latents[speaker] = encoded[row, :voice_frames(len(clip))]
    for speaker in voice_order:
        given = request.voices[speaker].latents
        if given is not None:
            if given.ndim != 2 or given.shape[1] != runtime.spec.latent_dim or given.shape[0] < 1:
                raise InvalidRequest(f"latents for speaker {speaker} have shape {tuple(given.shape)}; "
                                     f"expected [frames, {runtime.spec.latent_dim}]")
            if not np.isfinite(given).all():
                raise InvalidRequest(f"latents for speaker {speaker} contain NaN or infinite values")
            latents[speaker] = torch.as_tensor(given, dtype=runtime.dtype, device=runtime.device)
    return [latents[s] for s in voice_order]


def sample_voice_latents(means: list[torch.Tensor], generator: torch.Generator, vae_std: float) -> list[torch.Tensor]:
    """The sigma-VAE sample of each voice, drawing noise exactly as transformers does, so seeds reproduce its
    output: one padded batch, a scale per voice, then a normal filled into the encoder output's memory layout
    ([voices, D, frames] permuted; torch fills non-contiguous tensors element by element, a different stream)."""
    width = max(m.shape[0] for m in means)
    scale = vae_std * torch.randn(len(means), generator=generator)
    noise = torch.empty(len(means), means[0].shape[1], width).permute(0, 2, 1).normal_(generator=generator)
    return [m + (scale[i] * noise[i, :m.shape[0]]).to(m) for i, m in enumerate(means)]


def prepare_prompt(runtime: Runtime, processor, request: SynthesisRequest, seed: int) -> PreparedPrompt:
    """Prompt embeddings [L, H]: token embeddings with each voice placeholder replaced by its frame's embedding."""
    spec = runtime.spec
    _, voice_order = conversation(request)
    means = voice_mean_latents(runtime, request, voice_order)
    ids = prompt_token_ids(processor, request, [m.shape[0] for m in means])
    generator = torch.Generator().manual_seed(seed)
    sampled = torch.cat(sample_voice_latents(means, generator, spec.vae_std))
    ids_tensor = torch.tensor(ids, dtype=torch.long, device=runtime.device)
    embeds = runtime.embed(ids_tensor).clone()
    placeholders = (ids_tensor == spec.audio_token_id).nonzero().squeeze(1)
    if placeholders.numel() != sampled.shape[0]:
        raise InvalidRequest(f"the prompt holds {placeholders.numel()} voice placeholders for {sampled.shape[0]} "
                             "voice frames: the checkpoint's tokenizer splits the audio token")
    embeds[placeholders] = runtime.acoustic_connector((sampled + spec.latent_bias) * spec.latent_scale)
    return PreparedPrompt(embeds=embeds, generator=generator, seed=seed)
