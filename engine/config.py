"""Engine limits and defaults: the one place they are set."""
from dataclasses import dataclass

SAMPLE_RATE = 24000          # VibeVoice speaks and listens at 24 kHz mono
HOP_SAMPLES = 3200           # samples per generated frame (7.5 frames per second)
MAX_SPEAKERS = 4
MAX_VOICE_SECONDS = 60.0     # a longer voice sample is refused: it bloats the prompt and does not clone better
VOICE_TARGET_DBFS = -25.0    # voice prompts are normalised to this RMS level, as VibeVoice was trained


@dataclass(frozen=True)
class EngineSettings:
    """How much work one engine instance takes on at once."""

    max_streams: int = 8            # requests advanced together in one batched step
    max_context: int = 8192         # prompt tokens + generated frames per request (KV cache length)
    default_max_frames: int = 4500  # 10 minutes of audio when a request sets no cap
    cuda_graphs: bool | None = None  # replay captured frames on CUDA (None: wherever the runtime is on CUDA)


# A served stream's frames: the first is sent alone, later ones gathered into chunks of up to this many frames once
# the listener holds this much audio ahead of playback (engine/chunking.py)
MAX_FRAMES_PER_CHUNK = 8
CHUNK_AHEAD_SECONDS = 0.5

DEFAULT_CFG_SCALE = 1.3
DEFAULT_DIFFUSION_STEPS = 10
