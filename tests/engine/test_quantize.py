"""fp8 and int8 precisions on CPU: the quantization error is what the formats allow, a quantized linear stays close
to the float one, the runtime quantizes only the LM's decoder linears, the diffusion head's FFNs and the tokenizers'
wide blocks' FFNs without keeping their float weights, and a whole synthesis stays close to fp32 at its first
frame."""
import gc
import re
import weakref

import numpy as np
import pytest
import torch
from torch import nn

from engine import tokenizer_step
from engine.checkpoint import load_checkpoint
from engine.config import HOP_SAMPLES
from engine.errors import RuntimeUnavailable
from engine.quantize import QuantizedLinear, linear, quantize_linears
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.runtime import load_runtime
from engine.runtime.base import Runtime
from engine.runtime.torch_runtime import TorchRuntime
from engine.synthesizer import Synthesizer

# The largest rounding error of one weight, relative to its row's largest magnitude: half an int8 step (0.5 / 127);
# for e4m3, half the spacing of its top binade [256, 448] (16 / 448).
WEIGHT_ERROR = {"int8": 0.5 / 127, "fp8": 16 / 448}
# max |quantized - float| / max |float| of a linear's output, random weights; measured 6.6e-3..7.9e-3 (int8,
# weight-only) and 3.2e-2..3.9e-2 (fp8: 3 mantissa bits on weights and activations) over the three seeds below.
OUTPUT_ERROR = {"int8": 1e-2, "fp8": 6e-2}
# The first frame of audio against the fp32 engine (max |diff| / max |fp32|), tiny checkpoint, seed 3; measured:
# bf16 2.9e-2, fp8 3.0e-2, int8 3.3e-2 (the 8-bit layers' share is small next to the bf16 tokenizers; the tiny
# head's FFN barely moves its output).
FIRST_FRAME_ERROR = 6e-2


def random_linear(seed: int, bias: bool = True) -> nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(256, 384, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(384, 256, generator=generator) * 0.05)
        if bias:
            layer.bias.copy_(torch.randn(384, generator=generator) * 0.1)
    return layer.requires_grad_(False)


def relative_error(actual, expected) -> float:
    return float((actual.float() - expected.float()).abs().max() / expected.float().abs().max())


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_each_weight_is_rounded_within_the_formats_step(kind):
    layer = random_linear(0)
    quantized = QuantizedLinear.from_linear(layer, kind)
    assert quantized.weight.dtype == {"int8": torch.int8, "fp8": torch.float8_e4m3fn}[kind]
    restored = quantized.weight.float() * quantized.scale[:, None]
    row_error = (restored - layer.weight).abs().amax(dim=1) / layer.weight.abs().amax(dim=1)
    assert float(row_error.max()) <= WEIGHT_ERROR[kind] * (1 + 1e-5)


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantized_linear_stays_close_to_the_float_linear(kind, seed):
    layer = random_linear(seed)
    x = torch.randn(5, 7, 256, generator=torch.Generator().manual_seed(10 + seed))
    out = QuantizedLinear.from_linear(layer, kind)(x)
    assert out.shape == (5, 7, 384) and out.dtype == torch.float32
    assert relative_error(out, layer(x)) < OUTPUT_ERROR[kind]


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_the_cpu_product_computes_the_definition(kind):
    """x times the dequantized weight (fp8: x's rows quantized to fp8 per 128 values, scale max |group| / 448),
    with two roundings to bf16 (the product, then the bias added; each within 2^-8 of the value) between it and the
    definition."""
    layer = random_linear(3).bfloat16()
    quantized = QuantizedLinear.from_linear(layer, kind)
    x = torch.randn(6, 256, generator=torch.Generator().manual_seed(4)).bfloat16()
    x[0, 5] = 40.0  # an outlier: its group's scale only
    weight = quantized.weight.float() * quantized.scale[:, None]
    activations = x.float()
    if kind == "fp8":
        groups = activations.view(6, 2, 128)
        scale = groups.abs().amax(dim=-1, keepdim=True) / 448
        activations = ((groups / scale).to(torch.float8_e4m3fn).float() * scale).view(6, 256)
    definition = activations @ weight.T + layer.bias.float()
    out = quantized(x)
    assert out.dtype == torch.bfloat16
    assert relative_error(out, definition) <= 2 * 2**-8


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_zero_rows_stay_zero(kind):
    """Padded slots of a captured frame carry zero rows: they must not turn into NaN."""
    quantized = QuantizedLinear.from_linear(random_linear(5, bias=False), kind)
    out = quantized(torch.zeros(3, 256, dtype=torch.bfloat16))
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(linear(torch.zeros(2, 256), quantized.weight, None, quantized.scale), torch.zeros(2, 384))


def test_an_unknown_weight_quantization_is_refused_by_name():
    with pytest.raises(RuntimeUnavailable, match=re.escape("unknown weight quantization 'int4'; choose one of fp8, "
                                                           "int8")):
        quantize_linears(nn.Sequential(nn.Linear(16, 16)), "int4")


@pytest.mark.parametrize("kind", ["fp8", "int8"])
def test_runtime_quantizes_only_the_decoder_layers_and_head_ffns_and_releases_their_float_weights(tiny_checkpoint,
                                                                                                  kind):
    checkpoint = load_checkpoint(str(tiny_checkpoint))
    inner = checkpoint.model.model
    quantized = [inner.language_model.layers, *(layer.ffn for layer in inner.diffusion_head.layers)]
    float_weights = [weakref.ref(m.weight) for part in quantized for m in part.modules() if isinstance(m, nn.Linear)]
    runtime = TorchRuntime(checkpoint, "cpu", torch.bfloat16, quantized=kind)
    gc.collect()
    assert len(float_weights) == 7 * len(inner.language_model.layers) + 3 * len(inner.diffusion_head.layers)
    assert all(ref() is None for ref in float_weights)  # no full-precision copy stays resident
    for part in quantized:
        assert not any(isinstance(m, nn.Linear) for m in part.modules())
        assert {m.weight.dtype for m in part.modules() if isinstance(m, QuantizedLinear)} == {
            {"fp8": torch.float8_e4m3fn, "int8": torch.int8}[kind]}
    # embeddings (tied to lm_head), the head's modulation and projections and the tokenizers keep the compute dtype
    assert inner.language_model.embed_tokens.weight.dtype == torch.bfloat16
    head_linears = [m for m in inner.diffusion_head.modules() if isinstance(m, nn.Linear)]
    assert head_linears and all(m.weight.dtype == torch.bfloat16 for m in head_linears)
    assert all(isinstance(layer.linear, nn.Linear) for layer in inner.diffusion_head.layers)
    assert f"{kind} LM, diffusion-head FFN and wide tokenizer-block FFN weights" in runtime.describe()


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_in_place_kv_step_equals_the_step_over_a_copied_past_with_quantized_weights(tiny_checkpoint, precision):
    """The captured frame's LM step (functional layers) and the prefill's (transformers' modules) agree."""
    runtime, _ = load_runtime(str(tiny_checkpoint), "torch", device="cpu", precision=precision)
    spec = runtime.spec
    generator = torch.Generator().manual_seed(0)
    shape = (spec.num_layers, 4, spec.kv_heads, 32, spec.head_dim)
    keys = torch.randn(shape, generator=generator).bfloat16()
    values = torch.randn(shape, generator=generator).bfloat16()
    embeds = torch.randn(3, spec.hidden_size, generator=generator).bfloat16()
    positions = torch.tensor([5, 17, 1])
    copies = keys.clone(), values.clone()
    hidden, logits = runtime.lm_cached(embeds, positions, keys, values, 24)
    expected_hidden, expected_logits = Runtime.lm_cached(runtime, embeds, positions, *copies, 24)
    # bf16 tolerances, but absolute ones at the outputs' scale: the step rounds fewer times than the modules (fused
    # norm, fused products), and a rounding that moves an fp8 activation by a step moves a value near zero by more
    # (a key written at a wrong position would differ at the cache's scale, not by roundings)
    for ours, theirs in ((hidden, expected_hidden), (logits, expected_logits), (keys, copies[0]),
                         (values, copies[1])):
        torch.testing.assert_close(ours, theirs, rtol=1.6e-2, atol=1e-2 * float(theirs.abs().max()))


@pytest.fixture(scope="module")
def fp32_audio(tiny_checkpoint, voices):
    return Synthesizer.load(str(tiny_checkpoint), runtime="torch", device="cpu", precision="fp32").synthesize(
        first_frame_request(voices)).audio


def first_frame_request(voices) -> SynthesisRequest:
    return SynthesisRequest("Speaker 0: Precision on a tiny model.", {0: Voice(audio=voices["low"])},
                            SynthesisOptions(seed=3, exact_frames=2))


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_synthesis_at_8_bit_precision_stays_close_to_fp32_at_the_first_frame(tiny_checkpoint, voices, fp32_audio,
                                                                            precision):
    synth = Synthesizer.load(str(tiny_checkpoint), runtime="torch", device="cpu", precision=precision)
    audio = synth.synthesize(first_frame_request(voices)).audio
    assert audio.shape == fp32_audio.shape and np.isfinite(audio).all()
    assert relative_error(torch.from_numpy(audio[:HOP_SAMPLES]), torch.from_numpy(fp32_audio[:HOP_SAMPLES])) < (
        FIRST_FRAME_ERROR)


@pytest.mark.parametrize("precision", ["fp8", "int8"])
def test_the_tokenizers_wide_blocks_take_8_bit_ffn_weights_and_synthesis_stays_close_to_fp32(
        tiny_checkpoint, voices, fp32_audio, precision, monkeypatch):
    """The tiny checkpoint's blocks are at most 256 channels wide, under QUANTIZED_MIN_CHANNELS: lowered to 64 here,
    its three widest stages' FFNs take 8-bit weights, as the released sizes' 1024- and 2048-channel ones do."""
    monkeypatch.setattr(tokenizer_step, "QUANTIZED_MIN_CHANNELS", 64)
    checkpoint = load_checkpoint(str(tiny_checkpoint))
    inner = checkpoint.model.model
    synth = Synthesizer(TorchRuntime(checkpoint, "cpu", torch.bfloat16, quantized=precision), checkpoint.processor)
    for half in (inner.audio_tower.decoder, inner.semantic_tokenizer_encoder):
        blocks = [block for stage in [half.stem, *half.conv_layers] for block in stage.stage]
        wide = [block.ffn.linear1.weight.shape[1] >= 64 for block in blocks]
        assert any(wide) and not all(wide)
        for block, quantized in zip(blocks, wide, strict=True):
            assert isinstance(block.ffn.linear1, QuantizedLinear) == quantized
            assert isinstance(block.ffn.linear2, QuantizedLinear) == quantized
    assert not any(isinstance(m, QuantizedLinear) for m in inner.audio_tower.encoder.modules())  # voice encoder
    audio = synth.synthesize(first_frame_request(voices)).audio
    assert relative_error(torch.from_numpy(audio[:HOP_SAMPLES]), torch.from_numpy(fp32_audio[:HOP_SAMPLES])) < (
        FIRST_FRAME_ERROR)


def test_an_unknown_precision_is_refused_by_name(tiny_checkpoint):
    with pytest.raises(RuntimeUnavailable, match=re.escape("unknown precision 'int4'; the torch runtime runs auto, "
                                                           "fp32, bf16, fp16, fp8, int8")):
        load_runtime(str(tiny_checkpoint), "torch", device="cpu", precision="int4")
