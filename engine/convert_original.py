"""Load a checkpoint in Microsoft's original VibeVoice layout into transformers' `-hf` classes, or convert it once."""
from __future__ import annotations

import json
import re
from contextlib import ExitStack
from pathlib import Path

import torch

from engine.checkpoint import CHAT_TEMPLATE, SPECIAL_TOKENS, is_original_layout
from engine.errors import CheckpointError

# Fixed in the original code (not config fields): ConvNeXt kernel, FFN width and activation, timestep embedding.
_KERNEL_SIZE, _FFN_EXPANSION, _FREQUENCY_EMBEDDING_SIZE, _MAX_PERIOD = 7, 4, 256, 10000

# Acoustic/semantic tokenizer options transformers' version has fixed at these values; each is also the original
# default, so an absent key is fine and a different value cannot be converted.
_TOKENIZER_OPTIONS = {"causal": True, "conv_bias": True, "conv_norm": "none", "pad_mode": "constant",
                      "mixer_layer": "depthwise_conv", "layernorm": "RMSNorm", "layernorm_elementwise_affine": True,
                      "disable_last_norm": True, "kernel_size": _KERNEL_SIZE, "last_kernel_size": _KERNEL_SIZE,
                      "trim_right_ratio": 1.0}
_QWEN2_SHAPE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "max_position_embeddings", "rms_norm_eps")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")

_TOWERS = {"acoustic_tokenizer.encoder": "audio_tower.encoder", "acoustic_tokenizer.decoder": "audio_tower.decoder",
           "semantic_tokenizer.encoder": "semantic_tokenizer_encoder"}
# downsample_layers/upsample_layers/stages count from the stem (0); transformers names the stem apart.
_TOKENIZER_STAGE = re.compile(r"model\.(acoustic_tokenizer\.encoder|acoustic_tokenizer\.decoder|"
                              r"semantic_tokenizer\.encoder)\.(downsample_layers|upsample_layers|stages)"
                              r"\.(\d+)\.(\d+)\.(.+)")
# Applied in order, every one that matches.
_RENAMES = [(re.compile(pattern), replacement) for pattern, replacement in (
    (r"^model\.acoustic_tokenizer\.", "model.audio_tower."),
    (r"^model\.semantic_tokenizer\.encoder\.", "model.semantic_tokenizer_encoder."),
    (r"^(model\.(?:audio_tower\.encoder|audio_tower\.decoder|semantic_tokenizer_encoder))\.head\.conv\.conv\.",
     r"\1.head.conv."),
    (r"^model\.prediction_head\.t_embedder\.mlp\.0\.", "model.prediction_head.timestep_proj.fc1."),
    (r"^model\.prediction_head\.t_embedder\.mlp\.2\.", "model.prediction_head.timestep_proj.fc2."),
    (r"^model\.prediction_head\.layers\.(\d+)\.adaLN_modulation\.1\.", r"model.prediction_head.layers.\1.linear."),
    (r"^model\.prediction_head\.final_layer\.linear\.", "model.prediction_head.final_layer.linear_2."),
    (r"^model\.prediction_head\.final_layer\.adaLN_modulation\.1\.", "model.prediction_head.final_layer.linear_1."),
    (r"^model\.prediction_head\.", "model.diffusion_head."),
    (r"^model\.acoustic_connector\.", "model.multi_modal_projector."),
    (r"^(model\.(?:multi_modal_projector|semantic_connector))\.fc1\.", r"\1.linear_1."),
    (r"^(model\.(?:multi_modal_projector|semantic_connector))\.norm\.", r"\1.act."),
    (r"^(model\.(?:multi_modal_projector|semantic_connector))\.fc2\.", r"\1.linear_2."),
    (r"^model\.speech_(scaling|bias)_factor$", r"model.latent_\1_factor"),
)]


def hf_key(key: str) -> str:
    """The `-hf` name of an original state-dict key (unknown keys come back unchanged)."""
    match = _TOKENIZER_STAGE.fullmatch(key)
    if match:
        tower, kind, stage, index, rest = match.groups()
        block = "stem" if stage == "0" else f"conv_layers.{int(stage) - 1}"
        if kind == "stages":  # the original wraps the depthwise conv three deep (Convlayer > SConv1d > NormConv1d)
            rest = rest.replace("mixer.conv.conv.conv.", "mixer.conv.")
            return f"model.{_TOWERS[tower]}.{block}.stage.{index}.{rest}"
        return f"model.{_TOWERS[tower]}.{block}.{rest}"  # `conv.conv.*` / `convtr.convtr.*` on both sides
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _require(section: dict, key: str, where: str):
    if section.get(key) is None:
        raise CheckpointError(f"config.json {where}.{key} is missing; the original layout needs it")
    return section[key]


def _section(config_dict: dict, name: str) -> dict:
    section = config_dict.get(name)
    if not isinstance(section, dict):
        raise CheckpointError(f"config.json has no {name} object; an original-layout checkpoint needs one")
    return section


def _depths(value) -> list[int] | None:
    """Stage depths, which the original writes as "3-3-3-3-3-3-8" (None stays None)."""
    if isinstance(value, str):
        return [int(depth) for depth in value.split("-")]
    return None if value is None else list(value)


def _tokenizer_config(section: dict, where: str, std_dist_type: str) -> dict:
    """transformers' acoustic-tokenizer config fields for an original acoustic or semantic tokenizer config."""
    for key, supported in {**_TOKENIZER_OPTIONS, "std_dist_type": std_dist_type}.items():
        if key in section and section[key] != supported:
            raise CheckpointError(f"config.json {where}.{key} is {section[key]!r}; only {supported!r} can be converted")
    depths = _depths(_require(section, "encoder_depths", where))
    ratios = list(_require(section, "encoder_ratios", where))
    if len(depths) != len(ratios) + 1:
        raise CheckpointError(f"config.json {where}.encoder_depths has {len(depths)} stages; expected one more than "
                              f"the {len(ratios)} encoder_ratios")
    return dict(channels=section.get("channels", 1), hidden_size=_require(section, "vae_dim", where),
                num_filters=_require(section, "encoder_n_filters", where), depths=depths,
                downsampling_ratios=ratios[::-1],  # the original encoder walks encoder_ratios backwards
                rms_norm_eps=section.get("layernorm_eps", 1e-5), kernel_size=_KERNEL_SIZE,
                ffn_expansion=_FFN_EXPANSION, hidden_act="gelu")


def _acoustic_config(section: dict) -> dict:
    where = "acoustic_tokenizer_config"
    fields = _tokenizer_config(section, where, std_dist_type="gaussian")
    # transformers' decoder mirrors the encoder; the original may shape its decoder otherwise (None: mirrored).
    mirrored = (("decoder_n_filters", _require(section, "decoder_n_filters", where), fields["num_filters"]),
                ("decoder_ratios", section.get("decoder_ratios"), fields["downsampling_ratios"][::-1]),
                ("decoder_depths", _depths(section.get("decoder_depths")), fields["depths"][::-1]))
    for key, value, expected in mirrored:
        if value is not None and value != expected:
            raise CheckpointError(f"config.json {where}.{key} is {section[key]!r}; only a decoder mirroring the "
                                  f"encoder ({expected!r}) can be converted")
    # The original draws the per-item noise scale from N(0, fix_std / 0.8); transformers calls that scale vae_std.
    return dict(fields, vae_std=float(_require(section, "fix_std", where)) / 0.8)


def _text_config(section: dict):
    from transformers import Qwen2Config

    where = "decoder_config"
    if section.get("model_type") != "qwen2":
        raise CheckpointError(f"config.json {where}.model_type is {section.get('model_type')!r}; expected 'qwen2'")
    for key in _QWEN2_SHAPE:
        _require(section, key, where)
    if section.get("rope_theta") is None and section.get("rope_parameters") is None:
        raise CheckpointError(f"config.json {where}.rope_theta is missing; the original layout needs it")
    fields = {key: value for key, value in section.items() if key != "torch_dtype"}
    fields["tie_word_embeddings"] = section.get("tie_word_embeddings", False)  # Qwen2's default, then and now
    return Qwen2Config(**fields, dtype=section.get("torch_dtype"))


def hf_config(config_dict: dict, token_ids: dict):
    """The `VibeVoiceConfig` of an original-layout config.json, every sub-config explicit.

    `token_ids`: eos/pad/audio ids, which the original keeps in its tokenizer rather than in config.json."""
    from transformers import VibeVoiceConfig

    text = _text_config(_section(config_dict, "decoder_config"))
    acoustic = _acoustic_config(_section(config_dict, "acoustic_tokenizer_config"))
    semantic = _tokenizer_config(_section(config_dict, "semantic_tokenizer_config"), "semantic_tokenizer_config",
                                 std_dist_type="none")
    head, where = _section(config_dict, "diffusion_head_config"), "diffusion_head_config"
    for key, expected in (("hidden_size", text.hidden_size), ("latent_size", acoustic["hidden_size"])):
        if _require(head, key, where) != expected:
            raise CheckpointError(f"config.json {where}.{key} is {head[key]}; expected {expected} to match the "
                                  f"{'language model' if key == 'hidden_size' else 'acoustic tokenizer'}")
    diffusion = dict(num_hidden_layers=_require(head, "head_layers", where),
                     intermediate_size=int(text.hidden_size * _require(head, "head_ffn_ratio", where)),
                     rms_norm_eps=head.get("rms_norm_eps", 1e-5), hidden_act="silu", mlp_bias=False,
                     frequency_embedding_size=_FREQUENCY_EMBEDDING_SIZE, diffusion_max_period=_MAX_PERIOD)
    return VibeVoiceConfig(text_config=text.to_dict(), dtype=config_dict.get("torch_dtype"),
                           audio_config=dict(model_type="vibevoice_acoustic_tokenizer", **acoustic),
                           semantic_model_config=dict(model_type="vibevoice_acoustic_tokenizer_encoder", **semantic),
                           diffusion_head_config=diffusion, **token_ids)


def _noise_scheduler_config(config_dict: dict) -> dict:
    head, where = config_dict["diffusion_head_config"], "diffusion_head_config"
    prediction, schedule = head.get("prediction_type", "v_prediction"), head.get("ddpm_beta_schedule", "cosine")
    if prediction != "v_prediction":
        raise CheckpointError(f"config.json {where}.prediction_type is {prediction!r}; only 'v_prediction' "
                              f"is supported")
    if schedule != "cosine":
        raise CheckpointError(f"config.json {where}.ddpm_beta_schedule is {schedule!r}; only 'cosine' is supported")
    return {"beta_schedule": "squaredcos_cap_v2", "prediction_type": prediction,  # diffusers' name for it
            "num_train_timesteps": head.get("ddpm_num_steps", 1000)}


def _has_vocabulary(folder: Path) -> bool:
    files = {path.name for path in folder.iterdir()}
    return "tokenizer.json" in files or {"vocab.json", "merges.txt"} <= files


def _tokenizer(folder: Path, preprocessor: dict):
    """Tokenizer files in the folder, else those of the Qwen model the original preprocessor config names (hub)."""
    from transformers import Qwen2Tokenizer

    name = preprocessor.get("language_model_pretrained_name")
    source, reason = folder, None
    if not _has_vocabulary(folder):
        reason = "preprocessor_config.json names no language_model_pretrained_name"
        if name:
            try:
                from huggingface_hub import snapshot_download

                source = Path(snapshot_download(name, allow_patterns=list(_TOKENIZER_FILES)))
                reason = None if _has_vocabulary(source) else f"{name} on the hub has no tokenizer files"
            except Exception as exc:  # offline, no network, unknown repo: the remedy is the same
                reason = f"the hub could not provide {name}: {exc}"
    if reason is None:
        try:
            return Qwen2Tokenizer.from_pretrained(str(source))
        except Exception as exc:
            reason = f"the tokenizer files in {source} could not be loaded: {exc}"
    qwen = name or "Qwen/Qwen2.5-1.5B or Qwen/Qwen2.5-7B"
    raise CheckpointError(f"no usable tokenizer ({reason}); copy {', '.join(_TOKENIZER_FILES[:-1])} and "
                          f"{_TOKENIZER_FILES[-1]} of {qwen} into the checkpoint folder")


def _special_token_ids(tokenizer, vocab_size: int) -> dict:
    ids, vocab = {}, tokenizer.get_vocab()
    for name, token in zip(("eos_token_id", "audio_bos_token_id", "audio_eos_token_id", "audio_token_id"),
                           SPECIAL_TOKENS):
        token_id = vocab.get(token)
        if token_id is None or not 0 <= token_id < vocab_size:
            raise CheckpointError(f"the tokenizer has no usable id for {token} (got {token_id}); expected a Qwen2.5 "
                                  f"tokenizer whose ids fit the model's {vocab_size} embeddings")
        ids[name] = token_id
    return dict(pad_token_id=ids["eos_token_id"], **ids)


def _processor(preprocessor: dict, tokenizer, hop_length: int):
    from transformers import VibeVoiceAcousticTokenizerFeatureExtractor, VibeVoiceProcessor

    audio = preprocessor.get("audio_processor", {})
    ratio = preprocessor.get("speech_tok_compress_ratio", hop_length)
    if ratio != hop_length:
        raise CheckpointError(f"preprocessor_config.json speech_tok_compress_ratio is {ratio}; the acoustic "
                              f"tokenizer's hop is {hop_length}")
    # db_normalize is the switch the original applies to voice prompts (-25 dBFS, like audio_processor's level).
    features = VibeVoiceAcousticTokenizerFeatureExtractor(
        sampling_rate=audio.get("sampling_rate", 24000), normalize_audio=preprocessor.get("db_normalize", True),
        target_dB_FS=audio.get("target_dB_FS", -25), eps=audio.get("eps", 1e-6), pad_to_multiple_of=hop_length)
    return VibeVoiceProcessor(feature_extractor=features, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _weight_files(folder: Path) -> list[Path]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        index = folder / f"{name}.index.json"
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [shard for shard in shards if not (folder / shard).exists()]
            if missing:
                raise CheckpointError(f"{index.name} lists shards that are not in the folder: {', '.join(missing)}")
            return [folder / shard for shard in shards]
        if (folder / name).exists():
            return [folder / name]
    raise CheckpointError("no weights; expected model.safetensors, model.safetensors.index.json with its shards, "
                          "or pytorch_model.bin")


def _read_weights(files: list[Path], stack: ExitStack) -> dict:
    from safetensors import safe_open

    weights = {}
    for file in files:
        if file.suffix == ".safetensors":  # lazy slices: each tensor is read only when it is loaded
            handle = stack.enter_context(safe_open(str(file), framework="pt"))
            weights.update({key: handle.get_slice(key) for key in handle.keys()})
        else:
            weights.update(torch.load(file, map_location="cpu", weights_only=True))
    return weights


def _local_folder(source: str) -> Path:
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as exc:
        raise CheckpointError(f"not a local folder, and the hub could not provide it ({exc})") from exc


def _listing(keys, limit: int = 10) -> str:
    keys = sorted(map(str, keys))
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _load(source: str, config_dict: dict, dtype):
    from transformers import VibeVoiceForConditionalGeneration

    folder = _local_folder(source)
    preprocessor = _read_json(folder / "preprocessor_config.json")
    tokenizer = _tokenizer(folder, preprocessor)
    vocab_size = _require(_section(config_dict, "decoder_config"), "vocab_size", "decoder_config")
    config = hf_config(config_dict, _special_token_ids(tokenizer, vocab_size))
    scheduler = _noise_scheduler_config(config_dict)
    processor = _processor(preprocessor, tokenizer, config.audio_config.hop_length)
    with ExitStack() as stack:
        original = _read_weights(_weight_files(folder), stack)
        weights = {hf_key(key): value for key, value in original.items()}
        if config.tie_word_embeddings:  # the original ties lm_head to the embeddings too, whatever is stored
            weights.pop("lm_head.weight", None)
        model, info = VibeVoiceForConditionalGeneration.from_pretrained(
            None, config=config, state_dict=weights, dtype=dtype, ignore_mismatched_sizes=True,
            output_loading_info=True)
    original_name = {hf_key(key): key for key in original}
    problems = []
    if info["missing_keys"]:
        problems.append(f"missing ({len(info['missing_keys'])}, -hf names): {_listing(info['missing_keys'])}")
    if info["unexpected_keys"]:
        names = [original_name.get(key, key) for key in info["unexpected_keys"]]
        problems.append(f"unexpected ({len(names)}): {_listing(names)}")
    if info["mismatched_keys"]:
        problems.append("wrong shape: " + _listing(f"{key} (stored {list(stored)}, expected {list(expected)})"
                                                   for key, stored, expected in info["mismatched_keys"]))
    if problems:
        raise CheckpointError("the weights do not match config.json; " + "; ".join(problems))
    model.generation_config.noise_scheduler_class = "DPMSolverMultistepScheduler"
    model.generation_config.noise_scheduler_config = scheduler
    return model.eval(), processor


def load_original_checkpoint(source: str, config_dict: dict, dtype=torch.float32):
    """(model, processor) for an original-layout checkpoint folder or hub id whose config.json is `config_dict`.
    `dtype` may be "auto" to keep the stored one."""
    try:
        return _load(source, config_dict, dtype)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc.__cause__


def convert_original_checkpoint(src_dir: str | Path, out_dir: str | Path, dtype=None) -> Path:
    """Write an original-layout checkpoint folder as a `-hf` one (weights in their stored dtype unless given)."""
    config_file = Path(src_dir) / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{src_dir}: no config.json; expected an original-layout VibeVoice checkpoint folder")
    config_dict = json.loads(config_file.read_text())
    if not is_original_layout(config_dict):
        raise CheckpointError(f"{src_dir}: config.json is not in the original layout (no acoustic_tokenizer_config "
                              f"or decoder_config); it is already in the -hf layout and loads as it is")
    model, processor = load_original_checkpoint(str(src_dir), config_dict, dtype=dtype or "auto")
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
