"""The pieces that make a frame capturable, checked on CPU: bucket sizes, padded frames, the in-place KV step, and
slot compaction when a stream leaves from the middle."""
import numpy as np
import pytest
import torch

from engine.batch import CONTEXT_BUCKET, PREFILL_BUCKET, BatchEngine, bucket
from engine.config import EngineSettings
from engine.prompt import prepare_prompt
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.runtime import load_runtime
from engine.network import CachedLanguageModelStep, ConnectorStep, DiffusionSolver
from engine.quantize import fuse_linears, linear
from engine.runtime.base import Runtime
from engine.sampler import schedule_table, solve

SCRIPT = "Speaker 0: Buckets, padding and compaction."


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_runtime(str(tiny_checkpoint), "torch", device="cpu")


def add(engine, model, voice, seed, frames, **options):
    runtime, processor = model
    req = SynthesisRequest(SCRIPT, {0: Voice(audio=voice)}, SynthesisOptions(seed=seed, exact_frames=frames,
                                                                             **options))
    return engine.add(prepare_prompt(runtime, processor, req, seed), req.options)


def test_buckets_are_powers_of_two_within_the_limit():
    assert [bucket(n, 64) for n in (1, 2, 3, 5, 8, 9, 33, 64)] == [1, 2, 4, 8, 8, 16, 64, 64]
    assert bucket(5, 6) == 6
    engine_settings = EngineSettings(max_context=1024)
    engine = BatchEngine.__new__(BatchEngine)
    engine.settings = engine_settings
    assert [engine._context_bucket(c) for c in (1, 256, 257, 700, 1024)] == [256, 256, 512, 1024, 1024]
    assert CONTEXT_BUCKET == 256
    assert [engine._prefill_width(n) for n in (1, 64, 65, 129, 700, 1000)] == [64, 64, 128, 256, 1024, 1024]
    assert PREFILL_BUCKET == 64


def test_a_prompt_padded_with_anything_prefills_as_it_does_alone(model):
    """What a captured prefill relies on: positions after a prompt (here random values, as stale embeddings from an
    earlier, longer prompt) change none of the prompt's outputs, keys or values."""
    runtime = model[0]
    generator = torch.Generator().manual_seed(5)
    length, width = 37, PREFILL_BUCKET
    padded = torch.randn(1, width, runtime.spec.hidden_size, generator=generator)
    alone = runtime.prefill(padded[:, :length])
    for mine, theirs in zip(runtime.prefill(padded), alone, strict=True):
        torch.testing.assert_close(mine[..., :length, :] if mine.dim() == 5 else mine[:, :length], theirs,
                                   rtol=1e-5, atol=1e-5)


def test_a_padded_frame_leaves_the_live_slots_as_an_exact_frame_does(model, voices):
    """CUDA graphs run frames over a power-of-two slot count: slots past the live ones must not change them."""
    engines = []
    for _ in range(2):
        engine = BatchEngine(model[0], EngineSettings(max_streams=4, max_context=512))
        for seed, (name, steps) in enumerate([("low", 10), ("high", 5), ("low", 7)]):
            add(engine, model, voices[name], seed, 4, diffusion_steps=steps)
        engine.step()  # give the slots a history, then one frame exact and one padded to 4 slots
        engines.append(engine)
    context = engines[0]._context_bucket(max(s.positive_len for s in engines[0]._slots) + 1)
    engines[0]._frame(3, 10, context)
    engines[1]._frame(4, 10, context)
    exact, padded = engines
    torch.testing.assert_close(padded._audio_out[:3], exact._audio_out[:3], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded._tokens_out[:3], exact._tokens_out[:3])
    for a, b in zip(live_state(exact, 3), live_state(padded, 3)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)  # batch size changes matmul sums


def live_state(engine, n):
    return [engine._keys[:, :2 * n], engine._values[:, :2 * n], *(c[:n] for c in engine._caches),
            engine._positive_hidden[:n], engine._negative_hidden[:n], engine._logits[:n],
            engine._positive_len[:n], engine._negative_len[:n]]


@pytest.mark.parametrize("triton", [False, True], ids=["torch ops", "triton kernels"])
def test_in_place_kv_step_equals_the_step_over_a_copied_past(model, triton):
    """With the torch ops, and with the Triton kernels (few-row products, the attention with its rotary embedding
    and KV write finishing the qkv product's split sums) through Triton's interpreter."""
    if triton:
        pytest.importorskip("triton")
    runtime = model[0]
    spec = runtime.spec
    generator = torch.Generator().manual_seed(0)
    shape = (spec.num_layers, 6, spec.kv_heads, 64, spec.head_dim)
    keys, values = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    embeds = torch.randn(4, spec.hidden_size, generator=generator)
    positions = torch.tensor([5, 17, 1, 30])
    copies = keys.clone(), values.clone()
    step = CachedLanguageModelStep(runtime._lm, triton=triton)
    with torch.no_grad():
        hidden, logits = step(embeds, positions, keys, values, 32)
    expected_hidden, expected_logits = Runtime.lm_cached(runtime, embeds, positions, *copies, 32)
    torch.testing.assert_close(hidden, expected_hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(keys, copies[0], rtol=1e-5, atol=1e-5)  # the same positions written, nothing else
    torch.testing.assert_close(values, copies[1], rtol=1e-5, atol=1e-5)


def test_prefill_equals_the_lm_over_an_empty_past(model):
    """The torch runtime's prefill (fused products, causal attention) against LanguageModelStep."""
    runtime = model[0]
    embeds = torch.randn(3, 37, runtime.spec.hidden_size, generator=torch.Generator().manual_seed(2))
    for mine, theirs in zip(runtime.prefill(embeds), Runtime.prefill(runtime, embeds), strict=True):
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_fused_solver_equals_the_reference_solve_over_the_head(model):
    """The runtime's solve (conditioning hoisted out of the loop, fused weights), with torch ops and with the Triton
    kernels, against engine.sampler.solve calling the head step by step, with a different step count and guidance
    per row (short rows end in identity steps)."""
    runtime = model[0]
    spec = runtime.spec
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(3, spec.latent_dim, generator=generator)
    cond_pos, cond_neg = (torch.randn(3, spec.hidden_size, generator=generator) for _ in range(2))
    cfg = torch.tensor([1.3, 1.0, 2.0])
    table = torch.tensor(schedule_table([10, 5, 7]), dtype=torch.float32)
    expected = solve(runtime.diffusion_head, noise, cond_pos, cond_neg, cfg, table)
    torch.testing.assert_close(runtime.solve(noise, cond_pos, cond_neg, cfg, table), expected, rtol=1e-5, atol=1e-5)
    pytest.importorskip("triton")
    with_kernels = DiffusionSolver(runtime._solver.head, triton=True)  # as on CUDA, here by Triton's interpreter
    torch.testing.assert_close(with_kernels(noise, cond_pos, cond_neg, cfg, table), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("triton", [False, True])
def test_connector_steps_equal_the_modules(model, triton):
    """The speech connectors as two linear_blocks (the norm inside the second), with torch ops and with the Triton
    kernels (by Triton's interpreter), against transformers' modules: a frame's few rows and a prompt's many."""
    if triton:
        pytest.importorskip("triton")
    runtime = model[0]
    generator = torch.Generator().manual_seed(2)
    for step in (runtime._acoustic_connector, runtime._semantic_connector):
        ours = ConnectorStep(step.projector, triton=triton)
        width = step.projector.linear_1.in_features
        for shape in ((3, width), (2, 20, width)):
            x = torch.randn(*shape, generator=generator)
            torch.testing.assert_close(ours(x), step.projector(x), rtol=1e-5, atol=1e-5)


def test_fused_linears_compute_what_the_separate_ones_did_and_share_their_memory():
    torch.manual_seed(0)
    q, k = torch.nn.Linear(8, 6), torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 8)
    expected = torch.cat([q(x), k(x)], dim=-1)
    weight, bias = fuse_linears([q, k])
    torch.testing.assert_close(linear(x, weight, bias), expected)
    assert weight.shape == (10, 8) and torch.equal(bias[6:], torch.zeros(4))  # k had no bias
    torch.testing.assert_close(torch.cat([q(x), k(x)], dim=-1), expected)  # the modules still work...
    assert q.weight.data_ptr() == weight.data_ptr()  # ...on views of the fused weight
    assert k.weight.data_ptr() == weight[6:].data_ptr() and k.bias is None


def test_a_stream_leaving_from_the_middle_leaves_the_others_unchanged(model, voices):
    """The last slot moves into the freed one, caches and all."""
    def run(cancel_middle: bool) -> dict[int, np.ndarray]:
        engine = BatchEngine(model[0], EngineSettings(max_streams=3, max_context=512))
        ids = [add(engine, model, voices[name], seed, 6) for seed, name in enumerate(["low", "high", "low"])]
        audio = {i: [] for i in ids}
        for step in range(6):
            if cancel_middle and step == 2:
                assert engine.cancel(ids[1])
            for output in engine.step():
                audio[output.stream_id].append(output.audio)
        return {i: np.concatenate(chunks) for i, chunks in audio.items() if chunks}

    full, cut = run(False), run(True)
    first, middle, last = sorted(full)
    for stream in (first, last):
        np.testing.assert_allclose(cut[stream], full[stream], rtol=0, atol=1e-5)  # batch of 2 vs 3: sum order
    assert len(cut[middle]) == 2 * 3200


def test_a_stream_joining_an_empty_engine_gets_a_frame_from_its_first_step(model, voices):
    """The frame queued ahead for a stream that then left is dropped, not waited for and handed out as nothing."""
    engine = BatchEngine(model[0], EngineSettings(max_streams=2, max_context=512))
    first = add(engine, model, voices["low"], 0, 6)
    assert [output.stream_id for output in engine.step()] == [first]  # its second frame is queued already
    engine.cancel(first)
    second = add(engine, model, voices["low"], 1, 6)
    assert [output.stream_id for output in engine.step()] == [second]
