"""/api/v2/gallery: every generated clip; search, filters, sort and pages; download in any format; edit and
delete, one by one or in bulk (all or nothing); export as a zip with a metadata manifest."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, Response, StreamingResponse
from sqlmodel import Session, select

from engine.errors import InvalidRequest
from orchestrator.api.deps import PrincipalDep, ServicesDep, SessionDep
from orchestrator.core.errors import found
from orchestrator.models.clip import (BulkDeleted, BulkExport, BulkMove, BulkTag, Clip, ClipIds, ClipList, ClipPage,
                                      ClipPublic, ClipQuery, ClipUpdate, FacetList, decode_voice_names,
                                      search_text)
from orchestrator.models.common import clean_name, clean_tags, decode_tags, encode_tags
from orchestrator.services import archives, codecs, gallery

router = APIRouter(prefix="/api/v2/gallery", tags=["gallery"])


def get_clip(session: Session, clip_id: str) -> Clip:
    return found(session.get(Clip, clip_id), "clip", clip_id, router.prefix)


def existing_clips(session: Session, ids: list[str]) -> list[Clip]:
    """The clips named by `ids`, in that order (repeats kept), or a 404 naming every id that matches none."""
    by_id = {clip.id: clip for clip in session.exec(select(Clip).where(Clip.id.in_(set(ids)))).all()}
    unknown = list(dict.fromkeys(i for i in ids if i not in by_id))
    if unknown:
        raise HTTPException(404, f"no clip has the id(s) {', '.join(map(repr, unknown))}; nothing was changed")
    return [by_id[i] for i in ids]


def _distinct(clips: list[Clip]) -> list[Clip]:
    return list({clip.id: clip for clip in clips}.values())


@router.get("", response_model=ClipPage)
def list_clips(query: Annotated[ClipQuery, Query()], services: ServicesDep, session: SessionDep,
               principal: PrincipalDep):
    """Newest first unless `sort` says otherwise; `total` counts every match, not just this page."""
    if query.limit > services.settings.page_size_max:
        raise InvalidRequest(f"limit {query.limit} is over the page size limit; ask for 1 to "
                             f"{services.settings.page_size_max} clips and page with offset")
    matching = gallery.matching(session, query)
    clips = gallery.page(session, matching, query.sort, query.offset, query.limit)
    return ClipPage(items=[ClipPublic.of(c) for c in clips], total=gallery.count(session, matching),
                    limit=query.limit, offset=query.offset)


@router.get("/folders", response_model=FacetList)
def list_folders(session: SessionDep, principal: PrincipalDep):
    """Every folder in use with its number of clips; '' holds the clips in no folder."""
    return FacetList(items=gallery.folder_counts(session))


@router.get("/tags", response_model=FacetList)
def list_tags(session: SessionDep, principal: PrincipalDep):
    """Every tag in use with its number of clips."""
    return FacetList(items=gallery.tag_counts(session))


@router.get("/{clip_id}", response_model=ClipPublic)
def read_clip(clip_id: str, session: SessionDep, principal: PrincipalDep):
    return ClipPublic.of(get_clip(session, clip_id))


@router.get("/{clip_id}/download", responses={200: {"content": {"audio/*": {}}}})
def download_clip(clip_id: str, services: ServicesDep, session: SessionDep, principal: PrincipalDep,
                  format: Annotated[str | None, Query(description="convert to this format; default: as stored")]
                  = None):
    clip = get_clip(session, clip_id)
    stored = archives.stored_format(clip)
    target = codecs.audio_format(format) if format else stored
    headers = archives.attachment(f"{archives.file_stem(clip.title, clip.id)}.{target.extension}")
    if target == stored:
        return FileResponse(services.store.path(clip.file_sha256), media_type=stored.media_type, headers=headers)
    return Response(archives.clip_audio(services.store, clip, target), media_type=target.media_type,
                    headers=headers)


@router.patch("/{clip_id}", response_model=ClipPublic)
def update_clip(clip_id: str, update: ClipUpdate, session: SessionDep, principal: PrincipalDep):
    clip = get_clip(session, clip_id)
    if update.title is not None:
        clip.title = clean_name(update.title, "a clip's title", 200)
        clip.search_text = search_text(clip.title, clip.script, decode_voice_names(clip.voice_names))
    if update.tags is not None:
        clip.tags = encode_tags(clean_tags(update.tags))
    if update.folder is not None:
        clip.folder = update.folder.strip()
    session.add(clip)
    session.commit()
    return ClipPublic.of(clip)


@router.delete("/{clip_id}", status_code=204)
def delete_clip(clip_id: str, services: ServicesDep, session: SessionDep, principal: PrincipalDep):
    """The clip and its file (unless another clip has the same bytes); playlists lose it."""
    gallery.delete_clips(session, services.store, [get_clip(session, clip_id)])
    return Response(status_code=204)


@router.post("/bulk/delete", response_model=BulkDeleted)
def bulk_delete(request: ClipIds, services: ServicesDep, session: SessionDep, principal: PrincipalDep):
    clips = _distinct(existing_clips(session, request.ids))
    gallery.delete_clips(session, services.store, clips)
    return BulkDeleted(deleted=[clip.id for clip in clips])


@router.post("/bulk/tag", response_model=ClipList)
def bulk_tag(request: BulkTag, session: SessionDep, principal: PrincipalDep):
    """Adds the tags of `add` to each clip and takes those of `remove` away; other tags stay."""
    add, remove = clean_tags(request.add), clean_tags(request.remove)
    both = [tag for tag in add if tag in remove]
    if both:
        raise InvalidRequest(f"tag(s) {', '.join(map(repr, both))} are both added and removed; name each in one list")
    clips = _distinct(existing_clips(session, request.ids))
    for clip in clips:
        kept = [tag for tag in decode_tags(clip.tags) if tag not in remove]
        try:
            clip.tags = encode_tags(clean_tags(kept + add))
        except InvalidRequest as exc:
            raise InvalidRequest(f"clip {clip.id!r}: {exc}") from None
        session.add(clip)
    session.commit()
    return ClipList(items=[ClipPublic.of(c) for c in clips])


@router.post("/bulk/move", response_model=ClipList)
def bulk_move(request: BulkMove, session: SessionDep, principal: PrincipalDep):
    clips = _distinct(existing_clips(session, request.ids))
    for clip in clips:
        clip.folder = request.folder.strip()
        session.add(clip)
    session.commit()
    return ClipList(items=[ClipPublic.of(c) for c in clips])


@router.post("/bulk/export", responses={200: {"content": {"application/zip": {}}}})
def bulk_export(request: BulkExport, services: ServicesDep, session: SessionDep, principal: PrincipalDep):
    """A zip: the clips' audio in the order given (numbered) and manifest.json with their gallery records."""
    target = codecs.audio_format(request.format) if request.format else None
    clips = _distinct(existing_clips(session, request.ids))
    names = archives.numbered_names(clips, target)
    texts = {"manifest.json": archives.manifest(clips, names, format=target and target.name)}
    archive = archives.write_zip(services.store, clips, names, target, texts)
    return StreamingResponse(archives.chunks(archive), media_type="application/zip",
                             headers=archives.attachment(f"gallery-export-{len(clips)}-clips.zip"))
