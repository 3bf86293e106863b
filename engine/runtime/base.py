"""What every runtime offers the frame loop: the network's pieces as calls on torch tensors, plus the model's shape."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from engine.network import ConvCacheSpec
from engine.sampler import solve


@dataclass(frozen=True)
class ModelSpec:
    """Everything the frame loop needs to know about a checkpoint, without its weights."""

    hidden_size: int
    num_layers: int
    kv_heads: int
    head_dim: int
    latent_dim: int
    semantic_dim: int
    vocab_size: int
    token_ids: tuple[int, ...]  # the tokens the LM may emit, ascending (the order of `lm` logits)
    audio_bos_id: int
    audio_eos_id: int
    audio_token_id: int
    eos_id: int
    vae_std: float
    latent_scale: float
    latent_bias: float
    decoder_caches: tuple[ConvCacheSpec, ...] = field(default_factory=tuple)
    semantic_caches: tuple[ConvCacheSpec, ...] = field(default_factory=tuple)

    @classmethod
    def from_model(cls, model) -> "ModelSpec":
        from engine.network import conv_cache_specs

        cfg = model.config
        text = cfg.text_config
        ids = (cfg.audio_bos_token_id, cfg.audio_eos_token_id, cfg.audio_token_id, cfg.eos_token_id)
        return cls(
            hidden_size=text.hidden_size, num_layers=text.num_hidden_layers, kv_heads=text.num_key_value_heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
            latent_dim=cfg.audio_config.hidden_size, semantic_dim=cfg.semantic_model_config.hidden_size,
            vocab_size=text.vocab_size, token_ids=tuple(sorted(set(ids))),
            audio_bos_id=cfg.audio_bos_token_id, audio_eos_id=cfg.audio_eos_token_id,
            audio_token_id=cfg.audio_token_id, eos_id=cfg.eos_token_id, vae_std=float(cfg.audio_config.vae_std),
            latent_scale=model.model.latent_scaling_factor.item(), latent_bias=model.model.latent_bias_factor.item(),
            decoder_caches=tuple(conv_cache_specs(model.model.audio_tower.decoder)),
            semantic_caches=tuple(conv_cache_specs(model.model.semantic_tokenizer_encoder)),
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelSpec":
        data = dict(data)
        for key in ("decoder_caches", "semantic_caches"):
            data[key] = tuple(ConvCacheSpec(**c) for c in data[key])
        data["token_ids"] = tuple(data["token_ids"])
        return cls(**data)


class Runtime:
    """The network's pieces. Tensors in and out are torch tensors on `device` in `dtype` (ids and positions int64).

    embed(ids [...]) -> [..., H]
    lm(embeds [B,S,H], positions [B,S], past_k, past_v [layers,B,kv,T,d], past_valid [B,T] bool)
        -> hidden [B,S,H], logits [B,S,len(token_ids)], new_k, new_v [layers,B,kv,S,d]
    diffusion_head(noisy [B,D], timesteps [B], condition [B,H]) -> v [B,D]
    solve(noise [B,D], cond_pos, cond_neg [B,H], cfg [B], table [B,steps,6]) -> latents [B,D]: the guided
        diffusion solve (engine.sampler.solve) over diffusion_head
    acoustic_connector(latents [N,D]) -> [N,H];  semantic_connector(semantic [N,D']) -> [N,H]
    decode(latents [B,D,1], *caches) -> (audio [B,1,3200], *caches)
    semantic(audio [B,1,3200], *caches) -> (semantic [B,1,D'], *caches)
    encode_voice(audio [S,1,N]) -> mean latents [S,N/3200,D]
    prefill(embeds [B,S,H]) -> lm's outputs for prompts at positions 0..S-1 with no past (right-padded: causal
        attention keeps the padding out of every real token)
    lm_cached(embeds [R,H], positions [R], keys, values [layers,rows,kv,T,d], context) -> hidden [R,H], logits [R,V']
        one new token per row for the first R rows of a static KV cache, written in place at `positions`;
        attention reads positions < `context` (> every position)
    """

    name: str
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype

    def solve(self, noise, cond_pos, cond_neg, cfg, table):
        """Through `diffusion_head`, one call per step (runtimes that hold the head as one graph)."""
        return solve(self.diffusion_head, noise, cond_pos, cond_neg, cfg, table)

    def prefill(self, embeds):
        """Through `lm` with an empty past."""
        spec, (batch, length, _) = self.spec, embeds.shape
        empty = torch.zeros(spec.num_layers, batch, spec.kv_heads, 0, spec.head_dim, dtype=self.dtype,
                            device=self.device)
        positions = torch.arange(length, device=self.device)[None].expand(batch, length)
        return self.lm(embeds, positions, empty, empty, torch.zeros(batch, 0, dtype=torch.bool, device=self.device))

    def lm_cached(self, embeds, positions, keys, values, context: int):
        """Through `lm` over the cache's live prefix (runtimes whose graphs cannot write in place)."""
        rows = embeds.shape[0]
        past = int(positions.max())
        valid = torch.arange(past, device=self.device)[None] < positions[:, None]
        hidden, logits, new_k, new_v = self.lm(embeds[:, None], positions[:, None], keys[:, :rows, :, :past],
                                               values[:, :rows, :, :past], valid)
        index = torch.arange(rows, device=self.device)
        # advanced indices on dims 1 and 3 put the row dimension first: [rows, layers, kv_heads, head_dim]
        keys[:, index, :, positions] = new_k[:, :, :, 0].transpose(0, 1)
        values[:, index, :, positions] = new_v[:, :, :, 0].transpose(0, 1)
        return hidden[:, 0], logits[:, 0]

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({str(self.dtype).removeprefix('torch.')})"

