"""Fit the polynomial of engine.triton_kernels._gelu and check it over every finite bf16 input (CPU, NumPy).

    python perf/fit_gelu.py [--scale 0.3] [--degree 8]

The exact GELU is x * Phi(x). _gelu takes Phi from its tail Q(u) = erfc(u / sqrt(2)) / 2 at u = |x| as
Q(u) = t * 2^(P(t) - u^2 log2(e) / 2), t = 1 / (1 + scale * u): P(t) = log2(Q(u) / t) + u^2 log2(e) / 2 is smooth
on t in (0, 1] (at t -> 0 it tends to log2(scale / sqrt(2 pi))), so a short polynomial holds it. The fit is least
squares reweighted toward the least maximum error (Lawson's iterations) on u in [0, 14]; prints the coefficients
(constant term first, as float32) and, evaluated in float32 as the kernel does, the largest relative error over
the bf16 inputs and how many round to another bf16 value than the exact GELU.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch

LOG2E_HALF = math.log2(math.e) / 2
U_MAX = 14.0  # past it Q(u) < 2^-126: float32's exp2 flushes it to zero


def tail_log2(u: np.ndarray) -> np.ndarray:
    """log2(Q(u)) in float64."""
    return np.log2(0.5 * np.vectorize(math.erfc)(u / math.sqrt(2.0)))


def fit(scale: float, degree: int, iterations: int = 60) -> tuple[np.ndarray, float]:
    """P's coefficients (constant first) and its largest error in log2 units on the fitting grid."""
    t_min = 1 / (1 + scale * U_MAX)
    t = (np.cos(np.linspace(0, np.pi, 20001)) * (1 - t_min) + (1 + t_min)) / 2
    u = (1 / t - 1) / scale
    target = tail_log2(u) - np.log2(t) + LOG2E_HALF * u * u
    basis = np.polynomial.chebyshev.chebvander((2 * t - (1 + t_min)) / (1 - t_min), degree)
    weights = np.ones_like(t)
    for _ in range(iterations):
        root = np.sqrt(weights)
        coefficients = np.linalg.lstsq(basis * root[:, None], target * root, rcond=None)[0]
        error = np.abs(basis @ coefficients - target)
        weights = weights * error / np.sum(weights * error)
    series = np.polynomial.chebyshev.Chebyshev(coefficients, domain=[t_min, 1])
    return series.convert(kind=np.polynomial.Polynomial).coef, float(error.max())


def gelu_float32(x: np.ndarray, coefficients: np.ndarray, scale: float) -> np.ndarray:
    """_gelu's arithmetic in float32 (exact reciprocal and exp2 standing in for the GPU's approximations)."""
    f32 = np.float32
    u = np.abs(x)
    t = f32(1) / (f32(1) + f32(scale) * u)
    p = np.full_like(t, f32(coefficients[-1]))
    for coefficient in coefficients[-2::-1]:
        p = p * t + f32(coefficient)
    with np.errstate(over="ignore", invalid="ignore"):
        q = t * np.exp2(p - f32(LOG2E_HALF) * u * u)
        return x * np.where(x >= 0, f32(1) - q, q)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.3, help="t = 1 / (1 + scale * |x|)")
    parser.add_argument("--degree", type=int, default=8)
    args = parser.parse_args()
    coefficients, fit_error = fit(args.scale, args.degree)
    print(f"scale {args.scale}, degree {args.degree}: largest fit error {fit_error:.2e} (log2 units)")
    print("coefficients, constant first:", ", ".join(repr(float(np.float32(c))) for c in coefficients))

    bits = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)
    x = bits[np.isfinite(bits)]
    exact = x.astype(np.float64) * (0.5 * np.vectorize(math.erfc)(-x.astype(np.float64) / math.sqrt(2.0)))
    ours = gelu_float32(x, np.float32(coefficients), args.scale)
    normal = np.abs(exact) > 2.0 ** -126
    relative = np.abs(ours[normal] - exact[normal]) / np.abs(exact[normal])
    worst = np.argmax(relative)
    in_range = np.abs(x[normal]) <= 8
    as_bf16 = [torch.from_numpy(np.asarray(v, dtype=np.float32)).to(torch.bfloat16) for v in (ours, exact)]
    print(f"over {x.size} bf16 inputs: largest relative error {relative.max():.2e} (at x = {x[normal][worst]:.4g}), "
          f"{relative[in_range].max():.2e} for |x| <= 8; bf16 results other than the exact GELU's: "
          f"{int((as_bf16[0] != as_bf16[1]).sum())}")


if __name__ == "__main__":
    main()
