"""DJZ-VibeVoice's orchestrator: the FastAPI service in front of Triton (API v2, OpenAI-compatible speech, gallery)."""
