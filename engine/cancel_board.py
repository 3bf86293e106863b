"""Cancellation notices between the processes of one Triton server.

Triton 2.5x does not pass an ensemble's cancellation on to a decoupled step that is already running: the generator's
request never reads as cancelled, while each later postprocess request does. So postprocess posts a notice naming
the stream, and the generator, polling between steps, stops it. A notice is an empty file in a folder private to
the server process (RAM-backed /dev/shm where there is one), so every generator instance sees every notice.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

STALE_SECONDS = 600.0  # a notice no generator claimed by then names a stream that had already ended


class CancelBoard:
    def __init__(self, server_pid: int | None = None, root: str | Path | None = None):
        """The board of the Triton server `server_pid` (default: this process's parent, as in a Python stub)."""
        base = Path(root) if root else Path("/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
        self.folder = base / f"djz-cancelled-streams-{server_pid or os.getppid()}"
        self.folder.mkdir(parents=True, exist_ok=True)

    def post(self, stream_id: int) -> None:
        (self.folder / str(stream_id)).touch()

    def is_posted(self, stream_id: int) -> bool:
        return (self.folder / str(stream_id)).exists()

    def clear(self, stream_id: int) -> None:
        (self.folder / str(stream_id)).unlink(missing_ok=True)

    def sweep(self) -> None:
        """Remove notices older than STALE_SECONDS."""
        cutoff = time.time() - STALE_SECONDS
        for notice in self.folder.iterdir():
            try:
                if notice.stat().st_mtime < cutoff:
                    notice.unlink()
            except FileNotFoundError:  # another process removed it first
                pass

    def remove(self) -> None:
        """Delete the board (its server is shutting down)."""
        shutil.rmtree(self.folder, ignore_errors=True)
