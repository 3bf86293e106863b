"""engine.megakernel on the CPU: the host's tables and layout, the source as NVCC compiles it for Hopper, and the
fallback where the kernel cannot run. Its output against the step's other kernels is measured on the GPU by
perf/profile_frame.py (relative differences, graph replays against eager runs)."""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import pytest
import torch

from engine import megakernel
from engine.checkpoint import config_for, random_checkpoint
from engine.network import CachedLanguageModelStep, LanguageModelStep

H100_SHARED = 232448  # bytes of shared memory a program may opt into on an H100 or H200


@pytest.mark.parametrize("outputs, programs", [(2048, 132), (1536, 132), (8960, 132), (7, 16), (3, 3)])
def test_program_ranges_cover_every_row_once_and_evenly(outputs, programs):
    ranges = megakernel.program_ranges(outputs, programs)
    assert ranges.shape == (programs, 2)
    assert ranges[0, 0] == 0 and ranges[-1, 1] == outputs
    assert (ranges[1:, 0] == ranges[:-1, 1]).all()  # contiguous, in order
    sizes = ranges[:, 1] - ranges[:, 0]
    assert sizes.min() >= 0 and sizes.max() - sizes.min() <= 1


@pytest.mark.parametrize("size", ["1.5B", "7B"])
@pytest.mark.parametrize("programs", [114, 132])  # an H100 PCIe's multiprocessors, an H100 SXM's or an H200's
def test_each_row_of_the_released_sizes_is_split_between_two_warps_at_most(size, programs):
    # the kernel's `parts` hold two sums per row: its warps split a program's steps evenly, and a row's steps must
    # then fall to one warp or two neighbours, which holds wherever every program has at least WARPS rows
    text = config_for(size).text_config
    qkv = (text.num_attention_heads + 2 * text.num_key_value_heads) * megakernel.HEAD_DIM
    for outputs, inputs in ((qkv, text.hidden_size), (text.hidden_size, text.hidden_size),
                            (text.intermediate_size, text.hidden_size), (text.hidden_size, text.intermediate_size)):
        ranges = megakernel.program_ranges(outputs, programs)
        steps_per_row = inputs // megakernel.STEP
        for rows in set((ranges[:, 1] - ranges[:, 0]).tolist()):
            assert rows >= megakernel.WARPS
            total = rows * steps_per_row
            bounds = [w * total // megakernel.WARPS for w in range(megakernel.WARPS + 1)]
            for row in range(rows):
                first, last = row * steps_per_row, (row + 1) * steps_per_row
                warps = [w for w in range(megakernel.WARPS) if bounds[w] < last and bounds[w + 1] > first]
                assert len(warps) <= 2 and warps == list(range(warps[0], warps[0] + len(warps)))


@pytest.mark.parametrize("size, rows", [("1.5B", 2), ("1.5B", 4), ("7B", 2), ("7B", 4)])
def test_shared_layout_fits_the_released_sizes(size, rows):
    text = config_for(size).text_config
    program_rows = -(-text.intermediate_size // 132)  # the most rows of a product one of an H100's 132 programs has
    slots, x_offset, scales_offset, parts_offset, barrier_offset, total = megakernel.shared_layout(
        rows, text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_key_value_heads,
        program_rows, H100_SHARED)
    assert slots >= megakernel.MIN_SLOTS
    assert x_offset == megakernel.WARPS * slots * megakernel.SLOT_BYTES
    widest = max(text.hidden_size, text.intermediate_size)
    assert scales_offset - x_offset >= rows * widest * 2  # x: the widest phase input in bf16
    assert parts_offset - scales_offset >= rows * widest // megakernel.ACTIVATION_GROUP * 4  # its fp8 scales
    assert barrier_offset - parts_offset >= 2 * program_rows * 2 * rows * 4  # gate's and up's two parts per row
    assert barrier_offset % 128 == 0 and total <= H100_SHARED
    assert total == barrier_offset + megakernel.WARPS * slots * 2 * megakernel.BARRIER_BYTES


def test_shared_layout_takes_the_attention_scratch_where_it_is_larger():
    # a narrow model: x would be 2 x 256 x 2 bytes, the scratch of 4 query heads per kv head is far larger
    slots, x_offset, scales_offset, *_ = megakernel.shared_layout(2, 256, 256, 4, 1, 8, H100_SHARED)
    group = 4
    scratch = ((group + 2) * 128 + megakernel.WARPS * group * (128 + 2)) * 4
    assert scales_offset - x_offset >= scratch


def test_params_match_the_kernels_struct_field_for_field():
    source = megakernel.SOURCE.read_text()
    body = re.search(r"struct Params \{(.*?)\n\};", source, re.S).group(1)
    declared = []
    for line in body.splitlines():
        code = line.split("//")[0].strip().rstrip(";")
        if code:
            kind, names = re.match(r"((?:const )?\w+\*?)\s+(.*)", code).groups()
            declared += [(name.strip(), kind) for name in names.split(",")]
    ctypes_kind = {ctypes.c_void_p: "*", ctypes.c_float: "float", ctypes.c_int: "int"}
    fields = [(name, ctypes_kind[kind]) for name, kind in megakernel.Params._fields_]
    assert [name for name, _ in fields] == [name for name, _ in declared]
    for (name, kind), (_, c_kind) in zip(fields, declared, strict=True):
        assert c_kind.endswith("*") if kind == "*" else c_kind == kind, name


def test_source_constants_match_the_host():
    source = megakernel.SOURCE.read_text()
    defined = dict(re.findall(r"#define (\w+) (\d+)", source))
    for name in ("WARPS", "SLOT_BYTES", "STEP", "HEAD_DIM", "MAX_TOKENS", "LAYER_FIELDS",
                 "ACTIVATION_GROUP", "TRACE_PROGRAMS", "TRACE_LAYERS", "MARKS"):
        assert int(defined[name]) == getattr(megakernel, name), name


def test_the_trace_names_an_interval_between_each_pair_of_marks():
    marks = sorted({int(i) for i in re.findall(r"\bMARK\((\d+)\);", megakernel.SOURCE.read_text())})
    assert marks == list(range(megakernel.MARKS))
    assert len(megakernel.TRACE_PHASES) == megakernel.MARKS - 1


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler on this machine")
@pytest.mark.parametrize("defines", [[], ["-DTRACE"]])
def test_kernel_compiles_for_hopper_without_spills(tmp_path, defines):
    instances = "\n".join(
        f"template __global__ void lm_step<{rows}, {group}, {fp8}>(const Params*, const bf16*, const long long*, "
        f"bf16*, bf16*, long long, long long, long long, int, bf16*, bf16*);"
        for rows in megakernel.ROWS for group in (6, 7) for fp8 in ("false", "true"))
    unit = tmp_path / "instances.cu"
    unit.write_text(f'#include "{megakernel.SOURCE}"\n{instances}\n')
    result = subprocess.run(["nvcc", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", *defines,
                             "-Xptxas", "-v", "-o", str(tmp_path / "out.cubin"), str(unit)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    reports = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr)
    assert len(reports) == 4 * len(megakernel.ROWS)
    assert all(stores == "0" and loads == "0" for stores, loads in reports)


def test_slots_hold_whole_warp_steps():
    with pytest.raises(ValueError, match="slot_bytes must be a multiple of 512"):
        megakernel.LanguageModelMegakernel(None, [], slot_bytes=1000)


@torch.no_grad()
def test_the_step_runs_its_other_kernels_where_the_megakernel_cannot():
    checkpoint = random_checkpoint("tiny", seed=0)
    lm = checkpoint.model.model.language_model
    step = LanguageModelStep(lm, checkpoint.model.lm_head, [1, 2, 3, 4])
    asked, plain = CachedLanguageModelStep(step, megakernel=True), CachedLanguageModelStep(step)
    assert asked.megakernel is None and asked.megakernel_status == "not on a CUDA device"
    assert plain.megakernel_status == "not asked for"
    embeds = torch.randn(2, lm.config.hidden_size)
    keys = torch.randn(lm.config.num_hidden_layers, 2, lm.config.num_key_value_heads, 8, step.head_dim)
    caches = [(keys.clone(), keys.clone()) for _ in range(2)]
    outputs = [cached(embeds, torch.tensor([5, 2]), *kv, 8) for cached, kv in zip((asked, plain), caches)]
    for a, b in zip(outputs[0] + caches[0], outputs[1] + caches[1]):
        assert torch.equal(a, b)
