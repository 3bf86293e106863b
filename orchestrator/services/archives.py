"""Clips as files to take away: download names and headers, audio in a chosen format, zip archives with a
metadata manifest, and M3U playlists."""
from __future__ import annotations

import json
import math
import re
import tempfile
import zipfile
from collections.abc import Iterator
from typing import IO
from urllib.parse import quote

from orchestrator.models.clip import Clip, ClipPublic
from orchestrator.models.common import utcnow
from orchestrator.services import codecs
from orchestrator.services.storage import AudioStore

UNSAFE_IN_NAMES = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')
CHUNK_BYTES = 1 << 20


def file_stem(title: str, fallback: str) -> str:
    """A title as a file name that every OS and browser accepts: no path or reserved characters, at most 100
    characters; `fallback` when nothing is left."""
    stem = " ".join(UNSAFE_IN_NAMES.sub(" ", title).split()).strip(". ")[:100].strip(". ")
    return stem or fallback


def attachment(filename: str, disposition: str = "attachment") -> dict[str, str]:
    """Content-Disposition for a download ("inline": to be played in place): an ASCII name for old clients, the full
    UTF-8 name (RFC 6266) for the rest."""
    ascii_name = filename.encode("ascii", "ignore").decode() or "download"
    return {"Content-Disposition": f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"}


def stored_format(clip: Clip) -> codecs.AudioFormat:
    return codecs.FORMATS[clip.format]


def clip_audio(store: AudioStore, clip: Clip, target: codecs.AudioFormat) -> bytes:
    """The clip's file in `target` (the stored bytes when it is the stored format)."""
    return codecs.transcode(store.read(clip.file_sha256), stored_format(clip), target)


def numbered_names(clips: list[Clip], target: codecs.AudioFormat | None) -> list[str]:
    """'01 - Title.wav', ...: unique names that keep the clips' order in a file browser."""
    width = max(2, len(str(len(clips))))
    return [f"{i:0{width}d} - {file_stem(clip.title, clip.id)}.{(target or stored_format(clip)).extension}"
            for i, clip in enumerate(clips, start=1)]


def manifest(clips: list[Clip], names: list[str], **about) -> str:
    """manifest.json: when and what was exported, and each clip's gallery record with its file in the archive."""
    records = [{"file": name, **ClipPublic.of(clip).model_dump(mode="json")} for clip, name in zip(clips, names)]
    return json.dumps({"exported_at": utcnow().isoformat(), **about, "clips": records}, indent=2)


def m3u(title: str, clips: list[Clip], locations: list[str]) -> str:
    """An extended M3U playlist (UTF-8): each clip's duration in whole seconds (rounded up, so that a short clip
    is never 0, which players read as 'unknown'), its title and where to fetch it."""
    lines = ["#EXTM3U", f"#PLAYLIST:{' '.join(title.split())}"]
    for clip, location in zip(clips, locations):
        lines += [f"#EXTINF:{math.ceil(clip.duration_s)},{' '.join(clip.title.split())}", location]
    return "\n".join(lines) + "\n"


def write_zip(store: AudioStore, clips: list[Clip], names: list[str], target: codecs.AudioFormat | None,
              texts: dict[str, str]) -> IO[bytes]:
    """A zip of the clips' audio under `names` (converted to `target` if given) and the text files `texts`, in a
    temporary file (an export of many long clips does not fit in memory), rewound for reading."""
    archive_file = tempfile.TemporaryFile()
    with zipfile.ZipFile(archive_file, "w") as archive:
        for clip, name in zip(clips, names):
            if target is None or target == stored_format(clip):
                archive.write(store.path(clip.file_sha256), name)  # stored: audio hardly deflates
            else:
                archive.writestr(name, clip_audio(store, clip, target))
        for name, text in texts.items():
            archive.writestr(name, text, compress_type=zipfile.ZIP_DEFLATED)
    archive_file.seek(0)
    return archive_file


def chunks(file: IO[bytes]) -> Iterator[bytes]:
    """A file's bytes in pieces for a streamed response; the file is closed at the end or when the client goes."""
    with file:
        while piece := file.read(CHUNK_BYTES):
            yield piece
