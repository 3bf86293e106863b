"""`djz export` writes complete Triton repositories: configs filled per target, the runtime's artifacts beside them,
and the torch-runtime repository serves the same audio as its checkpoint."""
import re

import numpy as np
import pytest
import torch

from engine.checkpoint import checkpoint_fingerprint, make_checkpoint
from engine.config import EngineSettings
from engine.errors import EngineError, RuntimeUnavailable
from engine.request import SynthesisOptions, SynthesisRequest, Voice
from engine.runtime import load_runtime
from engine.runtime.manifest import CHECKPOINT_DIR, read_manifest
from engine.synthesizer import Synthesizer
from export.triton_repository import MODELS, ServingConfig, export_repository

SETTINGS = EngineSettings(max_streams=4, max_context=1024, default_max_frames=300)


def config(root, model) -> str:
    return (root / model / "config.pbtxt").read_text()


@pytest.fixture(scope="module")
def torch_repository(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("torch") / "repository"
    return export_repository(str(tiny_checkpoint), root, runtime="torch",
                             serving=ServingConfig(target="gpu", engine=SETTINGS), log=lambda line: None)


def test_cpu_repository_has_every_model_with_filled_configs(tiny_repository):
    root = tiny_repository[0]
    for model in MODELS:
        text = config(root, model)
        assert f'name: "{model}"' in text and "${" not in text
        assert (root / model / "1").is_dir()
        assert (root / model / "1" / "model.py").is_file() == (model != "vibevoice")
    assert "KIND_GPU" not in "".join(config(root, m) for m in MODELS)
    generator = config(root, "generator")
    assert 'key: "max_streams", value: { string_value: "8" }' in generator
    assert 'key: "compile", value: { string_value: "0" }' in generator
    assert "decoupled: true" in generator and 'dims: [ -1, -1, 64 ]' in generator
    assert 'string_value: "numpy"' in config(root, "postprocess")


def test_gpu_target_puts_the_models_on_gpus_and_postprocess_on_one(torch_repository):
    assert "count: 1, kind: KIND_GPU }" in config(torch_repository, "generator")
    assert "kind: KIND_GPU }" in config(torch_repository, "acoustic_encoder")
    assert "count: 1, kind: KIND_GPU, gpus: [ 0 ] }" in config(torch_repository, "postprocess")
    assert "KIND_CPU" in config(torch_repository, "preprocess")  # tokenising stays on the CPU
    assert 'key: "max_streams", value: { string_value: "4" }' in config(torch_repository, "generator")


def test_both_runtimes_name_the_checkpoint_they_serve(torch_repository, tiny_repository, tmp_path):
    """acoustic_encoder's model_id parameter keys clients' latent caches: the same checkpoint gives the same id
    whatever the runtime, another checkpoint another id."""
    model_id = read_manifest(torch_repository)["model_id"]
    assert re.fullmatch(r"[0-9a-f]{16}", model_id) and read_manifest(tiny_repository[0])["model_id"] == model_id
    assert f'key: "model_id", value: {{ string_value: "{model_id}" }}' in config(torch_repository, "acoustic_encoder")
    other = make_checkpoint("tiny", tmp_path / "other", seed=1)
    assert checkpoint_fingerprint(other) != model_id
    assert checkpoint_fingerprint("microsoft/VibeVoice-1.5B") != checkpoint_fingerprint("microsoft/VibeVoice-7B")


def test_torch_repository_carries_its_checkpoint(torch_repository, tiny_checkpoint):
    manifest = read_manifest(torch_repository)
    assert (manifest["runtime"], manifest["precision"], manifest["checkpoint"]) == ("torch", "fp32", CHECKPOINT_DIR)
    weights = torch_repository / CHECKPOINT_DIR / "model.safetensors"
    assert weights.read_bytes() == (tiny_checkpoint / "model.safetensors").read_bytes()


def test_torch_repository_gives_the_checkpoints_audio(torch_repository, tiny_checkpoint, voices):
    request = SynthesisRequest("Speaker 0: Served from a repository.", {0: Voice(audio=voices["low"])},
                               SynthesisOptions(seed=3, exact_frames=3))
    served = Synthesizer.load(str(torch_repository), device="cpu").synthesize(request)
    direct = Synthesizer.load(str(tiny_checkpoint), runtime="torch", device="cpu").synthesize(request)
    np.testing.assert_array_equal(served.audio, direct.audio)


def test_an_int8_repository_records_its_precision_and_loads_at_it(tiny_checkpoint, tmp_path):
    root = export_repository(str(tiny_checkpoint), tmp_path / "repository", runtime="torch", precision="int8",
                             log=lambda line: None)
    assert read_manifest(root)["precision"] == "int8"
    runtime, _ = load_runtime(root, device="cpu")  # as the generator loads it
    assert (runtime.dtype, runtime.quantized) == (torch.bfloat16, "int8")
    with pytest.raises(RuntimeUnavailable, match="exported at int8; export it again with --precision fp8"):
        load_runtime(root, device="cpu", precision="fp8")


def test_voice_encoder_only_loads_what_encoding_needs(torch_repository, tiny_repository, voices):
    from engine.prompt import encode_voices

    means = [encode_voices(load_runtime(root, device="cpu", voice_encoder_only=True)[0], [voices["high"]])[0]
             for root in (torch_repository, tiny_repository[0])]
    assert means[0].shape == (-(-len(voices["high"]) // 3200), 64)
    np.testing.assert_allclose(means[0], means[1], atol=1e-4)


def test_a_repository_refuses_another_runtime(torch_repository, tiny_repository):
    with pytest.raises(RuntimeUnavailable, match=re.escape("exported for the torch runtime; export it again with "
                                                           "--runtime onnxruntime")):
        load_runtime(torch_repository, runtime="onnxruntime")
    with pytest.raises(RuntimeUnavailable, match="exported for the onnxruntime runtime"):
        load_runtime(tiny_repository[0], runtime="torch")


@pytest.mark.parametrize("kwargs, message", [
    ({"runtime": "tensorrt"}, "--runtime tensorrt: a repository can be exported for onnxruntime, torch"),
    ({"serving": ServingConfig(target="tpu")}, "--target tpu: choose one of cpu, gpu"),
    ({"serving": ServingConfig(target="gpu")}, "--target gpu needs --runtime torch"),
    ({"serving": ServingConfig(compile=True)}, "--compile needs --runtime torch"),
    ({"runtime": "torch", "precision": "int4"}, "--precision int4: the torch runtime runs fp32, bf16, fp16, fp8, "
                                                "int8"),
])
def test_export_refuses_what_it_cannot_build(tiny_checkpoint, tmp_path, kwargs, message):
    with pytest.raises(EngineError, match=re.escape(message)):
        export_repository(str(tiny_checkpoint), tmp_path / "out", log=lambda line: None, **kwargs)
