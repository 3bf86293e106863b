"""Runtime selection: the fastest runtime that the hardware and the model's artifacts allow, or the one asked for."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.errors import RuntimeUnavailable
from engine.runtime.base import ModelSpec, Runtime

RUNTIMES = ("auto", "torch", "onnxruntime")
MANIFEST = "manifest.json"


def is_exported_repository(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def load_runtime(model: str | Path, runtime: str = "auto", device: str | None = None) -> tuple[Runtime, object]:
    """(runtime, processor) for a checkpoint (folder or hub id) or a repository written by `djz export`."""
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if is_exported_repository(model):
        if runtime == "torch":
            raise RuntimeUnavailable(f"{model} is an exported repository (ONNX graphs only); point --model at the "
                                     "checkpoint folder to use the torch runtime")
        from engine.runtime.onnx_runtime import OnnxRuntime

        rt = OnnxRuntime(model)
        return rt, rt.processor
    if runtime == "onnxruntime":
        raise RuntimeUnavailable(f"{model} is a checkpoint; the onnxruntime runtime needs an exported repository "
                                 f"(djz export --checkpoint {model} --out DIR --runtime onnxruntime)")
    from engine.checkpoint import load_checkpoint
    from engine.runtime.torch_runtime import TorchRuntime

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = load_checkpoint(model)
    return TorchRuntime(checkpoint, device=device), checkpoint.processor


__all__ = ["RUNTIMES", "ModelSpec", "Runtime", "load_runtime", "is_exported_repository"]
