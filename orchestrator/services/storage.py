"""Audio files on disk, named by the SHA-256 of their bytes. A file is written before its row is committed and
removed when the commit fails; a row's deletion removes its file once no other row names it. Whatever a crash
leaves between the two is swept at the next start (`sweep`)."""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlmodel import Session, select

from orchestrator.models.clip import Clip
from orchestrator.models.voice import Voice


class AudioStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def write(self, data: bytes) -> str:
        """Store `data` (atomically: a reader never sees half a file) and return its SHA-256."""
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.path(sha256)
        if target.is_file():
            return sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as staged:
                staged.write(data)
                staged.flush()
                os.fsync(staged.fileno())
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return sha256

    @contextmanager
    def written(self, data: bytes, is_referenced: Callable[[str], bool]) -> Iterator[str]:
        """Write `data` for a row committed inside the block; if the block fails, the file goes again unless some
        other row already named the same bytes."""
        sha256 = self.write(data)
        try:
            yield sha256
        except BaseException:
            if not is_referenced(sha256):
                self.path(sha256).unlink(missing_ok=True)
            raise

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def discard(self, sha256: str, is_referenced: Callable[[str], bool]) -> None:
        """Remove a file whose row was deleted, unless another row still names it."""
        if not is_referenced(sha256):
            self.path(sha256).unlink(missing_ok=True)

    def sweep(self, referenced: set[str], older_than_s: float) -> list[str]:
        """Remove files no row names (and staging leftovers) older than `older_than_s`: what a crash between a
        write and its commit, or a commit and its unlink, left behind. Returns the removed names."""
        removed = []
        cutoff = time.time() - older_than_s
        for file in self.root.glob("*/*"):
            if file.name in referenced or file.stat().st_mtime > cutoff:
                continue
            file.unlink(missing_ok=True)
            removed.append(file.name)
        return removed


def file_in_use(session: Session, sha256: str) -> bool:
    """Whether a clip or a voice row names the file (after dropping the session's failed transaction, if any)."""
    session.rollback()
    return (session.exec(select(Clip.id).where(Clip.file_sha256 == sha256)).first() is not None
            or session.exec(select(Voice.id).where(Voice.audio_sha256 == sha256)).first() is not None)
