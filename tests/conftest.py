"""Shared fixtures: a real tiny random-weight checkpoint, built once per test session, and synthetic voices."""
import numpy as np
import pytest

from engine.checkpoint import make_checkpoint
from export import onnx_export

# Low enough that the tiny checkpoint's three largest graphs (~6 MB) go to external data: one export covers both.
EXTERNAL_DATA_BYTES = 1_000_000


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return make_checkpoint("tiny", tmp_path_factory.mktemp("tiny") / "checkpoint", seed=0)


@pytest.fixture(scope="session")
def tiny_repository(tiny_checkpoint, tmp_path_factory):
    """(root, log lines) of the tiny checkpoint exported for onnxruntime."""
    lines = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", EXTERNAL_DATA_BYTES)
        root = onnx_export.export_onnx(str(tiny_checkpoint), tmp_path_factory.mktemp("onnx") / "repository",
                                       log=lines.append)
    return root, lines


def synthetic_voice(seconds: float, pitch_hz: float, seed: int) -> np.ndarray:
    """A voiced-sounding 24 kHz test signal: a pitched pulse train with some noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    tone = np.sin(2 * np.pi * pitch_hz * t) + 0.5 * np.sin(2 * np.pi * 2.7 * pitch_hz * t)
    return (0.3 * tone * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def voices():
    return {"low": synthetic_voice(1.9, 110.0, 1), "high": synthetic_voice(1.1, 220.0, 2)}
