// copy_blocks: copy whole cache blocks src -> dst in both the K and the V cache (copy-on-write of
// a shared prefix block). `pairs` holds (src, dst) int32 pairs in device memory; the pairs are
// spread over the cores, and each block goes GM -> UB -> GM in `chunk`-element pieces through a
// double-buffered queue (no vector compute). Pairs run in parallel, so within one launch no block
// may be both a destination and a source or two destinations (the host splits a batch into waves
// that respect that). A pair naming a block outside the cache, or a block copied onto itself, is
// skipped and counted in `status`: the pairs come from device memory.
//
// Needs the block (block_size * kv_heads * head_size elements) and the chunk to be whole 32-byte
// blocks; the tiling checks.
#include "common.h"
#include "tiling.h"

template <typename T>
class KernelCopyBlocks {
public:
    __aicore__ inline void Init(GM_ADDR key_cache, GM_ADDR value_cache, GM_ADDR pairs, GM_ADDR status,
                                const ArkCopyBlocksTiling& t) {
        t_ = t;
        const uint64_t cache = static_cast<uint64_t>(t.num_blocks) * t.block_elems;
        keyGm_.SetGlobalBuffer((__gm__ T*)key_cache, cache);
        valueGm_.SetGlobalBuffer((__gm__ T*)value_cache, cache);
        pairGm_.SetGlobalBuffer((__gm__ int32_t*)pairs, static_cast<uint64_t>(t.num_pairs) * 2);
        pipe_.InitBuffer(queue_, 2, t.chunk * sizeof(T));
        status_.Init(pipe_, status);
    }

    __aicore__ inline void Process() {
        for (int64_t p = GetBlockIdx(); p < t_.num_pairs; p += GetBlockNum()) {
            const int32_t src = pairGm_.GetValue(2 * p), dst = pairGm_.GetValue(2 * p + 1);
            if (src < 0 || dst < 0 || static_cast<uint32_t>(src) >= t_.num_blocks ||
                static_cast<uint32_t>(dst) >= t_.num_blocks || src == dst) {
                status_.Refused();
                continue;
            }
            const uint64_t from = static_cast<uint64_t>(src) * t_.block_elems;
            const uint64_t to = static_cast<uint64_t>(dst) * t_.block_elems;
            for (uint32_t off = 0; off < t_.block_elems; off += t_.chunk) {
                const uint32_t n = t_.block_elems - off < t_.chunk ? t_.block_elems - off : t_.chunk;
                CopyPiece(keyGm_[from + off], keyGm_[to + off], n);
                CopyPiece(valueGm_[from + off], valueGm_[to + off], n);
            }
        }
        status_.Write();
    }

private:
    __aicore__ inline void CopyPiece(const GlobalTensor<T>& src, const GlobalTensor<T>& dst, uint32_t n) {
        LocalTensor<T> in = queue_.template AllocTensor<T>();
        DataCopy(in, src, n);
        queue_.EnQue(in);
        LocalTensor<T> out = queue_.template DeQue<T>();
        GlobalTensor<T> target = dst;
        DataCopy(target, out, n);
        queue_.FreeTensor(out);
    }

    ArkCopyBlocksTiling t_;
    TPipe pipe_;
    TQueBind<TPosition::VECIN, TPosition::VECOUT, 1> queue_;
    GlobalTensor<T> keyGm_, valueGm_;
    GlobalTensor<int32_t> pairGm_;
    StatusWord status_;
};

#define COPY_BLOCKS(NAME, T)                                                                       \
    extern "C" __global__ __aicore__ void NAME(GM_ADDR key_cache, GM_ADDR value_cache, GM_ADDR pairs, \
                                               GM_ADDR status, ArkCopyBlocksTiling tiling) {       \
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                            \
        KernelCopyBlocks<T> op;                                                                    \
        op.Init(key_cache, value_cache, pairs, status, tiling);                                    \
        op.Process();                                                                              \
    }
COPY_BLOCKS(copy_blocks_half, half)
COPY_BLOCKS(copy_blocks_float, float)
