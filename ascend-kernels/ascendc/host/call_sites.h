// Host build only: makes each Ascend C API call in the kernel sources record its file and line
// first, so a fault names the kernel source line (AscendC::at_line). Included by launch.cpp
// after kernel_operator.h and before the kernels; the NPU build and the CANN header check never
// see it. Only free functions called by plain name are wrapped (member functions and calls with
// explicit template arguments keep the line of the last wrapped call).
#pragma once

#define ARK_AT(F, ...) (::AscendC::at_line(__FILE__, __LINE__), ::AscendC::F(__VA_ARGS__))
#define DataCopy(...) ARK_AT(DataCopy, __VA_ARGS__)
#define Add(...) ARK_AT(Add, __VA_ARGS__)
#define Sub(...) ARK_AT(Sub, __VA_ARGS__)
#define Mul(...) ARK_AT(Mul, __VA_ARGS__)
#define Div(...) ARK_AT(Div, __VA_ARGS__)
#define Max(...) ARK_AT(Max, __VA_ARGS__)
#define Adds(...) ARK_AT(Adds, __VA_ARGS__)
#define Muls(...) ARK_AT(Muls, __VA_ARGS__)
#define Exp(...) ARK_AT(Exp, __VA_ARGS__)
#define Sqrt(...) ARK_AT(Sqrt, __VA_ARGS__)
#define Abs(...) ARK_AT(Abs, __VA_ARGS__)
#define Duplicate(...) ARK_AT(Duplicate, __VA_ARGS__)
#define Cast(...) ARK_AT(Cast, __VA_ARGS__)
#define ReduceSum(...) ARK_AT(ReduceSum, __VA_ARGS__)
#define ReduceMax(...) ARK_AT(ReduceMax, __VA_ARGS__)
#define WholeReduceSum(...) ARK_AT(WholeReduceSum, __VA_ARGS__)
#define Brcb(...) ARK_AT(Brcb, __VA_ARGS__)
#define MulAddDst(...) ARK_AT(MulAddDst, __VA_ARGS__)
#define WholeReduceMax(...) ARK_AT(WholeReduceMax, __VA_ARGS__)
