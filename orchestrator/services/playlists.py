"""Playlists' entries in order. Positions are dense (0, 1, 2, ...) after every change made here; a clip deleted
from the gallery leaves a gap (its entries go by the foreign key's cascade), so readers take the order, never the
stored numbers, as positions."""
from __future__ import annotations

from collections import Counter

from sqlalchemy import func
from sqlmodel import Session, select

from orchestrator.models.clip import Clip, ClipPublic
from orchestrator.models.common import utcnow
from orchestrator.models.playlist import Playlist, PlaylistDetail, PlaylistEntry, PlaylistPublic


def entries_in_order(session: Session, playlist_id: str) -> list[tuple[PlaylistEntry, Clip]]:
    return list(session.exec(
        select(PlaylistEntry, Clip).join(Clip, Clip.id == PlaylistEntry.clip_id)
        .where(PlaylistEntry.playlist_id == playlist_id).order_by(PlaylistEntry.position, PlaylistEntry.id)).all())


def detail(session: Session, playlist: Playlist) -> PlaylistDetail:
    clips = [clip for _, clip in entries_in_order(session, playlist.id)]
    summary = PlaylistPublic.of(playlist, len(clips), sum(clip.duration_s for clip in clips))
    return PlaylistDetail(**summary.model_dump(), clips=[ClipPublic.of(clip) for clip in clips])


def save_order(session: Session, playlist: Playlist, entries: list[PlaylistEntry]) -> None:
    """Commit `entries` as the playlist's whole content, in this order (new entries are added)."""
    for position, entry in enumerate(entries):
        entry.position = position
        session.add(entry)
    playlist.updated_at = utcnow()
    session.add(playlist)
    session.commit()


def summaries(session: Session, limit: int, offset: int) -> list[PlaylistPublic]:
    """Playlists by name, each with its number of clips and their total duration."""
    rows = session.exec(
        select(Playlist, func.count(Clip.id), func.coalesce(func.sum(Clip.duration_s), 0.0))
        .outerjoin(PlaylistEntry, PlaylistEntry.playlist_id == Playlist.id)
        .outerjoin(Clip, Clip.id == PlaylistEntry.clip_id)
        .group_by(Playlist.id).order_by(Playlist.name, Playlist.id).offset(offset).limit(limit)).all()
    return [PlaylistPublic.of(playlist, count, duration) for playlist, count, duration in rows]


def order_mismatch(current: list[str], proposed: list[str]) -> str | None:
    """What keeps `proposed` from being a reordering of `current` (clip ids, repeats counted), or None."""
    have, want = Counter(current), Counter(proposed)
    missing, extra = list((have - want).elements()), list((want - have).elements())
    if not missing and not extra:
        return None
    parts = [f"missing {missing}" if missing else "", f"not in the playlist (or more often than there) {extra}"
             if extra else ""]
    return (f"the new order must list the playlist's {len(current)} clips, each as often as it is there: "
            + "; ".join(p for p in parts if p))
