"""Triton kernels for the frame's hot spots that PyTorch runs as several kernels (CUDA; imported only there, and by
the tests under TRITON_INTERPRET=1, which run the same kernels on CPU tensors).

A tokenizer ConvNeXt block, channels-last ([batch, time, channels]), is x1 = x + gamma * dwconv(rms_norm(x)), then
x1 + ffn_gamma * linear2(gelu(linear1(rms_norm(x1)))), the depthwise convolution causal over a cache of the last
`width` normalised rows.
- convnext_mixer: its first half in one pass: x1, the FFN's input rms_norm(x1) and the new cache. PyTorch needs a
  norm, a concatenation, a layout copy, the convolution, a residual and a second norm; its norm kernel is also slow
  on the many short rows (32-256 channels) of the high-rate stages.
  A program normalises the convolution's input rows once, as one window (its rows and the `width` before them),
  and picks each tap's rows out of it with a product by a 0/1 shift matrix on the tensor cores. On many rows a
  second kernel walks runs of rows in order instead, each row normalised once and the last six carried along in
  registers as the next rows' taps.
- convnext_block: the whole block in one pass, for narrow blocks (at most BLOCK_MAX_CHANNELS channels): the FFN's
  4x-wide hidden rows stay on chip, where PyTorch writes and reads them three times. These are the blocks with many
  rows (up to 3200 per stream and frame), which dominate the tokenizers' bytes at many streams.
- convnext_ffn: the second half in one pass (the hidden rows on chip again), after convnext_mixer: on many rows its
  larger row tiles beat convnext_block's, whose mixer needs small ones. block_kernels says which path a block takes.
Roundings follow PyTorch's: h, the convolution's output, x1, ffn_in, the products' and the GELU's outputs are each
rounded to x's dtype; products accumulate in float32 (float32 tensors: IEEE float32 products, not TF32).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from engine import quantize

# Launches by block width (the entry for the least width >= the block's, the widest past them all), chosen on an
# H200 with perf/tune_block_kernel.py at 1 to 64 streams:
# convnext_mixer's: rows per program, warps (about 2048 elements per program), walkers (0: the tile kernel)
MIXER_LAUNCH = {32: (16, 4, 0), 64: (32, 4, 0), 128: (16, 4, 0), 256: (16, 8, 0), 512: (4, 4, 0), 1024: (2, 4, 0),
                2048: (1, 8, 0)}
# Where the walking mixer (_convnext_mixer_walk_kernel) takes over, {width: (from how many rows, its launch)}; there
# a block narrow enough for convnext_ffn runs as the walking mixer and convnext_ffn instead of convnext_block. Set
# where that was faster at 4-64 streams (per block, walk + FFN against the whole block: 32 channels 39 against 41 us
# at 24 streams, 82 against 104 at 64; 64 channels 62 against 57 at 32 streams, 78 against 83 at 48; 128 channels
# 56 against 55 at 16, 58 against 74 at 24; the 256-channel mixer alone 24 against 31 us at 64 streams)
WALK_LAUNCH = {32: (65536, (128, 4, 16)), 64: (65536, (32, 1, 1)), 128: (16384, (64, 1, 4)), 256: (12800, (128, 4, 8))}
# convnext_block's: rows per program, FFN hidden units per inner step, warps
BLOCK_LAUNCH = {32: (16, 64, 4), 64: (16, 64, 4), 128: (16, 64, 8)}
BLOCK_MAX_CHANNELS = max(BLOCK_LAUNCH)  # wider blocks have few rows and megabytes of FFN weights: cuBLAS runs them
# convnext_ffn's: rows per program, hidden units per inner step, warps, pipeline stages
FFN_LAUNCH = {128: (64, 32, 4, 3)}
FFN_MAX_CHANNELS = max(FFN_LAUNCH)
# the mixers' taps that _convnext_mixer_walk_kernel carries in registers: VibeVoice's 7 (a cache of 6 rows)
WALK_WIDTH = tl.constexpr(6)
# Triton's interpreter (the CPU tests) miscomputes products of bf16 operands: there they are float32 (exact too)
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
INTERPRETING = tl.constexpr(INTERPRETED)  # the same, for the kernels to branch on
# Programmatic dependent launch (Hopper on): each kernel here may start while the kernel before it drains and waits
# for it (griddepcontrol.wait) before touching anything another kernel writes or reads, so its launch hides behind
# the previous kernel's tail. perf/profile_frame.py --no-dependent-launch measures without it.
DEPENDENT_LAUNCH = True


@triton.jit
def after_previous_kernel(PDL: tl.constexpr):
    """Under programmatic dependent launch (PDL), wait until the kernel before has finished and its writes are
    visible, then let the next one start launching. Every kernel here calls it in every program before touching
    memory other kernels write or read (only constant weights may be read before): the waits chain, so a kernel
    also follows every kernel before the one it waits for."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


def dependent_launch(device: torch.device) -> dict:
    """The launch options of a kernel here on `device`: its PDL flag and Triton's launch_pdl."""
    on = DEPENDENT_LAUNCH and not INTERPRETED and device.type == "cuda" and _properties(device).major >= 9
    return {"PDL": on, "launch_pdl": on}


@triton.jit
def _approximate(x, instruction: tl.constexpr):
    """A float32 PTX approximation ("rcp.approx.ftz.f32": 1 / x, "ex2.approx.ftz.f32": 2^x) as its one special-function
    instruction: Triton's division and exp2 add range fix-ups (denormals) that the callers' ranges never need. Exact
    division and exp2 under the interpreter (no inline assembly there)."""
    if INTERPRETING:
        return 1.0 / x if instruction == "rcp.approx.ftz.f32" else tl.exp2(x)
    return tl.inline_asm_elementwise(instruction + " $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _gelu(x):
    """The exact GELU of float32 x: x * Phi(x), Phi through its tail Q(|x|) = erfc(|x| / sqrt(2)) / 2, computed as
    t * 2^(P(t) - x^2 log2(e) / 2) with t = 1 / (1 + 0.3 |x|) and P of degree 8 (perf/fit_gelu.py fits it). Relative
    error at most 3e-6 for |x| <= 8 over the bf16 inputs; PyTorch's x (1 + erf(x / sqrt(2))) / 2 is as exact but
    for x < -4, where 1 + erf cancels. Half the instructions of tl.erf's, whose two ranges select their coefficients
    per element: the narrow tokenizer FFNs are bound by it."""
    u = tl.abs(x)
    t = _approximate(1.0 + 0.3 * u, "rcp.approx.ftz.f32")
    p = tl.fma(t, -0.20777207612991333, 0.7860313653945923)
    p = tl.fma(p, t, -0.8833724856376648)
    p = tl.fma(p, t, 0.06017054617404938)
    p = tl.fma(p, t, 0.1320827305316925)
    p = tl.fma(p, t, 0.1124921664595604)
    p = tl.fma(p, t, 0.624999463558197)
    p = tl.fma(p, t, 1.4378015995025635)
    p = tl.fma(p, t, -3.0624334812164307)
    q = t * _approximate(tl.fma(-0.7213475204444817 * u, u, p), "ex2.approx.ftz.f32")
    return x * tl.where(x >= 0, 1.0 - q, q)


@functools.cache
def _properties(device: torch.device):
    return torch.cuda.get_device_properties(device)


@triton.jit
def _normed_rows(x_ptr, cache_ptr, norm_w, b, src, live, c, channels, C, eps, sxb, sxt, scb, sct, scc,
                 WIDTH: tl.constexpr):
    """Rows `src` (where `live`) of [cache, rms_norm(x)] for batch b, the cache's WIDTH rows at src < 0, as float32
    values of x's dtype: the depthwise convolution's input."""
    dtype = x_ptr.dtype.element_ty
    from_x = src >= 0
    x_mask = (live & from_x)[:, None] & channels[None, :]
    xr = tl.load(x_ptr + b * sxb + src[:, None] * sxt + c[None, :], mask=x_mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(xr * xr, axis=1) / C + eps)
    h = (xr * rstd[:, None] * norm_w[None, :]).to(dtype).to(tl.float32)
    cache_mask = (live & (src < 0))[:, None] & channels[None, :]
    cr = tl.load(cache_ptr + b * scb + (src + WIDTH)[:, None] * sct + c[None, :] * scc, mask=cache_mask,
                 other=0.0).to(tl.float32)
    return tl.where(from_x[:, None], h, cr)


@triton.jit
def _keep_cached_rows(cache_ptr, new_cache_ptr, b, c, channels, T, C, scb, sct, scc, WIDTH: tl.constexpr,
                      BLOCK_W: tl.constexpr):
    """A chunk shorter than the cache (T < WIDTH) keeps the cache's newest rows in front of its own."""
    r = tl.arange(0, BLOCK_W)
    old = (r < WIDTH - T)[:, None] & channels[None, :]
    kept = tl.load(cache_ptr + b * scb + (r + T)[:, None] * sct + c[None, :] * scc, mask=old, other=0.0)
    tl.store(new_cache_ptr + b * WIDTH * C + r[:, None] * C + c[None, :], kept.to(new_cache_ptr.dtype.element_ty),
             mask=old)


@triton.jit
def _mix(x_ptr, cache_ptr, norm_w_ptr, conv_w_ptr, conv_b_ptr, gamma_ptr, ffn_norm_w_ptr, new_cache_ptr,
         b, first, c, T, C, eps, ffn_eps, sxb, sxt, scb, sct, scc,
         WIDTH: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
         WINDOW: tl.constexpr, DOT_FP32: tl.constexpr):
    """Rows first + [0, BLOCK_T) of batch b: (x1, ffn_in) as [BLOCK_T, BLOCK_C] tiles in x's dtype; writes those rows'
    new cache. With WINDOW (a power of two >= BLOCK_T + WIDTH; 0: none) the convolution's input rows are
    normalised once, as one window, and each tap's rows picked out of it by a product with a 0/1 shift matrix
    (exact: one term per sum); without, each tap normalises its rows again (for row tiles below tl.dot's 16)."""
    t = first + tl.arange(0, BLOCK_T)
    rows, channels = t < T, c < C
    dtype = x_ptr.dtype.element_ty
    norm_w = tl.load(norm_w_ptr + c, mask=channels, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    h_self = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    if WINDOW:
        operand = tl.float32 if DOT_FP32 else dtype
        j = tl.arange(0, WINDOW)  # window row j is row first - WIDTH + j of [cache, h]
        src = first - WIDTH + j
        window = _normed_rows(x_ptr, cache_ptr, norm_w, b, src, src < T, c, channels, C, eps, sxb, sxt, scb, sct,
                              scc, WIDTH).to(operand)
        i = tl.arange(0, BLOCK_T)
    for k in tl.static_range(WIDTH + 1):  # tap k reads row t + k - WIDTH of [cache, h]
        if WINDOW:
            shift = (j[None, :] == (i + k)[:, None]).to(operand)
            h = tl.dot(shift, window, input_precision="ieee" if DOT_FP32 else None)
        else:
            h = _normed_rows(x_ptr, cache_ptr, norm_w, b, t + (k - WIDTH), rows, c, channels, C, eps, sxb, sxt, scb,
                             sct, scc, WIDTH)
        tap = tl.load(conv_w_ptr + c * (WIDTH + 1) + k, mask=channels, other=0.0).to(tl.float32)
        acc += h * tap[None, :]
        if k == WIDTH:
            h_self = h
    slot = t - T + WIDTH  # a row among the last WIDTH rows goes into the new cache
    keep = (rows & (slot >= 0))[:, None] & channels[None, :]
    tl.store(new_cache_ptr + b * WIDTH * C + slot[:, None] * C + c[None, :], h_self.to(dtype), mask=keep)
    if first == 0:
        _keep_cached_rows(cache_ptr, new_cache_ptr, b, c, channels, T, C, scb, sct, scc, WIDTH, BLOCK_W)
    x_self = tl.load(x_ptr + b * sxb + t[:, None] * sxt + c[None, :], mask=rows[:, None] & channels[None, :],
                     other=0.0).to(tl.float32)
    bias = tl.load(conv_b_ptr + c, mask=channels, other=0.0).to(tl.float32)
    gamma = tl.load(gamma_ptr + c, mask=channels, other=0.0).to(tl.float32)
    mixed = (acc + bias[None, :]).to(dtype).to(tl.float32)
    x1 = (x_self + mixed * gamma[None, :]).to(dtype)
    x1f = x1.to(tl.float32)
    ffn_w = tl.load(ffn_norm_w_ptr + c, mask=channels, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x1f * x1f, axis=1) / C + ffn_eps)
    return x1, (x1f * rstd[:, None] * ffn_w[None, :]).to(dtype)


@triton.jit
def _convnext_mixer_kernel(x_ptr, cache_ptr, norm_w_ptr, conv_w_ptr, conv_b_ptr, gamma_ptr, ffn_norm_w_ptr,
                           out_ptr, ffn_in_ptr, new_cache_ptr,
                           T, C, eps, ffn_eps, sxb, sxt, scb, sct, scc,
                           WIDTH: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                           WINDOW: tl.constexpr, DOT_FP32: tl.constexpr, PDL: tl.constexpr):
    after_previous_kernel(PDL)
    b, first = tl.program_id(0), tl.program_id(1) * BLOCK_T
    t = first + tl.arange(0, BLOCK_T)
    c = tl.arange(0, BLOCK_C)
    x1, ffn_in = _mix(x_ptr, cache_ptr, norm_w_ptr, conv_w_ptr, conv_b_ptr, gamma_ptr, ffn_norm_w_ptr,
                      new_cache_ptr, b, first, c, T, C, eps, ffn_eps, sxb, sxt, scb, sct, scc, WIDTH, BLOCK_W,
                      BLOCK_T, BLOCK_C, WINDOW, DOT_FP32)
    mask = (t < T)[:, None] & (c < C)[None, :]
    offsets = b * T * C + t[:, None] * C + c[None, :]
    tl.store(out_ptr + offsets, x1, mask=mask)
    tl.store(ffn_in_ptr + offsets, ffn_in, mask=mask)


@triton.jit
def _convnext_mixer_walk_kernel(x_ptr, cache_ptr, norm_w_ptr, conv_w_ptr, conv_b_ptr, gamma_ptr, ffn_norm_w_ptr,
                                out_ptr, ffn_in_ptr, new_cache_ptr,
                                T, C, eps, ffn_eps, sxb, sxt, scb, sct, scc,
                                ROWS: tl.constexpr, WALKERS: tl.constexpr, BLOCK_W: tl.constexpr,
                                BLOCK_C: tl.constexpr, PDL: tl.constexpr):
    """_convnext_mixer_kernel's function for 7-tap mixers (WALK_WIDTH) as walks: program (b, i) takes rows
    i * ROWS + [0, ROWS) of batch b as WALKERS runs of ROWS / WALKERS rows, all walked side by side in order; each
    row is normalised once and the six normalised rows before a walker's current one ride along in registers as the
    taps' inputs (only the six before a run's first are normalised twice). No window, no shift products."""
    after_previous_kernel(PDL)
    WIDTH: tl.constexpr = WALK_WIDTH
    RUN: tl.constexpr = ROWS // WALKERS
    b = tl.program_id(0)
    start = tl.program_id(1) * ROWS + tl.arange(0, WALKERS) * RUN  # each walker's first row
    c = tl.arange(0, BLOCK_C)
    channels = c < C
    dtype = x_ptr.dtype.element_ty
    norm_w = tl.load(norm_w_ptr + c, mask=channels, other=0.0).to(tl.float32)
    bias = tl.load(conv_b_ptr + c, mask=channels, other=0.0).to(tl.float32)[None, :]
    gamma = tl.load(gamma_ptr + c, mask=channels, other=0.0).to(tl.float32)[None, :]
    ffn_w = tl.load(ffn_norm_w_ptr + c, mask=channels, other=0.0).to(tl.float32)[None, :]
    taps = conv_w_ptr + c * (WIDTH + 1)  # [C, 1, WIDTH + 1]: tap k of channel c
    tap0 = tl.load(taps, mask=channels, other=0.0).to(tl.float32)[None, :]
    tap1 = tl.load(taps + 1, mask=channels, other=0.0).to(tl.float32)[None, :]
    tap2 = tl.load(taps + 2, mask=channels, other=0.0).to(tl.float32)[None, :]
    tap3 = tl.load(taps + 3, mask=channels, other=0.0).to(tl.float32)[None, :]
    tap4 = tl.load(taps + 4, mask=channels, other=0.0).to(tl.float32)[None, :]
    tap5 = tl.load(taps + 5, mask=channels, other=0.0).to(tl.float32)[None, :]
    tap6 = tl.load(taps + 6, mask=channels, other=0.0).to(tl.float32)[None, :]
    live = start < T
    h1 = _normed_rows(x_ptr, cache_ptr, norm_w, b, start - 6, live, c, channels, C, eps, sxb, sxt, scb, sct, scc,
                      WIDTH)
    h2 = _normed_rows(x_ptr, cache_ptr, norm_w, b, start - 5, live, c, channels, C, eps, sxb, sxt, scb, sct, scc,
                      WIDTH)
    h3 = _normed_rows(x_ptr, cache_ptr, norm_w, b, start - 4, live, c, channels, C, eps, sxb, sxt, scb, sct, scc,
                      WIDTH)
    h4 = _normed_rows(x_ptr, cache_ptr, norm_w, b, start - 3, live, c, channels, C, eps, sxb, sxt, scb, sct, scc,
                      WIDTH)
    h5 = _normed_rows(x_ptr, cache_ptr, norm_w, b, start - 2, live, c, channels, C, eps, sxb, sxt, scb, sct, scc,
                      WIDTH)
    h6 = _normed_rows(x_ptr, cache_ptr, norm_w, b, start - 1, live, c, channels, C, eps, sxb, sxt, scb, sct, scc,
                      WIDTH)
    if tl.program_id(1) == 0:
        _keep_cached_rows(cache_ptr, new_cache_ptr, b, c, channels, T, C, scb, sct, scc, WIDTH, BLOCK_W)
    for step in range(RUN):
        t = start + step
        mask = (t < T)[:, None] & channels[None, :]
        x = tl.load(x_ptr + b * sxb + t[:, None] * sxt + c[None, :], mask=mask, other=0.0).to(tl.float32)
        h = (x * tl.rsqrt(tl.sum(x * x, axis=1) / C + eps)[:, None] * norm_w[None, :]).to(dtype).to(tl.float32)
        acc = h1 * tap0  # tap k reads row t + k - WIDTH, in _mix's order
        acc += h2 * tap1
        acc += h3 * tap2
        acc += h4 * tap3
        acc += h5 * tap4
        acc += h6 * tap5
        acc += h * tap6
        mixed = (acc + bias).to(dtype).to(tl.float32)
        x1 = (x + mixed * gamma).to(dtype)
        x1f = x1.to(tl.float32)
        ffn_in = (x1f * tl.rsqrt(tl.sum(x1f * x1f, axis=1) / C + ffn_eps)[:, None] * ffn_w).to(dtype)
        offsets = (b * T + t)[:, None] * C + c[None, :]
        tl.store(out_ptr + offsets, x1, mask=mask)
        tl.store(ffn_in_ptr + offsets, ffn_in, mask=mask)
        slot = t - T + WIDTH  # the last WIDTH rows go into the new cache
        tl.store(new_cache_ptr + (b * WIDTH + slot)[:, None] * C + c[None, :], h.to(dtype),
                 mask=mask & (slot >= 0)[:, None])
        h1, h2, h3, h4, h5, h6 = h2, h3, h4, h5, h6, h


@triton.jit
def _ffn(ffn_in, c, channels, w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, HIDDEN,
         BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, DOT_FP32: tl.constexpr):
    """linear2(gelu(linear1(ffn_in))) for a [BLOCK_T, BLOCK_C] tile in the output's dtype, float32 (unrounded) out,
    BLOCK_H hidden units at a time: the 4x-wide hidden rows never leave the chip."""
    dtype = ffn_in.dtype
    operand = tl.float32 if DOT_FP32 else dtype
    ffn_in = ffn_in.to(operand)
    ffn = tl.zeros((BLOCK_T, BLOCK_C), dtype=tl.float32)
    for start in range(0, HIDDEN, BLOCK_H):
        j = start + tl.arange(0, BLOCK_H)
        units = j < HIDDEN
        w1 = tl.load(w1_ptr + j[:, None] * C + c[None, :], mask=units[:, None] & channels[None, :], other=0.0)
        b1 = tl.load(b1_ptr + j, mask=units, other=0.0).to(tl.float32)
        hidden = tl.dot(ffn_in, tl.trans(w1.to(operand)), input_precision="ieee" if DOT_FP32 else None)
        hidden = (hidden + b1[None, :]).to(dtype).to(tl.float32)
        hidden = _gelu(hidden).to(dtype)
        w2 = tl.load(w2_ptr + c[:, None] * HIDDEN + j[None, :], mask=channels[:, None] & units[None, :], other=0.0)
        ffn += tl.dot(hidden.to(operand), tl.trans(w2.to(operand)), input_precision="ieee" if DOT_FP32 else None)
    return ffn + tl.load(b2_ptr + c, mask=channels, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _ffn_residual(x1, y, c, channels, ffn_gamma_ptr):
    """x1 + ffn_gamma * y, y (the FFN's float32 output) rounded to x1's dtype first, as PyTorch's addcmul sees it."""
    ffn_gamma = tl.load(ffn_gamma_ptr + c, mask=channels, other=0.0).to(tl.float32)
    return (x1.to(tl.float32) + y.to(x1.dtype).to(tl.float32) * ffn_gamma[None, :]).to(x1.dtype)


@triton.jit
def _convnext_block_kernel(x_ptr, cache_ptr, norm_w_ptr, conv_w_ptr, conv_b_ptr, gamma_ptr, ffn_norm_w_ptr,
                           w1_ptr, b1_ptr, w2_ptr, b2_ptr, ffn_gamma_ptr, out_ptr, new_cache_ptr,
                           T, C, HIDDEN, eps, ffn_eps, sxb, sxt, scb, sct, scc,
                           WIDTH: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_H: tl.constexpr, WINDOW: tl.constexpr, DOT_FP32: tl.constexpr, PDL: tl.constexpr):
    after_previous_kernel(PDL)
    b, first = tl.program_id(0), tl.program_id(1) * BLOCK_T
    t = first + tl.arange(0, BLOCK_T)
    c = tl.arange(0, BLOCK_C)
    channels = c < C
    x1, ffn_in = _mix(x_ptr, cache_ptr, norm_w_ptr, conv_w_ptr, conv_b_ptr, gamma_ptr, ffn_norm_w_ptr,
                      new_cache_ptr, b, first, c, T, C, eps, ffn_eps, sxb, sxt, scb, sct, scc, WIDTH, BLOCK_W,
                      BLOCK_T, BLOCK_C, WINDOW, DOT_FP32)
    y = _ffn(ffn_in, c, channels, w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, HIDDEN, BLOCK_T, BLOCK_C, BLOCK_H, DOT_FP32)
    out = _ffn_residual(x1, y, c, channels, ffn_gamma_ptr)
    tl.store(out_ptr + b * T * C + t[:, None] * C + c[None, :], out, mask=(t < T)[:, None] & channels[None, :])


@triton.jit
def _convnext_ffn_kernel(x1_ptr, ffn_in_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, ffn_gamma_ptr, out_ptr, R, C, HIDDEN,
                         BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
                         DOT_FP32: tl.constexpr, PDL: tl.constexpr):
    after_previous_kernel(PDL)
    r = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    c = tl.arange(0, BLOCK_C)
    channels = c < C
    mask = (r < R)[:, None] & channels[None, :]
    offsets = r[:, None] * C + c[None, :]
    ffn_in = tl.load(ffn_in_ptr + offsets, mask=mask, other=0.0)
    y = _ffn(ffn_in, c, channels, w1_ptr, b1_ptr, w2_ptr, b2_ptr, C, HIDDEN, BLOCK_T, BLOCK_C, BLOCK_H, DOT_FP32)
    x1 = tl.load(x1_ptr + offsets, mask=mask, other=0.0)
    tl.store(out_ptr + offsets, _ffn_residual(x1, y, c, channels, ffn_gamma_ptr), mask=mask)


def _prepare(x, cache, rows: int, min_block: int = 1):
    """(x with contiguous rows, the new cache's buffer, grid, the strides, the launch options _mix's kernels share),
    with at most `rows` rows per program and blocks of at least `min_block`."""
    batch, frames, channels = x.shape
    width = cache.shape[1]
    x = x if x.stride(-1) == 1 and x.stride(1) == channels else x.contiguous()
    new_cache = torch.empty(batch, width, channels, dtype=x.dtype, device=x.device)
    block_c = max(min_block, triton.next_power_of_2(channels))
    block_t = max(min_block, min(triton.next_power_of_2(frames), rows))
    grid = (batch, triton.cdiv(frames, block_t))
    strides = (x.stride(0), x.stride(1), *cache.stride())
    window = triton.next_power_of_2(block_t + width) if min(block_t, block_c) >= 16 else 0  # tl.dot's least: 16
    options = dict(WIDTH=width, BLOCK_W=triton.next_power_of_2(width), BLOCK_T=block_t, BLOCK_C=block_c,
                   WINDOW=window, DOT_FP32=x.dtype == torch.float32 or INTERPRETED, **dependent_launch(x.device))
    return x, new_cache, grid, strides, options


def convnext_mixer(x, cache, norm_weight, eps, conv_weight, conv_bias, gamma, ffn_norm_weight, ffn_eps, *,
                   launch: tuple[int, int, int] | None = None):
    """x [B, T, C] (channels contiguous), cache [B, W, C] (any strides), conv_weight [C, 1, W + 1] ->
    (x1 [B, T, C], ffn_in [B, T, C], new cache [B, W, C]); see the module's docstring. `launch` (rows per program,
    warps, walkers: 0 for the tile kernel, else _convnext_mixer_walk_kernel's, where W = WALK_WIDTH) overrides
    mixer_launch's (perf/tune_block_kernel.py)."""
    rows, warps, walkers = launch or mixer_launch(x.shape[-1], x.shape[0] * x.shape[1])
    x, new_cache, grid, strides, options = _prepare(x, cache, rows)
    out, ffn_in = torch.empty_like(x), torch.empty_like(x)
    arguments = (x, cache, norm_weight, conv_weight, conv_bias, gamma, ffn_norm_weight, out, ffn_in, new_cache,
                 x.shape[1], x.shape[2], eps, ffn_eps, *strides)
    if walkers and cache.shape[1] == WALK_WIDTH:
        _convnext_mixer_walk_kernel[grid](*arguments, ROWS=options["BLOCK_T"],
                                          WALKERS=min(walkers, options["BLOCK_T"]), BLOCK_W=options["BLOCK_W"],
                                          BLOCK_C=options["BLOCK_C"], PDL=options["PDL"], num_warps=warps,
                                          launch_pdl=options["launch_pdl"])
    else:
        _convnext_mixer_kernel[grid](*arguments, num_warps=warps, **options)
    return out, ffn_in, new_cache


def convnext_ffn(x1, ffn_in, linear1_weight, linear1_bias, linear2_weight, linear2_bias, ffn_gamma, *,
                 launch: tuple[int, int, int, int] | None = None):
    """A ConvNeXt block's second half in one kernel: x1 + ffn_gamma * linear2(gelu(linear1(ffn_in))) for x1, ffn_in
    [..., C] (convnext_mixer's outputs), linear1 [H, C], linear2 [C, H]; at most FFN_MAX_CHANNELS channels (the
    whole output row stays in registers). `launch` (rows per program, hidden units per inner step, warps, pipeline
    stages) overrides FFN_LAUNCH's (perf/tune_block_kernel.py)."""
    channels = x1.shape[-1]
    if channels > FFN_MAX_CHANNELS:
        raise ValueError(f"convnext_ffn takes at most {FFN_MAX_CHANNELS} channels, not {channels}")
    rows_per_program, hidden_tile, warps, stages = launch or launch_for(FFN_LAUNCH, channels)
    flat_x1, flat_in = (t.reshape(-1, channels).contiguous() for t in (x1, ffn_in))
    rows, hidden = flat_x1.shape[0], linear1_weight.shape[0]
    block_t = max(16, min(triton.next_power_of_2(rows), rows_per_program))  # tl.dot's least: 16
    out = torch.empty_like(flat_x1)
    _convnext_ffn_kernel[(triton.cdiv(rows, block_t),)](
        flat_x1, flat_in, linear1_weight, linear1_bias, linear2_weight, linear2_bias, ffn_gamma, out, rows, channels,
        hidden, BLOCK_T=block_t, BLOCK_C=max(16, triton.next_power_of_2(channels)),
        BLOCK_H=_hidden_block(hidden_tile, hidden, x1.dtype), DOT_FP32=x1.dtype == torch.float32 or INTERPRETED,
        num_warps=warps, num_stages=stages, **dependent_launch(x1.device))
    return out.view(x1.shape)


def convnext_block(x, cache, norm_weight, eps, conv_weight, conv_bias, gamma, ffn_norm_weight, ffn_eps,
                   linear1_weight, linear1_bias, linear2_weight, linear2_bias, ffn_gamma, *,
                   launch: tuple[int, int, int] | None = None):
    """The whole block: as convnext_mixer, with linear1 [4C, C], linear2 [C, 4C] (nn.Linear's layout) ->
    (out [B, T, C], new cache [B, W, C]). For at most BLOCK_MAX_CHANNELS channels. `launch` (rows per program,
    hidden units per inner step, warps) overrides BLOCK_LAUNCH's (perf/tune_block_kernel.py)."""
    channels = x.shape[-1]
    if channels > BLOCK_MAX_CHANNELS:
        raise ValueError(f"convnext_block takes at most {BLOCK_MAX_CHANNELS} channels, not {channels}")
    rows, hidden_tile, warps = launch or launch_for(BLOCK_LAUNCH, channels)
    x, new_cache, grid, strides, options = _prepare(x, cache, rows, min_block=16)  # tl.dot's least: 16
    out = torch.empty_like(x)
    hidden = linear1_weight.shape[0]
    _convnext_block_kernel[grid](x, cache, norm_weight, conv_weight, conv_bias, gamma, ffn_norm_weight,
                                 linear1_weight, linear1_bias, linear2_weight, linear2_bias, ffn_gamma, out,
                                 new_cache, x.shape[1], channels, hidden, eps, ffn_eps, *strides,
                                 BLOCK_H=_hidden_block(hidden_tile, hidden, x.dtype), num_warps=warps, **options)
    return out, new_cache


def _hidden_block(hidden_tile: int, hidden: int, dtype: torch.dtype) -> int:
    """The FFN kernels' BLOCK_H: the launch's hidden tile, at most the hidden width (a power of two), at most 32 for
    float32 operands (they take twice the shared memory)."""
    return min(hidden_tile, triton.next_power_of_2(hidden), 32 if dtype == torch.float32 else hidden_tile)


def launch_for(launches: dict[int, tuple], channels: int) -> tuple:
    """A launch table's entry for blocks of `channels`: the least width >= channels, else the widest."""
    return launches[min((width for width in launches if width >= channels), default=max(launches))]


def mixer_launch(channels: int, rows: int) -> tuple[int, int, int]:
    """convnext_mixer's launch for `channels` over `rows` rows (batch x time): WALK_LAUNCH's where it says the
    mixer walks, else MIXER_LAUNCH's."""
    return _walk_launch(channels, rows) or launch_for(MIXER_LAUNCH, channels)


def block_kernels(channels: int, rows: int) -> str:
    """Which kernels run a ConvNeXt block (exact GELU) of `channels` over `rows` rows (batch x time): "block"
    (convnext_block), "mixer+ffn" (convnext_mixer, convnext_ffn) or "mixer" (convnext_mixer, then cuBLAS)."""
    if channels <= FFN_MAX_CHANNELS and _walk_launch(channels, rows):
        return "mixer+ffn"
    return "block" if channels <= BLOCK_MAX_CHANNELS else "mixer"


def _walk_launch(channels: int, rows: int) -> tuple[int, int, int] | None:
    """WALK_LAUNCH's launch where `channels` over `rows` rows walk; None elsewhere."""
    if channels > max(WALK_LAUNCH):
        return None
    least_rows, launch = launch_for(WALK_LAUNCH, channels)
    return launch if rows >= least_rows else None


# --- the diffusion solve's per-step glue (engine.network.DiffusionSolver; its torch twins are engine.network's
# functions of the same names). One program per row; float32 math, each result rounded once.

@triton.jit
def _modulated_norm_kernel(hidden_ptr, gate_ptr, update_ptr, partial_ptr, squares_ptr, update_scale_ptr,
                           update_bias_ptr, update_inner, update_eps, weight_ptr, shift_ptr, scale_ptr,
                           hidden_out_ptr, normed_ptr, H, eps, modulation_stride, RESIDUAL: tl.constexpr,
                           WEIGHTED: tl.constexpr, SUMS: tl.constexpr, SPLITS: tl.constexpr, ROWS: tl.constexpr,
                           NORM: tl.constexpr, SCALED: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
                           PDL: tl.constexpr):
    after_previous_kernel(PDL)
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    dtype = normed_ptr.dtype.element_ty
    hidden = tl.load(hidden_ptr + row * H + cols, mask=mask, other=0.0).to(tl.float32)
    modulation = row * modulation_stride + cols
    if RESIDUAL:
        gate = tl.load(gate_ptr + modulation, mask=mask, other=0.0).to(tl.float32)
        update = _product_values(update_ptr, partial_ptr, squares_ptr, update_scale_ptr, update_bias_ptr, cols, row,
                                 mask, H, update_inner, update_eps, SUMS, SPLITS, ROWS, NORM, SCALED, HAS_BIAS, dtype)
        hidden = (hidden + gate * update).to(dtype)
        tl.store(hidden_out_ptr + row * H + cols, hidden, mask=mask)
        hidden = hidden.to(tl.float32)
    normed = hidden * tl.rsqrt(tl.sum(hidden * hidden, axis=0) / H + eps)
    if WEIGHTED:
        normed = normed * tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    normed = normed.to(dtype).to(tl.float32)
    shift = tl.load(shift_ptr + modulation, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + modulation, mask=mask, other=0.0).to(tl.float32)
    tl.store(normed_ptr + row * H + cols, (shift + normed * scale).to(dtype), mask=mask)


def _modulated_norm(hidden, gate, update, weight, eps, shift, scale):
    rows, width = hidden.shape
    if not (shift.stride() == scale.stride() and shift.stride(1) == 1 and (gate is None or gate.stride() ==
                                                                             shift.stride())):
        raise ValueError("shift, scale and gate must be rows of one modulation tensor (the same strides)")
    hidden = hidden.contiguous()
    normed = torch.empty_like(hidden)
    hidden_out = torch.empty_like(hidden) if gate is not None else hidden
    block = triton.next_power_of_2(width)
    update_arguments, update_flags = _product_arguments(update)
    _modulated_norm_kernel[(rows,)](hidden, gate, *update_arguments, weight, shift, scale, hidden_out, normed, width,
                                    eps, shift.stride(0), RESIDUAL=gate is not None, WEIGHTED=weight is not None,
                                    BLOCK=block, num_warps=min(16, max(1, block // 256)), **update_flags,
                                    **dependent_launch(hidden.device))
    return hidden_out, normed


def modulated_norm(hidden, weight, eps, shift, scale):
    """shift + rms_norm(hidden) * scale (the norm's weight may be None); hidden [R, H], shift/scale [R, H] rows of
    one modulation tensor."""
    return _modulated_norm(hidden, None, None, weight, eps, shift, scale)[1]


def residual_modulated_norm(hidden, gate, update, weight, eps, shift, scale):
    """(hidden + gate * update, then modulated_norm of that): a layer's gated residual and the next norm; `update`
    a tensor or a few-row product's SplitSums, finished here as they are loaded."""
    return _modulated_norm(hidden, gate, update, weight, eps, shift, scale)


@triton.jit
def _silu_mul_kernel(gate_up_ptr, out_ptr, F, BLOCK: tl.constexpr, PDL: tl.constexpr):
    after_previous_kernel(PDL)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < F
    dtype = out_ptr.dtype.element_ty
    gate = tl.load(gate_up_ptr + row * 2 * F + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * 2 * F + F + cols, mask=mask, other=0.0).to(tl.float32)
    activated = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    tl.store(out_ptr + row * F + cols, (activated * up).to(dtype), mask=mask)


def silu_mul(gate_up):
    """silu(gate) * up for gate_up [R, 2F] = [gate | up] -> [R, F]."""
    rows, width = gate_up.shape
    gate_up = gate_up.contiguous()
    out = torch.empty(rows, width // 2, dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(rows, triton.cdiv(width // 2, block))](gate_up, out, width // 2, BLOCK=block,
                                                                  **dependent_launch(gate_up.device))
    return out


@triton.jit
def _guided_update_kernel(normed_ptr, w_ptr, bias_ptr, x_ptr, previous_ptr, cfg_ptr, coefficients_ptr, x_out_ptr,
                          x0_ptr, B, D, H, coefficients_stride, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr,
                          BLOCK_H: tl.constexpr, PDL: tl.constexpr):
    """Latent values program_id(1) * BLOCK_D + [0, BLOCK_D) of row program_id(0): the head's last product for them
    (positive and negative rows, their weight rows read once), then the guidance and the solver's update, which are
    elementwise."""
    after_previous_kernel(PDL)
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = cols < D
    dtype = x_out_ptr.dtype.element_ty
    acc_pos = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_neg = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for start in range(0, H, BLOCK_H):  # one step for H up to BLOCK_H (every released size)
        h = start + tl.arange(0, BLOCK_H)
        inner = h < H
        w = tl.load(w_ptr + cols[:, None] * H + h[None, :], mask=mask[:, None] & inner[None, :], other=0.0)
        pos = tl.load(normed_ptr + row * H + h, mask=inner, other=0.0).to(tl.float32)
        neg = tl.load(normed_ptr + (B + row) * H + h, mask=inner, other=0.0).to(tl.float32)
        acc_pos += tl.sum(w.to(tl.float32) * pos[None, :], axis=1)
        acc_neg += tl.sum(w.to(tl.float32) * neg[None, :], axis=1)
    v_pos = _rounded_output(acc_pos, cols, mask, bias_ptr, HAS_BIAS, dtype)
    v_neg = _rounded_output(acc_neg, cols, mask, bias_ptr, HAS_BIAS, dtype)
    x = tl.load(x_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    previous = tl.load(previous_ptr + row * D + cols, mask=mask, other=0.0).to(tl.float32)
    cfg = tl.load(cfg_ptr + row).to(tl.float32)
    base = coefficients_ptr + row * coefficients_stride
    alpha, sigma = tl.load(base).to(tl.float32), tl.load(base + 1).to(tl.float32)
    a, b, c = tl.load(base + 2).to(tl.float32), tl.load(base + 3).to(tl.float32), tl.load(base + 4).to(tl.float32)
    v = v_neg + cfg * (v_pos - v_neg)
    x0 = (alpha * x - sigma * v).to(dtype).to(tl.float32)
    tl.store(x0_ptr + row * D + cols, x0.to(dtype), mask=mask)
    x = (a * x + b * x0 + c * (x0 - previous)).to(dtype)
    tl.store(x_out_ptr + row * D + cols, x, mask=mask)
    tl.store(x_out_ptr + (B + row) * D + cols, x, mask=mask)  # twice: the head's positive and negative rows


# guided_update's latent values per program: few enough that a row's programs read the final product's weights in
# parallel, each its [GUIDED_BLOCK_D, H] rows in one step
GUIDED_BLOCK_D, GUIDED_MOST_INNER, GUIDED_WARPS = 4, 4096, 8


def guided_update(normed, projection: tuple, x, previous_x0, cfg, coefficients):
    """One solver step after the head's last norm: v = the final product of normed [2B, H] (`projection`: its
    float weight [D, H] and bias) for the positive rows, then the negative ones; x [2B, D] (the latents twice, as
    the head's positive and negative rows take them), previous_x0 [B, D], cfg [B], coefficients [B, 5] (alpha,
    sigma, a, b, c of engine.sampler.schedule_table) -> (next x, twice as x, x0)."""
    weight, bias = projection
    rows, width = previous_x0.shape
    inner = normed.shape[1]
    if coefficients.stride(1) != 1:
        raise ValueError("the coefficients' columns must be contiguous")
    x_out, x0 = torch.empty_like(x), torch.empty_like(previous_x0)
    _guided_update_kernel[(rows, triton.cdiv(width, GUIDED_BLOCK_D))](
        normed.contiguous(), weight.contiguous(), bias, x.contiguous(), previous_x0.contiguous(), cfg.contiguous(),
        coefficients, x_out, x0, rows, width, inner, coefficients.stride(0), HAS_BIAS=bias is not None,
        BLOCK_D=GUIDED_BLOCK_D, BLOCK_H=min(triton.next_power_of_2(inner), GUIDED_MOST_INNER),
        num_warps=GUIDED_WARPS, **dependent_launch(x.device))
    return x_out, x0


# --- the cached LM step's attention with its rotary embedding and KV write (engine.network.rotary_attend, the
# torch twin, and cached_decoder_layer)

@triton.jit
def _rotated(product_ptr, partial_ptr, squares_ptr, scale_ptr, bias_ptr, head, d, cos, sin, row, heads, width, K,
             eps, SUMS: tl.constexpr, SPLITS: tl.constexpr, ROWS: tl.constexpr, NORM: tl.constexpr,
             SCALED: tl.constexpr, HAS_BIAS: tl.constexpr, D: tl.constexpr, dtype):
    """The qkv product's heads starting at offsets `head` (`heads` their mask) of `row`, rotated (x * cos + x rolled
    by half a head * sin) and rounded to dtype; head, d, cos and sin shaped to broadcast."""
    x = _product_values(product_ptr, partial_ptr, squares_ptr, scale_ptr, bias_ptr, head + d, row, heads, width, K,
                        eps, SUMS, SPLITS, ROWS, NORM, SCALED, HAS_BIAS, dtype)
    rolled = _product_values(product_ptr, partial_ptr, squares_ptr, scale_ptr, bias_ptr, head + (d + D // 2) % D, row,
                             heads, width, K, eps, SUMS, SPLITS, ROWS, NORM, SCALED, HAS_BIAS, dtype)
    return (x * cos + rolled * sin).to(dtype)


# rotary_attend's launch: positions per step, warps, stages (perf/tune_attention.py). At few rows each program's
# loop is bound by its steps' latency: 128 positions a step (1.5B, two rows, 512 positions: 8.9 us against 11.8
# for 64). Many rows fill the multiprocessors with programs, which then fit two to one at 64 positions a step.
ATTEND_FEW_ROWS_LAUNCH, ATTEND_LAUNCH = (128, 4, 3), (64, 4, 3)
# At few rows the context is split among programs of at least ATTEND_SPLIT_POSITIONS positions each, at most
# ATTEND_MOST_SPLITS of them, their sums then combined: 1.5B, two rows, 512 / 1024 / 2048 / 8192 positions 9.5 /
# 15.5 / 27.3 / 98.1 us unsplit, 6.1 / 6.7 / 7.1 / 11.7 split (the last 16 ways of 512; 64 ways of 128: 15.5)
ATTEND_SPLIT_POSITIONS, ATTEND_MOST_SPLITS = 128, 16
COMBINE_SPLITS = tl.constexpr(4)  # the splits' sums loaded together when the last program combines them


@triton.jit
def _rotary_attend_kernel(product_ptr, partial_ptr, squares_ptr, scale_ptr, bias_ptr, K, eps,
                          cos_ptr, sin_ptr, positions_ptr, keys_ptr, values_ptr, out_ptr, parts_ptr, stats_ptr,
                          arrivals_ptr, T, chunk, softmax_scale, skr, skh, skt, svr, svh, svt, SUMS: tl.constexpr,
                          SPLITS: tl.constexpr, ROWS: tl.constexpr, NORM: tl.constexpr, SCALED: tl.constexpr,
                          HAS_BIAS: tl.constexpr, GROUP: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr,
                          BLOCK_N: tl.constexpr, CONTEXT_SPLIT: tl.constexpr, DOT_FP32: tl.constexpr,
                          PDL: tl.constexpr):
    """Row program_id(0)'s query heads that share key/value head program_id(1), over the row's live positions in
    [chunk * program_id(2), + chunk): their q and the row's new k rotated and rounded, k and v written into the
    caches at the row's position (by the program whose positions hold it), then attention (online softmax). With
    CONTEXT_SPLIT, each program leaves its unnormalised sums and their softmax statistics (running maximum, total),
    and the last of the row's and key/value head's programs to arrive (counted in arrivals_ptr, which it sets back to
    0) combines them (_combine_splits), where a second kernel would cost a launch."""
    after_previous_kernel(PDL)
    row, kv, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    kv_heads = tl.num_programs(1)
    heads = kv_heads * GROUP
    width = (heads + 2 * kv_heads) * D
    dtype = out_ptr.dtype.element_ty
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, D)
    query_heads = kv * GROUP + g
    grouped = (g < GROUP)[:, None]
    cos = tl.load(cos_ptr + row * D + d).to(tl.float32)
    sin = tl.load(sin_ptr + row * D + d).to(tl.float32)
    q = _rotated(product_ptr, partial_ptr, squares_ptr, scale_ptr, bias_ptr, query_heads[:, None] * D, d[None, :],
                 cos[None, :], sin[None, :], row, grouped, width, K, eps, SUMS, SPLITS, ROWS, NORM, SCALED, HAS_BIAS,
                 D, dtype)
    everywhere = d < D
    k = _rotated(product_ptr, partial_ptr, squares_ptr, scale_ptr, bias_ptr, (heads + kv) * D, d, cos, sin, row,
                 everywhere, width, K, eps, SUMS, SPLITS, ROWS, NORM, SCALED, HAS_BIAS, D, dtype)
    v = _product_values(product_ptr, partial_ptr, squares_ptr, scale_ptr, bias_ptr, (heads + kv_heads + kv) * D + d,
                        row, everywhere, width, K, eps, SUMS, SPLITS, ROWS, NORM, SCALED, HAS_BIAS, dtype).to(dtype)
    position = tl.load(positions_ptr + row)
    begin = split * chunk
    owner = d < tl.where((position >= begin) & (position < begin + chunk), D, 0)  # all of d, or none
    tl.store(keys_ptr + row * skr + kv * skh + position * skt + d, k, mask=owner)
    tl.store(values_ptr + row * svr + kv * svh + position * svt + d, v, mask=owner)
    tl.debug_barrier()  # the program's own writes, visible to all its threads before the loop reads them

    operand = tl.float32 if DOT_FP32 else dtype
    q = q.to(operand)
    length = tl.minimum(position + 1, T)  # positions past the row's own are never read
    best = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, D), dtype=tl.float32)
    for start in range(begin, tl.minimum(begin + chunk, length), BLOCK_N):  # online softmax, BLOCK_N at a time
        n = start + tl.arange(0, BLOCK_N)
        live = n < length
        keys = tl.load(keys_ptr + row * skr + kv * skh + n[:, None] * skt + d[None, :], mask=live[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(keys.to(operand)), input_precision="ieee" if DOT_FP32 else None) * softmax_scale
        scores = tl.where(live[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, axis=1))
        weights = tl.exp(scores - new_best[:, None])
        correction = tl.exp(best - new_best)
        total = total * correction + tl.sum(weights, axis=1)
        values = tl.load(values_ptr + row * svr + kv * svh + n[:, None] * svt + d[None, :], mask=live[:, None],
                         other=0.0)
        update = tl.dot(weights.to(operand), values.to(operand), input_precision="ieee" if DOT_FP32 else None)
        acc = acc * correction[:, None] + update
        best = new_best
    where = row * heads + query_heads
    if CONTEXT_SPLIT:
        rows_heads = tl.num_programs(0) * heads
        tl.store(parts_ptr + (split * rows_heads + where)[:, None] * D + d[None, :], acc, mask=grouped)
        tl.store(stats_ptr + 2 * (split * rows_heads + where), best, mask=g < GROUP)
        tl.store(stats_ptr + 2 * (split * rows_heads + where) + 1, total, mask=g < GROUP)
        tl.debug_barrier()  # every thread's stores are issued before the count releases them
        counter = arrivals_ptr + row * kv_heads + kv
        if tl.atomic_add(counter, 1, sem="acq_rel") == tl.num_programs(2) - 1:
            tl.store(counter, 0)  # ready for the next layer
            out = _combine_splits(parts_ptr, stats_ptr, where, g < GROUP, d, rows_heads, tl.num_programs(2), D,
                                  BLOCK_G)
            tl.store(out_ptr + where[:, None] * D + d[None, :], out.to(dtype), mask=grouped)
    else:
        tl.store(out_ptr + where[:, None] * D + d[None, :], (acc / total[:, None]).to(dtype), mask=grouped)


@triton.jit
def _combine_splits(parts_ptr, stats_ptr, where, heads, d, rows_heads, splits, D: tl.constexpr,
                    BLOCK_G: tl.constexpr):
    """Query heads `where` (of rows_heads; `heads` their mask) over all their context splits: each split's sums
    weighted by exp(its maximum - the largest), over their totals weighted alike, COMBINE_SPLITS splits at a time
    (the largest so far rescaling what came before). An empty split's maximum is -inf: weight 0; the first split
    always holds position 0. Loads skip L1 (".cg"): the splits were written by other multiprocessors."""
    best = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    total = tl.zeros((BLOCK_G,), dtype=tl.float32)
    out = tl.zeros((BLOCK_G, D), dtype=tl.float32)
    for first in range(0, splits, COMBINE_SPLITS):
        s = first + tl.arange(0, COMBINE_SPLITS)
        at = (s[:, None] * rows_heads + where[None, :])  # [splits, heads]
        live = (s < splits)[:, None] & heads[None, :]
        split_best = tl.load(stats_ptr + 2 * at, mask=live, other=float("-inf"), cache_modifier=".cg")
        split_total = tl.load(stats_ptr + 2 * at + 1, mask=live, other=0.0, cache_modifier=".cg")
        parts = tl.load(parts_ptr + at[:, :, None] * D + d[None, None, :], mask=live[:, :, None], other=0.0,
                        cache_modifier=".cg")
        new_best = tl.maximum(best, tl.max(split_best, axis=0))
        new_best = tl.where(heads, new_best, 0.0)  # padding heads: finite, so no inf - inf
        weight = tl.exp(split_best - new_best[None, :])
        correction = tl.exp(best - new_best)
        total = total * correction + tl.sum(split_total * weight, axis=0)
        out = out * correction[:, None] + tl.sum(parts * weight[:, :, None], axis=0)
        best = new_best
    return out / tl.where(heads, total, 1.0)[:, None]


def attend_launch(rows: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """rotary_attend's launch (ATTEND_FEW_ROWS_LAUNCH or ATTEND_LAUNCH) for `rows` rows of `dtype` caches; float32
    ones take half the positions per step (the same bytes)."""
    block_n, warps, stages = ATTEND_FEW_ROWS_LAUNCH if rows <= FEW_ROWS else ATTEND_LAUNCH
    return (block_n // 2 if dtype == torch.float32 else block_n), warps, stages


def attend_splits(rows: int, context: int) -> int:
    """How many programs share each row's positions: at few rows one per ATTEND_SPLIT_POSITIONS of the context (a
    program's steps are latency-bound), up to ATTEND_MOST_SPLITS; at many rows one (the rows fill the
    multiprocessors)."""
    if rows > FEW_ROWS:
        return 1
    return max(1, min(context // ATTEND_SPLIT_POSITIONS, ATTEND_MOST_SPLITS))


def rotary_attend(qkv, cos, sin, keys, values, mask, positions, heads: int, kv_heads: int, scale: float,
                  launch: tuple[int, int, int] | None = None):
    """engine.network.rotary_attend in one kernel: qkv [R, (heads + 2 kv) d] (a tensor, or a few-row product's
    SplitSums, finished here as they are loaded), cos/sin [R, d] (sin carrying rotate_half's sign): q and k rotated,
    k and v written into keys/values [R, kv, T, d] (views, last dimension contiguous) at `positions` [R], then one
    new token per row's attention over positions <= `positions` (what the additive `mask` [R, 1, 1, T] says too;
    this kernel reads positions, and only the live part of the cache) -> [R, heads, 1, d]. At few rows a long
    context is split among programs (attend_splits), whose sums the last of them combines. `launch`
    (positions per step, warps, stages) overrides attend_launch's."""
    rows, head_dim = cos.shape
    if keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError("the KV caches' last dimension must be contiguous")
    arguments, flags = _product_arguments(qkv)
    out = torch.empty(rows, heads, 1, head_dim, dtype=keys.dtype, device=keys.device)
    group = heads // kv_heads
    block_n, warps, stages = launch or attend_launch(rows, keys.dtype)
    context = keys.shape[2]
    chunk = triton.cdiv(triton.cdiv(context, attend_splits(rows, context)), block_n) * block_n
    splits = triton.cdiv(context, chunk)
    parts = stats = None
    if splits > 1:
        parts = torch.empty(splits, rows, heads, head_dim, dtype=torch.float32, device=keys.device)
        stats = torch.empty(splits, rows, heads, 2, dtype=torch.float32, device=keys.device)
    _rotary_attend_kernel[(rows, kv_heads, splits)](
        *arguments, cos.contiguous(), sin.contiguous(), positions, keys, values, out, parts, stats,
        _arrivals(keys.device, rows * kv_heads) if splits > 1 else None, context, chunk, scale, *keys.stride()[:3],
        *values.stride()[:3], GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)),
        D=head_dim, BLOCK_N=block_n, CONTEXT_SPLIT=splits > 1, DOT_FP32=keys.dtype == torch.float32 or INTERPRETED,
        num_warps=warps, num_stages=stages, **flags, **dependent_launch(keys.device))
    return out


# --- products of few rows: a frame's LM step and diffusion solve up to FEW_ROWS rows (8 streams' positive and
# negative rows) and the tokenizers' widest blocks at few streams, with what surrounds a product in a layer
# (engine.network.linear_block; its torch ops are the twin). 8-bit weights (engine.quantize, a float32 scale per
# output): fp8 ones multiply fp8 activations on the tensor cores (x quantized in the kernel per ACTIVATION_GROUP
# values of a row, as engine.quantize.quantize_activations does, each group's sums scaled in float32); int8 ones are
# converted to x's dtype on the weight tile (exact)

FEW_ROWS = 16  # tl.dot's least tile side: the rows are padded to it
# few_rows_launch's rule, measured on an H200 with perf/tune_few_rows_linear.py (1.5B and 7B products, two rows):
# 64 outputs per program, 128 inputs per step (64 for a gate-up product, two tiles a step, and after an RMSNorm),
# 5 pipeline stages (3 for a gate-up product with more tiles than two per multiprocessor). The inner width is split
# while the programs do not fill the multiprocessors, down to 1024 inputs a split (the down products; small products
# lose to the extra kernel); a narrow product after an RMSNorm is split until its programs outnumber the
# multiprocessors and each split is at most 1024 wide (unsplit, the 1.5B's qkv took 13 us instead of 7, the 7B's
# 31 instead of 14). Where a gate-up product's programs outnumber the multiprocessors without filling whole waves
# of them, its outputs are spread evenly over whole waves (even_tile: the 1.5B's 140 tiles of 64 as 264 of 34, 18.1
# -> 17.5 us; the 7B fp8's 148 of 128 as 264 of 72, 41.2 -> 40.1; the 7B bf16's 296 of 64 as 395 of 48, 71.0 ->
# 68.0). Not the others: the 7B fp8 qkv's 288 programs spread so took 12.8 us instead of 10.1
ACTIVATIONS = ("silu_glu", "gelu")
FEW_ROWS_OUTPUTS, FEW_ROWS_INNER, FEW_ROWS_NARROW_INNER, FEW_ROWS_WARPS = 64, 128, 64, 4
FEW_ROWS_STAGES, FEW_ROWS_WIDE_GLU_STAGES = 5, 3
FEW_ROWS_SPLIT_INNER = 1024
# 8-bit weights (the same tool, --weights fp8 int8): fp8 products take 128 outputs by one activation group per step
# on 8 warps (4 stages; 3 for a gate-up product with more tiles than multiprocessors, whose programs then fit two to
# one: the 7B's 55.7 -> 41.2 us); int8 ones 32 by 256 on 4 warps. Their gate-up products split while the doubled
# programs still fit on the multiprocessors, the others up to 8 splits of at least EIGHT_BIT_SPLIT_INNER inputs each.
# int8 gate-up products stay with scaled_linear, which runs them faster (the 7B's 48 against 63 us at two rows).
EIGHT_BIT_LAUNCH = {torch.float8_e4m3fn: (128, 128, 8, 4), torch.int8: (32, 256, 4, 4)}
EIGHT_BIT_WIDE_GLU_STAGES = 3
EIGHT_BIT_SPLIT_INNER, EIGHT_BIT_SPLITS = 384, 8
ACTIVATION_GROUP = quantize.ACTIVATION_GROUP
E4M3_MAX = tl.constexpr(quantize.E4M3_MAX)
SMALLEST_SCALE = tl.constexpr(quantize.SMALLEST_SCALE)


@triton.jit
def _rounded_output(acc, n, outputs, bias_ptr, HAS_BIAS: tl.constexpr, dtype):
    """float32 sums for outputs n (n and its mask `outputs` shaped to broadcast against them) -> the product as the
    torch ops round it: rounded, biased, rounded (as float32 values)."""
    out = acc.to(dtype).to(tl.float32)
    if HAS_BIAS:
        out = (out + tl.load(bias_ptr + n, mask=outputs, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    return out


@triton.jit
def _few_rows_store(acc, up, n, outputs, m, M, N, bias_ptr, residual_ptr, layer_scale_ptr, out_ptr,
                    HAS_BIAS: tl.constexpr, GLU: tl.constexpr, GELU: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                    LAYER_SCALE: tl.constexpr):
    """Sums for outputs n of rows m ([BLOCK_N, ROWS] float32; `up`'s for outputs N + n with GLU; `outputs` the
    lanes that hold this program's) -> out[m, n]:
    the product, silu(gate) * up with GLU or its exact GELU, plus the residual (times the layer scale first), each
    rounded to out's dtype as the torch ops do."""
    dtype = out_ptr.dtype.element_ty
    out = _rounded_output(acc, n[:, None], outputs[:, None], bias_ptr, HAS_BIAS, dtype)
    if GLU:
        up = _rounded_output(up, (n + N)[:, None], outputs[:, None], bias_ptr, HAS_BIAS, dtype)
        out = (out / (1.0 + tl.exp(-out))).to(dtype).to(tl.float32) * up
    if GELU:
        out = _gelu(out)
    where = m[None, :] * N + n[:, None]
    mask = outputs[:, None] & (m < M)[None, :]
    if HAS_RESIDUAL:
        out = out.to(dtype).to(tl.float32)
        if LAYER_SCALE:  # addcmul: residual + scale * out, rounded once
            out = out * tl.load(layer_scale_ptr + n, mask=outputs, other=0.0).to(tl.float32)[:, None]
        out = tl.load(residual_ptr + where, mask=mask, other=0.0).to(tl.float32) + out
    tl.store(out_ptr + where, out.to(dtype), mask=mask)


@triton.jit
def _few_rows_linear_kernel(x_ptr, norm_ptr, w_ptr, scale_ptr, bias_ptr, residual_ptr, layer_scale_ptr, out_ptr,
                            partial_ptr, squares_ptr, arrivals_ptr, M, N, K, eps, split_inner, tile_n,
                            NORM: tl.constexpr, GLU: tl.constexpr, GELU: tl.constexpr, SCALED: tl.constexpr,
                            HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, LAYER_SCALE: tl.constexpr,
                            SPLIT: tl.constexpr, SPLITS: tl.constexpr, FINISH: tl.constexpr, OPERAND: tl.constexpr,
                            FP8: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            PDL: tl.constexpr):
    """Outputs n (and N + n with GLU) of rows m over the inner range of split program_id(1): the weight tile is the
    product's wide side, so each program streams [tile_n, BLOCK_K] weight tiles against x's few rows (tile_n <=
    BLOCK_N outputs: any width, so that the outputs spread evenly over the programs; lanes past it idle). The
    RMSNorm's per-row factor is taken out of the product: (x * norm weight) @ W, times the inverse root mean square
    of x, whose squares are summed over the same tiles (no pass over x before the weights). Operands are converted
    to OPERAND; FP8: x's tile (one activation group per row) is quantized to fp8 first. With SPLIT, each program
    leaves its float32 sums; with FINISH, the last of a tile's SPLITS programs to arrive (counted in
    arrivals_ptr[tile], which it sets back to 0) sums them in split order and finishes the tile, where a second
    kernel would cost a launch."""
    after_previous_kernel(PDL)
    lane = tl.arange(0, BLOCK_N)
    n = tl.program_id(0) * tile_n + lane
    m = tl.arange(0, ROWS)
    outputs, rows = (lane < tile_n) & (n < N), m < M
    dtype = x_ptr.dtype.element_ty
    squares = tl.zeros((ROWS,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_N, ROWS), dtype=tl.float32)
    up = tl.zeros((BLOCK_N, ROWS), dtype=tl.float32)
    begin = tl.program_id(1) * split_inner
    for start in range(begin, tl.minimum(begin + split_inner, K), BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        inner = k < K
        xk = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=rows[:, None] & inner[None, :], other=0.0)
        if NORM:
            xf = xk.to(tl.float32)
            squares += tl.sum(xf * xf, axis=1)
            xk = (xf * tl.load(norm_ptr + k, mask=inner, other=0.0).to(tl.float32)[None, :]).to(dtype)
        w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=outputs[:, None] & inner[None, :], other=0.0)
        if GLU:
            w_up = tl.load(w_ptr + (N + n)[:, None] * K + k[None, :], mask=outputs[:, None] & inner[None, :],
                           other=0.0)
        group_scale = None
        if FP8:
            xk, group_scale = _fp8_activations(xk)
        acc += _weight_product(w, xk, OPERAND, FP8, group_scale)
        if GLU:
            up += _weight_product(w_up, xk, OPERAND, FP8, group_scale)
    if SPLIT:  # float32 sums per split, summed in split order by the tile's last program or the sums' reader
        width = 2 * N if GLU else N
        partial = partial_ptr + tl.program_id(1) * ROWS * width + m[None, :] * width + n[:, None]
        tl.store(partial, acc, mask=outputs[:, None])
        if GLU:
            tl.store(partial + N, up, mask=outputs[:, None])
        if NORM:  # every program of the split holds the same squares: any may write them
            tl.store(squares_ptr + tl.program_id(1) * ROWS + m, squares)
        if FINISH:
            tl.debug_barrier()  # every thread's stores are issued before the count releases them
            if tl.atomic_add(arrivals_ptr + tl.program_id(0), 1, sem="acq_rel") == SPLITS - 1:
                tl.store(arrivals_ptr + tl.program_id(0), 0)  # ready for the next product
                _finish_split_tile(partial_ptr, squares_ptr, scale_ptr, bias_ptr, residual_ptr, layer_scale_ptr,
                                   out_ptr, n, outputs, m, M, N, K, eps, SPLITS, NORM, GLU, GELU, SCALED, HAS_BIAS,
                                   HAS_RESIDUAL, LAYER_SCALE, ROWS)
    else:
        acc, up = _scaled_sums(acc, up, squares, n, N, K, eps, scale_ptr, NORM, GLU, SCALED)
        _few_rows_store(acc, up, n, outputs, m, M, N, bias_ptr, residual_ptr, layer_scale_ptr, out_ptr, HAS_BIAS,
                        GLU, GELU, HAS_RESIDUAL, LAYER_SCALE)


@triton.jit
def _weight_product(w, xk, OPERAND: tl.constexpr, FP8: tl.constexpr, group_scale):
    """A weight tile [BLOCK_N, BLOCK_K] times x's [ROWS, BLOCK_K] -> float32 sums [BLOCK_N, ROWS], the operands
    converted to OPERAND (float32: IEEE products); FP8: x's fp8 values, each row's sums times its group_scale."""
    precision: tl.constexpr = "ieee" if OPERAND == tl.float32 else None
    product = tl.dot(w.to(OPERAND), tl.trans(xk.to(OPERAND)), input_precision=precision)
    if FP8:
        product = product * group_scale[None, :]
    return product


@triton.jit
def _fp8_activations(x):
    """x [rows, ACTIVATION_GROUP] -> (its fp8 values, float32 scales [rows]) with x ~ values * scale:
    engine.quantize.quantize_activations' arithmetic (its division by the group's maximum is approximate here: a
    value next to a rounding boundary of fp8 may round the other way). The conversion saturates at E4M3_MAX."""
    top = tl.maximum(tl.max(tl.abs(x.to(tl.float32)), axis=1), SMALLEST_SCALE)
    values = x.to(tl.float32) * (tl.full(top.shape, E4M3_MAX, tl.float32) / top)[:, None]
    if INTERPRETING:  # the interpreter's fp8 conversion does not round as the GPU's
        values = _e4m3_grid(tl.clamp(values, -E4M3_MAX, E4M3_MAX))
    return values.to(tl.float8e4nv), top * (1.0 / E4M3_MAX)


@triton.jit
def _e4m3_grid(v):
    """float32 v (|v| <= E4M3_MAX) rounded to the nearest e4m3 value, ties to even, as the GPU's conversion rounds:
    Triton's interpreter loses the exponent's carry when it rounds to fp8 (7.9 -> 4.0), so there it converts values
    already on the grid. Normal values keep 3 mantissa bits; below 2^-6 the grid is 2^-9 apart."""
    bits = v.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)
    subnormal = ((v * 512.0 + 12582912.0) - 12582912.0) / 512.0  # adding 1.5 * 2^23 rounds to an integer
    return tl.where(tl.abs(v) < 0.015625, subnormal, normal)


@triton.jit
def _scaled(acc, squares, K, eps, n, outputs, scale_ptr, NORM: tl.constexpr, SCALED: tl.constexpr):
    """A product's float32 sums for outputs n times the RMSNorm's per-row factor (from the rows' `squares` over K
    inputs) and the 8-bit weights' output scales; squares, n and its mask `outputs` shaped to broadcast against
    them."""
    if NORM:
        acc = acc * tl.rsqrt(squares / K + eps)
    if SCALED:
        acc = acc * tl.load(scale_ptr + n, mask=outputs, other=0.0)
    return acc


@triton.jit
def _scaled_sums(acc, up, squares, n, N, K, eps, scale_ptr, NORM: tl.constexpr, GLU: tl.constexpr,
                 SCALED: tl.constexpr):
    """_scaled for a program's sums [BLOCK_N, ROWS] (and up's, outputs N + n, with GLU)."""
    outputs = (n < N)[:, None]
    acc = _scaled(acc, squares[None, :], K, eps, n[:, None], outputs, scale_ptr, NORM, SCALED)
    if GLU:
        up = _scaled(up, squares[None, :], K, eps, (N + n)[:, None], outputs, scale_ptr, NORM, SCALED)
    return acc, up


@triton.jit
def _split_sums(partial_ptr, squares_ptr, n, m, outputs, width, SPLITS: tl.constexpr, ROWS: tl.constexpr,
                NORM: tl.constexpr):
    """A split product's float32 sums for outputs n of rows m (shaped to broadcast; `outputs` n's mask) and (NORM)
    the rows' squares, each summed over the SPLITS splits in split order: unrolled, so that every load is issued
    before the first sum waits. The loads skip L1 (".cg"), which does not see other multiprocessors' stores."""
    acc = tl.load(partial_ptr + m * width + n, mask=outputs, other=0.0, cache_modifier=".cg")
    squares = tl.load(squares_ptr + m, cache_modifier=".cg") if NORM else 0.0
    for split in tl.static_range(1, SPLITS):
        acc += tl.load(partial_ptr + split * ROWS * width + m * width + n, mask=outputs, other=0.0,
                       cache_modifier=".cg")
        if NORM:
            squares += tl.load(squares_ptr + split * ROWS + m, cache_modifier=".cg")
    return acc, squares


@triton.jit
def _finish_split_tile(partial_ptr, squares_ptr, scale_ptr, bias_ptr, residual_ptr, layer_scale_ptr, out_ptr, n,
                       outputs, m, M, N, K, eps, SPLITS: tl.constexpr, NORM: tl.constexpr, GLU: tl.constexpr,
                       GELU: tl.constexpr, SCALED: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                       LAYER_SCALE: tl.constexpr, ROWS: tl.constexpr):
    """A split product's outputs n (`outputs` their mask) of rows m from its SPLITS float32 sums: summed in split
    order, scaled, then stored as the unsplit kernel stores them."""
    width = 2 * N if GLU else N
    acc, squares = _split_sums(partial_ptr, squares_ptr, n[:, None], m[None, :], outputs[:, None], width, SPLITS,
                               ROWS, NORM)
    acc = _scaled(acc, squares, K, eps, n[:, None], outputs[:, None], scale_ptr, NORM, SCALED)
    up = acc
    if GLU:
        up, _ = _split_sums(partial_ptr, squares_ptr, (N + n)[:, None], m[None, :], outputs[:, None], width, SPLITS,
                            ROWS, False)
        up = _scaled(up, squares, K, eps, (N + n)[:, None], outputs[:, None], scale_ptr, NORM, SCALED)
    _few_rows_store(acc, up, n, outputs, m, M, N, bias_ptr, residual_ptr, layer_scale_ptr, out_ptr, HAS_BIAS, GLU,
                    GELU, HAS_RESIDUAL, LAYER_SCALE)


@triton.jit
def _product_values(product_ptr, partial_ptr, squares_ptr, scale_ptr, bias_ptr, n, m, outputs, width, K, eps,
                    SUMS: tl.constexpr, SPLITS: tl.constexpr, ROWS: tl.constexpr, NORM: tl.constexpr,
                    SCALED: tl.constexpr, HAS_BIAS: tl.constexpr, dtype):
    """Values n of rows m of a product (shaped to broadcast; `outputs` n's mask) as float32: loaded from the
    product [rows, width], or (SUMS) finished from a few-row product's SplitSums as _finish_split_tile finishes
    them."""
    if SUMS:
        acc, squares = _split_sums(partial_ptr, squares_ptr, n, m, outputs, width, SPLITS, ROWS, NORM)
        values = _rounded_output(_scaled(acc, squares, K, eps, n, outputs, scale_ptr, NORM, SCALED), n, outputs,
                                 bias_ptr, HAS_BIAS, dtype)
    else:
        values = tl.load(product_ptr + m * width + n, mask=outputs, other=0.0).to(tl.float32)
    return values


@dataclass(frozen=True)
class SplitSums:
    """A few-row product left unreduced (few_rows_linear(..., reduce=False)): its float32 sums per split of the
    inner width, `partial` [splits, FEW_ROWS, N], with what turns them into the product (the RMSNorm's squares per
    split [splits, FEW_ROWS], 8-bit output scales, bias). The kernel that reads the product next (rotary_attend,
    residual_modulated_norm) finishes the sums where it loads them, as _finish_split_tile would."""

    partial: torch.Tensor
    squares: torch.Tensor | None
    scale: torch.Tensor | None
    bias: torch.Tensor | None
    inner: int
    eps: float


def _product_arguments(product) -> tuple[tuple, dict]:
    """A kernel's arguments for a product it reads through _product_values: a tensor [rows, width] (or None, where
    the kernel reads none), or SplitSums."""
    if isinstance(product, SplitSums):
        return ((None, product.partial, product.squares, product.scale, product.bias, product.inner, product.eps),
                dict(SUMS=True, SPLITS=product.partial.shape[0], NORM=product.squares is not None,
                     SCALED=product.scale is not None, HAS_BIAS=product.bias is not None, ROWS=FEW_ROWS))
    return ((None if product is None else product.contiguous(), None, None, None, None, 1, 0.0),
            dict(SUMS=False, SPLITS=1, NORM=False, SCALED=False, HAS_BIAS=False, ROWS=FEW_ROWS))


def few_rows_linear(x, weight, bias=None, scale=None, *, norm=None, activation=None, residual=None, layer_scale=None,
                    launch=None, reduce=True):
    """A product of at most FEW_ROWS rows with what surrounds it in a layer, in one kernel (where the inner width is
    split, each output tile's last split to finish finishes the tile): x [R, K], weight [N', K] in x's dtype or
    8-bit with float32 output scales `scale` [N'] (engine.quantize.linear_params), bias [N']; `norm` (weight [K],
    eps): x's RMSNorm first;
    `activation` "silu_glu": the weight is gate and up stacked (N' = 2N) and the result silu(gate) * up [R, N],
    "gelu": the exact GELU; `residual` [R, N] added, after the product is multiplied by `layer_scale` [N] if given.
    Rounded where engine.network.linear_block's torch ops round. `launch` (outputs per program: any width, inner
    step, splits, warps, stages) overrides few_rows_launch's. Not `reduce` (a product with neither activation nor
    residual): its SplitSums, one kernel, for a kernel that takes them."""
    rows, inner = x.shape
    if rows > FEW_ROWS:
        raise ValueError(f"few_rows_linear takes at most {FEW_ROWS} rows, got {rows}")
    if activation not in (None, *ACTIVATIONS):
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if weight.stride(1) != 1 or weight.stride(0) != inner:
        raise ValueError("few_rows_linear needs a contiguous [out, in] weight")
    if not reduce and (activation is not None or residual is not None or layer_scale is not None):
        raise ValueError("an unreduced product (SplitSums) takes no activation, residual or layer scale")
    glu = activation == "silu_glu"
    outputs = weight.shape[0] // 2 if glu else weight.shape[0]
    block_n, block_k, splits, warps, stages = launch or few_rows_launch(weight, glu, norm is not None)
    fp8 = _fp8_weight(weight, block_k)
    split_inner = triton.cdiv(triton.cdiv(inner, splits), block_k) * block_k
    splits = triton.cdiv(inner, split_inner)  # no empty split
    split = splits > 1 or not reduce
    x = x.contiguous()
    out = torch.empty(rows, outputs, dtype=x.dtype, device=x.device) if reduce else None
    residual = None if residual is None else residual.contiguous()
    partial = squares = None
    if split:
        partial = torch.empty(splits, FEW_ROWS, weight.shape[0], dtype=torch.float32, device=x.device)
        squares = torch.empty(splits, FEW_ROWS, dtype=torch.float32, device=x.device) if norm is not None else None
    flags = dict(NORM=norm is not None, GLU=glu, GELU=activation == "gelu", SCALED=scale is not None,
                 HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, LAYER_SCALE=layer_scale is not None,
                 ROWS=FEW_ROWS)
    norm_weight, eps = norm if norm is not None else (None, 0.0)
    tiles = triton.cdiv(outputs, block_n)
    finish = split and reduce
    _few_rows_linear_kernel[(tiles, splits)](
        x, norm_weight, weight, scale, bias, residual, layer_scale, out, partial, squares,
        _arrivals(x.device, tiles) if finish else None, rows, outputs, inner, eps, split_inner, block_n, SPLIT=split,
        SPLITS=splits, FINISH=finish, OPERAND=_operand(x.dtype, weight.dtype), FP8=fp8,
        BLOCK_N=max(16, triton.next_power_of_2(block_n)), BLOCK_K=block_k, num_warps=warps, num_stages=stages,
        **flags, **dependent_launch(x.device))
    return out if reduce else SplitSums(partial, squares, scale, bias, inner, eps)


# Kernels split over several programs count each output's finished parts here (a split product per output tile, the
# split attention per row and key/value head), one zeroed int32 each, set back to zero by the last part: shared by
# every such kernel on a device, which the engine runs one after another on one stream.
ARRIVAL_COUNTERS = 1 << 14
_arrival_counters: dict[torch.device, torch.Tensor] = {}


def _arrivals(device: torch.device, tiles: int) -> torch.Tensor:
    """The device's arrival counters (allocated on first use, which must precede any graph capture)."""
    if tiles > ARRIVAL_COUNTERS:
        raise ValueError(f"a split kernel of {tiles} outputs; at most {ARRIVAL_COUNTERS} are counted")
    if (counters := _arrival_counters.get(device)) is None:
        counters = _arrival_counters[device] = torch.zeros(ARRIVAL_COUNTERS, dtype=torch.int32, device=device)
    return counters


def _fp8_weight(weight: torch.Tensor, block_k: int) -> bool:
    """Whether a product's weight is fp8, whose kernels step over the inputs one activation group at a time."""
    fp8 = weight.dtype == torch.float8_e4m3fn
    if fp8 and block_k != ACTIVATION_GROUP:
        raise ValueError(f"fp8 weights take {ACTIVATION_GROUP} inputs per step (one activation group), got {block_k}")
    return fp8


def _operand(x_dtype: torch.dtype, weight_dtype: torch.dtype):
    """The dtype a product's operands are converted to: fp8 for fp8 weights, else x's; float32 for float32 x and
    in Triton's interpreter (which miscomputes bf16 and fp8 products: float32 ones are exact for their values)."""
    if x_dtype == torch.float32 or INTERPRETED:
        return tl.float32
    if weight_dtype == torch.float8_e4m3fn:
        return tl.float8e4nv
    return {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[x_dtype]


def few_rows_launch(weight: torch.Tensor, glu: bool, norm: bool) -> tuple[int, int, int, int, int]:
    """few_rows_linear's launch for this weight (FEW_ROWS_* and EIGHT_BIT_* above)."""
    processors = _processors(weight.device)
    outputs = weight.shape[0] // 2 if glu else weight.shape[0]
    if weight.dtype in EIGHT_BIT_LAUNCH:
        block_n, block_k, warps, stages = EIGHT_BIT_LAUNCH[weight.dtype]
        tiles = triton.cdiv(outputs, block_n)
        splits = 1
        if glu:
            while 2 * splits * tiles <= processors:
                splits *= 2
            block_n = even_tile(outputs, block_n, splits, processors)
            stages = EIGHT_BIT_WIDE_GLU_STAGES if tiles > processors else stages
        else:
            while 2 * splits <= EIGHT_BIT_SPLITS and weight.shape[1] >= 2 * splits * EIGHT_BIT_SPLIT_INNER:
                splits *= 2
        return block_n, block_k, splits, warps, stages
    tiles = triton.cdiv(outputs, FEW_ROWS_OUTPUTS)
    splits = 1
    if norm and tiles <= processors:
        while splits * tiles <= processors or weight.shape[1] > splits * FEW_ROWS_SPLIT_INNER:
            splits *= 2
    else:
        while 2 * splits * tiles <= processors and 2 * splits * FEW_ROWS_SPLIT_INNER <= weight.shape[1]:
            splits *= 2
    stages = FEW_ROWS_WIDE_GLU_STAGES if glu and tiles > 2 * processors else FEW_ROWS_STAGES
    block_n = even_tile(outputs, FEW_ROWS_OUTPUTS, splits, processors) if glu else FEW_ROWS_OUTPUTS
    return block_n, FEW_ROWS_NARROW_INNER if glu or norm else FEW_ROWS_INNER, splits, FEW_ROWS_WARPS, stages


def even_tile(outputs: int, block_n: int, splits: int, processors: int) -> int:
    """Outputs per program: block_n, or, where the programs (tiles x splits) outnumber the multiprocessors without
    filling whole waves of them, as few as spread the outputs evenly over whole waves (a last wave partly filled
    would leave most multiprocessors idle while it runs)."""
    programs = triton.cdiv(outputs, block_n) * splits
    if programs <= processors or programs % processors == 0:
        return block_n
    return triton.cdiv(outputs, triton.cdiv(programs, processors) * processors // splits)


def few_rows_suits(weight: torch.Tensor, activation: str | None) -> bool:
    """Whether few_rows_linear runs this product faster than the kernels it fuses (all but int8 gate-up ones)."""
    return not (weight.dtype == torch.int8 and activation == "silu_glu")


def _processors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 elsewhere (Triton's interpreter)."""
    return _properties(device).multi_processor_count if device.type == "cuda" else 1


# --- 8-bit linears (engine.quantize; its torch twin is engine.quantize.linear's CPU path)

# scaled_linear's launch (rows, outputs, inner width per step, warps) for few rows (a frame's LM step up to 8
# streams) and for many; few rows take narrower output tiles for narrow products and longer steps for wide inputs,
# so that every product has enough programs (perf/tune_scaled_linear.py on an H200)
FEW_ROWS_LAUNCH = (16, 32, 256, 4)
MANY_ROWS_LAUNCH = (32, 64, 128, 4)
WIDE_FP8_MANY_ROWS_LAUNCH = (64, 128, 128, 8)  # fp8 products of more than NARROW_OUTPUTS outputs on many rows
NARROW_OUTPUTS = 4096  # at most this many outputs: 16 per program
WIDE_INPUTS = 8192  # at least this many inputs: 512 per step


@triton.jit
def _scaled_linear_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, residual_ptr, out_ptr, M, N, K,
                          HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, OPERAND: tl.constexpr,
                          FP8: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          PDL: tl.constexpr):
    """out = x @ (w * scale)ᵀ (+ bias) (+ residual) for an 8-bit w [N, K] with one float32 scale per output: the
    operands converted to OPERAND (FP8: x's tile, one activation group per row, quantized to fp8 first, each group's
    sums scaled), summed in float32, scaled, rounded once; bias and residual then added as PyTorch adds them (each
    rounded)."""
    after_previous_kernel(PDL)
    m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows, outputs = m < M, n < N
    dtype = out_ptr.dtype.element_ty
    precision: tl.constexpr = "ieee" if OPERAND == tl.float32 else None
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start in range(0, K, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        inner = k < K
        xk = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=rows[:, None] & inner[None, :], other=0.0)
        w = tl.load(w_ptr + n[:, None] * K + k[None, :], mask=outputs[:, None] & inner[None, :], other=0.0)
        if FP8:
            xk, group_scale = _fp8_activations(xk)
            acc += tl.dot(xk.to(OPERAND), tl.trans(w.to(OPERAND)), input_precision=precision) * group_scale[:, None]
        else:
            acc += tl.dot(xk.to(OPERAND), tl.trans(w.to(OPERAND)), input_precision=precision)
    scale = tl.load(scale_ptr + n, mask=outputs, other=0.0)
    out = (acc * scale[None, :]).to(dtype)
    if HAS_BIAS:
        out = (out.to(tl.float32) + tl.load(bias_ptr + n, mask=outputs, other=0.0).to(tl.float32)[None, :]).to(dtype)
    where = m[:, None] * N + n[None, :]
    mask = rows[:, None] & outputs[None, :]
    if HAS_RESIDUAL:
        out = (tl.load(residual_ptr + where, mask=mask, other=0.0).to(tl.float32) + out.to(tl.float32)).to(dtype)
    tl.store(out_ptr + where, out, mask=mask)


def scaled_linear(x, weight, scale, bias=None, residual=None, *, launch: tuple[int, int, int, int] | None = None):
    """x [..., K] times an 8-bit weight [N, K] (int8 or float8_e4m3fn) with float32 scales [N]
    (engine.quantize.QuantizedLinear), plus bias [N] and residual [..., N], in one kernel that reads each weight
    byte once; fp8 weights multiply fp8 activations (engine.quantize.quantize_activations' groups). `launch` (rows,
    outputs, inner step, warps) overrides scaled_linear_launch's."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    rows, inner = flat.shape
    outputs = weight.shape[0]
    if weight.stride(1) != 1 or weight.stride(0) != inner:
        raise ValueError("scaled_linear needs a contiguous [out, in] weight")
    block_m, block_n, block_k, warps = launch or scaled_linear_launch(rows, outputs, inner, weight.dtype)
    fp8 = _fp8_weight(weight, block_k)
    out = torch.empty(rows, outputs, dtype=x.dtype, device=x.device)
    _scaled_linear_kernel[(triton.cdiv(outputs, block_n), triton.cdiv(rows, block_m))](
        flat, weight, scale, bias, None if residual is None else residual.reshape(rows, outputs).contiguous(), out,
        rows, outputs, inner, HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        OPERAND=_operand(x.dtype, weight.dtype), FP8=fp8, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=warps, **dependent_launch(x.device))
    return out.view(*x.shape[:-1], outputs)


def scaled_linear_launch(rows: int, outputs: int, inner: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """scaled_linear's launch for a product of this shape (fp8 weights: one activation group per step)."""
    if rows > FEW_ROWS_LAUNCH[0]:
        wide_fp8 = dtype == torch.float8_e4m3fn and outputs > NARROW_OUTPUTS
        block_m, block_n, block_k, warps = WIDE_FP8_MANY_ROWS_LAUNCH if wide_fp8 else MANY_ROWS_LAUNCH
    else:
        block_m, block_n, block_k, warps = FEW_ROWS_LAUNCH
        block_n = 16 if outputs <= NARROW_OUTPUTS else block_n
        block_k = 512 if inner >= WIDE_INPUTS else block_k
    return block_m, block_n, ACTIVATION_GROUP if dtype == torch.float8_e4m3fn else block_k, warps
