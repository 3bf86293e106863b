"""/healthz, /readyz, /metrics and the OpenAPI document."""
import pytest
from prometheus_client.parser import text_string_to_metric_families


def samples(client, name):
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return families[name].samples if name in families else []


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "triton": True}


def test_metrics_count_requests_by_route_template_and_audio_made(client, alice):
    before = sum(s.value for s in samples(client, "djz_audio_seconds") if s.labels.get("source") == "api")
    clip = client.post("/api/v2/generate", json={"script": "Speaker 0: Count me.", "voices": {"0": "Alice"}}).json()
    client.get(f"/api/v2/voices/{alice['id']}")
    requests = {(s.labels["route"], s.labels["status"]) for s in samples(client, "djz_http_requests")}
    assert ("/api/v2/generate", "201") in requests and ("/api/v2/voices/{voice_id}", "200") in requests
    assert not any(alice["id"] in route for route, _ in requests)
    after = sum(s.value for s in samples(client, "djz_audio_seconds") if s.labels.get("source") == "api")
    assert after - before == pytest.approx(clip["duration_s"])
    assert samples(client, "djz_http_request_seconds") and samples(client, "djz_active_streams")


def test_openapi_documents_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/v2/voices", "/api/v2/generate", "/v1/audio/speech", "/v1/audio/voices", "/readyz"):
        assert path in paths
    assert client.get("/docs").status_code == 200
