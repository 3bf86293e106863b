"""Column helpers shared by the tables: ids, timestamps, and tag lists stored as delimited text."""
from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

from engine.errors import InvalidRequest

TAG = re.compile(r"^[\w][\w .:/+-]{0,47}$")
MAX_TAGS = 32


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def clean_name(value: str, what: str, limit: int) -> str:
    """A name or title with its white space folded; InvalidRequest naming `what` when nothing is left or it is
    longer than `limit`."""
    value = " ".join(value.split())
    if not 1 <= len(value) <= limit:
        raise InvalidRequest(f"{what} must have 1 to {limit} characters besides spaces; {value!r} has {len(value)}")
    return value


def clean_tags(tags: list[str]) -> list[str]:
    """Tags lower-cased, trimmed and deduplicated in order; a tag with a character outside words, spaces and
    .:/+- (or longer than 48) is refused by name."""
    cleaned: list[str] = []
    for tag in tags:
        tag = " ".join(str(tag).split()).lower()
        if not TAG.match(tag):
            raise InvalidRequest(f"tag {tag!r} is not allowed: use 1 to 48 letters, digits, spaces or . : / + - _, "
                                 "starting with a letter or digit")
        if tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise InvalidRequest(f"{len(cleaned)} tags given; at most {MAX_TAGS} are kept per item")
    return cleaned


def encode_tags(tags: list[str]) -> str:
    """'|a|b|': a tag filter is then one portable LIKE '%|a|%' on SQLite and PostgreSQL alike."""
    return "|" + "|".join(tags) + "|" if tags else ""


def decode_tags(stored: str) -> list[str]:
    return [tag for tag in stored.split("|") if tag]


def tag_pattern(tag: str) -> str:
    return f"%|{tag}|%"
