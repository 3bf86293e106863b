"""VibeVoice checkpoints: random-weight ones at tiny and released sizes, and loading a folder or hub id."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import CheckpointError

SIZES = ("tiny", "1.5B", "7B")
CHAT_TEMPLATE = (Path(__file__).with_name("chat_template.jinja")).read_text()

# Qwen2.5's ids for the four tokens VibeVoice generates; a tiny checkpoint gets its own small ids.
SPECIAL_TOKENS = ("<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")
HF_SUB_CONFIGS = ("text_config", "audio_config", "semantic_model_config", "diffusion_head_config")


@dataclass
class Checkpoint:
    """A loaded VibeVoice model (eval mode) with its processor."""

    model: "torch.nn.Module"
    processor: object
    source: str

    @property
    def config(self):
        return self.model.config


def _byte_level_tokenizer(special_ids: list[int] | None = None):
    """A Qwen2 byte-level BPE tokenizer with no merges: 256 byte tokens plus VibeVoice's special tokens, at the
    given ids (Qwen2.5's for the released sizes, so prompts index the real embedding rows) or right after the bytes."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    special_ids = special_ids or list(range(len(vocab), len(vocab) + len(SPECIAL_TOKENS)))
    vocab.update(zip(SPECIAL_TOKENS, special_ids))
    return Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=list(SPECIAL_TOKENS[1:]))


def config_for(size: str, vocab_size: int | None = None, special_ids: dict | None = None):
    """The VibeVoiceConfig of a size. `VibeVoiceConfig()` alone would be a 13.6B model, so every field is explicit."""
    from transformers import Qwen2Config, VibeVoiceConfig

    rope = {"rope_type": "default", "rope_theta": 1e6}
    if size == "1.5B":  # Qwen2.5-1.5B backbone, as released
        text = Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                           num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                           max_position_embeddings=65536, rope_parameters=rope)
        return VibeVoiceConfig(text_config=text.to_dict(), diffusion_head_config={"intermediate_size": 4608})
    if size == "7B":  # Qwen2.5-7B backbone, as released
        text = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                           num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                           max_position_embeddings=32768, rope_parameters=rope)
        return VibeVoiceConfig(text_config=text.to_dict(), diffusion_head_config={"intermediate_size": 10752})
    if size == "tiny":  # every component at toy width; the hop (3200) and latent widths stay real
        text = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=vocab_size, tie_word_embeddings=True,
                           max_position_embeddings=8192, rope_parameters=rope)
        tokenizer_side = dict(num_filters=4, depths=[1] * 7, kernel_size=7)
        return VibeVoiceConfig(
            text_config=text.to_dict(),
            audio_config=dict(hidden_size=64, **tokenizer_side),
            semantic_model_config=dict(model_type="vibevoice_acoustic_tokenizer_encoder", hidden_size=128,
                                       **tokenizer_side),
            diffusion_head_config={"intermediate_size": 96, "num_hidden_layers": 2},
            **special_ids,
        )
    raise CheckpointError(f"unknown checkpoint size {size!r}; expected one of {', '.join(SIZES)}")


def random_checkpoint(size: str, seed: int = 0, device: str | torch.device = "cpu") -> Checkpoint:
    """A random-weight model of `size` with its processor, built directly on `device` (fp32)."""
    from transformers import (VibeVoiceAcousticTokenizerFeatureExtractor, VibeVoiceForConditionalGeneration,
                              VibeVoiceProcessor)

    if size == "tiny":
        tokenizer = _byte_level_tokenizer()
        ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in zip(
            ("eos_token_id", "audio_bos_token_id", "audio_eos_token_id", "audio_token_id"), SPECIAL_TOKENS)}
        config = config_for(size, vocab_size=len(tokenizer), special_ids=dict(pad_token_id=ids["eos_token_id"], **ids))
    else:
        config = config_for(size)
        tokenizer = _byte_level_tokenizer([config.eos_token_id, config.audio_bos_token_id, config.audio_eos_token_id,
                                           config.audio_token_id])
    torch.manual_seed(seed)
    with torch.device(device):
        model = VibeVoiceForConditionalGeneration(config).eval()
    if size == "tiny":
        _liven_tiny_weights(model)
    model.generation_config.noise_scheduler_class = "DPMSolverMultistepScheduler"
    model.generation_config.noise_scheduler_config = {"beta_schedule": "squaredcos_cap_v2",
                                                      "prediction_type": "v_prediction"}
    processor = VibeVoiceProcessor(feature_extractor=VibeVoiceAcousticTokenizerFeatureExtractor(),
                                   tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    return Checkpoint(model=model, processor=processor, source=f"random {size} (seed {seed})")


def make_checkpoint(size: str, out: str | Path, seed: int = 0) -> Path:
    """Build a random-weight checkpoint saved like a released `-hf` one (model, processor, chat template)."""
    checkpoint = random_checkpoint(size, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.model.save_pretrained(out)
    checkpoint.processor.save_pretrained(out)
    return out


def _liven_tiny_weights(model) -> None:
    """Make a random tiny model's signals audible: transformers initialises convolutions at std 0.01 and the
    ConvNeXt layer scales at 1e-6, so a toy-width tokenizer would output audio near 1e-5 of full scale."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                fan_in = module.weight.shape[1] * module.weight.shape[2] * (module.groups if isinstance(
                    module, torch.nn.ConvTranspose1d) else 1)
                module.weight.normal_(0.0, fan_in ** -0.5)
        for name, param in model.named_parameters():
            if name.endswith("gamma"):
                param.fill_(0.5)
        model.model.latent_scaling_factor.fill_(0.8)
        model.model.latent_bias_factor.fill_(0.1)


def checkpoint_fingerprint(path_or_id: str | Path) -> str:
    """A short id of a checkpoint's content (a local folder's files, hashed) or of its hub id. Voice latents are
    tied to it: latents from one model's acoustic encoder mean nothing to another."""
    folder = Path(path_or_id)
    digest = hashlib.sha256()
    if not folder.is_dir():
        digest.update(f"hub:{path_or_id}".encode())
        return digest.hexdigest()[:16]
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(folder)).encode() + b"\0")
        with open(file, "rb") as opened:
            for block in iter(lambda: opened.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def is_original_layout(config_dict: dict) -> bool:
    """Microsoft's original layout names its sub-configs differently from transformers' `-hf` layout."""
    return "acoustic_tokenizer_config" in config_dict or "decoder_config" in config_dict


def _read_config_dict(path_or_id: str) -> dict:
    local = Path(path_or_id)
    if local.is_dir():
        config_file = local / "config.json"
        if not config_file.exists():
            raise CheckpointError(f"{path_or_id}: no config.json; expected a VibeVoice checkpoint folder")
        return json.loads(config_file.read_text())
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(path_or_id, "config.json")).read_text())
    except Exception as exc:  # network, unknown repo, offline mode: all mean the same to the caller
        raise CheckpointError(f"{path_or_id}: not a local folder, and the hub could not provide it ({exc})") from exc


def load_checkpoint(path_or_id: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Load a `-hf` layout checkpoint (folder or hub id); an original-layout one is converted on the fly."""
    from transformers import AutoProcessor, VibeVoiceConfig, VibeVoiceForConditionalGeneration

    source = str(path_or_id)
    config_dict = _read_config_dict(source)
    if is_original_layout(config_dict):
        from engine.convert_original import load_original_checkpoint

        model, processor = load_original_checkpoint(source, config_dict, dtype=dtype)
        return Checkpoint(model=model.to(device).eval(), processor=processor, source=source)
    if config_dict.get("model_type") != "vibevoice":
        raise CheckpointError(f"{source}: model_type is {config_dict.get('model_type')!r}, not 'vibevoice'")
    missing = [key for key in HF_SUB_CONFIGS if not isinstance(config_dict.get(key), dict)]
    if missing:  # transformers would fill them with defaults of another size (a 13.6B LM): refuse instead
        raise CheckpointError(f"{source}: config.json lacks {', '.join(missing)}; a VibeVoice -hf checkpoint "
                              "carries every sub-config")
    config = VibeVoiceConfig.from_pretrained(source)
    model = VibeVoiceForConditionalGeneration.from_pretrained(source, config=config, dtype=dtype)
    try:
        processor = AutoProcessor.from_pretrained(source)
    except Exception as exc:
        raise CheckpointError(f"{source}: the processor (tokenizer, feature extractor) could not be loaded: {exc}")
    return Checkpoint(model=model.to(device).eval(), processor=processor, source=source)
