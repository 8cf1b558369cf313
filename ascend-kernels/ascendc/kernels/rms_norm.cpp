// rms_norm and fused residual-add + rms_norm, one row per core at a time (rows spread over the
// cores):
//   out = x / sqrt(mean(x^2) + eps) * weight
//   fused: residual = x + residual (written back, rounded to T); x = rms_norm(residual) * weight
// Rows come in through double-buffered queues, are computed in float in the UB, and leave through
// a queue. UB: 3 queues x `buffers` of hidden * sizeof(T), plus 3 float rows (x, weight,
// scratch), one 32-byte reduction block and the reduction's work area. The tiling double-buffers
// when that fits and falls back to single buffers for wide rows (f16 hidden 8192), and refuses
// rows that fit neither way.
#include "common.h"
#include "tiling.h"

template <typename T>
class KernelRmsNorm {
public:
    __aicore__ inline void Init(GM_ADDR x, GM_ADDR residual, GM_ADDR weight, GM_ADDR out,
                                const ArkRmsNormTiling& t) {
        t_ = t;
        const uint64_t n = static_cast<uint64_t>(t.num_tokens) * t.hidden;
        xGm_.SetGlobalBuffer((__gm__ T*)x, n);
        if (t.fused) residualGm_.SetGlobalBuffer((__gm__ T*)residual, n);
        weightGm_.SetGlobalBuffer((__gm__ T*)weight, t.hidden);
        outGm_.SetGlobalBuffer((__gm__ T*)out, n);
        const uint32_t row = t.hidden * sizeof(T);
        const uint8_t buffers = static_cast<uint8_t>(t.buffers);
        pipe_.InitBuffer(inQueue_, buffers, row);
        pipe_.InitBuffer(resQueue_, buffers, row);
        pipe_.InitBuffer(outQueue_, buffers, row);
        pipe_.InitBuffer(xf_, t.hidden * sizeof(float));
        pipe_.InitBuffer(wf_, t.hidden * sizeof(float));
        pipe_.InitBuffer(sq_, t.hidden * sizeof(float));
        pipe_.InitBuffer(red_, 32);
        pipe_.InitBuffer(work_, ReduceSumWorkFloats(t.hidden) * sizeof(float));
        // The weight, once per core.
        LocalTensor<T> w = inQueue_.template AllocTensor<T>();
        DataCopy(w, weightGm_, t.hidden);
        inQueue_.EnQue(w);
        w = inQueue_.template DeQue<T>();
        ToFloat(wf_.Get<float>(), w, t.hidden);
        inQueue_.FreeTensor(w);
    }

    __aicore__ inline void Process() {
        for (int64_t r = GetBlockIdx(); r < t_.num_tokens; r += GetBlockNum()) Row(static_cast<uint64_t>(r) * t_.hidden);
    }

private:
    __aicore__ inline void Row(uint64_t at) {
        const uint32_t h = t_.hidden;
        LocalTensor<float> xf = xf_.Get<float>();
        LocalTensor<T> x = inQueue_.template AllocTensor<T>();
        DataCopy(x, xGm_[at], h);
        inQueue_.EnQue(x);
        x = inQueue_.template DeQue<T>();
        ToFloat(xf, x, h);
        inQueue_.FreeTensor(x);
        if (t_.fused) {
            LocalTensor<float> rf = sq_.Get<float>();  // scratch until the squares
            LocalTensor<T> r = resQueue_.template AllocTensor<T>();
            DataCopy(r, residualGm_[at], h);
            resQueue_.EnQue(r);
            r = resQueue_.template DeQue<T>();
            ToFloat(rf, r, h);
            resQueue_.FreeTensor(r);
            Add(xf, xf, rf, h);
            // The new residual, rounded to T as it is stored, is what gets normalised. It leaves
            // through the output queue (V -> MTE3), which is free again before the row's output.
            LocalTensor<T> nr = outQueue_.template AllocTensor<T>();
            FromFloat(nr, xf, h);
            ToFloat(xf, nr, h);
            outQueue_.EnQue(nr);
            nr = outQueue_.template DeQue<T>();
            GlobalTensor<T> res = residualGm_[at];
            DataCopy(res, nr, h);
            outQueue_.FreeTensor(nr);
        }
        LocalTensor<float> sq = sq_.Get<float>();
        LocalTensor<float> red = red_.Get<float>();
        Mul(sq, xf, xf, h);
        ReduceSum(red, sq, work_.Get<float>(), h);
        // sqrt(mean + eps) on the vector unit (the scalar unit has no sqrt).
        Muls(red, red, 1.0f / static_cast<float>(h), 1);
        Adds(red, red, t_.eps, 1);
        Sqrt(red, red, 1);
        VectorToScalar();
        const float rstd = 1.0f / red.GetValue(0);
        Muls(xf, xf, rstd, h);
        Mul(xf, xf, wf_.Get<float>(), h);
        LocalTensor<T> y = outQueue_.template AllocTensor<T>();
        FromFloat(y, xf, h);
        outQueue_.EnQue(y);
        y = outQueue_.template DeQue<T>();
        GlobalTensor<T> out = outGm_[at];
        DataCopy(out, y, h);
        outQueue_.FreeTensor(y);
    }

    ArkRmsNormTiling t_;
    TPipe pipe_;
    TQue<TPosition::VECIN, 1> inQueue_;
    TQue<TPosition::VECIN, 1> resQueue_;
    TQue<TPosition::VECOUT, 1> outQueue_;
    TBuf<TPosition::VECCALC> xf_, wf_, sq_, red_, work_;
    GlobalTensor<T> xGm_, residualGm_, weightGm_, outGm_;
};

#define RMS_NORM(NAME, T)                                                                          \
    extern "C" __global__ __aicore__ void NAME(GM_ADDR x, GM_ADDR residual, GM_ADDR weight,        \
                                               GM_ADDR out, ArkRmsNormTiling tiling) {                \
        KERNEL_TASK_TYPE_DEFAULT(KERNEL_TYPE_AIV_ONLY);                                            \
        KernelRmsNorm<T> op;                                                                       \
        op.Init(x, residual, weight, out, tiling);                                                 \
        op.Process();                                                                              \
    }
RMS_NORM(rms_norm_half, half)
RMS_NORM(rms_norm_float, float)
