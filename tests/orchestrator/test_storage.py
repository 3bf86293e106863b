"""Audio files and their rows live and die together; what a crash leaves between the two is swept at start."""
import os
import time

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from orchestrator.main import SWEEP_GRACE_S, create_app
from orchestrator.models.voice import Voice
from orchestrator.services.storage import AudioStore


def test_a_failed_commit_takes_its_file_back(tmp_path):
    store = AudioStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.written(b"clip bytes", is_referenced=lambda sha: False) as sha256:
            raise RuntimeError("the commit failed")
    assert not store.path(sha256).exists()
    with pytest.raises(RuntimeError):
        with store.written(b"shared bytes", is_referenced=lambda sha: True) as sha256:
            raise RuntimeError("the commit failed, but another row names the same bytes")
    assert store.read(sha256) == b"shared bytes"


def test_files_left_by_a_crash_are_swept_at_start_and_named_files_stay(settings, client, alice):
    store = client.app.state.services.store
    orphan = store.write(b"written, then the process died before its row was committed")
    fresh = store.write(b"a request that is about to commit")
    old = time.time() - SWEEP_GRACE_S - 60
    for sha256 in (orphan, alice_file := _voice_file(client, alice["id"])):
        os.utime(store.path(sha256), (old, old))
    with TestClient(create_app(settings)) as restarted:
        assert restarted.get(alice["audio_url"]).status_code == 200
    assert not store.path(orphan).exists()
    assert store.path(fresh).exists() and store.path(alice_file).exists()


def _voice_file(client, voice_id: str) -> str:
    with Session(client.app.state.services.engine) as session:
        return session.get(Voice, voice_id).audio_sha256
