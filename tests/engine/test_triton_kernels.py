"""The Triton kernels against the torch ops they replace, run on CPU by Triton's interpreter (TRITON_INTERPRET=1):
the same kernel code that the GPU compiles."""
import importlib
import os

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def kernels():
    assert os.environ.get("TRITON_INTERPRET") == "1"  # set by tests/conftest.py before any import of Triton
    pytest.importorskip("triton")
    return importlib.import_module("engine.triton_kernels")


def reference_mixer(x, cache, norm_w, eps, conv_w, conv_b, gamma, ffn_w, ffn_eps):
    """The torch ops of engine.tokenizer_step._Block up to the FFN's input."""
    width = cache.shape[1]
    padded = torch.cat([cache, F.rms_norm(x, x.shape[-1:], norm_w, eps)], dim=1)
    mixed = F.conv1d(padded.transpose(1, 2), conv_w, conv_b, groups=x.shape[-1])
    x1 = torch.addcmul(x, mixed.transpose(1, 2), gamma)
    return x1, F.rms_norm(x1, x.shape[-1:], ffn_w, ffn_eps), padded[:, padded.shape[1] - width:]


@pytest.mark.parametrize("frames, channels", [(1, 48), (3, 16), (6, 8), (40, 12), (300, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_convnext_mixer_equals_the_torch_ops(kernels, frames, channels, dtype):
    """Chunks shorter than, as long as and longer than the cache (width 6), channels not a power of two, and the
    cache as the engine holds it (a transposed view)."""
    generator = torch.Generator().manual_seed(frames * channels)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(dtype)

    batch, width = 3, 6
    x = rand(batch, frames, channels, scale=3.0)
    cache = rand(batch, channels, width).transpose(1, 2)  # [B, W, C] seen through a transpose
    weights = (rand(channels), 1e-5, rand(channels, 1, width + 1), rand(channels), rand(channels), rand(channels),
               1e-6)
    ours = kernels.convnext_mixer(x, cache, *weights)
    expected = reference_mixer(x, cache, *weights)
    for name, mine, theirs in zip(("x1", "ffn_in", "new cache"), ours, expected):
        assert mine.shape == theirs.shape and mine.dtype == dtype, name
        # float32 to summation order; bf16 to a few rounding steps (CPU torch rounds bf16 at other points than the
        # kernel and CUDA torch do), while a wrong tap, row or channel is off by the values' own size
        tolerance = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype] * float(theirs.abs().max())
        torch.testing.assert_close(mine, theirs, rtol=0, atol=tolerance, msg=name)
