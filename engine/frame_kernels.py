"""engine.frame_glue's functions as one Triton kernel each (same signatures, same results bit for bit: they only
select, copy and count, apart from one rounded addition done as the torch op does it)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.frame_glue import TokenIds
from engine.triton_kernels import after_previous_kernel, dependent_launch

SLOTS_PER_PROGRAM = 16
COLUMNS_PER_PROGRAM = 1024


@triton.jit
def _choose_tokens_kernel(logits_ptr, exact_ptr, token_ids_ptr, noises_ptr, used_ptr, tokens_ptr, noise_ptr, n,
                          speech_choice, V: tl.constexpr, BLOCK_V: tl.constexpr, D: tl.constexpr,
                          BLOCK_S: tl.constexpr, PDL: tl.constexpr):
    after_previous_kernel(PDL)
    slot = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)
    live = slot < n
    v = tl.arange(0, BLOCK_V)
    scores = tl.load(logits_ptr + slot[:, None] * V + v[None, :], mask=live[:, None] & (v < V)[None, :],
                     other=float("-inf")).to(tl.float32)
    best = tl.max(scores, axis=1)
    first = tl.min(tl.where(scores == best[:, None], v[None, :], BLOCK_V), axis=1)  # argmax: the first maximum
    exact = tl.load(exact_ptr + slot, mask=live, other=0) != 0
    choice = tl.where(exact, speech_choice, first)
    tokens = tl.load(token_ids_ptr + choice, mask=live, other=0)
    speech = tokens == tl.load(token_ids_ptr + speech_choice)
    used = tl.load(used_ptr + slot, mask=live, other=0)
    d = tl.arange(0, D)
    noise = tl.load(noises_ptr + (slot * 2 + used % 2)[:, None] * D + d[None, :], mask=live[:, None])
    tl.store(noise_ptr + slot[:, None] * D + d[None, :], noise, mask=live[:, None])
    tl.store(used_ptr + slot, used + speech.to(used.dtype), mask=live)
    tl.store(tokens_ptr + slot, tokens, mask=live)


def choose_tokens(logits, exact, speech_choice: int, token_ids, noises, noises_used):
    n, vocabulary = logits.shape
    dim = noises.shape[-1]
    if dim != triton.next_power_of_2(dim):
        raise ValueError(f"choose_tokens takes a power-of-two latent width, got {dim}")
    tokens = torch.empty(n, dtype=token_ids.dtype, device=logits.device)
    noise = torch.empty(n, dim, dtype=noises.dtype, device=noises.device)
    _choose_tokens_kernel[(triton.cdiv(n, SLOTS_PER_PROGRAM),)](
        logits.contiguous(), exact, token_ids, noises.contiguous(), noises_used, tokens, noise, n, speech_choice,
        V=vocabulary, BLOCK_V=triton.next_power_of_2(vocabulary), D=dim, BLOCK_S=SLOTS_PER_PROGRAM,
        **dependent_launch(logits.device))
    return tokens, noise


@triton.jit
def _step_inputs_kernel(tokens_ptr, state_ptr, new_state_ptr, acoustic_ptr, semantic_ptr, token_embeds_ptr,
                        positive_ptr, negative_ptr, embeds_ptr, positions_ptr, W, H, context, speech_id, eos_id,
                        bos_id, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Program (slot, chunk): columns [chunk * BLOCK, ...) of the slot's state and of its two embedding rows; the
    first chunk's program also its lengths and positions."""
    after_previous_kernel(PDL)
    slot, chunk = tl.program_id(0), tl.program_id(1)
    token = tl.load(tokens_ptr + slot)
    speech = token == speech_id
    c = chunk * BLOCK + tl.arange(0, BLOCK)
    in_state = c < W
    if speech:
        tl.store(state_ptr + slot * W + c, tl.load(new_state_ptr + slot * W + c, mask=in_state), mask=in_state)
    elif token == eos_id:
        tl.store(state_ptr + slot * W + c, tl.zeros((BLOCK,), dtype=state_ptr.dtype.element_ty), mask=in_state)
    in_embeds = c < H
    if speech:  # the connectors' sum, rounded as the torch addition rounds it
        embeds = (tl.load(acoustic_ptr + slot * H + c, mask=in_embeds).to(tl.float32)
                  + tl.load(semantic_ptr + slot * H + c, mask=in_embeds).to(tl.float32))
    else:
        embeds = tl.load(token_embeds_ptr + slot * H + c, mask=in_embeds).to(tl.float32)
    embeds = embeds.to(embeds_ptr.dtype.element_ty)
    tl.store(embeds_ptr + 2 * slot * H + c, embeds, mask=in_embeds)
    tl.store(embeds_ptr + (2 * slot + 1) * H + c, embeds, mask=in_embeds)
    if chunk == 0:
        negative = tl.load(negative_ptr + slot)
        negative = tl.where(speech, negative + 1, tl.where(token == bos_id, 1, negative))
        tl.store(negative_ptr + slot, negative)
        tl.store(positions_ptr + 2 * slot, tl.minimum(tl.load(positive_ptr + slot), context - 1))
        tl.store(positions_ptr + 2 * slot + 1, tl.minimum(negative, context - 1))


def step_inputs(tokens, ids: TokenIds, state, new_state, acoustic, semantic, token_embeds, positive_len,
                negative_len, context: int):
    n, width = state.shape
    hidden = acoustic.shape[-1]
    if state.stride() != (width, 1):
        raise ValueError("step_inputs updates a contiguous [slots, width] state")
    embeds = torch.empty(2 * n, hidden, dtype=acoustic.dtype, device=acoustic.device)
    positions = torch.empty(2 * n, dtype=positive_len.dtype, device=positive_len.device)
    chunks = triton.cdiv(max(width, hidden), COLUMNS_PER_PROGRAM)
    _step_inputs_kernel[(n, chunks)](tokens, state, new_state.contiguous(), acoustic.contiguous(),
                                     semantic.contiguous(), token_embeds.contiguous(), positive_len, negative_len,
                                     embeds, positions, width, hidden, context, ids.speech, ids.eos, ids.bos,
                                     BLOCK=COLUMNS_PER_PROGRAM, **dependent_launch(state.device))
    return embeds, positions


@triton.jit
def _keep_outputs_kernel(hidden_ptr, logits_ptr, decoded_ptr, tokens_ptr, positive_ptr, positive_hidden_ptr,
                         negative_hidden_ptr, last_logits_ptr, tokens_out_ptr, audio_out_ptr, H, SAMPLES,
                         V: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    after_previous_kernel(PDL)
    slot, chunk = tl.program_id(0), tl.program_id(1)
    c = chunk * BLOCK + tl.arange(0, BLOCK)
    in_hidden = c < H
    tl.store(positive_hidden_ptr + slot * H + c, tl.load(hidden_ptr + 2 * slot * H + c, mask=in_hidden),
             mask=in_hidden)
    tl.store(negative_hidden_ptr + slot * H + c, tl.load(hidden_ptr + (2 * slot + 1) * H + c, mask=in_hidden),
             mask=in_hidden)
    in_audio = c < SAMPLES
    tl.store(audio_out_ptr + slot * SAMPLES + c,
             tl.load(decoded_ptr + slot * SAMPLES + c, mask=in_audio).to(audio_out_ptr.dtype.element_ty),
             mask=in_audio)
    if chunk == 0:
        v = tl.arange(0, BLOCK_V)
        tl.store(last_logits_ptr + slot * V + v, tl.load(logits_ptr + 2 * slot * V + v, mask=v < V), mask=v < V)
        tl.store(positive_ptr + slot, tl.load(positive_ptr + slot) + 1)
        tl.store(tokens_out_ptr + slot, tl.load(tokens_ptr + slot))


def keep_outputs(hidden, logits, decoded, tokens, positive_len, positive_hidden, negative_hidden, last_logits,
                 tokens_out, audio_out):
    n, width = positive_hidden.shape
    samples, vocabulary = audio_out.shape[-1], logits.shape[-1]
    for name, out in (("positive_hidden", positive_hidden), ("negative_hidden", negative_hidden),
                      ("last_logits", last_logits), ("audio_out", audio_out)):
        if not out.is_contiguous():
            raise ValueError(f"keep_outputs writes a contiguous {name}")
    chunks = triton.cdiv(max(width, samples), COLUMNS_PER_PROGRAM)
    _keep_outputs_kernel[(n, chunks)](hidden.contiguous(), logits.contiguous(), decoded.contiguous(), tokens,
                                      positive_len, positive_hidden, negative_hidden, last_logits, tokens_out,
                                      audio_out, width, samples, V=vocabulary,
                                      BLOCK_V=triton.next_power_of_2(vocabulary), BLOCK=COLUMNS_PER_PROGRAM,
                                      **dependent_launch(hidden.device))
