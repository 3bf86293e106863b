"""The channels-last tokenizer step against transformers' modules (through StreamingConvStep), chunk after chunk
with the caches carried, for the acoustic decoder and the semantic encoder."""
import copy
from types import SimpleNamespace

import pytest
import torch

from engine import tokenizer_step
from engine.checkpoint import load_checkpoint
from engine.config import HOP_SAMPLES
from engine.network import StreamingConvStep
from engine.quantize import quantize_linears
from engine.tokenizer_step import TokenizerStep, _Conv, wide_block_ffns

# max |fp8 - float| / max |float| of the decoder's output over four chunks, tiny checkpoint with its 64- to
# 256-channel blocks quantized; measured 4.1e-3 (float32 weights otherwise)
FP8_TOKENIZER_ERROR = 1e-2


@pytest.fixture(scope="module")
def inner(tiny_checkpoint):
    return load_checkpoint(str(tiny_checkpoint)).model.model


CASES = [(half, ops) for half in ("decoder", "semantic") for ops in ("torch ops", "triton kernels")]


@pytest.mark.parametrize("half, ops", CASES + [("decoder", "triton split blocks"), ("decoder", "triton wide blocks")])
def test_streamed_chunks_equal_the_modules_with_the_same_caches(inner, half, ops, monkeypatch):
    """With the torch ops, and with the Triton kernels as CUDA runs them (here through Triton's interpreter, two
    minutes a case): the narrow blocks whole, as at few streams, or as mixer and FFN kernels, as at many, or every
    block as the wide ones run, the mixer kernel and then the FFN's products (few_rows_linear where a stage has at
    most 16 rows) (the same kernels in both halves: the decoder's cases cover them)."""
    module, output, shape = {"decoder": (inner.audio_tower.decoder, "audio", (3, 64, 1)),
                             "semantic": (inner.semantic_tokenizer_encoder, "latents", (3, 1, HOP_SAMPLES))}[half]
    triton = ops != "torch ops"
    if triton:
        kernels = pytest.importorskip("engine.triton_kernels")
        if ops == "triton split blocks":
            monkeypatch.setattr(kernels, "WALK_LAUNCH", {width: (0, launch)  # the walking mixer kernel too
                                                         for width, (_, launch) in kernels.WALK_LAUNCH.items()})
        if ops == "triton wide blocks":
            monkeypatch.setattr(kernels, "BLOCK_MAX_CHANNELS", 0)
    reference, ours = StreamingConvStep(module, output), TokenizerStep(module, triton=triton)
    generator = torch.Generator().manual_seed(0)
    reference_caches = our_caches = reference.zero_caches(3)
    with torch.no_grad():
        for _ in range(4):
            x = torch.randn(*shape, generator=generator)
            expected, *reference_caches = reference(x, *reference_caches)
            result, *our_caches = ours(x, *our_caches)
            scale = float(expected.abs().max())
            torch.testing.assert_close(result, expected, rtol=0, atol=1e-5 * scale)
            for mine, theirs in zip(our_caches, reference_caches, strict=True):
                torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5 * max(float(theirs.abs().max()), 1e-6))


def test_wide_blocks_with_fp8_ffn_weights_run_the_same_on_the_kernels_and_stay_close_to_float(inner, monkeypatch):
    """An fp8 precision's decoder (the tiny checkpoint's blocks of 64 channels and more quantized, as the released
    sizes' of 1024 and more): the Triton kernels (through the interpreter: few_rows_linear with fp8 weights after the
    mixer kernel) compute what the torch ops compute, and both stay within fp8's error of the float decoder."""
    monkeypatch.setattr(tokenizer_step, "QUANTIZED_MIN_CHANNELS", 64)
    pytest.importorskip("engine.triton_kernels")
    module = copy.deepcopy(inner.audio_tower.decoder)
    ffns = wide_block_ffns(module)
    assert ffns and all(quantize_linears(ffn, "fp8") == 2 for ffn in ffns)
    steps = [TokenizerStep(inner.audio_tower.decoder, triton=False), TokenizerStep(module, triton=False),
             TokenizerStep(module, triton=True)]
    generator = torch.Generator().manual_seed(1)
    caches = [StreamingConvStep(inner.audio_tower.decoder, "audio").zero_caches(3)] * 3
    worst = 0.0
    with torch.no_grad():
        for _ in range(4):
            x = torch.randn(3, 64, 1, generator=generator)
            outputs = []
            for i, step in enumerate(steps):
                out, *caches[i] = step(x, *caches[i])
                outputs.append(out)
            expected, ours, kernels = outputs
            scale = float(expected.abs().max())
            # an activation on the other side of an fp8 rounding boundary (the kernel scales a group by 448 / max,
            # the torch twin divides by max / 448) moves an output by ~3e-4 of the scale; a wrong product by ~1
            torch.testing.assert_close(kernels, ours, rtol=0, atol=1e-3 * scale)
            worst = max(worst, float((ours - expected).abs().max()) / scale)
    assert 0 < worst < FP8_TOKENIZER_ERROR


@pytest.mark.parametrize("in_channels, out_channels, kernel, stride", [(32, 1, 7, 1), (64, 3, 7, 1), (8, 16, 4, 2),
                                                                       (6, 12, 10, 5), (16, 8, 7, 1)])
def test_a_causal_convolution_is_the_convolution_over_its_cache_and_input(in_channels, out_channels, kernel, stride):
    """Both forms of _Conv (the product first where kernel x out channels <= in channels, as for the 1.5B decoder's
    head, which the tiny checkpoint lacks; over the windows otherwise) against conv1d over [cache, x]."""
    generator = torch.Generator().manual_seed(in_channels + kernel)
    conv = torch.nn.Conv1d(in_channels, out_channels, kernel, stride)
    with torch.no_grad():
        for parameter in conv.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    width = kernel - stride
    op = _Conv(SimpleNamespace(conv=conv, cache_key="c", left_pad=width))
    assert op.product_first == (out_channels * kernel <= in_channels)
    x = torch.randn(2, 5 * stride, in_channels, generator=generator)
    cache = torch.randn(2, in_channels, width, generator=generator).transpose(1, 2)  # as the engine holds it
    out, new = op(x, cache)
    padded = torch.cat([cache, x], dim=1)
    expected = conv(padded.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(new, padded[:, -width:])
