"""/api/v2/voices: cloning from one or several samples, search and sort, edits, delete, preview, export/import."""
import io
import zipfile
from pathlib import Path

import numpy as np
import soundfile
from fastapi.testclient import TestClient

from conftest import create_voice, wav_bytes
from orchestrator.main import create_app
from tests.conftest import synthetic_voice


def test_a_voice_from_several_samples_is_one_cleaned_prompt_at_24_khz(client):
    stereo_44k = np.stack([synthetic_voice(44100 / 24000, 150.0, 4)] * 2, axis=1)  # 44100 samples: 1 s at 44.1 kHz
    stereo_44k = np.concatenate([np.zeros((22050, 2), np.float32), stereo_44k])  # half a second of silence to trim
    files = [("samples", ("a.wav", wav_bytes(synthetic_voice(1.0, 140.0, 5)), "audio/wav")),
             ("samples", ("b.flac", wav_bytes(stereo_44k, 44100, file_format="FLAC"), "audio/flac"))]
    response = client.post("/api/v2/voices", data={"name": "Carol", "description": "calm", "tags": "Warm, warm,x"},
                           files=files)
    assert response.status_code == 201, response.text
    voice = response.json()
    assert voice["source_count"] == 2 and voice["tags"] == ["warm", "x"]
    prompt, rate = soundfile.read(io.BytesIO(client.get(voice["audio_url"]).content))
    assert rate == 24000 and prompt.ndim == 1
    # 1.0 s + 0.25 s gap + 1.0 s: the leading silence is trimmed and the 44.1 kHz stereo sample made 24 kHz mono
    assert abs(prompt.size / 24000 - 2.25) < 0.03 and abs(voice["duration_s"] - prompt.size / 24000) < 1e-6


def test_bad_uploads_are_refused_by_name_and_leave_nothing(client, settings):
    silent = ("samples", ("quiet.wav", wav_bytes(np.zeros(24000, np.float32)), "audio/wav"))
    response = client.post("/api/v2/voices", data={"name": "Q"}, files=[silent])
    assert response.status_code == 422 and "quiet.wav" in response.json()["detail"]
    garbage = ("samples", ("notes.txt", b"not audio at all", "text/plain"))
    response = client.post("/api/v2/voices", data={"name": "Q"}, files=[garbage])
    assert response.status_code == 422 and "notes.txt" in response.json()["detail"]
    short = ("samples", ("short.wav", wav_bytes(synthetic_voice(0.2, 100.0, 1)), "audio/wav"))
    response = client.post("/api/v2/voices", data={"name": "Q"}, files=[short])
    assert response.status_code == 422 and "at least 0.5 s" in response.json()["detail"]
    long = ("samples", ("long.flac", wav_bytes(synthetic_voice(61.0, 100.0, 1), 8000, file_format="FLAC"), "x"))
    response = client.post("/api/v2/voices", data={"name": "Q"}, files=[long])
    assert response.status_code == 422 and "long.flac" in response.json()["detail"]
    assert "at most 60 s" in response.json()["detail"]
    big = ("samples", ("big.wav", b"\0" * (settings.max_upload_bytes + 1), "audio/wav"))
    response = client.post("/api/v2/voices", data={"name": "Q"}, files=[big])
    assert response.status_code == 413 and "big.wav" in response.json()["detail"]
    assert client.get("/api/v2/voices").json()["total"] == 0
    assert not any(p.is_file() for p in settings.audio_dir.rglob("*"))


def test_names_are_unique(client, alice):
    sample = ("samples", ("a.wav", wav_bytes(synthetic_voice(1.0, 130.0, 9)), "audio/wav"))
    response = client.post("/api/v2/voices", data={"name": "Alice"}, files=[sample])
    assert response.status_code == 409 and "Alice" in response.json()["detail"]
    bob = create_voice(client, "Bob")
    response = client.patch(f"/api/v2/voices/{bob['id']}", json={"name": "Alice"})
    assert response.status_code == 409


def test_list_searches_filters_and_sorts(client, alice, bob):
    create_voice(client, "Dora the narrator", tags="female")
    names = lambda response: [v["name"] for v in response.json()["items"]]
    assert names(client.get("/api/v2/voices", params={"sort": "-name"})) == ["Dora the narrator", "Bob", "Alice"]
    assert names(client.get("/api/v2/voices", params={"q": "NARR"})) == ["Dora the narrator"]
    assert names(client.get("/api/v2/voices", params={"tag": "female"})) == ["Alice", "Dora the narrator"]
    assert names(client.get("/api/v2/voices", params=[("tag", "female"), ("tag", "narrator")])) == ["Alice"]
    page = client.get("/api/v2/voices", params={"limit": 1, "offset": 1}).json()
    assert page["total"] == 3 and [v["name"] for v in page["items"]] == ["Bob"]
    response = client.get("/api/v2/voices", params={"sort": "pitch"})
    assert response.status_code == 422 and "pitch" in response.json()["detail"]


def test_edit_get_by_name_and_delete(client, alice, settings):
    response = client.patch(f"/api/v2/voices/{alice['id']}", json={"description": "bright", "tags": ["A", "b"]})
    assert response.status_code == 200 and response.json()["tags"] == ["a", "b"]
    assert client.get("/api/v2/voices/alice").json()["description"] == "bright"
    assert client.delete(f"/api/v2/voices/{alice['id']}").status_code == 204
    assert client.get(f"/api/v2/voices/{alice['id']}").status_code == 404
    assert not any(p.is_file() for p in settings.audio_dir.rglob("*"))


def test_any_voice_name_gives_a_safe_download_name(client):
    voice = create_voice(client, 'Ana "la voz" 語')
    for url, suffix in ((voice["audio_url"], ".wav"), (f"/api/v2/voices/{voice['id']}/export", ".voice.zip")):
        response = client.get(url)
        assert response.status_code == 200
        assert f"filename*=UTF-8''Ana%20la%20voz%20%E8%AA%9E{suffix}" in response.headers["content-disposition"]


def test_latents_are_computed_once_and_usage_is_counted(client, alice):
    for seed in (1, 2):
        response = client.post("/api/v2/generate", json={"script": "Speaker 0: Hello there, how are you?",
                                                         "voices": {"0": "Alice"}, "seed": seed})
        assert response.status_code == 201, response.text
    voice = client.get(f"/api/v2/voices/{alice['id']}").json()
    assert voice["generations"] == 2 and voice["audio_seconds"] > 0 and voice["last_used_at"]
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/api/v2/voices/{alice['id']}/export").content))
    assert len([n for n in archive.namelist() if n.startswith("latents/")]) == 1


def test_preview_speaks_in_the_voice(client, alice):
    response = client.get(f"/api/v2/voices/{alice['id']}/preview", params={"text": "Short preview."})
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 24000 and audio.size >= 3200
    assert client.get("/api/v2/voices").json()["items"][0]["generations"] == 0  # previews are not usage


def test_export_then_import_gives_the_same_voice_and_audio(client, alice):
    request = {"script": "Speaker 0: The same words again.", "voices": {"0": "Alice"}, "seed": 7, "format": "pcm"}
    first = client.post("/api/v2/generate", json=request).json()
    exported = client.get(f"/api/v2/voices/{alice['id']}/export")
    assert exported.headers["content-type"] == "application/zip"
    response = client.post("/api/v2/voices/import", data={"name": "Alice copy"},
                           files=[("archive", ("alice.zip", exported.content, "application/zip"))])
    assert response.status_code == 201, response.text
    copy = response.json()
    assert copy["name"] == "Alice copy" and copy["tags"] == alice["tags"]
    assert client.get(copy["audio_url"]).content == client.get(alice["audio_url"]).content
    second = client.post("/api/v2/generate", json={**request, "voices": {"0": copy["id"]}}).json()
    assert client.get(second["download_url"]).content == client.get(first["download_url"]).content
    response = client.post("/api/v2/voices/import", files=[("archive", ("alice.zip", exported.content, "x"))])
    assert response.status_code == 409  # the original name is taken
    response = client.post("/api/v2/voices/import", files=[("archive", ("x.zip", b"PK nonsense", "x"))])
    assert response.status_code == 422 and "x.zip" in response.json()["detail"]


def test_starter_voices_are_added_once(settings):
    folder = Path(__file__).resolve().parents[2] / "examples" / "voices"
    settings = settings.model_copy(update={"starter_voices_dir": folder})
    for _ in range(2):  # a restart finds them there and adds nothing
        with TestClient(create_app(settings)) as client:
            voices = client.get("/api/v2/voices").json()
    assert [v["name"] for v in voices["items"]] == ["Alice", "Bob"] and voices["total"] == 2
