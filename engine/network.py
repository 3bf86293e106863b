"""VibeVoice's network pieces as pure functions of explicit state, over transformers' own modules.

Every state the frame loop carries (KV caches, streaming-conv caches) enters and leaves as a tensor, so the same
functions serve the torch runtime, ONNX export (one graph each) and CUDA graph capture. The torch runtime's frame
uses the pieces written for few kernels (CachedLanguageModelStep, DiffusionSolver, engine.tokenizer_step).
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import SiLUActivation
from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb

from engine.quantize import fuse_linears, linear, linear_params, linear_residual


class LanguageModelStep(nn.Module):
    """Qwen2 over new tokens that attend to an explicit past.

    embeds [B, S, H], positions [B, S], past_k/past_v [layers, B, kv_heads, T, head_dim], past_valid [B, T]
    -> hidden [B, S, H] (final norm applied), logits [B, S, V'] over `token_ids` only, new_k/new_v
    [layers, B, kv_heads, S, head_dim] for the caller to store.
    """

    def __init__(self, language_model: nn.Module, lm_head: nn.Module, token_ids: list[int]):
        super().__init__()
        self.lm = language_model
        cfg = language_model.config
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        # Only the tokens VibeVoice may emit are scored: a [V', H] slice instead of the full vocabulary.
        self.register_buffer("token_weight", lm_head.weight[token_ids].detach().clone(), persistent=False)

    def forward(self, embeds, positions, past_k, past_v, past_valid):
        batch, new, _ = embeds.shape
        past = past_k.shape[3]
        cos, sin = self.lm.rotary_emb(embeds, positions)
        causal = torch.ones(new, new, dtype=torch.bool, device=embeds.device).tril()
        visible = torch.cat([past_valid[:, None, :].expand(batch, new, past), causal.expand(batch, new, new)], dim=-1)
        bias = torch.zeros(visible.shape, dtype=embeds.dtype, device=embeds.device)
        bias = bias.masked_fill(~visible, torch.finfo(embeds.dtype).min)[:, None]  # [B, 1, S, T + S]
        group = self.heads // self.kv_heads
        hidden = embeds
        new_keys, new_values = [], []
        for i, layer in enumerate(self.lm.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, new, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(batch, new, self.kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            new_keys.append(k)
            new_values.append(v)
            keys = torch.cat([past_k[i], k], dim=2).repeat_interleave(group, dim=1)
            values = torch.cat([past_v[i], v], dim=2).repeat_interleave(group, dim=1)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, scale=attn.scaling)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, new, -1))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        hidden = self.lm.norm(hidden)
        logits = hidden @ self.token_weight.T
        return hidden, logits, torch.stack(new_keys), torch.stack(new_values)


class CachedLanguageModelStep(nn.Module):
    """One new token per row, written into a static KV cache in place, attending over its first `context` positions.
    Every shape is fixed for a given (rows, context), so a step can be captured in a CUDA graph.

    embeds [R, H], positions [R], keys/values [layers, rows >= R, kv_heads, T, head_dim] -> hidden [R, H],
    logits [R, V'] (the same outputs as LanguageModelStep for one new token). Written for few kernels, since a
    captured step is bound by their count, not by bytes: q, k and v in one product, gate and up in one, residuals
    added by the products (addmm), fused RMSNorm, and the rotary tables and attention mask built once per step
    rather than per layer. On CUDA (`triton`: None, the default, means on CUDA tensors where Triton imports) the
    rotary embedding with the KV write and the attention (over each row's live positions only) are one Triton
    kernel, the MLP's silu * up another (`rotary_attend`, `silu_mul`; their torch twins are in this module), and
    up to FEW_ROWS rows (8 streams) each product is one kernel with its norm, silu * up or residual
    (`linear_block`: few_rows_linear), the qkv product's split sums finished by rotary_attend.
    With `compile`, each decoder layer runs as one torch.compile'd function of its weights (compiled once, shared
    by every layer, dynamic shapes), on torch ops.
    With `megakernel` (bf16 or fp8 weights on a Hopper GPU with CuPy: engine.megakernel, so far slower than these
    kernels), steps of one or two streams' rows run as one persistent kernel instead; `megakernel_status` says
    whether it serves and, if not, why.
    """

    def __init__(self, step: LanguageModelStep, compile: bool = False, triton: bool | None = None,
                 megakernel: bool = False):
        super().__init__()
        self.step, self.triton = step, triton
        self.layer_weights = [_layer_weights(layer) for layer in step.lm.layers]
        self.megakernel, self.megakernel_status = None, "not asked for"
        if megakernel and not compile:
            from engine.megakernel import LanguageModelMegakernel
            self.megakernel_status = LanguageModelMegakernel.suits(step, self.layer_weights)
            if self.megakernel_status is None:
                self.megakernel, self.megakernel_status = LanguageModelMegakernel(step, self.layer_weights), "on"
        half = step.head_dim // 2
        # rotate_half(x) * sin == roll(x, half) * (sign * sin): the sign is folded into the table once per step
        sign = torch.cat([-torch.ones(half), torch.ones(half)]).to(step.token_weight)  # the model's device and dtype
        self.register_buffer("rotation_sign", sign, persistent=False)
        self.compiled = compile
        self.layer = torch.compile(cached_decoder_layer, dynamic=True) if compile else cached_decoder_layer

    def forward(self, embeds, positions, keys, values, context: int):
        step, rows = self.step, embeds.shape[0]
        if self.megakernel is not None and self.megakernel.runs(rows):
            return self.megakernel(embeds, positions, keys, values, context)
        ops = (None if self.compiled else kernels_for(embeds, self.triton)) or sys.modules[__name__]
        cos, sin = step.lm.rotary_emb(embeds[:, None], positions[:, None])  # [R, 1, head_dim]
        cos, sin = cos[:, 0], (sin * self.rotation_sign)[:, 0]
        mask = None  # the Triton attention reads positions; the torch ops take an additive mask
        if ops is sys.modules[__name__]:
            visible = torch.arange(context, device=embeds.device)[None] <= positions[:, None]  # [R, context]
            mask = torch.zeros(visible.shape, dtype=embeds.dtype, device=embeds.device).masked_fill_(
                ~visible, torch.finfo(embeds.dtype).min)[:, None, None]
        hidden = embeds
        for i, weights in enumerate(self.layer_weights):
            hidden = self.layer(hidden, weights, cos, sin, keys[i, :rows, :, :context],
                                values[i, :rows, :, :context], positions, mask, step.heads, step.kv_heads, ops)
        norm = step.lm.norm
        hidden = F.rms_norm(hidden, hidden.shape[-1:], norm.weight, norm.variance_epsilon)
        return hidden, hidden @ step.token_weight.T


    def prefill(self, embeds):
        """Prompts [B, S, H] from position 0 with no past, right-padded: LanguageModelStep's outputs, computed by
        the same fused layers as the cached step (`prefill_decoder_layer`)."""
        step, (batch, length, _) = self.step, embeds.shape
        positions = torch.arange(length, device=embeds.device)[None].expand(batch, length)
        cos, sin = step.lm.rotary_emb(embeds, positions)  # [B, S, head_dim]
        sin = sin * self.rotation_sign
        hidden, keys, values = embeds, [], []
        for weights in self.layer_weights:
            hidden, k, v = prefill_decoder_layer(hidden, weights, cos, sin, step.heads, step.kv_heads)
            keys.append(k)
            values.append(v)
        norm = step.lm.norm
        hidden = F.rms_norm(hidden, hidden.shape[-1:], norm.weight, norm.variance_epsilon)
        return hidden, hidden @ step.token_weight.T, torch.stack(keys), torch.stack(values)


def _layer_weights(layer: nn.Module) -> dict:
    """A decoder layer's tensors; its norms as (weight, eps), its linears as `linear_params` (float or quantized
    weights alike), q/k/v and gate/up fused (the modules keep views of the fused weights)."""
    attn, mlp = layer.self_attn, layer.mlp
    norm1, norm2 = layer.input_layernorm, layer.post_attention_layernorm
    return {"norm1": (norm1.weight, norm1.variance_epsilon), "norm2": (norm2.weight, norm2.variance_epsilon),
            "qkv": fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj]), "o": linear_params(attn.o_proj),
            "scaling": attn.scaling, "gate_up": fuse_linears([mlp.gate_proj, mlp.up_proj]),
            "down": linear_params(mlp.down_proj)}


def rotary_kv_write(qkv, cos, sin, keys, values, positions, heads: int, kv_heads: int):
    """qkv [R, (heads + 2 kv) d], cos/sin [R, d] (sin carrying rotate_half's sign): rotates q and k, writes k and v
    into keys/values [R, kv, T, d] at `positions` [R]; returns q [R, heads, 1, d]."""
    rows, head_dim = qkv.shape[0], cos.shape[-1]
    qk = qkv[:, :(heads + kv_heads) * head_dim].view(rows, heads + kv_heads, head_dim)
    qk = torch.addcmul(qk * cos[:, None], qk.roll(head_dim // 2, dims=-1), sin[:, None])
    v = qkv[:, (heads + kv_heads) * head_dim:].view(rows, kv_heads, 1, head_dim)
    slot = positions[:, None, None, None].expand(rows, kv_heads, 1, head_dim)
    keys.scatter_(2, slot, qk[:, heads:, None])
    values.scatter_(2, slot, v)
    return qk[:, :heads, None]


def attend(q, keys, values, mask, positions, scale: float):
    """Attention of one new token per row: q [R, heads, 1, d] over keys/values [R, kv, T, d] where the additive
    `mask` [R, 1, 1, T] allows (positions <= `positions` [R])."""
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scale, enable_gqa=True)


def rotary_attend(qkv, cos, sin, keys, values, mask, positions, heads: int, kv_heads: int, scale: float):
    """A layer's attention from its qkv product [R, (heads + 2 kv) d]: rotary_kv_write, then attend ->
    [R, heads, 1, d]. (The Triton kernel reads `positions` instead of the mask.)"""
    q = rotary_kv_write(qkv, cos, sin, keys, values, positions, heads, kv_heads)
    return attend(q, keys, values, mask, positions, scale)


def linear_block(x, params: tuple, ops, *, norm: tuple | None = None, activation: str | None = None, residual=None,
                 layer_scale=None, unreduced: bool = False):
    """A linear (`linear_params`) with what surrounds it in a layer: x's RMSNorm first (`norm`: weight, eps); after
    it `activation` "silu_glu" (silu(gate) * up of a fused gate-up product) or "gelu" (exact), then a residual added
    (by the product where it can: addmm), the product first multiplied by `layer_scale` (addcmul). Where `ops` has
    few_rows_linear (engine.triton_kernels), x has at most ops.FEW_ROWS rows and the product suits it (float or
    8-bit weights: ops.few_rows_suits), that one kernel; `unreduced` (the caller passes the result to an op of
    `ops` that takes ops.SplitSums): its split sums left for that op to finish."""
    if (getattr(ops, "few_rows_linear", None) and x.shape[0] <= ops.FEW_ROWS
            and ops.few_rows_suits(params[0], activation)):
        return ops.few_rows_linear(x, *params, norm=norm, activation=activation, residual=residual,
                                   layer_scale=layer_scale, reduce=not unreduced)
    if norm is not None:
        x = F.rms_norm(x, x.shape[-1:], *norm)
    if activation is None and layer_scale is None:
        return linear(x, *params) if residual is None else linear_residual(x, residual, *params)
    y = linear(x, *params)
    if activation == "silu_glu":
        y = ops.silu_mul(y)
    elif activation == "gelu":
        y = F.gelu(y)
    elif activation is not None:
        raise ValueError(f"unknown activation {activation!r}; choose silu_glu or gelu")
    if residual is None:
        return y
    return residual + y if layer_scale is None else torch.addcmul(residual, y, layer_scale)


def cached_decoder_layer(hidden, w, cos, sin, keys, values, positions, mask, heads: int, kv_heads: int, ops):
    """One Qwen2 decoder layer for one new token per row (hidden [R, H]), writing its key and value into
    `keys`/`values` [R, kv, context, d] at `positions` and attending with the additive `mask` [R, 1, 1, context].
    `sin` carries rotate_half's sign (see CachedLanguageModelStep); `ops` holds rotary_attend and silu_mul (this
    module's torch ops or engine.triton_kernels, which also has few_rows_linear: linear_block, whose qkv sums its
    rotary_attend finishes)."""
    rows, head_dim = hidden.shape[0], keys.shape[-1]
    qkv = linear_block(hidden, w["qkv"], ops, norm=w["norm1"], unreduced=True)
    out = ops.rotary_attend(qkv, cos, sin, keys, values, mask, positions, heads, kv_heads, w["scaling"])
    hidden = linear_block(out.reshape(rows, heads * head_dim), w["o"], ops, residual=hidden)
    x = linear_block(hidden, w["gate_up"], ops, norm=w["norm2"], activation="silu_glu")
    return linear_block(x, w["down"], ops, residual=hidden)


def prefill_decoder_layer(hidden, w, cos, sin, heads: int, kv_heads: int):
    """One Qwen2 decoder layer over whole prompts (hidden [B, S, H]) with causal attention and no past ->
    (hidden, k, v [B, kv, S, d]); the same fused products as cached_decoder_layer. `sin` carries rotate_half's
    sign."""
    batch, length, width = hidden.shape
    head_dim = cos.shape[-1]
    x = F.rms_norm(hidden, (width,), *w["norm1"])
    qkv = linear(x, *w["qkv"]).view(batch, length, heads + 2 * kv_heads, head_dim)
    qk = qkv[:, :, :heads + kv_heads]
    qk = torch.addcmul(qk * cos[:, :, None], qk.roll(head_dim // 2, dims=-1), sin[:, :, None])
    q, k = qk[:, :, :heads].transpose(1, 2), qk[:, :, heads:].transpose(1, 2)
    v = qkv[:, :, heads + kv_heads:].transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=w["scaling"], enable_gqa=True)
    flat = hidden.reshape(batch * length, width)
    flat = linear_residual(out.transpose(1, 2).reshape(batch * length, heads * head_dim), flat, *w["o"])
    gate, up = linear(F.rms_norm(flat, (width,), *w["norm2"]), *w["gate_up"]).chunk(2, dim=-1)
    flat = linear_residual(F.silu(gate) * up, flat, *w["down"])
    return flat.view(batch, length, width), k, v


@dataclass(frozen=True)
class ConvCacheSpec:
    """One causal convolution's left context: `channels` x `width` samples of its input."""

    key: str
    channels: int
    width: int


def conv_cache_specs(module: nn.Module) -> list[ConvCacheSpec]:
    """The streaming caches of a VibeVoice tokenizer encoder or decoder, in forward order."""
    specs = []
    for sub in module.modules():
        if hasattr(sub, "cache_key") and sub.left_pad > 0:
            specs.append(ConvCacheSpec(sub.cache_key, sub.in_channels, sub.left_pad))
    return specs


class _ExplicitConvCache:
    """Stands in for transformers' padding cache: reads given tensors, records the updated ones."""

    def __init__(self, specs: list[ConvCacheSpec], caches: list[torch.Tensor]):
        self.past = {spec.key: cache for spec, cache in zip(specs, caches)}
        self.updated: dict[str, torch.Tensor] = {}

    def update(self, hidden_states, cache_key, conv_module):
        past = self.past.get(cache_key)
        if past is None:  # a convolution with no left context
            return hidden_states
        padded = torch.cat([past, hidden_states], dim=-1)
        self.updated[cache_key] = padded[..., padded.shape[-1] - conv_module.left_pad:]
        return padded


class StreamingConvStep(nn.Module):
    """One chunk through a causal-conv tokenizer half (acoustic decoder or semantic encoder) with explicit caches.

    forward(x, *caches) -> (y, *new_caches); the decoder maps latents [B, 64, 1] to audio [B, 1, 3200], the
    semantic encoder maps audio [B, 1, 3200] to latents [B, 1, 128]. Zero caches equal a fresh, non-streaming pass.
    """

    def __init__(self, module: nn.Module, output: str):
        super().__init__()
        self.module = module
        self.output = output  # "audio" for the decoder, "latents" for an encoder
        self.specs = conv_cache_specs(module)

    def zero_caches(self, batch: int, dtype=torch.float32, device="cpu") -> list[torch.Tensor]:
        return [torch.zeros(batch, s.channels, s.width, dtype=dtype, device=device) for s in self.specs]

    def forward(self, x, *caches):
        cache = _ExplicitConvCache(self.specs, list(caches))
        y = getattr(self.module(x, padding_cache=cache), self.output)
        return (y, *(cache.updated[s.key] for s in self.specs))


class DiffusionHeadStep(nn.Module):
    """The diffusion head: noisy latents [B, 64], timesteps [B], conditions [B, H] -> v-prediction [B, 64]."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, noisy, timesteps, condition):
        return self.head(noisy, timesteps, condition)


def modulated_norm(hidden, weight, eps, shift, scale):
    """shift + rms_norm(hidden) * scale (the norm's weight may be None)."""
    return torch.addcmul(shift, F.rms_norm(hidden, hidden.shape[-1:], weight, eps), scale)


def residual_modulated_norm(hidden, gate, update, weight, eps, shift, scale):
    """(hidden + gate * update, then modulated_norm of that): a layer's gated residual and the next norm."""
    hidden = torch.addcmul(hidden, gate, update)
    return hidden, modulated_norm(hidden, weight, eps, shift, scale)


def silu_mul(gate_up):
    """silu(gate) * up for gate_up [R, 2F] = [gate | up] -> [R, F]."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def guided_update(normed, projection: tuple, x, previous_x0, cfg, coefficients):
    """One solver step after the head's last norm: v = linear(normed, *projection) (the final product; normed
    [2B, H], positive rows, then negative), x [2B, D] (the latents twice, as the head's positive and negative rows
    take them) and previous_x0 [B, D], cfg [B], coefficients [B, 5] (alpha, sigma, a, b, c of
    engine.sampler.schedule_table) -> (next x, twice as x, x0)."""
    v = linear(normed, *projection)
    alpha, sigma, a, b, c = (column[:, None] for column in coefficients.unbind(-1))
    v_pos, v_neg = v.chunk(2, dim=0)
    x = x[:v_pos.shape[0]]
    x0 = alpha * x - sigma * torch.lerp(v_neg, v_pos, cfg[:, None])  # v_neg + cfg * (v_pos - v_neg)
    return (a * x + b * x0 + c * (x0 - previous_x0)).repeat(2, 1), x0


@functools.cache
def kernels():
    """engine.triton_kernels, or None where Triton is not installed (torch ops then run everywhere)."""
    try:
        from engine import triton_kernels
    except ImportError:
        return None
    return triton_kernels


def kernels_for(x: torch.Tensor, triton: bool | None):
    """engine.triton_kernels where they run on `x`, else None: `triton` None means on CUDA tensors; never while
    torch.compile traces (it fuses the torch ops itself)."""
    wanted = x.is_cuda if triton is None else triton
    return kernels() if wanted and not torch.compiler.is_compiling() else None


class DiffusionSolver(nn.Module):
    """engine.sampler.solve over VibeVoice's diffusion head, written for few kernels. Whatever depends only on the
    condition and the timestep is computed before the loop in a few large products: the condition's projection,
    every step's timestep embedding, and every layer's adaLN modulation (shift, 1 + scale, gate) for every step.
    Each step then runs the noisy-latent projection (the latents kept twice, as the positive and negative rows take
    them), per layer the MLP's two products (gate and up fused) with silu_mul between them (`linear_block`: at few
    rows, one kernel with the first product) and residual_modulated_norm after (the gated residual and the next
    layer's norm and modulation; at few rows it finishes the second product's split sums), and guided_update
    (the final product, guidance and the solver's update). Those three are one Triton kernel each on CUDA
    (`triton`: None, the default, means on CUDA tensors where Triton imports), torch ops elsewhere (the functions
    above). The head's modules keep views of the fused weights.

    noise [B, D], cond_pos/cond_neg [B, H], cfg [B], table [B, steps, 6] (engine.sampler.schedule_table) -> [B, D]
    """

    def __init__(self, head: nn.Module, triton: bool | None = None):
        super().__init__()
        self.head, self.triton = head, triton
        layers, final = head.layers, head.final_layer
        self.hidden = head.cond_proj.weight.shape[0]
        self.modulation = fuse_linears([layer.linear for layer in layers] + [final.linear_1])[0]
        # rows of the fused modulation: (shift, scale, gate) per layer, then the final layer's (shift, scale);
        # adding 1 to every scale row's output turns the product into (1 + scale) directly
        chunks = [("shift", "scale", "gate")] * len(layers) + [("shift", "scale")]
        offset = torch.tensor([1.0 if kind == "scale" else 0.0 for layer in chunks for kind in layer])
        self.register_buffer("scale_offset", offset.repeat_interleave(self.hidden).to(self.modulation),
                             persistent=False)
        self.noisy_projection = linear_params(head.noisy_images_proj)
        self.final_projection = linear_params(head.final_layer.linear_2)
        self.gate_up = [fuse_linears([layer.ffn.gate_proj, layer.ffn.up_proj]) for layer in layers]
        self.down = [linear_params(layer.ffn.down_proj) for layer in layers]
        # each norm as (weight, eps), the final layer's last: the norm that follows layer j is norms[j + 1]
        self.norms = [(layer.norm.weight, layer.norm.variance_epsilon) for layer in layers] + [
            (None, final.rms_norm_eps)]
        self.silu = all(isinstance(layer.ffn.act_fn, (nn.SiLU, SiLUActivation)) for layer in layers)

    def forward(self, noise, cond_pos, cond_neg, cfg, table):
        head, rows, steps, width = self.head, noise.shape[0], table.shape[1], self.hidden
        ops = (kernels_for(noise, self.triton) if self.silu else None) or sys.modules[__name__]  # or this module's
        condition = head.cond_proj(torch.cat([cond_pos, cond_neg]))  # positive rows, then negative rows
        timesteps = table[:, :, 0].repeat(2, 1).reshape(-1)
        embedded = head.timestep_proj(head.timestep_embedding(timesteps).to(timesteps.dtype))
        condition = (condition[:, None] + embedded.view(2 * rows, steps, width)).view(-1, width)
        modulation = torch.addmm(self.scale_offset, head.layers[0].act_fn(condition), self.modulation.t())
        modulation = modulation.view(2 * rows, steps, -1, width)  # [2B, steps, chunks, H]
        x, previous_x0 = noise.repeat(2, 1), torch.zeros_like(noise)  # x twice: the positive and negative rows'
        for i in range(steps):
            chunk = modulation[:, i]
            hidden = linear_block(x, self.noisy_projection, ops)
            normed = ops.modulated_norm(hidden, *self.norms[0], chunk[:, 0], chunk[:, 1])
            for j, layer in enumerate(head.layers):
                hidden_units = linear_block(normed, self.gate_up[j], ops, activation="silu_glu")
                update = linear_block(hidden_units, self.down[j], ops, unreduced=True)
                shift, scale = chunk[:, 3 * j + 3], chunk[:, 3 * j + 4]  # the next layer's, or the final layer's
                hidden, normed = ops.residual_modulated_norm(hidden, chunk[:, 3 * j + 2], update, *self.norms[j + 1],
                                                             shift, scale)
            x, previous_x0 = ops.guided_update(normed, self.final_projection, x, previous_x0, cfg, table[:, i, 1:])
        return x[:rows]


class ConnectorStep(nn.Module):
    """A speech connector (transformers' VibeVoiceMultiModalProjector: linear_1, RMSNorm, linear_2) as two
    `linear_block`s, the norm taken into the second: at few rows on CUDA two few-row kernels, where the module runs
    some ten. `triton` as DiffusionSolver's. x [..., D] -> [..., H]."""

    def __init__(self, projector: nn.Module, triton: bool | None = None):
        super().__init__()
        self.projector, self.triton = projector, triton
        self.first, self.second = linear_params(projector.linear_1), linear_params(projector.linear_2)
        self.norm = (projector.act.weight, projector.act.variance_epsilon)

    def forward(self, x):
        ops = kernels_for(x, self.triton) or sys.modules[__name__]
        hidden = linear_block(x.reshape(-1, x.shape[-1]), self.first, ops)
        return linear_block(hidden, self.second, ops, norm=self.norm).view(*x.shape[:-1], -1)


class VoiceEncoder(nn.Module):
    """Voice audio [S, 1, N] (normalised, N a multiple of 3200) -> the acoustic encoder's mean latents [S, N/3200, 64].

    The sigma-VAE noise is not added here: the engine draws it per request, so cached latents reproduce seeds.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, audio):
        return self.encoder(audio).latents
