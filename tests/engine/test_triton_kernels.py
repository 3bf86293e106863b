"""The Triton kernels against the torch ops they replace (the code that runs where they do not), run on CPU by
Triton's interpreter (TRITON_INTERPRET=1): the same kernel code that the GPU compiles."""
import importlib
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import network, tokenizer_step

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
_gelu = importlib.import_module("engine.triton_kernels")._gelu


@pytest.fixture(scope="module")
def kernels():
    assert os.environ.get("TRITON_INTERPRET") == "1"  # set by tests/conftest.py before any import of Triton
    return importlib.import_module("engine.triton_kernels")


@triton.jit
def _gelu_of(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offsets, _gelu(tl.load(x_ptr + offsets, mask=offsets < n)), mask=offsets < n)


def test_gelu_is_exact_over_every_bf16_input(kernels):
    """The FFN kernels' GELU (a fitted tail, not erf: perf/fit_gelu.py) against x * Phi(x) in float64 for every
    finite bf16 value: within 3e-6 relative for |x| <= 8 and 1e-5 wherever the GELU is a normal float32, and, as
    bf16, the exact GELU's value except where that lies within the error of a rounding boundary (under 0.2%)."""
    bits = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    x = torch.from_numpy(bits[np.isfinite(bits)].copy())
    out = torch.empty_like(x)
    _gelu_of[(triton.cdiv(x.numel(), 4096),)](x, out, x.numel(), BLOCK=4096)
    phi = torch.tensor([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x.tolist()], dtype=torch.float64)
    exact = x.double() * phi
    normal = exact.abs() > 2.0 ** -126
    relative = ((out.double() - exact).abs() / exact.abs())[normal]
    assert relative.max() < 1e-5
    assert relative[x[normal].abs() <= 8].max() < 3e-6
    assert (out.bfloat16() != exact.float().bfloat16()).float().mean() < 2e-3


@pytest.mark.parametrize("frames, channels", [(1, 48), (3, 16), (6, 8), (40, 12), (100, 32), (300, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("launch", [None, (16, 2, 1), (64, 1, 4), (32, 4, 8)])
def test_convnext_mixer_equals_the_torch_ops(kernels, frames, channels, dtype, launch):
    """Chunks shorter than, as long as and longer than the cache (width 6), channels not a power of two, and the
    cache as the engine holds it (a transposed view); with the configured launch, tiles of 16 rows and more (40x12,
    100x32) take the convolution's rows from one normalised window, the others normalise each tap's rows; the
    walking kernel with 1, 4 and 8 walkers per program (a walker's first taps read the rows of the run before it)."""
    generator = torch.Generator().manual_seed(frames * channels)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    batch, width = 3, 6
    x = rand(batch, frames, channels, scale=3.0)
    cache = rand(batch, channels, width).transpose(1, 2)  # [B, W, C] seen through a transpose
    weights = (rand(channels), 1e-5, rand(channels, 1, width + 1), rand(channels), rand(channels), rand(channels),
               1e-6)
    ours = kernels.convnext_mixer(x, cache, *weights, launch=launch)
    expected = tokenizer_step.convnext_mixer(x, cache, *weights)  # what the block runs without the kernel
    for name, mine, theirs in zip(("x1", "ffn_in", "new cache"), ours, expected):
        assert mine.shape == theirs.shape and mine.dtype == dtype, name
        # float32 to summation order; bf16 to a few rounding steps (CPU torch rounds bf16 at other points than the
        # kernel and CUDA torch do), while a wrong tap, row or channel is off by the values' own size
        tolerance = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype] * float(theirs.abs().max())
        torch.testing.assert_close(mine, theirs, rtol=0, atol=tolerance, msg=name)


@pytest.mark.parametrize("frames, channels, hidden", [(1, 48, 192), (5, 12, 48), (40, 32, 128), (300, 8, 24)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("launch", [None, (32, 32, 2)])
def test_convnext_block_equals_the_torch_ops(kernels, frames, channels, hidden, dtype, launch):
    """The whole block against the mixer's torch ops and the FFN (exact GELU) as the modules compute it: rows and
    channels below tl.dot's 16, hidden widths that are not a multiple of the kernel's hidden tile; the launch
    configured for the width, and another."""
    generator = torch.Generator().manual_seed(frames + channels)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    batch, width = 2, 6
    x = rand(batch, frames, channels, scale=3.0)
    cache = rand(batch, channels, width).transpose(1, 2)
    mixer = (rand(channels), 1e-5, rand(channels, 1, width + 1), rand(channels), rand(channels), rand(channels),
             1e-6)
    ffn = (rand(hidden, channels, scale=channels ** -0.5), rand(hidden), rand(channels, hidden, scale=hidden ** -0.5),
           rand(channels), rand(channels))
    out, new_cache = kernels.convnext_block(x, cache, *mixer, *ffn, launch=launch)
    x1, ffn_in, expected_cache = tokenizer_step.convnext_mixer(x, cache, *mixer)
    expected = torch.addcmul(x1, F.linear(F.gelu(F.linear(ffn_in, ffn[0], ffn[1])), ffn[2], ffn[3]), ffn[4])
    for name, mine, theirs in (("out", out, expected), ("new cache", new_cache, expected_cache)):
        assert mine.shape == theirs.shape and mine.dtype == dtype, name
        tolerance = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype] * float(theirs.abs().max())
        torch.testing.assert_close(mine, theirs, rtol=0, atol=tolerance, msg=name)


@pytest.mark.parametrize("rows, channels, hidden", [(1, 48, 192), (7, 12, 48), (130, 32, 128), (40, 100, 400)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("launch", [None, (32, 32, 2, 1)])
def test_convnext_ffn_equals_the_torch_ops(kernels, rows, channels, hidden, dtype, launch):
    """The block's second half against the FFN's torch ops: rows and channels below tl.dot's 16, rows beyond one
    program's, hidden widths that are not a multiple of the hidden tile, inputs with leading batch dimensions."""
    generator = torch.Generator().manual_seed(rows + channels)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    x1, ffn_in = rand(1, rows, channels, scale=3.0), rand(1, rows, channels)
    ffn = (rand(hidden, channels, scale=channels ** -0.5), rand(hidden), rand(channels, hidden, scale=hidden ** -0.5),
           rand(channels), rand(channels))
    out = kernels.convnext_ffn(x1, ffn_in, *ffn, launch=launch)
    expected = torch.addcmul(x1, F.linear(F.gelu(F.linear(ffn_in, ffn[0], ffn[1])), ffn[2], ffn[3]), ffn[4])
    assert out.shape == expected.shape and out.dtype == dtype
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype] * float(expected.abs().max())
    torch.testing.assert_close(out, expected, rtol=0, atol=tolerance)


def test_convnext_ffn_refuses_wide_blocks(kernels):
    channels = kernels.FFN_MAX_CHANNELS + 1
    x = torch.zeros(1, 2, channels)
    with pytest.raises(ValueError, match=f"at most {kernels.FFN_MAX_CHANNELS} channels"):
        kernels.convnext_ffn(x, x, *([None] * 5))


@pytest.mark.parametrize("channels, rows, path", [(32, 3200, "block"), (32, 51200, "block"), (32, 204800, "mixer+ffn"),
                                                  (64, 102400, "mixer+ffn"), (128, 12800, "block"),
                                                  (128, 19200, "mixer+ffn"), (256, 12800, "mixer"), (2048, 1, "mixer")])
def test_blocks_take_the_measured_kernels(kernels, channels, rows, path):
    """The split path (the walking mixer, then the FFN kernel) for the narrow blocks over as many rows as made it
    faster (24 streams and more at 32 channels, 48 at 64, 24 at 128); the whole block below."""
    assert kernels.block_kernels(channels, rows) == path


@pytest.mark.parametrize("channels, rows, walkers", [(32, 204800, 16), (32, 3200, 0), (256, 12800, 8), (256, 6400, 0),
                                                     (512, 2560, 0)])
def test_mixers_walk_on_many_rows(kernels, channels, rows, walkers):
    """convnext_mixer takes the walking kernel for the narrow widths on many rows, the tile kernel elsewhere."""
    assert kernels.mixer_launch(channels, rows)[2] == walkers


def test_convnext_block_refuses_wide_blocks(kernels):
    channels = kernels.BLOCK_MAX_CHANNELS + 1
    x, cache = torch.zeros(1, 2, channels), torch.zeros(1, 6, channels)
    with pytest.raises(ValueError, match=f"at most {kernels.BLOCK_MAX_CHANNELS} channels"):
        kernels.convnext_block(x, cache, *([None] * 12))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighted", [True, False])
def test_diffusion_step_kernels_equal_the_torch_ops(kernels, dtype, weighted, monkeypatch):
    """The solver's glue: shift/scale/gate as rows of one modulation tensor (strided, as the solver slices them),
    a width that is not a power of two, a norm without weight (the final layer's); the final product with and
    without bias, over a latent width that is not a multiple of a program's, its inner width in one step and in
    several."""
    generator = torch.Generator().manual_seed(7)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    rows, width, latent = 6, 40, 13
    modulation = rand(rows, 3, 5, width)[:, 1]  # [rows, chunks, width] seen through a step's slice
    shift, scale, gate = modulation[:, 0], modulation[:, 1], modulation[:, 2]
    hidden, update, weight = rand(rows, width), rand(rows, width), rand(width) if weighted else None
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]

    def check(mine, theirs):
        assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
        torch.testing.assert_close(mine, theirs, rtol=0, atol=tolerance * float(theirs.abs().max()))

    check(kernels.modulated_norm(hidden, weight, 1e-6, shift, scale),
          network.modulated_norm(hidden, weight, 1e-6, shift, scale))
    for mine, theirs in zip(kernels.residual_modulated_norm(hidden, gate, update, weight, 1e-6, shift, scale),
                            network.residual_modulated_norm(hidden, gate, update, weight, 1e-6, shift, scale)):
        check(mine, theirs)
    gate_up = rand(rows, 2 * 1500)  # wider than one program's block
    check(kernels.silu_mul(gate_up), network.silu_mul(gate_up))
    table = rand(rows // 2, 4, 6)[:, 2, 1:]  # a step's (alpha, sigma, a, b, c) per row
    latents = (rand(rows // 2, latent).repeat(2, 1), rand(rows // 2, latent), rand(rows // 2), table)
    for projection, most_inner in (((rand(latent, width), rand(latent)), kernels.GUIDED_MOST_INNER),
                                   ((rand(latent, width), None), 16)):
        monkeypatch.setattr(kernels, "GUIDED_MOST_INNER", most_inner)
        args = (rand(rows, width), projection, *latents)  # the final norm's rows and the final product
        next_x, x0 = kernels.guided_update(*args)
        for mine, theirs in zip((next_x, x0), network.guided_update(*args)):
            check(mine, theirs)
        assert torch.equal(next_x[:rows // 2], next_x[rows // 2:])  # the latents twice, for the head's two rows each


def _attention_case(dtype, rows=4, heads=12, kv_heads=2, head_dim=32, context=160):
    """cos/sin, caches as the engine's views (a layer's rows and context of the whole cache), positions inside, at
    the edge of and across several of the kernel's 64-position blocks, and the additive mask they give."""
    generator = torch.Generator().manual_seed(4)
    cos, sin = (torch.randn(rows, head_dim, generator=generator).to(dtype) for _ in range(2))
    caches = [torch.randn(2, 6, kv_heads, 192, head_dim, generator=generator).to(dtype) for _ in range(2)]
    positions = torch.tensor([0, 63, 64, 150])[:rows]
    visible = torch.arange(context)[None] <= positions[:, None]
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)[:, None, None]
    return cos, sin, caches, positions, mask


def _layer_views(caches, rows, context=160):
    return [cache[1, :rows, :, :context] for cache in caches]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_attend_equals_the_torch_ops(kernels, dtype):
    """Grouped queries (6 per key/value head, as the 1.5B), rows at different positions; stale cache entries past a
    row's position must not count, and the new key and value land in the caches as rotary_kv_write puts them."""
    rows, heads, kv_heads, head_dim = 4, 12, 2, 32
    cos, sin, caches, positions, mask = _attention_case(dtype)
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * head_dim, generator=torch.Generator().manual_seed(5)).to(dtype)
    expected_caches = [cache.clone() for cache in caches]
    mine = kernels.rotary_attend(qkv, cos, sin, *_layer_views(caches, rows), mask, positions, heads, kv_heads,
                                 head_dim ** -0.5)
    expected = network.rotary_attend(qkv, cos, sin, *_layer_views(expected_caches, rows), mask, positions, heads,
                                     kv_heads, head_dim ** -0.5)
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    assert mine.shape == expected.shape == (rows, heads, 1, head_dim) and mine.dtype == dtype
    torch.testing.assert_close(mine, expected, rtol=0, atol=tolerance * float(expected.abs().max()))
    for cache, expected_cache in zip(caches, expected_caches):
        torch.testing.assert_close(cache, expected_cache, rtol=0, atol=tolerance * float(expected_cache.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_attend_splits_a_long_context_among_programs(kernels, dtype, monkeypatch):
    """At few rows, a context split among programs (five of 32 positions here; the row at position 0 leaves four of
    them empty) and their sums combined by the last (four splits at a time: twice): the torch ops' attention and
    caches."""
    monkeypatch.setattr(kernels, "ATTEND_SPLIT_POSITIONS", 32)
    rows, heads, kv_heads, head_dim = 4, 12, 2, 32
    assert kernels.attend_splits(rows, 160) == 5
    cos, sin, caches, positions, mask = _attention_case(dtype)
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * head_dim, generator=torch.Generator().manual_seed(7)).to(dtype)
    expected_caches = [cache.clone() for cache in caches]
    mine = kernels.rotary_attend(qkv, cos, sin, *_layer_views(caches, rows), mask, positions, heads, kv_heads,
                                 head_dim ** -0.5, launch=(32, 4, 2))
    expected = network.rotary_attend(qkv, cos, sin, *_layer_views(expected_caches, rows), mask, positions, heads,
                                     kv_heads, head_dim ** -0.5)
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(mine, expected, rtol=0, atol=tolerance * float(expected.abs().max()))
    for cache, expected_cache in zip(caches, expected_caches):
        torch.testing.assert_close(cache, expected_cache, rtol=0, atol=tolerance * float(expected_cache.abs().max()))
    assert not kernels._arrivals(qkv.device, 1).any()  # the last part of each row and head set its count back


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_rotary_attend_finishes_split_sums_as_the_reduction_does(kernels, kind):
    """The qkv product left unreduced (its RMSNorm, bias and 8-bit scales still to apply) gives rotary_attend the
    same values as the product reduced by its own kernel: the same attention and caches, bit for bit."""
    from engine.quantize import quantize_rows

    generator = torch.Generator().manual_seed(6)
    rows, heads, kv_heads, head_dim, inner = 4, 12, 2, 32, 200
    cos, sin, caches, positions, mask = _attention_case(torch.bfloat16)
    weight = torch.randn((heads + 2 * kv_heads) * head_dim, inner, generator=generator) * inner ** -0.5
    params = (weight.bfloat16(), torch.randn(weight.shape[0], generator=generator).bfloat16())
    if kind == "fp8":
        quantized, scale = quantize_rows(weight, "fp8")
        params = (quantized, params[1], scale[:, 0])
    x = torch.randn(rows, inner, generator=generator).bfloat16()
    norm = (torch.rand(inner, generator=generator).bfloat16() + 0.5, 1e-6)
    launch = (64, 128 if kind == "fp8" else 64, 2, 4, 2)  # the inner width in two splits
    sums = kernels.few_rows_linear(x, *params, norm=norm, launch=launch, reduce=False)
    assert isinstance(sums, kernels.SplitSums) and sums.partial.shape == (2, kernels.FEW_ROWS, weight.shape[0])
    reduced = kernels.few_rows_linear(x, *params, norm=norm, launch=launch)
    reduced_caches = [cache.clone() for cache in caches]
    scale = head_dim ** -0.5
    mine = kernels.rotary_attend(sums, cos, sin, *_layer_views(caches, rows), mask, positions, heads, kv_heads, scale)
    expected = kernels.rotary_attend(reduced, cos, sin, *_layer_views(reduced_caches, rows), mask, positions, heads,
                                     kv_heads, scale)
    assert torch.equal(mine, expected)
    assert all(torch.equal(cache, reduced_cache) for cache, reduced_cache in zip(caches, reduced_caches))


@pytest.mark.parametrize("kind", ["bf16", "fp8"])
def test_residual_modulated_norm_finishes_split_sums_as_the_reduction_does(kernels, kind):
    """The diffusion head's second product left unreduced (8-bit: its output scales still to apply): the same hidden
    rows and norm as with it reduced."""
    from engine.quantize import quantize_rows

    generator = torch.Generator().manual_seed(8)
    rows, width, inner = 4, 40, 300
    weight = torch.randn(width, inner, generator=generator) * inner ** -0.5
    params = (weight.bfloat16(),)
    if kind == "fp8":
        quantized, scale = quantize_rows(weight, "fp8")
        params = (quantized, None, scale[:, 0])
    x = torch.randn(rows, inner, generator=generator).bfloat16()
    modulation = torch.randn(rows, 3, width, generator=generator).bfloat16()
    shift, scale, gate = modulation.unbind(1)
    hidden, norm_weight = (torch.randn(rows, width, generator=generator).bfloat16() for _ in range(2))
    launch = (16, 128 if kind == "fp8" else 64, 3, 4, 2)
    sums = kernels.few_rows_linear(x, *params, launch=launch, reduce=False)
    reduced = kernels.few_rows_linear(x, *params, launch=launch)
    for mine, expected in zip(kernels.residual_modulated_norm(hidden, gate, sums, norm_weight, 1e-6, shift, scale),
                              kernels.residual_modulated_norm(hidden, gate, reduced, norm_weight, 1e-6, shift, scale)):
        assert torch.equal(mine, expected)


@pytest.mark.parametrize("kind", ["fp8", "int8"])
@pytest.mark.parametrize("rows", [2, 20])
@pytest.mark.parametrize("bias, residual", [(False, False), (True, False), (False, True), (True, True)])
def test_scaled_linear_equals_the_quantized_linears_arithmetic(kernels, kind, rows, bias, residual):
    """The 8-bit product kernel against engine.quantize's CPU arithmetic (8-bit values times x summed in float32,
    the scale, one rounding, then bias and residual each rounded): few rows and many (the two launches), widths
    that are not multiples of the tiles. They differ only in the float32 summation order: at most a bf16 step."""
    from engine.quantize import linear, linear_residual, quantize_rows

    generator = torch.Generator().manual_seed(rows)
    weight, scale = quantize_rows(torch.randn(40, 300, generator=generator) * 0.05, kind)
    scale = scale[:, 0]
    x = torch.randn(rows, 300, generator=generator).bfloat16()
    b = torch.randn(40, generator=generator).bfloat16() if bias else None
    r = torch.randn(rows, 40, generator=generator).bfloat16() if residual else None
    ours = kernels.scaled_linear(x, weight, scale, b, r)
    expected = linear(x, weight, b, scale) if r is None else linear_residual(x, r, weight, b, scale)
    assert ours.shape == expected.shape and ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours, expected, rtol=2 ** -7, atol=2 ** -7 * float(expected.abs().max()))


FEW_ROWS_CASES = [  # (rows, dtype, norm, activation, bias, residual, layer scale, launch)
    (2, "bf16", True, None, True, False, False, None),  # an LM step's qkv
    (2, "bf16", False, None, False, True, False, None),  # o, down
    (16, "bf16", True, "silu_glu", False, False, False, None),  # gate-up
    (1, "bf16", False, "gelu", True, False, False, None),  # a tokenizer block's linear1
    (8, "bf16", False, None, True, True, True, (16, 64, 3, 4, 2)),  # its linear2, the inner width split in three
    (1, "bf16", False, "silu_glu", True, True, False, (16, 64, 3, 4, 2)),
    (5, "fp32", True, "gelu", False, True, True, (32, 128, 2, 4, 2)),
    (16, "bf16", True, None, True, True, False, None),
    # 8-bit weights with output scales (fp8: x quantized per activation group; int8: x's dtype)
    (2, "fp8", True, None, True, False, False, None),
    (16, "fp8", True, "silu_glu", False, False, False, (16, 128, 3, 4, 2)),
    (2, "int8", False, None, False, True, False, (16, 64, 3, 4, 2)),
    (7, "int8", True, "silu_glu", False, False, False, None),
    (1, "fp8", False, "gelu", True, True, True, None),
    # tiles of any width, lanes past them idle (outputs spread evenly over the programs)
    (2, "bf16", True, "silu_glu", False, False, False, (12, 64, 1, 4, 2)),
    (3, "bf16", False, None, True, True, False, (24, 64, 3, 4, 2)),
    (2, "fp8", True, "silu_glu", False, False, False, (18, 128, 2, 4, 2)),
]


@pytest.mark.parametrize("rows, kind, norm, activation, bias, residual, layer_scale, launch", FEW_ROWS_CASES)
def test_few_rows_linear_equals_linear_blocks_torch_ops(kernels, rows, kind, norm, activation, bias, residual,
                                                        layer_scale, launch):
    """few_rows_linear against engine.network.linear_block's torch ops (RMSNorm, product, silu(gate) * up or GELU,
    residual, each rounded): widths that are not multiples of the tiles, split inner widths. They differ in float32
    summation order, and Triton's interpreter truncates casts to bf16 (the GPU rounds to nearest): at most a step of
    the dtype per rounding, of which silu(gate) * up takes three after the product. 8-bit weights: against
    engine.quantize's arithmetic (the 8-bit values times x, summed in float32, scaled)."""
    from engine.quantize import quantize_rows

    generator = torch.Generator().manual_seed(rows)
    dtype = torch.float32 if kind == "fp32" else torch.bfloat16
    outputs, inner = 40, 300
    glu = activation == "silu_glu"
    weight = torch.randn(2 * outputs if glu else outputs, inner, generator=generator) * inner ** -0.5
    scale = None
    if kind in ("fp8", "int8"):
        weight, scale = quantize_rows(weight, kind)
        scale = scale[:, 0]
    bias = torch.randn(weight.shape[0], generator=generator).to(dtype) if bias else None
    params = (weight.to(dtype), bias) if scale is None else (weight, bias, scale)
    x = torch.randn(rows, inner, generator=generator).to(dtype)
    around = {"norm": (torch.rand(inner, generator=generator).to(dtype) + 0.5, 1e-6) if norm else None,
              "activation": activation,
              "residual": torch.randn(rows, outputs, generator=generator).to(dtype) if residual else None,
              "layer_scale": torch.rand(outputs, generator=generator).to(dtype) if layer_scale else None}
    ours = kernels.few_rows_linear(x, *params, **around, launch=launch)
    expected = network.linear_block(x, params, network, **around)
    assert ours.shape == expected.shape == (rows, outputs) and ours.dtype == dtype
    step = {torch.float32: 1e-5, torch.bfloat16: 2 ** -7}[dtype] * (4 if glu else 2)
    torch.testing.assert_close(ours, expected, rtol=step, atol=step * float(expected.abs().max()))
    assert not kernels._arrivals(x.device, 1).any()  # a split product's last parts set the counts back to zero


def test_few_rows_linear_refuses_many_rows_unknown_activations_and_fp8_steps_but_a_group(kernels):
    with pytest.raises(ValueError, match="at most 16 rows, got 17"):
        kernels.few_rows_linear(torch.zeros(17, 8), torch.zeros(4, 8))
    with pytest.raises(ValueError, match="an unreduced product .SplitSums. takes no activation, residual or layer"):
        kernels.few_rows_linear(torch.zeros(2, 8), torch.zeros(4, 8), activation="silu_glu", reduce=False)
    with pytest.raises(ValueError, match="unknown activation 'relu'; choose one of silu_glu, gelu"):
        kernels.few_rows_linear(torch.zeros(2, 8), torch.zeros(4, 8), activation="relu")
    fp8 = torch.zeros(4, 256, dtype=torch.float8_e4m3fn), None, torch.ones(4)
    with pytest.raises(ValueError, match="fp8 weights take 128 inputs per step .one activation group., got 64"):
        kernels.few_rows_linear(torch.zeros(2, 256), *fp8, launch=(16, 64, 1, 4, 2))
    with pytest.raises(ValueError, match="fp8 weights take 128 inputs per step .one activation group., got 256"):
        kernels.scaled_linear(torch.zeros(2, 256), fp8[0], fp8[2], launch=(16, 16, 256, 4))


@pytest.mark.parametrize("outputs, inner, glu, norm, launch", [
    (2048, 1536, False, True, (64, 64, 8, 4, 5)),  # 1.5B qkv: after a norm, more programs than processors
    (1536, 8960, False, False, (64, 128, 4, 4, 5)),  # 1.5B down: split while the programs do not fill them
    (1536, 1536, False, False, (64, 128, 1, 4, 5)),  # 1.5B o: too narrow to split
    (37888, 3584, True, True, (48, 64, 1, 4, 3)),  # 7B gate-up: many tiles, fewer stages, spread over 3 waves
    (4608, 3584, False, True, (64, 64, 4, 4, 5)),  # 7B qkv: and splits at most 1024 wide
    (17920, 1536, True, True, (34, 64, 1, 4, 5)),  # 1.5B gate-up: 140 tiles of 64 spread evenly over 2 x 132
])
def test_few_rows_launch_follows_the_measured_rule(kernels, monkeypatch, outputs, inner, glu, norm, launch):
    monkeypatch.setattr(kernels, "_processors", lambda device: 132)  # an H200's
    assert kernels.few_rows_launch(torch.empty(outputs, inner, device="meta"), glu, norm) == launch


@pytest.mark.parametrize("dtype, outputs, inner, glu, launch", [
    (torch.float8_e4m3fn, 2048, 1536, False, (128, 128, 4, 8, 4)),  # 1.5B qkv: splits of at least 384 inputs
    (torch.float8_e4m3fn, 3584, 18944, False, (128, 128, 8, 8, 4)),  # 7B down: at most 8 splits
    (torch.float8_e4m3fn, 9216, 1536, True, (128, 128, 2, 8, 4)),  # 1.5B head gate-up: 72 programs fit twice
    (torch.float8_e4m3fn, 17920, 1536, True, (128, 128, 1, 8, 4)),  # 1.5B gate-up: 70 tiles, unsplit
    (torch.float8_e4m3fn, 37888, 3584, True, (72, 128, 1, 8, 3)),  # 7B gate-up: 148 tiles, two a multiprocessor
    (torch.int8, 1536, 8960, False, (32, 256, 8, 4, 4)),
])
def test_eight_bit_few_row_launches_follow_the_measured_rule(kernels, monkeypatch, dtype, outputs, inner, glu,
                                                             launch):
    monkeypatch.setattr(kernels, "_processors", lambda device: 132)
    assert kernels.few_rows_launch(torch.empty(outputs, inner, dtype=dtype, device="meta"), glu, True) == launch


def test_int8_gate_up_products_stay_with_scaled_linear(kernels):
    int8, fp8 = torch.empty(4, 8, dtype=torch.int8), torch.empty(4, 8, dtype=torch.float8_e4m3fn)
    assert not kernels.few_rows_suits(int8, "silu_glu")
    assert kernels.few_rows_suits(int8, None) and kernels.few_rows_suits(fp8, "silu_glu")
    assert kernels.few_rows_suits(torch.empty(4, 8), "silu_glu")
