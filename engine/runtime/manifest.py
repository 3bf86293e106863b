"""The manifest of an exported repository (`manifest.json` at its root): which runtime serves it, with what."""
from __future__ import annotations

import json
from pathlib import Path

from engine.errors import CheckpointError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
PROCESSOR_DIR = "preprocess/1/processor"
CHECKPOINT_DIR = "generator/1/checkpoint"  # where a torch-runtime repository keeps its checkpoint


def is_exported_repository(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(root: str | Path) -> dict:
    """The repository's manifest, checked for the format this engine reads."""
    root = Path(root)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{root}: {MANIFEST} cannot be read ({exc}); export the repository again") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{root}: {MANIFEST} has format version {manifest.get('format_version')!r}; this "
                              f"engine reads version {FORMAT_VERSION} (export the repository again)")
    return manifest


def write_manifest(root: str | Path, manifest: dict) -> None:
    (Path(root) / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION, **manifest}, indent=2) + "\n")
