"""/api/v2/playlists: named, ordered lists of gallery clips (a clip may appear more than once); create, rename,
add, remove and reorder clips, delete, export as M3U or as a zip of the audio."""
from __future__ import annotations

from collections import defaultdict, deque
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy import func
from sqlmodel import Session, select

from engine.errors import InvalidRequest
from orchestrator.api.deps import PrincipalDep, ServicesDep, SessionDep
from orchestrator.api.routes.gallery import existing_clips
from orchestrator.core.errors import found
from orchestrator.models.common import clean_name, utcnow
from orchestrator.models.playlist import (Playlist, PlaylistClipsAdd, PlaylistCreate, PlaylistDetail, PlaylistEntry,
                                          PlaylistList, PlaylistOrder, PlaylistPublic, PlaylistUpdate)
from orchestrator.services import archives, codecs, playlists

router = APIRouter(prefix="/api/v2/playlists", tags=["playlists"])


def get_playlist(session: Session, playlist_id: str) -> Playlist:
    return found(session.get(Playlist, playlist_id), "playlist", playlist_id, router.prefix)


@router.post("", status_code=201, response_model=PlaylistDetail)
def create_playlist(request: PlaylistCreate, session: SessionDep, principal: PrincipalDep):
    clips = existing_clips(session, request.clip_ids)
    playlist = Playlist(name=clean_name(request.name, "a playlist's name", 200),
                        description=request.description.strip())
    session.add(playlist)
    playlists.save_order(session, playlist, [PlaylistEntry(playlist_id=playlist.id, clip_id=c.id, position=0)
                                             for c in clips])
    return playlists.detail(session, playlist)


@router.get("", response_model=PlaylistList)
def list_playlists(session: SessionDep, principal: PrincipalDep,
                   limit: Annotated[int, Query(ge=1, le=500)] = 100, offset: Annotated[int, Query(ge=0)] = 0):
    """By name, each with its number of clips and their total duration."""
    total = session.exec(select(func.count()).select_from(Playlist)).one()
    return PlaylistList(items=playlists.summaries(session, limit, offset), total=total)


@router.get("/{playlist_id}", response_model=PlaylistDetail)
def read_playlist(playlist_id: str, session: SessionDep, principal: PrincipalDep):
    return playlists.detail(session, get_playlist(session, playlist_id))


@router.patch("/{playlist_id}", response_model=PlaylistDetail)
def update_playlist(playlist_id: str, update: PlaylistUpdate, session: SessionDep, principal: PrincipalDep):
    playlist = get_playlist(session, playlist_id)
    if update.name is not None:
        playlist.name = clean_name(update.name, "a playlist's name", 200)
    if update.description is not None:
        playlist.description = update.description.strip()
    playlist.updated_at = utcnow()
    session.add(playlist)
    session.commit()
    return playlists.detail(session, playlist)


@router.delete("/{playlist_id}", status_code=204)
def delete_playlist(playlist_id: str, session: SessionDep, principal: PrincipalDep):
    """The playlist only; its clips stay in the gallery."""
    session.delete(get_playlist(session, playlist_id))
    session.commit()
    return Response(status_code=204)


@router.post("/{playlist_id}/clips", response_model=PlaylistDetail)
def add_clips(playlist_id: str, request: PlaylistClipsAdd, session: SessionDep, principal: PrincipalDep):
    """Inserts the clips, in the order given, before `position` (default: after the last)."""
    playlist = get_playlist(session, playlist_id)
    entries = [entry for entry, _ in playlists.entries_in_order(session, playlist.id)]
    position = len(entries) if request.position is None else request.position
    if position > len(entries):
        raise InvalidRequest(f"position {position} is past the end of the playlist; it has {len(entries)} clips, so "
                             f"insert at 0 to {len(entries)}")
    added = [PlaylistEntry(playlist_id=playlist.id, clip_id=c.id, position=0)
             for c in existing_clips(session, request.clip_ids)]
    playlists.save_order(session, playlist, entries[:position] + added + entries[position:])
    return playlists.detail(session, playlist)


@router.delete("/{playlist_id}/clips/{position}", response_model=PlaylistDetail)
def remove_clip(playlist_id: str, position: int, session: SessionDep, principal: PrincipalDep):
    """Removes the clip at `position` (its index in the playlist's `clips`, from 0); the clip stays in the gallery."""
    playlist = get_playlist(session, playlist_id)
    entries = [entry for entry, _ in playlists.entries_in_order(session, playlist.id)]
    if not 0 <= position < len(entries):
        raise HTTPException(404, f"playlist {playlist_id!r} has no position {position}; its {len(entries)} clips are "
                                 f"at 0 to {len(entries) - 1}")
    session.delete(entries.pop(position))
    playlists.save_order(session, playlist, entries)
    return playlists.detail(session, playlist)


@router.put("/{playlist_id}/order", response_model=PlaylistDetail)
def reorder_clips(playlist_id: str, request: PlaylistOrder, session: SessionDep, principal: PrincipalDep):
    """`clip_ids` is the playlist's clips in their new order: each clip exactly as often as it is there."""
    playlist = get_playlist(session, playlist_id)
    entries = [entry for entry, _ in playlists.entries_in_order(session, playlist.id)]
    mismatch = playlists.order_mismatch([e.clip_id for e in entries], request.clip_ids)
    if mismatch:
        raise InvalidRequest(mismatch)
    by_clip: dict[str, deque[PlaylistEntry]] = defaultdict(deque)
    for entry in entries:
        by_clip[entry.clip_id].append(entry)  # a repeated clip's entries keep their relative order
    playlists.save_order(session, playlist, [by_clip[clip_id].popleft() for clip_id in request.clip_ids])
    return playlists.detail(session, playlist)


@router.get("/{playlist_id}/export", responses={200: {"content": {"audio/x-mpegurl": {}, "application/zip": {}}}})
def export_playlist(playlist_id: str, request: Request, services: ServicesDep, session: SessionDep,
                    principal: PrincipalDep,
                    kind: Annotated[Literal["m3u", "zip"], Query(description="m3u: links to the gallery's downloads; "
                                                                             "zip: the audio files with an m3u")]
                    = "zip",
                    format: Annotated[str | None, Query(description="the audio's format; default: as stored")]
                    = None):
    playlist = get_playlist(session, playlist_id)
    target = codecs.audio_format(format) if format else None
    clips = [clip for _, clip in playlists.entries_in_order(session, playlist.id)]
    stem = archives.file_stem(playlist.name, playlist.id)
    if kind == "m3u":
        query = f"?format={target.name}" if target else ""
        links = [f"{request.url_for('download_clip', clip_id=clip.id)}{query}" for clip in clips]
        return Response(archives.m3u(playlist.name, clips, links), media_type="audio/x-mpegurl",
                        headers=archives.attachment(f"{stem}.m3u8"))
    names = archives.numbered_names(clips, target)
    summary = PlaylistPublic.of(playlist, len(clips), sum(c.duration_s for c in clips)).model_dump(mode="json")
    texts = {f"{stem}.m3u8": archives.m3u(playlist.name, clips, names),
             "manifest.json": archives.manifest(clips, names, playlist=summary, format=target and target.name)}
    archive = archives.write_zip(services.store, clips, names, target, texts)
    return StreamingResponse(archives.chunks(archive), media_type="application/zip",
                             headers=archives.attachment(f"{stem}.zip"))
