"""The Triton kernels against the torch ops they replace (the code that runs where they do not), run on CPU by
Triton's interpreter (TRITON_INTERPRET=1): the same kernel code that the GPU compiles."""
import importlib
import os

import pytest
import torch

from engine import tokenizer_step


@pytest.fixture(scope="module")
def kernels():
    assert os.environ.get("TRITON_INTERPRET") == "1"  # set by tests/conftest.py before any import of Triton
    pytest.importorskip("triton")
    return importlib.import_module("engine.triton_kernels")


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
    expected = tokenizer_step.convnext_mixer(x, cache, *weights)  # what the block runs without the kernel
    for name, mine, theirs in zip(("x1", "ffn_in", "new cache"), ours, expected):
        assert mine.shape == theirs.shape and mine.dtype == dtype, name
        # float32 to summation order; bf16 to a few rounding steps (CPU torch rounds bf16 at other points than the
        # kernel and CUDA torch do), while a wrong tap, row or channel is off by the values' own size
        tolerance = {torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype] * float(theirs.abs().max())
        torch.testing.assert_close(mine, theirs, rtol=0, atol=tolerance, msg=name)
