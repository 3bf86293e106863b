"""The engine reproduces transformers' VibeVoice exactly, streams, and batches without requests disturbing each other."""
import re

import numpy as np
import pytest
import torch
from reference import reference_audio

from engine.batch import BatchEngine
from engine.config import EngineSettings, HOP_SAMPLES
from engine.errors import InvalidRequest, RuntimeUnavailable
from engine.prompt import prepare_prompt
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.runtime import load_runtime
from engine.synthesizer import Synthesizer

TOLERANCE = 1e-5  # max |ours - reference| / max |reference| (measured ~1e-6; a wrong KV position gave 5e-5)


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def synth(tiny_checkpoint):
    return Synthesizer.load(str(tiny_checkpoint), runtime="torch", settings=EngineSettings(max_streams=4))


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def synth_each_runtime(request, synth, tiny_repository):
    if request.param == "torch":
        return synth
    return Synthesizer.load(str(tiny_repository[0]), runtime="onnxruntime")


ONE_SPEAKER = "Speaker 0: Hello there, how are you today?"
TWO_SPEAKERS = "Speaker 1: Hi, nice to meet you.\nSpeaker 2: Fine, thanks. And you?\nSpeaker 1: Very well."


def request(script, voices, voice_names, **options) -> SynthesisRequest:
    return SynthesisRequest(script, {s: Voice(audio=voices[name]) for s, name in voice_names.items()},
                            SynthesisOptions(**options))


@pytest.mark.parametrize("script, voice_names, cfg, steps, seed", [
    (ONE_SPEAKER, {0: "low"}, 1.3, 10, 11),
    (ONE_SPEAKER, {0: "high"}, 1.0, 5, 12),
    (TWO_SPEAKERS, {1: "low", 2: "high"}, 1.3, 5, 13),
    (TWO_SPEAKERS + "\nSpeaker 2: A longer closing line makes a longer prompt.", {1: "high", 2: "low"}, 1.0, 10, 14),
])
def test_matches_transformers_generate(synth_each_runtime, tiny_checkpoint, voices, script, voice_names, cfg, steps,
                                       seed):
    req = request(script, voices, voice_names, cfg_scale=cfg, diffusion_steps=steps, seed=seed, exact_frames=6)
    ours = synth_each_runtime.synthesize(req)
    reference = reference_audio(tiny_checkpoint, req, {s: voices[n] for s, n in voice_names.items()})
    assert ours.frames == 6 and ours.reason == "exact_frames" and ours.seed == seed
    assert relative_error(ours.audio, reference) <= TOLERANCE


def test_seed_reproduces_and_differs(synth, voices):
    first = synth.synthesize(request(ONE_SPEAKER, voices, {0: "low"}, seed=5, exact_frames=3)).audio
    again = synth.synthesize(request(ONE_SPEAKER, voices, {0: "low"}, seed=5, exact_frames=3)).audio
    other = synth.synthesize(request(ONE_SPEAKER, voices, {0: "low"}, seed=6, exact_frames=3)).audio
    np.testing.assert_array_equal(first, again)
    assert relative_error(other, first) > 1e-2


def test_unseeded_request_reports_its_seed(synth, voices):
    result = synth.synthesize(request(ONE_SPEAKER, voices, {0: "low"}, exact_frames=2))
    replay = synth.synthesize(request(ONE_SPEAKER, voices, {0: "low"}, seed=result.seed, exact_frames=2))
    np.testing.assert_array_equal(result.audio, replay.audio)


def test_cached_latents_equal_recorded_voice(synth, voices):
    recorded = request(ONE_SPEAKER, voices, {0: "low"}, seed=21, exact_frames=3)
    from engine.audio import normalize_voice, voice_frames

    clip = normalize_voice(voices["low"])
    padded = np.zeros((1, 1, voice_frames(len(clip)) * HOP_SAMPLES), dtype=np.float32)
    padded[0, 0, :len(clip)] = clip
    latents = synth.runtime.encode_voice(torch.from_numpy(padded))[0].numpy()
    cached = SynthesisRequest(ONE_SPEAKER, {0: Voice(latents=latents)}, recorded.options)
    np.testing.assert_allclose(synth.synthesize(cached).audio, synth.synthesize(recorded).audio, rtol=0, atol=1e-6)


def test_streamed_frames_equal_one_shot_decode(synth, voices):
    """Frames come out one at a time; their concatenation equals decoding all latents in one non-streaming pass."""
    latents = []
    decode = synth.runtime.decode

    def recording_decode(x, *caches):
        latents.append(x.clone())
        return decode(x, *caches)

    synth.runtime.decode = recording_decode
    try:
        chunks = list(synth.stream(request(ONE_SPEAKER, voices, {0: "low"}, seed=3, exact_frames=5)))
    finally:
        del synth.runtime.decode
    assert [c.shape for c in chunks] == [(HOP_SAMPLES,)] * 5
    decoder = synth.runtime._decoder.module
    with torch.no_grad():
        one_shot = decoder(torch.cat(latents, dim=-1)).audio[0, 0].numpy()
    assert relative_error(np.concatenate(chunks), one_shot) <= 1e-5


def solo(synth, req) -> np.ndarray:
    return synth.synthesize(req).audio


def test_batched_requests_equal_running_alone(synth, voices):
    requests = [
        request(ONE_SPEAKER, voices, {0: "low"}, seed=1, exact_frames=4),
        request(TWO_SPEAKERS, voices, {1: "high", 2: "low"}, seed=2, cfg_scale=1.0, diffusion_steps=5, exact_frames=6),
        request("Speaker 0: Short.", voices, {0: "high"}, seed=3, cfg_scale=2.0, diffusion_steps=8, exact_frames=3),
    ]
    together: dict[int, list] = {i: [] for i in range(len(requests))}
    steps = 0
    for index, _, output in synth.run(requests):
        steps += 1
        if output.audio is not None:
            together[index].append(output.audio)
    assert steps == 4 + 6 + 3  # outputs; all three ran in the same steps (see the batch-size test below)
    for i, req in enumerate(requests):
        assert relative_error(np.concatenate(together[i]), solo(synth, req)) <= 1e-5


def test_requests_share_steps(tiny_checkpoint, voices):
    runtime, processor = load_runtime(str(tiny_checkpoint), "torch")
    engine = BatchEngine(runtime, EngineSettings(max_streams=3))
    for seed in range(3):
        req = request(ONE_SPEAKER, voices, {0: "low"}, seed=seed, exact_frames=2)
        engine.add(prepare_prompt(runtime, processor, req, seed), req.options)
    first_step = engine.step()
    assert len(first_step) == 3 and all(o.audio is not None for o in first_step)


def test_joining_mid_run_does_not_disturb_running_streams(tiny_checkpoint, synth, voices):
    runtime, processor = load_runtime(str(tiny_checkpoint), "torch")
    engine = BatchEngine(runtime, EngineSettings(max_streams=2))
    first = request(TWO_SPEAKERS, voices, {1: "low", 2: "high"}, seed=8, exact_frames=8)
    late = request(ONE_SPEAKER, voices, {0: "high"}, seed=9, cfg_scale=1.7, exact_frames=4)
    audio: dict[int, list] = {}
    a = engine.add(prepare_prompt(runtime, processor, first, 8), first.options)
    for step in range(8):
        if step == 3:
            b = engine.add(prepare_prompt(runtime, processor, late, 9), late.options)
        for output in engine.step():
            audio.setdefault(output.stream_id, []).append(output.audio)
    assert engine.active == 0
    assert relative_error(np.concatenate(audio[a]), solo(synth, first)) <= 1e-5
    assert relative_error(np.concatenate(audio[b]), solo(synth, late)) <= 1e-5


def test_frame_bookkeeping_kernels_give_the_same_streams(tiny_checkpoint, voices):
    """The frame's bookkeeping as engine.frame_kernels runs it on CUDA (here in Triton's interpreter) against its
    torch twins: the same audio, frame for frame, for streams that join late and end at different frames."""
    from engine import frame_kernels

    runtime, processor = load_runtime(str(tiny_checkpoint), "torch")
    requests = [request(TWO_SPEAKERS, voices, {1: "low", 2: "high"}, seed=3, exact_frames=6),
                request(ONE_SPEAKER, voices, {0: "high"}, seed=4, cfg_scale=1.7, max_frames=9)]
    streams = []
    for glue in (None, frame_kernels):
        engine = BatchEngine(runtime, EngineSettings(max_streams=2))
        if glue:
            engine._glue = glue
        audio: dict[int, list] = {}
        for step in range(12):
            if step in (0, 2):
                req = requests[step // 2]
                engine.add(prepare_prompt(runtime, processor, req, step), req.options)
            for output in engine.step():
                audio.setdefault(output.stream_id, []).append(output.audio)
        streams.append(audio)
    assert streams[1].keys() == streams[0].keys() and len(streams[0]) == 2
    for stream, frames in streams[0].items():
        assert len(streams[1][stream]) == len(frames)
        for ours, theirs in zip(streams[1][stream], frames):
            assert (ours is None and theirs is None) or np.array_equal(ours, theirs)


def test_cancel_frees_the_slot(tiny_checkpoint, voices):
    runtime, processor = load_runtime(str(tiny_checkpoint), "torch")
    engine = BatchEngine(runtime, EngineSettings(max_streams=1))
    req = request(ONE_SPEAKER, voices, {0: "low"}, seed=1, exact_frames=50)
    stream = engine.add(prepare_prompt(runtime, processor, req, 1), req.options)
    engine.step()
    assert engine.free_slots == 0
    assert engine.cancel(stream) and engine.free_slots == 1 and engine.step() == []


def test_stopping_early_frees_the_stream(synth, voices):
    frames = synth.stream(request(ONE_SPEAKER, voices, {0: "low"}, seed=1, exact_frames=50))
    next(frames)
    frames.close()
    assert synth.engine.active == 0


def test_max_frames_caps_generation(synth, voices):
    result = synth.synthesize(request(ONE_SPEAKER, voices, {0: "low"}, seed=1, max_frames=3))
    assert result.frames <= 3
    assert result.reason in ("max_frames", "eos")


@pytest.mark.parametrize("script, voice_names, message", [
    ("\n".join(f"Speaker {i}: hi" for i in range(5)), {i: "low" for i in range(5)}, "speakers"),
    (TWO_SPEAKERS, {1: "low"}, "no voice for speaker(s) [2]"),
    (ONE_SPEAKER, {0: "low", 3: "high"}, "speaker(s) [3], who have no line"),
    ("   \n  ", {0: "low"}, "empty"),
])
def test_bad_requests_are_refused_by_name(voices, script, voice_names, message):
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        request(script, voices, voice_names)


@pytest.mark.parametrize("options, message", [
    (dict(cfg_scale=float("nan")), "cfg_scale"), (dict(diffusion_steps=0), "diffusion_steps"),
    (dict(exact_frames=0), "exact_frames"), (dict(seed=-1), "seed"),
])
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(InvalidRequest, match=message):
        SynthesisOptions(**options)


def test_latents_of_the_wrong_width_are_refused(synth):
    req = SynthesisRequest(ONE_SPEAKER, {0: Voice(latents=np.zeros((4, 32), dtype=np.float32))})
    with pytest.raises(InvalidRequest, match=r"shape \(4, 32\).*\[frames, 64\]"):
        synth.synthesize(req)


def test_unknown_runtime_is_refused(tiny_checkpoint):
    with pytest.raises(RuntimeUnavailable, match="unknown runtime 'tensorflow'"):
        load_runtime(str(tiny_checkpoint), "tensorflow")
    with pytest.raises(RuntimeUnavailable, match="needs an exported repository"):
        load_runtime(str(tiny_checkpoint), "onnxruntime")
