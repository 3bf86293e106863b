"""/api/v2/playlists: ordered lists of gallery clips; create, rename, add, remove, reorder, delete; export as M3U
or as a zip of the audio."""
import io
import json
import zipfile

from clip_rows import insert_clip


def titles(playlist: dict) -> list[str]:
    return [clip["title"] for clip in playlist["clips"]]


def new_playlist(client, clips: list[dict], name: str = "Morning show") -> dict:
    response = client.post("/api/v2/playlists", json={"name": name, "clip_ids": [c["id"] for c in clips]})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_playlist_holds_its_clips_in_order_repeats_included(client):
    a, b = insert_clip(client, title="A", duration_s=1.5), insert_clip(client, title="B", duration_s=2.0)
    response = client.post("/api/v2/playlists", json={"name": "  Morning   show ", "description": "daily",
                                                      "clip_ids": [b["id"], a["id"], b["id"]]})
    assert response.status_code == 201
    playlist = response.json()
    assert (playlist["name"], playlist["description"], playlist["clip_count"], playlist["duration_s"]) == (
        "Morning show", "daily", 3, 5.5)
    assert playlist["clips"] == [b, a, b]
    assert client.get(f"/api/v2/playlists/{playlist['id']}").json() == playlist


def test_a_playlist_naming_an_unknown_clip_or_without_a_name_is_not_made(client):
    clip = insert_clip(client)
    response = client.post("/api/v2/playlists", json={"name": "X", "clip_ids": [clip["id"], "ghost"]})
    assert response.status_code == 404 and "'ghost'" in response.json()["detail"]
    response = client.post("/api/v2/playlists", json={"name": "   "})
    assert response.status_code == 422 and "name" in response.json()["detail"]
    assert client.get("/api/v2/playlists").json() == {"items": [], "total": 0}


def test_playlists_are_listed_by_name_with_their_counts_and_durations(client):
    clip = insert_clip(client, duration_s=2.5)
    new_playlist(client, [clip, clip], name="zebra")
    new_playlist(client, [], name="Alpha")
    listing = client.get("/api/v2/playlists").json()
    assert listing["total"] == 2
    assert [(p["name"], p["clip_count"], p["duration_s"]) for p in listing["items"]] == [("Alpha", 0, 0.0),
                                                                                        ("zebra", 2, 5.0)]
    assert [p["name"] for p in client.get("/api/v2/playlists", params={"offset": 1}).json()["items"]] == ["zebra"]


def test_a_playlist_is_renamed_and_described_and_other_fields_are_refused(client):
    playlist = new_playlist(client, [])
    response = client.patch(f"/api/v2/playlists/{playlist['id']}", json={"name": "Evening", "description": "late"})
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["description"]) == ("Evening", "late")
    assert response.json()["updated_at"] > playlist["updated_at"]
    response = client.patch(f"/api/v2/playlists/{playlist['id']}", json={"clips": []})
    assert response.status_code == 422 and "clips" in response.text
    response = client.patch("/api/v2/playlists/ghost", json={"name": "x"})
    assert response.status_code == 404 and "'ghost'" in response.json()["detail"]


def test_clips_are_added_at_the_end_or_before_a_position(client):
    a, b, c, d = (insert_clip(client, title=t) for t in "ABCD")
    playlist = new_playlist(client, [a, b])
    added = client.post(f"/api/v2/playlists/{playlist['id']}/clips", json={"clip_ids": [c["id"]]}).json()
    assert titles(added) == ["A", "B", "C"]
    added = client.post(f"/api/v2/playlists/{playlist['id']}/clips",
                        json={"clip_ids": [d["id"], a["id"]], "position": 1}).json()
    assert titles(added) == ["A", "D", "A", "B", "C"]
    response = client.post(f"/api/v2/playlists/{playlist['id']}/clips", json={"clip_ids": [a["id"]], "position": 6})
    assert response.status_code == 422 and "0 to 5" in response.json()["detail"]
    response = client.post(f"/api/v2/playlists/{playlist['id']}/clips", json={"clip_ids": ["ghost"]})
    assert response.status_code == 404 and titles(client.get(f"/api/v2/playlists/{playlist['id']}").json()) == [
        "A", "D", "A", "B", "C"]


def test_a_clip_is_removed_by_its_position_and_stays_in_the_gallery(client):
    a, b, c = (insert_clip(client, title=t) for t in "ABC")
    playlist = new_playlist(client, [a, b, c, b])
    removed = client.delete(f"/api/v2/playlists/{playlist['id']}/clips/1").json()
    assert titles(removed) == ["A", "C", "B"]
    removed = client.delete(f"/api/v2/playlists/{playlist['id']}/clips/2").json()
    assert titles(removed) == ["A", "C"]
    response = client.delete(f"/api/v2/playlists/{playlist['id']}/clips/2")
    assert response.status_code == 404 and "0 to 1" in response.json()["detail"]
    assert client.get(f"/api/v2/gallery/{b['id']}").status_code == 200


def test_reordering_takes_exactly_the_playlists_clips(client):
    a, b, c = (insert_clip(client, title=t) for t in "ABC")
    playlist = new_playlist(client, [a, b, a])
    order = f"/api/v2/playlists/{playlist['id']}/order"
    reordered = client.put(order, json={"clip_ids": [a["id"], a["id"], b["id"]]})
    assert reordered.status_code == 200 and titles(reordered.json()) == ["A", "A", "B"]
    response = client.put(order, json={"clip_ids": [a["id"], b["id"], c["id"]]})
    assert response.status_code == 422
    assert f"missing ['{a['id']}']" in response.json()["detail"] and repr([c["id"]]) in response.json()["detail"]
    assert client.put(order, json={"clip_ids": [a["id"], b["id"]]}).status_code == 422
    assert titles(client.get(f"/api/v2/playlists/{playlist['id']}").json()) == ["A", "A", "B"]


def test_a_clip_deleted_from_the_gallery_leaves_its_playlists_with_dense_positions(client):
    a, b, c = (insert_clip(client, title=t) for t in "ABC")
    playlist = new_playlist(client, [a, b, c, b])
    assert client.delete(f"/api/v2/gallery/{b['id']}").status_code == 204
    left = client.get(f"/api/v2/playlists/{playlist['id']}").json()
    assert titles(left) == ["A", "C"] and left["clip_count"] == 2
    assert titles(client.delete(f"/api/v2/playlists/{playlist['id']}/clips/1").json()) == ["A"]
    client.post("/api/v2/gallery/bulk/delete", json={"ids": [a["id"]]})
    assert client.get(f"/api/v2/playlists/{playlist['id']}").json()["clips"] == []


def test_deleting_a_playlist_keeps_its_clips(client):
    clip = insert_clip(client)
    playlist = new_playlist(client, [clip])
    assert client.delete(f"/api/v2/playlists/{playlist['id']}").status_code == 204
    assert client.get(f"/api/v2/playlists/{playlist['id']}").status_code == 404
    assert client.get(f"/api/v2/gallery/{clip['id']}").status_code == 200


def test_the_m3u_export_lists_durations_titles_and_download_links(client):
    a = insert_clip(client, title="Intro", duration_s=0.2)
    b = insert_clip(client, title="Main\npart", duration_s=61.0)
    playlist = new_playlist(client, [a, b], name="Show: one")
    response = client.get(f"/api/v2/playlists/{playlist['id']}/export", params={"kind": "m3u", "format": "flac"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("audio/x-mpegurl")
    assert 'filename="Show one.m3u8"' in response.headers["content-disposition"]
    lines = response.text.splitlines()
    assert lines[:2] == ["#EXTM3U", "#PLAYLIST:Show: one"]
    assert lines[2] == "#EXTINF:1,Intro" and lines[4] == "#EXTINF:61,Main part"
    assert lines[3] == f"http://testserver/api/v2/gallery/{a['id']}/download?format=flac"
    assert client.get(lines[5]).headers["content-type"] == "audio/flac"
    response = client.get(f"/api/v2/playlists/{playlist['id']}/export", params={"kind": "pls"})
    assert response.status_code == 422 and "m3u" in response.text


def test_the_zip_export_has_numbered_audio_an_m3u_of_it_and_a_manifest(client, alice):
    clips = [client.post("/api/v2/generate", json={"script": f"Speaker 0: {text}", "voices": {"0": alice["id"]},
                                                   "seed": 1, "title": title}).json()
             for title, text in (("Opening", "Welcome to the show."), ("Closing", "Thanks, goodbye."))]
    playlist = new_playlist(client, [clips[1], clips[0], clips[1]], name="Demo")
    response = client.get(f"/api/v2/playlists/{playlist['id']}/export")
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    files = ["01 - Closing.wav", "02 - Opening.wav", "03 - Closing.wav"]
    assert archive.namelist() == files + ["Demo.m3u8", "manifest.json"]
    assert [line for line in archive.read("Demo.m3u8").decode().splitlines() if not line.startswith("#")] == files
    assert archive.read("02 - Opening.wav") == client.get(clips[0]["download_url"]).content
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["playlist"]["name"] == "Demo" and manifest["playlist"]["clip_count"] == 3
    assert [(r["file"], r["id"]) for r in manifest["clips"]] == list(zip(files, [clips[1]["id"], clips[0]["id"],
                                                                               clips[1]["id"]]))
