"""/api/v2/batch: jobs run into the gallery with bounded concurrency, are refused whole for one bad item, can be
cancelled, resume after a restart or a Triton outage; and the claims that keep several runners apart."""
import socket
import time
import urllib.request
from contextlib import contextmanager
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select, update

from conftest import create_voice
from orchestrator.core.db import make_engine, migrate
from orchestrator.main import create_app
from orchestrator.models.clip import Clip
from orchestrator.models.common import utcnow
from orchestrator.models.job import FINISHED_STATES, BatchItem, BatchJob
from orchestrator.services import job_queue


def sentences(count: int, words: str = "the quick brown fox jumps over the lazy dog") -> str:
    return " ".join(f"Sentence {n}: {words}." for n in range(count))


@contextmanager
def app_client(settings, **changes):
    """The app on the test's database and data directory, with some settings changed; leaving it shuts it down."""
    with TestClient(create_app(settings.model_copy(update=changes))) as client:
        yield client


@contextmanager
def database(settings):
    engine = make_engine(settings.resolved_database_url)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def batch_clips(settings) -> list[Clip]:
    with database(settings) as session:
        return list(session.exec(select(Clip).where(Clip.source == "batch")).all())


def eventually(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_for(client, job_id: str, done, timeout_s: float = 30.0) -> dict:
    """The job as soon as `done(job)` holds."""
    seen = {}

    def holds() -> bool:
        seen["job"] = client.get(f"/api/v2/batch/{job_id}").json()
        return done(seen["job"])

    assert eventually(holds, timeout_s), f"batch job still {seen['job']['status']}: {seen['job']['items']}"
    return seen["job"]


def submit(client, items: list[dict], name: str = "") -> dict:
    response = client.post("/api/v2/batch", json={"name": name, "items": items})
    assert response.status_code == 202, response.text
    return response.json()


def max_overlap(clips: list[Clip]) -> int:
    """How many clips were streaming from Triton at once, at most (each from its stored end and generation time)."""
    events = sorted([(c.created_at - timedelta(seconds=c.generation_s), 1) for c in clips]
                    + [(c.created_at, -1) for c in clips])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def test_a_job_runs_its_items_into_the_gallery_at_most_batch_concurrency_at_once(client, settings, alice, bob):
    items = [{"script": f"Speaker 0: {sentences(12)}\nSpeaker 1: {sentences(4)}", "voices": {0: "Alice", 1: "Bob"},
              "seed": 7, "tags": ["Batch"]},
             {"script": sentences(16), "voices": {0: alice["id"]}, "format": "flac", "title": "second"},
             {"script": sentences(16), "voices": {0: "bob"}},
             {"script": sentences(16), "voices": {0: "Alice"}, "folder": "run"}]
    job = submit(client, items, name="nightly")
    assert job["name"] == "nightly" and job["total"] == 4 and len(job["items"]) == 4
    job = wait_for(client, job["id"], lambda j: j["status"] in FINISHED_STATES)
    assert (job["status"], job["completed"], job["failed"], job["progress"]) == ("done", 4, 0, 1.0)
    assert [i["status"] for i in job["items"]] == ["done"] * 4 and all(i["error"] == "" for i in job["items"])
    clips = {c.id: c for c in batch_clips(settings)}
    assert sorted(clips) == sorted(i["clip_id"] for i in job["items"])
    first, second = (clips[job["items"][n]["clip_id"]] for n in (0, 1))
    assert first.voice_names == "Alice, Bob" and first.seed == 7 and first.tags == "|batch|"
    assert second.format == "flac" and second.title == "second"
    assert job["items"][1]["download_url"] == f"/api/v2/gallery/{second.id}/download"
    assert max_overlap(list(clips.values())) == settings.batch_concurrency == 2

    assert client.post(f"/api/v2/batch/{job['id']}/cancel").status_code == 409
    listed = client.get("/api/v2/batch", params={"status": "done"}).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == job["id"]
    assert client.get("/api/v2/batch", params={"status": "queued"}).json()["total"] == 0
    response = client.get("/api/v2/batch", params={"status": "finished"})
    assert response.status_code == 422 and "cancelled" in response.json()["detail"]
    assert client.delete(f"/api/v2/batch/{job['id']}").status_code == 204
    assert client.get(f"/api/v2/batch/{job['id']}").status_code == 404
    assert len(batch_clips(settings)) == 4  # the clips stay in the gallery


def test_jobs_are_listed_newest_first_a_page_at_a_time(client, alice):
    ids = [submit(client, [{"script": "Hi.", "voices": {0: "Alice"}}], name=f"job {n}")["id"] for n in range(3)]
    page = client.get("/api/v2/batch", params={"limit": 2}).json()
    assert page["total"] == 3 and [j["id"] for j in page["items"]] == ids[::-1][:2]
    assert [j["id"] for j in client.get("/api/v2/batch", params={"offset": 2}).json()["items"]] == ids[:1]


def test_one_bad_item_refuses_the_whole_job_naming_it(settings, alice):
    good = {"script": "Hello there.", "voices": {0: "Alice"}}
    with app_client(settings, max_batch_items=3) as client:
        refusals = {
            1: ({"script": "Hello.", "voices": {0: "Nobody"}}, "'Nobody'"),
            2: ({"script": "Speaker 0: Hi.\nSpeaker 1: Hey.", "voices": {0: "Alice"}}, "speaker 1"),
            0: ({"script": "Hello.", "voices": {0: "Alice"}, "format": "aiff"}, "aiff"),
        }
        for index, (bad, named) in refusals.items():
            items = [good] * 3
            items[index] = bad
            response = client.post("/api/v2/batch", json={"items": items})
            detail = response.json()["detail"]
            assert response.status_code == 422 and f"item {index}:" in detail and named in detail, detail
        response = client.post("/api/v2/batch", json={"items": [good, {**good, "diffusion_steps": 0}]})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][:3] == ["body", "items", 1]
        response = client.post("/api/v2/batch", json={"items": [{**good, "stream": True}]})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][:4] == ["body", "items", 0, "stream"]
        response = client.post("/api/v2/batch", json={"items": [good] * 4})
        assert response.status_code == 422 and "at most 3" in response.json()["detail"]
        assert client.get("/api/v2/batch").json()["total"] == 0


def test_cancel_stops_the_running_item_and_the_queued_ones_and_stores_none_of_them(settings, triton):
    # One frame per character: each item is one long Triton stream (a few seconds), not several short pieces.
    with app_client(settings, batch_concurrency=1, exact_frames_per_char=1.0) as client:
        create_voice(client, "Alice")
        streams = gauge(client, "djz_active_streams")  # generations this process streams now
        job = submit(client, [{"script": sentences(10), "voices": {0: "Alice"}}] * 3)
        assert eventually(lambda: gauge(client, "djz_active_streams") == streams + 1)  # item 0 streams
        assert client.delete(f"/api/v2/batch/{job['id']}").status_code == 409  # not finished
        response = client.post(f"/api/v2/batch/{job['id']}/cancel")
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "cancelled" and [i["status"] for i in job["items"]] == ["cancelled"] * 3
        assert gauge(client, "djz_active_streams") == streams  # stopped at once, not at its end
        assert eventually(lambda: triton_active_streams(triton) == 0, 1.0)  # closing the stream freed the slot
        time.sleep(0.5)  # what the runner did next, if anything
        job = client.get(f"/api/v2/batch/{job['id']}").json()
        assert [i["status"] for i in job["items"]] == ["cancelled"] * 3 and job["completed"] == 0
        assert batch_clips(settings) == []
        assert client.post(f"/api/v2/batch/{job['id']}/cancel").status_code == 200  # again: nothing changes
        assert client.delete(f"/api/v2/batch/{job['id']}").status_code == 204


def gauge(client, name: str) -> float:
    return next(float(line.split()[1]) for line in client.get("/metrics").text.splitlines()
                if line.startswith(name + " "))


def triton_active_streams(triton) -> float:
    text = urllib.request.urlopen(triton.metrics_url).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vibevoice_active_streams{"))


def test_jobs_resume_after_a_restart_and_every_item_runs_to_the_gallery_once(settings):
    with app_client(settings, batch_concurrency=1) as client:
        create_voice(client, "Alice")
        # Item 1 is the long one: it is still running when the app shuts down.
        job = submit(client, [{"script": sentences(n), "voices": {0: "Alice"}} for n in (10, 60, 10, 10)])
        wait_for(client, job["id"], lambda j: j["items"][1]["status"] == "running")
    with database(settings) as session:  # shut down: the running item went back to the queue, nothing half-stored
        items = session.exec(select(BatchItem).order_by(BatchItem.position)).all()
        assert [i.status for i in items] == ["done", "queued", "queued", "queued"]
        assert items[1].attempts == 1 and items[1].clip_id is None
        # As a process that died would leave it: item 3 'running', not refreshed for longer than a lease.
        session.exec(update(BatchItem).where(BatchItem.id == items[3].id).values(
            status="running", attempts=1, updated_at=utcnow() - timedelta(seconds=2 * job_queue.STALE_AFTER_S)))
        session.commit()
    with app_client(settings, batch_concurrency=1) as client:
        job = wait_for(client, job["id"], lambda j: j["status"] in FINISHED_STATES)
    assert (job["status"], job["completed"], job["failed"]) == ("done", 4, 0)
    assert [i["attempts"] for i in job["items"]] == [1, 2, 1, 2]
    assert sorted(c.id for c in batch_clips(settings)) == sorted(i["clip_id"] for i in job["items"])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_items_wait_while_triton_is_unreachable_and_run_once_it_is_back(settings):
    with app_client(settings, triton_grpc_url=f"127.0.0.1:{closed_port()}", retry_after_s=60) as client:
        create_voice(client, "Alice")
        bob = create_voice(client, "Bob")
        job = submit(client, [{"script": sentences(3), "voices": {0: "Alice"}}] * 2
                     + [{"script": sentences(3), "voices": {0: "Bob"}}])
        job = wait_for(client, job["id"], lambda j: all(i["status"] == "queued" for i in j["items"])
                       and j["items"][0]["attempts"] == 1)
        assert job["status"] == "running" and job["failed"] == 0 and "unreachable" in job["items"][0]["error"]
        assert eventually(lambda: gauge(client, "djz_batch_queue_depth") == 3)
        attempts = [i["attempts"] for i in job["items"]]
        time.sleep(0.3)  # backing off for retry_after_s: no attempts in a tight loop
        assert [i["attempts"] for i in client.get(f"/api/v2/batch/{job['id']}").json()["items"]] == attempts
        assert client.delete(f"/api/v2/voices/{bob['id']}").status_code == 204  # item 2 cannot run any more
    with app_client(settings) as client:
        job = wait_for(client, job["id"], lambda j: j["status"] in FINISHED_STATES)
    assert (job["status"], job["completed"], job["failed"]) == ("done", 2, 1)  # done: some items made clips
    assert [i["status"] for i in job["items"]] == ["done", "done", "failed"]
    assert [i["error"] for i in job["items"][:2]] == ["", ""] and bob["id"] in job["items"][2]["error"]
    assert len(batch_clips(settings)) == 2


def statuses(engine) -> dict[int, str]:
    with Session(engine) as session:
        return {item.id: item.status for item in session.exec(select(BatchItem)).all()}


def test_an_item_is_claimed_recorded_and_taken_back_by_one_runner_only(database_url):
    engine = make_engine(database_url)
    migrate(engine)
    try:
        with Session(engine, expire_on_commit=False) as session:
            older, newer = BatchJob(total=2, created_at=utcnow() - timedelta(minutes=1)), BatchJob(total=1)
            session.add_all([newer, older])
            session.flush()
            rows = [BatchItem(job_id=job.id, position=n, request="{}") for job, n in ((newer, 0), (older, 0),
                                                                                      (older, 1))]
            session.add_all(rows)
            session.commit()
        first, second = job_queue.claim_next(engine, 2)
        assert (first.job_id, first.position, second.job_id) == (older.id, 0, older.id)  # oldest job first
        assert job_queue.claim(engine, first.id) is None  # a second runner cannot take it
        with Session(engine) as session:
            job_queue.record_outcome(session, first, error="bad")
            session.commit()
        with Session(engine) as session, pytest.raises(job_queue.ItemNotRunning):
            job_queue.record_outcome(session, first, error="again")
        with Session(engine) as session:  # `second` is alive; the newer job's item was left by a dead runner
            assert job_queue.claim(engine, rows[0].id) is not None
            session.exec(update(BatchItem).where(BatchItem.id == rows[0].id).values(
                updated_at=utcnow() - timedelta(seconds=2 * job_queue.STALE_AFTER_S)))
            session.commit()
        job_queue.requeue_stale(engine)
        assert statuses(engine) == {rows[0].id: "queued", first.id: "failed", second.id: "running"}
        assert job_queue.keep_alive(engine, [second.id]) == set()
        job_queue.cancel(engine, older.id)
        assert job_queue.keep_alive(engine, [second.id]) == {second.id}  # cancelled: its runner must stop it
        job_queue.record_failure(engine, job_queue.claim(engine, rows[0].id), "bad")
        assert statuses(engine) == {rows[0].id: "failed", first.id: "failed", second.id: "cancelled"}
        with Session(engine) as session:
            jobs = {job.id: (job.status, job.completed, job.failed) for job in session.exec(select(BatchJob)).all()}
            assert jobs == {older.id: ("cancelled", 0, 1), newer.id: ("failed", 0, 1)}  # every item failed: failed
    finally:
        engine.dispose()
