// The host kernels library (libascendc_kernels_host.so): the Ascend C kernels built with the host
// implementation of the API, behind the same `aclrtlaunch_<kernel>` stubs CANN's ascendc_library
// generates for the NPU build, so the ACL backend loads and launches either one the same way.
//
// A CANN stub queues the kernel's device binary on an ACL stream through the runtime it is
// linked against. These stubs queue the kernel's host code on a stream of the ACL fake
// (libascendcl_fake.so), through the fake's `aclfakeLaunchHostKernel`, found among the libraries
// loaded in the process: the kernel then runs on the fake stream's worker, in stream order,
// against the fake's device memory (the fake translates each argument's device address to its
// bytes), and a broken hardware rule fails the stream like an AI Core exception, reported at
// the next synchronisation. Over anything but the fake they refuse to launch.
#include <dlfcn.h>
#include <link.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "kernel_operator.h"
#include "tiling.h"

namespace {

using HostKernel = int32_t (*)(void* ctx, void* const* args, const size_t* extents, size_t n, char* err,
                               size_t err_len);
using LaunchHostKernel = int32_t (*)(void* stream, const char* name, void* const* args, size_t n,
                                     HostKernel kernel, void* ctx, void (*release)(void*));

// `aclError` for a launch without the fake: ACL_ERROR_RT_FEATURE_NOT_SUPPORT.
constexpr uint32_t kNoRuntime = 207000;

int find_launch(dl_phdr_info* info, size_t, void* out) {
    if (!info->dlpi_name || !info->dlpi_name[0]) return 0;
    // RTLD_NOLOAD: only libraries already in the process; the handle is closed again at once.
    void* handle = dlopen(info->dlpi_name, RTLD_LAZY | RTLD_NOLOAD);
    if (!handle) return 0;
    void* symbol = dlsym(handle, "aclfakeLaunchHostKernel");
    dlclose(handle);
    if (!symbol) return 0;
    *static_cast<void**>(out) = symbol;
    return 1;
}

// The fake's launch entry, looked up at each launch: the fake may be loaded after this library.
LaunchHostKernel runtime_launch() {
    void* found = nullptr;
    dl_iterate_phdr(find_launch, &found);
    if (!found) {
        static bool told = false;
        if (!told) {
            told = true;
            std::fprintf(stderr,
                         "libascendc_kernels_host.so: the host build of the Ascend C kernels runs only "
                         "over the ACL fake (libascendcl_fake.so), which is not loaded; on an NPU, build "
                         "ascend-kernels with the `ascend-c` feature for libascendc_kernels.so\n");
        }
    }
    return reinterpret_cast<LaunchHostKernel>(found);
}

// One launch: the grid and the tiling (copied at the stub, as the CANN stub copies it into the
// launch arguments), and the host-build shim of the kernel (launch.cpp).
template <typename Tiling, typename Shim>
struct Launch {
    uint32_t block_dim;
    Tiling tiling;
    Shim shim;
};

template <typename Tiling, typename Shim, size_t... I>
int32_t run(void* ctx, void* const* args, const size_t* extents, size_t n, char* err, size_t err_len) {
    auto* l = static_cast<Launch<Tiling, Shim>*>(ctx);
    if (n != sizeof...(I)) {
        std::snprintf(err, err_len, "%zu arguments for a kernel of %zu", n, sizeof...(I));
        return 3;
    }
    auto& device = AscendC::device_extents();
    device.clear();
    for (size_t i = 0; i < n; i++) {
        const uint8_t* p = static_cast<const uint8_t*>(args[i]);
        if (p) device.push_back({p, p + extents[i]});
    }
    const int32_t status = l->shim(l->block_dim, static_cast<uint8_t*>(args[I])..., &l->tiling, err, err_len);
    device.clear();
    return status;
}

template <typename Tiling, typename Shim>
void release(void* ctx) {
    delete static_cast<Launch<Tiling, Shim>*>(ctx);
}

template <typename Tiling, typename Shim, size_t... I>
uint32_t submit(const char* name, uint32_t block_dim, void* stream, void* const* args, const Tiling* tiling,
                Shim shim, std::index_sequence<I...>) {
    LaunchHostKernel launch = runtime_launch();
    if (!launch) return kNoRuntime;
    if (!tiling) return 100000;  // ACL_ERROR_INVALID_PARAM
    auto* l = new Launch<Tiling, Shim>{block_dim, *tiling, shim};
    // The fake releases the context in every case, also when it refuses the launch.
    return static_cast<uint32_t>(
        launch(stream, name, args, sizeof...(I), &run<Tiling, Shim, I...>, l, &release<Tiling, Shim>));
}

}  // namespace

// The shims of launch.cpp, in this library too.
#define SHIM_DECL(NAME, TILING, ...)                                                               \
    extern "C" int32_t ascendc_host_##NAME(uint32_t, __VA_ARGS__, const TILING*, char*, size_t);

// `uint32_t aclrtlaunch_<kernel>(uint32_t blockDim, aclrtStream stream, void *gm..., Tiling
// *tiling)`: the prototype ascendc_library generates for a kernel whose last parameter is the
// tiling struct.
#define STUB(NAME, TILING, N, PARAMS, ARGS)                                                        \
    extern "C" uint32_t aclrtlaunch_##NAME(uint32_t blockDim, void* stream, PARAMS, TILING* tiling) { \
        void* args[] = {ARGS};                                                                     \
        return submit<TILING>(#NAME, blockDim, stream, args, tiling, &ascendc_host_##NAME,         \
                              std::make_index_sequence<N>{});                                      \
    }
#define P(...) __VA_ARGS__

#define KERNEL6(NAME, TILING)                                                                      \
    SHIM_DECL(NAME, TILING, uint8_t*, uint8_t*, uint8_t*, uint8_t*, uint8_t*, uint8_t*)           \
    STUB(NAME, TILING, 6, P(void* a0, void* a1, void* a2, void* a3, void* a4, void* a5),           \
         P(a0, a1, a2, a3, a4, a5))
#define KERNEL8(NAME, TILING)                                                                      \
    SHIM_DECL(NAME, TILING, uint8_t*, uint8_t*, uint8_t*, uint8_t*, uint8_t*, uint8_t*, uint8_t*, \
              uint8_t*)                                                                            \
    STUB(NAME, TILING, 8,                                                                          \
         P(void* a0, void* a1, void* a2, void* a3, void* a4, void* a5, void* a6, void* a7),        \
         P(a0, a1, a2, a3, a4, a5, a6, a7))
#define KERNEL5(NAME, TILING)                                                                      \
    SHIM_DECL(NAME, TILING, uint8_t*, uint8_t*, uint8_t*, uint8_t*, uint8_t*)                     \
    STUB(NAME, TILING, 5, P(void* a0, void* a1, void* a2, void* a3, void* a4), P(a0, a1, a2, a3, a4))
#define KERNEL2(NAME, TILING)                                                                      \
    SHIM_DECL(NAME, TILING, uint8_t*, uint8_t*)                                                    \
    STUB(NAME, TILING, 2, P(void* a0, void* a1), P(a0, a1))
#define KERNEL4(NAME, TILING)                                                                      \
    SHIM_DECL(NAME, TILING, uint8_t*, uint8_t*, uint8_t*, uint8_t*)                               \
    STUB(NAME, TILING, 4, P(void* a0, void* a1, void* a2, void* a3), P(a0, a1, a2, a3))

KERNEL6(reshape_and_cache_half, ArkReshapeAndCacheTiling)
KERNEL6(reshape_and_cache_float, ArkReshapeAndCacheTiling)
KERNEL8(paged_attention_half, ArkPagedAttentionTiling)
KERNEL8(paged_attention_float, ArkPagedAttentionTiling)
KERNEL2(paged_attention_merge_half, ArkPagedAttentionTiling)
KERNEL2(paged_attention_merge_float, ArkPagedAttentionTiling)
KERNEL8(paged_prefill_attention_half, ArkPrefillAttentionTiling)
KERNEL8(paged_prefill_attention_float, ArkPrefillAttentionTiling)
KERNEL5(rotary_embedding_half, ArkRopeTiling)
KERNEL5(rotary_embedding_float, ArkRopeTiling)
KERNEL4(copy_blocks_half, ArkCopyBlocksTiling)
KERNEL4(copy_blocks_float, ArkCopyBlocksTiling)
KERNEL4(rms_norm_half, ArkRmsNormTiling)
KERNEL4(rms_norm_float, ArkRmsNormTiling)
