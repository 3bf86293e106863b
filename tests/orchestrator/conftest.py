"""Orchestrator fixtures: the app on a real database (SQLite file, and the PostgreSQL server of this machine) in
front of the real Triton of tests/conftest.py, and voices created through the API."""
from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from orchestrator.core.config import Settings
from orchestrator.main import create_app
from tests.conftest import synthetic_voice

POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
# The tiny random-weight checkpoint never ends a turn by itself: 0.1 frames per character keeps clips short.
FRAMES_PER_CHAR = 0.1


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped at its end."""
    name = f"djz_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each test runs on both databases; PostgreSQL's tables are emptied before each test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'djz.db'}"
    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    with engine.begin() as connection:
        tables = connection.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")).all()
        if tables:  # a session some earlier test left open would hold a lock: fail loudly, not hang
            connection.execute(text("SET LOCAL lock_timeout = '30s'"))
            connection.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for (t,) in tables) + " CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def settings(tmp_path, database_url, triton):
    return Settings(data_dir=tmp_path / "data", database_url=database_url, triton_grpc_url=triton.grpc_url,
                    exact_frames_per_char=FRAMES_PER_CHAR, _env_file=None)


@pytest.fixture
def client(settings):
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def wav_bytes(samples: np.ndarray, rate: int = 24000, subtype: str = "PCM_16", file_format: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, subtype=subtype, format=file_format)
    return buffer.getvalue()


def create_voice(client: TestClient, name: str, seconds: float = 1.5, pitch: float = 120.0, seed: int = 1,
                 tags: str = "") -> dict:
    sample = wav_bytes(synthetic_voice(seconds, pitch, seed))
    response = client.post("/api/v2/voices", data={"name": name, "tags": tags},
                           files=[("samples", (f"{name}.wav", sample, "audio/wav"))])
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def alice(client):
    return create_voice(client, "Alice", pitch=220.0, seed=2, tags="female,narrator")


@pytest.fixture
def bob(client):
    return create_voice(client, "Bob", pitch=110.0, seed=3, tags="male")
