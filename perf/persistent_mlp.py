"""A measurement for the design of a persistent frame kernel: a chain of residual MLP layers (silu(x W_gate) *
(x W_up), then W_down, added to x) at few rows, as one persistent kernel whose programs meet at grid barriers
between the products, against the same chain as few_rows_linear launches (the engine's path, programmatic
dependent launch), both replayed as CUDA graphs.

    python perf/persistent_mlp.py --shapes 1536x4608x40 1536x8960x28 --rows 2 [--launches 64x64x4x4]

Each shape is hidden x intermediate x layers: 1536x4608x40 is the 1.5B's diffusion head over a 10-step solve (its
norms and modulation left out), 1536x8960x28 the 1.5B's LM MLPs over one step. Random bf16 weights.

In the persistent kernel, one program per multiprocessor, a layer is four phases with a grid barrier after each:
the gate-up product (its work cut into (output tile, inner split) items dealt round-robin, float32 sums per split),
silu(gate) * up from those sums, the down product the same way, and the residual add from its sums. A barrier is
an arrival counter in global memory: each program's first thread adds one (release) and polls it (acquire) until
every program has arrived; the last program out resets it. Not an engine path: a measurement of
what crossing a product boundary costs inside one kernel rather than between kernels.
"""
from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from profile_frame import captured, replay_ms

from engine import triton_kernels

ROWS = triton_kernels.FEW_ROWS


@triton.jit
def _grid_barrier(counter_ptr, target):
    """Wait until `target` arrivals have been counted (every program's, this barrier included): the program's
    writes before it are visible to every program's reads after it (reads that bypass L1: .cg)."""
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    while arrived < target:
        arrived = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _product_phase(x_ptr, w_ptr, partial_ptr, M, N, K, pid, P, SPLITS: tl.constexpr, GLU: tl.constexpr,
                   ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """float32 sums per split of x [ROWS, K] (M real rows) times w [N', K] (N' = 2N with GLU: gate, then up) into
    partial [SPLITS, ROWS, N']: items (output tile, split) dealt round-robin to the P programs."""
    m = tl.arange(0, ROWS)
    rows = m < M
    width = 2 * N if GLU else N
    tiles = tl.cdiv(N, BLOCK_N)
    split_inner = K // SPLITS
    for item in range(pid, tiles * SPLITS, P):
        tile, split = item % tiles, item // tiles
        n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_N, ROWS), dtype=tl.float32)
        up = tl.zeros((BLOCK_N, ROWS), dtype=tl.float32)
        for start in range(split * split_inner, (split + 1) * split_inner, BLOCK_K):
            k = start + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + m[:, None] * K + k[None, :], mask=rows[:, None], other=0.0, cache_modifier=".cg")
            acc += tl.dot(tl.load(w_ptr + n[:, None] * K + k[None, :]), tl.trans(x))
            if GLU:
                up += tl.dot(tl.load(w_ptr + (N + n)[:, None] * K + k[None, :]), tl.trans(x))
        where = partial_ptr + split * ROWS * width + m[None, :] * width + n[:, None]
        tl.store(where, acc, mask=rows[None, :])
        if GLU:
            tl.store(where + N, up, mask=rows[None, :])


@triton.jit
def _split_total(partial_ptr, m, rows, n, width, SPLITS: tl.constexpr, ROWS: tl.constexpr):
    total = tl.zeros((ROWS, n.shape[0]), dtype=tl.float32)
    for split in tl.static_range(SPLITS):
        total += tl.load(partial_ptr + split * ROWS * width + m[:, None] * width + n[None, :], mask=rows[:, None],
                         other=0.0, cache_modifier=".cg")
    return total


@triton.jit
def _activation_phase(partial_ptr, act_ptr, M, F, pid, P, SPLITS: tl.constexpr, ROWS: tl.constexpr,
                      BLOCK: tl.constexpr):
    """act = silu(gate) * up from the gate-up product's split sums, rounded as the torch ops round them."""
    m = tl.arange(0, ROWS)
    rows = m < M
    dtype = act_ptr.dtype.element_ty
    for tile in range(pid, tl.cdiv(F, BLOCK), P):
        n = tile * BLOCK + tl.arange(0, BLOCK)
        gate = _split_total(partial_ptr, m, rows, n, 2 * F, SPLITS, ROWS).to(dtype).to(tl.float32)
        up = _split_total(partial_ptr, m, rows, F + n, 2 * F, SPLITS, ROWS).to(dtype).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32) * up
        tl.store(act_ptr + m[:, None] * F + n[None, :], act.to(dtype), mask=rows[:, None])


@triton.jit
def _residual_phase(partial_ptr, hidden_ptr, M, H, pid, P, SPLITS: tl.constexpr, ROWS: tl.constexpr,
                    BLOCK: tl.constexpr):
    """hidden += the down product (its split sums, rounded), in place: each program its own columns."""
    m = tl.arange(0, ROWS)
    rows = m < M
    dtype = hidden_ptr.dtype.element_ty
    for tile in range(pid, tl.cdiv(H, BLOCK), P):
        n = tile * BLOCK + tl.arange(0, BLOCK)
        where = hidden_ptr + m[:, None] * H + n[None, :]
        update = _split_total(partial_ptr, m, rows, n, H, SPLITS, ROWS).to(dtype).to(tl.float32)
        hidden = tl.load(where, mask=rows[:, None], other=0.0, cache_modifier=".cg").to(tl.float32)
        tl.store(where, (hidden + update).to(dtype), mask=rows[:, None])


@triton.jit
def _persistent_mlp_kernel(hidden_ptr, w1_ptr, w2_ptr, gate_up_ptr, act_ptr, down_ptr, counter_ptr, M, H, F,
                           LAYERS, GU_SPLITS: tl.constexpr, DOWN_SPLITS: tl.constexpr, ROWS: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """hidden [ROWS, H] (M real rows) through LAYERS residual MLP layers, in place. counter_ptr: [2] int32 zeros
    (barrier arrivals, programs done), left zero."""
    pid, P = tl.program_id(0), tl.num_programs(0)
    barriers = 0
    for layer in range(LAYERS):
        w1 = w1_ptr + layer.to(tl.int64) * 2 * F * H
        w2 = w2_ptr + layer.to(tl.int64) * H * F
        _product_phase(hidden_ptr, w1, gate_up_ptr, M, F, H, pid, P, GU_SPLITS, True, ROWS, BLOCK_N, BLOCK_K)
        barriers += 1
        _grid_barrier(counter_ptr, barriers * P)
        _activation_phase(gate_up_ptr, act_ptr, M, F, pid, P, GU_SPLITS, ROWS, 128)
        barriers += 1
        _grid_barrier(counter_ptr, barriers * P)
        _product_phase(act_ptr, w2, down_ptr, M, H, F, pid, P, DOWN_SPLITS, False, ROWS, BLOCK_N, BLOCK_K)
        barriers += 1
        _grid_barrier(counter_ptr, barriers * P)
        _residual_phase(down_ptr, hidden_ptr, M, H, pid, P, DOWN_SPLITS, ROWS, 128)
        barriers += 1
        _grid_barrier(counter_ptr, barriers * P)
    # the last program out resets the counters: every program has passed every barrier by then
    if tl.atomic_add(counter_ptr + 1, 1, sem="acq_rel", scope="gpu") == P - 1:
        tl.atomic_xchg(counter_ptr, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(counter_ptr + 1, 0, sem="relaxed", scope="gpu")


def splits_for(tiles: int, inner: int, processors: int, block_k: int) -> int:
    """The fewest inner splits that give every multiprocessor an item (each split a multiple of block_k)."""
    splits = 1
    while tiles * splits < processors and inner % (2 * splits * block_k) == 0:
        splits *= 2
    return splits


def persistent_chain(x, w1, w2, block_n=64, block_k=64, warps=4, stages=4):
    """A callable running the chain on x [M, H] (w1 [L, 2F, H] gate and up stacked, w2 [L, H, F]) -> out."""
    rows, hidden = x.shape
    layers, intermediate = w2.shape[0], w2.shape[2]
    processors = torch.cuda.get_device_properties(x.device).multi_processor_count
    gu_splits = splits_for(triton.cdiv(intermediate, block_n), hidden, processors, block_k)
    down_splits = splits_for(triton.cdiv(hidden, block_n), intermediate, processors, block_k)
    state = torch.zeros(ROWS, hidden, dtype=x.dtype, device=x.device)
    gate_up = torch.zeros(gu_splits, ROWS, 2 * intermediate, dtype=torch.float32, device=x.device)
    act = torch.zeros(ROWS, intermediate, dtype=x.dtype, device=x.device)
    down = torch.zeros(down_splits, ROWS, hidden, dtype=torch.float32, device=x.device)
    counter = torch.zeros(2, dtype=torch.int32, device=x.device)

    def run():
        state[:rows].copy_(x)
        _persistent_mlp_kernel[(processors,)](state, w1, w2, gate_up, act, down, counter, rows, hidden, intermediate,
                                              layers, GU_SPLITS=gu_splits, DOWN_SPLITS=down_splits, ROWS=ROWS,
                                              BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
        return state[:rows]
    return run, (gu_splits, down_splits)


def launched_chain(x, w1, w2):
    """The same chain as the engine runs it: few_rows_linear per product."""
    def run():
        hidden = x
        for layer in range(w1.shape[0]):
            act = triton_kernels.few_rows_linear(hidden, w1[layer], activation="silu_glu")
            hidden = triton_kernels.few_rows_linear(act, w2[layer], residual=hidden)
        return hidden
    return run


def replay_us(fn) -> tuple[float, torch.Tensor]:
    """Microseconds per replay of fn captured as a CUDA graph, and what a replay returns."""
    graph, out = captured(fn)
    graph.replay()
    torch.cuda.synchronize()
    return replay_ms(fn) * 1000, out.clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["1536x4608x40", "1536x8960x28"])
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--launches", nargs="+", default=["64x64x4x4"],
                        help="persistent launches: outputs per item x inner step x warps x stages")
    args = parser.parse_args()
    torch.manual_seed(0)
    for shape in args.shapes:
        hidden, intermediate, layers = (int(v) for v in shape.split("x"))
        w1 = torch.randn(layers, 2 * intermediate, hidden, device="cuda", dtype=torch.bfloat16) / hidden ** 0.5
        w2 = torch.randn(layers, hidden, intermediate, device="cuda", dtype=torch.bfloat16) / intermediate ** 0.5
        x = torch.randn(args.rows, hidden, device="cuda", dtype=torch.bfloat16) / 10  # small: no overflow
        megabytes = (w1.numel() + w2.numel()) * 2 / 1e6
        launched, expected = replay_us(launched_chain(x, w1, w2))
        print(f"{shape}, {args.rows} rows, {megabytes:.0f} MB of weights: few_rows_linear launches "
              f"{launched / layers:.1f} us per layer ({megabytes / launched:.2f} TB/s)")
        for launch in args.launches:
            block_n, block_k, warps, stages = (int(v) for v in launch.split("x"))
            try:
                run, splits = persistent_chain(x, w1, w2, block_n, block_k, warps, stages)
                took, out = replay_us(run)
            except triton.runtime.errors.OutOfResources as error:
                print(f"  persistent {launch}: {error}")
                continue
            error = float((out.float() - expected.float()).abs().max() / expected.float().abs().max())
            print(f"  persistent {launch} (splits {splits}): {took / layers:.1f} us per layer "
                  f"({megabytes / took:.2f} TB/s), output against the launches' {error:.1e}")


if __name__ == "__main__":
    main()
