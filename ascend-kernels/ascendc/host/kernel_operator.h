// A host implementation of the Ascend C API subset our vector kernels use, so that the same
// kernel sources compile with the system C++ compiler and run on the host, one simulated AI
// vector core after another. It enforces the 910B (dav-c220-vec) rules that make kernels fail on
// the device, so that they fail here first:
//   - the Unified Buffer: TPipe allocations are rounded up to 32 bytes and may not exceed the
//     184 KiB a vector core leaves to kernels (192 KiB minus the 8 KiB the framework reserves);
//     at most 64 buffers per pipe, at most 8 queue buffers per TPosition;
//   - DataCopy: UB operands start on 32-byte boundaries, and count * sizeof(T) is a multiple of
//     32 bytes (the device silently truncates otherwise); burst parameters in range;
//   - vector operands start on 32-byte boundaries and stay inside their tensors; half and float
//     only (no bf16 arithmetic on A2); Cast round modes as the A2 table allows;
//   - queues: AllocTensor beyond the buffers, EnQue beyond the depth, DeQue of an empty queue,
//     and any use of a LocalTensor after FreeTensor are errors;
//   - SetFlag/WaitFlag pairs balance by the end of each core's run; SyncAll is refused (the cores
//     run one after another, so they cannot wait for each other).
//   - the pipes: every UB access belongs to MTE2, V, MTE3 or S, and one pipe may not read what
//     another wrote (or overwrite what another reads) without a queue hand-off, a flag or a
//     barrier between them (PipeModel below);
//   - the reductions and level-0 (mask + repeat) forms as CANN 8.1.RC1 implements and documents
//     them for dav-c220.
// It also counts what each core asks of each pipe, for the cost model (CoreCost).
// Every violation throws AscendC::KernelError, which the launch shim turns into an error code and
// message for the caller.
//
// Written from the CANN Ascend C documentation (asc-devkit) and the CANN 8.1.RC1 headers, whose
// declarations it mirrors (names, template parameters, arguments, defaults), so a kernel that
// compiles here compiles against CANN (scripts/check-ascendc-api.sh checks). Only the subset
// below is provided.

#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <iterator>
#include <map>
#include <stdexcept>
#include <type_traits>
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#define ASCENDC_HOST_SIM 1
#define ASCENDC_CPU_DEBUG 1
#define __NPU_ARCH__ 2201
#define __CCE_AICORE__ 220
#define __DAV_C220_VEC__ 1
#define __aicore__
#define __global__
#define __gm__
#define __ubuf__
#define GM_ADDR uint8_t*
#define KERNEL_TASK_TYPE_DEFAULT(x)

// ---------------------------------------------------------------------------------------------
// half: IEEE binary16 with round-to-nearest-even conversions.
struct half {
    uint16_t bits = 0;
    half() = default;
    half(float f) : bits(from_float(f)) {}
    operator float() const { return to_float(bits); }

    static uint16_t from_float(float f) {
        uint32_t x;
        std::memcpy(&x, &f, 4);
        uint32_t sign = (x >> 16) & 0x8000u;
        uint32_t mant = x & 0x7fffffu;
        int32_t exp = static_cast<int32_t>((x >> 23) & 0xffu);
        if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
        int32_t e = exp - 127 + 15;
        if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
        if (e <= 0) {
            if (e < -10) return static_cast<uint16_t>(sign);
            mant |= 0x800000u;
            uint32_t shift = static_cast<uint32_t>(14 - e);
            uint32_t half_mant = mant >> shift;
            uint32_t rem = mant & ((1u << shift) - 1u);
            uint32_t halfway = 1u << (shift - 1);
            if (rem > halfway || (rem == halfway && (half_mant & 1u))) half_mant++;
            return static_cast<uint16_t>(sign | half_mant);
        }
        uint32_t h = sign | (static_cast<uint32_t>(e) << 10) | (mant >> 13);
        uint32_t rem = mant & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
        return static_cast<uint16_t>(h);
    }

    static float to_float(uint16_t h) {
        uint32_t sign = (static_cast<uint32_t>(h) & 0x8000u) << 16;
        uint32_t exp = (h >> 10) & 0x1fu;
        uint32_t mant = h & 0x3ffu;
        uint32_t x;
        if (exp == 0) {
            if (mant == 0) {
                x = sign;
            } else {
                exp = 127 - 15 + 1;
                while (!(mant & 0x400u)) {
                    mant <<= 1;
                    exp--;
                }
                x = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
            }
        } else if (exp == 0x1f) {
            x = sign | 0x7f800000u | (mant << 13);
        } else {
            x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
        }
        float f;
        std::memcpy(&f, &x, 4);
        return f;
    }
};
static_assert(sizeof(half) == 2, "half is 2 bytes");

struct bfloat16_t {
    uint16_t bits = 0;
};

namespace AscendC {

struct KernelError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& what) { throw KernelError(what); }

constexpr uint32_t ONE_BLK_SIZE = 32;
constexpr uint32_t ONE_REPEAT_BYTE_SIZE = 256;
constexpr uint32_t TOTAL_UB_SIZE = 192 * 1024;
constexpr uint32_t TOTAL_VEC_LOCAL_SIZE = 184 * 1024;
constexpr uint32_t QBUF_MAX_LEN = 64;
constexpr uint32_t MAX_QUEUE_BUFFERS_PER_POSITION = 8;

enum class TPosition : uint8_t { GM, VECIN, VECOUT, VECCALC, MAX };
using QuePosition = TPosition;

enum class RoundMode { CAST_NONE = 0, CAST_RINT, CAST_FLOOR, CAST_CEIL, CAST_ROUND, CAST_TRUNC, CAST_ODD };
// As basic_api/impl/utils/kernel_utils_mode.h declares it.
enum class ReduceOrder : uint8_t { ORDER_VALUE_INDEX = 0, ORDER_INDEX_VALUE, ORDER_ONLY_VALUE, ORDER_ONLY_INDEX };

enum class HardEvent : uint8_t { MTE2_V, V_MTE2, MTE3_V, V_MTE3, MTE2_MTE3, MTE3_MTE2, S_V, V_S, S_MTE2, MTE2_S, S_MTE3, MTE3_S, MAX };
enum pipe_t { PIPE_S, PIPE_V, PIPE_MTE2, PIPE_MTE3, PIPE_ALL };
// As basic_api/impl/kernel_tensor_base.h and tikicpulib's stub_fun.h declare them.
using TEventID = int8_t;
typedef enum { EVENT_ID0 = 0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7 } event_t;

// ---------------------------------------------------------------------------------------------
// Per-core state.
struct Buffer {
    uint32_t offset = 0;   // bytes into the UB
    uint32_t len = 0;      // bytes
    uint64_t generation = 1;
    bool allocated = false;
    bool freed_once = false;  // FreeTensor has run, so freed_at is meaningful
    uint64_t freed_at = 0;    // the pipe model's sequence number at the last FreeTensor
};

// The kernel source line of the API call being run, when the kernel was compiled with
// call_sites.h (the host build's launch shims do that): each call sets it first.
struct CallSite {
    const char* file = nullptr;
    int line = 0;
};
inline CallSite& call_site() {
    static thread_local CallSite site;
    return site;
}
inline void at_line(const char* file, int line) {
    const char* base = file;
    for (const char* c = file; *c; c++)
        if (*c == '/') base = c + 1;
    call_site() = {base, line};
}
inline std::string describe(const CallSite& c) {
    return c.file ? std::string(c.file) + ":" + std::to_string(c.line) : std::string("an unknown line");
}

// The pipes of a vector core, and which of them an access belongs to: MTE2 loads GM -> UB,
// MTE3 stores UB -> GM, V runs vector instructions, S is the scalar unit (GetValue/SetValue).
enum PipeId : int { PIPE_ID_S = 0, PIPE_ID_V, PIPE_ID_MTE2, PIPE_ID_MTE3, PIPE_ID_COUNT };
inline const char* pipe_label(int p) {
    static const char* names[] = {"S", "V", "MTE2", "MTE3"};
    return names[p];
}

// The pipe model: every UB access is recorded with its pipe, kind (read or write) and a sequence
// number. An access by pipe Y conflicts with an earlier write (or, if it writes, an earlier read)
// of the same bytes by another pipe X unless something ordered X before Y since:
//   - WaitFlag<X_Y> on a flag set after the earlier access (all of X's accesses before the
//     SetFlag), or PipeBarrier<PIPE_ALL> (everything);
//   - for a queue buffer: DeQue after EnQue (producer -> consumer: VECIN is MTE2 -> V, VECOUT is
//     V -> MTE3, a VECIN -> VECOUT TQueBind is MTE2 -> MTE3), and AllocTensor after FreeTensor
//     (consumer -> producer, so the next fill does not overwrite data still being read);
//   - a library call's own handshake (ReduceSum/ReduceMax: V_S, scalar store, S_V, S_MTE3).
// Same-pipe order is program order, and a scalar load is complete before anything after it is
// issued. Nothing else is assumed: CANN's automatic synchronisation is
// not modelled, so a kernel must synchronise explicitly wherever a pipe reads what another wrote
// outside a queue.
class PipeModel {
public:
    enum Kind { READ = 0, WRITE = 1 };

    // Records an access, or fails naming both accesses if it conflicts.
    void access(int pipe, Kind kind, uint32_t lo, uint32_t hi, const char* op, const std::string& shown) {
        if (lo >= hi) return;
        for (int other = 0; other < PIPE_ID_COUNT; other++) {
            if (other == pipe) continue;
            for (const Entry& e : entries_[other]) {
                if (e.kind == READ && kind == READ) continue;
                if (e.lo >= hi || lo >= e.hi) continue;
                if (ordered(other, pipe, e)) continue;
                const uint32_t a = std::max(lo, e.lo), b = std::min(hi, e.hi);
                fail(shown + " (pipe " + pipe_label(pipe) + ") " + (kind == WRITE ? "writes" : "reads") + " UB bytes " +
                     std::to_string(a) + ".." + std::to_string(b) + " that " + e.op + " (pipe " + pipe_label(other) + ") " +
                     (e.kind == WRITE ? "wrote" : "read") + " with no " + event_label(other, pipe) +
                     " synchronisation between (a queue hand-off, SetFlag/WaitFlag<HardEvent::" + event_label(other, pipe) +
                     ">, or PipeBarrier<PIPE_ALL>)" +
                     (e.site.file ? "; the earlier access at " + describe(e.site) : std::string()));
            }
        }
        // A scalar load completes before the scalar unit issues anything after it, so it is
        // ordered before every later access (CANN's own ReduceTailCompute reads dst with
        // GetValue and then overwrites it with vector instructions, with no flag between).
        if (pipe == PIPE_ID_S && kind == READ) return;
        auto& list = entries_[pipe];
        // A newer access of the same kind covering an older one supersedes it: whatever orders
        // the newer one orders the older one too.
        list.erase(std::remove_if(list.begin(), list.end(),
                                  [&](const Entry& e) { return e.kind == kind && e.lo >= lo && e.hi <= hi; }),
                   list.end());
        list.push_back({lo, hi, kind, ++seq_, op, call_site()});
    }

    uint64_t now() const { return seq_; }
    // Everything `from` did up to `upto` is ordered before what `to` does from now on.
    void order(int from, int to, uint64_t upto) {
        fence_[from][to] = std::max(fence_[from][to], upto + 1);
        prune(from);
    }
    // The same for the bytes of one buffer only (a queue's per-buffer event).
    void order_buffer(int from, int to, uint32_t lo, uint32_t hi, uint64_t upto) {
        auto& list = buffer_fences_[from][to];
        for (auto& f : list)
            if (f.lo == lo && f.hi == hi) {
                f.seq = std::max(f.seq, upto + 1);
                return;
            }
        list.push_back({lo, hi, upto + 1});
    }
    void order_all() {
        for (int a = 0; a < PIPE_ID_COUNT; a++)
            for (int b = 0; b < PIPE_ID_COUNT; b++) fence_[a][b] = seq_ + 1;
        for (auto& list : entries_) list.clear();
        for (auto& row : buffer_fences_)
            for (auto& list : row) list.clear();
    }
    void reset() {
        *this = PipeModel();
    }

private:
    struct Entry {
        uint32_t lo, hi;
        Kind kind;
        uint64_t seq;
        const char* op;
        CallSite site;
    };
    struct BufferFence {
        uint32_t lo, hi;
        uint64_t seq;
    };

    bool ordered(int from, int to, const Entry& e) const {
        if (e.seq < fence_[from][to]) return true;
        for (const auto& f : buffer_fences_[from][to])
            if (e.seq < f.seq && e.lo >= f.lo && e.hi <= f.hi) return true;
        return false;
    }
    // Drops the accesses of `pipe` every other pipe is ordered after.
    void prune(int pipe) {
        uint64_t all = UINT64_MAX;
        for (int to = 0; to < PIPE_ID_COUNT; to++)
            if (to != pipe) all = std::min(all, fence_[pipe][to]);
        auto& list = entries_[pipe];
        list.erase(std::remove_if(list.begin(), list.end(), [&](const Entry& e) { return e.seq < all; }), list.end());
    }
    static std::string event_label(int from, int to) { return std::string(pipe_label(from)) + "_" + pipe_label(to); }

    uint64_t seq_ = 0;
    std::vector<Entry> entries_[PIPE_ID_COUNT];
    uint64_t fence_[PIPE_ID_COUNT][PIPE_ID_COUNT] = {};
    std::vector<BufferFence> buffer_fences_[PIPE_ID_COUNT][PIPE_ID_COUNT];
};

// What one core's run asked of each pipe, for the cost model (ascend_kernels::ascendc::cost).
// Mirrored by a #[repr(C)] struct on the Rust side.
struct CoreCost {
    uint64_t mte2_bytes;    // GM -> UB
    uint64_t mte2_copies;   // DataCopy GM -> UB instructions
    uint64_t mte2_bursts;   // contiguous runs within them
    uint64_t mte3_bytes;    // UB -> GM
    uint64_t mte3_copies;
    uint64_t mte3_bursts;
    uint64_t vec_instrs;    // vector instructions
    uint64_t vec_repeats;   // their 256-byte repeats
    uint64_t scalar_ub;     // GetValue / SetValue on the UB
    uint64_t scalar_gm;     // GetValue / SetValue on global memory
    uint64_t flag_waits;    // WaitFlag (explicit, or inside library calls)
    uint64_t queue_ops;     // EnQue / DeQue
};

// One event of a core's instruction stream, in the order the scalar unit issues it, for the
// cost model's timeline (ascend_kernels::ascendc::cost::simulate). Mirrored in Rust.
//   - an op on a pipe: MTE2/MTE3 (a = bytes, b = contiguous GM runs), V (a = 256-byte repeats,
//     b = instructions), S (a = UB accesses, b = GM accesses);
//   - a flag set by pipe `pipe` for pipe `other` (SetFlag, EnQue / FreeTensor hand-offs, a
//     library call's own handshake), and the matching wait, which holds pipe `pipe` until the
//     set has happened (for S: the scalar unit stops issuing);
//   - PipeBarrier<PIPE_ALL>: every pipe drains.
struct TraceEvent {
    uint8_t kind;   // TRACE_OP, TRACE_SET, TRACE_WAIT, TRACE_BARRIER
    uint8_t pipe;   // op: its pipe; set: the setting pipe; wait: the waiting pipe
    uint8_t other;  // set: the pipe it signals; wait: the pipe it waits for
    uint8_t pad;
    uint32_t id;    // set/wait: which flag (sets and waits of one (pipe, other, id) pair in order)
    uint64_t a;
    uint64_t b;
};
enum : uint8_t { TRACE_OP = 0, TRACE_SET = 1, TRACE_WAIT = 2, TRACE_BARRIER = 3 };
// The most events kept per core; a longer run is costed by its totals alone.
constexpr size_t TRACE_CAP = size_t(1) << 22;
// Flag ids the library's own handshakes use (ReduceSum / ReduceMax): apart from kernel ids.
constexpr uint32_t TRACE_LIBRARY_ID = 0xFFFF0000u;

struct CoreState {
    int64_t block_idx = 0;
    int64_t block_num = 1;
    std::vector<uint8_t> ub = std::vector<uint8_t>(TOTAL_UB_SIZE);
    uint32_t ub_used = 0;
    uint32_t buffers = 0;
    uint32_t queue_buffers[static_cast<int>(TPosition::MAX)] = {};
    std::map<std::pair<int, int>, int> flags;
    void* pipe = nullptr;
    PipeModel pipes;
    // Set at SetFlag, consumed at WaitFlag: the pipe model's sequence number at each SetFlag.
    std::map<std::pair<int, int>, std::deque<uint64_t>> flag_marks;
    CoreCost cost{};
    std::vector<TraceEvent> trace;
    bool trace_truncated = false;
};


inline CoreState& core() {
    static thread_local CoreState state;
    return state;
}

// The per-core costs and traces of the last launch on this thread.
inline std::vector<CoreCost>& last_costs() {
    static thread_local std::vector<CoreCost> costs;
    return costs;
}
inline std::vector<std::vector<TraceEvent>>& last_traces() {
    static thread_local std::vector<std::vector<TraceEvent>> traces;
    return traces;
}
inline std::vector<uint8_t>& last_truncated() {
    static thread_local std::vector<uint8_t> truncated;
    return truncated;
}

inline void trace_push(const TraceEvent& e) {
    CoreState& c = core();
    if (c.trace.size() >= TRACE_CAP) {
        c.trace_truncated = true;
        return;
    }
    c.trace.push_back(e);
}
inline void trace_op(int pipe, uint64_t a, uint64_t b) {
    CoreState& c = core();
    // Scalar accesses in a row are one op (they are issued back to back anyway).
    if (pipe == PIPE_ID_S && !c.trace.empty() && c.trace.back().kind == TRACE_OP && c.trace.back().pipe == PIPE_ID_S) {
        c.trace.back().a += a;
        c.trace.back().b += b;
        return;
    }
    trace_push({TRACE_OP, static_cast<uint8_t>(pipe), 0, 0, 0, a, b});
}
inline void trace_set(int from, int to, uint32_t id) {
    trace_push({TRACE_SET, static_cast<uint8_t>(from), static_cast<uint8_t>(to), 0, id, 0, 0});
}
inline void trace_wait(int from, int to, uint32_t id) {
    trace_push({TRACE_WAIT, static_cast<uint8_t>(to), static_cast<uint8_t>(from), 0, id, 0, 0});
}
// A handshake pipe `from` -> pipe `to` as one pair (what a library call does internally).
inline void trace_handshake(int from, int to, uint32_t id) {
    trace_set(from, to, id);
    trace_wait(from, to, id);
}

// One DataCopy on MTE2 or MTE3: its bytes, and its contiguous GM runs (abutting bursts are one).
inline void count_copy(int pipe, uint64_t bytes, uint64_t bursts) {
    CoreCost& c = core().cost;
    (pipe == PIPE_ID_MTE2 ? c.mte2_bytes : c.mte3_bytes) += bytes;
    (pipe == PIPE_ID_MTE2 ? c.mte2_copies : c.mte3_copies) += 1;
    (pipe == PIPE_ID_MTE2 ? c.mte2_bursts : c.mte3_bursts) += bursts;
    trace_op(pipe, bytes, bursts);
}

// Vector instructions of `repeats` 256-byte repeats in all.
inline void count_vector_repeats(uint64_t repeats, uint64_t instrs = 1) {
    core().cost.vec_instrs += instrs;
    core().cost.vec_repeats += repeats;
    trace_op(PIPE_ID_V, repeats, instrs);
}

// One vector instruction over `bytes` (count form: ceil(bytes / 256) repeats, at least one).
inline void count_vector(uint64_t bytes, uint64_t instrs = 1) {
    count_vector_repeats(std::max<uint64_t>(1, (bytes + ONE_REPEAT_BYTE_SIZE - 1) / ONE_REPEAT_BYTE_SIZE), instrs);
}

// Scalar accesses to the UB and to global memory.
inline void count_scalar(uint64_t ub, uint64_t gm) {
    core().cost.scalar_ub += ub;
    core().cost.scalar_gm += gm;
    trace_op(PIPE_ID_S, ub, gm);
}

inline int64_t GetBlockIdx() { return core().block_idx; }
inline int64_t GetBlockNum() { return core().block_num; }

template <typename T>
inline const char* type_name();
template <> inline const char* type_name<half>() { return "half"; }
template <> inline const char* type_name<float>() { return "float"; }
template <> inline const char* type_name<int32_t>() { return "int32"; }
template <> inline const char* type_name<int64_t>() { return "int64"; }
template <> inline const char* type_name<uint8_t>() { return "uint8"; }
template <> inline const char* type_name<bfloat16_t>() { return "bfloat16"; }

// ---------------------------------------------------------------------------------------------
// Tensors.
template <typename T>
class LocalTensor {
public:
    LocalTensor() = default;
    LocalTensor(Buffer* buf, uint32_t offset_bytes, uint32_t size_elems)
        : buf_(buf), gen_(buf ? buf->generation : 0), offset_(offset_bytes), size_(size_elems) {}

    uint32_t GetSize() const { return size_; }
    uint32_t GetLength() const { return size_ * sizeof(T); }
    void SetSize(uint32_t n) {
        check("SetSize");
        if (n * sizeof(T) > buf_->len - (offset_ - buf_->offset)) fail("SetSize beyond the buffer");
        size_ = n;
    }
    uint32_t offset_bytes() const { return offset_; }

    LocalTensor operator[](uint32_t elems) const {
        check("operator[]");
        if (elems > size_) fail("LocalTensor offset " + std::to_string(elems) + " past its " + std::to_string(size_) + " elements");
        return LocalTensor(buf_, gen_, offset_ + elems * sizeof(T), size_ - elems);
    }

    template <typename U>
    LocalTensor<U> ReinterpretCast() const {
        check("ReinterpretCast");
        return LocalTensor<U>(buf_, gen_, offset_, static_cast<uint32_t>(size_ * sizeof(T) / sizeof(U)));
    }

    T GetValue(uint32_t i) const {
        if (i >= size_) fail("GetValue(" + std::to_string(i) + ") past " + std::to_string(size_) + " elements");
        scalar_access(PipeModel::READ, "GetValue", i);
        count_scalar(1, 0);
        T v;
        std::memcpy(&v, ptr() + i, sizeof(T));
        return v;
    }
    template <typename S>
    void SetValue(uint32_t i, S v) const {
        if (i >= size_) fail("SetValue(" + std::to_string(i) + ") past " + std::to_string(size_) + " elements");
        scalar_access(PipeModel::WRITE, "SetValue", i);
        count_scalar(1, 0);
        T t = static_cast<T>(v);
        std::memcpy(ptr() + i, &t, sizeof(T));
    }

    // An access of `count` elements from the start of this tensor by `pipe`, for the pipe model.
    void pipe_access(int pipe, PipeModel::Kind kind, const char* op, uint32_t count) const {
        core().pipes.access(pipe, kind, offset_, offset_ + count * sizeof(T), op, op);
    }
    void vector_reads(const char* op, uint32_t count) const { pipe_access(PIPE_ID_V, PipeModel::READ, op, count); }
    // Records the destination of one vector instruction (and counts the instruction).
    void vector_writes(const char* op, uint32_t count) const {
        pipe_access(PIPE_ID_V, PipeModel::WRITE, op, count);
        count_vector(static_cast<uint64_t>(count) * sizeof(T));
    }

    // Raw access for the API implementation: checks liveness and the range.
    T* ptr(const char* op = "access") const {
        check(op);
        return reinterpret_cast<T*>(core().ub.data() + offset_);
    }
    void operand(const char* op, uint32_t count) const {
        check(op);
        if (offset_ % ONE_BLK_SIZE != 0)
            fail(std::string(op) + ": UB operand at byte " + std::to_string(offset_) + " is not 32-byte aligned");
        if (count > size_)
            fail(std::string(op) + ": " + std::to_string(count) + " elements but the tensor holds " + std::to_string(size_));
    }
    void check(const char* op) const {
        if (!buf_) fail(std::string(op) + ": LocalTensor has no buffer");
        if (!buf_->allocated || buf_->generation != gen_)
            fail(std::string(op) + ": LocalTensor used after FreeTensor (its buffer was freed or reused)");
    }
    Buffer* buffer() const { return buf_; }

private:
    void scalar_access(PipeModel::Kind kind, const char* what, uint32_t i) const {
        const uint32_t at = offset_ + i * sizeof(T);
        core().pipes.access(PIPE_ID_S, kind, at, at + sizeof(T), what, std::string(what) + "(" + std::to_string(i) + ")");
    }

public:

    LocalTensor(Buffer* buf, uint64_t gen, uint32_t offset_bytes, uint32_t size_elems)
        : buf_(buf), gen_(gen), offset_(offset_bytes), size_(size_elems) {}

private:
    template <typename U> friend class LocalTensor;
    Buffer* buf_ = nullptr;
    uint64_t gen_ = 0;
    uint32_t offset_ = 0;
    uint32_t size_ = 0;
};

// The device memory a launch's arguments lie in, when the launch runs over a device runtime's
// memory (the ACL fake): a global buffer must fit inside one of these ranges, as on the NPU an
// access past the memory an argument lies in is a memory fault. Empty (no check) for launches
// over plain host buffers.
struct DeviceExtent {
    const uint8_t* begin;
    const uint8_t* end;
};
inline std::vector<DeviceExtent>& device_extents() {
    static thread_local std::vector<DeviceExtent> extents;
    return extents;
}
inline void check_device_extent(const void* buf, uint64_t bytes) {
    const auto& extents = device_extents();
    if (extents.empty() || bytes == 0) return;
    const uint8_t* p = static_cast<const uint8_t*>(buf);
    for (const auto& e : extents)
        if (p >= e.begin && p <= e.end && bytes <= static_cast<uint64_t>(e.end - p)) return;
    fail("SetGlobalBuffer: a " + std::to_string(bytes) +
         "-byte global buffer does not fit in the device memory of any kernel argument (the NPU "
         "would raise a memory access fault)");
}

template <typename T>
class GlobalTensor {
public:
    void SetGlobalBuffer(__gm__ T* buf, uint64_t size) {
        check_device_extent(buf, size * sizeof(T));
        ptr_ = buf;
        size_ = size;
    }
    void SetGlobalBuffer(__gm__ T* buf) {
        ptr_ = buf;
        size_ = 0;
    }
    uint64_t GetSize() const { return size_; }
    T GetValue(uint64_t i) const {
        in_range("GetValue", i, 1);
        count_scalar(0, 1);
        return ptr_[i];
    }
    void SetValue(uint64_t i, T v) {
        in_range("SetValue", i, 1);
        count_scalar(0, 1);
        ptr_[i] = v;
    }
    GlobalTensor operator[](uint64_t off) const {
        in_range("operator[]", off, 0);
        GlobalTensor g;
        g.ptr_ = ptr_ + off;
        g.size_ = size_ - off;
        return g;
    }
    T* data() const { return ptr_; }
    void in_range(const char* op, uint64_t off, uint64_t n) const {
        if (!ptr_) fail(std::string(op) + ": GlobalTensor without a buffer");
        if (off + n > size_)
            fail(std::string(op) + ": GM range " + std::to_string(off) + ".." + std::to_string(off + n) +
                 " outside the " + std::to_string(size_) + "-element global buffer");
    }

private:
    T* ptr_ = nullptr;
    uint64_t size_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Pipes, queues, buffers.
class TPipe;

// The mask (CANN: ND/NZ format conversion bits on the cube paths) changes nothing for vector
// kernels; it is accepted so that declarations read as they do against CANN.
template <TPosition src, TPosition dst, int32_t depth, auto mask = 0>
class TQueBind {
    // The pipes the queue hands data between: VECIN is filled by MTE2, VECOUT drained by MTE3,
    // and the vector unit is on the other side of each.
    static constexpr int kProducer = src == TPosition::VECIN ? PIPE_ID_MTE2 : PIPE_ID_V;
    static constexpr int kConsumer = dst == TPosition::VECOUT ? PIPE_ID_MTE3 : PIPE_ID_V;

public:
    static constexpr TPosition kSrcPosition = src;
    template <typename T>
    LocalTensor<T> AllocTensor() {
        for (auto& b : bufs_) {
            if (!b.allocated) {
                b.allocated = true;
                b.generation++;
                // The buffer's previous consumer is done with it before the producer refills it.
                if (b.freed_once) {
                    core().pipes.order_buffer(kConsumer, kProducer, b.offset, b.offset + b.len, b.freed_at);
                    trace_wait(kConsumer, kProducer, b.offset);
                }
                return LocalTensor<T>(&b, b.generation, b.offset, static_cast<uint32_t>(b.len / sizeof(T)));
            }
        }
        fail("AllocTensor: all " + std::to_string(bufs_.size()) + " buffers of the queue are in use (FreeTensor missing?)");
    }
    template <typename T>
    void FreeTensor(LocalTensor<T>& t) {
        t.check("FreeTensor");
        Buffer* b = t.buffer();
        b->allocated = false;
        b->generation++;
        b->freed_once = true;
        b->freed_at = core().pipes.now();
        trace_set(kConsumer, kProducer, b->offset);
    }
    template <typename T>
    bool EnQue(const LocalTensor<T>& t) {
        t.check("EnQue");
        if (depth > 0 && static_cast<int32_t>(fifo_.size()) >= depth)
            fail("EnQue: the queue already holds " + std::to_string(fifo_.size()) + " tensors, its depth is " + std::to_string(depth));
        fifo_.push_back({t.buffer(), t.offset_bytes(), t.GetLength(), core().pipes.now()});
        core().cost.queue_ops++;
        trace_set(kProducer, kConsumer, t.buffer()->offset);
        return true;
    }
    template <typename T>
    LocalTensor<T> DeQue() {
        if (fifo_.empty()) fail("DeQue: the queue is empty");
        core().cost.queue_ops++;
        Entry e = fifo_.front();
        fifo_.pop_front();
        if (!e.buf->allocated) fail("DeQue: the enqueued tensor was freed before it was dequeued");
        // What the producer did to the buffer before EnQue is visible to the consumer now.
        core().pipes.order_buffer(kProducer, kConsumer, e.buf->offset, e.buf->offset + e.buf->len, e.enqueued_at);
        trace_wait(kProducer, kConsumer, e.buf->offset);
        return LocalTensor<T>(e.buf, e.buf->generation, e.offset, static_cast<uint32_t>(e.len / sizeof(T)));
    }
    bool HasTensorInQue() const { return !fifo_.empty(); }

private:
    friend class TPipe;
    struct Entry {
        Buffer* buf;
        uint32_t offset;
        uint32_t len;
        uint64_t enqueued_at;
    };
    std::vector<Buffer> bufs_;
    std::deque<Entry> fifo_;
};

// CANN maps a queue's position to its pipe hand-off with GetBufferLogicPos, which asserts the
// position is neither GM nor VECCALC (a VECCALC buffer belongs to one pipe: use a TBuf). In a
// device build that assert is empty and the queue orders nothing; here it is a compile error.
template <TPosition pos, int32_t depth, auto mask = 0>
class TQue : public TQueBind<pos, pos, depth, mask> {
    static_assert(pos != TPosition::VECCALC,
                  "TQue<TPosition::VECCALC>: a queue hands data between pipes (VECIN: MTE2 -> V, VECOUT: V -> MTE3); "
                  "use a TBuf<TPosition::VECCALC> for scratch");
    static_assert(pos != TPosition::GM && pos != TPosition::MAX, "TQue: GM and MAX are not queue positions");
};

template <TPosition pos = TPosition::VECCALC>
class TBuf {
public:
    template <typename T>
    LocalTensor<T> Get() {
        if (!buf_.allocated) fail("TBuf::Get before InitBuffer");
        return LocalTensor<T>(&buf_, buf_.generation, buf_.offset, static_cast<uint32_t>(buf_.len / sizeof(T)));
    }
    template <typename T>
    LocalTensor<T> Get(uint32_t len) {
        if (len * sizeof(T) > buf_.len) fail("TBuf::Get(" + std::to_string(len) + ") beyond the buffer");
        return LocalTensor<T>(&buf_, buf_.generation, buf_.offset, len);
    }
    template <typename T>
    LocalTensor<T> GetWithOffset(uint32_t len, uint32_t offset_bytes) {
        if (offset_bytes % ONE_BLK_SIZE != 0) fail("TBuf::GetWithOffset: offset not 32-byte aligned");
        if (offset_bytes + len * sizeof(T) > buf_.len) fail("TBuf::GetWithOffset beyond the buffer");
        return LocalTensor<T>(&buf_, buf_.generation, buf_.offset + offset_bytes, len);
    }

private:
    friend class TPipe;
    Buffer buf_;
};

class TPipe {
public:
    TPipe() { core().pipe = this; }
    ~TPipe() {
        if (core().pipe == this) core().pipe = nullptr;
    }

    // Any queue (TQue or TQueBind), as CANN declares it: template <class T> InitBuffer(T&, ...).
    template <class Q>
    bool InitBuffer(Q& que, uint8_t num, uint32_t len) {
        uint32_t& q = core().queue_buffers[static_cast<int>(Q::kSrcPosition)];
        if (q + num > MAX_QUEUE_BUFFERS_PER_POSITION)
            fail("InitBuffer: more than " + std::to_string(MAX_QUEUE_BUFFERS_PER_POSITION) + " queue buffers at one TPosition");
        q += num;
        que.bufs_.resize(num);
        for (auto& b : que.bufs_) carve(b, len);
        return true;
    }
    template <TPosition pos>
    bool InitBuffer(TBuf<pos>& buf, uint32_t len) {
        carve(buf.buf_, len);
        buf.buf_.allocated = true;
        return true;
    }
    template <HardEvent e>
    TEventID FetchEventID() { return 0; }
    TEventID FetchEventID(HardEvent) { return 0; }
    void Reset() {}
    void Destroy() {}

private:
    static void carve(Buffer& b, uint32_t len) {
        CoreState& c = core();
        uint32_t rounded = (len + ONE_BLK_SIZE - 1) / ONE_BLK_SIZE * ONE_BLK_SIZE;
        if (++c.buffers > QBUF_MAX_LEN) fail("InitBuffer: more than 64 buffers in one kernel");
        if (c.ub_used + rounded > TOTAL_VEC_LOCAL_SIZE)
            fail("InitBuffer: Unified Buffer overflow: " + std::to_string(c.ub_used) + " bytes used + " +
                 std::to_string(rounded) + " requested > " + std::to_string(TOTAL_VEC_LOCAL_SIZE) +
                 " bytes a 910B vector core leaves to kernels (192 KiB UB minus 8 KiB reserved)");
        b.offset = c.ub_used;
        b.len = rounded;
        c.ub_used += rounded;
    }
};

inline TPipe* GetTPipePtr() { return static_cast<TPipe*>(core().pipe); }

// ---------------------------------------------------------------------------------------------
// Synchronisation: sequential here, but Set/Wait must pair up, and each WaitFlag<X_Y> orders
// what pipe X did before the matching SetFlag ahead of what pipe Y does next (the pipe model).
inline std::pair<int, int> event_pipes(HardEvent e) {
    static const int from[] = {PIPE_ID_MTE2, PIPE_ID_V, PIPE_ID_MTE3, PIPE_ID_V, PIPE_ID_MTE2, PIPE_ID_MTE3,
                               PIPE_ID_S, PIPE_ID_V, PIPE_ID_S, PIPE_ID_MTE2, PIPE_ID_S, PIPE_ID_MTE3};
    static const int to[] = {PIPE_ID_V, PIPE_ID_MTE2, PIPE_ID_V, PIPE_ID_MTE3, PIPE_ID_MTE3, PIPE_ID_MTE2,
                             PIPE_ID_V, PIPE_ID_S, PIPE_ID_MTE2, PIPE_ID_S, PIPE_ID_MTE3, PIPE_ID_S};
    const int i = static_cast<int>(e);
    return {from[i], to[i]};
}
template <HardEvent e>
inline void SetFlag(int32_t id) {
    static_assert(e != HardEvent::MAX, "HardEvent::MAX is not an event");
    core().flags[{static_cast<int>(e), id}]++;
    core().flag_marks[{static_cast<int>(e), id}].push_back(core().pipes.now());
    const auto pipes = event_pipes(e);
    trace_set(pipes.first, pipes.second, static_cast<uint32_t>(id) & 0xFFFFu);
}
template <HardEvent e>
inline void WaitFlag(int32_t id) {
    static_assert(e != HardEvent::MAX, "HardEvent::MAX is not an event");
    int& n = core().flags[{static_cast<int>(e), id}];
    if (n <= 0) fail("WaitFlag without a matching SetFlag (event " + std::to_string(static_cast<int>(e)) + ", id " + std::to_string(id) + ")");
    n--;
    core().cost.flag_waits++;
    auto& marks = core().flag_marks[{static_cast<int>(e), id}];
    const uint64_t upto = marks.front();
    marks.pop_front();
    const auto pipes = event_pipes(e);
    core().pipes.order(pipes.first, pipes.second, upto);
    trace_wait(pipes.first, pipes.second, static_cast<uint32_t>(id) & 0xFFFFu);
}
template <pipe_t p>
inline void PipeBarrier() {
    static_assert(p != PIPE_S, "PipeBarrier<PIPE_S> is a hardware error");
    if (p == PIPE_ALL) {
        core().pipes.order_all();
        trace_push({TRACE_BARRIER, 0, 0, 0, 0, 0, 0});
    }
}
[[noreturn]] inline void SyncAll() { fail("SyncAll: cores run one after another in the host implementation; kernels must not wait for each other"); }

// ---------------------------------------------------------------------------------------------
// Data movement.
struct DataCopyParams {
    uint16_t blockCount = 1;
    uint16_t blockLen = 0;  // in 32-byte blocks
    uint16_t srcStride = 0; // gap in 32-byte blocks
    uint16_t dstStride = 0;
    DataCopyParams() = default;
    DataCopyParams(uint16_t count, uint16_t len, uint16_t src, uint16_t dst)
        : blockCount(count), blockLen(len), srcStride(src), dstStride(dst) {}
};

template <typename T>
inline void check_count(const char* op, uint32_t count) {
    if ((count * sizeof(T)) % ONE_BLK_SIZE != 0)
        fail(std::string(op) + ": " + std::to_string(count) + " x " + type_name<T>() + " = " +
             std::to_string(count * sizeof(T)) + " bytes is not a multiple of 32 (the device would silently truncate the copy)");
}

template <typename T>
inline void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const uint32_t count) {
    check_count<T>("DataCopy GM->UB", count);
    dst.operand("DataCopy GM->UB", count);
    src.in_range("DataCopy GM->UB", 0, count);
    dst.pipe_access(PIPE_ID_MTE2, PipeModel::WRITE, "DataCopy GM->UB", count);
    std::memcpy(dst.ptr(), src.data(), count * sizeof(T));
    count_copy(PIPE_ID_MTE2, count * sizeof(T), 1);
}

template <typename T>
inline void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const uint32_t count) {
    check_count<T>("DataCopy UB->GM", count);
    src.operand("DataCopy UB->GM", count);
    dst.in_range("DataCopy UB->GM", 0, count);
    src.pipe_access(PIPE_ID_MTE3, PipeModel::READ, "DataCopy UB->GM", count);
    std::memcpy(dst.data(), src.ptr(), count * sizeof(T));
    count_copy(PIPE_ID_MTE3, count * sizeof(T), 1);
}

template <typename T>
inline void check_params(const char* op, const DataCopyParams& p) {
    if (p.blockCount < 1 || p.blockCount > 4095) fail(std::string(op) + ": blockCount must be 1..4095");
    if (p.blockLen < 1) fail(std::string(op) + ": blockLen must be at least one 32-byte block");
}

// Strided bursts: blockLen, srcStride and dstStride in 32-byte blocks.
template <typename T>
inline void DataCopy(const LocalTensor<T>& dst, const GlobalTensor<T>& src, const DataCopyParams& p) {
    check_params<T>("DataCopy GM->UB", p);
    const uint32_t burst = p.blockLen * ONE_BLK_SIZE / sizeof(T);
    const uint32_t sgap = p.srcStride * ONE_BLK_SIZE / sizeof(T), dgap = p.dstStride * ONE_BLK_SIZE / sizeof(T);
    const uint32_t dst_span = p.blockCount * burst + (p.blockCount - 1) * dgap;
    dst.operand("DataCopy GM->UB", dst_span);
    src.in_range("DataCopy GM->UB", 0, static_cast<uint64_t>(p.blockCount - 1) * (burst + sgap) + burst);
    dst.pipe_access(PIPE_ID_MTE2, PipeModel::WRITE, "DataCopy GM->UB", dst_span);
    for (uint32_t i = 0; i < p.blockCount; i++)
        std::memcpy(dst.ptr() + i * (burst + dgap), src.data() + static_cast<uint64_t>(i) * (burst + sgap), burst * sizeof(T));
    count_copy(PIPE_ID_MTE2, static_cast<uint64_t>(p.blockCount) * burst * sizeof(T), sgap == 0 ? 1 : p.blockCount);
}

template <typename T>
inline void DataCopy(const GlobalTensor<T>& dst, const LocalTensor<T>& src, const DataCopyParams& p) {
    check_params<T>("DataCopy UB->GM", p);
    const uint32_t burst = p.blockLen * ONE_BLK_SIZE / sizeof(T);
    const uint32_t sgap = p.srcStride * ONE_BLK_SIZE / sizeof(T), dgap = p.dstStride * ONE_BLK_SIZE / sizeof(T);
    src.operand("DataCopy UB->GM", p.blockCount * burst + (p.blockCount - 1) * sgap);
    src.pipe_access(PIPE_ID_MTE3, PipeModel::READ, "DataCopy UB->GM", p.blockCount * burst + (p.blockCount - 1) * sgap);
    dst.in_range("DataCopy UB->GM", 0, static_cast<uint64_t>(p.blockCount - 1) * (burst + dgap) + burst);
    for (uint32_t i = 0; i < p.blockCount; i++)
        std::memcpy(dst.data() + static_cast<uint64_t>(i) * (burst + dgap), src.ptr() + i * (burst + sgap), burst * sizeof(T));
    count_copy(PIPE_ID_MTE3, static_cast<uint64_t>(p.blockCount) * burst * sizeof(T), dgap == 0 ? 1 : p.blockCount);
}

// ---------------------------------------------------------------------------------------------
// Vector compute (count form, "the first n elements").
template <typename T>
inline void vector_type(const char* op) {
    static_assert(std::is_same<T, half>::value || std::is_same<T, float>::value,
                  "A2 vector arithmetic takes half or float (cast bf16 to float first)");
    (void)op;
}

#define ASCENDC_BINARY(NAME, EXPR)                                                             \
    template <typename T>                                                                      \
    inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& a, const LocalTensor<T>& b, \
                     const int32_t& count) {                                                   \
        vector_type<T>(#NAME);                                                                 \
        dst.operand(#NAME, count);                                                             \
        a.operand(#NAME, count);                                                               \
        b.operand(#NAME, count);                                                               \
        a.vector_reads(#NAME, count);                                                          \
        b.vector_reads(#NAME, count);                                                          \
        dst.vector_writes(#NAME, count);                                                       \
        T* d = dst.ptr();                                                                      \
        const T* x = a.ptr();                                                                  \
        const T* y = b.ptr();                                                                  \
        for (int32_t i = 0; i < count; i++) {                                                  \
            float u = static_cast<float>(x[i]), v = static_cast<float>(y[i]);                  \
            d[i] = static_cast<T>(EXPR);                                                       \
        }                                                                                      \
    }
ASCENDC_BINARY(Add, u + v)
ASCENDC_BINARY(Sub, u - v)
ASCENDC_BINARY(Mul, u * v)
ASCENDC_BINARY(Div, u / v)
ASCENDC_BINARY(Max, u > v ? u : v)
#undef ASCENDC_BINARY

#define ASCENDC_SCALAR(NAME, EXPR)                                                             \
    template <typename T, bool isSetMask = true>                                               \
    inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& src, const T& scalar,   \
                     const int32_t& count) {                                                   \
        vector_type<T>(#NAME);                                                                 \
        dst.operand(#NAME, count);                                                             \
        src.operand(#NAME, count);                                                             \
        src.vector_reads(#NAME, count);                                                        \
        dst.vector_writes(#NAME, count);                                                       \
        T* d = dst.ptr();                                                                      \
        const T* x = src.ptr();                                                                \
        float s = static_cast<float>(scalar);                                                  \
        for (int32_t i = 0; i < count; i++) {                                                  \
            float u = static_cast<float>(x[i]);                                                \
            d[i] = static_cast<T>(EXPR);                                                       \
        }                                                                                      \
    }
ASCENDC_SCALAR(Adds, u + s)
ASCENDC_SCALAR(Muls, u * s)
#undef ASCENDC_SCALAR

#define ASCENDC_UNARY(NAME, EXPR)                                                              \
    template <typename T>                                                                      \
    inline void NAME(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t& count) { \
        vector_type<T>(#NAME);                                                                 \
        dst.operand(#NAME, count);                                                             \
        src.operand(#NAME, count);                                                             \
        src.vector_reads(#NAME, count);                                                        \
        dst.vector_writes(#NAME, count);                                                       \
        T* d = dst.ptr();                                                                      \
        const T* x = src.ptr();                                                                \
        for (int32_t i = 0; i < count; i++) {                                                  \
            float u = static_cast<float>(x[i]);                                                \
            d[i] = static_cast<T>(EXPR);                                                       \
        }                                                                                      \
    }
ASCENDC_UNARY(Exp, std::exp(u))
ASCENDC_UNARY(Sqrt, std::sqrt(u))
ASCENDC_UNARY(Abs, std::fabs(u))
#undef ASCENDC_UNARY

// ---------------------------------------------------------------------------------------------
// Vector compute, level 0 (mask + repeat form): each repeat covers 8 data blocks of 32 bytes;
// blocks within a repeat are `BlkStride` blocks apart, repeats `RepStride` blocks apart; a
// continuous mask selects the first `mask` elements of each repeat (1..256 / sizeof(T)).
struct BinaryRepeatParams {
    BinaryRepeatParams() {}
    BinaryRepeatParams(const uint8_t dstBlkStrideIn, const uint8_t src0BlkStrideIn, const uint8_t src1BlkStrideIn,
                       const uint8_t dstRepStrideIn, const uint8_t src0RepStrideIn, const uint8_t src1RepStrideIn)
        : dstBlkStride(dstBlkStrideIn), src0BlkStride(src0BlkStrideIn), src1BlkStride(src1BlkStrideIn),
          dstRepStride(dstRepStrideIn), src0RepStride(src0RepStrideIn), src1RepStride(src1RepStrideIn) {}
    uint32_t blockNumber = 8;
    uint8_t dstBlkStride = 1;
    uint8_t src0BlkStride = 1;
    uint8_t src1BlkStride = 1;
    uint8_t dstRepStride = 8;
    uint8_t src0RepStride = 8;
    uint8_t src1RepStride = 8;
    bool repeatStrideMode = false;
    bool strideSizeMode = false;
};

struct BrcbRepeatParams {
    BrcbRepeatParams() {}
    BrcbRepeatParams(const uint16_t dstBlkStrideIn, const uint16_t dstRepStrideIn)
        : dstRepStride(dstRepStrideIn), dstBlkStride(dstBlkStrideIn) {}
    uint32_t blockNumber = 8;
    uint16_t dstRepStride = 8;
    uint16_t dstBlkStride = 1;
    uint8_t src0BlkStride = 1;
    uint8_t src1BlkStride = 1;
    uint8_t src0RepStride = 8;
    uint8_t src1RepStride = 8;
    bool repeatStrideMode = false;
    bool strideSizeMode = false;
};

// Element `i` (< mask) of repeat `r` of an operand with these strides, as an element offset.
template <typename T>
inline uint64_t level0_at(uint32_t r, uint32_t i, uint32_t blk, uint32_t rep) {
    constexpr uint32_t epb = ONE_BLK_SIZE / sizeof(T);
    return (static_cast<uint64_t>(r) * rep + static_cast<uint64_t>(i / epb) * blk) * epb + i % epb;
}

// The bytes an operand's repeats touch: [first, last] element offsets, as a byte range.
template <typename T>
inline std::pair<uint32_t, uint32_t> level0_span(const LocalTensor<T>& t, uint64_t mask, uint32_t repeat, uint32_t blk,
                                                 uint32_t rep) {
    uint64_t hi = 0;
    for (uint32_t i = 0; i < mask; i++) hi = std::max(hi, level0_at<T>(repeat - 1, i, blk, rep));
    for (uint32_t i = 0; i < mask && repeat > 1; i++) hi = std::max(hi, level0_at<T>(0, i, blk, rep));
    return {t.offset_bytes(), static_cast<uint32_t>(t.offset_bytes() + (hi + 1) * sizeof(T))};
}

template <typename T>
inline void level0_operand(const char* op, const char* which, const LocalTensor<T>& t, uint64_t mask, uint32_t repeat,
                           uint32_t blk, uint32_t rep) {
    t.operand(op, 0);
    const auto span = level0_span(t, mask, repeat, blk, rep);
    const uint64_t elems = (span.second - span.first) / sizeof(T);
    if (elems > t.GetSize())
        fail(std::string(op) + ": the " + which + " repeats reach element " + std::to_string(elems - 1) + " of a tensor of " +
             std::to_string(t.GetSize()));
}

template <typename T>
inline void level0_mask(const char* op, uint64_t mask, uint32_t repeat) {
    vector_type<T>(op);
    const uint64_t most = ONE_REPEAT_BYTE_SIZE / sizeof(T);
    if (mask < 1 || mask > most)
        fail(std::string(op) + ": continuous mask " + std::to_string(mask) + " outside 1.." + std::to_string(most));
    if (repeat > 255) fail(std::string(op) + ": repeatTime " + std::to_string(repeat) + " > 255");
}

inline bool spans_overlap(std::pair<uint32_t, uint32_t> a, std::pair<uint32_t, uint32_t> b) {
    return a.first < b.second && b.first < a.second;
}

// Checks a binary instruction's three operands (each repeat inside its tensor) and returns the
// byte spans of dst, src0 and src1.
template <typename T, typename U>
inline std::array<std::pair<uint32_t, uint32_t>, 3> level0_binary_operands(const char* op, const LocalTensor<T>& dst,
                                                                           const LocalTensor<U>& src0,
                                                                           const LocalTensor<U>& src1, uint64_t mask,
                                                                           uint8_t repeatTimes, const BinaryRepeatParams& p) {
    level0_operand(op, "dst", dst, mask, repeatTimes, p.dstBlkStride, p.dstRepStride);
    level0_operand(op, "src0", src0, mask, repeatTimes, p.src0BlkStride, p.src0RepStride);
    level0_operand(op, "src1", src1, mask, repeatTimes, p.src1BlkStride, p.src1RepStride);
    return {level0_span(dst, mask, repeatTimes, p.dstBlkStride, p.dstRepStride),
            level0_span(src0, mask, repeatTimes, p.src0BlkStride, p.src0RepStride),
            level0_span(src1, mask, repeatTimes, p.src1BlkStride, p.src1RepStride)};
}

// A level-0 binary instruction: dst = f(src0, src1, dst) per selected element, repeat after
// repeat (so a repeat sees what earlier repeats wrote, as the hardware does in the one case
// where that is allowed). Overlap rule (general constraints): within a repeat an operand and
// dst coincide fully or not at all, and the dst of one repeat must not feed a source of a later
// one, except for Add/Sub/Mul/Max/Min when only dst and src1 overlap and src1RepStride or
// dstRepStride is 0 (an accumulation across repeats).
template <typename T, typename F>
inline void level0_binary(const char* op, bool accumulating_allowed, const LocalTensor<T>& dst, const LocalTensor<T>& src0,
                          const LocalTensor<T>& src1, uint64_t mask, uint8_t repeatTimes, const BinaryRepeatParams& p, F f) {
    level0_mask<T>(op, mask, repeatTimes);
    if (repeatTimes == 0) return;
    const auto spans = level0_binary_operands(op, dst, src0, src1, mask, repeatTimes, p);
    const auto d = spans[0], a = spans[1], b = spans[2];
    const bool same0 = dst.offset_bytes() == src0.offset_bytes() && p.dstBlkStride == p.src0BlkStride &&
                       p.dstRepStride == p.src0RepStride;
    const bool same1 = dst.offset_bytes() == src1.offset_bytes() && p.dstBlkStride == p.src1BlkStride &&
                       p.dstRepStride == p.src1RepStride;
    if (spans_overlap(d, a) && !same0)
        fail(std::string(op) + ": dst and src0 overlap without coinciding (one repeat's result would feed a later repeat)");
    if (spans_overlap(d, b) && !same1 &&
        !(accumulating_allowed && (p.src1RepStride == 0 || p.dstRepStride == 0)))
        fail(std::string(op) + ": dst and src1 overlap without coinciding, and this is not the accumulation form "
             "(Add/Sub/Mul/Max/Min with src1RepStride or dstRepStride 0)");
    src0.vector_reads(op, (a.second - a.first) / sizeof(T));
    src1.vector_reads(op, (b.second - b.first) / sizeof(T));
    core().pipes.access(PIPE_ID_V, PipeModel::WRITE, d.first, d.second, op, op);
    count_vector_repeats(repeatTimes);
    T* dp = dst.ptr();
    const T* ap = src0.ptr();
    const T* bp = src1.ptr();
    std::vector<float> out(mask);
    for (uint32_t r = 0; r < repeatTimes; r++) {
        for (uint32_t i = 0; i < mask; i++)
            out[i] = f(static_cast<float>(ap[level0_at<T>(r, i, p.src0BlkStride, p.src0RepStride)]),
                       static_cast<float>(bp[level0_at<T>(r, i, p.src1BlkStride, p.src1RepStride)]),
                       static_cast<float>(dp[level0_at<T>(r, i, p.dstBlkStride, p.dstRepStride)]));
        for (uint32_t i = 0; i < mask; i++) dp[level0_at<T>(r, i, p.dstBlkStride, p.dstRepStride)] = static_cast<T>(out[i]);
    }
}

template <typename T, bool isSetMask = true>
inline void Add(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, uint64_t mask,
                const uint8_t repeatTimes, const BinaryRepeatParams& repeatParams) {
    level0_binary("Add", true, dst, src0, src1, mask, repeatTimes, repeatParams, [](float a, float b, float) { return a + b; });
}
template <typename T, bool isSetMask = true>
inline void Sub(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, uint64_t mask,
                const uint8_t repeatTimes, const BinaryRepeatParams& repeatParams) {
    level0_binary("Sub", true, dst, src0, src1, mask, repeatTimes, repeatParams, [](float a, float b, float) { return a - b; });
}
template <typename T, bool isSetMask = true>
inline void Mul(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, uint64_t mask,
                const uint8_t repeatTimes, const BinaryRepeatParams& repeatParams) {
    level0_binary("Mul", true, dst, src0, src1, mask, repeatTimes, repeatParams, [](float a, float b, float) { return a * b; });
}
template <typename T, bool isSetMask = true>
inline void Max(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, uint64_t mask,
                const uint8_t repeatTimes, const BinaryRepeatParams& repeatParams) {
    level0_binary("Max", true, dst, src0, src1, mask, repeatTimes, repeatParams,
                  [](float a, float b, float) { return a > b ? a : b; });
}
template <typename T, bool isSetMask = true>
inline void Div(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const LocalTensor<T>& src1, uint64_t mask,
                const uint8_t repeatTimes, const BinaryRepeatParams& repeatParams) {
    level0_binary("Div", false, dst, src0, src1, mask, repeatTimes, repeatParams,
                  [](float a, float b, float) { return a / b; });
}

// dst = src0 * src1 + dst: one element type (half or float), or float dst with half sources (the
// A2 table: half/half, float/float, float/half). A repeat covers the lanes of dst's type (64 for
// float); each source's blocks hold elements of its own type, so a half source's 64 lanes are 4
// blocks. MulAddDst reads dst: the general overlap rule forbids a repeat's dst from feeding a
// later repeat, and MulAddDst is not among the ops allowed to accumulate across repeats, so
// the repeats' destinations must not overlap.
template <typename T, typename U, bool isSetMask = true>
inline void MulAddDst(const LocalTensor<T>& dst, const LocalTensor<U>& src0, const LocalTensor<U>& src1, uint64_t mask,
                      const uint8_t repeatTimes, const BinaryRepeatParams& p) {
    static_assert((std::is_same<T, U>::value && (std::is_same<T, half>::value || std::is_same<T, float>::value)) ||
                      (std::is_same<T, float>::value && std::is_same<U, half>::value),
                  "MulAddDst on A2 takes half/half, float/float or float dst with half sources");
    const char* op = "MulAddDst";
    level0_mask<T>(op, mask, repeatTimes);
    if (repeatTimes == 0) return;
    const auto spans = level0_binary_operands(op, dst, src0, src1, mask, repeatTimes, p);
    const auto d = spans[0], a = spans[1], b = spans[2];
    // The host implementation is stricter than the documented general rule (a coinciding dst and
    // source): in the mixed form the two cannot coincide, and the kernels never need it.
    if (spans_overlap(d, a)) fail(std::string(op) + ": dst overlaps src0 (dst is read and written; keep the sources apart)");
    if (spans_overlap(d, b)) fail(std::string(op) + ": dst overlaps src1 (dst is read and written; keep the sources apart)");
    if (repeatTimes > 1) {
        const auto first = level0_span(dst, mask, 1, p.dstBlkStride, p.dstRepStride);
        const auto second = level0_span(dst[static_cast<uint32_t>(p.dstRepStride) * (ONE_BLK_SIZE / sizeof(T))], mask, 1,
                                        p.dstBlkStride, p.dstRepStride);
        if (spans_overlap(first, second))
            fail(std::string(op) + ": the repeats' destinations overlap (dstRepStride " + std::to_string(p.dstRepStride) +
                 "): MulAddDst reads dst, and only Add/Sub/Mul/Max/Min may accumulate across repeats");
    }
    src0.vector_reads(op, (a.second - a.first) / sizeof(U));
    src1.vector_reads(op, (b.second - b.first) / sizeof(U));
    dst.vector_reads(op, (d.second - d.first) / sizeof(T));
    core().pipes.access(PIPE_ID_V, PipeModel::WRITE, d.first, d.second, op, op);
    count_vector_repeats(repeatTimes);
    T* dp = dst.ptr();
    const U* ap = src0.ptr();
    const U* bp = src1.ptr();
    for (uint32_t r = 0; r < repeatTimes; r++)
        for (uint32_t i = 0; i < mask; i++) {
            T& o = dp[level0_at<T>(r, i, p.dstBlkStride, p.dstRepStride)];
            const float x = static_cast<float>(ap[level0_at<U>(r, i, p.src0BlkStride, p.src0RepStride)]);
            const float y = static_cast<float>(bp[level0_at<U>(r, i, p.src1BlkStride, p.src1RepStride)]);
            o = static_cast<T>(x * y + static_cast<float>(o));
        }
}

// One sum per repeat (the first `mask` elements, as a binary tree over the repeat's lanes), the
// sums `dstRepStride` elements apart.
template <typename T, bool isSetMask = true>
inline void WholeReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t mask, const int32_t repeatTimes,
                           const int32_t dstRepStride, const int32_t srcBlkStride, const int32_t srcRepStride) {
    const char* op = "WholeReduceSum";
    if (repeatTimes < 0 || dstRepStride < 0 || srcBlkStride < 0 || srcRepStride < 0)
        fail(std::string(op) + ": negative repeat or stride");
    level0_mask<T>(op, static_cast<uint64_t>(mask), static_cast<uint32_t>(repeatTimes));
    if (repeatTimes == 0) return;
    level0_operand(op, "src", src, mask, repeatTimes, srcBlkStride, srcRepStride);
    dst.check(op);
    const uint64_t last = static_cast<uint64_t>(repeatTimes - 1) * dstRepStride;
    if (last >= dst.GetSize())
        fail(std::string(op) + ": sum " + std::to_string(repeatTimes - 1) + " lands at element " + std::to_string(last) +
             " of a tensor of " + std::to_string(dst.GetSize()));
    const auto sspan = level0_span(src, mask, repeatTimes, srcBlkStride, srcRepStride);
    const std::pair<uint32_t, uint32_t> dspan{dst.offset_bytes(), static_cast<uint32_t>(dst.offset_bytes() + (last + 1) * sizeof(T))};
    if (spans_overlap(sspan, dspan)) fail(std::string(op) + ": dst overlaps src");
    src.vector_reads(op, (sspan.second - sspan.first) / sizeof(T));
    core().pipes.access(PIPE_ID_V, PipeModel::WRITE, dspan.first, dspan.second, op, op);
    count_vector_repeats(repeatTimes);
    const int32_t lanes = ONE_REPEAT_BYTE_SIZE / sizeof(T);
    std::vector<float> lane(lanes);
    for (int32_t r = 0; r < repeatTimes; r++) {
        for (int32_t i = 0; i < lanes; i++)
            lane[i] = i < mask ? static_cast<float>(src.ptr()[level0_at<T>(r, i, srcBlkStride, srcRepStride)]) : 0.0f;
        for (int32_t w = lanes / 2; w >= 1; w /= 2)
            for (int32_t i = 0; i < w; i++) lane[i] += lane[i + w];
        dst.ptr()[static_cast<uint64_t>(r) * dstRepStride] = static_cast<T>(lane[0]);
    }
}

// The maximum of each repeat's first `mask` elements, and with ORDER_VALUE_INDEX /
// ORDER_INDEX_VALUE its index within the repeat (stored in dst's type, as the bit pattern of a
// uint16/uint32). dstRepStride counts results: one element (ORDER_ONLY_VALUE), or a
// value-index pair. A2 takes all four orders (asc-devkit docs/api/context/WholeReduceMax.md).
template <typename T, bool isSetMask = true>
inline void WholeReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src, const int32_t mask, const int32_t repeatTimes,
                           const int32_t dstRepStride, const int32_t srcBlkStride, const int32_t srcRepStride,
                           ReduceOrder order = ReduceOrder::ORDER_VALUE_INDEX) {
    const char* op = "WholeReduceMax";
    if (repeatTimes < 0 || dstRepStride < 0 || srcBlkStride < 0 || srcRepStride < 0)
        fail(std::string(op) + ": negative repeat or stride");
    level0_mask<T>(op, static_cast<uint64_t>(mask), static_cast<uint32_t>(repeatTimes));
    if (repeatTimes == 0) return;
    level0_operand(op, "src", src, mask, repeatTimes, srcBlkStride, srcRepStride);
    dst.check(op);
    const bool pair = order == ReduceOrder::ORDER_VALUE_INDEX || order == ReduceOrder::ORDER_INDEX_VALUE;
    const uint64_t unit = pair ? 2 : 1;
    const uint64_t last = static_cast<uint64_t>(repeatTimes - 1) * dstRepStride * unit + unit - 1;
    if (last >= dst.GetSize())
        fail(std::string(op) + ": result " + std::to_string(repeatTimes - 1) + " lands at element " + std::to_string(last) +
             " of a tensor of " + std::to_string(dst.GetSize()));
    if (dst.offset_bytes() % (unit * sizeof(T) >= 4 ? unit * sizeof(T) : 4) != 0)
        fail(std::string(op) + ": dst is not aligned to its result size");
    const auto sspan = level0_span(src, mask, repeatTimes, srcBlkStride, srcRepStride);
    const std::pair<uint32_t, uint32_t> dspan{dst.offset_bytes(), static_cast<uint32_t>(dst.offset_bytes() + (last + 1) * sizeof(T))};
    if (spans_overlap(sspan, dspan)) fail(std::string(op) + ": dst overlaps src");
    src.vector_reads(op, (sspan.second - sspan.first) / sizeof(T));
    core().pipes.access(PIPE_ID_V, PipeModel::WRITE, dspan.first, dspan.second, op, op);
    count_vector_repeats(repeatTimes);
    for (int32_t r = 0; r < repeatTimes; r++) {
        float best = static_cast<float>(src.ptr()[level0_at<T>(r, 0, srcBlkStride, srcRepStride)]);
        uint32_t at = 0;
        for (int32_t i = 1; i < mask; i++) {
            const float v = static_cast<float>(src.ptr()[level0_at<T>(r, i, srcBlkStride, srcRepStride)]);
            if (v > best) { best = v; at = static_cast<uint32_t>(i); }
        }
        T* out = dst.ptr() + static_cast<uint64_t>(r) * dstRepStride * unit;
        T index{};
        std::memcpy(&index, &at, sizeof(T) < sizeof(at) ? sizeof(T) : sizeof(at));
        switch (order) {
            case ReduceOrder::ORDER_VALUE_INDEX: out[0] = static_cast<T>(best); out[1] = index; break;
            case ReduceOrder::ORDER_INDEX_VALUE: out[0] = index; out[1] = static_cast<T>(best); break;
            case ReduceOrder::ORDER_ONLY_VALUE: out[0] = static_cast<T>(best); break;
            default: std::memcpy(out, &at, sizeof(T) < sizeof(at) ? sizeof(T) : sizeof(at)); break;
        }
    }
}

// Each repeat takes 8 elements of src0 and fills one 32-byte block of dst with each.
template <typename T>
inline void Brcb(const LocalTensor<T>& dst, const LocalTensor<T>& src0, const uint8_t repeatTimes,
                 const BrcbRepeatParams& repeatParams) {
    const char* op = "Brcb";
    dst.operand(op, 0);
    src0.operand(op, static_cast<uint32_t>(repeatTimes) * 8);
    if (repeatTimes == 0) return;
    constexpr uint32_t epb = ONE_BLK_SIZE / sizeof(T);
    const uint32_t blk = repeatParams.dstBlkStride == 0 ? 1 : repeatParams.dstBlkStride;  // 0 acts as 1
    const uint64_t last_block = static_cast<uint64_t>(repeatTimes - 1) * repeatParams.dstRepStride + 7u * blk;
    if ((last_block + 1) * epb > dst.GetSize())
        fail(std::string(op) + ": the repeats reach block " + std::to_string(last_block) + " of a tensor of " +
             std::to_string(dst.GetSize() / epb) + " blocks");
    const std::pair<uint32_t, uint32_t> d{dst.offset_bytes(), static_cast<uint32_t>(dst.offset_bytes() + (last_block + 1) * ONE_BLK_SIZE)};
    const std::pair<uint32_t, uint32_t> s{src0.offset_bytes(), static_cast<uint32_t>(src0.offset_bytes() + repeatTimes * 8u * sizeof(T))};
    if (spans_overlap(d, s)) fail(std::string(op) + ": src0 and dst share memory (not supported)");
    src0.vector_reads(op, repeatTimes * 8u);
    core().pipes.access(PIPE_ID_V, PipeModel::WRITE, d.first, d.second, op, op);
    count_vector_repeats(repeatTimes);
    for (uint32_t r = 0; r < repeatTimes; r++)
        for (uint32_t i = 0; i < 8; i++) {
            const T v = src0.ptr()[r * 8 + i];
            T* block = dst.ptr() + (static_cast<uint64_t>(r) * repeatParams.dstRepStride + i * blk) * epb;
            for (uint32_t e = 0; e < epb; e++) block[e] = v;
        }
}

template <typename T>
inline void Duplicate(const LocalTensor<T>& dst, const T& scalar, const int32_t& count) {
    dst.operand("Duplicate", count);
    dst.vector_writes("Duplicate", count);
    T* d = dst.ptr();
    for (int32_t i = 0; i < count; i++) d[i] = scalar;
}

// Level 0, a bit mask per repeat: lane i of each repeat is written when bit i of mask (mask[0]
// for lanes 0-63, mask[1] for 64-127 of a 16-bit type) is set.
template <typename T, bool isSetMask = true>
inline void Duplicate(const LocalTensor<T>& dst, const T& scalar, uint64_t mask[], const uint8_t repeatTimes,
                      const uint16_t dstBlockStride, const uint8_t dstRepeatStride) {
    const char* op = "Duplicate";
    const uint32_t lanes = ONE_REPEAT_BYTE_SIZE / sizeof(T);
    if (mask[0] == 0 && (lanes <= 64 || mask[1] == 0)) fail(std::string(op) + ": an empty bit mask");
    if (repeatTimes == 0) return;
    level0_operand(op, "dst", dst, lanes, repeatTimes, dstBlockStride, dstRepeatStride);
    const auto d = level0_span(dst, lanes, repeatTimes, dstBlockStride, dstRepeatStride);
    core().pipes.access(PIPE_ID_V, PipeModel::WRITE, d.first, d.second, op, op);
    count_vector_repeats(repeatTimes);
    for (uint32_t r = 0; r < repeatTimes; r++)
        for (uint32_t i = 0; i < lanes; i++)
            if ((mask[i / 64] >> (i % 64)) & 1) dst.ptr()[level0_at<T>(r, i, dstBlockStride, dstRepeatStride)] = scalar;
}

// Level 0, a continuous mask: the first `mask` lanes of each repeat.
template <typename T, bool isSetMask = true>
inline void Duplicate(const LocalTensor<T>& dst, const T& scalar, uint64_t mask, const uint8_t repeatTimes,
                      const uint16_t dstBlockStride, const uint8_t dstRepeatStride) {
    const char* op = "Duplicate";
    level0_mask<T>(op, mask, repeatTimes);
    if (repeatTimes == 0) return;
    level0_operand(op, "dst", dst, mask, repeatTimes, dstBlockStride, dstRepeatStride);
    const auto d = level0_span(dst, mask, repeatTimes, dstBlockStride, dstRepeatStride);
    core().pipes.access(PIPE_ID_V, PipeModel::WRITE, d.first, d.second, op, op);
    count_vector_repeats(repeatTimes);
    for (uint32_t r = 0; r < repeatTimes; r++)
        for (uint32_t i = 0; i < mask; i++) dst.ptr()[level0_at<T>(r, i, dstBlockStride, dstRepeatStride)] = scalar;
}

// Gather (level 2): dst[i] = the element at byte srcBaseAddr + srcOffset[i] of src, for i <
// count. The offsets are bytes from src's start (CANN's own operators build them with Muls by
// the element size); each must name a whole element inside src. dst may be src (the elements are
// read before any is written, as the hardware reads a repeat before writing it).
template <typename T>
inline void Gather(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<uint32_t>& srcOffsetLocal,
                   const uint32_t srcBaseAddr, const uint32_t count) {
    const char* op = "Gather";
    dst.operand(op, count);
    srcOffsetLocal.operand(op, count);
    src.operand(op, 0);
    srcOffsetLocal.vector_reads(op, count);
    src.vector_reads(op, src.GetSize());
    std::vector<T> picked(count);
    const uint64_t limit = static_cast<uint64_t>(src.GetSize()) * sizeof(T);
    for (uint32_t i = 0; i < count; i++) {
        uint32_t off;
        std::memcpy(&off, srcOffsetLocal.ptr() + i, sizeof(off));
        const uint64_t at = static_cast<uint64_t>(srcBaseAddr) + off;
        if (at % sizeof(T) != 0 || at + sizeof(T) > limit)
            fail(std::string(op) + ": offset " + std::to_string(at) + " (element " + std::to_string(i) +
                 ") is not a whole element inside the " + std::to_string(limit) + "-byte source");
        picked[i] = src.ptr()[at / sizeof(T)];
    }
    dst.vector_writes(op, count);
    std::copy(picked.begin(), picked.end(), dst.ptr());
}

// Cast between half and float, as the A2 table allows (CANN's template<T1, T2> declaration; the
// host implementation provides these two directions).
template <typename T1, typename T2>
inline void Cast(const LocalTensor<T1>& dst, const LocalTensor<T2>& src, const RoundMode& round_mode, const uint32_t calCount) {
    static_assert((std::is_same<T1, float>::value && std::is_same<T2, half>::value) ||
                      (std::is_same<T1, half>::value && std::is_same<T2, float>::value),
                  "the host implementation provides Cast between half and float only");
    if (std::is_same<T1, float>::value && round_mode != RoundMode::CAST_NONE)
        fail("Cast half->float: only CAST_NONE is allowed on A2");
    if (std::is_same<T1, half>::value && round_mode != RoundMode::CAST_NONE && round_mode != RoundMode::CAST_RINT)
        fail("Cast float->half: this host implementation provides CAST_NONE and CAST_RINT (round half to even)");
    dst.operand("Cast", calCount);
    src.operand("Cast", calCount);
    src.vector_reads("Cast", calCount);
    dst.pipe_access(PIPE_ID_V, PipeModel::WRITE, "Cast", calCount);
    count_vector(static_cast<uint64_t>(calCount) * std::max(sizeof(T1), sizeof(T2)));  // repeats follow the wider type
    for (uint32_t i = 0; i < calCount; i++) dst.ptr()[i] = static_cast<T1>(static_cast<float>(src.ptr()[i]));
}

// The count forms of ReduceSum and ReduceMax as CANN 8.1.RC1 implements them for dav-c220
// (basic_api/inner_interface/inner_kernel_operator_vec_reduce_intf.cppm and
// impl/dav_c220/kernel_operator_vec_reduce_impl.h), with the constraints of their documentation
// (asc-devkit docs/api/context/ReduceSum.md, ReduceMax.md):
//   - ReduceSum runs one count-mode vcadd, waits V_S, stores the sum with the scalar unit and
//     waits S_V and S_MTE3: the work tensor is not used ("any size"), and everything the vector
//     unit wrote before is visible to the scalar unit afterwards, and the other way round.
//   - ReduceMax (no index) reduces into the work tensor, which needs
//     RoundUp(2 * max(1, count / elementsPerRepeat), elementsPerBlock) elements (every repeat
//     leaves a value and an index), then ends the same way (V_S, scalar store, S_V, S_MTE3).
//     The work tensor may share the destination's bytes when it has that size, but not the
//     source's.
//   - With calIndex the value and index end in dst through vector instructions, so a scalar
//     read of them needs a V_S flag. (The documented work size with indices is larger; the
//     no-index size is checked here.)
template <typename T>
inline int32_t reduce_max_work_elements(int32_t count) {
    const int32_t per_repeat = ONE_REPEAT_BYTE_SIZE / sizeof(T);
    const int32_t per_block = ONE_BLK_SIZE / sizeof(T);
    const int32_t first = std::max<int32_t>(1, count / per_repeat);
    return (2 * first + per_block - 1) / per_block * per_block;
}

template <typename T>
inline void reduce_count(const char* op, const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& work,
                         int32_t count, bool calIndex) {
    vector_type<T>(op);
    if (count < 1 || static_cast<uint32_t>(count) > TOTAL_UB_SIZE / sizeof(T))
        fail(std::string(op) + ": count " + std::to_string(count) + " outside 1.." + std::to_string(TOTAL_UB_SIZE / sizeof(T)));
    src.operand(op, count);
    dst.check(op);
    if (dst.GetSize() < (calIndex ? 2u : 1u)) fail(std::string(op) + ": the destination holds no room for the result");
    work.operand(op, 0);  // 32-byte aligned, alive
    src.vector_reads(op, count);
}

// The library's closing handshake: V_S, a scalar store of the result into `dst`, S_V, S_MTE3.
template <typename T>
inline void reduce_handshake(const char* op, const LocalTensor<T>& dst) {
    PipeModel& m = core().pipes;
    m.order(PIPE_ID_V, PIPE_ID_S, m.now());
    dst.pipe_access(PIPE_ID_S, PipeModel::WRITE, op, 1);
    m.order(PIPE_ID_S, PIPE_ID_V, m.now());
    m.order(PIPE_ID_S, PIPE_ID_MTE3, m.now());
    core().cost.flag_waits += 3;  // V_S, S_V, S_MTE3
    trace_handshake(PIPE_ID_V, PIPE_ID_S, TRACE_LIBRARY_ID);
    count_scalar(1, 0);  // the scalar store of the result
    trace_handshake(PIPE_ID_S, PIPE_ID_V, TRACE_LIBRARY_ID);
    trace_handshake(PIPE_ID_S, PIPE_ID_MTE3, TRACE_LIBRARY_ID);
}

// Sums: each 256-byte repeat as a binary tree, then the repeats in order (the A2 count form).
template <typename T, bool isSetMask = true>
inline void ReduceSum(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& sharedTmpBuffer,
                      const int32_t count) {
    reduce_count("ReduceSum", dst, src, sharedTmpBuffer, count, false);
    count_vector(static_cast<uint64_t>(count) * sizeof(T));  // one count-mode vcadd
    const int32_t per_repeat = ONE_REPEAT_BYTE_SIZE / sizeof(T);
    float total = 0.0f;
    std::vector<float> lane(per_repeat);
    for (int32_t start = 0; start < count; start += per_repeat) {
        int32_t n = count - start < per_repeat ? count - start : per_repeat;
        for (int32_t i = 0; i < per_repeat; i++) lane[i] = i < n ? static_cast<float>(src.ptr()[start + i]) : 0.0f;
        for (int32_t w = per_repeat / 2; w >= 1; w /= 2)
            for (int32_t i = 0; i < w; i++) lane[i] += lane[i + w];
        total += lane[0];
    }
    reduce_handshake("ReduceSum", dst);
    dst.ptr()[0] = static_cast<T>(total);
}

// With `calIndex`, the index of the (first) maximum follows the value, as its bit pattern.
template <typename T>
inline void ReduceMax(const LocalTensor<T>& dst, const LocalTensor<T>& src, const LocalTensor<T>& workLocal, const int32_t count,
                      bool calIndex = 0) {
    reduce_count("ReduceMax", dst, src, workLocal, count, calIndex);
    const int32_t need = reduce_max_work_elements<T>(count);
    if (static_cast<int64_t>(workLocal.GetSize()) < need)
        fail("ReduceMax: the work tensor holds " + std::to_string(workLocal.GetSize()) + " elements; " + std::to_string(count) + " " +
             type_name<T>() + " need " + std::to_string(need) + " (RoundUp(2 * max(1, count / elementsPerRepeat), elementsPerBlock))");
    if (workLocal.ptr() < src.ptr() + count && src.ptr() < workLocal.ptr() + need)
        fail("ReduceMax: the work tensor overlaps the source (its partial results would overwrite data still to be read)");
    // vcmax over the repeats, then vcmax rounds over the partials (each round reduces 64 or 128
    // pairs to one); a tail past whole repeats costs a second pass and a scalar merge.
    {
        const uint64_t per_repeat = ONE_REPEAT_BYTE_SIZE / sizeof(T);
        count_vector(static_cast<uint64_t>(count) * sizeof(T));
        for (uint64_t partials = 2 * (count / per_repeat); partials > per_repeat; partials = 2 * (partials / per_repeat))
            count_vector(partials * sizeof(T));
        if (count > static_cast<int32_t>(per_repeat)) count_vector(ONE_REPEAT_BYTE_SIZE);
        if (count > static_cast<int32_t>(per_repeat) && count % per_repeat != 0) {
            count_vector(ONE_REPEAT_BYTE_SIZE, 2);
            core().cost.flag_waits += 3;
            trace_handshake(PIPE_ID_V, PIPE_ID_S, TRACE_LIBRARY_ID);
            count_scalar(4, 0);
            trace_handshake(PIPE_ID_S, PIPE_ID_V, TRACE_LIBRARY_ID);
            trace_handshake(PIPE_ID_S, PIPE_ID_MTE3, TRACE_LIBRARY_ID);
        }
    }
    float m = -INFINITY;
    uint32_t at = 0;
    for (int32_t i = 0; i < count; i++) {
        const float v = static_cast<float>(src.ptr()[i]);
        if (v > m) { m = v; at = static_cast<uint32_t>(i); }
    }
    std::fill(workLocal.ptr(), workLocal.ptr() + need, static_cast<T>(0.0f));  // its partials: not a result
    dst.ptr()[0] = static_cast<T>(m);
    if (calIndex) {
        std::memcpy(&dst.ptr()[1], &at, sizeof(T) < sizeof(at) ? sizeof(T) : sizeof(at));
        workLocal.pipe_access(PIPE_ID_V, PipeModel::WRITE, "ReduceMax", need);
        dst.pipe_access(PIPE_ID_V, PipeModel::WRITE, "ReduceMax", 2);
    } else {
        workLocal.pipe_access(PIPE_ID_V, PipeModel::WRITE, "ReduceMax", need);
        reduce_handshake("ReduceMax", dst);
    }
}

// ---------------------------------------------------------------------------------------------
// Running a kernel: every core in turn, with fresh per-core state; errors become a message.
inline void reset_core(int64_t idx, int64_t num) {
    CoreState& c = core();
    c.block_idx = idx;
    c.block_num = num;
    std::fill(c.ub.begin(), c.ub.end(), static_cast<uint8_t>(0xA5));  // stale data, not zeros
    c.ub_used = 0;
    c.buffers = 0;
    for (auto& q : c.queue_buffers) q = 0;
    c.flags.clear();
    c.pipe = nullptr;
    c.pipes.reset();
    call_site() = {};
    c.flag_marks.clear();
    c.cost = CoreCost{};
    c.trace.clear();
    c.trace_truncated = false;
}

inline void check_core_exit() {
    for (const auto& f : core().flags)
        if (f.second != 0)
            fail("SetFlag without a matching WaitFlag at kernel exit (event " + std::to_string(f.first.first) + ", id " +
                 std::to_string(f.first.second) + ")");
}

template <typename F>
inline int32_t launch(const char* name, uint32_t block_dim, char* err, size_t err_len, F&& body) {
    try {
        if (block_dim == 0 || block_dim > 65535) fail("blockDim must be 1..65535");
        last_costs().assign(block_dim, CoreCost{});
        last_traces().assign(block_dim, {});
        last_truncated().assign(block_dim, 0);
        for (uint32_t b = 0; b < block_dim; b++) {
            reset_core(b, block_dim);
            body();
            check_core_exit();
            last_costs()[b] = core().cost;
            last_traces()[b].swap(core().trace);
            last_truncated()[b] = core().trace_truncated;
        }
        return 0;
    } catch (const std::exception& e) {
        last_costs().clear();
        last_traces().clear();
        std::string msg = std::string(name) + " (core " + std::to_string(core().block_idx) + "): " + e.what();
        if (call_site().file) msg += " [at " + describe(call_site()) + "]";
        if (err && err_len) {
            std::strncpy(err, msg.c_str(), err_len - 1);
            err[err_len - 1] = '\0';
        }
        return 1;
    } catch (...) {
        last_costs().clear();
        last_traces().clear();
        // Nothing may unwind into the Rust caller.
        if (err && err_len) {
            std::strncpy(err, name, err_len - 1);
            err[err_len - 1] = '\0';
        }
        return 2;
    }
}

}  // namespace AscendC
