// The cached LM step (every Qwen2 decoder layer, the final norm, the scored logits) for a few rows as one persistent
// kernel: one program per multiprocessor, bf16 or fp8 weights, head_dim 128. engine/megakernel.py builds its tables and
// launches it; CachedLanguageModelStep's Triton and torch paths compute the same function.
//
// Why one kernel: at a few rows every product is a matrix-vector product bound by streaming its weights, and as
// separate kernels each one starts by waiting for the one before and then for its first weights (~3.5 us of ~6 us
// for a 6 MB product). Here a producer warp per program streams that program's share of every weight of the step,
// in order, into rings of shared-memory slots (bulk copies, one per slot; one ring and one producer lane per
// consumer warp), never waiting for the computation except for a free slot: the weights do not depend on it. The
// consumer warps run the step's phases (qkv, attention, o, gate-up, down per layer) between grid barriers and find
// the weights already on chip.
//
// Work: in a product phase each program owns a contiguous range of output rows (the `ranges` table, balanced by
// the host) and its consumer warps split those rows' steps of 256 inputs (8 per lane) evenly, each from its own
// ring; a row's sums from the one or two warps that hold its steps meet in shared memory (`parts`) and are finished
// (scale, bias, residual, SiLU) by all consumer threads. x (the phase's input, normalised where the layer says) sits
// in shared memory in bf16. The attention is split by row,
// kv head and span of ATT_SPAN positions (32 per warp); a span's program combines its warps in shared memory, and
// where a row's context covers several spans the program that finishes last combines them.
// Roundings follow the torch ops of engine.network: bf16 after each op, float32 sums. With fp8 weights (FP8, one
// float32 scale per output row) each product's input is quantized as engine.quantize.quantize_activations does,
// fp8 values with one scale per ACTIVATION_GROUP inputs of a row, held in x as bf16 (exact) beside the scales.

typedef unsigned short bf16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define WARPS 8                        // consumer warps; one more streams the weights
#define THREADS ((WARPS + 1) * 32)
#define CONSUMERS (WARPS * 32)
#ifndef SLOT_BYTES
#define SLOT_BYTES 4096                // one bulk copy (engine/megakernel.py passes the size it laid out)
#endif
#define STEP 256                       // inputs per warp step
#define HEAD_DIM 128
#define ATT_SPAN (WARPS * 32)          // positions per attention item: 32 per consumer warp
#define MAX_TOKENS 4                   // scored logits
#define NEG_INF __int_as_float(0xff800000)
#define LAYER_FIELDS 11                // per layer: Field's addresses
#define ACTIVATION_GROUP 128           // fp8 inputs: one scale per this many of a row
#define E4M3_MAX 448.f
#define SMALLEST_SCALE 1e-12f
#define LOAD_BATCH 4                   // global loads in flight at once where a loop reads a vector
#define VALUE_BATCH 8                  // the attention's value rows in flight at once

#ifdef TRACE  // perf/trace_megakernel.py: when each program's consumers pass each mark, how long they waited
#define TRACE_PROGRAMS 256
#define TRACE_LAYERS 64
#define MARKS 16                       // per layer
__device__ long long trace_marks[TRACE_PROGRAMS][TRACE_LAYERS * MARKS];  // clock cycles since the program started
__device__ long long trace_waits[TRACE_PROGRAMS][WARPS];       // cycles each consumer warp waited for its ring
#define MARK(i) \
    do { if (threadIdx.x == 0) trace_marks[blockIdx.x][layer * MARKS + (i)] = clock64() - start; } while (0)
#else
#define MARK(i) do {} while (0)
#endif

enum Kind { QKV = 0, O = 1, GATE_UP = 2, DOWN = 3, KINDS = 4 };
// a layer's entries in the `layers` table: each product's weight and (fp8) output scales, the qkv bias, the norms
enum Field { W_QKV, W_O, W_GATE_UP, W_DOWN, S_QKV, S_O, S_GATE_UP, S_DOWN, B_QKV, NORM1, NORM2 };

__device__ __forceinline__ float lo(u32 pair) { return __uint_as_float(pair << 16); }
__device__ __forceinline__ float hi(u32 pair) { return __uint_as_float(pair & 0xffff0000u); }
__device__ __forceinline__ float bf(bf16 v) { return __uint_as_float(((u32)v) << 16); }

__device__ __forceinline__ bf16 to_bf16(float f) {
    bf16 out;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(out) : "f"(f));
    return out;
}

__device__ __forceinline__ float rounded(float f) { return bf(to_bf16(f)); }

__device__ __forceinline__ u32 pack(float a, float b) { return ((u32)to_bf16(b) << 16) | to_bf16(a); }

// e4m3 pairs (the low byte first) to floats, and a float rounded to the nearest e4m3 value (saturating)
__device__ __forceinline__ float2 e4m3_pair(unsigned short pair) {
    u32 halves;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(halves) : "h"(pair));
    float lo_f, hi_f;
    asm("{ .reg .b16 a, b; mov.b32 {a, b}, %2; cvt.f32.f16 %0, a; cvt.f32.f16 %1, b; }"
        : "=f"(lo_f), "=f"(hi_f) : "r"(halves));
    return make_float2(lo_f, hi_f);
}

__device__ __forceinline__ float e4m3_rounded(float v) {
    unsigned short pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %1;" : "=h"(pair) : "f"(v));
    return e4m3_pair(pair).x;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// --- shared-memory ring: mbarriers and bulk copies (PTX, sm_90)

__device__ __forceinline__ u32 smem(const void* p) { return (u32)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem(bar)), "r"(count));
}

__device__ __forceinline__ void mbar_expect(u64* bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem(bar)), "r"(bytes) : "memory");
}

__device__ __forceinline__ void mbar_arrive(u64* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem(bar)) : "memory");
}

__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
    u32 done;
    do {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(smem(bar)), "r"(parity) : "memory");
    } while (!done);
}

__device__ __forceinline__ void bulk_copy(void* dst, const void* src, u32 bytes, u64* bar, u64 policy) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;"
        ::"r"(smem(dst)), "l"(src), "r"(bytes), "r"(smem(bar)), "l"(policy) : "memory");
}

__device__ __forceinline__ void consumers_sync() { asm volatile("bar.sync 1, %0;" ::"n"(CONSUMERS) : "memory"); }

// Every program's consumers finished the phase before any goes on: an arrival counter in global memory, whose
// release/acquire pair makes the phase's writes visible (cross-program data is then read with ld.global.cg).
__device__ __forceinline__ void grid_barrier(u32* counter, u32 target) {
    consumers_sync();
    if (threadIdx.x == 0) {
        __threadfence();
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(counter) : "memory");
        u32 seen;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
        } while (seen < target);
    }
    consumers_sync();
}

// One consumer warp's view of its ring: which slot comes next and the parity of its use.
struct Ring {
    const unsigned char* slots;
    u64* full;
    u64* empty;
    int count;
    int slot;
    u32 parity;
    long long waited;  // TRACE: clock cycles in acquire()

    __device__ __forceinline__ const unsigned char* acquire() {
#ifdef TRACE
        const long long before = clock64();
        mbar_wait(&full[slot], parity);
        waited += clock64() - before;
#else
        mbar_wait(&full[slot], parity);
#endif
        return slots + (size_t)slot * SLOT_BYTES;
    }
    __device__ __forceinline__ void release(int lane) {
        __syncwarp();
        if (lane == 0) mbar_arrive(&empty[slot]);
        if (++slot == count) { slot = 0; parity ^= 1; }
    }
};

// What the model and this kernel's launch keep (a device buffer built by engine/megakernel.py, field for field).
struct Params {
    const u64* layers;            // [layers][LAYER_FIELDS] addresses (Field)
    const int* ranges;            // [KINDS][programs][2] each program's output rows
    bf16* hidden;                 // [M, H]: the residual stream
    bf16* qkv;                    // [M, QKV]
    bf16* attn;                   // [M, heads * 128]
    bf16* act;                    // [M, F]
    float* parts;                 // [M * kv_heads * spans][G * 128 + 2 * G]: spans' sums and (max, total) per head
    u32* counters;                // [2 + M * kv_heads]: grid barrier, programs out, spans arrived per (row, kv head)
    const float* inv_freq;        // [HEAD_DIM / 2]
    const bf16* final_norm;       // [H]
    const bf16* token_weight;     // [tokens, H]
    float rope_scaling, attn_scale, eps;
    int layers_n, H, F, heads, kv_heads, tokens;
    int slots;                    // ring slots per consumer warp
    int x_offset, scales_offset, parts_offset, barrier_offset;  // shared memory: the ring at 0, x's values (and
                                  // the attention's scratch), x's fp8 scales, the row sums' parts, the mbarriers
};

// What changes from call to call (the kernel's other arguments).
struct Step {
    const bf16* embeds;           // [M, H]: the step's input rows
    const long long* positions;   // [M]
    bf16* keys;                   // caches: layer 0, row 0, kv head 0, position 0
    bf16* values;
    long long kv_layer, kv_row, kv_head;  // strides in elements (a position's stride is HEAD_DIM)
    int context;                  // positions attended at most
    bf16* out_hidden;             // [M, H]: the final norm's output
    bf16* out_logits;             // [M, tokens]
};

// x: a product's input in shared memory, [M, K] bf16 values and (FP8) [M, K / ACTIVATION_GROUP] float32 scales
struct Input {
    bf16* values;
    float* scales;
    int K;
};

// The warp of WARPS that holds step `s` of a product phase's `total` steps (warp w: [w * total / WARPS, ...)).
__device__ __forceinline__ int warp_of(int s, int total) { return min(WARPS - 1, (WARPS * (s + 1) - 1) / total); }

// A weight phase for one consumer warp: steps [begin, end) of the program's weight rows (row-major, x.K / STEP steps
// of STEP inputs per row; bf16, or FP8: e4m3) from its ring. Each row's M sums over this warp's steps of it (before
// fp8 output scales) go to parts[(row * 2 + piece) * M + m]: piece 1 where an earlier warp began the row (a row
// spans at most two warps: the host gives every program at least WARPS rows).
template <int M, bool FP8>
__device__ __forceinline__ void stream_steps(Ring& ring, const Input& x, int begin, int end, float* parts, int lane) {
    constexpr int steps_per_slot = SLOT_BYTES / (STEP * (FP8 ? 1 : 2));
    const int steps_per_row = x.K / STEP, groups = x.K / ACTIVATION_GROUP;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] = 0.f;
    int row = begin / steps_per_row, in_row = begin - row * steps_per_row, piece = in_row != 0;
    for (int step = begin; step < end; step += steps_per_slot) {
        const int count = min(steps_per_slot, end - step);
        const unsigned char* slot = ring.acquire();
        for (int i = 0; i < count; ++i) {
            float wf[8];
            if (FP8) {
                const uint2 wv = reinterpret_cast<const uint2*>(slot)[i * 32 + lane];
                const u32 words[2] = {wv.x, wv.y};
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    const float2 a = e4m3_pair((unsigned short)(words[j] & 0xffffu));
                    const float2 b = e4m3_pair((unsigned short)(words[j] >> 16));
                    wf[4 * j] = a.x; wf[4 * j + 1] = a.y; wf[4 * j + 2] = b.x; wf[4 * j + 3] = b.y;
                }
            } else {
                const uint4 wv = reinterpret_cast<const uint4*>(slot)[i * 32 + lane];
                wf[0] = lo(wv.x); wf[1] = hi(wv.x); wf[2] = lo(wv.y); wf[3] = hi(wv.y);
                wf[4] = lo(wv.z); wf[5] = hi(wv.z); wf[6] = lo(wv.w); wf[7] = hi(wv.w);
            }
            const uint4* xv = reinterpret_cast<const uint4*>(x.values + in_row * STEP) + lane;
#pragma unroll
            for (int m = 0; m < M; ++m) {
                const uint4 v = xv[m * (x.K / 8)];
                float s = FP8 ? 0.f : acc[m];
                s = fmaf(wf[0], lo(v.x), s); s = fmaf(wf[1], hi(v.x), s);
                s = fmaf(wf[2], lo(v.y), s); s = fmaf(wf[3], hi(v.y), s);
                s = fmaf(wf[4], lo(v.z), s); s = fmaf(wf[5], hi(v.z), s);
                s = fmaf(wf[6], lo(v.w), s); s = fmaf(wf[7], hi(v.w), s);
                // fp8: this lane's 8 products in float32, times their group's scale (2 groups per step)
                acc[m] = FP8 ? fmaf(s, x.scales[m * groups + in_row * 2 + (lane >> 4)], acc[m]) : s;
            }
            ++in_row;
            if (in_row == steps_per_row || step + i + 1 == end) {
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    const float sum = warp_sum(acc[m]);
                    if (lane == m) parts[(row * 2 + piece) * M + m] = sum;
                    acc[m] = 0.f;
                }
                if (in_row == steps_per_row) {
                    in_row = 0;
                    ++row;
                }
                piece = 0;
            }
        }
        ring.release(lane);
    }
}

// The sum of row r's parts (as stream_steps left them, after every warp's): one part, or two where the row's steps
// began in one warp and ended in the next.
template <int M>
__device__ __forceinline__ float row_sum(const float* parts, int r, int m, int steps_per_row, int total) {
    const float first = parts[r * 2 * M + m];
    const bool split = warp_of(r * steps_per_row, total) != warp_of((r + 1) * steps_per_row - 1, total);
    return split ? first + parts[(r * 2 + 1) * M + m] : first;
}

// Eight consecutive inputs of row m (vector k of the row, each thread its own) into x; with FP8 quantized first:
// the 16 threads of a half-warp hold one group of 128 (rows and groups start at multiples of 16 vectors).
template <bool FP8>
__device__ __forceinline__ void store_inputs(const Input& x, int m, int k, float (&v)[8]) {
    if (FP8) {
        float top = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) top = fmaxf(top, fabsf(v[j]));
#pragma unroll
        for (int offset = 8; offset > 0; offset >>= 1) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, offset));
        top = fmaxf(top, SMALLEST_SCALE);
        const float factor = E4M3_MAX / top;
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = e4m3_rounded(v[j] * factor);
        if ((threadIdx.x & 15) == 0) x.scales[m * (x.K / ACTIVATION_GROUP) + k / 16] = top * (1.f / E4M3_MAX);
    }
    reinterpret_cast<uint4*>(x.values + (size_t)m * x.K)[k] =
        make_uint4(pack(v[0], v[1]), pack(v[2], v[3]), pack(v[4], v[5]), pack(v[6], v[7]));
}

// x [M, width] = the RMSNorm of src's rows, rounded as Qwen2RMSNorm rounds (x * rstd to bf16, then times the
// weight to bf16). Every warp computes every row's rstd; all consumer threads write.
template <int M, bool FP8>
__device__ __forceinline__ void load_normed(const Input& x, const bf16* src, const bf16* weight, float eps) {
    const int lane = threadIdx.x & 31, vectors = x.K / 8;
    float rstd[M];
#pragma unroll
    for (int m = 0; m < M; ++m) {
        const uint4* row = reinterpret_cast<const uint4*>(src + (size_t)m * x.K);
        float squares = 0.f;
        for (int i0 = lane; i0 < vectors; i0 += 32 * LOAD_BATCH) {
            uint4 v[LOAD_BATCH];
#pragma unroll
            for (int u = 0; u < LOAD_BATCH; ++u)
                if (i0 + 32 * u < vectors) v[u] = __ldcg(row + i0 + 32 * u);
#pragma unroll
            for (int u = 0; u < LOAD_BATCH; ++u)
                if (i0 + 32 * u < vectors) {
                    const u32 p[4] = {v[u].x, v[u].y, v[u].z, v[u].w};
#pragma unroll
                    for (int j = 0; j < 4; ++j) squares += lo(p[j]) * lo(p[j]) + hi(p[j]) * hi(p[j]);
                }
        }
        rstd[m] = rsqrtf(warp_sum(squares) / x.K + eps);
    }
    for (int i = threadIdx.x; i < M * vectors; i += CONSUMERS) {  // M * vectors: a multiple of 32
        const int m = i / vectors, k = i - m * vectors;
        float r = rstd[0];
#pragma unroll
        for (int j = 1; j < M; ++j) r = m == j ? rstd[j] : r;
        const uint4 v = __ldcg(reinterpret_cast<const uint4*>(src + (size_t)m * x.K) + k);
        const uint4 w = __ldg(reinterpret_cast<const uint4*>(weight) + k);
        const u32 p[4] = {v.x, v.y, v.z, v.w}, q[4] = {w.x, w.y, w.z, w.w};
        float out[8];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            out[2 * j] = rounded(rounded(lo(p[j]) * r) * lo(q[j]));
            out[2 * j + 1] = rounded(rounded(hi(p[j]) * r) * hi(q[j]));
        }
        store_inputs<FP8>(x, m, k, out);
    }
    consumers_sync();
}

// x [M, x.K] = src's rows
template <int M, bool FP8>
__device__ __forceinline__ void load_rows(const Input& x, const bf16* src) {
    const int vectors = x.K / 8;
    const uint4* rows = reinterpret_cast<const uint4*>(src);
    for (int i0 = threadIdx.x; i0 < M * vectors; i0 += CONSUMERS * LOAD_BATCH) {
        uint4 v[LOAD_BATCH];
#pragma unroll
        for (int u = 0; u < LOAD_BATCH; ++u)
            if (i0 + CONSUMERS * u < M * vectors) v[u] = __ldcg(rows + i0 + CONSUMERS * u);
#pragma unroll
        for (int u = 0; u < LOAD_BATCH; ++u) {
            const int i = i0 + CONSUMERS * u;
            if (i < M * vectors) {
                const int m = i / vectors, k = i - m * vectors;
                float out[8] = {lo(v[u].x), hi(v[u].x), lo(v[u].y), hi(v[u].y), lo(v[u].z), hi(v[u].z), lo(v[u].w),
                                hi(v[u].w)};
                store_inputs<FP8>(x, m, k, out);
            }
        }
    }
    consumers_sync();
}

// One attention item: row m, kv head g, positions [span * ATT_SPAN, +ATT_SPAN) up to the row's own position.
template <int M, int G>
__device__ void attend_item(const Params& p, const Step& st, int layer, int m, int g, int span, int spans,
                            float* scratch) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int qkv_width = (p.heads + 2 * p.kv_heads) * HEAD_DIM;
    const long long pos = st.positions[m];
    const int own_span = (int)(pos / ATT_SPAN), splits = min(own_span + 1, spans);
    float* q = scratch;                              // [G][HEAD_DIM] rotated queries
    float* k_new = q + G * HEAD_DIM;                 // [HEAD_DIM] the row's own key (rotated) and value
    float* v_new = k_new + HEAD_DIM;
    float* warp_acc = v_new + HEAD_DIM;              // [WARPS][G][HEAD_DIM]
    float* warp_stats = warp_acc + WARPS * G * HEAD_DIM;  // [WARPS][G][2]: max, total
    __shared__ int last_span;

    // the rotary embedding of q and k (rotate_half's sign folded into sin), rounded as the torch ops round
    const bf16* row = p.qkv + (size_t)m * qkv_width;
    for (int i = threadIdx.x; i < (G + 2) * HEAD_DIM; i += CONSUMERS) {
        const int h = i / HEAD_DIM, d = i - h * HEAD_DIM;
        const int column = h < G ? (g * G + h) * HEAD_DIM : h == G ? (p.heads + g) * HEAD_DIM
                                                                   : (p.heads + p.kv_heads + g) * HEAD_DIM;
        float value = bf(__ldcg(row + column + d));
        if (h <= G) {
            const float angle = (float)pos * p.inv_freq[d & (HEAD_DIM / 2 - 1)];
            const float c = rounded(cosf(angle) * p.rope_scaling), s = rounded(sinf(angle) * p.rope_scaling);
            const float partner = bf(__ldcg(row + column + (d ^ (HEAD_DIM / 2))));
            value = rounded(rounded(value * c) + partner * (d < HEAD_DIM / 2 ? -s : s));
        }
        (h < G ? q + h * HEAD_DIM : h == G ? k_new : v_new)[d] = value;
    }
    consumers_sync();
    const size_t cache = (size_t)layer * st.kv_layer + (size_t)m * st.kv_row + (size_t)g * st.kv_head;
    const bf16* keys = st.keys + cache;
    const bf16* values = st.values + cache;
    if (span == own_span) {  // the span that holds the row's position writes its key and value
        const int d = threadIdx.x & (HEAD_DIM - 1);
        bf16* into = (threadIdx.x < HEAD_DIM ? st.keys : st.values) + cache + pos * HEAD_DIM + d;
        *into = to_bf16(threadIdx.x < HEAD_DIM ? k_new[d] : v_new[d]);
    }

    // scores: lane = position
    const long long base = (long long)span * ATT_SPAN + warp * 32, mine = base + lane;
    const bool valid = mine <= pos;
    float score[G];
#pragma unroll
    for (int h = 0; h < G; ++h) score[h] = 0.f;
    if (valid) {
        const uint4* kr = reinterpret_cast<const uint4*>(keys + mine * HEAD_DIM);
#pragma unroll
        for (int c0 = 0; c0 < HEAD_DIM / 8; c0 += LOAD_BATCH) {
          uint4 raw[LOAD_BATCH];
#pragma unroll
          for (int u = 0; u < LOAD_BATCH; ++u) raw[u] = mine == pos ? make_uint4(0, 0, 0, 0) : __ldg(kr + c0 + u);
#pragma unroll
          for (int u = 0; u < LOAD_BATCH; ++u) {
            const int c = c0 + u;
            float kf[8];
            if (mine == pos) {
#pragma unroll
                for (int j = 0; j < 8; ++j) kf[j] = k_new[c * 8 + j];
            } else {
                const uint4 v = raw[u];
                kf[0] = lo(v.x); kf[1] = hi(v.x); kf[2] = lo(v.y); kf[3] = hi(v.y);
                kf[4] = lo(v.z); kf[5] = hi(v.z); kf[6] = lo(v.w); kf[7] = hi(v.w);
            }
#pragma unroll
            for (int h = 0; h < G; ++h) {
                const float4 a = reinterpret_cast<const float4*>(q + h * HEAD_DIM + c * 8)[0];
                const float4 b = reinterpret_cast<const float4*>(q + h * HEAD_DIM + c * 8)[1];
                score[h] += a.x * kf[0] + a.y * kf[1] + a.z * kf[2] + a.w * kf[3] + b.x * kf[4] + b.y * kf[5] +
                            b.z * kf[6] + b.w * kf[7];
            }
          }
        }
    }
    const int live = (int)max(0LL, min(32LL, pos - base + 1));
    float weight[G], top[G], total[G], acc[G][4];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        const float s = valid ? score[h] * p.attn_scale : NEG_INF;
        top[h] = warp_max(s);
        weight[h] = valid ? __expf(s - top[h]) : 0.f;
        total[h] = warp_sum(weight[h]);
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[h][j] = 0.f;
    }
    // values: lane = 4 of the head's dimensions
    for (int j0 = 0; j0 < live; j0 += VALUE_BATCH) {  // live: the same for the whole warp
        uint2 raw[VALUE_BATCH];
#pragma unroll
        for (int u = 0; u < VALUE_BATCH; ++u)
            if (j0 + u < live && base + j0 + u != pos)
                raw[u] = __ldg(reinterpret_cast<const uint2*>(values + (base + j0 + u) * HEAD_DIM) + lane);
#pragma unroll
        for (int u = 0; u < VALUE_BATCH; ++u) {
            const int j = j0 + u;
            if (j < live) {
                float v[4];
                if (base + j == pos) {
#pragma unroll
                    for (int c = 0; c < 4; ++c) v[c] = v_new[lane * 4 + c];
                } else {
                    v[0] = lo(raw[u].x); v[1] = hi(raw[u].x); v[2] = lo(raw[u].y); v[3] = hi(raw[u].y);
                }
#pragma unroll
                for (int h = 0; h < G; ++h) {
                    const float w = __shfl_sync(0xffffffffu, weight[h], j);
#pragma unroll
                    for (int c = 0; c < 4; ++c) acc[h][c] = fmaf(w, v[c], acc[h][c]);
                }
            }
        }
    }
    for (int h = 0; h < G; ++h) {
#pragma unroll
        for (int c = 0; c < 4; ++c) warp_acc[(warp * G + h) * HEAD_DIM + lane * 4 + c] = acc[h][c];
        if (lane == 0) {
            warp_stats[(warp * G + h) * 2] = top[h];
            warp_stats[(warp * G + h) * 2 + 1] = total[h];
        }
    }
    consumers_sync();

    // the warps combined: this span's sums, or (one span) the attention itself
    const int out_width = p.heads * HEAD_DIM, part_width = G * HEAD_DIM + 2 * G;
    float* part = p.parts + ((size_t)(m * p.kv_heads + g) * spans + span) * part_width;
    for (int i = threadIdx.x; i < G * HEAD_DIM; i += CONSUMERS) {
        const int h = i / HEAD_DIM, d = i - h * HEAD_DIM;
        float largest = NEG_INF;
        for (int w = 0; w < WARPS; ++w) largest = fmaxf(largest, warp_stats[(w * G + h) * 2]);
        float sum = 0.f, norm = 0.f;
        for (int w = 0; w < WARPS; ++w) {
            const float f = __expf(warp_stats[(w * G + h) * 2] - largest);
            sum += f * warp_acc[(w * G + h) * HEAD_DIM + d];
            norm += f * warp_stats[(w * G + h) * 2 + 1];
        }
        if (splits == 1) {
            p.attn[(size_t)m * out_width + (g * G + h) * HEAD_DIM + d] = to_bf16(sum / norm);
        } else {
            part[i] = sum;
            if (d == 0) {
                part[G * HEAD_DIM + 2 * h] = largest;
                part[G * HEAD_DIM + 2 * h + 1] = norm;
            }
        }
    }
    if (splits > 1) {  // the last span of (m, g) to finish combines them all
        __threadfence();
        consumers_sync();
        u32* arrived = p.counters + 2 + m * p.kv_heads + g;
        if (threadIdx.x == 0) last_span = atomicAdd(arrived, 1) == (u32)(splits - 1);
        consumers_sync();
        if (last_span) {
            __threadfence();
            const float* first = p.parts + (size_t)(m * p.kv_heads + g) * spans * part_width;
            for (int i = threadIdx.x; i < G * HEAD_DIM; i += CONSUMERS) {
                const int h = i / HEAD_DIM, d = i - h * HEAD_DIM;
                float largest = NEG_INF;
                for (int s = 0; s < splits; ++s)
                    largest = fmaxf(largest, __ldcg(first + s * part_width + G * HEAD_DIM + 2 * h));
                float sum = 0.f, norm = 0.f;
                for (int s = 0; s < splits; ++s) {
                    const float* other = first + s * part_width;
                    const float f = __expf(__ldcg(other + G * HEAD_DIM + 2 * h) - largest);
                    sum += f * __ldcg(other + i);
                    norm += f * __ldcg(other + G * HEAD_DIM + 2 * h + 1);
                }
                p.attn[(size_t)m * out_width + (g * G + h) * HEAD_DIM + d] = to_bf16(sum / norm);
            }
            if (threadIdx.x == 0) *arrived = 0;
        }
    }
    consumers_sync();  // the scratch is reused by the next item
}

// One ring's weight chunks in the order its warp consumes them: every product of every layer (gate rows, then the
// same up rows), at most SLOT_BYTES of one segment at a time.
struct Chunks {
    int layer = 0, kind = 0, pass = 0;
    size_t offset = 0;

    __device__ __forceinline__ bool next(const Params& p, int w, int weight_bytes, const unsigned char*& src,
                                         u32& bytes) {
        while (layer < p.layers_n) {
            const u64* fields = p.layers + (size_t)layer * LAYER_FIELDS;
            const int K = kind == DOWN ? p.F : kind == O ? p.heads * HEAD_DIM : p.H;
            const size_t row_bytes = (size_t)K * weight_bytes;
            const int* range = p.ranges + ((size_t)kind * gridDim.x + blockIdx.x) * 2;
            const int total = (range[1] - range[0]) * (K / STEP);
            const size_t step_bytes = (size_t)STEP * weight_bytes;
            const size_t first = (size_t)(w * total / WARPS) * step_bytes;
            const size_t length = (size_t)((w + 1) * total / WARPS) * step_bytes - first;
            if (offset < length) {
                src = reinterpret_cast<const unsigned char*>(fields[W_QKV + kind]) + range[0] * row_bytes + first +
                      (pass ? (size_t)p.F * row_bytes : 0) + offset;
                bytes = (u32)min((size_t)SLOT_BYTES, length - offset);
                offset += bytes;
                return true;
            }
            offset = 0;
            if (kind == GATE_UP && pass == 0) {
                pass = 1;
                continue;
            }
            pass = 0;
            if (++kind == KINDS) { kind = 0; ++layer; }
        }
        return false;
    }
};

// The producer lane of consumer warp w: its chunks into its ring, each as soon as a slot is free.
__device__ void produce(const Params& p, int weight_bytes, unsigned char* ring, u64* full, u64* empty, int w) {
    u64 policy;  // streamed once per step: first out of L2
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    unsigned char* mine = ring + (size_t)w * p.slots * SLOT_BYTES;
    u64* my_full = full + w * p.slots;
    u64* my_empty = empty + w * p.slots;
    int slot = 0;
    u32 parity = 0;
    Chunks chunks;
    const unsigned char* src;
    u32 bytes;
    while (chunks.next(p, w, weight_bytes, src, bytes)) {
        mbar_wait(my_empty + slot, parity ^ 1);
        mbar_expect(my_full + slot, bytes);
        bulk_copy(mine + (size_t)slot * SLOT_BYTES, src, bytes, my_full + slot, policy);
        if (++slot == p.slots) { slot = 0; parity ^= 1; }
    }
}

// A product's sums for output row n as floats: times the row's fp8 scale (FP8), plus the bias (if any)
template <bool FP8>
__device__ __forceinline__ float finished(float sum, const u64* fields, Field scales, int n, const bf16* bias) {
    if (FP8) sum *= reinterpret_cast<const float*>(fields[scales])[n];
    return bias ? sum + bf(bias[n]) : sum;
}

template <int M, int G, bool FP8>
__global__ void __launch_bounds__(THREADS, 1)
lm_step(const Params* __restrict__ params, const bf16* embeds, const long long* positions, bf16* keys, bf16* values,
        long long kv_layer, long long kv_row, long long kv_head, int context, bf16* out_hidden, bf16* out_logits) {
    extern __shared__ __align__(128) unsigned char shared[];
    const Params& p = *params;
    const Step st{embeds, positions, keys, values, kv_layer, kv_row, kv_head, context, out_hidden, out_logits};
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    unsigned char* ring = shared;
    bf16* x_values = reinterpret_cast<bf16*>(shared + p.x_offset);
    float* x_scales = reinterpret_cast<float*>(shared + p.scales_offset);
    u64* full = reinterpret_cast<u64*>(shared + p.barrier_offset);
    u64* empty = full + WARPS * p.slots;
    if (threadIdx.x == 0) {
        for (int i = 0; i < WARPS * p.slots; ++i) {
            mbar_init(&full[i], 1);
            mbar_init(&empty[i], 1);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
#ifdef TRACE
    const long long start = clock64();
#endif
    if (warp == WARPS) {
        if (lane < WARPS) produce(p, FP8 ? 1 : 2, ring, full, empty, lane);
        return;
    }

    Ring mine{ring + (size_t)warp * p.slots * SLOT_BYTES, full + warp * p.slots, empty + warp * p.slots, p.slots, 0, 0,
              0};
    const int programs = gridDim.x;
    float* parts = reinterpret_cast<float*>(shared + p.parts_offset);  // [2][rows][2][M]: gate's, then up's
    const int qkv_width = (p.heads + 2 * p.kv_heads) * HEAD_DIM, attn_width = p.heads * HEAD_DIM;
    const int spans = (st.context + ATT_SPAN - 1) / ATT_SPAN;
    const Input hidden_in{x_values, x_scales, p.H}, attn_in{x_values, x_scales, attn_width},
        act_in{x_values, x_scales, p.F};
    u32 barriers = 0;
    // a product phase: this program's rows (first, rows, their steps), this warp's steps [begin, end)
    int first, rows, total, begin, end;
    auto phase = [&](int kind, int K) {
        const int* range = p.ranges + ((size_t)kind * programs + blockIdx.x) * 2;
        first = range[0];
        rows = range[1] - range[0];
        total = rows * (K / STEP);
        begin = warp * total / WARPS;
        end = (warp + 1) * total / WARPS;
    };
    for (int layer = 0; layer < p.layers_n; ++layer) {
        const u64* fields = p.layers + (size_t)layer * LAYER_FIELDS;
        const bf16* residual = layer == 0 ? st.embeds : p.hidden;
        // a product added to a residual: hidden = `from` + the product, rounded once
        auto add_to_hidden = [&](const bf16* from, Field scales, int K) {
            consumers_sync();
            for (int i = threadIdx.x; i < rows * M; i += CONSUMERS) {
                const int r = i / M, m = i - r * M, n = first + r;
                const size_t at = (size_t)m * p.H + n;
                const float product = finished<FP8>(row_sum<M>(parts, r, m, K / STEP, total), fields, scales, n,
                                                    nullptr);
                p.hidden[at] = to_bf16(bf(__ldcg(from + at)) + product);
            }
        };

        MARK(0);
        load_normed<M, FP8>(hidden_in, residual, reinterpret_cast<const bf16*>(fields[NORM1]), p.eps);
        MARK(1);
        phase(QKV, p.H);
        const bf16* bias = reinterpret_cast<const bf16*>(fields[B_QKV]);
        stream_steps<M, FP8>(mine, hidden_in, begin, end, parts, lane);
        consumers_sync();
        for (int i = threadIdx.x; i < rows * M; i += CONSUMERS) {
            const int r = i / M, m = i - r * M, n = first + r;
            const float sum = row_sum<M>(parts, r, m, p.H / STEP, total);
            p.qkv[(size_t)m * qkv_width + n] = to_bf16(finished<FP8>(sum, fields, S_QKV, n, bias));
        }
        MARK(2);
        grid_barrier(p.counters, ++barriers * programs);
        MARK(3);

        float* scratch = reinterpret_cast<float*>(x_values);
        for (int item = blockIdx.x; item < M * p.kv_heads * spans; item += programs) {
            const int span = item % spans, mg = item / spans;
            const int m = mg / p.kv_heads, g = mg - m * p.kv_heads;
            if (span <= st.positions[m] / ATT_SPAN) attend_item<M, G>(p, st, layer, m, g, span, spans, scratch);
        }
        MARK(4);
        grid_barrier(p.counters, ++barriers * programs);
        MARK(5);

        load_rows<M, FP8>(attn_in, p.attn);
        MARK(6);
        phase(O, attn_width);
        stream_steps<M, FP8>(mine, attn_in, begin, end, parts, lane);
        add_to_hidden(residual, S_O, attn_width);
        MARK(7);
        grid_barrier(p.counters, ++barriers * programs);
        MARK(8);

        load_normed<M, FP8>(hidden_in, p.hidden, reinterpret_cast<const bf16*>(fields[NORM2]), p.eps);
        MARK(9);
        phase(GATE_UP, p.H);
        float* up_parts = parts + rows * 2 * M;
        stream_steps<M, FP8>(mine, hidden_in, begin, end, parts, lane);
        MARK(10);
        stream_steps<M, FP8>(mine, hidden_in, begin, end, up_parts, lane);
        consumers_sync();
        for (int i = threadIdx.x; i < rows * M; i += CONSUMERS) {
            const int r = i / M, m = i - r * M, n = first + r;
            const float gate = rounded(finished<FP8>(row_sum<M>(parts, r, m, p.H / STEP, total), fields, S_GATE_UP,
                                                     n, nullptr));
            const float up = rounded(finished<FP8>(row_sum<M>(up_parts, r, m, p.H / STEP, total), fields,
                                                   S_GATE_UP, p.F + n, nullptr));
            const float silu = rounded(gate / (1.f + __expf(-gate)));
            p.act[(size_t)m * p.F + n] = to_bf16(silu * up);
        }
        MARK(11);
        grid_barrier(p.counters, ++barriers * programs);
        MARK(12);

        load_rows<M, FP8>(act_in, p.act);
        MARK(13);
        phase(DOWN, p.F);
        stream_steps<M, FP8>(mine, act_in, begin, end, parts, lane);
        add_to_hidden(p.hidden, S_DOWN, p.F);
        MARK(14);
        grid_barrier(p.counters, ++barriers * programs);
        MARK(15);
    }
#ifdef TRACE
    if (lane == 0) trace_waits[blockIdx.x][warp] = mine.waited;
#endif

    // the final norm and the scored logits: program 0, one warp per row
    if (blockIdx.x == 0 && warp < M) {
        const bf16* src = p.hidden + (size_t)warp * p.H;
        float squares = 0.f;
        for (int i = lane; i < p.H; i += 32) squares += bf(__ldcg(src + i)) * bf(__ldcg(src + i));
        const float rstd = rsqrtf(warp_sum(squares) / p.H + p.eps);
        float logit[MAX_TOKENS] = {0.f, 0.f, 0.f, 0.f};
        for (int i = lane; i < p.H; i += 32) {
            const float normed = rounded(rounded(bf(__ldcg(src + i)) * rstd) * bf(p.final_norm[i]));
            st.out_hidden[(size_t)warp * p.H + i] = to_bf16(normed);
#pragma unroll
            for (int t = 0; t < MAX_TOKENS; ++t)
                if (t < p.tokens) logit[t] += normed * bf(p.token_weight[(size_t)t * p.H + i]);
        }
#pragma unroll
        for (int t = 0; t < MAX_TOKENS; ++t) {
            const float total = warp_sum(logit[t]);
            if (lane == t && t < p.tokens) st.out_logits[warp * p.tokens + t] = to_bf16(total);
        }
    }
    // the last program out resets the counters for the next launch: every program has passed every barrier
    consumers_sync();
    if (threadIdx.x == 0 && atomicAdd(p.counters + 1, 1) == (u32)(programs - 1)) {
        p.counters[0] = 0;
        p.counters[1] = 0;
    }
}
