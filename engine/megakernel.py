"""The cached LM step for one or two streams as one persistent CUDA kernel (engine/megakernel.cu) on Hopper GPUs.

A frame's LM step at a few rows is ~200 kernels that each wait for the one before, then for their first weights:
half its time goes to those waits. The persistent kernel runs every decoder layer in one launch, one program per
multiprocessor: a producer warp streams the program's share of every weight into shared memory ahead of use while
the consumer warps compute phase after phase between grid barriers (see the .cu file). CachedLanguageModelStep
calls it where it applies (`LanguageModelMegakernel.runs`) and runs its Triton and torch paths elsewhere: the
same function, rounded the same way, summed in another order.

It needs CuPy (NVRTC compiles the source at first use) and bf16 or fp8 weights (engine.quantize: fp8 activations
too) in a bf16 model; one instance serves one caller at a time (its work buffers are its own).

Status (perf/RESULTS.md, 2026-12-07): it computes the step (against the Triton kernels: 3e-2 relative on the 1.5B's
hidden states, the cache writes 1.3e-2; graph replays equal eager runs) but streams only ~1.2 TB/s on an H100, so
it is slower than the separate kernels (1.5B: 2.13 against 1.46 ms) and not the runtime's default.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import numpy as np
import torch

SOURCE = Path(__file__).with_suffix(".cu")
ROWS = (2, 4)               # instantiated row counts: one and two streams' positive and negative rows
WARPS = 8                   # the .cu file's constants
THREADS = (WARPS + 1) * 32
SLOT_BYTES = 4096           # one bulk copy of weights: the default ring slot
STEP = 256
HEAD_DIM = 128
ATT_SPAN = WARPS * 32
MAX_TOKENS = 4
ACTIVATION_GROUP = 128
KINDS = ("qkv", "o", "gate_up", "down")  # the products, in the kernel's Kind order
# a layer's row of the kernel's `layers` table (its Field enum): each product's weight, then its fp8 scales (0 for
# bf16), the qkv bias, the two norms' weights
LAYER_FIELDS = 11
MIN_SLOTS = 2               # ring slots per consumer warp, at least
BARRIER_BYTES = 8
MAX_GATE_ROWS = 32          # a consumer warp holds its gate rows' sums one per lane until their up rows come
STATIC_SHARED = 1024        # kept for the kernel's static shared memory (its flag: a few bytes)


class Params(ctypes.Structure):
    """The kernel's `Params`, field for field."""
    _fields_ = [(name, ctypes.c_void_p) for name in (
        "layers", "ranges", "hidden", "qkv", "attn", "act", "parts", "counters", "inv_freq", "final_norm",
        "token_weight")] + [(name, ctypes.c_float) for name in ("rope_scaling", "attn_scale", "eps")] + [
        (name, ctypes.c_int) for name in ("layers_n", "H", "F", "heads", "kv_heads", "tokens", "slots", "x_offset",
                                          "scales_offset", "barrier_offset")]


def warp_ranges(outputs: int, warps: int) -> np.ndarray:
    """Each of `warps` consumer warps' contiguous output rows [begin, end) of a product with `outputs` rows: as even
    as whole rows allow (sizes differ by at most one)."""
    bounds = np.arange(warps + 1, dtype=np.int64) * outputs // warps
    return np.stack([bounds[:-1], bounds[1:]], axis=1).astype(np.int32)


def shared_layout(rows: int, hidden: int, intermediate: int, heads: int, kv_heads: int, limit: int,
                  slot_bytes: int = SLOT_BYTES) -> tuple[int, int, int, int, int]:
    """(ring slots per warp, the offsets of x's values, of x's fp8 scales and of the mbarriers, bytes in all) of the
    kernel's shared memory within `limit` bytes: x holds the widest phase input [rows, K] in bf16 (or the
    attention's scratch, whichever is larger) and a float32 scale per ACTIVATION_GROUP of them, the ring the rest."""
    group = heads // kv_heads
    widest = max(hidden, intermediate, heads * HEAD_DIM)
    scratch = ((group + 2) * HEAD_DIM + WARPS * group * (HEAD_DIM + 2)) * 4
    values = -(-max(rows * widest * 2, scratch) // 128) * 128
    scales = -(-rows * (widest // ACTIVATION_GROUP) * 4 // 128) * 128
    per_slot = WARPS * (slot_bytes + 2 * BARRIER_BYTES)
    slots = (limit - values - scales) // per_slot
    x_offset = WARPS * slots * slot_bytes
    barrier_offset = x_offset + values + scales
    return slots, x_offset, x_offset + values, barrier_offset, barrier_offset + WARPS * slots * 2 * BARRIER_BYTES


@functools.cache
def _cupy():
    """The cupy module where it imports and sees a GPU, else None."""
    try:
        import cupy
        cupy.cuda.runtime.getDeviceCount()
    except Exception:  # not installed, or no driver: the other paths run
        return None
    return cupy


@functools.cache
def _kernel(rows: int, group: int, fp8: bool, slot_bytes: int, device_index: int, shared_limit: int):
    """The kernel for `rows` rows, `group` query heads per kv head, bf16 or fp8 weights and ring slots of
    `slot_bytes`, compiled for the device (sm_90a), allowed `shared_limit` bytes of shared memory with its static
    ones (set here, once: not while a CUDA graph is being captured)."""
    cupy = _cupy()
    name = f"lm_step<{rows}, {group}, {str(fp8).lower()}>"
    with cupy.cuda.Device(device_index):
        module = cupy.RawModule(code=SOURCE.read_text(),
                                options=("-std=c++17", "-arch=sm_90a", f"-DSLOT_BYTES={slot_bytes}"),
                                name_expressions=[name])
        kernel = module.get_function(name)
        kernel.max_dynamic_shared_size_bytes = shared_limit - kernel.attributes["shared_size_bytes"]
        return kernel


class LanguageModelMegakernel:
    """The LM step of CachedLanguageModelStep (embeds [R, H], positions [R], the KV caches, context -> hidden
    [R, H] after the final norm, logits [R, V']) as engine/megakernel.cu, for R in ROWS."""

    def __init__(self, step, layer_weights: list[dict], slot_bytes: int = SLOT_BYTES):
        """`step`: the LanguageModelStep whose modules hold the weights (on one CUDA device); `layer_weights`:
        CachedLanguageModelStep's per-layer tensors (fused qkv and gate-up); `slot_bytes`: each bulk copy of
        weights (a multiple of 512)."""
        if slot_bytes % 512:
            raise ValueError(f"slot_bytes must be a multiple of 512 (a warp step of bf16), got {slot_bytes}")
        self.slot_bytes = slot_bytes
        lm, device = step.lm, step.token_weight.device
        cfg = lm.config
        self.device = device
        self.heads, self.kv_heads, self.hidden_size = step.heads, step.kv_heads, cfg.hidden_size
        self.intermediate = cfg.intermediate_size
        self.tokens = step.token_weight.shape[0]
        properties = torch.cuda.get_device_properties(device)
        self.programs = properties.multi_processor_count
        self._smem_limit = properties.shared_memory_per_block_optin
        self.fp8 = layer_weights[0]["qkv"][0].dtype == torch.float8_e4m3fn
        table = []
        for w in layer_weights:
            weights = [w[name][0].data_ptr() for name in KINDS]
            scales = [w[name][2].data_ptr() if self.fp8 else 0 for name in KINDS]
            table.append(weights + scales + [w["qkv"][1].data_ptr(), w["norm1"][0].data_ptr(),
                                             w["norm2"][0].data_ptr()])
        self._layers = torch.tensor(table, dtype=torch.int64, device=device)
        warps = self.programs * WARPS
        qkv_width = (self.heads + 2 * self.kv_heads) * HEAD_DIM
        outputs = {"qkv": qkv_width, "o": self.hidden_size, "gate_up": self.intermediate, "down": self.hidden_size}
        ranges = np.stack([warp_ranges(outputs[kind], warps) for kind in KINDS])
        gate_up = ranges[KINDS.index("gate_up")]
        self.gate_rows = int((gate_up[:, 1] - gate_up[:, 0]).max())
        self._ranges = torch.from_numpy(ranges).to(device)
        rows = max(ROWS)
        spans = -(-cfg.max_position_embeddings // ATT_SPAN)
        group = self.heads // self.kv_heads
        bf16 = dict(dtype=torch.bfloat16, device=device)
        self._hidden = torch.empty(rows, self.hidden_size, **bf16)
        self._qkv = torch.empty(rows, qkv_width, **bf16)
        self._attn = torch.empty(rows, self.heads * HEAD_DIM, **bf16)
        self._act = torch.empty(rows, self.intermediate, **bf16)
        self._parts = torch.empty(rows * self.kv_heads * spans, group * (HEAD_DIM + 2), dtype=torch.float32,
                                  device=device)
        self._counters = torch.zeros(2 + rows * self.kv_heads, dtype=torch.int32, device=device)
        rotary = lm.rotary_emb
        self._inv_freq = rotary.inv_freq.to(device, torch.float32).contiguous()
        self._final_norm, self._token_weight = lm.norm.weight, step.token_weight.contiguous()
        attn = lm.layers[0].self_attn
        self._static = dict(
            layers=self._layers.data_ptr(), ranges=self._ranges.data_ptr(), hidden=self._hidden.data_ptr(),
            qkv=self._qkv.data_ptr(), attn=self._attn.data_ptr(), act=self._act.data_ptr(),
            parts=self._parts.data_ptr(), counters=self._counters.data_ptr(), inv_freq=self._inv_freq.data_ptr(),
            final_norm=self._final_norm.data_ptr(), token_weight=self._token_weight.data_ptr(),
            rope_scaling=float(rotary.attention_scaling), attn_scale=float(attn.scaling),
            eps=float(lm.norm.variance_epsilon), layers_n=len(layer_weights), H=self.hidden_size,
            F=self.intermediate, heads=self.heads, kv_heads=self.kv_heads, tokens=self.tokens)
        self._params = {}  # per row count: (the Params buffer on the device, shared-memory bytes)

    @staticmethod
    def suits(step, layer_weights: list[dict]) -> str | None:
        """Why the kernel cannot run this model's step (None: it can): a bf16 model with bf16 or fp8 weights on a
        Hopper GPU, the shapes it was written for, static rotary tables, CuPy."""
        device = step.token_weight.device
        cfg = step.lm.config
        if device.type != "cuda":
            return "not on a CUDA device"
        if torch.cuda.get_device_properties(device).major != 9:
            return "not a Hopper GPU (sm_90)"
        kinds = {w[name][0].dtype for w in layer_weights for name in KINDS}
        if step.token_weight.dtype != torch.bfloat16 or len(kinds) > 1 or kinds - {torch.bfloat16,
                                                                                     torch.float8_e4m3fn}:
            return "not a bf16 model with bf16 or fp8 weights"
        if step.head_dim != HEAD_DIM or step.heads % step.kv_heads or step.heads // step.kv_heads > WARPS:
            return f"head_dim {step.head_dim}, {step.heads} heads over {step.kv_heads} kv heads"
        if any(width % STEP for width in (cfg.hidden_size, cfg.intermediate_size)):
            return f"widths not multiples of {STEP}"
        if step.token_weight.shape[0] > MAX_TOKENS or any(
                w["qkv"][1] is None or any(w[name][1] is not None for name in ("o", "gate_up", "down"))
                for w in layer_weights):
            return "other scored tokens or biases than Qwen2's"
        if "dynamic" in step.lm.rotary_emb.rope_type:
            return "rotary tables that change with the length"
        if _cupy() is None:
            return "CuPy not installed"
        return None

    def runs(self, rows: int) -> bool:
        """Whether the kernel takes a step of `rows` rows."""
        return rows in ROWS and self._layout(rows)[0] >= MIN_SLOTS and self.gate_rows <= MAX_GATE_ROWS

    def _layout(self, rows: int) -> tuple[int, int, int, int, int]:
        return shared_layout(rows, self.hidden_size, self.intermediate, self.heads, self.kv_heads,
                             self._smem_limit - STATIC_SHARED, self.slot_bytes)

    def _params_for(self, rows: int) -> tuple[torch.Tensor, int]:
        if rows not in self._params:
            slots, x_offset, scales_offset, barrier_offset, total = self._layout(rows)
            params = Params(**self._static, slots=slots, x_offset=x_offset, scales_offset=scales_offset,
                            barrier_offset=barrier_offset)
            raw = torch.frombuffer(bytearray(bytes(params)), dtype=torch.uint8).to(self.device)
            self._params[rows] = raw, total
        return self._params[rows]

    def __call__(self, embeds, positions, keys, values, context: int):
        rows = embeds.shape[0]
        params, shared = self._params_for(rows)
        kernel = _kernel(rows, self.heads // self.kv_heads, self.fp8, self.slot_bytes, self.device.index or 0,
                         self._smem_limit)
        embeds, positions = embeds.contiguous(), positions.to(torch.int64).contiguous()
        if keys.stride(-1) != 1 or keys.stride(-2) != HEAD_DIM or keys.stride() != values.stride():
            raise ValueError("the KV caches must be [layers, rows, kv heads, positions, 128] with contiguous positions")
        hidden = torch.empty(rows, self.hidden_size, dtype=torch.bfloat16, device=self.device)
        logits = torch.empty(rows, self.tokens, dtype=torch.bfloat16, device=self.device)
        pointer = np.uint64
        arguments = (pointer(params.data_ptr()), pointer(embeds.data_ptr()), pointer(positions.data_ptr()),
                     pointer(keys.data_ptr()), pointer(values.data_ptr()), *map(np.int64, keys.stride()[:3]),
                     np.int32(context), pointer(hidden.data_ptr()), pointer(logits.data_ptr()))
        cupy = _cupy()
        with cupy.cuda.ExternalStream(torch.cuda.current_stream(self.device).cuda_stream):
            kernel((self.programs,), (THREADS,), arguments, shared_mem=shared)
        return hidden, logits
