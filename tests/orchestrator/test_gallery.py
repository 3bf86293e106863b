"""/api/v2/gallery: search, filters, sort and pages; get, download with conversion, edit, delete; bulk delete, tag,
move and export (all or nothing); the folders and tags in use."""
import io
import json
import zipfile
from datetime import datetime, timedelta, timezone

import numpy as np
import soundfile

from clip_rows import insert_clip, stored_file

DAY = datetime(2026, 3, 10, tzinfo=timezone.utc)


def listed(client, **params) -> list[str]:
    response = client.get("/api/v2/gallery", params=params)
    assert response.status_code == 200, response.text
    return [clip["id"] for clip in response.json()["items"]]


def generated(client, voice, text: str, **fields) -> dict:
    response = client.post("/api/v2/generate", json={"script": f"Speaker 0: {text}", "voices": {"0": voice["id"]},
                                                     "seed": 1, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def test_the_newest_clips_come_first_in_pages_with_the_total_of_all_matches(client):
    ids = [insert_clip(client, created_at=DAY + timedelta(minutes=i))["id"] for i in range(5)]
    page = client.get("/api/v2/gallery", params={"limit": 2}).json()
    assert [c["id"] for c in page["items"]] == ids[::-1][:2]
    assert (page["total"], page["limit"], page["offset"]) == (5, 2, 0)
    pages = [listed(client, limit=2, offset=offset) for offset in (0, 2, 4)]
    assert sum(pages, []) == ids[::-1]


def test_every_sort_key_orders_both_ways_and_clips_without_a_quality_score_come_last(client):
    rows = [dict(title="Banana", duration_s=3.0, generation_s=0.2, file_size=500, quality_score=0.5),
            dict(title="apple", duration_s=1.0, generation_s=0.9, file_size=900, quality_score=None),
            dict(title="cherry", duration_s=2.0, generation_s=0.5, file_size=100, quality_score=0.9)]
    clips = [insert_clip(client, created_at=DAY + timedelta(hours=i), **row) for i, row in enumerate(rows)]
    by_title = {c["title"]: c["id"] for c in clips}
    expected = {"created_at": ["Banana", "apple", "cherry"], "duration_s": ["apple", "cherry", "Banana"],
                "generation_s": ["Banana", "cherry", "apple"], "file_size": ["cherry", "Banana", "apple"],
                "title": ["apple", "Banana", "cherry"]}  # titles sort regardless of case
    for key, titles in expected.items():
        assert listed(client, sort=key) == [by_title[t] for t in titles], key
        assert listed(client, sort=f"-{key}") == [by_title[t] for t in titles[::-1]], key
    assert listed(client, sort="quality_score") == [by_title[t] for t in ("Banana", "cherry", "apple")]
    assert listed(client, sort="-quality_score") == [by_title[t] for t in ("cherry", "Banana", "apple")]


def test_a_bad_sort_limit_or_parameter_is_refused_by_name(client, settings):
    response = client.get("/api/v2/gallery", params={"sort": "loudness"})
    assert response.status_code == 422 and "'loudness'" in response.text and "duration_s" in response.text
    response = client.get("/api/v2/gallery", params={"limit": settings.page_size_max + 1})
    assert response.status_code == 422 and str(settings.page_size_max) in response.json()["detail"]
    response = client.get("/api/v2/gallery", params={"min_duration": 1})  # a misspelt filter must not be ignored
    assert response.status_code == 422 and "min_duration" in response.text


def test_search_needs_every_word_in_the_title_script_or_voice_names_in_any_case(client):
    fox = insert_clip(client, title="Morning news", script="Speaker 0: The quick brown fox.",
                      voices={"v1": "Alice"})["id"]
    dog = insert_clip(client, title="Evening", script="Speaker 0: A lazy dog sleeps.", voices={"v2": "Bob"})["id"]
    assert listed(client, q="QUICK fox") == [fox]
    assert listed(client, q="quick dog") == []
    assert listed(client, q="alice") == [fox]
    assert listed(client, q="evening lazy") == [dog]
    assert client.get("/api/v2/gallery", params={"q": "news"}).json()["total"] == 1


def test_percent_and_underscore_in_a_search_are_plain_characters(client):
    sale = insert_clip(client, script="Speaker 0: Now 50% off, use code a_b.")["id"]
    insert_clip(client, script="Speaker 0: It costs 500 dollars, use code axb.")
    assert listed(client, q="50%") == [sale]
    assert listed(client, q="a_b") == [sale]


def test_a_renamed_clip_is_found_by_its_new_title_only(client):
    clip = insert_clip(client, title="Draft one")
    response = client.patch(f"/api/v2/gallery/{clip['id']}", json={"title": "  Final   cut "})
    assert response.status_code == 200 and response.json()["title"] == "Final cut"
    assert listed(client, q="final") == [clip["id"]]
    assert listed(client, q="draft") == []


def test_date_bounds_take_whole_days_or_exact_instants(client):
    early, noon, late = (insert_clip(client, created_at=DAY + timedelta(hours=h))["id"] for h in (-1, 12, 25))
    assert listed(client, created_from="2026-03-10", created_to="2026-03-10") == [noon]
    assert listed(client, created_from="2026-03-10") == [late, noon]
    assert listed(client, created_to="2026-03-10T12:00:00") == [noon, early]  # an instant bound is inclusive
    assert listed(client, created_to="2026-03-10T13:00:00+02:00") == [early]  # 11:00 UTC
    assert listed(client, created_from="2026-03-10T12:00:01") == [late]  # a time without zone is UTC


def test_the_voice_filter_takes_an_id_or_a_name_and_still_finds_clips_of_a_deleted_voice(client, alice, bob):
    duet = insert_clip(client, voices={alice["id"]: "Alice", bob["id"]: "Bob"})["id"]
    solo = insert_clip(client, voices={bob["id"]: "Bob"})["id"]
    assert listed(client, voice=alice["id"]) == [duet]
    assert listed(client, voice="bob") == [solo, duet]
    assert client.delete(f"/api/v2/voices/{alice['id']}").status_code == 204
    assert listed(client, voice=alice["id"]) == [duet]


def test_range_filters_keep_clips_within_their_bounds(client):
    values = {"duration_s": (1.0, 5.0, 9.0), "generation_s": (9.0, 1.0, 5.0), "file_size": (5000, 9000, 1000),
              "quality_score": (0.9, 0.1, 0.5)}
    ids = [insert_clip(client, created_at=DAY + timedelta(minutes=i), **{k: v[i] for k, v in values.items()})["id"]
           for i in range(3)]
    for name, (first, second, third) in values.items():
        middle = sorted((first, second, third))[1]
        within = [ids[i] for i in (2, 1, 0) if values[name][i] >= middle]
        assert listed(client, **{f"min_{name}": middle}) == within, name
        below = [ids[i] for i in (2, 1, 0) if values[name][i] <= middle]
        assert listed(client, **{f"max_{name}": middle}) == below, name
        assert listed(client, **{f"min_{name}": middle, f"max_{name}": middle}) == [ids[values[name].index(middle)]]


def test_tags_must_all_match_and_folder_source_and_format_match_exactly(client):
    both = insert_clip(client, tags=("intro", "music"), folder="podcasts", created_at=DAY)["id"]
    intro = insert_clip(client, tags=("intro",), source="batch", fmt="flac", created_at=DAY + timedelta(hours=1))["id"]
    assert listed(client, tag=["Intro"]) == [intro, both]
    assert listed(client, tag=["intro", "music"]) == [both]
    assert listed(client, folder="podcasts") == [both]
    assert listed(client, folder="") == [intro]  # clips in no folder
    assert listed(client, source="batch") == [intro]
    assert listed(client, format="flac") == [intro]


def test_folders_and_tags_in_use_are_listed_with_their_counts(client):
    insert_clip(client, tags=("intro", "music"), folder="podcasts")
    insert_clip(client, tags=("intro",), folder="podcasts")
    insert_clip(client, tags=("music", "intro"))
    assert client.get("/api/v2/gallery/folders").json()["items"] == [{"value": "", "count": 1},
                                                                     {"value": "podcasts", "count": 2}]
    assert client.get("/api/v2/gallery/tags").json()["items"] == [{"value": "intro", "count": 3},
                                                                  {"value": "music", "count": 2}]


def test_a_clip_is_read_by_id_and_an_unknown_id_is_a_404_naming_it(client):
    clip = insert_clip(client, tags=("a",))
    assert client.get(f"/api/v2/gallery/{clip['id']}").json() == clip
    response = client.get("/api/v2/gallery/nope123")
    assert response.status_code == 404 and "'nope123'" in response.json()["detail"]


def test_a_generated_clip_downloads_as_stored_or_converted_under_its_title(client, alice):
    clip = generated(client, alice, "Bonjour, this is the gallery.", title="Café: take 1/2")
    stored = client.get(clip["download_url"])
    assert stored.status_code == 200 and stored.headers["content-type"] == "audio/wav"
    assert stored.content == stored_file(client, clip["id"]).read_bytes() and len(stored.content) == clip["file_size"]
    assert "filename*=UTF-8''Caf%C3%A9%20take%201%202.wav" in stored.headers["content-disposition"]
    flac = client.get(clip["download_url"], params={"format": "flac"})
    assert flac.status_code == 200 and flac.headers["content-type"] == "audio/flac"
    assert "take 1 2.flac" in flac.headers["content-disposition"]
    wav_samples, _ = soundfile.read(io.BytesIO(stored.content), dtype="int16")
    flac_samples, rate = soundfile.read(io.BytesIO(flac.content), dtype="int16")
    assert rate == 24000 and np.array_equal(wav_samples, flac_samples)  # FLAC is lossless: the same samples
    response = client.get(clip["download_url"], params={"format": "aiff"})
    assert response.status_code == 422 and "'aiff'" in response.text and "flac" in response.text


def test_title_tags_and_folder_are_edited_but_the_quality_score_is_not(client):
    clip = insert_clip(client, tags=("old",))
    response = client.patch(f"/api/v2/gallery/{clip['id']}", json={"tags": [" Intro ", "intro", "music"],
                                                                    "folder": " shows "})
    assert response.status_code == 200
    assert (response.json()["tags"], response.json()["folder"], response.json()["title"]) == (
        ["intro", "music"], "shows", clip["title"])
    response = client.patch(f"/api/v2/gallery/{clip['id']}", json={"quality_score": 0.9})
    assert response.status_code == 422 and "quality_score" in response.text
    response = client.patch(f"/api/v2/gallery/{clip['id']}", json={"tags": ["no;semicolons"]})
    assert response.status_code == 422 and "no;semicolons" in response.text
    assert client.patch(f"/api/v2/gallery/{clip['id']}", json={"title": "   "}).status_code == 422
    assert client.get(f"/api/v2/gallery/{clip['id']}").json()["quality_score"] is None


def test_deleting_a_clip_removes_its_file_once_no_other_clip_has_the_same_bytes(client):
    first, twin = (insert_clip(client, seed=7)["id"] for _ in range(2))
    path = stored_file(client, first)
    assert client.delete(f"/api/v2/gallery/{first}").status_code == 204
    assert client.get(f"/api/v2/gallery/{first}").status_code == 404
    assert path.is_file()  # the twin still plays it
    assert client.delete(f"/api/v2/gallery/{twin}").status_code == 204
    assert not path.exists()
    assert client.delete(f"/api/v2/gallery/{twin}").status_code == 404


def test_a_bulk_request_naming_an_unknown_clip_changes_nothing(client):
    a, b = (insert_clip(client, tags=("keep",))["id"] for _ in range(2))
    for path, body in (("delete", {}), ("tag", {"add": ["new"]}), ("move", {"folder": "elsewhere"})):
        response = client.post(f"/api/v2/gallery/bulk/{path}", json={"ids": [a, "ghost1", b, "ghost2"], **body})
        assert response.status_code == 404 and "'ghost1', 'ghost2'" in response.json()["detail"], path
    for clip_id in (a, b):
        clip = client.get(f"/api/v2/gallery/{clip_id}").json()
        assert (clip["tags"], clip["folder"]) == (["keep"], "")


def test_bulk_delete_removes_the_clips_and_their_files(client):
    a, b, kept = (insert_clip(client)["id"] for _ in range(3))
    paths = [stored_file(client, a), stored_file(client, b)]
    response = client.post("/api/v2/gallery/bulk/delete", json={"ids": [a, b, a]})
    assert response.status_code == 200 and response.json() == {"deleted": [a, b]}
    assert listed(client) == [kept] and not any(p.exists() for p in paths)


def test_bulk_tag_adds_and_removes_tags_and_keeps_the_others(client):
    a = insert_clip(client, tags=("draft", "music"))["id"]
    b = insert_clip(client, tags=("music",))["id"]
    response = client.post("/api/v2/gallery/bulk/tag", json={"ids": [a, b], "add": ["Final"], "remove": ["draft"]})
    assert response.status_code == 200
    assert [c["tags"] for c in response.json()["items"]] == [["music", "final"], ["music", "final"]]
    response = client.post("/api/v2/gallery/bulk/tag", json={"ids": [a], "add": ["x"], "remove": ["X"]})
    assert response.status_code == 422 and "'x'" in response.json()["detail"]


def test_bulk_move_puts_the_clips_in_a_folder_or_in_none(client):
    a, b, c = (insert_clip(client, folder="inbox")["id"] for _ in range(3))
    response = client.post("/api/v2/gallery/bulk/move", json={"ids": [a, b], "folder": " shows "})
    assert response.status_code == 200 and [x["folder"] for x in response.json()["items"]] == ["shows", "shows"]
    client.post("/api/v2/gallery/bulk/move", json={"ids": [c], "folder": ""})
    assert client.get("/api/v2/gallery/folders").json()["items"] == [{"value": "", "count": 1},
                                                                     {"value": "shows", "count": 2}]


def test_bulk_export_is_a_zip_of_the_audio_with_a_manifest_of_the_records(client, alice):
    first = generated(client, alice, "First clip of the export.", title="First")
    second = generated(client, alice, "Second clip.", title="Second", tags=["demo"])
    response = client.post("/api/v2/gallery/bulk/export", json={"ids": [second["id"], first["id"]]})
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.namelist() == ["01 - Second.wav", "02 - First.wav", "manifest.json"]
    manifest = json.loads(archive.read("manifest.json"))
    assert [{k: v for k, v in r.items() if k != "file"} for r in manifest["clips"]] == [second, first]
    assert [r["file"] for r in manifest["clips"]] == ["01 - Second.wav", "02 - First.wav"]
    assert archive.read("02 - First.wav") == client.get(first["download_url"]).content

    converted = client.post("/api/v2/gallery/bulk/export", json={"ids": [first["id"]], "format": "flac"})
    archive = zipfile.ZipFile(io.BytesIO(converted.content))
    samples, rate = soundfile.read(io.BytesIO(archive.read("01 - First.flac")))
    assert rate == 24000 and samples.size == round(first["duration_s"] * 24000)
    assert json.loads(archive.read("manifest.json"))["format"] == "flac"
