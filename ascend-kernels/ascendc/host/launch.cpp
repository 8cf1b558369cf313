// The host build's launch shims: each runs one Ascend C kernel on the host implementation
// (kernel_operator.h), every simulated core in turn, and turns a hardware-rule violation into a
// non-zero return and a message. The Rust side (src/ascendc/host.rs) calls these through FFI.
// On the NPU the same kernel sources are launched with <<<block_dim, nullptr, stream>>> instead.
#include "kernel_operator.h"
#include "call_sites.h"

#include "copy_blocks.cpp"
#include "paged_attention.cpp"
#include "reshape_and_cache.cpp"
#include "rms_norm.cpp"
#include "rotary_embedding.cpp"

#define SHIM(NAME, TILING, PARAMS, ARGS)                                                           \
    extern "C" int32_t ascendc_host_##NAME(uint32_t block_dim, PARAMS, const TILING* tiling,       \
                                           char* err, size_t err_len) {                            \
        const TILING t = *tiling;                                                                  \
        return AscendC::launch(#NAME, block_dim, err, err_len, [&] { NAME(ARGS, t); });            \
    }
#define P(...) __VA_ARGS__

#define RESHAPE_SHIM(NAME)                                                                         \
    SHIM(NAME, ArkReshapeAndCacheTiling,                                                              \
         P(uint8_t* key, uint8_t* value, uint8_t* key_cache, uint8_t* value_cache, uint8_t* slots,  \
           uint8_t* status),                                                                       \
         P(key, value, key_cache, value_cache, slots, status))
RESHAPE_SHIM(reshape_and_cache_half)
RESHAPE_SHIM(reshape_and_cache_float)

#define ATTENTION_SHIM(NAME)                                                                       \
    SHIM(NAME, ArkPagedAttentionTiling,                                                               \
         P(uint8_t* out, uint8_t* query, uint8_t* key_cache, uint8_t* value_cache,                 \
           uint8_t* block_tables, uint8_t* seq_lens, uint8_t* workspace, uint8_t* status),         \
         P(out, query, key_cache, value_cache, block_tables, seq_lens, workspace, status))
ATTENTION_SHIM(paged_attention_half)
ATTENTION_SHIM(paged_attention_float)

#define MERGE_SHIM(NAME)                                                                           \
    SHIM(NAME, ArkPagedAttentionTiling, P(uint8_t* out, uint8_t* workspace), P(out, workspace))
MERGE_SHIM(paged_attention_merge_half)
MERGE_SHIM(paged_attention_merge_float)

#define PREFILL_SHIM(NAME)                                                                         \
    SHIM(NAME, ArkPrefillAttentionTiling,                                                          \
         P(uint8_t* out, uint8_t* query, uint8_t* key_cache, uint8_t* value_cache,                 \
           uint8_t* block_tables, uint8_t* query_start_loc, uint8_t* seq_lens, uint8_t* status),   \
         P(out, query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, status))
PREFILL_SHIM(paged_prefill_attention_half)
PREFILL_SHIM(paged_prefill_attention_float)

#define COPY_SHIM(NAME)                                                                            \
    SHIM(NAME, ArkCopyBlocksTiling,                                                                \
         P(uint8_t* key_cache, uint8_t* value_cache, uint8_t* pairs, uint8_t* status),             \
         P(key_cache, value_cache, pairs, status))
COPY_SHIM(copy_blocks_half)
COPY_SHIM(copy_blocks_float)

#define ROPE_SHIM(NAME)                                                                            \
    SHIM(NAME, ArkRopeTiling,                                                                      \
         P(uint8_t* positions, uint8_t* query, uint8_t* key, uint8_t* cos_sin, uint8_t* status),   \
         P(positions, query, key, cos_sin, status))
ROPE_SHIM(rotary_embedding_half)
ROPE_SHIM(rotary_embedding_float)

#define NORM_SHIM(NAME)                                                                            \
    SHIM(NAME, ArkRmsNormTiling, P(uint8_t* x, uint8_t* residual, uint8_t* weight, uint8_t* out),     \
         P(x, residual, weight, out))
NORM_SHIM(rms_norm_half)
NORM_SHIM(rms_norm_float)

// Kernels that break one hardware rule each, for the tests that show the host implementation
// refusing what a 910B would refuse (or silently get wrong).
namespace violations {
using namespace AscendC;

// 2 x 96 KiB of queue buffers: more than the 184 KiB a vector core leaves to kernels.
void ub_overflow(GM_ADDR) {
    TPipe pipe;
    TQue<TPosition::VECIN, 1> q;
    pipe.InitBuffer(q, 2, 96 * 1024);
}

// 20 floats = 80 bytes: not a whole number of 32-byte blocks.
void misaligned_copy(GM_ADDR gm) {
    TPipe pipe;
    TQue<TPosition::VECIN, 1> q;
    pipe.InitBuffer(q, 1, 128);
    GlobalTensor<float> g;
    g.SetGlobalBuffer((__gm__ float*)gm, 64);
    LocalTensor<float> t = q.AllocTensor<float>();
    DataCopy(t, g, 20);
}

// A UB operand 4 floats (16 bytes) into a buffer.
void misaligned_operand(GM_ADDR gm) {
    TPipe pipe;
    TQue<TPosition::VECIN, 1> q;
    pipe.InitBuffer(q, 1, 256);
    GlobalTensor<float> g;
    g.SetGlobalBuffer((__gm__ float*)gm, 64);
    LocalTensor<float> t = q.AllocTensor<float>();
    DataCopy(t[4], g, 8);
}

void use_after_free(GM_ADDR gm) {
    TPipe pipe;
    TQue<TPosition::VECIN, 1> q;
    pipe.InitBuffer(q, 1, 128);
    GlobalTensor<float> g;
    g.SetGlobalBuffer((__gm__ float*)gm, 64);
    LocalTensor<float> t = q.AllocTensor<float>();
    q.FreeTensor(t);
    DataCopy(t, g, 32);
}

// Two tensors enqueued on a queue of depth 1.
void queue_depth(GM_ADDR) {
    TPipe pipe;
    TQue<TPosition::VECIN, 1> q;
    pipe.InitBuffer(q, 2, 128);
    LocalTensor<float> a = q.AllocTensor<float>();
    LocalTensor<float> b = q.AllocTensor<float>();
    q.EnQue(a);
    q.EnQue(b);
}

// A third AllocTensor from a double-buffered queue without a FreeTensor.
void alloc_exhausted(GM_ADDR) {
    TPipe pipe;
    TQue<TPosition::VECIN, 1> q;
    pipe.InitBuffer(q, 2, 128);
    q.AllocTensor<float>();
    q.AllocTensor<float>();
    q.AllocTensor<float>();
}

// A GM read past the global buffer.
void gm_out_of_range(GM_ADDR gm) {
    TPipe pipe;
    TQue<TPosition::VECIN, 1> q;
    pipe.InitBuffer(q, 1, 512);
    GlobalTensor<float> g;
    g.SetGlobalBuffer((__gm__ float*)gm, 64);
    LocalTensor<float> t = q.AllocTensor<float>();
    DataCopy(t, g[56], 16);
}

void unpaired_flag(GM_ADDR) { SetFlag<HardEvent::MTE2_V>(0); }

// ReduceMax with its work tensor inside the source (the partial results would overwrite data
// still to be read). Sharing the destination's bytes would be allowed.
void reduce_work_overlap(GM_ADDR) {
    TPipe pipe;
    TBuf<TPosition::VECCALC> src, red;
    pipe.InitBuffer(src, 128 * sizeof(float));
    pipe.InitBuffer(red, 32);
    LocalTensor<float> s = src.Get<float>();
    Duplicate(s, 1.0f, 128);
    ReduceMax(red.Get<float>(), s, s[32], 64);
}

// ReduceMax of 1024 floats: 16 repeats, a value and an index each, need 32 floats of work.
void reduce_work_small(GM_ADDR) {
    TPipe pipe;
    TBuf<TPosition::VECCALC> src, red, work;
    pipe.InitBuffer(src, 1024 * sizeof(float));
    pipe.InitBuffer(red, 32);
    pipe.InitBuffer(work, 64);
    Duplicate(src.Get<float>(), 1.0f, 1024);
    ReduceMax(red.Get<float>(), src.Get<float>(), work.Get<float>(), 1024);
}

// The scalar unit reading what a vector instruction wrote, with no V_S flag between.
void scalar_read_unsynced(GM_ADDR) {
    TPipe pipe;
    TBuf<TPosition::VECCALC> a, b;
    pipe.InitBuffer(a, 32);
    pipe.InitBuffer(b, 32);
    Duplicate(b.Get<float>(), 2.0f, 8);
    (void)b.Get<float>().GetValue(3);
}

// A vector instruction reading what SetValue wrote, with no S_V flag between.
void vector_read_unsynced(GM_ADDR) {
    TPipe pipe;
    TBuf<TPosition::VECCALC> a;
    pipe.InitBuffer(a, 32);
    LocalTensor<float> t = a.Get<float>();
    t.SetValue(5, 1.0f);
    Adds(t, t, 1.0f, 8);
}

// A GM -> UB copy into a TBuf read by the vector unit with no MTE2 -> V synchronisation (a
// queue's EnQue/DeQue would provide it).
void mte2_to_vector_unsynced(GM_ADDR gm) {
    TPipe pipe;
    TBuf<TPosition::VECCALC> b;
    pipe.InitBuffer(b, 256);
    GlobalTensor<float> g;
    g.SetGlobalBuffer((__gm__ float*)gm, 64);
    LocalTensor<float> t = b.Get<float>();
    DataCopy(t, g, 64);
    Adds(t, t, 1.0f, 64);
}

// A vector result stored to GM with no V -> MTE3 synchronisation.
void vector_to_mte3_unsynced(GM_ADDR gm) {
    TPipe pipe;
    TBuf<TPosition::VECCALC> b;
    pipe.InitBuffer(b, 256);
    GlobalTensor<float> g;
    g.SetGlobalBuffer((__gm__ float*)gm, 64);
    LocalTensor<float> t = b.Get<float>();
    Duplicate(t, 1.0f, 64);
    DataCopy(g, t, 64);
}

// Refilling a dequeued input tensor while the vector unit may still read it: no FreeTensor /
// AllocTensor (V -> MTE2) between the read and the next copy.
void refill_without_free(GM_ADDR gm) {
    TPipe pipe;
    TQue<TPosition::VECIN, 1> q;
    TBuf<TPosition::VECCALC> b;
    pipe.InitBuffer(q, 1, 256);
    pipe.InitBuffer(b, 256);
    GlobalTensor<float> g;
    g.SetGlobalBuffer((__gm__ float*)gm, 64);
    LocalTensor<float> t = q.AllocTensor<float>();
    DataCopy(t, g, 64);
    q.EnQue(t);
    t = q.DeQue<float>();
    Adds(b.Get<float>(), t, 1.0f, 64);
    DataCopy(t, g, 64);
    q.FreeTensor(t);
}
}  // namespace violations

// `which` picks the violation (the order of the Rust `Violation` enum); `gm` is at least 64
// floats of global memory.
extern "C" int32_t ascendc_host_violation(uint32_t which, uint8_t* gm, char* err, size_t err_len) {
    using V = void (*)(GM_ADDR);
    static const V table[] = {violations::ub_overflow,    violations::misaligned_copy,
                              violations::misaligned_operand, violations::use_after_free,
                              violations::queue_depth,    violations::alloc_exhausted,
                              violations::gm_out_of_range, violations::unpaired_flag,
                              violations::reduce_work_overlap, violations::reduce_work_small,
                              violations::scalar_read_unsynced, violations::vector_read_unsynced,
                              violations::mte2_to_vector_unsynced, violations::vector_to_mte3_unsynced,
                              violations::refill_without_free};
    if (which >= sizeof(table) / sizeof(table[0])) return -1;
    return AscendC::launch("violation", 1, err, err_len, [&] { table[which](gm); });
}

// The per-core costs of the last successful launch on this thread (none after a failed one):
// copies min(cap, cores) entries to `out` and returns the number of cores.
extern "C" size_t ascendc_host_last_costs(AscendC::CoreCost* out, size_t cap) {
    const auto& costs = AscendC::last_costs();
    for (size_t i = 0; i < costs.size() && i < cap; i++) out[i] = costs[i];
    return costs.size();
}

// The instruction stream core `core` of the last launch issued (see AscendC::TraceEvent): its
// length, copying at most `cap` events; `truncated` says whether it hit AscendC::TRACE_CAP.
extern "C" size_t ascendc_host_last_trace(size_t core, AscendC::TraceEvent* out, size_t cap, int* truncated) {
    const auto& traces = AscendC::last_traces();
    if (core >= traces.size()) return 0;
    const auto& t = traces[core];
    for (size_t i = 0; i < t.size() && i < cap; i++) out[i] = t[i];
    if (truncated) *truncated = AscendC::last_truncated().size() > core && AscendC::last_truncated()[core];
    return t.size();
}
