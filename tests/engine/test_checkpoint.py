"""Checkpoints load exactly as saved, and folders that would load as a wrong model are refused."""
import json

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.errors import CheckpointError


def test_tiny_checkpoint_round_trips(tiny_checkpoint):
    first, second = load_checkpoint(tiny_checkpoint), load_checkpoint(tiny_checkpoint)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert first.processor.tokenizer.convert_tokens_to_ids("<|vision_pad|>") == first.config.audio_token_id


@pytest.mark.parametrize("drop", ["text_config", "audio_config", "semantic_model_config", "diffusion_head_config"])
def test_missing_sub_config_is_refused_not_defaulted(tiny_checkpoint, tmp_path, drop):
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    del config[drop]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"lacks {drop}"):
        load_checkpoint(tmp_path)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)


def test_released_size_tokenizer_uses_qwen_special_token_ids():
    from engine.checkpoint import _byte_level_tokenizer, config_for

    config = config_for("1.5B")
    ids = [config.eos_token_id, config.audio_bos_token_id, config.audio_eos_token_id, config.audio_token_id]
    assert ids == [151643, 151652, 151653, 151654]
    tokenizer = _byte_level_tokenizer(ids)
    encoded = tokenizer(" Speaker 0:<|vision_start|><|vision_pad|><|vision_pad|><|vision_end|>")["input_ids"]
    assert encoded[-4:] == [151652, 151654, 151654, 151653]
    assert max(encoded) < config.text_config.vocab_size
