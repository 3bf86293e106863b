"""Shared fixtures: a real tiny random-weight checkpoint, built once per test session, and synthetic voices."""
import os

# The tests run on CPU: Triton kernels (engine/triton_kernels.py) run there through Triton's interpreter, which
# Triton chooses when a kernel is defined, so before anything imports them.
os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from engine.checkpoint import make_checkpoint
from engine.config import EngineSettings
from export import onnx_export
from export.triton_repository import ServingConfig, export_repository

# The served test repository's engine: room for the 8-stream tests, short contexts to keep the KV cache small.
SERVED_ENGINE = EngineSettings(max_streams=8, max_context=1024, default_max_frames=200)

# Low enough that the tiny checkpoint's three largest graphs (~6 MB) go to external data: one export covers both.
EXTERNAL_DATA_BYTES = 1_000_000


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return make_checkpoint("tiny", tmp_path_factory.mktemp("tiny") / "checkpoint", seed=0)


@pytest.fixture(scope="session")
def tiny_repository(tiny_checkpoint, tmp_path_factory):
    """(root, log lines) of the tiny checkpoint exported for onnxruntime: a complete Triton model repository."""
    lines = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", EXTERNAL_DATA_BYTES)
        root = export_repository(str(tiny_checkpoint), tmp_path_factory.mktemp("onnx") / "repository",
                                 serving=ServingConfig(engine=SERVED_ENGINE), log=lines.append)
    return root, lines


@pytest.fixture(scope="session")
def triton(tiny_repository):
    """A real tritonserver serving the tiny repository, started once per test session on free ports."""
    from djz.triton_server import TritonServer

    server = TritonServer().start(tiny_repository[0], http_port=0, grpc_port=0, metrics_port=0)
    yield server
    server.stop()


def synthetic_voice(seconds: float, pitch_hz: float, seed: int) -> np.ndarray:
    """A voiced-sounding 24 kHz test signal: a pitched pulse train with some noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 24000)) / 24000
    tone = np.sin(2 * np.pi * pitch_hz * t) + 0.5 * np.sin(2 * np.pi * 2.7 * pitch_hz * t)
    return (0.3 * tone * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="session")
def voices():
    return {"low": synthetic_voice(1.9, 110.0, 1), "high": synthetic_voice(1.1, 220.0, 2)}
