"""Triton kernels for the frame's hot spots that PyTorch runs as several kernels (CUDA; imported only there, and by
the tests under TRITON_INTERPRET=1, which run the same kernels on CPU tensors).

convnext_mixer: the first half of a tokenizer ConvNeXt block, channels-last, in one pass:
    h = rms_norm(x) (rows from the cache are already normalised), y = depthwise causal conv(h) + bias,
    x1 = x + gamma * y, ffn_in = rms_norm(x1) with the FFN's norm weight, and the new cache (the last `width` rows
    of [cache, h]). PyTorch needs a norm, a concatenation, a layout copy, the convolution, a residual and a second
    norm; its norm kernel is also slow on the many short rows (32-256 channels) of the high-rate stages.
Roundings follow PyTorch's: h, the convolution's output, x1 and ffn_in are each rounded to x's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

TILE_ELEMENTS = 4096  # rows x channels per program


@triton.jit
def _convnext_mixer_kernel(x_ptr, cache_ptr, norm_w_ptr, conv_w_ptr, conv_b_ptr, gamma_ptr, ffn_norm_w_ptr,
                           out_ptr, ffn_in_ptr, new_cache_ptr,
                           T, C, eps, ffn_eps, sxb, sxt, scb, sct, scc,
                           WIDTH: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.arange(0, BLOCK_C)
    rows, channels = t < T, c < C
    dtype = out_ptr.dtype.element_ty
    norm_w = tl.load(norm_w_ptr + c, mask=channels, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    x_self = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for k in tl.static_range(WIDTH + 1):  # tap k reads row t + k - WIDTH of [cache, h]
        src = t + (k - WIDTH)
        from_x = src >= 0
        x_mask = (rows & from_x)[:, None] & channels[None, :]
        xr = tl.load(x_ptr + b * sxb + src[:, None] * sxt + c[None, :], mask=x_mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(xr * xr, axis=1) / C + eps)
        h = (xr * rstd[:, None] * norm_w[None, :]).to(dtype).to(tl.float32)
        cache_mask = (rows & (src < 0))[:, None] & channels[None, :]
        cr = tl.load(cache_ptr + b * scb + (src + WIDTH)[:, None] * sct + c[None, :] * scc, mask=cache_mask,
                     other=0.0).to(tl.float32)
        h = tl.where(from_x[:, None], h, cr)
        tap = tl.load(conv_w_ptr + c * (WIDTH + 1) + k, mask=channels, other=0.0).to(tl.float32)
        acc += h * tap[None, :]
        if k == WIDTH:  # the row itself: kept for the residual, and in the new cache if among the last WIDTH rows
            x_self = xr
            slot = t - T + WIDTH
            keep = (rows & (slot >= 0))[:, None] & channels[None, :]
            tl.store(new_cache_ptr + b * WIDTH * C + slot[:, None] * C + c[None, :], h.to(dtype), mask=keep)
    if tl.program_id(1) == 0:  # a chunk shorter than the cache keeps the cache's newest rows in front
        r = tl.arange(0, BLOCK_W)
        old = (r < WIDTH - T)[:, None] & channels[None, :]
        kept = tl.load(cache_ptr + b * scb + (r + T)[:, None] * sct + c[None, :] * scc, mask=old, other=0.0)
        tl.store(new_cache_ptr + b * WIDTH * C + r[:, None] * C + c[None, :], kept.to(dtype), mask=old)
    bias = tl.load(conv_b_ptr + c, mask=channels, other=0.0).to(tl.float32)
    gamma = tl.load(gamma_ptr + c, mask=channels, other=0.0).to(tl.float32)
    mixed = (acc + bias[None, :]).to(dtype).to(tl.float32)
    x1 = (x_self + mixed * gamma[None, :]).to(dtype)
    mask = rows[:, None] & channels[None, :]
    offsets = b * T * C + t[:, None] * C + c[None, :]
    tl.store(out_ptr + offsets, x1, mask=mask)
    x1 = x1.to(tl.float32)
    ffn_w = tl.load(ffn_norm_w_ptr + c, mask=channels, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x1 * x1, axis=1) / C + ffn_eps)
    tl.store(ffn_in_ptr + offsets, (x1 * rstd[:, None] * ffn_w[None, :]).to(dtype), mask=mask)


def convnext_mixer(x, cache, norm_weight, eps, conv_weight, conv_bias, gamma, ffn_norm_weight, ffn_eps):
    """x [B, T, C] (channels contiguous), cache [B, W, C] (any strides), conv_weight [C, 1, W + 1] ->
    (x1 [B, T, C], ffn_in [B, T, C], new cache [B, W, C]); see the module's docstring."""
    batch, frames, channels = x.shape
    width = cache.shape[1]
    x = x if x.stride(-1) == 1 and x.stride(1) == channels else x.contiguous()
    out, ffn_in = (torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(2))
    new_cache = torch.empty(batch, width, channels, dtype=x.dtype, device=x.device)
    block_c = triton.next_power_of_2(channels)
    block_t = max(1, min(triton.next_power_of_2(frames), TILE_ELEMENTS // block_c))
    grid = (batch, triton.cdiv(frames, block_t))
    _convnext_mixer_kernel[grid](x, cache, norm_weight, conv_weight, conv_bias, gamma, ffn_norm_weight,
                                 out, ffn_in, new_cache, frames, channels, eps, ffn_eps,
                                 x.stride(0), x.stride(1), *cache.stride(),
                                 WIDTH=width, BLOCK_W=triton.next_power_of_2(width), BLOCK_T=block_t,
                                 BLOCK_C=block_c)
    return out, ffn_in, new_cache
