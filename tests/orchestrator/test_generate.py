"""POST /api/v2/generate: clips in the gallery, long scripts in crossfaded pieces, streaming, and refusals."""
import io

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from conftest import FRAMES_PER_CHAR, create_voice
from djz.triton_server import free_port
from orchestrator.main import create_app

TWO_SPEAKERS = "Speaker 0: Hello Bob, how was the trip?\nSpeaker 1: Long, but the sea was calm."


def decode(response) -> np.ndarray:
    audio, rate = soundfile.read(io.BytesIO(response.content), dtype="int16")
    assert rate == 24000
    return audio


def frames_for(text: str) -> int:
    return max(1, round(len(text) * FRAMES_PER_CHAR))


def test_a_dialogue_becomes_a_clip_with_its_record(client, alice, bob):
    response = client.post("/api/v2/generate", json={"script": TWO_SPEAKERS, "voices": {"0": "Alice", "1": bob["id"]},
                                                     "seed": 11, "cfg_scale": 1.5, "diffusion_steps": 5,
                                                     "tags": ["Demo"], "folder": "tests"})
    assert response.status_code == 201, response.text
    clip = response.json()
    assert clip["voice_names"] == ["Alice", "Bob"] and clip["speakers"] == 2 and clip["seed"] == 11
    assert clip["cfg_scale"] == 1.5 and clip["diffusion_steps"] == 5 and clip["tags"] == ["demo"]
    assert clip["folder"] == "tests" and clip["source"] == "api" and clip["model_id"]
    audio = decode(client.get(clip["download_url"]))
    texts = [line.split(": ", 1)[1] for line in TWO_SPEAKERS.splitlines()]
    assert audio.size == frames_for("".join(texts)) * 3200  # one piece: exactly the forced frames
    assert clip["duration_s"] == pytest.approx(audio.size / 24000)
    assert clip["file_size"] == len(client.get(clip["download_url"]).content)


def test_the_same_seed_gives_the_same_audio(client, alice):
    request = {"script": "Speaker 0: Reproducible, please.", "voices": {"0": "Alice"}, "seed": 5}
    first, second = (client.post("/api/v2/generate", json=request).json() for _ in range(2))
    assert client.get(first["download_url"]).content == client.get(second["download_url"]).content
    third = client.post("/api/v2/generate", json={**request, "seed": 6}).json()
    assert client.get(third["download_url"]).content != client.get(first["download_url"]).content


def test_a_long_script_is_made_in_pieces_joined_by_a_crossfade(settings):
    settings = settings.model_copy(update={"chunk_chars": 60})
    sentences = ["The first sentence is here.", "A second one follows it.", "Then a third comes along.",
                 "And the fourth ends it."]
    with TestClient(create_app(settings)) as client:
        voice = create_voice(client, "V")
        script = "Speaker 0: " + " ".join(sentences)
        clip = client.post("/api/v2/generate", json={"script": script, "voices": {"0": voice["id"]}, "seed": 3,
                                                     "format": "pcm"}).json()
        audio = np.frombuffer(client.get(clip["download_url"]).content, dtype="<i2")
    pieces = [" ".join(sentences[:2]), " ".join(sentences[2:])]  # split between sentences, under 60 characters
    overlap = int(settings.crossfade_ms / 1000 * 24000)
    assert audio.size == sum(frames_for(p) for p in pieces) * 3200 - overlap
    assert clip["script"] == script


def test_streamed_audio_is_the_stored_clip(client, alice, bob):
    request = {"script": TWO_SPEAKERS, "voices": {"0": "Alice", "1": "Bob"}, "seed": 2, "stream": True}
    with client.stream("POST", "/api/v2/generate", json=request) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        clip_id = response.headers["x-clip-id"]
        chunks = [chunk for chunk in response.iter_bytes() if chunk]
    body = b"".join(chunks)
    assert body[:4] == b"RIFF" and len(chunks) > 1
    stored = client.get(f"/api/v2/gallery/{clip_id}/download")
    assert stored.status_code == 200
    assert np.array_equal(np.frombuffer(body[44:], dtype="<i2"), decode(stored))


@pytest.mark.parametrize("request_body, status, words", [
    ({"script": TWO_SPEAKERS, "voices": {"0": "Alice", "1": "Nobody"}}, 422, ["speaker 1", "Nobody"]),
    ({"script": TWO_SPEAKERS, "voices": {"0": "Alice"}}, 422, ["speaker 1", "no voice"]),
    ({"script": "Speaker 0: Hi.", "voices": {"0": "Alice", "3": "Alice"}}, 422, ["speaker 3"]),
    ({"script": "Speaker 0: Hi.", "voices": {"0": "Alice"}, "format": "aiff"}, 422, ["aiff", "wav"]),
    ({"script": "Speaker 0: Hi.", "voices": {"0": "Alice"}, "format": "mp3", "stream": True}, 422, ["mp3"]),
    ({"script": "Speaker 0:", "voices": {"0": "Alice"}}, 422, ["line 1"]),
    ({"script": "Speaker 0: Hi.", "voices": {"0": "Alice"}, "diffusion_steps": 0}, 422, ["diffusion_steps"]),
])
def test_bad_requests_are_refused_by_name_and_store_nothing(client, alice, request_body, status, words):
    response = client.post("/api/v2/generate", json=request_body)
    assert response.status_code == status, response.text
    for word in words:
        assert word in str(response.json()["detail"])
    assert client.get(f"/api/v2/voices/{alice['id']}").json()["generations"] == 0


def test_triton_away_is_a_503_with_retry_after_and_nothing_recorded(settings, alice):
    settings = settings.model_copy(update={"triton_grpc_url": f"127.0.0.1:{free_port()}"})
    with TestClient(create_app(settings)) as offline:
        response = offline.post("/api/v2/generate", json={"script": "Speaker 0: Hi.", "voices": {"0": "Alice"}})
        assert response.status_code == 503 and response.headers["retry-after"] == str(settings.retry_after_s)
        assert "unreachable" in response.json()["detail"]
        assert offline.get("/readyz").status_code == 503
        assert offline.get(f"/api/v2/voices/{alice['id']}").json()["generations"] == 0

