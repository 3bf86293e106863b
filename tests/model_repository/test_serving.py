"""The exported repository served by a real tritonserver: streamed audio equals `djz synth`, concurrent streams share
batched steps, cancellation frees a slot, bad requests are refused by name and leave the server serving."""
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import requests
import soundfile
import tritonclient.grpc as grpcclient
from streaming import Stream, error_of, request_tensors, stream, tensor

from engine.config import MAX_FRAMES_PER_CHUNK
from engine.contract import ENSEMBLE
from engine.postprocess import postprocess
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.synthesizer import Synthesizer

TWO_SPEAKERS = "Speaker 1: Hi, nice to meet you.\nSpeaker 2: Fine, thanks. And you?"
SAME_RUNTIME = dict(rtol=0, atol=1e-6)  # one stream on the same onnxruntime graphs: the same float operations
BATCHED = dict(rtol=0, atol=1e-4)       # batched with other streams, matrix kernels may sum in another order
# postprocessed: measured ~3e-6 off; processing a stream's chunks in another order moves samples by ~1e-3
FINISHED = dict(rtol=0, atol=2e-4)


@pytest.fixture(scope="module")
def synth(tiny_repository):
    return Synthesizer.load(str(tiny_repository[0]), runtime="onnxruntime")


def expected_raw(synth, script, voices: dict[int, np.ndarray], seed: int, frames: int, **options) -> np.ndarray:
    request = SynthesisRequest(script, {s: Voice(audio=a) for s, a in voices.items()},
                               SynthesisOptions(seed=seed, exact_frames=frames, **options))
    return synth.synthesize(request).audio


def metric_values(triton, name: str) -> dict[str, float]:
    """Every sample of a metric family, keyed by its labels and suffix."""
    text = urllib.request.urlopen(triton.metrics_url).read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith(name)}


def test_grpc_stream_equals_djz_synth(triton, tiny_repository, voices, tmp_path):
    """Two speakers, recorded voices, a seed: raw audio equals `djz synth --raw` for the same inputs, in whole
    frames; without RAW, it equals the same synthesis through the postprocessor, frame by frame."""
    script, frames, seed = TWO_SPEAKERS, 6, 21
    (tmp_path / "script.txt").write_text(script)
    for name in ("low", "high"):
        soundfile.write(tmp_path / f"{name}.wav", voices[name], 24000, subtype="FLOAT")
    subprocess.run([sys.executable, "-m", "djz", "synth", "--model", str(tiny_repository[0]), "--script",
                    str(tmp_path / "script.txt"), "--voice", f"1={tmp_path / 'low.wav'}", "--voice",
                    f"2={tmp_path / 'high.wav'}", "--seed", str(seed), "--frames", str(frames), "--raw", "--out",
                    str(tmp_path / "synth.wav")], check=True, capture_output=True)
    synthesized, _ = soundfile.read(tmp_path / "synth.wav", dtype="float32")

    raw = stream(triton.grpc_url, request_tensors(script, audio=[voices["low"], voices["high"]], SEED=seed,
                                                  EXACT_FRAMES=frames, RAW=True))
    # the first frame alone, then whole frames, up to MAX_FRAMES_PER_CHUNK per response (engine/chunking.py)
    lengths = [len(c) for c in raw.chunks if len(c)]
    assert lengths[0] == 3200 and sum(lengths) == 3200 * frames
    assert all(n % 3200 == 0 and n <= 3200 * MAX_FRAMES_PER_CHUNK for n in lengths)
    assert (raw.seed, raw.reason) == (seed, "exact_frames")
    np.testing.assert_allclose(raw.audio, synthesized, **SAME_RUNTIME)

    finished = stream(triton.grpc_url, request_tensors(script, audio=[voices["low"], voices["high"]], SEED=seed,
                                                       EXACT_FRAMES=frames))
    np.testing.assert_allclose(finished.audio, postprocess(synthesized), **SAME_RUNTIME)
    assert not np.allclose(finished.audio, raw.audio, atol=1e-3)  # the postprocessor did change the samples


def test_http_generate_stream_equals_grpc(triton, voices):
    """Triton's HTTP generate_stream (server-sent events) carries the same stream; its JSON takes flat arrays,
    which fill the last dimension, so one speaker's VOICE_AUDIO fits it."""
    body = {"TEXT": "Speaker 0: Hello over plain HTTP.", "VOICE_AUDIO": voices["high"].tolist(),
            "VOICE_LENGTHS": [len(voices["high"])], "SEED": 4, "EXACT_FRAMES": 3, "RAW": True}
    response = requests.post(f"{triton.http_url}/v2/models/{ENSEMBLE}/generate_stream", json=body, stream=True,
                             timeout=120)
    events = [json.loads(line.removeprefix(b"data: ")) for line in response.iter_lines() if line]
    assert response.status_code == 200 and all("error" not in e for e in events)
    audio = np.concatenate([np.asarray(e["AUDIO"], dtype=np.float32) for e in events])
    assert [e["FINISH_REASON"] for e in events][-1] == "exact_frames" and events[0]["USED_SEED"] == 4

    grpc = stream(triton.grpc_url, request_tensors(body["TEXT"], audio=[voices["high"]], SEED=4, EXACT_FRAMES=3,
                                                   RAW=True))
    np.testing.assert_allclose(audio, grpc.audio, **SAME_RUNTIME)


def test_cached_latents_from_acoustic_encoder_give_the_same_audio(triton, voices):
    """A client that caches voices asks acoustic_encoder once and sends latents afterwards: same audio."""
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    clips = [voices["low"], voices["high"]]
    lengths = np.array([len(c) for c in clips], dtype=np.int32)
    padded = np.zeros((2, lengths.max()), dtype=np.float32)
    for i, c in enumerate(clips):
        padded[i, :len(c)] = c
    encoded = client.infer("acoustic_encoder", [tensor("VOICE_AUDIO", padded), tensor("VOICE_LENGTHS", lengths)])
    latents, frames = encoded.as_numpy("VOICE_LATENTS"), encoded.as_numpy("VOICE_FRAMES")
    assert latents.shape == (2, frames.max(), 64) and frames.tolist() == [-(-n // 3200) for n in lengths]

    cached = stream(triton.grpc_url, request_tensors(TWO_SPEAKERS, latents=[latents[i, :n] for i, n in
                                                                            enumerate(frames)],
                                                     SEED=8, EXACT_FRAMES=4, RAW=True))
    recorded = stream(triton.grpc_url, request_tensors(TWO_SPEAKERS, audio=clips, SEED=8, EXACT_FRAMES=4, RAW=True))
    np.testing.assert_allclose(cached.audio, recorded.audio, **SAME_RUNTIME)


def test_a_request_without_seed_reports_the_seed_that_reproduces_it(triton, voices):
    first = stream(triton.grpc_url, request_tensors("Speaker 0: Again.", audio=[voices["low"]], EXACT_FRAMES=2,
                                                    RAW=True))
    again = stream(triton.grpc_url, request_tensors("Speaker 0: Again.", audio=[voices["low"]], EXACT_FRAMES=2,
                                                    RAW=True, SEED=first.seed))
    np.testing.assert_allclose(again.audio, first.audio, **SAME_RUNTIME)


SCRIPTS = [
    ("Speaker 0: The first stream speaks.", ["low"]),
    ("Speaker 0: A second, different line.", ["high"]),
    (TWO_SPEAKERS, ["low", "high"]),
    (TWO_SPEAKERS, ["high", "low"]),
    ("Speaker 3: Speakers may have any id.", ["high"]),
    ("Speaker 0: Five.\nSpeaker 1: Six.\nSpeaker 0: Seven.", ["low", "high"]),
    ("Speaker 0: Seventh stream here, with a longer line of text than most.", ["low"]),
    ("Speaker 2: Eight.", ["high"]),
]


def concurrent_streams(triton, voices, frames: list[int], raw: list[bool]) -> dict[int, object]:
    """SCRIPTS[i] with seed 100 + i for frames[i] frames, every stream started at once; results by index."""
    results = {}

    def run(i):
        script, names = SCRIPTS[i]
        results[i] = stream(triton.grpc_url, request_tensors(script, audio=[voices[n] for n in names], SEED=100 + i,
                                                             EXACT_FRAMES=frames[i], RAW=raw[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(results) == list(range(len(frames)))
    return results


def script_raw(synth, voices, i: int, frames: int) -> np.ndarray:
    """What `djz synth --raw` gives for SCRIPTS[i] with seed 100 + i."""
    script, names = SCRIPTS[i]
    speakers = sorted({int(m) for m in re.findall(r"Speaker (\d+)", script)})
    return expected_raw(synth, script, {s: voices[n] for s, n in zip(speakers, names)}, 100 + i, frames)


def test_eight_concurrent_streams_share_steps_and_each_is_correct(triton, synth, voices):
    before = metric_values(triton, "vibevoice_batch_size")
    frames = [20, 22, 24, 26, 20, 22, 24, 26]  # long enough to outlast the spread of the requests' arrivals
    results = concurrent_streams(triton, voices, frames, raw=[True] * 8)
    for i in range(8):
        np.testing.assert_allclose(results[i].audio, script_raw(synth, voices, i, frames[i]), **BATCHED)

    after = metric_values(triton, "vibevoice_batch_size")

    def change(pattern):
        key = next(k for k in after if re.fullmatch(f"vibevoice_batch_size{pattern}", k))
        return after[key] - before.get(key, 0)

    # streams were advanced together: the frames took fewer steps than frames, and some steps advanced three or more
    # streams at once (how many steps depends on how the requests' arrivals spread, on a loaded machine too)
    assert change(r"_sum\{.*") >= sum(frames) and change(r"_count\{.*") < change(r"_sum\{.*")
    assert change(r"_count\{.*") - change(r'_bucket\{.*le="2(\.0)?".*') >= 1


def test_concurrent_postprocessed_streams_each_get_their_own_frames_in_order(triton, synth, voices):
    """Raw and postprocessed streams side by side: a postprocessed stream's audio is its own raw frames through one
    StreamPostprocessor, in order, so chunks handed to another stream's state, or taken out of order, would show."""
    frames, raw = [4, 5, 6, 7, 4, 5, 6, 7], [i % 2 == 0 for i in range(8)]
    results = concurrent_streams(triton, voices, frames, raw)
    for i in range(8):
        expected = script_raw(synth, voices, i, frames[i])
        if raw[i]:
            np.testing.assert_allclose(results[i].audio, expected, **BATCHED)
        else:
            np.testing.assert_allclose(results[i].audio, postprocess(expected), **FINISHED)


def test_cancelling_a_stream_frees_its_slot_and_leaves_the_others_unchanged(triton, synth, voices):
    """A 3000-frame stream (minutes of work) is cancelled by its client after 3 frames: the generator stops it at
    once, while the streams sharing its steps (one raw, one postprocessed) finish exactly as they would have alone,
    and the ensemble request ends without an error (Triton 2.51 would count a failed one in flight for good and wait
    for it at shutdown)."""
    frames_before = sum(metric_values(triton, "vibevoice_frames_total").values())
    failures_before = ensemble_failures(triton)
    cancelled = Stream(triton.grpc_url, request_tensors("Speaker 0: I will be cut off.", audio=[voices["low"]],
                                                        SEED=7, EXACT_FRAMES=3000))
    others, short = {}, 12

    def run(i, name):
        others[i] = stream(triton.grpc_url, request_tensors(f"Speaker 0: Listener {i}.", audio=[voices[name]],
                                                            SEED=30 + i, EXACT_FRAMES=short, RAW=i == 0))

    threads = [threading.Thread(target=run, args=(i, name)) for i, name in enumerate(["high", "low"])]
    for t in threads:
        t.start()
    for _ in range(3):
        cancelled.next_chunk()
    cancelled.cancel()
    for t in threads:
        t.join(timeout=120)
    expected = [expected_raw(synth, f"Speaker 0: Listener {i}.", {0: voices[name]}, 30 + i, short)
                for i, name in enumerate(["high", "low"])]
    np.testing.assert_allclose(others[0].audio, expected[0], **BATCHED)
    np.testing.assert_allclose(others[1].audio, postprocess(expected[1]), **FINISHED)

    deadline = time.monotonic() + 10
    while max(metric_values(triton, "vibevoice_active_streams").values()) > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert max(metric_values(triton, "vibevoice_active_streams").values()) == 0, "the cancelled stream holds its slot"
    generated = sum(metric_values(triton, "vibevoice_frames_total").values()) - frames_before
    assert generated < 500, f"{generated} frames generated: the cancelled stream went on"
    assert ensemble_failures(triton) == failures_before


def ensemble_failures(triton) -> float:
    return sum(v for k, v in metric_values(triton, "nv_inference_request_failure").items() if 'model="vibevoice"' in k)


def bad_requests(voices):
    good_voice = [voices["low"]]
    nan_voice = voices["low"].copy()
    nan_voice[100] = np.nan
    five = "\n".join(f"Speaker {i}: Line {i}." for i in range(5))
    return {
        "wrong dtype": ([tensor("TEXT", np.array([1], dtype=np.int32)), *request_tensors("x", audio=good_voice)[1:]],
                        "TEXT"),
        "wrong shape": ([*request_tensors("Speaker 0: Hi.")[:1], tensor("VOICE_AUDIO", voices["low"]),
                         tensor("VOICE_LENGTHS", np.array([len(voices["low"])], dtype=np.int32))], "VOICE_AUDIO"),
        "five speakers": (request_tensors(five, audio=[voices["low"]] * 5), "at most 4"),
        "empty text": (request_tensors("", audio=good_voice), "empty"),
        "latents of the wrong width": (request_tensors("Speaker 0: Hi.", latents=[np.zeros((3, 32), np.float32)]),
                                       "width 32"),
        "NaN audio": (request_tensors("Speaker 0: Hi.", audio=[nan_voice]), "NaN"),
        "one voice for two speakers": (request_tensors(TWO_SPEAKERS, audio=good_voice), "2 speaker(s)"),
        "bad option": (request_tensors("Speaker 0: Hi.", audio=good_voice, DIFFUSION_STEPS=0), "DIFFUSION_STEPS"),
    }


@pytest.mark.parametrize("case", ["wrong dtype", "wrong shape", "five speakers", "empty text",
                                  "latents of the wrong width", "NaN audio", "one voice for two speakers",
                                  "bad option"])
def test_bad_requests_are_refused_by_name_and_the_server_carries_on(triton, voices, case):
    inputs, named = bad_requests(voices)[case]
    message = error_of(triton.grpc_url, inputs)
    assert named in message, message
    assert requests.get(f"{triton.http_url}/v2/health/ready", timeout=5).status_code == 200
    good = stream(triton.grpc_url, request_tensors("Speaker 0: Still here.", audio=[voices["high"]], EXACT_FRAMES=2,
                                                   SEED=1))
    assert len(good.audio) == 6400


def test_generator_metrics_are_exported(triton):
    names = {"vibevoice_active_streams", "vibevoice_queued_requests", "vibevoice_frames_total",
             "vibevoice_batch_size_count", "vibevoice_step_seconds_count", "vibevoice_first_audio_seconds_count"}
    text = urllib.request.urlopen(triton.metrics_url).read().decode()
    found = {line.split("{")[0] for line in text.splitlines() if line.startswith("vibevoice_")}
    assert names <= found
    first = metric_values(triton, "vibevoice_first_audio_seconds_count")
    assert max(first.values()) >= 1
    phases = metric_values(triton, "vibevoice_loop_phase_seconds_count")
    for phase in ("reap", "admit", "emit"):
        assert max(v for k, v in phases.items() if f'phase="{phase}"' in k) >= 1
