"""The frame loop: many requests advanced together, one batched step per frame, joining and leaving between steps.

State lives in preallocated per-slot tensors (KV caches, streaming-conv caches, last hidden states), so a step
gathers the active slots' rows and scatters results back. Each slot owns two KV rows: the prompt-conditioned
(positive) context and the unconditional (negative) one that classifier-free guidance needs.

One frame, for all active slots at once:
  1. pick each slot's token from the logits of its last LM step (only VibeVoice's four tokens are scored);
  2. speech slots: batched diffusion solve -> latents -> streaming decoder -> 3200 samples -> streaming
     semantic encoder; the next LM input is acoustic_connector(latent) + semantic_connector(semantic);
     other tokens feed their token embedding; audio_bos restarts the negative context, audio_eos clears the
     conv caches (a turn boundary), eos or a frame cap ends the request;
  3. one batched LM step over the positive and negative rows of every continuing slot. The negative row is
     speculative: it is only kept if the next token is speech, as in Microsoft's original loop.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from engine.config import EngineSettings
from engine.errors import InvalidRequest
from engine.prompt import PreparedPrompt
from engine.request import SynthesisOptions
from engine.runtime.base import Runtime
from engine.sampler import schedule_table, solve


@dataclass
class FrameOutput:
    """What one step produced for one stream."""

    stream_id: int
    audio: np.ndarray | None      # 3200 float32 samples for a speech frame, else None
    finished: bool = False
    reason: str | None = None     # why it finished: eos, max_frames, exact_frames, context, cancelled


@dataclass
class _Slot:
    stream_id: int
    options: SynthesisOptions
    generator: torch.Generator
    frame_limit: int
    positive_len: int             # tokens in the positive KV row
    negative_len: int = 0         # committed tokens in the negative KV row
    steps: int = 0                # tokens generated: speech frames plus turn boundaries, as the original counts


class BatchEngine:
    """Advances up to `settings.max_streams` requests in lock-step. Not thread-safe: one owner calls it."""

    def __init__(self, runtime: Runtime, settings: EngineSettings = EngineSettings()):
        self.runtime = runtime
        self.settings = settings
        spec, n, dev, dt = runtime.spec, settings.max_streams, runtime.device, runtime.dtype
        kv_shape = (spec.num_layers, 2 * n, spec.kv_heads, settings.max_context, spec.head_dim)
        self._keys = torch.zeros(kv_shape, dtype=dt, device=dev)
        self._values = torch.zeros(kv_shape, dtype=dt, device=dev)
        self._decoder_caches = [torch.zeros(n, c.channels, c.width, dtype=dt, device=dev) for c in spec.decoder_caches]
        self._semantic_caches = [torch.zeros(n, c.channels, c.width, dtype=dt, device=dev)
                                 for c in spec.semantic_caches]
        self._positive_hidden = torch.zeros(n, spec.hidden_size, dtype=dt, device=dev)
        self._negative_hidden = torch.zeros(n, spec.hidden_size, dtype=dt, device=dev)
        self._logits = torch.zeros(n, len(spec.token_ids), dtype=dt, device=dev)
        self._token_ids = torch.tensor(spec.token_ids, device=dev)
        self._speech_choice = spec.token_ids.index(spec.audio_token_id)
        self._slots: list[_Slot | None] = [None] * n
        self._ids = itertools.count()

    @property
    def active(self) -> int:
        return sum(s is not None for s in self._slots)

    @property
    def free_slots(self) -> int:
        return self.settings.max_streams - self.active

    def add(self, prompt: PreparedPrompt, options: SynthesisOptions) -> int:
        """Start a request between steps (prefill of its prompt); returns its stream id."""
        if prompt.length + 1 >= self.settings.max_context:
            raise InvalidRequest(f"the prompt is {prompt.length} tokens; this engine holds at most "
                                 f"{self.settings.max_context - 2} (shorten the script or the voice samples)")
        try:
            index = self._slots.index(None)
        except ValueError:
            raise RuntimeError("no free stream slot: check free_slots before add()") from None
        spec = self.runtime.spec
        self._prefill(2 * index, prompt.embeds[None])
        bos = self.runtime.embed(torch.tensor([[spec.audio_bos_id]], device=self.runtime.device))
        self._prefill(2 * index + 1, bos)
        for cache in self._decoder_caches + self._semantic_caches:
            cache[index].zero_()
        limit = options.exact_frames or options.max_frames or self.settings.default_max_frames
        slot = _Slot(stream_id=next(self._ids), options=options, generator=prompt.generator, frame_limit=limit,
                     positive_len=prompt.length)
        self._slots[index] = slot
        return slot.stream_id

    def cancel(self, stream_id: int) -> bool:
        """Free a stream's slot now; it produces nothing more."""
        for i, slot in enumerate(self._slots):
            if slot is not None and slot.stream_id == stream_id:
                self._slots[i] = None
                return True
        return False

    def _prefill(self, row: int, embeds: torch.Tensor) -> None:
        """Run tokens [1, S, H] into KV row `row` from position 0 (the row's old content is dead), keeping the last
        position's hidden state and logits."""
        spec, dev = self.runtime.spec, self.runtime.device
        length = embeds.shape[1]
        empty = torch.zeros(spec.num_layers, 1, spec.kv_heads, 0, spec.head_dim, dtype=self.runtime.dtype, device=dev)
        positions = torch.arange(length, device=dev)[None]
        hidden, logits, keys, values = self.runtime.lm(embeds, positions, empty, empty,
                                                       torch.zeros(1, 0, dtype=torch.bool, device=dev))
        self._keys[:, row, :, :length] = keys[:, 0]
        self._values[:, row, :, :length] = values[:, 0]
        slot = row // 2
        if row % 2 == 0:
            self._positive_hidden[slot] = hidden[0, -1]
            self._logits[slot] = logits[0, -1]
        else:
            self._negative_hidden[slot] = hidden[0, -1]

    def step(self) -> list[FrameOutput]:
        """Advance every active stream by one frame."""
        live = [i for i, s in enumerate(self._slots) if s is not None]
        if not live:
            return []
        slots = [self._slots[i] for i in live]
        live_t = torch.tensor(live, device=self.runtime.device)
        choice = self._logits[live_t].argmax(-1)
        for j, slot in enumerate(slots):
            if slot.options.exact_frames is not None:
                choice[j] = self._speech_choice
        tokens = self._token_ids[choice].tolist()
        spec = self.runtime.spec
        speech = [j for j, t in enumerate(tokens) if t == spec.audio_token_id]
        next_embeds = self.runtime.embed(torch.tensor(tokens, device=self.runtime.device))
        audio = {}
        if speech:
            for j in speech:
                slots[j].negative_len += 1  # the speculative negative step of the last LM call is kept
            next_embeds[speech], chunks = self._speech_frames([live[j] for j in speech], [slots[j] for j in speech])
            audio = dict(zip(speech, chunks))

        outputs, continuing = [], []
        for j, (index, slot, token) in enumerate(zip(live, slots, tokens)):
            finished, reason = False, None
            slot.steps += 1
            if slot.steps >= slot.frame_limit:
                finished, reason = True, "exact_frames" if slot.options.exact_frames else "max_frames"
            elif token == spec.eos_id:
                finished, reason = True, "eos"
            elif token == spec.audio_bos_id:
                slot.negative_len = 1  # the negative context restarts at its audio_bos
            elif token == spec.audio_eos_id:
                for cache in self._decoder_caches + self._semantic_caches:
                    cache[index].zero_()
            if not finished and slot.positive_len + 1 >= self.settings.max_context:
                finished, reason = True, "context"
            outputs.append(FrameOutput(slot.stream_id, audio.get(j), finished, reason))
            if finished:
                self._slots[index] = None
            else:
                continuing.append(j)
        if continuing:
            self._lm_step([live[j] for j in continuing], next_embeds[continuing])
        return outputs

    def _speech_frames(self, indices: list[int], slots: list[_Slot]) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Diffusion, decoder and semantic encoder for the slots that emit a speech frame this step."""
        rt, spec = self.runtime, self.runtime.spec
        idx = torch.tensor(indices, device=rt.device)
        # Each request draws its own noise, in transformers' shape (a [2, D] normal whose first row is used).
        noise = torch.stack([torch.randn(2, spec.latent_dim, generator=s.generator)[0] for s in slots])
        cfg = torch.tensor([s.options.cfg_scale for s in slots], dtype=rt.dtype, device=rt.device)
        table = torch.tensor(schedule_table([s.options.diffusion_steps for s in slots]), dtype=rt.dtype,
                             device=rt.device)
        latents = solve(rt.diffusion_head, noise.to(rt.device, rt.dtype), self._positive_hidden[idx],
                        self._negative_hidden[idx], cfg, table)
        decoded, *caches = rt.decode((latents / spec.latent_scale - spec.latent_bias)[:, :, None],
                                     *(c[idx] for c in self._decoder_caches))
        for cache, new in zip(self._decoder_caches, caches):
            cache[idx] = new
        semantic, *caches = rt.semantic(decoded, *(c[idx] for c in self._semantic_caches))
        for cache, new in zip(self._semantic_caches, caches):
            cache[idx] = new
        embeds = rt.acoustic_connector(latents) + rt.semantic_connector(semantic[:, 0])
        chunks = list(decoded[:, 0].float().cpu().numpy())
        return embeds, chunks

    def _lm_step(self, indices: list[int], embeds: torch.Tensor) -> None:
        """One LM step over the positive and (speculative) negative rows of the given slots."""
        rt, dev = self.runtime, self.runtime.device
        slots = [self._slots[i] for i in indices]
        rows = torch.tensor([r for i in indices for r in (2 * i, 2 * i + 1)], device=dev)
        lengths = torch.tensor([n for s in slots for n in (s.positive_len, s.negative_len)], device=dev)
        past = int(lengths.max())
        valid = torch.arange(past, device=dev)[None] < lengths[:, None]
        hidden, logits, keys, values = rt.lm(embeds.repeat_interleave(2, dim=0)[:, None], lengths[:, None],
                                             self._keys[:, rows, :, :past], self._values[:, rows, :, :past], valid)
        # advanced indices on dims 1 and 3 put the row dimension first: [rows, layers, kv_heads, head_dim]
        self._keys[:, rows, :, lengths] = keys[:, :, :, 0].transpose(0, 1)
        self._values[:, rows, :, lengths] = values[:, :, :, 0].transpose(0, 1)
        for s in slots:
            s.positive_len += 1
        idx = torch.tensor(indices, device=dev)
        self._positive_hidden[idx] = hidden[0::2, 0]
        self._negative_hidden[idx] = hidden[1::2, 0]
        self._logits[idx] = logits[0::2, 0]

