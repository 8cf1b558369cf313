// Tiling structs: computed on the host (in Rust, `ascend_kernels::ascendc::tiling`) and passed to
// the kernels by value. The layouts are mirrored by `#[repr(C)]` structs with size asserts.
// Every name carries the `Ark` (ascend-rs kernels) prefix: CANN's `kernel_operator.h` already
// defines tiling structs of its own (`RmsNormTiling` in highlevel_api/kernel_tiling), and a
// kernel includes both.
#pragma once
#include <cstdint>

struct ArkReshapeAndCacheTiling {
    uint32_t num_tokens;
    uint32_t row;        // kv_heads * head_size elements per token
    uint32_t num_slots;  // num_blocks * block_size
    uint32_t reserved;
};

struct ArkPagedAttentionTiling {
    uint32_t num_seqs;
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t head_size;
    uint32_t block_size;
    uint32_t num_blocks;
    uint32_t max_blocks_per_seq;
    uint32_t chunk;      // tokens of K/V loaded into the UB at a time
    float scale;
    uint32_t sliding_window;  // 0: attend to the whole context
    // Decode: float partial rows each query row accumulates weight x V into (MulAddDst from the
    // T-typed V chunk; a power of two). 0: one row, V cast to float (prefill).
    uint32_t acc_rows;
    // Decode: parts each context is split into across cores (1: none; more: partial results in
    // the workspace, combined by paged_attention_merge).
    uint32_t partitions;
    // Prefill: query tokens per task (1 for decode).
    uint32_t tile_rows;
    // KV heads a task reads together (their rows of a token are adjacent in the cache, so a
    // longer burst per token); divides num_kv_heads.
    uint32_t kv_heads_per_task;
};

// Prefill attention: the attention tiling (num_seqs sequences) and the query rows of the chunk.
struct ArkPrefillAttentionTiling {
    ArkPagedAttentionTiling attn;
    uint32_t num_tokens;
    uint32_t reserved;
};

struct ArkCopyBlocksTiling {
    uint32_t num_pairs;
    uint32_t num_blocks;
    uint32_t block_elems;  // block_size * kv_heads * head_size
    uint32_t chunk;        // elements per GM -> UB -> GM piece
};

struct ArkRopeTiling {
    uint32_t num_tokens;
    uint32_t num_heads;
    uint32_t num_kv_heads;
    uint32_t head_size;
    uint32_t rotary_dim;  // leading elements of each head that rotate
    uint32_t max_position;
    uint32_t gptj;        // 0: NeoX pairing (f, f + rotary_dim / 2); 1: GPT-J pairing (2f, 2f + 1)
};

struct ArkRmsNormTiling {
    uint32_t num_tokens;
    uint32_t hidden;
    float eps;
    uint32_t fused;      // 1: residual += x first, and normalise the sum
    uint32_t buffers;    // buffers per queue: 2 (double buffering) or 1 (rows too wide for 2)
};

// The most query heads per KV head the attention kernel handles.
constexpr uint32_t PA_MAX_GROUP = 16;
// Heads the RoPE kernel rotates per vector instruction (one repeat each).
constexpr uint32_t ROPE_HEADS_PER_PASS = 16;
// The most tokens per K/V chunk.
constexpr uint32_t PA_MAX_CHUNK = 128;
// The most parts a split decode context has (the merge reduces them in one repeat).
constexpr uint32_t PA_MAX_PARTITIONS = 64;
// Block-table entries an attention task stages in the UB (a longer range is read from GM).
constexpr uint32_t PA_TABLE_STAGE = 512;
