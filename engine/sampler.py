"""DPM-Solver++ (2M, v-prediction, cosine betas): VibeVoice's diffusion sampler, with no diffusers at run time.

The schedule is reduced to per-step coefficient tables, so one batched solve can serve requests that asked for
different step counts: each row reads its own table, and rows with fewer steps are padded with identity steps.
Each step is  x0 = alpha * x - sigma * v;  x <- a * x + b * x0 + c * (x0 - previous x0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class Schedule:
    """Per-step tables for one step count, each of length `steps`."""

    timesteps: np.ndarray  # the diffusion head's timestep input
    alpha: np.ndarray      # converts the v-prediction into an x0 prediction at this step
    sigma: np.ndarray
    a: np.ndarray          # update coefficients (see module docstring)
    b: np.ndarray
    c: np.ndarray

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def _cosine_sigmas() -> np.ndarray:
    """Training noise levels sqrt((1 - alpha_bar) / alpha_bar) of the squaredcos_cap_v2 beta schedule."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - alpha_bar((i + 1) / TRAIN_TIMESTEPS) / alpha_bar(i / TRAIN_TIMESTEPS), 0.999)
                      for i in range(TRAIN_TIMESTEPS)], dtype=np.float32)
    alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


@lru_cache(maxsize=64)
def schedule(steps: int) -> Schedule:
    """The DPM-Solver++ 2M schedule with `steps` steps (linspace spacing, first and last steps first order)."""
    if steps < 1:
        raise ValueError(f"diffusion steps must be at least 1, got {steps}")
    timesteps = np.linspace(0, TRAIN_TIMESTEPS - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    # float32 noise levels, as the reference scheduler keeps them; the final level is exactly zero
    sigmas = np.concatenate([_cosine_sigmas()[timesteps], [0.0]]).astype(np.float32).astype(np.float64)
    alpha_t = 1.0 / np.sqrt(sigmas**2 + 1.0)
    sigma_t = sigmas * alpha_t
    with np.errstate(divide="ignore"):
        lam = np.log(alpha_t) - np.log(sigma_t)  # +inf at the final zero noise level
    a, b, c = np.zeros(steps), np.zeros(steps), np.zeros(steps)
    for i in range(steps):
        h = lam[i + 1] - lam[i]
        phi = np.expm1(-h) if np.isfinite(h) else -1.0  # exp(-h) - 1
        a[i] = sigma_t[i + 1] / sigma_t[i]
        b[i] = -alpha_t[i + 1] * phi
        second_order = 0 < i < steps - 1  # warm-up step and lower-order final step are first order
        if second_order:
            r0 = (lam[i] - lam[i - 1]) / h
            c[i] = -0.5 * alpha_t[i + 1] * phi / r0
    return Schedule(timesteps=timesteps.astype(np.float64), alpha=alpha_t[:-1], sigma=sigma_t[:-1], a=a, b=b, c=c)


def schedule_table(step_counts: list[int], width: int | None = None) -> np.ndarray:
    """[rows, width, 6] tables (t, alpha, sigma, a, b, c) for a batch; short rows end in identity steps. The width
    defaults to the largest step count."""
    width = width or max(step_counts)
    table = np.zeros((len(step_counts), width, 6), dtype=np.float64)
    table[:, :, 3] = 1.0  # identity: x <- x
    for row, steps in enumerate(step_counts):
        s = schedule(steps)
        table[row, :steps] = np.stack([s.timesteps, s.alpha, s.sigma, s.a, s.b, s.c], axis=-1)
        table[row, steps:, 0] = s.timesteps[-1]  # any valid timestep; the identity step ignores the output
    return table


def solve(head, noise: torch.Tensor, cond_pos: torch.Tensor, cond_neg: torch.Tensor, cfg: torch.Tensor,
          table: torch.Tensor) -> torch.Tensor:
    """Denoise `noise` [B, D] into latents with classifier-free guidance.

    head(x [2B, D], t [2B], cond [2B, H]) -> v; cfg [B]; table [B, steps, 6] from `schedule_table`.
    """
    x = noise
    cond = torch.cat([cond_pos, cond_neg], dim=0)
    previous_x0 = torch.zeros_like(x)
    guidance = cfg[:, None]
    for i in range(table.shape[1]):
        t, alpha, sigma, a, b, c = (col[:, None] for col in table[:, i].unbind(-1))
        v_pos, v_neg = head(torch.cat([x, x], dim=0), torch.cat([t[:, 0], t[:, 0]]), cond).chunk(2, dim=0)
        v = v_neg + guidance * (v_pos - v_neg)
        x0 = alpha * x - sigma * v
        x = a * x + b * x0 + c * (x0 - previous_x0)
        previous_x0 = x0
    return x
