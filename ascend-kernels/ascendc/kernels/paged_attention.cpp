// Paged attention on the vector cores, over K/V caches of [num_blocks, block_size, kv_heads,
// head_size] (ND), with grouped-query attention and an optional sliding window.
//
// One class serves three kernels:
//   - decode (`paged_attention_*`): one query token per sequence. A task is (sequence, KV head,
//     part): the group's query rows against one part of the context. When there are fewer
//     (sequence, KV head) pairs than cores, the tiling splits every context into `partitions`
//     equal parts (flash-decoding): each task writes its unnormalised result with its
//     running maximum and sum to the workspace, and `paged_attention_merge_*` combines the
//     parts of each (sequence, KV head).
//   - chunked prefill (`paged_prefill_attention_*`): a task is `tile_rows` consecutive query
//     tokens and a KV head; the tile is cut where a sequence ends, and each piece reads its
//     sequence's K/V once for all its rows (not once per row), up to its last row's position:
//     blocks past the causal diagonal are never loaded. Rows whose position a chunk passes (or
//     whose window it precedes) get those scores masked.
//
// Per chunk of K/V (at most `chunk` tokens, copied in one DataCopy per cache block it touches:
// the fewest chunks cover a range, the short one first), for all the task's query rows at once
// where the instruction allows it:
//   scores:  a 64-float partial row per token, zeroed once per chunk; per row, MulAddDst of
//            each 64-element piece of the K rows with the query's piece on top (half K and
//            query into float partials, no conversion of K), then WholeReduceSum of the partial
//            rows: the running sum of the rows' scores, differenced afterwards;
//   softmax: online, and entirely on the vector unit: the chunk's maximum per row
//            (WholeReduceMax), the new running maximum, the rescale factor exp(old - new) and
//            the running sum live in one 32-byte block per row (Brcb), so no scalar ever reads
//            a vector result inside the loop (no V_S wait that would stall issue);
//   P.V:     per row, each token's weight spread over a 32-byte block (Brcb); decode then
//            accumulates weight x V row into `acc_rows` float partial rows per query row
//            (MulAddDst from the half V chunk, each repeat into its own row: MulAddDst may not
//            accumulate across repeats), summed once at the end; prefill casts the V chunk to
//            float once for all its rows and accumulates each row with Mul and an accumulating
//            Add (dst and src1 repeat stride 0, which the general overlap rule allows for Add).
// K and V stream through single-buffered queues in an order that overlaps them with compute:
// the next chunk's K is loaded while the current chunk's softmax and P.V run, the next V while
// the next scores run (the K buffer is free once the scores are computed, the V buffer once P.V
// is). Every query row's result is divided by its sum at the end.
//
// Device-side indices (sequence lengths, query offsets, block table entries) are checked before
// use: a sequence or query row whose length is inconsistent, or whose attended blocks name a
// block outside the cache, gets zeros, nothing outside the caches is read, and it is counted
// in `status`.
//
// Alignment: head_size * sizeof(T) and head_size * 4 are multiples of 32 bytes (the tiling
// checks), so every token row in the UB starts on a 32-byte boundary.
#include "common.h"
#include "tiling.h"

// A masked score: far below anything real. The running maximum starts at kMaxStart, far above
// it, so exp(kMasked - max) is 0 even while a row has seen only masked keys.
constexpr float kMasked = kFloatLowest;
constexpr float kMaxStart = -1.0e30f;
// Added to each row's sum before dividing: nothing for a row that attended anything (its sum is
// at least 1), and 0 / kSumFloor = 0 for a row that attended nothing.
constexpr float kSumFloor = 1.0e-30f;
// Block-table entries a task stages in the UB (PA_TABLE_STAGE; more are read from GM).
constexpr uint32_t kTableStage = PA_TABLE_STAGE;

// dst = src x block (or src / block) over `count` floats, every lane of the 32-byte `block`
// holding the factor: whole 64-float repeats, then the tail.
__aicore__ inline void ScaleByBlock(const LocalTensor<float>& dst, const LocalTensor<float>& src,
                                    const LocalTensor<float>& block, uint32_t count, bool divide) {
    const uint32_t full = count / 64, tail = count % 64;
    const BinaryRepeatParams p(1, 1, 0, 8, 8, 0);
    if (full > 0) {
        if (divide)
            Div(dst, src, block, 64, static_cast<uint8_t>(full), p);
        else
            Mul(dst, src, block, 64, static_cast<uint8_t>(full), p);
    }
    if (tail > 0) {
        if (divide)
            Div(dst[full * 64], src[full * 64], block, tail, 1, p);
        else
            Mul(dst[full * 64], src[full * 64], block, tail, 1, p);
    }
}

template <typename T>
class KernelAttention {
public:
    // Decode: `num_seqs` query rows of `num_heads` heads; the partial results go to `workspace`
    // when the tiling splits contexts.
    __aicore__ inline void InitDecode(GM_ADDR out, GM_ADDR query, GM_ADDR key_cache, GM_ADDR value_cache,
                                      GM_ADDR block_tables, GM_ADDR seq_lens, GM_ADDR workspace, GM_ADDR status,
                                      const ArkPagedAttentionTiling& t) {
        Init(out, query, key_cache, value_cache, block_tables, seq_lens, status, t, t.num_seqs);
        if (t.partitions > 1)
            wsGm_.SetGlobalBuffer((__gm__ float*)workspace,
                                  static_cast<uint64_t>(t.num_seqs) * t.num_heads * t.partitions * Record());
    }

    // Prefill: `num_tokens` query rows, split into sequences by `query_start_loc`.
    __aicore__ inline void InitPrefill(GM_ADDR out, GM_ADDR query, GM_ADDR key_cache, GM_ADDR value_cache,
                                       GM_ADDR block_tables, GM_ADDR query_start_loc, GM_ADDR seq_lens,
                                       GM_ADDR status, const ArkPrefillAttentionTiling& t) {
        prefill_ = true;
        startGm_.SetGlobalBuffer((__gm__ int32_t*)query_start_loc, static_cast<uint64_t>(t.attn.num_seqs) + 1);
        Init(out, query, key_cache, value_cache, block_tables, seq_lens, status, t.attn, t.num_tokens);
    }

    __aicore__ inline void Process() {
        if (prefill_)
            ProcessPrefill();
        else
            ProcessDecode();
        status_.Write();
    }

private:
    __aicore__ inline uint32_t Record() const { return t_.head_size + 16; }
    // Rows rounded up to whole Brcb repeats (8 per repeat).
    __aicore__ inline static uint32_t Round8(uint32_t n) { return (n + 7) / 8 * 8; }

    __aicore__ inline void Init(GM_ADDR out, GM_ADDR query, GM_ADDR key_cache, GM_ADDR value_cache,
                                GM_ADDR block_tables, GM_ADDR seq_lens, GM_ADDR status,
                                const ArkPagedAttentionTiling& t, uint32_t queryRows) {
        t_ = t;
        queryRows_ = queryRows;
        kvPerTask_ = t.kv_heads_per_task > 0 ? t.kv_heads_per_task : 1;
        qPerKv_ = t.num_heads / t.num_kv_heads;
        group_ = qPerKv_ * kvPerTask_;
        kvGroups_ = t.num_kv_heads / kvPerTask_;
        tokenStride_ = t.num_kv_heads * t.head_size;
        hs_ = t.head_size;
        npad_ = (t.chunk + 63) / 64 * 64;
        accRows_ = t.acc_rows > 1 ? t.acc_rows : 1;
        // Decode's P.V by (token, 64-element piece) repeats: one KV head per task, whole pieces,
        // the repeats of accRows_ tokens within 255, and each weight spread over a block per
        // piece within the partial rows (8 blocks per token of the largest chunk).
        const uint32_t pieces = t.head_size / 64;
        if (t.acc_rows > 1 && kvPerTask_ == 1 && t.head_size % 64 == 0 && pieces * accRows_ <= 255 &&
            Round8(t.chunk) * pieces <= t.chunk * 8)
            piecesPV_ = pieces;
        maxRows_ = group_ * (t.tile_rows > 0 ? t.tile_rows : 1);
        const uint64_t q = static_cast<uint64_t>(queryRows) * t.num_heads * hs_;
        const uint64_t cache = static_cast<uint64_t>(t.num_blocks) * t.block_size * tokenStride_;
        outGm_.SetGlobalBuffer((__gm__ T*)out, q);
        qGm_.SetGlobalBuffer((__gm__ T*)query, q);
        kGm_.SetGlobalBuffer((__gm__ T*)key_cache, cache);
        vGm_.SetGlobalBuffer((__gm__ T*)value_cache, cache);
        tableGm_.SetGlobalBuffer((__gm__ int32_t*)block_tables, static_cast<uint64_t>(t.num_seqs) * t.max_blocks_per_seq);
        lenGm_.SetGlobalBuffer((__gm__ int32_t*)seq_lens, t.num_seqs);

        const uint32_t kv = t.chunk * kvPerTask_ * hs_ * sizeof(T);
        const uint32_t qrows = maxRows_ * hs_;
        uint32_t outBytes = qrows * sizeof(T);
        if (t.partitions > 1 && maxRows_ * Record() * 4 > outBytes) outBytes = maxRows_ * Record() * 4;
        const uint32_t small = Round8(maxRows_);
        pipe_.InitBuffer(kQueue_, 1, kv);
        pipe_.InitBuffer(vQueue_, 1, kv);
        pipe_.InitBuffer(qQueue_, 1, qrows * sizeof(T));
        pipe_.InitBuffer(outQueue_, 1, outBytes);
        pipe_.InitBuffer(partial_, t.chunk * 64 * sizeof(float));
        pipe_.InitBuffer(scores_, maxRows_ * npad_ * sizeof(float));
        pipe_.InitBuffer(weightsT_, t.acc_rows > 1 && sizeof(T) == 2 ? maxRows_ * npad_ * 2 : 32);
        // Prefill's weights spread over blocks (decode spreads them in the partial rows).
        pipe_.InitBuffer(weightBlocks_, t.acc_rows > 1 ? 32 : (t.chunk + 7) / 8 * 8 * 32);
        pipe_.InitBuffer(acc_, qrows * accRows_ * sizeof(float));
        pipe_.InitBuffer(vFloat_, t.acc_rows == 0 && sizeof(T) == 2 ? t.chunk * kvPerTask_ * hs_ * sizeof(float) : 32);
        pipe_.InitBuffer(outFloat_, qrows * sizeof(float));
        // Per query row, one 32-byte block each: two running maxima (the old and the new, in
        // turn), the running sum, the rescale factor, and a spread chunk maximum or sum.
        pipe_.InitBuffer(stats_, 5 * small * 32);
        // Compact per-row values: chunk maxima and sums of the two halves of a chunk.
        pipe_.InitBuffer(compact_, 4 * small * sizeof(float));
        pipe_.InitBuffer(tableStage_, kTableStage * sizeof(int32_t));
        status_.Init(pipe_, status);
    }

    // ---- tasks ------------------------------------------------------------------------------

    __aicore__ inline void ProcessDecode() {
        const uint32_t parts = t_.partitions > 0 ? t_.partitions : 1;
        const int64_t tasks = static_cast<int64_t>(t_.num_seqs) * kvGroups_ * parts;
        for (int64_t task = GetBlockIdx(); task < tasks; task += GetBlockNum()) {
            const uint32_t part = static_cast<uint32_t>(task % parts);
            const uint32_t kvh = static_cast<uint32_t>(task / parts % kvGroups_) * kvPerTask_;
            const uint32_t seq = static_cast<uint32_t>(task / parts / kvGroups_);
            const int32_t len = lenGm_.GetValue(seq);
            uint32_t first = 0;
            if (t_.sliding_window != 0 && len > 0 && static_cast<uint32_t>(len) > t_.sliding_window)
                first = static_cast<uint32_t>(len) - t_.sliding_window;
            const bool valid = len == 0 || (len > 0 && Attendable(seq, first, static_cast<uint32_t>(len)));
            if (!valid && kvh == 0 && part == 0) status_.Refused();  // once per sequence
            // This part's share of [first, len).
            uint32_t lo = 0, hi = 0;
            if (valid && len > 0) {
                const uint32_t total = static_cast<uint32_t>(len) - first;
                // Equal parts: a chunk may span cache blocks, so a part that starts mid-block
                // costs one more copy, not one more chunk.
                const uint32_t share = (total + parts - 1) / parts;
                lo = first + part * share;
                hi = lo + share < static_cast<uint32_t>(len) ? lo + share : static_cast<uint32_t>(len);
                if (lo > hi) lo = hi;
            }
            const uint64_t row0 = (static_cast<uint64_t>(seq) * t_.num_heads + kvh * qPerKv_);
            LoadQuery(row0 * hs_, 1);
            Attend(seq, kvh, lo, hi, group_, 0, 0);
            if (parts > 1)
                StorePartial((row0 * parts + part) * Record(), parts);
            else
                StoreRows(row0 * hs_, 1);
        }
    }

    __aicore__ inline void ProcessPrefill() {
        const uint32_t tile = t_.tile_rows > 0 ? t_.tile_rows : 1;
        const int64_t tiles = (static_cast<int64_t>(queryRows_) + tile - 1) / tile;
        const int64_t tasks = tiles * kvGroups_;
        uint32_t seq = 0;  // the cursor: the sequence of the current row
        for (int64_t task = GetBlockIdx(); task < tasks; task += GetBlockNum()) {
            const uint32_t kvh = static_cast<uint32_t>(task % kvGroups_) * kvPerTask_;
            const uint32_t begin = static_cast<uint32_t>(task / kvGroups_) * tile;
            const uint32_t end = begin + tile < queryRows_ ? begin + tile : queryRows_;
            // Another KV head of the same tile starts again at its first row.
            while (seq > 0 && startGm_.GetValue(seq) > static_cast<int32_t>(begin)) seq--;
            for (uint32_t ra = begin; ra < end;) {
                while (seq < t_.num_seqs && startGm_.GetValue(seq + 1) <= static_cast<int32_t>(ra)) seq++;
                uint32_t rb = ra + 1;
                int32_t first_pos = -1, ctx = -1;
                if (seq < t_.num_seqs) {
                    const int32_t a = startGm_.GetValue(seq), b = startGm_.GetValue(seq + 1);
                    ctx = lenGm_.GetValue(seq);
                    const int32_t stop = b < static_cast<int32_t>(end) ? b : static_cast<int32_t>(end);
                    if (a <= static_cast<int32_t>(ra) && static_cast<int32_t>(ra) < b && b - a <= ctx && stop > static_cast<int32_t>(ra)) {
                        rb = static_cast<uint32_t>(stop);
                        first_pos = ctx - (b - a) + (static_cast<int32_t>(ra) - a);
                    }
                }
                const uint32_t rows = rb - ra;
                bool valid = first_pos >= 0;
                uint32_t lo = 0, hi = 0;
                if (valid) {
                    const uint32_t p0 = static_cast<uint32_t>(first_pos);
                    hi = p0 + rows;  // one past the last row's position
                    if (t_.sliding_window != 0 && p0 + 1 > t_.sliding_window) lo = p0 + 1 - t_.sliding_window;
                    valid = Attendable(seq, lo, hi);
                }
                if (!valid && kvh == 0) status_.Refused();  // once per inconsistent row run
                const uint64_t row0 = static_cast<uint64_t>(ra) * t_.num_heads + kvh * qPerKv_;
                LoadQuery(row0 * hs_, rows);
                if (valid)
                    Attend(seq, kvh, lo, hi, rows * group_, static_cast<uint32_t>(first_pos), rows);
                else
                    Attend(seq, kvh, 0, 0, rows * group_, 0, 0);
                StoreRows(row0 * hs_, rows);
                ra = rb;
            }
        }
    }

    // Whether positions [first, len) of `seq` lie inside its block table and every block they
    // name inside the cache (scalar reads of the few table entries, before any K/V moves). The
    // entries are staged in the UB first: a GM scalar read costs ~100 cycles during which the
    // scalar unit issues nothing, a UB one a few.
    __aicore__ inline bool Attendable(uint32_t seq, uint32_t first, uint32_t len) {
        staged_ = false;
        if (len <= first) return true;
        if (static_cast<uint64_t>(len) > static_cast<uint64_t>(t_.max_blocks_per_seq) * t_.block_size) return false;
        const uint64_t row = static_cast<uint64_t>(seq) * t_.max_blocks_per_seq;
        Stage(row + first / t_.block_size, row + (len - 1) / t_.block_size);
        for (uint32_t b = first / t_.block_size; b <= (len - 1) / t_.block_size; b++) {
            const int32_t block = BlockId(row + b);
            if (block < 0 || static_cast<uint32_t>(block) >= t_.num_blocks) return false;
        }
        return true;
    }

    // Copies table entries [a, b] into the UB when they fit (a 32-byte-aligned run inside the
    // table), and waits for the copy before the scalar unit reads them.
    __aicore__ inline void Stage(uint64_t a, uint64_t b) {
        const uint64_t start = a / 8 * 8;
        const uint64_t count = (b + 1 - start + 7) / 8 * 8;
        const uint64_t size = static_cast<uint64_t>(t_.num_seqs) * t_.max_blocks_per_seq;
        if (count > kTableStage || start + count > size) return;
        LocalTensor<int32_t> stage = tableStage_.Get<int32_t>();
        DataCopy(stage, tableGm_[start], static_cast<uint32_t>(count));
        Mte2ToScalar();
        staged_ = true;
        stageStart_ = start;
        stageEnd_ = start + count;
    }

    // Table entry `at`: from the staged copy when it holds it.
    __aicore__ inline int32_t BlockId(uint64_t at) {
        if (staged_ && at >= stageStart_ && at < stageEnd_)
            return tableStage_.Get<int32_t>().GetValue(static_cast<uint32_t>(at - stageStart_));
        return tableGm_.GetValue(at);
    }

    // ---- one task ---------------------------------------------------------------------------

    // The query rows of `tokens` tokens (the group's heads of each) from GM offset `at`, scaled.
    __aicore__ inline void LoadQuery(uint64_t at, uint32_t tokens) {
        const uint32_t g = group_ * hs_;
        LocalTensor<T> q = qQueue_.template AllocTensor<T>();
        if (tokens == 1) {
            DataCopy(q, qGm_[at], g);
        } else {
            const DataCopyParams p(static_cast<uint16_t>(tokens), static_cast<uint16_t>(g * sizeof(T) / 32),
                                   static_cast<uint16_t>((t_.num_heads * hs_ - g) * sizeof(T) / 32), 0);
            DataCopy(q, qGm_[at], p);
        }
        qQueue_.EnQue(q);
        query_ = qQueue_.template DeQue<T>();
        Muls(query_, query_, static_cast<T>(t_.scale), static_cast<int32_t>(tokens * g));
    }

    // Attends `rows` query rows (`tokens` tokens of `group_` heads each, the first at position
    // `pos0`; decode: one token, every position before `hi` visible) to positions [lo, hi) of
    // `seq`'s context through KV head `kvh`. Leaves each row's unnormalised result in acc_,
    // its running maximum in MaxBlock(), its sum in SumBlock().
    __aicore__ inline void Attend(uint32_t seq, uint32_t kvh, uint32_t lo, uint32_t hi, uint32_t rows, uint32_t pos0,
                                  uint32_t tokens) {
        rows_ = rows;
        flip_ = 0;
        LocalTensor<float> acc = acc_.Get<float>();
        Duplicate(acc, 0.0f, static_cast<int32_t>(rows * accRows_ * hs_));
        Duplicate(MaxBlock(), kMaxStart, static_cast<int32_t>(rows * 8));
        Duplicate(SumBlock(), 0.0f, static_cast<int32_t>(rows * 8));
        if (lo >= hi) return;
        // A short first chunk: its load is the one nothing hides.
        uint32_t pos = lo, n = ChunkAt(pos, hi);
        const uint32_t opening = t_.chunk / 4 > 16 ? t_.chunk / 4 : 16;
        if (n > opening && hi - lo >= 4 * t_.chunk) n = opening;
        Load(kQueue_, kGm_, seq, kvh, pos, n);
        Load(vQueue_, vGm_, seq, kvh, pos, n);
        bool first = true;
        while (pos < hi) {
            const uint32_t next = pos + n;
            const uint32_t nn = next < hi ? ChunkAt(next, hi) : 0;
            LocalTensor<T> k = kQueue_.template DeQue<T>();
            Scores(k, n);
            kQueue_.FreeTensor(k);
            if (nn > 0) Load(kQueue_, kGm_, seq, kvh, next, nn);
            if (tokens > 0) Mask(pos, n, pos0, tokens);
            Softmax(n, first);
            first = false;
            LocalTensor<T> v = vQueue_.template DeQue<T>();
            WeightedValues(v, n);
            vQueue_.FreeTensor(v);
            if (nn > 0) Load(vQueue_, vGm_, seq, kvh, next, nn);
            pos = next;
            n = nn;
        }
        if (accRows_ > 1) {
            // The partial rows of each query row, summed into its first.
            for (uint32_t r = 0; r < rows; r++)
                for (uint32_t step = accRows_ / 2; step >= 1; step /= 2)
                    Add(acc[r * accRows_ * hs_], acc[r * accRows_ * hs_], acc[(r * accRows_ + step) * hs_],
                        static_cast<int32_t>(step * hs_));
        }
    }

    // Tokens of the chunk at `pos`, of the fewest chunks that cover [pos, hi): the short one
    // first (its load is the one nothing hides), then whole chunks. A chunk may span cache blocks.
    __aicore__ inline uint32_t ChunkAt(uint32_t pos, uint32_t hi) const {
        return (hi - pos - 1) % t_.chunk + 1;
    }

    // Where position `pos` of `seq`'s KV head `kvh` lives in the caches (the task's KV heads
    // follow it in each token row).
    __aicore__ inline uint64_t Source(uint32_t seq, uint32_t kvh, uint32_t pos) {
        const int32_t block = BlockId(static_cast<uint64_t>(seq) * t_.max_blocks_per_seq + pos / t_.block_size);
        return (static_cast<uint64_t>(block) * t_.block_size + pos % t_.block_size) * tokenStride_ + kvh * hs_;
    }

    __aicore__ inline DataCopyParams Rows(uint32_t n) const {
        const uint32_t row = kvPerTask_ * hs_;
        if (row == tokenStride_) return DataCopyParams(1, static_cast<uint16_t>(n * row * sizeof(T) / 32), 0, 0);
        return DataCopyParams(static_cast<uint16_t>(n), static_cast<uint16_t>(row * sizeof(T) / 32),
                              static_cast<uint16_t>((tokenStride_ - row) * sizeof(T) / 32), 0);
    }
    // Tokens [pos, pos + n) of `seq`'s KV heads from `kvh` into the next buffer of `queue`: one
    // copy per cache block the range touches.
    __aicore__ inline void Load(TQue<TPosition::VECIN, 1>& queue, const GlobalTensor<T>& gm, uint32_t seq,
                                uint32_t kvh, uint32_t pos, uint32_t n) {
        LocalTensor<T> dst = queue.template AllocTensor<T>();
        for (uint32_t done = 0; done < n;) {
            const uint32_t p = pos + done;
            uint32_t m = t_.block_size - p % t_.block_size;
            if (m > n - done) m = n - done;
            DataCopy(dst[done * kvPerTask_ * hs_], gm[Source(seq, kvh, p)], Rows(m));
            done += m;
        }
        queue.EnQue(dst);
    }

    // The per-row blocks: the running maximum (two in turn), the sum, the rescale factor, scratch.
    __aicore__ inline LocalTensor<float> Block(uint32_t which) {
        return stats_.Get<float>()[which * Round8(maxRows_) * 8];
    }
    __aicore__ inline LocalTensor<float> MaxBlock() { return Block(flip_); }
    __aicore__ inline LocalTensor<float> NewMaxBlock() { return Block(1 - flip_); }
    __aicore__ inline LocalTensor<float> SumBlock() { return Block(2); }
    __aicore__ inline LocalTensor<float> RescaleBlock() { return Block(3); }
    __aicore__ inline LocalTensor<float> SpreadBlock() { return Block(4); }
    __aicore__ inline LocalTensor<float> Compact(uint32_t which) {
        return compact_.Get<float>()[which * Round8(maxRows_)];
    }

    // scores[r][j] = q_r . k_j for the chunk's n tokens, every row r.
    // The partial rows are zeroed once per chunk, not once per row: row r's products are added
    // on top of rows 0..r-1's, so its reduction is the running sum S_r = s_0 + .. + s_r, and
    // s_r = S_r - S_{r-1} (one short Sub per row, from the last row down, instead of n repeats
    // of zeroing per row: a quarter of the per-token vector work for a group of 4). The price is
    // precision relative to the earlier rows' partial sums instead of the row's own (an ulp,
    // about 1e-7 of their magnitude), far inside what f16/bf16 inputs carry.
    __aicore__ inline void Scores(const LocalTensor<T>& k, uint32_t n) {
        LocalTensor<float> partial = partial_.Get<float>(), scores = scores_.Get<float>();
        const uint8_t rep = static_cast<uint8_t>(n);
        const uint8_t kRow = static_cast<uint8_t>(kvPerTask_ * hs_ * sizeof(T) / 32);  // one token's K rows, in blocks
        Duplicate(partial, 0.0f, static_cast<int32_t>(n * 64));
        for (uint32_t r = 0; r < rows_; r++) {
            const uint32_t head = HeadOf(r) * hs_;
            for (uint32_t c = 0; c < hs_; c += 64) {
                const uint64_t mask = hs_ - c < 64 ? hs_ - c : 64;
                MulAddDst(partial, k[head + c], query_[r * hs_ + c], mask, rep,
                          BinaryRepeatParams(1, 1, 1, 8, kRow, 0));
            }
            WholeReduceSum(scores[r * npad_], partial, 64, static_cast<int32_t>(n), 1, 1, 8);
        }
        for (uint32_t r = rows_; r > 1; r--) {
            LocalTensor<float> row = scores[(r - 1) * npad_];
            Sub(row, row, scores[(r - 2) * npad_], static_cast<int32_t>(n));
        }
    }

    // Masks the scores of positions a row does not see: past its own position (causal), or
    // before its window. Row r of token i sits at pos0 + i.
    __aicore__ inline void Mask(uint32_t c0, uint32_t n, uint32_t pos0, uint32_t tokens) {
        LocalTensor<float> scores = scores_.Get<float>();
        for (uint32_t i = 0; i < tokens; i++) {
            const uint32_t p = pos0 + i;
            uint32_t a = 0, b = n;  // visible: [a, b) of the chunk
            if (p + 1 < c0 + n) b = p + 1 > c0 ? p + 1 - c0 : 0;
            if (t_.sliding_window != 0 && p + 1 > t_.sliding_window) {
                const uint32_t first = p + 1 - t_.sliding_window;
                if (first > c0) a = first - c0 < n ? first - c0 : n;
            }
            if (a == 0 && b == n) continue;
            for (uint32_t g = 0; g < group_; g++) {
                LocalTensor<float> row = scores[(i * group_ + g) * npad_];
                if (b <= a) {
                    Duplicate(row, kMasked, static_cast<int32_t>(n));
                    continue;
                }
                if (a > 0) Duplicate(row, kMasked, static_cast<int32_t>(a));
                if (b < n) {
                    // Lanes b.. of the repeat holding b, then whole repeats to the chunk's end.
                    const uint32_t r0 = b / 64, lane = b % 64;
                    uint64_t bits[2] = {~0ULL << lane, 0};
                    Duplicate(row[r0 * 64], kMasked, bits, 1, 1, 8);
                    const uint32_t whole = (n + 63) / 64 - r0 - 1;
                    if (whole > 0) Duplicate(row[(r0 + 1) * 64], kMasked, 64, static_cast<uint8_t>(whole), 1, 8);
                }
            }
        }
    }

    // The online softmax step for every row, on the vector unit: new max, rescale factor,
    // weights exp(s - max) in the scores, sum updated.
    // The first chunk of a task sets the sum and leaves the accumulators alone.
    __aicore__ inline void Softmax(uint32_t n, bool first) {
        LocalTensor<float> scores = scores_.Get<float>();
        LocalTensor<float> cm = Compact(0), cm2 = Compact(1), cs = Compact(2), cs2 = Compact(3);
        const int32_t rows = static_cast<int32_t>(rows_);
        const int32_t lanes = static_cast<int32_t>(rows_ * 8);
        const int32_t rowStride = static_cast<int32_t>(npad_ / 8);
        const uint32_t lo = n < 64 ? n : 64, hiLanes = n > 64 ? n - 64 : 0;
        const uint8_t spread = static_cast<uint8_t>((rows_ + 7) / 8);
        WholeReduceMax(cm, scores, static_cast<int32_t>(lo), rows, 1, 1, rowStride, ReduceOrder::ORDER_ONLY_VALUE);
        if (hiLanes > 0) {
            WholeReduceMax(cm2, scores[64], static_cast<int32_t>(hiLanes), rows, 1, 1, rowStride,
                           ReduceOrder::ORDER_ONLY_VALUE);
            Max(cm, cm, cm2, rows);
        }
        LocalTensor<float> spreadMax = SpreadBlock(), oldMax = MaxBlock(), newMax = NewMaxBlock();
        Brcb(spreadMax, cm, spread, BrcbRepeatParams(1, 8));
        Max(newMax, oldMax, spreadMax, lanes);
        // The first chunk needs no rescale: the sum and the accumulators are still zero.
        LocalTensor<float> rescale = RescaleBlock();
        if (!first) {
            Sub(rescale, oldMax, newMax, lanes);
            Exp(rescale, rescale, lanes);
        }
        flip_ = 1 - flip_;
        // s -= new max (its block, per row), each half of the chunk; then exp.
        const BinaryRepeatParams byRow(1, 1, 0, static_cast<uint8_t>(rowStride), static_cast<uint8_t>(rowStride), 1);
        Sub(scores, scores, newMax, lo, static_cast<uint8_t>(rows), byRow);
        if (hiLanes > 0) Sub(scores[64], scores[64], newMax, hiLanes, static_cast<uint8_t>(rows), byRow);
        Exp(scores, scores, static_cast<int32_t>(rows_ * npad_));
        WholeReduceSum(cs, scores, static_cast<int32_t>(lo), rows, 1, 1, rowStride);
        if (hiLanes > 0) {
            WholeReduceSum(cs2, scores[64], static_cast<int32_t>(hiLanes), rows, 1, 1, rowStride);
            Add(cs, cs, cs2, rows);
        }
        LocalTensor<float> sum = SumBlock();
        if (first) {
            Brcb(sum, cs, spread, BrcbRepeatParams(1, 8));
            return;
        }
        LocalTensor<float> spreadSum = SpreadBlock();
        Brcb(spreadSum, cs, spread, BrcbRepeatParams(1, 8));
        Mul(sum, sum, rescale, lanes);
        Add(sum, sum, spreadSum, lanes);
        // acc *= rescale, each query row's partial rows by its own factor.
        LocalTensor<float> acc = acc_.Get<float>();
        const uint32_t perRow = accRows_ * hs_;
        for (uint32_t r = 0; r < rows_; r++) ScaleByBlock(acc[r * perRow], acc[r * perRow], rescale[r * 8], perRow, false);
    }

    // acc += weights x V for every row.
    __aicore__ inline void WeightedValues(const LocalTensor<T>& v, uint32_t n) {
        LocalTensor<float> scores = scores_.Get<float>(), acc = acc_.Get<float>();
        const uint8_t spread = static_cast<uint8_t>((n + 7) / 8);
        if (t_.acc_rows > 1) {
            // Decode: weights in T, each spread over a block (in the partial rows, free until
            // the next chunk's scores); MulAddDst of V rows into acc_rows partial rows per
            // query row (each repeat into its own row).
            LocalTensor<T> blocks = partial_.Get<T>();
            LocalTensor<T> weights = WeightsAsT(scores);
            const uint32_t epb = 32 / sizeof(T), token = kvPerTask_ * hs_;
            const uint32_t pieces = piecesPV_;
            if (pieces > 0) {
                // One repeat per (token, 64-element piece): V's pieces and the partial rows'
                // pieces are then both evenly spaced, so one MulAddDst covers accRows_ tokens
                // of every piece (hs/64 times fewer instructions), with each weight spread over
                // hs/64 consecutive blocks, one Brcb per piece.
                const uint8_t vPiece = static_cast<uint8_t>(64 * sizeof(T) / 32);
                const BrcbRepeatParams perPiece(static_cast<uint16_t>(pieces), static_cast<uint16_t>(8 * pieces));
                for (uint32_t r = 0; r < rows_; r++) {
                    for (uint32_t c = 0; c < pieces; c++) Brcb(blocks[c * epb], weights[r * npad_], spread, perPiece);
                    for (uint32_t t0 = 0; t0 < n; t0 += accRows_) {
                        const uint32_t m = n - t0 < accRows_ ? n - t0 : accRows_;
                        MulAddDst(acc[r * accRows_ * hs_], v[t0 * hs_], blocks[t0 * pieces * epb], 64,
                                  static_cast<uint8_t>(m * pieces), BinaryRepeatParams(1, 1, 0, 8, vPiece, 1));
                    }
                }
                return;
            }
            const uint8_t vRow = static_cast<uint8_t>(token * sizeof(T) / 32);
            const uint8_t accRow = static_cast<uint8_t>(hs_ / 8);
            for (uint32_t r = 0; r < rows_; r++) {
                const uint32_t head = HeadOf(r) * hs_;
                Brcb(blocks, weights[r * npad_], spread, BrcbRepeatParams(1, 8));
                for (uint32_t t0 = 0; t0 < n; t0 += accRows_) {
                    const uint8_t m = static_cast<uint8_t>(n - t0 < accRows_ ? n - t0 : accRows_);
                    for (uint32_t c = 0; c < hs_; c += 64) {
                        const uint64_t mask = hs_ - c < 64 ? hs_ - c : 64;
                        MulAddDst(acc[r * accRows_ * hs_ + c], v[t0 * token + head + c], blocks[t0 * epb], mask, m,
                                  BinaryRepeatParams(1, 1, 0, accRow, vRow, 1));
                    }
                }
            }
            return;
        }
        // Prefill: V as float once for all rows; per row and 64-float piece, Mul into one row
        // per token, then an accumulating Add into the row's result.
        LocalTensor<float> vf = VFloat(v, n);
        LocalTensor<float> blocks = weightBlocks_.Get<float>(), partial = partial_.Get<float>();
        const uint8_t rep = static_cast<uint8_t>(n), vRow = static_cast<uint8_t>(kvPerTask_ * hs_ / 8);
        for (uint32_t r = 0; r < rows_; r++) {
            const uint32_t head = HeadOf(r) * hs_;
            Brcb(blocks, scores[r * npad_], spread, BrcbRepeatParams(1, 8));
            for (uint32_t c = 0; c < hs_; c += 64) {
                const uint64_t mask = hs_ - c < 64 ? hs_ - c : 64;
                Mul(partial, vf[head + c], blocks, mask, rep, BinaryRepeatParams(1, 1, 0, 8, vRow, 1));
                LocalTensor<float> out = acc[r * hs_ + c];
                Add(out, partial, out, mask, rep, BinaryRepeatParams(1, 1, 1, 0, 8, 0));
            }
        }
    }

    // The task's KV head a query row uses: rows are [token][KV head of the task][query head].
    __aicore__ inline uint32_t HeadOf(uint32_t r) const { return r % group_ / qPerKv_; }

    __aicore__ inline LocalTensor<T> WeightsAsT(const LocalTensor<float>& scores);
    __aicore__ inline LocalTensor<float> VFloat(const LocalTensor<T>& v, uint32_t n);

    // ---- results ----------------------------------------------------------------------------

    // Each row's result divided by its sum, stored as T at GM offset `at` (`tokens` tokens of the
    // group's heads; further tokens num_heads * head_size apart).
    __aicore__ inline void StoreRows(uint64_t at, uint32_t tokens) {
        LocalTensor<float> acc = acc_.Get<float>(), outf = outFloat_.Get<float>(), sum = SumBlock();
        Adds(sum, sum, kSumFloor, static_cast<int32_t>(rows_ * 8));
        const uint32_t perRow = accRows_ * hs_;
        for (uint32_t r = 0; r < rows_; r++) ScaleByBlock(outf[r * hs_], acc[r * perRow], sum[r * 8], hs_, true);
        LocalTensor<T> y = outQueue_.template AllocTensor<T>();
        FromFloat(y, outf, rows_ * hs_);
        outQueue_.EnQue(y);
        y = outQueue_.template DeQue<T>();
        const uint32_t g = group_ * hs_;
        if (tokens <= 1) {
            DataCopy(outGm_[at], y, g);
        } else {
            const DataCopyParams p(static_cast<uint16_t>(tokens), static_cast<uint16_t>(g * sizeof(T) / 32), 0,
                                   static_cast<uint16_t>((t_.num_heads * hs_ - g) * sizeof(T) / 32));
            DataCopy(outGm_[at], y, p);
        }
        outQueue_.FreeTensor(y);
        qQueue_.FreeTensor(query_);
    }

    // Each row's unnormalised result, running maximum and sum ([hs floats | max x 8 | sum x 8]),
    // to the workspace: the records of the group's heads `parts` records apart.
    __aicore__ inline void StorePartial(uint64_t at, uint32_t parts) {
        LocalTensor<float> acc = acc_.Get<float>();
        LocalTensor<float> rec = outQueue_.template AllocTensor<float>();
        const uint32_t perRow = accRows_ * hs_, record = Record();
        for (uint32_t r = 0; r < rows_; r++) {
            Adds(rec[r * record], acc[r * perRow], 0.0f, static_cast<int32_t>(hs_));
            Adds(rec[r * record + hs_], MaxBlock()[r * 8], 0.0f, 8);
            Adds(rec[r * record + hs_ + 8], SumBlock()[r * 8], 0.0f, 8);
        }
        outQueue_.EnQue(rec);
        rec = outQueue_.template DeQue<float>();
        const DataCopyParams p(static_cast<uint16_t>(rows_), static_cast<uint16_t>(record * 4 / 32), 0,
                               static_cast<uint16_t>((parts - 1) * record * 4 / 32));
        DataCopy(wsGm_[at], rec, p);
        outQueue_.FreeTensor(rec);
        qQueue_.FreeTensor(query_);
    }

    ArkPagedAttentionTiling t_;
    uint32_t queryRows_ = 0, group_ = 1, tokenStride_ = 0, hs_ = 0, npad_ = 64, accRows_ = 1, maxRows_ = 1;
    uint32_t kvPerTask_ = 1, qPerKv_ = 1, kvGroups_ = 1;
    uint32_t piecesPV_ = 0;  // decode's P.V pieces per token repeat (0: by token rows)
    uint32_t rows_ = 0, flip_ = 0;
    bool prefill_ = false, staged_ = false;
    uint64_t stageStart_ = 0, stageEnd_ = 0;
    StatusWord status_;
    TPipe pipe_;
    TQue<TPosition::VECIN, 1> kQueue_, vQueue_, qQueue_;
    TQue<TPosition::VECOUT, 1> outQueue_;
    TBuf<TPosition::VECCALC> partial_, scores_, weightsT_, weightBlocks_, acc_, vFloat_, outFloat_, stats_, compact_,
        tableStage_;
    LocalTensor<T> query_;
    GlobalTensor<T> outGm_, qGm_, kGm_, vGm_;
    GlobalTensor<int32_t> tableGm_, lenGm_, startGm_;
    GlobalTensor<float> wsGm_;
};

// half: the weights cast for MulAddDst's half sources; the V chunk cast to float for prefill.
template <>
__aicore__ inline LocalTensor<half> KernelAttention<half>::WeightsAsT(const LocalTensor<float>& scores) {
    LocalTensor<half> w = weightsT_.Get<half>();
    Cast(w, scores, RoundMode::CAST_RINT, rows_ * npad_);
    return w;
}
template <>
__aicore__ inline LocalTensor<float> KernelAttention<half>::VFloat(const LocalTensor<half>& v, uint32_t n) {
    LocalTensor<float> vf = vFloat_.Get<float>();
    Cast(vf, v, RoundMode::CAST_NONE, n * kvPerTask_ * hs_);
    return vf;
}
// float: both are the data itself.
template <>
__aicore__ inline LocalTensor<float> KernelAttention<float>::WeightsAsT(const LocalTensor<float>& scores) {
    return scores;
}
template <>
__aicore__ inline LocalTensor<float> KernelAttention<float>::VFloat(const LocalTensor<float>& v, uint32_t) {
    return v;
}

// Combines the parts of each (sequence, query head) that a split decode left in the workspace:
// with M the largest part maximum, out = sum_p acc_p e^(m_p - M) / sum_p l_p e^(m_p - M).
template <typename T>
class KernelAttentionMerge {
public:
    __aicore__ inline void Init(GM_ADDR out, GM_ADDR workspace, const ArkPagedAttentionTiling& t) {
        t_ = t;
        // One query head per task: the parts of each head are contiguous in the workspace.
        group_ = 1;
        hs_ = t.head_size;
        parts_ = t.partitions;
        record_ = hs_ + 16;
        outGm_.SetGlobalBuffer((__gm__ T*)out, static_cast<uint64_t>(t.num_seqs) * t.num_heads * hs_);
        wsGm_.SetGlobalBuffer((__gm__ float*)workspace, static_cast<uint64_t>(t.num_seqs) * t.num_heads * parts_ * record_);
        const uint32_t small = (parts_ + 7) / 8 * 8;
        pipe_.InitBuffer(inQueue_, 1, group_ * parts_ * record_ * 4);
        pipe_.InitBuffer(outQueue_, 1, group_ * hs_ * sizeof(T));
        pipe_.InitBuffer(acc_, group_ * hs_ * 4);
        pipe_.InitBuffer(rows_, parts_ * 64 * 4);
        pipe_.InitBuffer(blocks_, small * 32);
        pipe_.InitBuffer(vals_, 4 * small * 4);
        // A block of scalars, then the 8 blocks one Brcb repeat writes.
        pipe_.InitBuffer(one_, 9 * 32);
    }

    __aicore__ inline void Process() {
        const int64_t tasks = static_cast<int64_t>(t_.num_seqs) * t_.num_heads;
        const uint32_t small = (parts_ + 7) / 8 * 8;
        const int32_t p = static_cast<int32_t>(parts_);
        for (int64_t task = GetBlockIdx(); task < tasks; task += GetBlockNum()) {
            const uint64_t head0 = static_cast<uint64_t>(task);  // seq * num_heads + head
            LocalTensor<float> in = inQueue_.template AllocTensor<float>();
            DataCopy(in, wsGm_[head0 * parts_ * record_], group_ * parts_ * record_);
            inQueue_.EnQue(in);
            in = inQueue_.template DeQue<float>();
            LocalTensor<float> acc = acc_.Get<float>(), rows = rows_.Get<float>(), blocks = blocks_.Get<float>();
            LocalTensor<float> vals = vals_.Get<float>(), one = one_.Get<float>();
            LocalTensor<float> m = vals, l = vals[small], e = vals[2 * small], le = vals[3 * small];
            Duplicate(acc, 0.0f, static_cast<int32_t>(group_ * hs_));
            const int32_t rec = static_cast<int32_t>(record_ / 8);
            for (uint32_t g = 0; g < group_; g++) {
                LocalTensor<float> recs = in[g * parts_ * record_];
                // Each part's maximum and sum (the first lane of its blocks), then the largest.
                WholeReduceMax(m, recs[hs_], 1, p, 1, 1, rec, ReduceOrder::ORDER_ONLY_VALUE);
                WholeReduceSum(l, recs[hs_ + 8], 1, p, 1, 1, rec);
                WholeReduceMax(one, m, p, 1, 1, 1, 8, ReduceOrder::ORDER_ONLY_VALUE);
                Brcb(one[8], one, 1, BrcbRepeatParams(1, 8));
                // e_p = exp(m_p - M); the total sum L = sum_p l_p e_p.
                Sub(e, m, one[8], static_cast<uint64_t>(p), 1, BinaryRepeatParams(1, 1, 0, 8, 8, 0));
                Exp(e, e, p);
                Mul(le, l, e, p);
                WholeReduceSum(one, le, p, 1, 1, 1, 8);
                Adds(one, one, kSumFloor, 8);
                // acc_g = sum_p e_p acc_p (each part's weight spread over a block).
                Brcb(blocks, e, static_cast<uint8_t>((parts_ + 7) / 8), BrcbRepeatParams(1, 8));
                for (uint32_t c = 0; c < hs_; c += 64) {
                    const uint64_t mask = hs_ - c < 64 ? hs_ - c : 64;
                    Mul(rows, recs[c], blocks, mask, static_cast<uint8_t>(parts_),
                        BinaryRepeatParams(1, 1, 0, 8, static_cast<uint8_t>(rec), 1));
                    LocalTensor<float> out = acc[g * hs_ + c];
                    Add(out, rows, out, mask, static_cast<uint8_t>(parts_), BinaryRepeatParams(1, 1, 1, 0, 8, 0));
                }
                Brcb(one[8], one, 1, BrcbRepeatParams(1, 8));
                ScaleByBlock(acc[g * hs_], acc[g * hs_], one[8], hs_, true);
            }
            inQueue_.FreeTensor(in);
            LocalTensor<T> y = outQueue_.template AllocTensor<T>();
            FromFloat(y, acc, group_ * hs_);
            outQueue_.EnQue(y);
            y = outQueue_.template DeQue<T>();
            DataCopy(outGm_[head0 * hs_], y, group_ * hs_);
            outQueue_.FreeTensor(y);
        }
    }

private:
    ArkPagedAttentionTiling t_;
    uint32_t group_ = 1, hs_ = 0, parts_ = 1, record_ = 16;
    TPipe pipe_;
    TQue<TPosition::VECIN, 1> inQueue_;
    TQue<TPosition::VECOUT, 1> outQueue_;
    TBuf<TPosition::VECCALC> acc_, rows_, blocks_, vals_, one_;
    GlobalTensor<T> outGm_;
    GlobalTensor<float> wsGm_;
};

#define PAGED_ATTENTION(NAME, T)                                                                   \
    extern "C" __global__ __aicore__ void NAME(GM_ADDR out, GM_ADDR query, GM_ADDR key_cache,      \
                                               GM_ADDR value_cache, GM_ADDR block_tables,          \
                                               GM_ADDR seq_lens, GM_ADDR workspace, GM_ADDR status, \
                                               ArkPagedAttentionTiling tiling) {                   \
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                            \
        KernelAttention<T> op;                                                                     \
        op.InitDecode(out, query, key_cache, value_cache, block_tables, seq_lens, workspace, status, \
                      tiling);                                                                     \
        op.Process();                                                                              \
    }
PAGED_ATTENTION(paged_attention_half, half)
PAGED_ATTENTION(paged_attention_float, float)

#define PAGED_ATTENTION_MERGE(NAME, T)                                                             \
    extern "C" __global__ __aicore__ void NAME(GM_ADDR out, GM_ADDR workspace,                     \
                                               ArkPagedAttentionTiling tiling) {                   \
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                            \
        KernelAttentionMerge<T> op;                                                                \
        op.Init(out, workspace, tiling);                                                           \
        op.Process();                                                                              \
    }
PAGED_ATTENTION_MERGE(paged_attention_merge_half, half)
PAGED_ATTENTION_MERGE(paged_attention_merge_float, float)

#define PAGED_PREFILL_ATTENTION(NAME, T)                                                           \
    extern "C" __global__ __aicore__ void NAME(GM_ADDR out, GM_ADDR query, GM_ADDR key_cache,      \
                                               GM_ADDR value_cache, GM_ADDR block_tables,          \
                                               GM_ADDR query_start_loc, GM_ADDR seq_lens,          \
                                               GM_ADDR status, ArkPrefillAttentionTiling tiling) { \
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                            \
        KernelAttention<T> op;                                                                     \
        op.InitPrefill(out, query, key_cache, value_cache, block_tables, query_start_loc, seq_lens, \
                       status, tiling);                                                            \
        op.Process();                                                                              \
    }
PAGED_PREFILL_ATTENTION(paged_prefill_attention_half, half)
PAGED_PREFILL_ATTENTION(paged_prefill_attention_float, float)
