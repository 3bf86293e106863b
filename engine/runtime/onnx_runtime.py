"""The onnxruntime runtime: the ONNX graphs of a repository written by `djz export`, run on CPU."""
from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import torch

from engine.errors import CheckpointError
from engine.runtime.base import ModelSpec, Runtime
from engine.runtime.manifest import MANIFEST, PROCESSOR_DIR, read_manifest

PRECISIONS = ("fp32",)  # the repository precisions onnxruntime runs
GRAPHS = ("token_embedding", "lm_step", "diffusion_head", "acoustic_connector", "semantic_connector",
          "acoustic_decoder", "semantic_encoder", "acoustic_encoder")


class OnnxGraph:
    """One graph as a function of torch tensors: inputs become arrays of the graph's dtypes, outputs tensors again."""

    def __init__(self, root: Path, name: str, entry: dict, options: ort.SessionOptions):
        path = root / entry["path"]
        needed = [path] + ([path.with_name(entry["external_data"])] if entry.get("external_data") else [])
        for file in needed:
            if not file.is_file():
                raise CheckpointError(f"{root}: {name} needs {file.relative_to(root)}, which is missing; "
                                      "export the repository again")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable or invalid graphs
            raise CheckpointError(f"{root}: onnxruntime cannot open {entry['path']}: {exc}") from exc
        self.inputs = [(i["name"], getattr(torch, i["dtype"])) for i in entry["inputs"]]

    def __call__(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = {name: t.detach().to(dtype).contiguous().numpy()
                 for (name, dtype), t in zip(self.inputs, tensors, strict=True)}
        return tuple(torch.from_numpy(array) for array in self.session.run(None, feeds))


def check_manifest(root: Path, manifest: dict, graphs: tuple[str, ...]) -> None:
    """Refuse a manifest this runtime cannot run, naming what is wrong."""
    if manifest.get("runtime") != "onnxruntime":
        raise CheckpointError(f"{root} was exported for the {manifest.get('runtime')} runtime, not onnxruntime")
    if manifest.get("precision") not in PRECISIONS:
        raise CheckpointError(f"{root}: exported at precision {manifest.get('precision')!r}; onnxruntime runs "
                              f"{', '.join(PRECISIONS)} repositories")
    missing = [name for name in graphs if name not in manifest.get("components", {})]
    if missing:
        raise CheckpointError(f"{root}: {MANIFEST} lists no graph for {', '.join(missing)}")


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, path: str | Path, graphs: tuple[str, ...] = GRAPHS):
        """Open `graphs` of the repository at `path` (a subset serves a single piece, e.g. the voice encoder)."""
        from transformers import AutoProcessor

        self.path = Path(path)
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        manifest = read_manifest(self.path)
        check_manifest(self.path, manifest, graphs)
        self.spec = ModelSpec.from_json(manifest["spec"])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The frame loop alternates many short graph calls with torch work; spinning onnxruntime threads would
        # hold the cores that torch needs between calls (measured: 3x slower steps at 4 streams).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.graphs = {name: OnnxGraph(self.path, name, manifest["components"][name], options) for name in graphs}
        processor_dir = self.path / PROCESSOR_DIR
        if not processor_dir.is_dir():
            raise CheckpointError(f"{self.path}: {PROCESSOR_DIR} is missing; export the repository again")
        try:
            self.processor = AutoProcessor.from_pretrained(processor_dir)
        except Exception as exc:
            raise CheckpointError(f"{processor_dir}: the processor could not be loaded: {exc}") from exc

    def embed(self, ids):
        (embeds,) = self.graphs["token_embedding"](ids.reshape(-1))  # the graph takes a flat [N] of ids
        return embeds.reshape(*ids.shape, -1)

    def lm(self, embeds, positions, past_k, past_v, past_valid):
        return self.graphs["lm_step"](embeds, positions, past_k, past_v, past_valid)

    def diffusion_head(self, noisy, timesteps, condition):
        return self.graphs["diffusion_head"](noisy, timesteps, condition)[0]

    def acoustic_connector(self, latents):
        return self.graphs["acoustic_connector"](latents)[0]

    def semantic_connector(self, semantic):
        return self.graphs["semantic_connector"](semantic)[0]

    def decode(self, latents, *caches):
        return self.graphs["acoustic_decoder"](latents, *caches)

    def semantic(self, audio, *caches):
        return self.graphs["semantic_encoder"](audio, *caches)

    def encode_voice(self, audio):
        return self.graphs["acoustic_encoder"](audio)[0]
