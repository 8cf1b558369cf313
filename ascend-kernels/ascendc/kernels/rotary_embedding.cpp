// rotary_embedding, in place on the query and key of each token. NeoX style:
//   for f < rotary_dim / 2, with c = cos[pos][f], s = sin[pos][f]:
//     x[f]        = x[f] * c - x[f + half] * s
//     x[f + half] = x[f + half] * c + x[f] * s
// Tokens are spread over the cores. Per token, the cos/sin row (float, [cos | sin]) and the
// token's whole query (then key) row come into the UB through double-buffered queues; the
// rotating halves are computed in float by level-0 Mul/Sub/Add, one repeat per head (up to
// ROPE_HEADS_PER_PASS heads and 64 floats of the half per instruction, cos/sin with repeat
// stride 0), and the row goes back out.
// Needs rotary_dim / 2 elements of T to be a multiple of 32 bytes (vector operands are aligned).
// A position outside [0, max_position) (device memory the host did not check) reads no cos/sin
// row: the token's query and key rows become zeros instead, and it is counted in `status`.
//
// GPT-J style (tiling.gptj = 1) rotates adjacent pairs instead:
//     x[2f]     = x[2f] * c - x[2f + 1] * s
//     x[2f + 1] = x[2f + 1] * c + x[2f] * s
// which is x * C + swap(x) * S with C = (c0, c0, c1, c1, ...), S = (-s0, s0, -s1, s1, ...) over
// the rotating elements and C = 1, S = 0 past them. Pairs are not 32-byte blocks, so level-0
// strides cannot reach them: per token, C and S of one head are gathered (Gather, byte offsets
// built once per core) from the cos/sin row, two constant blocks (1 and 0) appended to it, and
// per head the pair-swapped row is gathered, then three level-2 instructions combine them.
#include "common.h"
#include "tiling.h"

template <typename T>
class KernelRotaryEmbedding {
public:
    __aicore__ inline void Init(GM_ADDR positions, GM_ADDR query, GM_ADDR key, GM_ADDR cos_sin, GM_ADDR status,
                                const ArkRopeTiling& t) {
        t_ = t;
        half_ = t.rotary_dim / 2;
        posGm_.SetGlobalBuffer((__gm__ int64_t*)positions, t.num_tokens);
        qGm_.SetGlobalBuffer((__gm__ T*)query, static_cast<uint64_t>(t.num_tokens) * t.num_heads * t.head_size);
        kGm_.SetGlobalBuffer((__gm__ T*)key, static_cast<uint64_t>(t.num_tokens) * t.num_kv_heads * t.head_size);
        csGm_.SetGlobalBuffer((__gm__ float*)cos_sin, static_cast<uint64_t>(t.max_position) * t.rotary_dim);
        const uint32_t row = (t.num_heads > t.num_kv_heads ? t.num_heads : t.num_kv_heads) * t.head_size;
        // The cos/sin row, then a block of ones and a block of zeros (GPT-J's C and S past the
        // rotating elements).
        pipe_.InitBuffer(csQueue_, 2, (t.rotary_dim + 16) * sizeof(float));
        pipe_.InitBuffer(inQueue_, 2, row * sizeof(T));
        pipe_.InitBuffer(outQueue_, 2, row * sizeof(T));
        pipe_.InitBuffer(xf_, row * sizeof(float));
        pipe_.InitBuffer(t1_, ROPE_HEADS_PER_PASS * 64 * sizeof(float));
        pipe_.InitBuffer(t2_, ROPE_HEADS_PER_PASS * 64 * sizeof(float));
        pipe_.InitBuffer(t3_, ROPE_HEADS_PER_PASS * 64 * sizeof(float));
        if (t.gptj) InitGptj(row);
        status_.Init(pipe_, status);
    }

    __aicore__ inline void Process() {
        for (int64_t tok = GetBlockIdx(); tok < t_.num_tokens; tok += GetBlockNum()) {
            const int64_t pos = posGm_.GetValue(tok);
            if (pos < 0 || pos >= static_cast<int64_t>(t_.max_position)) {
                status_.Refused();
                Zero(qGm_[static_cast<uint64_t>(tok) * t_.num_heads * t_.head_size], t_.num_heads);
                Zero(kGm_[static_cast<uint64_t>(tok) * t_.num_kv_heads * t_.head_size], t_.num_kv_heads);
                continue;
            }
            LocalTensor<float> cs = csQueue_.template AllocTensor<float>();
            DataCopy(cs, csGm_[static_cast<uint64_t>(pos) * t_.rotary_dim], t_.rotary_dim);
            csQueue_.EnQue(cs);
            cs = csQueue_.template DeQue<float>();
            if (t_.gptj) Interleave(cs);
            Rotate(qGm_[static_cast<uint64_t>(tok) * t_.num_heads * t_.head_size], t_.num_heads, cs);
            Rotate(kGm_[static_cast<uint64_t>(tok) * t_.num_kv_heads * t_.head_size], t_.num_kv_heads, cs);
            csQueue_.FreeTensor(cs);
        }
        status_.Write();
    }

private:
    __aicore__ inline void Zero(const GlobalTensor<T>& gm, uint32_t heads) {
        const uint32_t n = heads * t_.head_size;
        LocalTensor<T> y = outQueue_.template AllocTensor<T>();
        Duplicate(y, static_cast<T>(0.0f), static_cast<int32_t>(n));
        outQueue_.EnQue(y);
        y = outQueue_.template DeQue<T>();
        GlobalTensor<T> dst = gm;
        DataCopy(dst, y, n);
        outQueue_.FreeTensor(y);
    }

    __aicore__ inline void Rotate(const GlobalTensor<T>& gm, uint32_t heads, const LocalTensor<float>& cs) {
        const uint32_t n = heads * t_.head_size;
        LocalTensor<T> x = inQueue_.template AllocTensor<T>();
        DataCopy(x, gm, n);
        inQueue_.EnQue(x);
        x = inQueue_.template DeQue<T>();
        LocalTensor<float> xf = xf_.Get<float>();
        ToFloat(xf, x, n);
        inQueue_.FreeTensor(x);
        if (t_.gptj) {
            RotatePairs(xf, heads);
        } else {
            RotateHalves(xf, heads, cs);
        }
        LocalTensor<T> y = outQueue_.template AllocTensor<T>();
        FromFloat(y, xf, n);
        outQueue_.EnQue(y);
        y = outQueue_.template DeQue<T>();
        GlobalTensor<T> dst = gm;
        DataCopy(dst, y, n);
        outQueue_.FreeTensor(y);
    }

    // GPT-J: the byte offsets of each head element's pair partner, and of its C and S in the
    // cos/sin row (with the constant blocks at rotary_dim and rotary_dim + 8), and the signs of
    // S; written once by the scalar unit.
    __aicore__ inline void InitGptj(uint32_t row) {
        const uint32_t hs = t_.head_size, rd = t_.rotary_dim;
        pipe_.InitBuffer(offsets_, 3 * hs * sizeof(uint32_t));
        pipe_.InitBuffer(heads_, 3 * hs * sizeof(float));
        pipe_.InitBuffer(xs_, row * sizeof(float));
        LocalTensor<uint32_t> off = offsets_.Get<uint32_t>();
        LocalTensor<float> sign = heads_.Get<float>();
        for (uint32_t j = 0; j < hs; j++) {
            const bool rot = j < rd;
            off.SetValue(j, (rot ? (j ^ 1u) : j) * 4u);
            off.SetValue(hs + j, (rot ? j / 2 : rd) * 4u);
            off.SetValue(2 * hs + j, (rot ? half_ + j / 2 : rd + 8) * 4u);
            sign.SetValue(j, rot ? (j % 2 == 0 ? -1.0f : 1.0f) : 0.0f);
        }
        ScalarToVector();
    }

    // GPT-J: C and S of one head for this token's cos/sin row.
    __aicore__ inline void Interleave(const LocalTensor<float>& cs) {
        const uint32_t hs = t_.head_size, rd = t_.rotary_dim;
        LocalTensor<uint32_t> off = offsets_.Get<uint32_t>();
        LocalTensor<float> h = heads_.Get<float>();
        LocalTensor<float> sign = h, c = h[hs], sn = h[2 * hs];
        Duplicate(cs[rd], 1.0f, 8);
        Duplicate(cs[rd + 8], 0.0f, 8);
        Gather(c, cs, off[hs], 0u, hs);
        Gather(sn, cs, off[2 * hs], 0u, hs);
        Mul(sn, sn, sign, static_cast<int32_t>(hs));
    }

    // GPT-J: x = x * C + swap(x) * S, a head at a time.
    __aicore__ inline void RotatePairs(const LocalTensor<float>& xf, uint32_t heads) {
        const uint32_t hs = t_.head_size;
        LocalTensor<uint32_t> swap = offsets_.Get<uint32_t>();
        LocalTensor<float> h = heads_.Get<float>(), xs = xs_.Get<float>(), t1 = t1_.Get<float>();
        LocalTensor<float> c = h[hs], sn = h[2 * hs];
        for (uint32_t k = 0; k < heads; k++) {
            LocalTensor<float> x = xf[k * hs], sw = xs[k * hs];
            Gather(sw, x, swap, 0u, hs);
            Mul(t1, x, c, static_cast<int32_t>(hs));
            Mul(sw, sw, sn, static_cast<int32_t>(hs));
            Add(x, t1, sw, static_cast<int32_t>(hs));
        }
    }

    // NeoX: the rotating halves, up to ROPE_HEADS_PER_PASS heads per instruction.
    __aicore__ inline void RotateHalves(const LocalTensor<float>& xf, uint32_t heads, const LocalTensor<float>& cs) {
        LocalTensor<float> t1 = t1_.Get<float>(), t2 = t2_.Get<float>(), t3 = t3_.Get<float>();
        const uint8_t rowBlocks = static_cast<uint8_t>(t_.head_size / 8);  // a head, in 32-byte blocks
        for (uint32_t first = 0; first < heads; first += ROPE_HEADS_PER_PASS) {
            const uint8_t rep = static_cast<uint8_t>(heads - first < ROPE_HEADS_PER_PASS ? heads - first : ROPE_HEADS_PER_PASS);
            for (uint32_t c = 0; c < half_; c += 64) {
                const uint64_t mask = half_ - c < 64 ? half_ - c : 64;
                LocalTensor<float> x1 = xf[first * t_.head_size + c], x2 = xf[first * t_.head_size + half_ + c];
                LocalTensor<float> cosv = cs[c], sinv = cs[half_ + c];
                const BinaryRepeatParams fromRows(1, 1, 1, 8, rowBlocks, 0);  // temps <- heads x cos/sin
                const BinaryRepeatParams toRows(1, 1, 1, rowBlocks, 8, 8);    // heads <- temps
                Mul(t1, x1, cosv, mask, rep, fromRows);  // x1 c
                Mul(t2, x2, sinv, mask, rep, fromRows);  // x2 s
                Mul(t3, x1, sinv, mask, rep, fromRows);  // x1 s
                Sub(x1, t1, t2, mask, rep, toRows);      // x1 = x1 c - x2 s
                Mul(t1, x2, cosv, mask, rep, fromRows);  // x2 c
                Add(x2, t1, t3, mask, rep, toRows);      // x2 = x2 c + x1 s
            }
        }
    }

    ArkRopeTiling t_;
    uint32_t half_ = 0;
    TPipe pipe_;
    TQue<TPosition::VECIN, 1> csQueue_, inQueue_;
    TQue<TPosition::VECOUT, 1> outQueue_;
    TBuf<TPosition::VECCALC> xf_, t1_, t2_, t3_;
    TBuf<TPosition::VECCALC> offsets_, heads_, xs_;  // GPT-J only
    GlobalTensor<int64_t> posGm_;
    GlobalTensor<T> qGm_, kGm_;
    GlobalTensor<float> csGm_;
    StatusWord status_;
};

#define ROTARY_EMBEDDING(NAME, T)                                                                  \
    extern "C" __global__ __aicore__ void NAME(GM_ADDR positions, GM_ADDR query, GM_ADDR key,      \
                                               GM_ADDR cos_sin_cache, GM_ADDR status,              \
                                               ArkRopeTiling tiling) {                             \
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                            \
        KernelRotaryEmbedding<T> op;                                                               \
        op.Init(positions, query, key, cos_sin_cache, status, tiling);                             \
        op.Process();                                                                              \
    }
ROTARY_EMBEDDING(rotary_embedding_half, half)
ROTARY_EMBEDDING(rotary_embedding_float, float)
