"""The frame's bookkeeping between its pieces (engine.batch.BatchEngine._frame), as torch ops: choosing the tokens,
turning a frame's pieces into the LM step's inputs, keeping its outputs. On CUDA each is one Triton kernel
(engine.frame_kernels, the same functions), where these are some thirty small kernels.

Slots are rows: `n` active slots, each with a positive and a negative LM row (2i and 2i + 1)."""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenIds:
    """The tokens the frame's bookkeeping tells apart."""

    speech: int     # audio_token_id: a speech frame
    eos: int        # audio_eos_id: a turn ends, the conv caches restart
    bos: int        # audio_bos_id: the negative context restarts


def choose_tokens(logits, exact, speech_choice: int, token_ids, noises, noises_used):
    """Each slot's token: the argmax of its logits [n, V'] over `token_ids` [V'], or token_ids[speech_choice] where
    `exact` [n]; and its diffusion noise, noises [n, 2, D] picked by noises_used [n] % 2, which then counts the
    speech frames (in place). -> (tokens [n] int64, noise [n, D])."""
    choice = torch.where(exact, speech_choice, logits.argmax(-1))
    tokens = token_ids[choice]
    n, dim = noises.shape[0], noises.shape[-1]
    noise = noises.gather(1, (noises_used % 2)[:, None, None].expand(n, 1, dim))[:, 0]
    noises_used.add_((tokens == token_ids[speech_choice]).long())
    return tokens, noise


def step_inputs(tokens, ids: TokenIds, state, new_state, acoustic, semantic, token_embeds, positive_len,
                negative_len, context: int):
    """What a frame leaves for the LM step, in place where it is state: the conv caches `state` [n, W] take
    `new_state` for speech and restart (zeros) at audio_eos; the next input is acoustic + semantic [n, H] (the
    connectors' outputs) for speech, else token_embeds [n, H], twice (the positive and negative rows); the negative
    length counts the speech frames kept and restarts at 1 on audio_bos. -> (embeds [2n, H], positions [2n]: the
    rows' lengths, at most context - 1)."""
    speech = (tokens == ids.speech)[:, None]
    state.copy_(torch.where(speech, new_state, torch.where((tokens == ids.eos)[:, None], 0.0, state)))
    embeds = torch.where(speech, acoustic + semantic, token_embeds)
    negative_len.copy_(torch.where(speech[:, 0], negative_len + 1, torch.where(tokens == ids.bos, 1, negative_len)))
    positions = torch.stack([positive_len, negative_len], dim=1).reshape(-1).clamp(max=context - 1)
    return embeds.repeat_interleave(2, dim=0), positions


def keep_outputs(hidden, logits, decoded, tokens, positive_len, positive_hidden, negative_hidden, last_logits,
                 tokens_out, audio_out):
    """After the LM step over rows [2n] (hidden [2n, H], logits [2n, V']): the slots' last hidden states (positive
    and negative) and positive logits, one more positive token, and the frame's tokens and audio (decoded [n, 1,
    samples]) for the host, each [n, ...], in place."""
    positive_len.add_(1)
    positive_hidden.copy_(hidden[0::2])
    negative_hidden.copy_(hidden[1::2])
    last_logits.copy_(logits[0::2])
    tokens_out.copy_(tokens)
    audio_out.copy_(decoded[:, 0])


@functools.cache
def _kernels():
    try:
        from engine import frame_kernels
    except ImportError:
        return None
    return frame_kernels


def glue_ops(device: torch.device):
    """engine.frame_kernels on CUDA where Triton imports, else this module."""
    return (device.type == "cuda" and _kernels()) or sys.modules[__name__]
