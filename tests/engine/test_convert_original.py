"""Microsoft's original checkpoint layout: a tiny `-hf` checkpoint written back in that layout must load (and convert)
to exactly the same model; malformed folders must fail with a CheckpointError naming what is wrong."""
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.checkpoint import config_for, load_checkpoint
from engine.convert_original import convert_original_checkpoint, hf_config, hf_key
from engine.errors import CheckpointError

# ---- the original layout, written from a `-hf` checkpoint (inverse of the conversion, kept independent of it) ----

_TOWERS = {"audio_tower.encoder": ("acoustic_tokenizer.encoder", "downsample_layers"),
           "audio_tower.decoder": ("acoustic_tokenizer.decoder", "upsample_layers"),
           "semantic_tokenizer_encoder": ("semantic_tokenizer.encoder", "downsample_layers")}
_PLAIN = [  # -hf prefix -> original prefix, first match wins
    ("model.diffusion_head.timestep_proj.fc1.", "model.prediction_head.t_embedder.mlp.0."),
    ("model.diffusion_head.timestep_proj.fc2.", "model.prediction_head.t_embedder.mlp.2."),
    ("model.diffusion_head.final_layer.linear_1.", "model.prediction_head.final_layer.adaLN_modulation.1."),
    ("model.diffusion_head.final_layer.linear_2.", "model.prediction_head.final_layer.linear."),
    ("model.diffusion_head.", "model.prediction_head."),
    ("model.multi_modal_projector.linear_1.", "model.acoustic_connector.fc1."),
    ("model.multi_modal_projector.act.", "model.acoustic_connector.norm."),
    ("model.multi_modal_projector.linear_2.", "model.acoustic_connector.fc2."),
    ("model.semantic_connector.linear_1.", "model.semantic_connector.fc1."),
    ("model.semantic_connector.act.", "model.semantic_connector.norm."),
    ("model.semantic_connector.linear_2.", "model.semantic_connector.fc2."),
    ("model.latent_scaling_factor", "model.speech_scaling_factor"),
    ("model.latent_bias_factor", "model.speech_bias_factor"),
]


def original_key(key: str) -> str:
    """The name a `-hf` tensor has in Microsoft's original checkpoints."""
    tower = re.fullmatch(r"model\.(audio_tower\.encoder|audio_tower\.decoder|semantic_tokenizer_encoder)\.(.+)", key)
    if tower:
        (name, sampling), rest = _TOWERS[tower[1]], tower[2]
        if rest.startswith("head.conv."):
            return f"model.{name}.head.conv.conv.{rest[len('head.conv.'):]}"
        block = re.fullmatch(r"(?:stem|conv_layers\.(\d+))\.(.+)", rest)
        stage, rest = (0 if block[1] is None else int(block[1]) + 1), block[2]
        if rest.startswith("stage."):
            return f"model.{name}.stages.{stage}.{rest[len('stage.'):].replace('mixer.conv.', 'mixer.conv.conv.conv.')}"
        return f"model.{name}.{sampling}.{stage}.0.{rest}"
    key = re.sub(r"^model\.diffusion_head\.layers\.(\d+)\.linear\.",
                 r"model.prediction_head.layers.\1.adaLN_modulation.1.", key)
    for new, old in _PLAIN:
        if key.startswith(new):
            return old + key[len(new):]
    return key


def _tokenizer_side(sub: dict) -> dict:
    return {"causal": True, "channels": sub["channels"], "conv_bias": True, "conv_norm": "none",
            "corpus_normalize": 0.0, "disable_last_norm": True, "encoder_depths": "-".join(map(str, sub["depths"])),
            "encoder_n_filters": sub["num_filters"], "encoder_ratios": sub["downsampling_ratios"][::-1],
            "layer_scale_init_value": 1e-6, "layernorm": "RMSNorm", "layernorm_elementwise_affine": True,
            "layernorm_eps": sub["rms_norm_eps"], "mixer_layer": "depthwise_conv", "pad_mode": "constant",
            "vae_dim": sub["hidden_size"], "weight_init_value": 0.01}


def original_config(hf: dict) -> dict:
    """config.json as the original code writes it (keys of the released microsoft/VibeVoice-1.5B one)."""
    audio, semantic, text, head = (hf["audio_config"], hf["semantic_model_config"], hf["text_config"],
                                   hf["diffusion_head_config"])
    acoustic = dict(_tokenizer_side(audio), model_type="vibevoice_acoustic_tokenizer", std_dist_type="gaussian",
                    fix_std=audio["vae_std"] * 0.8, decoder_depths=None, decoder_n_filters=audio["num_filters"],
                    decoder_ratios=audio["downsampling_ratios"][::-1])
    decoder = {key: text[key] for key in (
        "attention_dropout", "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
        "max_position_embeddings", "max_window_layers", "num_attention_heads", "num_hidden_layers",
        "num_key_value_heads", "rms_norm_eps", "sliding_window", "tie_word_embeddings", "use_cache",
        "use_sliding_window", "vocab_size")}
    decoder.update(model_type="qwen2", rope_scaling=None, rope_theta=text["rope_parameters"]["rope_theta"],
                   torch_dtype=hf["dtype"])
    return {
        "acoustic_vae_dim": audio["hidden_size"], "acoustic_tokenizer_config": acoustic,
        "architectures": ["VibeVoiceForConditionalGeneration"], "decoder_config": decoder,
        "diffusion_head_config": {
            "ddpm_batch_mul": 4, "ddpm_beta_schedule": "cosine", "ddpm_num_inference_steps": 20,
            "ddpm_num_steps": 1000, "diffusion_type": "ddpm",
            "head_ffn_ratio": head["intermediate_size"] / head["hidden_size"], "head_layers": head["num_hidden_layers"],
            "hidden_size": head["hidden_size"], "latent_size": head["latent_size"],
            "model_type": "vibevoice_diffusion_head", "prediction_type": "v_prediction",
            "rms_norm_eps": head["rms_norm_eps"], "speech_vae_dim": head["latent_size"]},
        "model_type": "vibevoice",
        "semantic_tokenizer_config": dict(_tokenizer_side(semantic), model_type="vibevoice_semantic_tokenizer",
                                          std_dist_type="none", fix_std=0),
        "semantic_vae_dim": semantic["hidden_size"], "torch_dtype": hf["dtype"], "transformers_version": "4.51.3",
    }


# microsoft/VibeVoice-1.5B's config.json, as released.
RELEASED_1_5B_CONFIG = {
    "acoustic_vae_dim": 64,
    "acoustic_tokenizer_config": {
        "causal": True, "channels": 1, "conv_bias": True, "conv_norm": "none", "corpus_normalize": 0.0,
        "decoder_depths": None, "decoder_n_filters": 32, "decoder_ratios": [8, 5, 5, 4, 2, 2],
        "disable_last_norm": True,
        "encoder_depths": "3-3-3-3-3-3-8", "encoder_n_filters": 32, "encoder_ratios": [8, 5, 5, 4, 2, 2],
        "fix_std": 0.5, "layer_scale_init_value": 1e-06, "layernorm": "RMSNorm", "layernorm_elementwise_affine": True,
        "layernorm_eps": 1e-05, "mixer_layer": "depthwise_conv", "model_type": "vibevoice_acoustic_tokenizer",
        "pad_mode": "constant", "std_dist_type": "gaussian", "vae_dim": 64, "weight_init_value": 0.01},
    "architectures": ["VibeVoiceForConditionalGeneration"],
    "decoder_config": {
        "attention_dropout": 0.0, "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02,
        "intermediate_size": 8960, "max_position_embeddings": 65536, "max_window_layers": 28, "model_type": "qwen2",
        "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936},
    "diffusion_head_config": {
        "ddpm_batch_mul": 4, "ddpm_beta_schedule": "cosine", "ddpm_num_inference_steps": 20, "ddpm_num_steps": 1000,
        "diffusion_type": "ddpm", "head_ffn_ratio": 3.0, "head_layers": 4, "hidden_size": 1536, "latent_size": 64,
        "model_type": "vibevoice_diffusion_head", "prediction_type": "v_prediction", "rms_norm_eps": 1e-05,
        "speech_vae_dim": 64},
    "model_type": "vibevoice",
    "semantic_tokenizer_config": {
        "causal": True, "channels": 1, "conv_bias": True, "conv_norm": "none", "corpus_normalize": 0.0,
        "disable_last_norm": True, "encoder_depths": "3-3-3-3-3-3-8", "encoder_n_filters": 32,
        "encoder_ratios": [8, 5, 5, 4, 2, 2], "fix_std": 0, "layer_scale_init_value": 1e-06, "layernorm": "RMSNorm",
        "layernorm_elementwise_affine": True, "layernorm_eps": 1e-05, "mixer_layer": "depthwise_conv",
        "model_type": "vibevoice_semantic_tokenizer", "pad_mode": "constant", "std_dist_type": "none", "vae_dim": 128,
        "weight_init_value": 0.01},
    "semantic_vae_dim": 128,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.3",
}
QWEN_TOKEN_IDS = dict(pad_token_id=151643, eos_token_id=151643, audio_bos_token_id=151652, audio_eos_token_id=151653,
                      audio_token_id=151654)


def write_original_layout(hf_dir: Path, out: Path) -> Path:
    """An original-layout folder: config, weights in two shards with an index (no lm_head when tied, as released),
    the original preprocessor config, and the Qwen tokenizer files a user copies in."""
    out.mkdir(parents=True)
    hf_config = json.loads((hf_dir / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(original_config(hf_config), indent=2))
    weights = {original_key(key): value for key, value in load_file(hf_dir / "model.safetensors").items()
               if not (key == "lm_head.weight" and hf_config["tie_word_embeddings"])}
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({key: weights[key] for key in keys}, out / shard, metadata={"format": "pt"})
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {key: shard for shard, keys in shards.items() for key in keys}}))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "processor_class": "VibeVoiceProcessor", "speech_tok_compress_ratio": 3200, "db_normalize": True,
        "audio_processor": {"feature_extractor_type": "VibeVoiceTokenizerProcessor", "sampling_rate": 24000,
                            "normalize_audio": True, "target_dB_FS": -25, "eps": 1e-06},
        "language_model_pretrained_name": "Qwen/Qwen2.5-1.5B"}))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def original_dir(tiny_checkpoint, tmp_path_factory):
    return write_original_layout(tiny_checkpoint, tmp_path_factory.mktemp("original") / "checkpoint")


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def loaded(original_dir):
    return load_checkpoint(original_dir)


@pytest.fixture
def broken_copy(original_dir, tmp_path):
    """A writable copy of the original-layout folder and its config dict, to break one thing in."""
    folder = Path(shutil.copytree(original_dir, tmp_path / "copy"))
    return folder, json.loads((folder / "config.json").read_text())


def _assert_same_model(model, reference_model):
    ours, theirs = model.state_dict(), reference_model.state_dict()
    assert ours.keys() == theirs.keys()
    different = [key for key in theirs if not torch.equal(ours[key], theirs[key])]
    assert not different


# ---- loading and converting ----

def test_original_layout_loads_to_the_same_model(loaded, reference):
    model, config = loaded.model, loaded.config
    _assert_same_model(model, reference.model)
    for name in ("eos_token_id", "pad_token_id", "audio_bos_token_id", "audio_eos_token_id", "audio_token_id",
                 "tie_word_embeddings"):
        assert getattr(config, name) == getattr(reference.config, name), name
    assert config.audio_config.vae_std == pytest.approx(0.625)
    assert config.audio_config.downsampling_ratios == [2, 2, 4, 5, 5, 8]
    assert config.diffusion_head_config.intermediate_size == reference.config.diffusion_head_config.intermediate_size
    assert model.generation_config.noise_scheduler_config["beta_schedule"] == "squaredcos_cap_v2"

    torch.manual_seed(0)
    noisy, condition, timesteps = torch.randn(3, 64), torch.randn(3, 64), torch.tensor([999.0, 500.0, 1.0])
    latents, audio = torch.randn(1, 4, 64), torch.randn(1, 1, 2 * 3200)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    ours, theirs = model.model, reference.model.model
    with torch.no_grad():
        assert torch.equal(ours.diffusion_head(noisy, timesteps, condition),
                           theirs.diffusion_head(noisy, timesteps, condition))
        assert torch.equal(ours.audio_tower.decode(latents).audio, theirs.audio_tower.decode(latents).audio)
        assert torch.equal(ours.semantic_tokenizer_encoder(audio).latents,
                           theirs.semantic_tokenizer_encoder(audio).latents)
        assert torch.equal(model(input_ids=ids).logits, reference.model(input_ids=ids).logits)


def test_processor_matches_the_original_preprocessor(loaded, reference):
    processor = loaded.processor
    extractor = processor.feature_extractor
    assert (extractor.sampling_rate, extractor.target_dB_FS, extractor.normalize_audio) == (24000, -25, True)
    assert extractor.pad_to_multiple_of == 3200
    text = " Speaker 0: Hello<|vision_start|><|vision_pad|><|vision_end|>"
    assert processor.tokenizer(text).input_ids == reference.processor.tokenizer(text).input_ids
    assert processor.chat_template == reference.processor.chat_template


def test_convert_once_then_load_as_hf(original_dir, reference, tmp_path):
    out = convert_original_checkpoint(original_dir, tmp_path / "hf")
    assert "audio_config" in json.loads((out / "config.json").read_text())  # the -hf layout
    checkpoint = load_checkpoint(out)
    _assert_same_model(checkpoint.model, reference.model)
    assert checkpoint.config.audio_config.vae_std == pytest.approx(0.625)


def test_released_1_5b_config_converts_to_the_1_5b_config():
    ours, reference = hf_config(RELEASED_1_5B_CONFIG, QWEN_TOKEN_IDS).to_dict(), config_for("1.5B").to_dict()
    for config in (ours, reference, ours["text_config"], reference["text_config"]):
        config.pop("dtype")
    assert ours == reference
    assert ours["audio_config"]["vae_std"] == 0.625
    assert ours["audio_config"]["downsampling_ratios"] == [2, 2, 4, 5, 5, 8]


def test_test_helper_writes_the_released_config_keys():
    written = original_config(config_for("1.5B").to_dict())
    assert written.keys() == RELEASED_1_5B_CONFIG.keys()
    for name, section in RELEASED_1_5B_CONFIG.items():
        if isinstance(section, dict):
            assert written[name].keys() == section.keys(), name


def test_released_key_names_map_to_hf_names():
    """Names as they appear in microsoft/VibeVoice-1.5B's model.safetensors.index.json."""
    pairs = {
        "model.acoustic_tokenizer.encoder.downsample_layers.0.0.conv.conv.weight":
            "model.audio_tower.encoder.stem.conv.conv.weight",
        "model.acoustic_tokenizer.encoder.downsample_layers.6.0.conv.conv.bias":
            "model.audio_tower.encoder.conv_layers.5.conv.conv.bias",
        "model.acoustic_tokenizer.encoder.stages.6.7.mixer.conv.conv.conv.weight":
            "model.audio_tower.encoder.conv_layers.5.stage.7.mixer.conv.weight",
        "model.acoustic_tokenizer.decoder.upsample_layers.0.0.conv.conv.weight":
            "model.audio_tower.decoder.stem.conv.conv.weight",
        "model.acoustic_tokenizer.decoder.upsample_layers.3.0.convtr.convtr.weight":
            "model.audio_tower.decoder.conv_layers.2.convtr.convtr.weight",
        "model.acoustic_tokenizer.decoder.stages.0.2.ffn_gamma": "model.audio_tower.decoder.stem.stage.2.ffn_gamma",
        "model.acoustic_tokenizer.decoder.head.conv.conv.bias": "model.audio_tower.decoder.head.conv.bias",
        "model.semantic_tokenizer.encoder.head.conv.conv.weight": "model.semantic_tokenizer_encoder.head.conv.weight",
        "model.semantic_tokenizer.encoder.stages.1.0.ffn.linear1.weight":
            "model.semantic_tokenizer_encoder.conv_layers.0.stage.0.ffn.linear1.weight",
        "model.prediction_head.t_embedder.mlp.0.weight": "model.diffusion_head.timestep_proj.fc1.weight",
        "model.prediction_head.layers.3.adaLN_modulation.1.weight": "model.diffusion_head.layers.3.linear.weight",
        "model.prediction_head.final_layer.adaLN_modulation.1.weight":
            "model.diffusion_head.final_layer.linear_1.weight",
        "model.prediction_head.final_layer.linear.weight": "model.diffusion_head.final_layer.linear_2.weight",
        "model.acoustic_connector.norm.weight": "model.multi_modal_projector.act.weight",
        "model.semantic_connector.fc2.bias": "model.semantic_connector.linear_2.bias",
        "model.speech_scaling_factor": "model.latent_scaling_factor",
        "model.language_model.layers.0.self_attn.q_proj.bias": "model.language_model.layers.0.self_attn.q_proj.bias",
    }
    assert {key: hf_key(key) for key in pairs} == pairs


def test_full_size_keys_round_trip_with_released_tensor_counts():
    """Every 1.5B tensor maps to an original name and back; per component, the counts are the released ones."""
    from transformers import VibeVoiceForConditionalGeneration

    with torch.device("meta"):
        keys = VibeVoiceForConditionalGeneration(config_for("1.5B")).state_dict().keys()
    originals = {original_key(key): key for key in keys if key != "lm_head.weight"}  # tied: not stored
    assert {original: hf_key(original) for original in originals} == originals
    assert Counter(".".join(key.split(".")[:2]) for key in originals) == {
        "model.acoustic_tokenizer": 552, "model.semantic_tokenizer": 276, "model.language_model": 338,
        "model.prediction_head": 26, "model.acoustic_connector": 5, "model.semantic_connector": 5,
        "model.speech_scaling_factor": 1, "model.speech_bias_factor": 1}


# ---- what must fail, and say why ----

def _write_config(folder: Path, config: dict) -> None:
    (folder / "config.json").write_text(json.dumps(config))


def test_config_in_neither_layout_is_rejected(tmp_path):
    _write_config(tmp_path, {"model_type": "qwen2", "hidden_size": 64})
    with pytest.raises(CheckpointError, match="model_type"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="not in the original layout"):
        convert_original_checkpoint(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("section, key", [
    ("diffusion_head_config", "head_ffn_ratio"),
    ("acoustic_tokenizer_config", "fix_std"),
    ("semantic_tokenizer_config", "encoder_depths"),
    ("decoder_config", "num_key_value_heads"),
])
def test_missing_required_field_is_named(broken_copy, section, key):
    folder, config = broken_copy
    del config[section][key]
    _write_config(folder, config)
    with pytest.raises(CheckpointError, match=rf"{section}\.{key} is missing"):
        load_checkpoint(folder)


def test_missing_sub_config_is_named(broken_copy):
    folder, config = broken_copy
    del config["semantic_tokenizer_config"]
    _write_config(folder, config)
    with pytest.raises(CheckpointError, match="semantic_tokenizer_config"):
        load_checkpoint(folder)


@pytest.mark.parametrize("section, key, value", [
    ("acoustic_tokenizer_config", "decoder_ratios", [2, 2, 4, 5, 5, 8]),
    ("acoustic_tokenizer_config", "std_dist_type", "fix"),
    ("semantic_tokenizer_config", "mixer_layer", "conv"),
    ("diffusion_head_config", "hidden_size", 32),
    ("diffusion_head_config", "prediction_type", "epsilon"),
])
def test_unconvertible_value_is_named(broken_copy, section, key, value):
    folder, config = broken_copy
    config[section][key] = value
    _write_config(folder, config)
    with pytest.raises(CheckpointError, match=rf"{section}\.{key} is"):
        load_checkpoint(folder)


def _edit_tensors(folder: Path, changes: dict) -> None:
    """Set tensors in the shards (None deletes one), keeping the index right."""
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    for key, value in changes.items():
        shard = folder / index["weight_map"].setdefault(key, "model-00001-of-00002.safetensors")
        weights = load_file(shard)
        if value is None:
            del weights[key], index["weight_map"][key]
        else:
            weights[key] = value
        save_file(weights, shard, metadata={"format": "pt"})
    index_file.write_text(json.dumps(index))


def test_missing_and_unexpected_tensors_are_named(broken_copy):
    folder, _ = broken_copy
    dropped = "model.acoustic_tokenizer.decoder.stages.0.0.ffn_norm.weight"
    _edit_tensors(folder, {dropped: None, "model.prediction_head.extra.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(folder)
    message = str(error.value)
    assert "missing (1, -hf names): model.audio_tower.decoder.stem.stage.0.ffn_norm.weight" in message
    assert "unexpected (1): model.prediction_head.extra.weight" in message


def test_wrong_tensor_shape_is_named(broken_copy):
    folder, _ = broken_copy
    _edit_tensors(folder, {"model.speech_bias_factor": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="wrong shape: .*model.latent_bias_factor"):
        load_checkpoint(folder)


def test_missing_shard_is_named(broken_copy):
    folder, _ = broken_copy
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors"):
        load_checkpoint(folder)


@pytest.mark.parametrize("qwen_name, reason", [
    (None, "names no language_model_pretrained_name"),
    ("not a repo id", "the hub could not provide not a repo id"),  # rejected before any network access
])
def test_missing_tokenizer_says_which_files_to_copy(broken_copy, qwen_name, reason):
    folder, _ = broken_copy
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    preprocessor["language_model_pretrained_name"] = qwen_name
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(folder)
    assert reason in str(error.value)
    assert "copy tokenizer.json, tokenizer_config.json, vocab.json and merges.txt" in str(error.value)


# ---- released sizes ----

@pytest.mark.parametrize("size, expected", [
    # LM: Qwen2.5-1.5B (1.54B, tied) / Qwen2.5-7B (7.61B with its untied lm_head), as their model cards give them.
    ("1.5B", {"lm": 1.54e9, "diffusion_head": 123e6, "acoustic_encoder": 344e6, "acoustic_decoder": 344e6,
              "semantic_encoder": 345e6}),
    ("7B", {"lm": 7.61e9, "diffusion_head": 669e6, "acoustic_encoder": 344e6, "acoustic_decoder": 344e6,
            "semantic_encoder": 345e6}),
])
def test_released_sizes_have_the_reference_parameter_counts(size, expected):
    from transformers import VibeVoiceForConditionalGeneration

    with torch.device("meta"):
        model = VibeVoiceForConditionalGeneration(config_for(size))
    inner = model.model

    def count(*modules):
        return sum(p.numel() for p in {id(p): p for m in modules for p in m.parameters()}.values())

    counts = {"lm": count(inner.language_model, model.lm_head), "diffusion_head": count(inner.diffusion_head),
              "acoustic_encoder": count(inner.audio_tower.encoder),
              "acoustic_decoder": count(inner.audio_tower.decoder),
              "semantic_encoder": count(inner.semantic_tokenizer_encoder)}
    assert counts == {name: pytest.approx(value, rel=0.03) for name, value in expected.items()}
