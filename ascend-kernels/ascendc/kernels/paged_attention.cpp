// Decode paged attention: each sequence's one query token attends to its context in the paged
// K/V caches ([num_blocks, block_size, kv_heads, head_size], ND), with grouped-query attention
// and an optional sliding window.
//
// Work: one task per (sequence, KV head), spread over the cores, so a KV head's cache rows are read
// once for all the query heads of its group. Per task the group's query rows come in once
// (scaled, in float); the context then streams through the UB a chunk at a time (at most
// `chunk` tokens, never crossing a cache block) as strided bursts, one burst of head_size per
// token, through double-buffered K and V queues. Per chunk and query head, a handful of vector
// instructions over the whole chunk, none per token (level-0 repeats: one repeat per token row):
//   scores:  Mul / MulAddDst of each 64-float piece of the K rows with the same piece of the
//            query (src1 repeat stride 0), into one 64-lane row per token; WholeReduceSum of
//            the rows gives the n scores;
//   softmax: online; the running max is a scalar (ReduceMax's result is scalar-readable at once,
//            the library ends it with its own V_S / S_V), the rescale factor exp(old - new max)
//            fills a 32-byte block that level-0 ops broadcast, the running sum stays in the UB:
//            no explicit flag and one scalar read per chunk and head;
//   P.V:     Brcb spreads each weight over a 32-byte block; Mul of each 64-float piece of the V
//            rows with its token's weight block (src1 block stride 0), then an accumulating Add
//            (dst and src1 repeat stride 0) sums the n rows into the output piece.
// The result is divided by the softmax sum and leaves through a queue.
//
// Device-side indices (sequence lengths, block table entries) are checked before use: a
// sequence whose length is negative or past its block table, or whose attended blocks name a
// block outside the cache, gets zeros, nothing outside the caches is read, and the sequence is
// counted in `status`.
//
// Alignment: head_size * sizeof(T) and head_size * 4 are multiples of 32 bytes (the tiling
// checks), so every token row in the UB starts on a 32-byte boundary.
//
// Prefill (`paged_prefill_attention_*`): the same class over query tokens instead of
// sequences. Query token r of sequence s (whose chunk is rows qsl[s]..qsl[s+1] of the query, its
// context seq_lens[s] tokens including the chunk, already in the cache) sits at position
// seq_lens[s] - (qsl[s+1] - qsl[s]) + (r - qsl[s]) and attends causally up to it (within the
// sliding window, if any): exactly a decode task over a context of that position + 1, with
// sequence s's block table. One task per (token, KV head); each core walks its tokens in order,
// so finding a token's sequence is a cursor over query_start_loc, not a search. A token whose
// range is inconsistent (query_start_loc not increasing through it, more queries than context)
// gets zeros and is counted like a bad sequence. K/V rows are re-read for each query token of a
// chunk: right for the short chunks of chunked prefill, a query-tiled kernel is the follow-up
// for long prompts.
#include "common.h"
#include "tiling.h"

template <typename T>
class KernelPagedAttention {
public:
    // Decode: one query row per sequence.
    __aicore__ inline void Init(GM_ADDR out, GM_ADDR query, GM_ADDR key_cache, GM_ADDR value_cache,
                                GM_ADDR block_tables, GM_ADDR seq_lens, GM_ADDR status,
                                const ArkPagedAttentionTiling& t) {
        Init(out, query, key_cache, value_cache, block_tables, seq_lens, status, t, t.num_seqs);
    }

    // Prefill: `tokens` query rows, split into sequences by `query_start_loc`.
    __aicore__ inline void InitPrefill(GM_ADDR out, GM_ADDR query, GM_ADDR key_cache, GM_ADDR value_cache,
                                       GM_ADDR block_tables, GM_ADDR query_start_loc, GM_ADDR seq_lens,
                                       GM_ADDR status, const ArkPrefillAttentionTiling& t) {
        prefill_ = true;
        startGm_.SetGlobalBuffer((__gm__ int32_t*)query_start_loc, static_cast<uint64_t>(t.attn.num_seqs) + 1);
        Init(out, query, key_cache, value_cache, block_tables, seq_lens, status, t.attn, t.num_tokens);
    }

    __aicore__ inline void Init(GM_ADDR out, GM_ADDR query, GM_ADDR key_cache, GM_ADDR value_cache,
                                GM_ADDR block_tables, GM_ADDR seq_lens, GM_ADDR status,
                                const ArkPagedAttentionTiling& t, uint32_t queryRows) {
        t_ = t;
        queryRows_ = queryRows;
        group_ = t.num_heads / t.num_kv_heads;
        tokenStride_ = t.num_kv_heads * t.head_size;
        const uint64_t q = static_cast<uint64_t>(queryRows) * t.num_heads * t.head_size;
        const uint64_t cache = static_cast<uint64_t>(t.num_blocks) * t.block_size * tokenStride_;
        outGm_.SetGlobalBuffer((__gm__ T*)out, q);
        qGm_.SetGlobalBuffer((__gm__ T*)query, q);
        kGm_.SetGlobalBuffer((__gm__ T*)key_cache, cache);
        vGm_.SetGlobalBuffer((__gm__ T*)value_cache, cache);
        tableGm_.SetGlobalBuffer((__gm__ int32_t*)block_tables, static_cast<uint64_t>(t.num_seqs) * t.max_blocks_per_seq);
        lenGm_.SetGlobalBuffer((__gm__ int32_t*)seq_lens, t.num_seqs);

        const uint32_t rows = group_ * t.head_size;
        const uint32_t kv = t.chunk * t.head_size;
        pipe_.InitBuffer(qQueue_, 2, rows * sizeof(T));
        pipe_.InitBuffer(kQueue_, 2, kv * sizeof(T));
        pipe_.InitBuffer(vQueue_, 2, kv * sizeof(T));
        pipe_.InitBuffer(outQueue_, 2, rows * sizeof(T));
        pipe_.InitBuffer(qf_, rows * sizeof(float));
        pipe_.InitBuffer(acc_, rows * sizeof(float));
        pipe_.InitBuffer(kf_, kv * sizeof(float));
        pipe_.InitBuffer(vf_, kv * sizeof(float));
        // One 64-float row per token (score partials, then weighted V pieces); the chunk's
        // scores; each token's weight spread over a 32-byte block.
        pipe_.InitBuffer(rows_, t.chunk * 64 * sizeof(float));
        pipe_.InitBuffer(scores_, (t.chunk + 7) / 8 * 8 * sizeof(float));
        pipe_.InitBuffer(weights_, (t.chunk + 7) / 8 * 8 * 8 * sizeof(float));
        // Per query head: its rescale block and running sum; a block for reduction results; and
        // the reductions' work tensor (the documented size; ReduceMax's must not overlap its source).
        pipe_.InitBuffer(stats_, PA_MAX_GROUP * 2 * 32);
        pipe_.InitBuffer(red_, 32);
        const uint32_t sumWork = ReduceSumWorkFloats(t.head_size), maxWork = ReduceMaxWorkFloats(t.chunk);
        pipe_.InitBuffer(work_, (sumWork > maxWork ? sumWork : maxWork) * sizeof(float));
        status_.Init(pipe_, status);
    }

    __aicore__ inline void Process() {
        const int64_t tasks = static_cast<int64_t>(queryRows_) * t_.num_kv_heads;
        for (int64_t task = GetBlockIdx(); task < tasks; task += GetBlockNum()) {
            const uint32_t row = static_cast<uint32_t>(task / t_.num_kv_heads);
            const uint32_t kvh = static_cast<uint32_t>(task % t_.num_kv_heads);
            if (!prefill_) {
                Task(row, row, lenGm_.GetValue(row), kvh);
                continue;
            }
            // Advance the cursor to the sequence whose range holds this row.
            while (seq_ < t_.num_seqs && startGm_.GetValue(seq_ + 1) <= static_cast<int32_t>(row)) seq_++;
            int32_t len = -1;  // refused unless the row's range is consistent
            if (seq_ < t_.num_seqs) {
                const int32_t a = startGm_.GetValue(seq_), b = startGm_.GetValue(seq_ + 1);
                const int32_t ctx = lenGm_.GetValue(seq_);
                if (a <= static_cast<int32_t>(row) && static_cast<int32_t>(row) < b && b - a <= ctx)
                    len = ctx - (b - a) + (static_cast<int32_t>(row) - a) + 1;
            }
            Task(row, seq_ < t_.num_seqs ? seq_ : 0, len, kvh);
        }
        status_.Write();
    }

private:
    // Head g's rescale factor (in all 8 lanes, so a level-0 op can broadcast it) and running sum
    // live in their own 32-byte blocks; its running max is a scalar (runMax_).
    __aicore__ inline LocalTensor<float> Rescale(uint32_t g) { return stats_.Get<float>()[g * 16]; }
    __aicore__ inline LocalTensor<float> RunSum(uint32_t g) { return stats_.Get<float>()[g * 16 + 8]; }

    // Query row `row` attends to the first `len` positions of sequence `seq`'s context (a
    // negative `len` is refused: zeros, counted once per row).
    __aicore__ inline void Task(uint32_t row, uint32_t seq, int32_t len, uint32_t kvh) {
        const uint32_t hs = t_.head_size, rows = group_ * hs;
        const uint64_t at = (static_cast<uint64_t>(row) * t_.num_heads + kvh * group_) * hs;
        LocalTensor<float> acc = acc_.Get<float>();
        Duplicate(acc, 0.0f, static_cast<int32_t>(rows));
        uint32_t first = 0;
        if (t_.sliding_window != 0 && len > 0 && static_cast<uint32_t>(len) > t_.sliding_window)
            first = static_cast<uint32_t>(len) - t_.sliding_window;
        const bool valid = len == 0 || (len > 0 && Attendable(seq, first, static_cast<uint32_t>(len)));
        if (!valid && kvh == 0) status_.Refused();  // once per query row, not per KV head
        if (len > 0 && valid) {
            LocalTensor<float> qf = qf_.Get<float>();
            LocalTensor<T> q = qQueue_.template AllocTensor<T>();
            DataCopy(q, qGm_[at], rows);
            qQueue_.EnQue(q);
            q = qQueue_.template DeQue<T>();
            ToFloat(qf, q, rows);
            qQueue_.FreeTensor(q);
            Muls(qf, qf, t_.scale, static_cast<int32_t>(rows));
            for (uint32_t g = 0; g < group_; g++) {
                runMax_[g] = kFloatLowest;
                Duplicate(RunSum(g), 0.0f, 1);
            }
            for (uint32_t pos = first; pos < static_cast<uint32_t>(len);) {
                const uint32_t inBlock = pos % t_.block_size;
                uint32_t n = t_.block_size - inBlock;
                if (n > t_.chunk) n = t_.chunk;
                if (n > static_cast<uint32_t>(len) - pos) n = static_cast<uint32_t>(len) - pos;
                const int32_t block = tableGm_.GetValue(static_cast<uint64_t>(seq) * t_.max_blocks_per_seq + pos / t_.block_size);
                const uint64_t src = (static_cast<uint64_t>(block) * t_.block_size + inBlock) * tokenStride_ + kvh * hs;
                Chunk(src, n);
                pos += n;
            }
            for (uint32_t g = 0; g < group_; g++) {
                // acc /= sum, as a multiply by the reciprocal held in the scratch block.
                LocalTensor<float> red = red_.Get<float>();
                Duplicate(red, 1.0f, 1);
                Div(red, red, RunSum(g), 1);
                VectorToScalar();
                Muls(acc[g * hs], acc[g * hs], red.GetValue(0), static_cast<int32_t>(hs));
            }
        }
        LocalTensor<T> y = outQueue_.template AllocTensor<T>();
        FromFloat(y, acc, rows);
        outQueue_.EnQue(y);
        y = outQueue_.template DeQue<T>();
        GlobalTensor<T> dst = outGm_[at];
        DataCopy(dst, y, rows);
        outQueue_.FreeTensor(y);
    }

    // Whether positions [first, len) of `seq` lie inside its block table and every block they
    // name inside the cache (scalar reads of the few table entries, before any K/V moves).
    __aicore__ inline bool Attendable(uint32_t seq, uint32_t first, uint32_t len) {
        if (static_cast<uint64_t>(len) > static_cast<uint64_t>(t_.max_blocks_per_seq) * t_.block_size) return false;
        const uint64_t row = static_cast<uint64_t>(seq) * t_.max_blocks_per_seq;
        for (uint32_t b = first / t_.block_size; b <= (len - 1) / t_.block_size; b++) {
            const int32_t block = tableGm_.GetValue(row + b);
            if (block < 0 || static_cast<uint32_t>(block) >= t_.num_blocks) return false;
        }
        return true;
    }

    // Loads `n` tokens' K and V rows for one KV head (strided bursts) and folds them into every
    // query head of the group.
    __aicore__ inline void Chunk(uint64_t src, uint32_t n) {
        const uint32_t hs = t_.head_size;
        const uint16_t burst = static_cast<uint16_t>(hs * sizeof(T) / 32);
        const uint16_t gap = static_cast<uint16_t>((tokenStride_ - hs) * sizeof(T) / 32);
        const DataCopyParams params(static_cast<uint16_t>(n), burst, gap, 0);
        LocalTensor<T> k = kQueue_.template AllocTensor<T>();
        DataCopy(k, kGm_[src], params);
        kQueue_.EnQue(k);
        LocalTensor<T> v = vQueue_.template AllocTensor<T>();
        DataCopy(v, vGm_[src], params);
        vQueue_.EnQue(v);

        LocalTensor<float> kf = kf_.Get<float>(), vf = vf_.Get<float>();
        k = kQueue_.template DeQue<T>();
        ToFloat(kf, k, n * hs);
        kQueue_.FreeTensor(k);
        v = vQueue_.template DeQue<T>();
        ToFloat(vf, v, n * hs);
        vQueue_.FreeTensor(v);

        LocalTensor<float> qf = qf_.Get<float>(), acc = acc_.Get<float>();
        LocalTensor<float> rows = rows_.Get<float>(), scores = scores_.Get<float>(), red = red_.Get<float>();
        LocalTensor<float> weights = weights_.Get<float>(), work = work_.Get<float>();
        const int32_t m = static_cast<int32_t>(n);
        const uint8_t rep = static_cast<uint8_t>(n);
        const uint8_t rowBlocks = static_cast<uint8_t>(hs / 8);  // one token row, in 32-byte blocks
        const uint64_t lanes = hs < 64 ? hs : 64;
        for (uint32_t g = 0; g < group_; g++) {
            LocalTensor<float> qg = qf[g * hs], ag = acc[g * hs];
            // rows[j] = sum over the 64-float pieces c of k_j[c] * q[c]; scores[j] = sum(rows[j]).
            for (uint32_t c = 0; c < hs; c += 64) {
                const uint64_t mask = hs - c < 64 ? hs - c : 64;
                const BinaryRepeatParams p(1, 1, 1, 8, rowBlocks, 0);
                if (c == 0)
                    Mul(rows, kf[c], qg[c], mask, rep, p);
                else
                    MulAddDst(rows, kf[c], qg[c], mask, rep, p);
            }
            WholeReduceSum(scores, rows, static_cast<int32_t>(lanes), m, 1, 1, 8);
            // new max = max(old max, chunk max), on the scalar unit: ReduceMax ends with the
            // library's own V_S / S_V handshake, so its result is readable at once.
            ReduceMax(red, scores, work, m);
            const float chunkMax = red.GetValue(0);
            const float newMax = chunkMax > runMax_[g] ? chunkMax : runMax_[g];
            // rescale = exp(old max - new max), in all lanes of the head's block.
            LocalTensor<float> rescale = Rescale(g);
            Duplicate(rescale, runMax_[g] - newMax, 8);
            Exp(rescale, rescale, 8);
            runMax_[g] = newMax;
            // weights = exp(scores - new max); sum = sum * rescale + sum(weights).
            Adds(scores, scores, -newMax, m);
            Exp(scores, scores, m);
            ReduceSum(red, scores, work, m);
            Mul(RunSum(g), RunSum(g), rescale, 1);
            Add(RunSum(g), RunSum(g), red, 1);
            // acc = acc * rescale + sum_j weight_j * v_j, a 64-float piece at a time.
            const BinaryRepeatParams byBlock(1, 1, 0, 8, 8, 0);
            if (hs >= 64) Mul(ag, ag, rescale, 64, static_cast<uint8_t>(hs / 64), byBlock);
            if (hs % 64 != 0) {
                LocalTensor<float> tail = ag[hs / 64 * 64];
                Mul(tail, tail, rescale, hs % 64, 1, byBlock);
            }
            Brcb(weights, scores, static_cast<uint8_t>((n + 7) / 8), BrcbRepeatParams(1, 8));
            for (uint32_t c = 0; c < hs; c += 64) {
                const uint64_t mask = hs - c < 64 ? hs - c : 64;
                Mul(rows, vf[c], weights, mask, rep, BinaryRepeatParams(1, 1, 0, 8, rowBlocks, 1));
                LocalTensor<float> out = ag[c];
                Add(out, rows, out, mask, rep, BinaryRepeatParams(1, 1, 1, 0, 8, 0));
            }
        }
    }

    ArkPagedAttentionTiling t_;
    uint32_t queryRows_ = 0, group_ = 1, tokenStride_ = 0;
    bool prefill_ = false;
    uint32_t seq_ = 0;  // prefill: the sequence of the current row (the cursor)
    float runMax_[PA_MAX_GROUP];
    StatusWord status_;
    TPipe pipe_;
    TQue<TPosition::VECIN, 1> qQueue_, kQueue_, vQueue_;
    TQue<TPosition::VECOUT, 1> outQueue_;
    TBuf<TPosition::VECCALC> qf_, acc_, kf_, vf_, rows_, scores_, weights_, stats_, red_, work_;
    GlobalTensor<T> outGm_, qGm_, kGm_, vGm_;
    GlobalTensor<int32_t> tableGm_, lenGm_, startGm_;
};

#define PAGED_ATTENTION(NAME, T)                                                                   \
    extern "C" __global__ __aicore__ void NAME(GM_ADDR out, GM_ADDR query, GM_ADDR key_cache,      \
                                               GM_ADDR value_cache, GM_ADDR block_tables,          \
                                               GM_ADDR seq_lens, GM_ADDR status,                   \
                                               ArkPagedAttentionTiling tiling) {                   \
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                            \
        KernelPagedAttention<T> op;                                                                \
        op.Init(out, query, key_cache, value_cache, block_tables, seq_lens, status, tiling);       \
        op.Process();                                                                              \
    }
PAGED_ATTENTION(paged_attention_half, half)
PAGED_ATTENTION(paged_attention_float, float)

#define PAGED_PREFILL_ATTENTION(NAME, T)                                                           \
    extern "C" __global__ __aicore__ void NAME(GM_ADDR out, GM_ADDR query, GM_ADDR key_cache,      \
                                               GM_ADDR value_cache, GM_ADDR block_tables,          \
                                               GM_ADDR query_start_loc, GM_ADDR seq_lens,          \
                                               GM_ADDR status, ArkPrefillAttentionTiling tiling) { \
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                            \
        KernelPagedAttention<T> op;                                                                \
        op.InitPrefill(out, query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, \
                       status, tiling);                                                            \
        op.Process();                                                                              \
    }
PAGED_PREFILL_ATTENTION(paged_prefill_attention_half, half)
PAGED_PREFILL_ATTENTION(paged_prefill_attention_float, float)
