"""Checkpoint -> ONNX graphs in a Triton-shaped model repository, each checked against PyTorch as it is written.

Layout under OUT: generator/1/<graph>.onnx (the frame loop's graphs), acoustic_encoder/1/model.onnx (voice prompts),
preprocess/1/processor/ (tokenizer, chat template) and manifest.json, which engine.runtime.onnx_runtime reads.
"""
from __future__ import annotations

import logging
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.export import Dim

from engine.checkpoint import load_checkpoint
from engine.config import HOP_SAMPLES
from engine.network import DiffusionHeadStep, LanguageModelStep, StreamingConvStep, VoiceEncoder
from engine.runtime.base import ModelSpec
from engine.runtime.manifest import MANIFEST, PROCESSOR_DIR, write_manifest
from engine.runtime.onnx_runtime import PRECISIONS

OPSET = 18
RELATIVE_TOLERANCE = {"fp32": 1e-4}  # per precision: max |onnx - torch| / max |torch|, per output
EXTERNAL_DATA_BYTES = 1_500_000_000  # weights beyond this go to <graph>.onnx.data: protobuf caps a file at 2 GB


@dataclass
class Graph:
    """One graph to write: its module, how to trace it, and the inputs it is checked on afterwards."""

    name: str
    path: str                  # relative to the repository root
    module: nn.Module
    inputs: list[str]
    outputs: list[str]
    example: tuple             # tracing inputs; dynamic dims are at least 2, or torch.export specialises them
    dynamic_shapes: tuple
    checks: dict[str, tuple]   # what each input set stands for -> inputs


def export_onnx(checkpoint: str, out: str | Path, precision: str = "fp32", log=print) -> Path:
    """Write the ONNX repository of `checkpoint` into `out`; returns `out`. Raises RuntimeError naming any graph
    whose onnxruntime outputs differ from PyTorch beyond the precision's tolerance."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not supported for onnxruntime; choose one of "
                         f"{', '.join(PRECISIONS)}")
    started = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)  # until the new one is written, the folder is not a repository
    loaded = load_checkpoint(checkpoint)
    model = loaded.model.float().eval()
    spec = ModelSpec.from_model(model)
    components = {}
    for graph in _graphs(model, spec):
        began = time.perf_counter()
        program = _write(graph, root)
        abs_err, rel_err = _check(graph, root, RELATIVE_TOLERANCE[precision])
        log(f"{graph.name:<20} max abs err {abs_err:.1e}  max rel err {rel_err:.1e}  "
            f"({time.perf_counter() - began:.1f}s)")
        components[graph.name] = _describe(graph, program, root)
    loaded.processor.save_pretrained(root / PROCESSOR_DIR)
    manifest = {
        "runtime": "onnxruntime",
        "precision": precision,
        "spec": spec.to_json(),
        "components": components,
        "processor": PROCESSOR_DIR,
        "source": _source(checkpoint, model),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {**{package: version(package) for package in (
            "djz-vibevoice", "torch", "transformers", "onnx", "onnxscript", "onnxruntime")}, "opset": OPSET},
    }
    write_manifest(root, manifest)
    log(f"exported {checkpoint} -> {root} ({precision}, {time.perf_counter() - started:.1f}s)")
    return root


def _graphs(model, spec: ModelSpec) -> list[Graph]:
    """Every graph of the repository (engine.runtime.onnx_runtime.GRAPHS), over engine.network's modules."""
    inner = model.model
    generator = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator) * scale

    def rows(name: str, module: nn.Module, input_name: str, output_name: str, make) -> Graph:
        """A graph of one input and one output whose first dim is free; make(n) gives an input of n rows."""
        n = Dim("rows")
        return Graph(name, _generator_path(name), module, [input_name], [output_name],
                     example=(make(3),), dynamic_shapes=({0: n},), checks={"1 row": (make(1),), "7 rows": (make(7),)})

    lm = LanguageModelStep(inner.language_model, model.lm_head, list(spec.token_ids))
    batch, new, past = Dim("batch"), Dim("new"), Dim("past")
    voices, samples = Dim("voices"), Dim("samples")
    head_inputs = (lambda b: (randn(b, spec.latent_dim), torch.randint(0, 1000, (b,), generator=generator).float(),
                              randn(b, spec.hidden_size)))
    return [
        rows("token_embedding", inner.language_model.embed_tokens, "ids", "embeds",
             lambda n: torch.randint(0, spec.vocab_size, (n,), generator=generator)),
        Graph("lm_step", _generator_path("lm_step"), lm,
              ["embeds", "positions", "past_k", "past_v", "past_valid"], ["hidden", "logits", "new_k", "new_v"],
              example=lm_step_inputs(spec, [4, 4], 3, randn),
              dynamic_shapes=({0: batch, 1: new}, {0: batch, 1: new}, {1: batch, 3: past}, {1: batch, 3: past},
                              {0: batch, 1: past}),
              checks={"prefill (empty past)": lm_step_inputs(spec, [0], 9, randn),
                      "batched step (masked past)": lm_step_inputs(spec, [6, 3, 5, 1], 1, randn)}),
        Graph("diffusion_head", _generator_path("diffusion_head"), DiffusionHeadStep(inner.diffusion_head),
              ["noisy", "timesteps", "condition"], ["v"], example=head_inputs(2),
              dynamic_shapes=({0: batch}, {0: batch}, {0: batch}), checks={"batch 1": head_inputs(1),
                                                                            "batch 6": head_inputs(6)}),
        rows("acoustic_connector", inner.multi_modal_projector, "latents", "embeds",
             lambda n: randn(n, spec.latent_dim)),
        rows("semantic_connector", inner.semantic_connector, "semantic", "embeds",
             lambda n: randn(n, spec.semantic_dim)),
        _streaming("acoustic_decoder", StreamingConvStep(inner.audio_tower.decoder, "audio"), "latents", "audio",
                   lambda b: randn(b, spec.latent_dim, 1), randn),
        _streaming("semantic_encoder", StreamingConvStep(inner.semantic_tokenizer_encoder, "latents"), "audio",
                   "semantic", lambda b: randn(b, 1, HOP_SAMPLES, scale=0.1), randn),
        Graph("acoustic_encoder", "acoustic_encoder/1/model.onnx", VoiceEncoder(inner.audio_tower.encoder),
              ["audio"], ["latents"], example=(randn(2, 1, 3 * HOP_SAMPLES, scale=0.1),),
              dynamic_shapes=({0: voices, 2: samples},),
              checks={"1 voice, 5 frames": (randn(1, 1, 5 * HOP_SAMPLES, scale=0.1),),
                      "3 voices, 2 frames": (randn(3, 1, 2 * HOP_SAMPLES, scale=0.1),)}),
    ]


def lm_step_inputs(spec: ModelSpec, lengths: list[int], new: int, randn) -> tuple:
    """lm_step inputs as the frame loop builds them: `new` tokens per row after pasts of the given valid lengths,
    padded to the longest (T = 0 when every length is 0: a prefill); randn(*shape) fills embeddings and pasts."""
    past = max(lengths)
    shape = (spec.num_layers, len(lengths), spec.kv_heads, past, spec.head_dim)
    valid_lengths = torch.tensor(lengths)
    positions = valid_lengths[:, None] + torch.arange(new)
    return (randn(len(lengths), new, spec.hidden_size), positions, randn(*shape), randn(*shape),
            torch.arange(past)[None] < valid_lengths[:, None])


def _generator_path(name: str) -> str:
    return f"generator/1/{name}.onnx"


def _streaming(name: str, step: StreamingConvStep, input_name: str, output_name: str, chunk, randn) -> Graph:
    """A streaming-conv graph: chunk(b) is one input chunk of b rows; each conv cache is an input and an output."""
    caches = [f"cache_{i}" for i in range(len(step.specs))]
    batch = Dim("batch")
    return Graph(name, _generator_path(name), step, [input_name, *caches],
                 [output_name, *(f"new_{c}" for c in caches)],
                 example=(chunk(2), *step.zero_caches(2)),
                 dynamic_shapes=({0: batch}, tuple({0: batch} for _ in caches)),  # torch.export sees *caches as one
                 checks={"zero caches": (chunk(3), *step.zero_caches(3)),
                         "carried caches": (chunk(3), *(randn(*c.shape, scale=0.5) for c in step.zero_caches(3)))})


def _write(graph: Graph, root: Path):
    """Trace and save one graph (with external data when its weights are large); returns the ONNX program."""
    with _quiet_exporter():
        program = torch.onnx.export(graph.module.eval(), graph.example, dynamo=True, opset_version=OPSET,
                                    dynamic_shapes=graph.dynamic_shapes, input_names=graph.inputs,
                                    output_names=graph.outputs, verbose=False)
    path = root / graph.path
    path.parent.mkdir(parents=True, exist_ok=True)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # a stale file would be appended to, or left beside a single-file graph
    weights = sum(v.const_value.nbytes for v in program.model.graph.initializers.values())
    program.save(path, external_data=weights > EXTERNAL_DATA_BYTES)  # external data goes to <name>.onnx.data
    return program


@contextmanager
def _quiet_exporter():
    """Mute the exporter's known noise on every call: optional torchvision ops it skips, a notice per renamed
    dynamic axis, a pytree deprecation inside torch.export."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*deprecated")
            yield
    finally:
        registration.setLevel(level)


def max_errors(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(max abs error, that error relative to the largest expected magnitude)."""
    if expected.shape != actual.shape:
        raise ValueError(f"shape {actual.shape} where {expected.shape} was expected")
    abs_err = float(np.abs(expected - actual).max())
    return abs_err, abs_err / max(float(np.abs(expected).max()), np.finfo(np.float32).tiny)


def _check(graph: Graph, root: Path, tolerance: float) -> tuple[float, float]:
    """Run the written graph under onnxruntime on each check input; (worst abs, worst rel) error against PyTorch."""
    session = ort.InferenceSession(str(root / graph.path), providers=["CPUExecutionProvider"])
    worst_abs = worst_rel = 0.0
    for label, inputs in graph.checks.items():
        with torch.no_grad():
            expected = graph.module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        actual = session.run(None, {name: t.numpy() for name, t in zip(graph.inputs, inputs, strict=True)})
        for name, e, a in zip(graph.outputs, expected, actual, strict=True):
            abs_err, rel_err = max_errors(e.numpy(), a)
            if not rel_err <= tolerance:  # also catches NaN
                raise RuntimeError(f"{graph.name}: ONNX output {name!r} differs from PyTorch on {label} by relative "
                                   f"error {rel_err:.1e} (allowed {tolerance:.0e}); {graph.path} is not usable")
            worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
    return worst_abs, worst_rel


def _describe(graph: Graph, program, root: Path) -> dict:
    """The manifest entry of a written graph: where it is and its signature (symbolic dims as names)."""
    def signature(values):
        return [{"name": v.name, "shape": [d if isinstance(d, int) else str(d) for d in v.shape],
                 "dtype": v.dtype.numpy().name} for v in values]

    data = (root / graph.path).with_name(Path(graph.path).name + ".data")
    return {"path": graph.path, "external_data": data.name if data.exists() else None,
            "inputs": signature(program.model.graph.inputs), "outputs": signature(program.model.graph.outputs)}


def _source(checkpoint: str, model) -> dict:
    """What was exported: the checkpoint as given, its model type and sizes."""
    cfg, text = model.config, model.config.text_config
    return {"checkpoint": str(checkpoint), "model_type": cfg.model_type, "language_model_type": text.model_type,
            "sizes": {"hidden_size": text.hidden_size, "num_hidden_layers": text.num_hidden_layers,
                      "num_attention_heads": text.num_attention_heads,
                      "num_key_value_heads": text.num_key_value_heads, "intermediate_size": text.intermediate_size,
                      "vocab_size": text.vocab_size, "latent_dim": cfg.audio_config.hidden_size,
                      "semantic_dim": cfg.semantic_model_config.hidden_size,
                      "diffusion_head_layers": cfg.diffusion_head_config.num_hidden_layers,
                      "parameters": sum(p.numel() for p in model.parameters())}}
