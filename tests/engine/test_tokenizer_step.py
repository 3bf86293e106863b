"""The channels-last tokenizer step against transformers' modules (through StreamingConvStep), chunk after chunk
with the caches carried, for the acoustic decoder and the semantic encoder."""
import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.config import HOP_SAMPLES
from engine.network import StreamingConvStep
from engine.tokenizer_step import TokenizerStep


@pytest.fixture(scope="module")
def inner(tiny_checkpoint):
    return load_checkpoint(str(tiny_checkpoint)).model.model


@pytest.mark.parametrize("half, ops", [(half, ops) for half in ("decoder", "semantic")
                                       for ops in ("torch ops", "triton kernels")] + [("decoder", "triton split blocks")])
def test_streamed_chunks_equal_the_modules_with_the_same_caches(inner, half, ops, monkeypatch):
    """With the torch ops, and with the Triton kernels as CUDA runs them (here through Triton's interpreter, two
    minutes a case): the narrow blocks whole, as at few streams, or as mixer and FFN kernels, as at many (the same
    kernels in both halves: the decoder's case covers them)."""
    module, output, shape = {"decoder": (inner.audio_tower.decoder, "audio", (3, 64, 1)),
                             "semantic": (inner.semantic_tokenizer_encoder, "latents", (3, 1, HOP_SAMPLES))}[half]
    triton = ops != "torch ops"
    if triton:
        kernels = pytest.importorskip("engine.triton_kernels")
        if ops == "triton split blocks":
            monkeypatch.setattr(kernels, "SPLIT_ABOVE_CHANNELS", 0)
            monkeypatch.setattr(kernels, "SPLIT_ROWS", 0)
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
