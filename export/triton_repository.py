"""A complete Triton model repository: the runtime's artifacts (ONNX graphs, or the torch checkpoint) plus the
model_repository/ templates, filled in for a target (CPU instances here, GPU instance groups where a GPU is)."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from string import Template

from engine.checkpoint import checkpoint_fingerprint, load_checkpoint
from engine.config import EngineSettings
from engine.errors import EngineError
from engine.runtime import TORCH_PRECISIONS
from engine.runtime.base import ModelSpec
from engine.runtime.manifest import CHECKPOINT_DIR, PROCESSOR_DIR, read_manifest, write_manifest

TEMPLATES = Path(__file__).resolve().parent.parent / "model_repository"
MODELS = ("vibevoice", "preprocess", "acoustic_encoder", "generator", "postprocess")
EXPORT_RUNTIMES = ("onnxruntime", "torch")
TARGETS = ("cpu", "gpu")


@dataclass(frozen=True)
class ServingConfig:
    """What the generated configs say about where and how much: filled into the templates' ${...} fields."""

    target: str = "cpu"
    engine: EngineSettings = EngineSettings()
    preprocess_instances: int = 2
    compile: bool = False  # the torch generator compiles its frame pieces at start

    def fields(self, spec: ModelSpec, model_id: str) -> dict[str, str]:
        gpu = self.target == "gpu"
        return {
            "model_id": model_id,
            "latent_dim": str(spec.latent_dim),
            "preprocess_instances": str(self.preprocess_instances),
            "model_kind": "KIND_GPU" if gpu else "KIND_CPU",
            # postprocess keeps per-stream state, so there is exactly one instance whatever the GPU count
            "postprocess_kind": "KIND_GPU, gpus: [ 0 ]" if gpu else "KIND_CPU",
            "postprocess_backend": "auto" if gpu else "numpy",  # auto: CuPy where it imports
            "max_streams": str(self.engine.max_streams),
            "max_context": str(self.engine.max_context),
            "default_max_frames": str(self.engine.default_max_frames),
            "compile": str(int(self.compile)),
        }


def export_repository(checkpoint: str, out: str | Path, runtime: str = "onnxruntime", precision: str = "fp32",
                      serving: ServingConfig = ServingConfig(), log=print) -> Path:
    """Write a servable repository for `checkpoint` into `out` and return it."""
    if runtime not in EXPORT_RUNTIMES:
        raise EngineError(f"--runtime {runtime}: a repository can be exported for {', '.join(EXPORT_RUNTIMES)}")
    if serving.target not in TARGETS:
        raise EngineError(f"--target {serving.target}: choose one of {', '.join(TARGETS)}")
    if runtime == "onnxruntime" and (serving.target == "gpu" or serving.compile):
        raise EngineError(f"--{'target gpu' if serving.target == 'gpu' else 'compile'} needs --runtime torch: the "
                          "onnxruntime repository runs on CPU as exported")
    root = Path(out)
    if runtime == "onnxruntime":
        from export.onnx_export import export_onnx

        export_onnx(checkpoint, root, precision=precision, log=log)
    else:
        write_torch_artifacts(checkpoint, root, precision, log)
    manifest = read_manifest(root)
    manifest.pop("format_version")
    write_manifest(root, {**manifest, "model_id": checkpoint_fingerprint(checkpoint)})
    write_model_configs(root, serving)
    log(f"Triton model repository ready: {root} ({runtime}, {serving.target}); serve it with "
        f"`djz serve --model-repository {root}`")
    return root


def write_torch_artifacts(checkpoint: str, root: Path, precision: str, log) -> None:
    """A torch-runtime repository: the checkpoint (hard-linked where possible) or, for a hub id, its name."""
    if precision not in TORCH_PRECISIONS:
        raise EngineError(f"--precision {precision}: the torch runtime runs {', '.join(TORCH_PRECISIONS)}")
    loaded = load_checkpoint(checkpoint)
    spec = ModelSpec.from_model(loaded.model)
    root.mkdir(parents=True, exist_ok=True)
    reference = checkpoint
    if Path(checkpoint).is_dir():
        target = root / CHECKPOINT_DIR
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(checkpoint, target, copy_function=_link_or_copy)
        reference = CHECKPOINT_DIR
    loaded.processor.save_pretrained(root / PROCESSOR_DIR)
    write_manifest(root, {
        "runtime": "torch", "precision": precision, "spec": spec.to_json(), "checkpoint": reference,
        "processor": PROCESSOR_DIR, "source": {"checkpoint": str(checkpoint)},
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    log(f"torch repository: checkpoint {'copied into ' + CHECKPOINT_DIR if reference == CHECKPOINT_DIR else reference}"
        f", {precision}")


def write_model_configs(root: Path, serving: ServingConfig) -> None:
    """Fill every model's config template and copy its model.py; ensembles get their empty version folder."""
    if not TEMPLATES.is_dir():
        raise EngineError(f"the model_repository templates are missing ({TEMPLATES}); run djz from its source tree")
    manifest = read_manifest(root)
    fields = serving.fields(ModelSpec.from_json(manifest["spec"]), manifest["model_id"])
    for model in MODELS:
        source, target = TEMPLATES / model, root / model
        (target / "1").mkdir(parents=True, exist_ok=True)
        config = Template((source / "config.pbtxt").read_text()).substitute(fields)
        (target / "config.pbtxt").write_text(config)
        if (source / "1" / "model.py").is_file():
            shutil.copy2(source / "1" / "model.py", target / "1" / "model.py")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
