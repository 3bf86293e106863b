"""SQLModel tables and API schemas, one module per resource; importing this package registers every table."""
from orchestrator.models.clip import Clip
from orchestrator.models.job import BatchItem, BatchJob
from orchestrator.models.playlist import Playlist, PlaylistEntry
from orchestrator.models.voice import Voice, VoiceLatents

__all__ = ["BatchItem", "BatchJob", "Clip", "Playlist", "PlaylistEntry", "Voice", "VoiceLatents"]
