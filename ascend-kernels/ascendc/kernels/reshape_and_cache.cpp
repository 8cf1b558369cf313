// reshape_and_cache: write each new token's K and V rows into the paged caches
// ([num_blocks, block_size, kv_heads, head_size], ND) at its slot; a negative slot skips the
// token (vLLM's padding), and so does a slot past the cache: the slot mapping comes from device
// memory the host did not check, and a bad entry must not become a write outside the cache.
// Those are counted in `status` (see StatusWord). Tokens are spread over the cores; each row goes GM -> UB -> GM through a double-buffered
// queue (no vector compute). Needs kv_heads * head_size * sizeof(T) to be a multiple of 32 bytes.
#include "common.h"
#include "tiling.h"

template <typename T>
class KernelReshapeAndCache {
public:
    __aicore__ inline void Init(GM_ADDR key, GM_ADDR value, GM_ADDR key_cache, GM_ADDR value_cache,
                                GM_ADDR slots, GM_ADDR status, const ArkReshapeAndCacheTiling& t) {
        t_ = t;
        const uint64_t rows = static_cast<uint64_t>(t.num_tokens) * t.row;
        const uint64_t cache = static_cast<uint64_t>(t.num_slots) * t.row;
        keyGm_.SetGlobalBuffer((__gm__ T*)key, rows);
        valueGm_.SetGlobalBuffer((__gm__ T*)value, rows);
        keyCacheGm_.SetGlobalBuffer((__gm__ T*)key_cache, cache);
        valueCacheGm_.SetGlobalBuffer((__gm__ T*)value_cache, cache);
        slotGm_.SetGlobalBuffer((__gm__ int32_t*)slots, t.num_tokens);
        pipe_.InitBuffer(queue_, 2, t.row * sizeof(T));
        status_.Init(pipe_, status);
    }

    __aicore__ inline void Process() {
        for (int64_t tok = GetBlockIdx(); tok < t_.num_tokens; tok += GetBlockNum()) {
            const int32_t slot = slotGm_.GetValue(tok);
            if (slot < 0) continue;
            if (static_cast<uint32_t>(slot) >= t_.num_slots) {
                status_.Refused();
                continue;
            }
            const uint64_t src = static_cast<uint64_t>(tok) * t_.row;
            const uint64_t dst = static_cast<uint64_t>(slot) * t_.row;
            CopyRow(keyGm_[src], keyCacheGm_[dst]);
            CopyRow(valueGm_[src], valueCacheGm_[dst]);
        }
        status_.Write();
    }

private:
    __aicore__ inline void CopyRow(const GlobalTensor<T>& src, const GlobalTensor<T>& dst) {
        LocalTensor<T> in = queue_.template AllocTensor<T>();
        DataCopy(in, src, t_.row);
        queue_.EnQue(in);
        LocalTensor<T> out = queue_.template DeQue<T>();
        GlobalTensor<T> target = dst;
        DataCopy(target, out, t_.row);
        queue_.FreeTensor(out);
    }

    ArkReshapeAndCacheTiling t_;
    TPipe pipe_;
    TQueBind<TPosition::VECIN, TPosition::VECOUT, 1> queue_;
    GlobalTensor<T> keyGm_, valueGm_, keyCacheGm_, valueCacheGm_;
    GlobalTensor<int32_t> slotGm_;
    StatusWord status_;
};

#define RESHAPE_AND_CACHE(NAME, T)                                                                 \
    extern "C" __global__ __aicore__ void NAME(GM_ADDR key, GM_ADDR value, GM_ADDR key_cache,      \
                                               GM_ADDR value_cache, GM_ADDR slots, GM_ADDR status, \
                                               ArkReshapeAndCacheTiling tiling) {                  \
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                            \
        KernelReshapeAndCache<T> op;                                                               \
        op.Init(key, value, key_cache, value_cache, slots, status, tiling);                        \
        op.Process();                                                                              \
    }
RESHAPE_AND_CACHE(reshape_and_cache_half, half)
RESHAPE_AND_CACHE(reshape_and_cache_float, float)
