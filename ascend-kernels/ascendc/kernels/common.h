// Helpers shared by the kernels: moving between the storage type T (half or float) and float.
#pragma once
#include "kernel_operator.h"

using namespace AscendC;

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
