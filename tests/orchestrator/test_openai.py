"""OpenAI compatibility: the `openai` package, pointed at the orchestrator, works unchanged."""
import io
import threading
import time

import openai
import pytest
import soundfile
import uvicorn

from conftest import FRAMES_PER_CHAR
from djz.triton_server import free_port
from orchestrator.main import create_app


@pytest.fixture
def openai_client(settings, alice):
    """The app served over real HTTP by uvicorn (the openai package speaks HTTP, not ASGI)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused-locally", max_retries=0)
    server.should_exit = True
    thread.join(10)


def test_speech_create_returns_audio_in_the_asked_format(openai_client):
    text = "Hello from an OpenAI client."
    response = openai_client.audio.speech.create(model="tts-1", voice="Alice", input=text, response_format="wav")
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 24000 and audio.size == round(len(text) * FRAMES_PER_CHAR) * 3200
    flac = openai_client.audio.speech.create(model="vibevoice", voice="alice", input=text, response_format="flac")
    assert flac.content[:4] == b"fLaC"
    pcm = openai_client.audio.speech.create(model="tts-1", voice="Alice", input=text, response_format="pcm")
    assert len(pcm.content) == audio.size * 2


def test_speed_changes_the_length_not_the_rate(openai_client):
    text = "Faster, please."
    normal = openai_client.audio.speech.create(model="tts-1", voice="Alice", input=text, response_format="pcm")
    fast = openai_client.audio.speech.create(model="tts-1", voice="Alice", input=text, response_format="pcm",
                                             speed=2.0)
    assert len(fast.content) // 2 == pytest.approx(len(normal.content) // 4, abs=1)


def test_streaming_response_works(openai_client):
    with openai_client.audio.speech.with_streaming_response.create(model="tts-1", voice="Alice", input="Streamed.",
                                                                   response_format="mp3") as response:
        data = b"".join(response.iter_bytes())
    assert len(data) > 100


def test_errors_are_openai_errors_naming_the_problem(openai_client):
    with pytest.raises(openai.BadRequestError, match="Nobody"):
        openai_client.audio.speech.create(model="tts-1", voice="Nobody", input="Hi.")
    with pytest.raises(openai.BadRequestError, match="aac"):
        openai_client.audio.speech.create(model="tts-1", voice="Alice", input="Hi.", response_format="aac")
    with pytest.raises(openai.NotFoundError, match="whisper-1"):
        openai_client.audio.speech.create(model="whisper-1", voice="Alice", input="Hi.")
    with pytest.raises(openai.BadRequestError, match="speed"):
        openai_client.audio.speech.create(model="tts-1", voice="Alice", input="Hi.", speed=9.0)


def test_voices_and_models_are_listed(openai_client):
    voices = openai_client.get("/audio/voices", cast_to=object)
    assert [v["name"] for v in voices["voices"]] == ["Alice"]
    assert "tts-1" in [m.id for m in openai_client.models.list()]
