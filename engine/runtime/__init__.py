"""Runtime selection: the fastest runtime that the hardware and the model's artifacts allow, or the one asked for."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import RuntimeUnavailable
from engine.runtime.base import ModelSpec, Runtime
from engine.runtime.manifest import CHECKPOINT_DIR, is_exported_repository, read_manifest

RUNTIMES = ("auto", "torch", "onnxruntime")


@dataclass(frozen=True)
class TorchPrecision:
    """How the torch runtime holds a model at one precision."""

    dtype: torch.dtype               # activations, and every weight that is not quantized
    quantized: str | None = None     # the LM decoder layers' linear weights: "fp8" or "int8" (engine/quantize.py)


# The one list of the torch runtime's precisions. fp8 and int8 store the LM's linear weights in 8 bits, weight-only
# (engine/quantize.py): products of bf16 activations, one Triton kernel each on CUDA.
TORCH_PRECISIONS = {
    "fp32": TorchPrecision(torch.float32),
    "bf16": TorchPrecision(torch.bfloat16),
    "fp16": TorchPrecision(torch.float16),
    "fp8": TorchPrecision(torch.bfloat16, quantized="fp8"),
    "int8": TorchPrecision(torch.bfloat16, quantized="int8"),
}
PRECISIONS = ("auto", *TORCH_PRECISIONS)


def pick_precision(precision: str, device: str) -> str:
    """`auto`: bf16 where the device computes it natively (CUDA), fp32 elsewhere; fp8 and int8 only when asked."""
    if precision not in PRECISIONS:
        raise RuntimeUnavailable(f"unknown precision {precision!r}; the torch runtime runs {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def load_runtime(model: str | Path, runtime: str = "auto", device: str | None = None,
                 voice_encoder_only: bool = False, precision: str = "auto",
                 compile: bool = False) -> tuple[Runtime, object]:
    """(runtime, processor) for a checkpoint (folder or hub id) or a repository written by `djz export`.
    `voice_encoder_only` loads just what `encode_voice` needs (Triton's acoustic_encoder model). A repository
    runs at the precision it was exported for; a checkpoint at `precision` (see pick_precision and
    TORCH_PRECISIONS). `compile`: the torch runtime's frame pieces go through torch.compile (minutes of
    compilation, a faster frame)."""
    if runtime not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    asked, precision = precision, pick_precision(precision, device)
    if is_exported_repository(model):
        manifest = read_manifest(model)
        exported = manifest.get("runtime")
        if runtime not in ("auto", exported):
            raise RuntimeUnavailable(f"{model} was exported for the {exported} runtime; export it again with "
                                     f"--runtime {runtime}, or use --runtime auto")
        if exported == "onnxruntime":
            from engine.runtime.onnx_runtime import GRAPHS, OnnxRuntime

            rt = OnnxRuntime(model, graphs=("acoustic_encoder",) if voice_encoder_only else GRAPHS)
            return rt, rt.processor
        checkpoint_ref, precision = manifest["checkpoint"], manifest["precision"]
        if asked not in ("auto", precision):
            raise RuntimeUnavailable(f"{model} was exported at {precision}; export it again with --precision {asked}")
        model = Path(model) / checkpoint_ref if checkpoint_ref == CHECKPOINT_DIR else checkpoint_ref
    elif runtime == "onnxruntime":
        raise RuntimeUnavailable(f"{model} is a checkpoint; the onnxruntime runtime needs an exported repository "
                                 f"(djz export --checkpoint {model} --out DIR --runtime onnxruntime)")
    from engine.checkpoint import load_checkpoint
    from engine.runtime.torch_runtime import TorchRuntime

    checkpoint = load_checkpoint(str(model))
    held = TORCH_PRECISIONS[precision]
    rt = TorchRuntime(checkpoint, device=device, dtype=held.dtype, quantized=held.quantized,
                      voice_encoder_only=voice_encoder_only, compile=compile)
    return rt, checkpoint.processor


__all__ = ["RUNTIMES", "PRECISIONS", "TORCH_PRECISIONS", "TorchPrecision", "pick_precision", "ModelSpec", "Runtime",
           "load_runtime", "is_exported_repository"]
