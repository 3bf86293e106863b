"""ONNX export: the repository's layout and manifest, graph parity with the torch runtime, external data, and the
onnxruntime runtime refusing broken repositories."""
import json
import shutil
from datetime import datetime

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.config import HOP_SAMPLES
from engine.errors import CheckpointError
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.runtime.base import ModelSpec
from engine.runtime.onnx_runtime import GRAPHS, OnnxRuntime
from engine.runtime.torch_runtime import TorchRuntime
from engine.synthesizer import Synthesizer
from export import onnx_export
from export.onnx_export import export_onnx, lm_step_inputs, max_errors

from conftest import EXTERNAL_DATA_BYTES  # the threshold the shared tiny export was written with

TOLERANCE = 1e-4  # fp32: max |onnx - torch| / max |torch|
EXTERNAL = {"acoustic_decoder", "semantic_encoder", "acoustic_encoder"}


@pytest.fixture(scope="session")
def repository(tiny_repository):
    return tiny_repository[0]


@pytest.fixture(scope="session")
def manifest(repository):
    return json.loads((repository / "manifest.json").read_text())


@pytest.fixture(scope="module")
def runtimes(tiny_checkpoint, repository):
    """(torch, onnxruntime) over the same weights."""
    return TorchRuntime(load_checkpoint(tiny_checkpoint)), OnnxRuntime(repository)


def assert_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    _, rel_err = max_errors(reference.numpy(), ours.numpy())
    assert rel_err <= TOLERANCE


def randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# layout and manifest

def test_repository_layout(repository, manifest):
    paths = {name: entry["path"] for name, entry in manifest["components"].items()}
    assert paths == {**{name: f"generator/1/{name}.onnx" for name in GRAPHS if name != "acoustic_encoder"},
                     "acoustic_encoder": "acoustic_encoder/1/model.onnx"}
    assert all((repository / path).is_file() for path in paths.values())
    processor = repository / "preprocess" / "1" / "processor"
    assert (processor / "tokenizer.json").is_file() and (processor / "chat_template.jinja").is_file()


def test_manifest_describes_model_and_export(tiny_checkpoint, manifest):
    model = load_checkpoint(tiny_checkpoint).model
    spec = ModelSpec.from_model(model)
    assert manifest["format_version"] == 2 and (manifest["runtime"], manifest["precision"]) == ("onnxruntime", "fp32")
    assert ModelSpec.from_json(manifest["spec"]) == spec
    source = manifest["source"]
    assert source["checkpoint"] == str(tiny_checkpoint) and source["model_type"] == "vibevoice"
    assert source["sizes"]["hidden_size"] == spec.hidden_size and source["sizes"]["num_hidden_layers"] == 2
    assert datetime.fromisoformat(manifest["exported_at"]).tzinfo is not None
    versions = manifest["versions"]
    assert versions["opset"] == 18 and versions["torch"] == torch.__version__
    assert {"djz-vibevoice", "transformers", "onnx", "onnxruntime"} <= versions.keys()


def test_manifest_signatures_keep_symbolic_dims(manifest):
    spec = ModelSpec.from_json(manifest["spec"])
    lm = manifest["components"]["lm_step"]
    layers, kv, d, h = spec.num_layers, spec.kv_heads, spec.head_dim, spec.hidden_size
    assert [(i["name"], i["shape"], i["dtype"]) for i in lm["inputs"]] == [
        ("embeds", ["batch", "new", h], "float32"), ("positions", ["batch", "new"], "int64"),
        ("past_k", [layers, "batch", kv, "past", d], "float32"),
        ("past_v", [layers, "batch", kv, "past", d], "float32"),
        ("past_valid", ["batch", "past"], "bool")]
    assert [(o["name"], o["shape"]) for o in lm["outputs"]] == [
        ("hidden", ["batch", "new", h]), ("logits", ["batch", "new", len(spec.token_ids)]),
        ("new_k", [layers, "batch", kv, "new", d]), ("new_v", [layers, "batch", kv, "new", d])]
    decoder = manifest["components"]["acoustic_decoder"]
    caches = [f"cache_{i}" for i in range(len(spec.decoder_caches))]
    assert [i["name"] for i in decoder["inputs"]] == ["latents", *caches]
    assert [o["shape"] for o in decoder["outputs"][1:]] == [["batch", c.channels, c.width] for c in spec.decoder_caches]
    encoder = manifest["components"]["acoustic_encoder"]
    assert encoder["inputs"][0]["shape"] == ["voices", 1, "samples"]


def test_export_logs_each_graph_with_its_errors(tiny_repository):
    _, lines = tiny_repository
    for name in GRAPHS:
        (line,) = [line for line in lines if line.startswith(name + " ")]
        assert "max abs err" in line and "max rel err" in line


def test_large_graphs_keep_weights_in_external_data(repository, manifest):
    external = {name for name, entry in manifest["components"].items() if entry["external_data"]}
    assert external == EXTERNAL
    for name, entry in manifest["components"].items():
        graph = repository / entry["path"]
        data = graph.with_name(graph.name + ".data")
        assert entry["external_data"] == (data.name if name in EXTERNAL else None)
        assert data.is_file() == (name in EXTERNAL)
        if name in EXTERNAL:
            assert graph.stat().st_size < EXTERNAL_DATA_BYTES < data.stat().st_size


# parity with the torch runtime (the graphs with external data load through the same path)

@pytest.mark.parametrize("shape", [(5,), (2, 3), (1, 1)])
def test_embed(runtimes, shape):
    torch_rt, onnx_rt = runtimes
    ids = torch.randint(0, torch_rt.spec.vocab_size, shape, generator=torch.Generator().manual_seed(1))
    assert_close(onnx_rt.embed(ids), torch_rt.embed(ids))
    assert onnx_rt.embed(ids).shape == (*shape, torch_rt.spec.hidden_size)


@pytest.mark.parametrize("lengths, new", [([0], 11), ([7, 2, 5, 0], 1), ([3, 3], 2)],
                         ids=["prefill-empty-past", "batched-step-masked-past", "two-new-tokens"])
def test_lm_step(runtimes, lengths, new):
    torch_rt, onnx_rt = runtimes
    generator = torch.Generator().manual_seed(len(lengths))
    inputs = lm_step_inputs(torch_rt.spec, lengths, new, lambda *shape: torch.randn(*shape, generator=generator))
    for ours, reference in zip(onnx_rt.lm(*inputs), torch_rt.lm(*inputs), strict=True):
        assert_close(ours, reference)


def test_diffusion_head_and_connectors(runtimes):
    torch_rt, onnx_rt = runtimes
    spec = torch_rt.spec
    head = (randn(5, spec.latent_dim, seed=1), torch.tensor([999.0, 899.0, 500.0, 100.0, 0.0]),
            randn(5, spec.hidden_size, seed=2))
    assert_close(onnx_rt.diffusion_head(*head), torch_rt.diffusion_head(*head))
    latents, semantic = randn(3, spec.latent_dim, seed=3), randn(3, spec.semantic_dim, seed=4)
    assert_close(onnx_rt.acoustic_connector(latents), torch_rt.acoustic_connector(latents))
    assert_close(onnx_rt.semantic_connector(semantic), torch_rt.semantic_connector(semantic))


@pytest.mark.parametrize("method", ["decode", "semantic"])
def test_streaming_over_chunks_with_carried_caches(runtimes, method):
    torch_rt, onnx_rt = runtimes
    spec = torch_rt.spec
    specs = spec.decoder_caches if method == "decode" else spec.semantic_caches
    torch_caches = onnx_caches = [torch.zeros(2, c.channels, c.width) for c in specs]
    for chunk in range(4):
        x = (randn(2, spec.latent_dim, 1, seed=chunk) if method == "decode"
             else 0.1 * randn(2, 1, HOP_SAMPLES, seed=chunk))
        reference, *torch_caches = getattr(torch_rt, method)(x, *torch_caches)
        ours, *onnx_caches = getattr(onnx_rt, method)(x, *onnx_caches)
        assert_close(ours, reference)
    for ours, reference in zip(onnx_caches, torch_caches, strict=True):
        assert_close(ours, reference)


def test_encode_voice(runtimes):
    torch_rt, onnx_rt = runtimes
    audio = 0.1 * randn(2, 1, 3 * HOP_SAMPLES, seed=5)
    assert_close(onnx_rt.encode_voice(audio), torch_rt.encode_voice(audio))


def test_synthesizer_on_exported_repository_matches_torch(tiny_checkpoint, repository, voices):
    request = SynthesisRequest("Speaker 0: Hello there, how are you today?", {0: Voice(audio=voices["low"])},
                               SynthesisOptions(seed=7, exact_frames=4))
    exported = Synthesizer.load(str(repository))
    assert exported.runtime.name == "onnxruntime"
    ours = exported.synthesize(request)
    reference = Synthesizer.load(str(tiny_checkpoint), runtime="torch").synthesize(request)
    assert ours.frames == reference.frames == 4
    _, rel_err = max_errors(reference.audio, ours.audio)
    assert rel_err <= TOLERANCE


# refusals

@pytest.mark.parametrize("missing", ["generator/1/lm_step.onnx", "generator/1/acoustic_decoder.onnx.data",
                                     "acoustic_encoder/1/model.onnx", "preprocess/1/processor"])
def test_broken_repository_names_the_missing_file(repository, tmp_path, missing):
    broken = shutil.copytree(repository, tmp_path / "broken")
    target = broken / missing
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match=missing.replace(".", r"\.")):
        OnnxRuntime(broken)


def test_repository_without_manifest_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="manifest.json"):
        OnnxRuntime(tmp_path)


def test_unsupported_precision_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="'fp16'.*fp32"):
        export_onnx(str(tiny_checkpoint), tmp_path / "repository", precision="fp16")
    assert not (tmp_path / "repository").exists()


def test_graph_outside_tolerance_stops_the_export(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "RELATIVE_TOLERANCE", {"fp32": -1.0})  # no error is small enough
    with pytest.raises(RuntimeError, match="token_embedding"):
        export_onnx(str(tiny_checkpoint), tmp_path / "repository", log=lambda line: None)
    assert not (tmp_path / "repository" / "manifest.json").exists()
