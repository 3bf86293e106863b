"""The gallery's queries and deletions: clips searched, filtered and sorted; the folders and tags in use; clips
removed with their files."""
from __future__ import annotations

from collections import Counter
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import func
from sqlmodel import Session, delete, select
from sqlmodel.sql.expression import SelectOfScalar

from engine.errors import InvalidRequest
from orchestrator.models.clip import Clip, ClipQuery, Facet
from orchestrator.models.common import clean_tags, decode_tags, tag_pattern
from orchestrator.services import generation
from orchestrator.services.storage import AudioStore, file_in_use

SORTS = {"created_at": Clip.created_at, "duration_s": Clip.duration_s, "generation_s": Clip.generation_s,
         "file_size": Clip.file_size, "title": func.lower(Clip.title), "quality_score": Clip.quality_score}
NULLABLE_SORTS = {"quality_score"}
RANGES = {"duration_s": Clip.duration_s, "generation_s": Clip.generation_s, "file_size": Clip.file_size,
          "quality_score": Clip.quality_score}


def _instant(value: date | datetime, end_of_day: bool) -> datetime:
    """A query bound as an aware instant: a day starts (or, as an upper bound, ends) at UTC midnight; a time
    without a zone is UTC."""
    if not isinstance(value, datetime):
        value = datetime.combine(value + timedelta(days=end_of_day), time(), timezone.utc)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _contains(word: str) -> str:
    """A LIKE pattern matching `word` literally: % and _ typed in a search are characters, not wildcards."""
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def matching(session: Session, query: ClipQuery) -> SelectOfScalar[Clip]:
    """The clips that match the query's search and filters, unsorted and unpaged."""
    statement = select(Clip)
    for word in (query.q or "").lower().split():
        statement = statement.where(Clip.search_text.like(_contains(word), escape="\\"))
    if query.created_from is not None:
        statement = statement.where(Clip.created_at >= _instant(query.created_from, end_of_day=False))
    if query.created_to is not None:
        if isinstance(query.created_to, datetime):
            statement = statement.where(Clip.created_at <= _instant(query.created_to, end_of_day=False))
        else:
            statement = statement.where(Clip.created_at < _instant(query.created_to, end_of_day=True))
    if query.voice:
        voice = generation.find_voice(session, query.voice)
        statement = statement.where(Clip.voice_ids.like(tag_pattern(voice.id if voice else query.voice)))
    for name, column in RANGES.items():
        low, high = getattr(query, f"min_{name}"), getattr(query, f"max_{name}")
        if low is not None:
            statement = statement.where(column >= low)
        if high is not None:
            statement = statement.where(column <= high)
    for tag in clean_tags(query.tag):
        statement = statement.where(Clip.tags.like(tag_pattern(tag)))
    for name in ("folder", "source", "format"):
        value = getattr(query, name)
        if value is not None:
            statement = statement.where(getattr(Clip, name) == value.strip())
    return statement


def page(session: Session, statement: SelectOfScalar[Clip], sort: str, offset: int, limit: int) -> list[Clip]:
    """One sorted page of the clips `statement` matches. The page's ids are chosen first and only their rows read:
    the rows skipped by `offset` are then walked in the sort key's index (Clip's indexes end with the id), not read
    with their scripts."""
    order = ordering(sort)
    page_ids = statement.with_only_columns(Clip.id).order_by(*order).offset(offset).limit(limit)
    return list(session.exec(select(Clip).where(Clip.id.in_(page_ids)).order_by(*order)).all())


def count(session: Session, statement: SelectOfScalar[Clip]) -> int:
    return session.exec(select(func.count()).select_from(statement.subquery())).one()


def ordering(sort: str) -> tuple:
    """ORDER BY terms for a sort key ('-' first for descending), the id breaking ties so that pages never overlap.
    Clips without a quality_score come last either way. Only that column says NULLS LAST: on the others it would
    keep PostgreSQL from reading a descending sort off the index (its indexes keep NULLs last ascending, SQLite's
    first)."""
    name = sort.removeprefix("-")
    column = SORTS.get(name)
    if column is None:
        raise InvalidRequest(f"sort {sort!r} is not known; sort by one of {', '.join(SORTS)} (prefix '-' to reverse)")
    descending = sort.startswith("-")
    direction = column.desc() if descending else column.asc()
    tie_break = Clip.id.desc() if descending else Clip.id.asc()
    return direction.nulls_last() if name in NULLABLE_SORTS else direction, tie_break


def folder_counts(session: Session) -> list[Facet]:
    rows = session.exec(select(Clip.folder, func.count()).group_by(Clip.folder).order_by(Clip.folder)).all()
    return [Facet(value=folder, count=n) for folder, n in rows]


def tag_counts(session: Session) -> list[Facet]:
    """Each tag with the number of clips that carry it. Tags are stored as one text per clip, so the database
    groups identical tag sets and Python splits the distinct sets, row by row: holding them all at once would
    hand the garbage collector thousands of objects to promote, and then a full collection to run."""
    counts: Counter[str] = Counter()
    for tags, n in session.exec(select(Clip.tags, func.count()).group_by(Clip.tags)):
        for tag in decode_tags(tags):
            counts[tag] += n
    return [Facet(value=tag, count=counts[tag]) for tag in sorted(counts)]


def delete_clips(session: Session, store: AudioStore, clips: list[Clip]) -> None:
    """The rows in one transaction (playlists lose their entries, batch items keep a null clip), then each file
    that no other row names."""
    files = {clip.file_sha256 for clip in clips}
    session.exec(delete(Clip).where(Clip.id.in_([clip.id for clip in clips])))
    session.commit()
    for sha256 in files:
        store.discard(sha256, lambda sha: file_in_use(session, sha))
