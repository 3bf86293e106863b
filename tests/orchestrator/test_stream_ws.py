"""/ws/v2/stream: JSON events around binary PCM16 chunks; cancel stops the generation and stores nothing."""
import json

import numpy as np

REQUEST = {"script": "Speaker 0: Streaming over a socket, one chunk at a time.", "voices": {"0": "Alice"}, "seed": 4}


def receive_all(websocket):
    """(events, pcm bytes) until the server closes the socket."""
    events, audio = [], []
    while True:
        message = websocket.receive()
        if message["type"] == "websocket.close":
            return events, b"".join(audio)
        if message.get("bytes") is not None:
            audio.append(message["bytes"])
        else:
            events.append(json.loads(message["text"]))


def test_a_stream_sends_events_and_the_clips_audio(client, alice):
    with client.websocket_connect("/ws/v2/stream") as websocket:
        websocket.send_json(REQUEST)
        events, pcm = receive_all(websocket)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "started" and kinds[-1] == "done" and "progress" in kinds
    started, done = events[0], events[-1]
    assert started["sample_rate"] == 24000 and started["encoding"] == "pcm_s16le" and started["seed"] == 4
    assert done["clip"]["id"] == started["clip_id"] and done["clip"]["source"] == "websocket"
    progress = [e for e in events if e["event"] == "progress"]
    assert all(p["frames"] >= 0 and p["rtf"] >= 0 for p in progress)
    stored = client.get(f"/api/v2/gallery/{done['clip']['id']}/download", params={"format": "pcm"}).content
    assert np.array_equal(np.frombuffer(pcm, "<i2"), np.frombuffer(stored, "<i2")) and len(pcm) >= 3200 * 2


def test_cancel_stops_the_stream_and_stores_nothing(client, alice):
    with client.websocket_connect("/ws/v2/stream") as websocket:
        websocket.send_json({**REQUEST, "script": "Speaker 0: " + "A long line to speak. " * 20})
        assert websocket.receive_json()["event"] == "started"
        assert websocket.receive_bytes()
        websocket.send_json({"action": "cancel"})
        events, _ = receive_all(websocket)
    assert events[-1]["event"] == "cancelled"
    assert client.get(f"/api/v2/voices/{alice['id']}").json()["generations"] == 0


def test_a_bad_request_gets_an_error_event_naming_it(client, alice):
    with client.websocket_connect("/ws/v2/stream") as websocket:
        websocket.send_json({**REQUEST, "voices": {"0": "Nobody"}})
        event = websocket.receive_json()
    assert event["event"] == "error" and event["status"] == 422 and "Nobody" in event["detail"]
    with client.websocket_connect("/ws/v2/stream") as websocket:
        websocket.send_json({"voices": {"0": "Alice"}})
        event = websocket.receive_json()
    assert event["status"] == 422 and "script" in event["detail"]
