// Helpers shared by the kernels: moving between the storage type T (half or float) and float.
#pragma once
#include "kernel_operator.h"

using namespace AscendC;

// The lowest finite float: the start of a running maximum. The device build has no <cmath>
// (INFINITY, HUGE_VALF), and exp(lowest - m) is 0 for every score m a kernel meets, which is
// what exp(-inf - m) would give.
constexpr float kFloatLowest = -3.40282347e+38f;

// Converts `n` elements to float (a Cast for half; a UB copy for float).
__aicore__ inline void ToFloat(const LocalTensor<float>& dst, const LocalTensor<half>& src, uint32_t n) {
    Cast(dst, src, RoundMode::CAST_NONE, n);
}
__aicore__ inline void ToFloat(const LocalTensor<float>& dst, const LocalTensor<float>& src, uint32_t n) {
    Muls(dst, src, 1.0f, static_cast<int32_t>(n));
}
__aicore__ inline void FromFloat(const LocalTensor<half>& dst, const LocalTensor<float>& src, uint32_t n) {
    Cast(dst, src, RoundMode::CAST_RINT, n);
}
__aicore__ inline void FromFloat(const LocalTensor<float>& dst, const LocalTensor<float>& src, uint32_t n) {
    Muls(dst, src, 1.0f, static_cast<int32_t>(n));
}

// The scalar unit reads a Unified Buffer value a vector instruction wrote only after the vector
// pipe has finished it: vector instructions are queued, GetValue is not (the V_S handshake of
// the Ascend C samples).
__aicore__ inline void VectorToScalar() {
    event_t id = static_cast<event_t>(GetTPipePtr()->FetchEventID(HardEvent::V_S));
    SetFlag<HardEvent::V_S>(id);
    WaitFlag<HardEvent::V_S>(id);
}

// And the other way: vector instructions read what SetValue wrote only after the scalar store.
__aicore__ inline void ScalarToVector() {
    event_t id = static_cast<event_t>(GetTPipePtr()->FetchEventID(HardEvent::S_V));
    SetFlag<HardEvent::S_V>(id);
    WaitFlag<HardEvent::S_V>(id);
}

// And: the scalar unit reads what an MTE2 copy brought into the UB only after the copy is done.
__aicore__ inline void Mte2ToScalar() {
    event_t id = static_cast<event_t>(GetTPipePtr()->FetchEventID(HardEvent::MTE2_S));
    SetFlag<HardEvent::MTE2_S>(id);
    WaitFlag<HardEvent::MTE2_S>(id);
}

// Work-tensor elements the count forms of ReduceSum / ReduceMax document for `count` floats
// (asc-devkit docs/api/context/ReduceSum.md, ReduceMax.md). On A2 the count form of ReduceSum
// does not touch its work tensor, but the documented size keeps the kernels portable; ReduceMax
// uses it (a value and an index per repeat).
__aicore__ inline uint32_t ReduceSumWorkFloats(uint32_t count) {
    const uint32_t first = count / 64 > 1 ? count / 64 : 1;
    return (first + 7) / 8 * 8;
}
__aicore__ inline uint32_t ReduceMaxWorkFloats(uint32_t count) {
    const uint32_t first = count / 64 > 1 ? count / 64 : 1;
    return (2 * first + 7) / 8 * 8;
}

// Where a kernel reports the device-side indices it refused (a slot, block id, length or
// position outside its tiling): each core writes its count into its own 32-byte slot of
// `status` (int32, 8 per core, so the cores never share a block); the host sums the slots once
// the kernel is done and turns a non-zero total into an error.
class StatusWord {
public:
    __aicore__ inline void Init(TPipe& pipe, GM_ADDR status) {
        gm_.SetGlobalBuffer((__gm__ int32_t*)status + GetBlockIdx() * 8, 8);
        pipe.InitBuffer(queue_, 1, 32);
    }
    __aicore__ inline void Refused() { refused_++; }
    // Writes this core's count (always, so the host need not clear the buffer first).
    __aicore__ inline void Write() {
        LocalTensor<int32_t> t = queue_.template AllocTensor<int32_t>();
        Duplicate(t, refused_, 8);
        queue_.EnQue(t);
        t = queue_.template DeQue<int32_t>();
        DataCopy(gm_, t, 8);
        queue_.FreeTensor(t);
    }

private:
    TQue<TPosition::VECOUT, 1> queue_;
    GlobalTensor<int32_t> gm_;
    int32_t refused_ = 0;
};
