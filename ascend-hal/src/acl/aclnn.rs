//! CANN's ACLNN operators (`libopapi.so`, with the tensor descriptors of `libnnopbase.so`),
//! loaded at run time like `libascendcl.so`: the vendor-tuned GEMM, SwiGLU and RMSNorm that
//! vllm-ascend reaches through torch_npu.
//!
//! Every ACLNN operator is two calls (`aclnn/acl_meta.h`, `aclnnop/aclnn_<op>.h`):
//! `aclnnXxxGetWorkspaceSize(inputs..., outputs..., &workspaceSize, &executor)` checks the
//! arguments and plans the work; `aclnnXxx(workspace, workspaceSize, executor, stream)` queues
//! it. [`Aclnn`] runs the protocol the one correct way: the workspace comes from the caller's
//! [`Allocator`] on the op's stream (stream-ordered reuse makes it free again for the next op
//! on that stream), the executor is used exactly once (a plan that cannot run is destroyed with
//! `aclDestroyAclOpExecutor`), and the descriptors ([`AclTensor`]) live until the launch is
//! queued. A non-zero `aclnnStatus` becomes [`Error::Aclnn`] with the status's name from
//! `aclnn/opdev/op_errno.h` and `aclGetRecentErrMsg()`.
//!
//! Loading searches, for each library: its override variable (`ASCEND_HAL_NNOPBASE_LIB`,
//! `ASCEND_HAL_OPAPI_LIB`), the directory the ACL runtime was loaded from (a toolkit keeps them
//! together in `lib64`), then the places the runtime itself is searched.
//!
//! Declarations are those of CANN 8.1.RC1 (`aarch64-linux/include/aclnn/acl_meta.h`,
//! `aclnn/opdev/op_errno.h`, and `opp/built-in/op_impl/ai_core/tbe/op_api/include/aclnnop/
//! aclnn_{matmul,swi_glu,rms_norm,add_rms_norm,embedding,add,argmax,topk,
//! fused_infer_attention_score_v2}.h`, `level2/aclnn_rope_with_sin_cos_cache.h`).

use std::ffi::c_void;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex, Weak};

use super::loader::{self, LoadOptions};
use super::result;
use super::runtime::Runtime;
use super::{AclBackend, AclDevice, AclStream};
use crate::alloc::Allocator;
use crate::error::{Error, Result};
use crate::{DType, DevicePtr};

/// `typedef int32_t aclnnStatus;`
pub type AclnnStatus = i32;
/// `ACLNN_SUCCESS`.
pub const ACLNN_SUCCESS: AclnnStatus = 0;

/// `aclDataType` values (`acl/acl_base.h`).
pub mod data_type {
    /// `ACL_FLOAT`.
    pub const ACL_FLOAT: i32 = 0;
    /// `ACL_FLOAT16`.
    pub const ACL_FLOAT16: i32 = 1;
    /// `ACL_INT8`.
    pub const ACL_INT8: i32 = 2;
    /// `ACL_INT32`.
    pub const ACL_INT32: i32 = 3;
    /// `ACL_UINT8`.
    pub const ACL_UINT8: i32 = 4;
    /// `ACL_INT64`.
    pub const ACL_INT64: i32 = 9;
    /// `ACL_BF16`.
    pub const ACL_BF16: i32 = 27;
    /// `ACL_INT4`: two values per byte, the element of even index in the low nibble.
    pub const ACL_INT4: i32 = 29;
}

/// `aclFormat::ACL_FORMAT_ND`: a plain row-major (or strided) tensor.
pub const ACL_FORMAT_ND: i32 = 2;

/// The `aclDataType` of a dtype.
pub fn acl_data_type(dtype: DType) -> i32 {
    use data_type::*;
    match dtype {
        DType::F32 => ACL_FLOAT,
        DType::F16 => ACL_FLOAT16,
        DType::BF16 => ACL_BF16,
        DType::I8 => ACL_INT8,
        DType::U8 => ACL_UINT8,
        DType::I32 => ACL_INT32,
        DType::I64 => ACL_INT64,
    }
}

/// `cubeMathType` of `aclnnMatmul`: how the cube unit may treat the inputs' precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum CubeMathType {
    /// `KEEP_DTYPE` (0): compute in the inputs' dtype (f32 stays f32 on Atlas A2).
    KeepDtype = 0,
    /// `ALLOW_FP32_DOWN_PRECISION` (1): f32 inputs may be computed in HF32.
    AllowFp32DownPrecision = 1,
    /// `USE_FP16` (2): compute in f16.
    UseFp16 = 2,
    /// `USE_HF32` (3): compute f32 inputs in HF32.
    UseHf32 = 3,
}

/// The `aclnnStatus` values of `aclnn/opdev/op_errno.h`: name and meaning.
pub fn describe_status(code: AclnnStatus) -> (&'static str, &'static str) {
    match code {
        0 => ("ACLNN_SUCCESS", "success"),
        161001 => (
            "ACLNN_ERR_PARAM_NULLPTR",
            "a required argument (tensor, output pointer) is NULL",
        ),
        161002 => (
            "ACLNN_ERR_PARAM_INVALID",
            "an argument is invalid: dtype, shape, format, value, workspace or executor",
        ),
        361001 => (
            "ACLNN_ERR_RUNTIME_ERROR",
            "an ACL runtime call inside the operator failed",
        ),
        561000 => ("ACLNN_ERR_INNER", "internal error of the operator library"),
        561001 => (
            "ACLNN_ERR_INNER_INFERSHAPE_ERROR",
            "the operator's shape inference failed",
        ),
        561002 => (
            "ACLNN_ERR_INNER_TILING_ERROR",
            "the operator's tiling failed for these shapes",
        ),
        561003 => (
            "ACLNN_ERR_INNER_FIND_KERNEL_ERROR",
            "no kernel binary for this SoC, dtype and shape: is the Ascend-cann-kernels package \
             for this SoC installed?",
        ),
        561101 => (
            "ACLNN_ERR_INNER_CREATE_EXECUTOR",
            "the executor could not be created",
        ),
        561102 => (
            "ACLNN_ERR_INNER_NOT_TRANS_EXECUTOR",
            "the executor was not transferred",
        ),
        561103 => ("ACLNN_ERR_INNER_NULLPTR", "internal NULL pointer"),
        561104 => (
            "ACLNN_ERR_INNER_WRONG_ATTR_INFO_SIZE",
            "wrong attribute size",
        ),
        561105 => ("ACLNN_ERR_INNER_KEY_CONFILICT", "key conflict"),
        561106 => (
            "ACLNN_ERR_INNER_INVALID_IMPL_MODE",
            "invalid implementation mode",
        ),
        561107 => (
            "ACLNN_ERR_INNER_OPP_PATH_NOT_FOUND",
            "the operator package path was not found: is ASCEND_OPP_PATH set (set_env.sh)?",
        ),
        561108 => (
            "ACLNN_ERR_INNER_LOAD_JSON_FAILED",
            "loading the operator's json failed",
        ),
        561109 => (
            "ACLNN_ERR_INNER_JSON_VALUE_NOT_FOUND",
            "a value is missing from the operator's json",
        ),
        561110 => (
            "ACLNN_ERR_INNER_JSON_FORMAT_INVALID",
            "the operator's json is malformed",
        ),
        561111 => (
            "ACLNN_ERR_INNER_JSON_DTYPE_INVALID",
            "a dtype in the operator's json is invalid",
        ),
        561112 => (
            "ACLNN_ERR_INNER_OPP_KERNEL_PKG_NOT_FOUND",
            "the operator kernel package was not found: install Ascend-cann-kernels for this SoC",
        ),
        561113 => (
            "ACLNN_ERR_INNER_OP_FILE_INVALID",
            "an operator file is invalid",
        ),
        561114 => (
            "ACLNN_ERR_INNER_ATTR_NUM_OUT_OF_BOUND",
            "too many attributes",
        ),
        561115 => (
            "ACLNN_ERR_INNER_ATTR_LEN_NOT_ENOUGH",
            "an attribute is too short",
        ),
        561116 => (
            "ACLNN_ERR_INNER_INPUT_NUM_IN_JSON_TOO_LARGE",
            "too many inputs in the operator's json",
        ),
        561117 => (
            "ACLNN_ERR_INNER_INPUT_JSON_IS_NULL",
            "the operator's input json is empty",
        ),
        561118 => (
            "ACLNN_ERR_INNER_STATIC_WORKSPACE_INVALID",
            "invalid static workspace",
        ),
        561119 => (
            "ACLNN_ERR_INNER_STATIC_BLOCK_DIM_INVALID",
            "invalid static block dim",
        ),
        _ => ("(unknown aclnnStatus)", "a status this crate does not know"),
    }
}

/// The raw declarations.
mod sys {
    use std::ffi::{c_char, c_int, c_void};

    use super::AclnnStatus;

    /// `aclTensor *aclCreateTensor(const int64_t *viewDims, uint64_t viewDimsNum, aclDataType
    /// dataType, const int64_t *stride, int64_t offset, aclFormat format, const int64_t
    /// *storageDims, uint64_t storageDimsNum, void *tensorData)`.
    pub type CreateTensor = unsafe extern "C" fn(
        *const i64,
        u64,
        i32,
        *const i64,
        i64,
        i32,
        *const i64,
        u64,
        *mut c_void,
    ) -> *mut c_void;
    /// `aclnnStatus aclDestroyTensor(const aclTensor *tensor)`.
    pub type DestroyTensor = unsafe extern "C" fn(*const c_void) -> AclnnStatus;
    /// `aclScalar *aclCreateScalar(void *value, aclDataType dataType)`.
    pub type CreateScalar = unsafe extern "C" fn(*mut c_void, i32) -> *mut c_void;
    /// `aclnnStatus aclDestroyScalar(const aclScalar *scalar)`.
    pub type DestroyScalar = unsafe extern "C" fn(*const c_void) -> AclnnStatus;
    /// `aclIntArray *aclCreateIntArray(const int64_t *value, uint64_t size)`.
    pub type CreateIntArray = unsafe extern "C" fn(*const i64, u64) -> *mut c_void;
    /// `aclnnStatus aclDestroyIntArray(const aclIntArray *array)`.
    pub type DestroyIntArray = unsafe extern "C" fn(*const c_void) -> AclnnStatus;
    /// `aclTensorList *aclCreateTensorList(const aclTensor *const *value, uint64_t size)`.
    pub type CreateTensorList = unsafe extern "C" fn(*const *const c_void, u64) -> *mut c_void;
    /// `aclnnStatus aclDestroyTensorList(const aclTensorList *array)` (destroys its tensors too).
    pub type DestroyTensorList = unsafe extern "C" fn(*const c_void) -> AclnnStatus;
    /// `aclnnStatus aclDestroyAclOpExecutor(aclOpExecutor *executor)`.
    pub type DestroyExecutor = unsafe extern "C" fn(*mut c_void) -> AclnnStatus;
    /// `aclnnStatus aclnnXxx(void *workspace, uint64_t workspaceSize, aclOpExecutor *executor,
    /// aclrtStream stream)`: the second call of every operator.
    pub type Run = unsafe extern "C" fn(*mut c_void, u64, *mut c_void, *mut c_void) -> AclnnStatus;
    /// `aclnnMatmulGetWorkspaceSize(const aclTensor *self, const aclTensor *mat2, aclTensor
    /// *out, int8_t cubeMathType, uint64_t *workspaceSize, aclOpExecutor **executor)`.
    pub type MatmulGetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        *mut c_void,
        i8,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnWeightQuantBatchMatmulV2GetWorkspaceSize(const aclTensor *x, const aclTensor
    /// *weight, const aclTensor *antiquantScale, const aclTensor *antiquantOffsetOptional, const
    /// aclTensor *quantScaleOptional, const aclTensor *quantOffsetOptional, const aclTensor
    /// *biasOptional, int antiquantGroupSize, const aclTensor *y, uint64_t *workspaceSize,
    /// aclOpExecutor **executor)`.
    pub type WeightQuantBatchMatmulV2GetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        c_int,
        *const c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnDynamicQuantGetWorkspaceSize(const aclTensor* x, const aclTensor*
    /// smoothScalesOptional, const aclTensor* yOut, const aclTensor* scaleOut, uint64_t*
    /// workspaceSize, aclOpExecutor** executor)`.
    pub type DynamicQuantGetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnQuantMatmulV4GetWorkspaceSize(const aclTensor* x1, const aclTensor* x2, const
    /// aclTensor* scale, const aclTensor* offset, const aclTensor* pertokenScaleOptional, const
    /// aclTensor* bias, bool transposeX1, bool transposeX2, const aclTensor* out, uint64_t*
    /// workspaceSize, aclOpExecutor** executor)`.
    pub type QuantMatmulV4GetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        bool,
        bool,
        *const c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnSwiGluGetWorkspaceSize(const aclTensor *x, int64_t dim, const aclTensor *out,
    /// uint64_t *workspaceSize, aclOpExecutor **executor)`.
    pub type SwiGluGetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        i64,
        *const c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnRmsNormGetWorkspaceSize(const aclTensor *x, const aclTensor *gamma, double
    /// epsilon, const aclTensor *yOut, const aclTensor *rstdOut, uint64_t *workspaceSize,
    /// aclOpExecutor **executor)`.
    pub type RmsNormGetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        f64,
        *const c_void,
        *const c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnEmbeddingGetWorkspaceSize(const aclTensor *weight, const aclTensor *indices, const
    /// aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor)`.
    pub type EmbeddingGetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        *const c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnAddGetWorkspaceSize(const aclTensor *self, const aclTensor *other, const aclScalar
    /// *alpha, aclTensor *out, uint64_t *workspaceSize, aclOpExecutor **executor)`.
    pub type AddGetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        *const c_void,
        *mut c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnArgMaxGetWorkspaceSize(const aclTensor *self, int64_t dim, bool keepdim, aclTensor
    /// *out, uint64_t *workspaceSize, aclOpExecutor **executor)`.
    pub type ArgMaxGetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        i64,
        bool,
        *mut c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnTopkGetWorkspaceSize(const aclTensor *self, int64_t k, int64_t dim, bool largest,
    /// bool sorted, aclTensor *valuesOut, aclTensor *indicesOut, uint64_t *workspaceSize,
    /// aclOpExecutor **executor)`.
    pub type TopkGetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        i64,
        i64,
        bool,
        bool,
        *mut c_void,
        *mut c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnFusedInferAttentionScoreV2GetWorkspaceSize(const aclTensor *query, const
    /// aclTensorList *key, const aclTensorList *value, const aclTensor *pseShiftOptional, const
    /// aclTensor *attenMaskOptional, const aclIntArray *actualSeqLengthsOptional, const
    /// aclIntArray *actualSeqLengthsKvOptional, const aclTensor *deqScale1Optional, const
    /// aclTensor *quantScale1Optional, const aclTensor *deqScale2Optional, const aclTensor
    /// *quantScale2Optional, const aclTensor *quantOffset2Optional, const aclTensor
    /// *antiquantScaleOptional, const aclTensor *antiquantOffsetOptional, const aclTensor
    /// *blockTableOptional, const aclTensor *queryPaddingSizeOptional, const aclTensor
    /// *kvPaddingSizeOptional, const aclTensor *keyAntiquantScaleOptional, const aclTensor
    /// *keyAntiquantOffsetOptional, const aclTensor *valueAntiquantScaleOptional, const
    /// aclTensor *valueAntiquantOffsetOptional, const aclTensor *keySharedPrefixOptional, const
    /// aclTensor *valueSharedPrefixOptional, const aclIntArray *actualSharedPrefixLenOptional,
    /// int64_t numHeads, double scaleValue, int64_t preTokens, int64_t nextTokens, char
    /// *inputLayout, int64_t numKeyValueHeads, int64_t sparseMode, int64_t innerPrecise, int64_t
    /// blockSize, int64_t antiquantMode, bool softmaxLseFlag, int64_t keyAntiquantMode, int64_t
    /// valueAntiquantMode, const aclTensor *attentionOut, const aclTensor *softmaxLse, uint64_t
    /// *workspaceSize, aclOpExecutor **executor)`.
    pub type FusedInferAttentionScoreV2GetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        i64,
        f64,
        i64,
        i64,
        *mut c_char,
        i64,
        i64,
        i64,
        i64,
        i64,
        bool,
        i64,
        i64,
        *const c_void,
        *const c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnRopeWithSinCosCacheGetWorkspaceSize(const aclTensor *positions, const aclTensor
    /// *queryIn, const aclTensor *keyIn, const aclTensor *cosSinCache, const aclIntArray
    /// *mropeSection, int64_t headSize, bool isNeoxStyle, aclTensor *queryOut, aclTensor
    /// *keyOut, uint64_t *workspaceSize, aclOpExecutor **executor)`.
    pub type RopeWithSinCosCacheGetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        *const c_void,
        i64,
        bool,
        *mut c_void,
        *mut c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
    /// `aclnnAddRmsNormGetWorkspaceSize(const aclTensor *x1, const aclTensor *x2, const
    /// aclTensor *gamma, double epsilon, const aclTensor *yOut, const aclTensor *rstdOut, const
    /// aclTensor *xOut, uint64_t *workspaceSize, aclOpExecutor **executor)`.
    pub type AddRmsNormGetWorkspaceSize = unsafe extern "C" fn(
        *const c_void,
        *const c_void,
        *const c_void,
        f64,
        *const c_void,
        *const c_void,
        *const c_void,
        *mut u64,
        *mut *mut c_void,
    ) -> AclnnStatus;
}

/// One operator: its planning call and its launch call, if the library has them.
struct Op<G> {
    get_workspace_size: Option<G>,
    run: Option<sys::Run>,
}

/// The loaded ACLNN libraries. One per process while any handle lives (see [`Aclnn::load`]).
pub struct Aclnn {
    rt: Arc<Runtime>,
    opapi: &'static libloading::Library,
    nnopbase_path: String,
    opapi_path: String,
    create_tensor: sys::CreateTensor,
    destroy_tensor: sys::DestroyTensor,
    destroy_executor: Option<sys::DestroyExecutor>,
    create_scalar: Option<sys::CreateScalar>,
    destroy_scalar: Option<sys::DestroyScalar>,
    create_int_array: Option<sys::CreateIntArray>,
    destroy_int_array: Option<sys::DestroyIntArray>,
    create_tensor_list: Option<sys::CreateTensorList>,
    destroy_tensor_list: Option<sys::DestroyTensorList>,
    matmul: Op<sys::MatmulGetWorkspaceSize>,
    swi_glu: Op<sys::SwiGluGetWorkspaceSize>,
    rms_norm: Op<sys::RmsNormGetWorkspaceSize>,
    add_rms_norm: Op<sys::AddRmsNormGetWorkspaceSize>,
    embedding: Op<sys::EmbeddingGetWorkspaceSize>,
    add: Op<sys::AddGetWorkspaceSize>,
    arg_max: Op<sys::ArgMaxGetWorkspaceSize>,
    topk: Op<sys::TopkGetWorkspaceSize>,
    fused_attention: Op<sys::FusedInferAttentionScoreV2GetWorkspaceSize>,
    rope_sin_cos: Op<sys::RopeWithSinCosCacheGetWorkspaceSize>,
    weight_quant_matmul: Op<sys::WeightQuantBatchMatmulV2GetWorkspaceSize>,
    dynamic_quant: Op<sys::DynamicQuantGetWorkspaceSize>,
    quant_matmul_v4: Op<sys::QuantMatmulV4GetWorkspaceSize>,
}

impl std::fmt::Debug for Aclnn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aclnn")
            .field("nnopbase", &self.nnopbase_path)
            .field("opapi", &self.opapi_path)
            .finish_non_exhaustive()
    }
}

/// The library file names and their override variables.
pub const NNOPBASE: (&str, &str) = ("libnnopbase.so", "ASCEND_HAL_NNOPBASE_LIB");
/// See [`NNOPBASE`].
pub const OPAPI: (&str, &str) = ("libopapi.so", "ASCEND_HAL_OPAPI_LIB");

static CURRENT: Mutex<Weak<Aclnn>> = Mutex::new(Weak::new());

pub(super) fn open_library(
    (library, variable): (&'static str, &'static str),
    beside: &Path,
) -> Result<(&'static libloading::Library, String)> {
    let env = |k: &str| std::env::var(k).ok();
    let options = LoadOptions {
        path: None,
        search: true,
    };
    let mut candidates = loader::candidates_for(library, variable, &options, &env, Path::new("/"));
    // After the override (if set), next to the runtime that is loaded.
    let at = usize::from(candidates.first().is_some_and(|c| c.origin == variable));
    if let Some(dir) = beside.parent().filter(|d| !d.as_os_str().is_empty()) {
        candidates.insert(
            at,
            loader::Candidate::file("beside the ACL runtime", dir.join(library)),
        );
    }
    loader::open(&candidates).map_err(|tried| Error::OpLibraryNotFound {
        library,
        variable,
        tried,
    })
}

/// Looks `name` up in `lib`.
///
/// # Safety
/// `F` is the C prototype of `name` in the CANN headers.
unsafe fn symbol<F: Copy>(lib: &'static libloading::Library, name: &str) -> Option<F> {
    // SAFETY: the caller's contract on `F`; `lib` stays loaded for the process.
    unsafe { lib.get::<F>(name.as_bytes()) }.ok().map(|s| *s)
}

impl Aclnn {
    /// The ACLNN libraries of `backend`'s runtime, loaded on first use (and kept loaded, like
    /// the runtime). Errors: [`Error::OpLibraryNotFound`] listing every place tried;
    /// [`Error::MissingSymbol`] when `libnnopbase.so` lacks the tensor calls.
    pub fn load(backend: &AclBackend) -> Result<Arc<Aclnn>> {
        Self::load_with(backend.runtime())
    }

    /// As [`load`](Self::load), for the runtime `device` belongs to.
    pub fn load_for(device: &AclDevice) -> Result<Arc<Aclnn>> {
        Self::load_with(&device.inner.rt)
    }

    /// As [`load`](Self::load), for the runtime a live [`AclBackend`] of this process holds;
    /// [`Error::BackendUnavailable`] when there is none.
    pub fn load_current() -> Result<Arc<Aclnn>> {
        let rt = Runtime::current().ok_or_else(|| {
            Error::BackendUnavailable(
                "no ACL runtime is loaded: create an AclBackend before the ACLNN operators".into(),
            )
        })?;
        Self::load_with(&rt)
    }

    fn load_with(rt: &Arc<Runtime>) -> Result<Arc<Aclnn>> {
        let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = current.upgrade() {
            if Arc::ptr_eq(&a.rt, rt) {
                return Ok(a);
            }
        }
        let beside = Path::new(&rt.path);
        let (nnopbase, nnopbase_path) = open_library(NNOPBASE, beside)?;
        let (opapi, opapi_path) = open_library(OPAPI, beside)?;
        let missing = |symbol: &'static str| Error::MissingSymbol {
            library: nnopbase_path.clone(),
            symbol,
            needs: "the ACLNN tensor API (CANN 7.0 or later)",
        };
        macro_rules! op {
            ($get:literal, $run:literal) => {
                Op {
                    // SAFETY: the prototypes in `sys`, from the operator's header.
                    get_workspace_size: unsafe { symbol(opapi, $get) },
                    // SAFETY: as above; every `aclnnXxx` launch call has this prototype.
                    run: unsafe { symbol(opapi, $run) },
                }
            };
        }
        let aclnn = Arc::new(Aclnn {
            rt: Arc::clone(rt),
            // SAFETY: the prototypes in `sys`, from `aclnn/acl_meta.h`.
            create_tensor: unsafe { symbol(nnopbase, "aclCreateTensor") }
                .ok_or_else(|| missing("aclCreateTensor"))?,
            // SAFETY: as above.
            destroy_tensor: unsafe { symbol(nnopbase, "aclDestroyTensor") }
                .ok_or_else(|| missing("aclDestroyTensor"))?,
            // SAFETY: as above.
            destroy_executor: unsafe { symbol(nnopbase, "aclDestroyAclOpExecutor") },
            // SAFETY: as above.
            create_scalar: unsafe { symbol(nnopbase, "aclCreateScalar") },
            // SAFETY: as above.
            destroy_scalar: unsafe { symbol(nnopbase, "aclDestroyScalar") },
            // SAFETY: as above.
            create_int_array: unsafe { symbol(nnopbase, "aclCreateIntArray") },
            // SAFETY: as above.
            destroy_int_array: unsafe { symbol(nnopbase, "aclDestroyIntArray") },
            // SAFETY: as above.
            create_tensor_list: unsafe { symbol(nnopbase, "aclCreateTensorList") },
            // SAFETY: as above.
            destroy_tensor_list: unsafe { symbol(nnopbase, "aclDestroyTensorList") },
            matmul: op!("aclnnMatmulGetWorkspaceSize", "aclnnMatmul"),
            swi_glu: op!("aclnnSwiGluGetWorkspaceSize", "aclnnSwiGlu"),
            rms_norm: op!("aclnnRmsNormGetWorkspaceSize", "aclnnRmsNorm"),
            add_rms_norm: op!("aclnnAddRmsNormGetWorkspaceSize", "aclnnAddRmsNorm"),
            embedding: op!("aclnnEmbeddingGetWorkspaceSize", "aclnnEmbedding"),
            add: op!("aclnnAddGetWorkspaceSize", "aclnnAdd"),
            arg_max: op!("aclnnArgMaxGetWorkspaceSize", "aclnnArgMax"),
            topk: op!("aclnnTopkGetWorkspaceSize", "aclnnTopk"),
            fused_attention: op!(
                "aclnnFusedInferAttentionScoreV2GetWorkspaceSize",
                "aclnnFusedInferAttentionScoreV2"
            ),
            rope_sin_cos: op!(
                "aclnnRopeWithSinCosCacheGetWorkspaceSize",
                "aclnnRopeWithSinCosCache"
            ),
            weight_quant_matmul: op!(
                "aclnnWeightQuantBatchMatmulV2GetWorkspaceSize",
                "aclnnWeightQuantBatchMatmulV2"
            ),
            dynamic_quant: op!("aclnnDynamicQuantGetWorkspaceSize", "aclnnDynamicQuant"),
            quant_matmul_v4: op!("aclnnQuantMatmulV4GetWorkspaceSize", "aclnnQuantMatmulV4"),
            opapi,
            nnopbase_path,
            opapi_path,
        });
        *current = Arc::downgrade(&aclnn);
        Ok(aclnn)
    }

    /// Where `libnnopbase.so` and `libopapi.so` were loaded from.
    pub fn library_paths(&self) -> (&str, &str) {
        (&self.nnopbase_path, &self.opapi_path)
    }

    /// Which of the operators this crate binds the library has (`aclnnMatmul`, ...).
    pub fn operators(&self) -> Vec<&'static str> {
        [
            ("aclnnMatmul", self.matmul.available()),
            ("aclnnSwiGlu", self.swi_glu.available()),
            ("aclnnRmsNorm", self.rms_norm.available()),
            ("aclnnAddRmsNorm", self.add_rms_norm.available()),
            ("aclnnEmbedding", self.embedding.available()),
            (
                "aclnnAdd",
                self.add.available() && self.create_scalar.is_some(),
            ),
            ("aclnnArgMax", self.arg_max.available()),
            ("aclnnTopk", self.topk.available()),
            (
                "aclnnFusedInferAttentionScoreV2",
                self.fused_attention.available()
                    && self.create_int_array.is_some()
                    && self.destroy_int_array.is_some()
                    && self.create_tensor_list.is_some()
                    && self.destroy_tensor_list.is_some(),
            ),
            ("aclnnRopeWithSinCosCache", self.rope_sin_cos.available()),
            (
                "aclnnWeightQuantBatchMatmulV2",
                self.weight_quant_matmul.available(),
            ),
            ("aclnnDynamicQuant", self.dynamic_quant.available()),
            ("aclnnQuantMatmulV4", self.quant_matmul_v4.available()),
        ]
        .into_iter()
        .filter_map(|(n, a)| a.then_some(n))
        .collect()
    }

    /// A tensor descriptor (`aclCreateTensor`): `dims` and `strides` (in elements) of the
    /// view, `offset` (elements) from `data`, over storage of `storage` dims. Describing
    /// memory does not touch it; the operator calls that read or write it are `unsafe`.
    pub fn tensor(
        &self,
        dtype: DType,
        dims: &[i64],
        strides: &[i64],
        offset: i64,
        storage: &[i64],
        data: DevicePtr,
    ) -> Result<AclTensor<'_>> {
        self.tensor_of(acl_data_type(dtype), dims, strides, offset, storage, data)
    }

    /// As [`tensor`](Self::tensor), for an `aclDataType` with no [`DType`] (the packed
    /// [`data_type::ACL_INT4`] of quantized weights): `strides` and `offset` count its elements.
    pub fn tensor_of(
        &self,
        acl_dtype: i32,
        dims: &[i64],
        strides: &[i64],
        offset: i64,
        storage: &[i64],
        data: DevicePtr,
    ) -> Result<AclTensor<'_>> {
        if dims.len() != strides.len() {
            return Err(Error::InvalidArgument {
                op: "aclCreateTensor",
                message: format!("{} dims but {} strides", dims.len(), strides.len()),
            });
        }
        // SAFETY: the arrays are valid for their lengths during the call, which copies them.
        let raw = unsafe {
            (self.create_tensor)(
                dims.as_ptr(),
                dims.len() as u64,
                acl_dtype,
                strides.as_ptr(),
                offset,
                ACL_FORMAT_ND,
                storage.as_ptr(),
                storage.len() as u64,
                data.0 as usize as *mut c_void,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| Error::Aclnn {
            function: "aclCreateTensor",
            code: 161002,
            name: "NULL",
            meaning: "aclCreateTensor returned NULL (invalid dims, strides or dtype)",
            recent: result::recent_message(&self.rt.api),
        })?;
        Ok(AclTensor { raw, aclnn: self })
    }

    /// A scalar descriptor (`aclCreateScalar`) holding `value` as f32 (`ACL_FLOAT`); the call
    /// copies the value.
    pub fn scalar_f32(&self, value: f32) -> Result<AclScalar<'_>> {
        let (create, destroy) = match (self.create_scalar, self.destroy_scalar) {
            (Some(c), Some(d)) => (c, d),
            _ => {
                return Err(Error::MissingSymbol {
                    library: self.nnopbase_path.clone(),
                    symbol: "aclCreateScalar",
                    needs: "the ACLNN scalar API (CANN 7.0 or later)",
                })
            }
        };
        let mut v = value;
        // SAFETY: `v` is a live f32 for the call, which copies it (acl_meta.h).
        let raw = unsafe { create((&mut v as *mut f32).cast(), data_type::ACL_FLOAT) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::Aclnn {
            function: "aclCreateScalar",
            code: 161002,
            name: "NULL",
            meaning: "aclCreateScalar returned NULL",
            recent: result::recent_message(&self.rt.api),
        })?;
        Ok(AclScalar {
            raw,
            destroy,
            _aclnn: std::marker::PhantomData,
        })
    }

    /// A contiguous row-major tensor of `dims` at `data`.
    pub fn contiguous(&self, dtype: DType, dims: &[i64], data: DevicePtr) -> Result<AclTensor<'_>> {
        let mut strides = vec![1i64; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1]
                .checked_mul(dims[i + 1].max(1))
                .ok_or_else(|| Error::InvalidArgument {
                    op: "aclCreateTensor",
                    message: format!("dims {dims:?} overflow the strides of a contiguous tensor"),
                })?;
        }
        self.tensor(dtype, dims, &strides, 0, dims, data)
    }

    /// `Ok` for `ACLNN_SUCCESS`, else [`Error::Aclnn`] naming `function` and the status, with
    /// `aclGetRecentErrMsg()`: for callers of ACLNN functions this crate does not bind.
    pub fn check_status(&self, function: &'static str, code: AclnnStatus) -> Result<()> {
        if code == ACLNN_SUCCESS {
            return Ok(());
        }
        let (name, meaning) = describe_status(code);
        Err(Error::Aclnn {
            function,
            code,
            name,
            meaning,
            recent: result::recent_message(&self.rt.api),
        })
    }

    /// The two-phase protocol: plan with `plan(&mut workspaceSize, &mut executor)`, take the
    /// workspace from `workspace` on `stream`, launch with `run`, once.
    ///
    /// # Safety
    /// `plan` calls the operator's planning function with descriptors that are alive, and the
    /// memory they describe stays valid until the queued work completes.
    unsafe fn two_phase(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        (get_name, run_name): (&'static str, &'static str),
        run: Option<sys::Run>,
        plan: impl FnOnce(*mut u64, *mut *mut c_void) -> Option<AclnnStatus>,
    ) -> Result<()> {
        let missing = |symbol| Error::MissingSymbol {
            library: self.opapi_path.clone(),
            symbol,
            needs: "the ACLNN operator API of CANN 8.0 or later",
        };
        let run = run.ok_or_else(|| missing(run_name))?;
        stream.bind()?;
        let (mut size, mut executor) = (0u64, ptr::null_mut());
        let code = plan(&mut size, &mut executor).ok_or_else(|| missing(get_name))?;
        self.check_status(get_name, code)?;
        if executor.is_null() {
            return Err(Error::Aclnn {
                function: get_name,
                code: 561101,
                name: "ACLNN_ERR_INNER_CREATE_EXECUTOR",
                meaning: "it returned success but no executor",
                recent: String::new(),
            });
        }
        // A size past the address space is refused by the allocator as out of memory.
        let block = match usize::try_from(size).unwrap_or(usize::MAX) {
            0 => None,
            bytes => Some(workspace.allocate(bytes, stream)),
        };
        let block = match block.transpose() {
            Ok(b) => b,
            Err(e) => {
                if let Some(destroy) = self.destroy_executor {
                    // SAFETY: the executor was created by the planning call and never run.
                    let _ = unsafe { destroy(executor) };
                }
                return Err(e);
            }
        };
        let ws = block
            .as_ref()
            .map_or(ptr::null_mut(), |b| b.ptr().0 as usize as *mut c_void);
        // SAFETY: the executor is fresh and used once (the launch call frees it); the workspace
        // holds `size` bytes of this device's memory, and returns to its allocator below, which
        // reuses it only in stream order after this launch; the stream handle is live.
        let code = unsafe { run(ws, size, executor, stream.raw()) };
        self.check_status(run_name, code)?;
        stream.note(run_name);
        drop(block);
        Ok(())
    }

    /// The C function `name` of `libopapi.so`, for an operator this crate does not bind.
    ///
    /// # Safety
    /// `F` is the function's prototype in its `aclnnop/aclnn_<op>.h` header.
    pub unsafe fn operator_symbol<F: Copy>(&self, name: &str) -> Option<F> {
        // SAFETY: the caller's contract.
        unsafe { symbol(self.opapi, name) }
    }

    /// Runs any ACLNN operator through the two-phase protocol: `plan(&mut workspaceSize, &mut
    /// executor)` calls its `planner` (`aclnnXxxGetWorkspaceSize`, which the caller resolved
    /// with [`operator_symbol`](Self::operator_symbol)) with its tensors and attributes; then
    /// the workspace comes from `workspace` on `stream`, and `runner` (`aclnnXxx`) queues the
    /// work, once.
    ///
    /// # Safety
    /// `plan` calls `planner` correctly, with live descriptors; the memory they describe is on
    /// `stream`'s device and stays valid until the queued work completes.
    pub unsafe fn launch(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        planner: &'static str,
        runner: &'static str,
        plan: impl FnOnce(*mut u64, *mut *mut c_void) -> AclnnStatus,
    ) -> Result<()> {
        // SAFETY: every `aclnnXxx` launch call has the `Run` prototype.
        let run = unsafe { symbol::<sys::Run>(self.opapi, runner) };
        // SAFETY: the caller's contract.
        unsafe {
            self.two_phase(stream, workspace, (planner, runner), run, |s, e| {
                Some(plan(s, e))
            })
        }
    }

    /// `out = self · mat2` (`aclnnMatmul`): `a` is `[m, k]`, `b` `[k, n]` (a transposed view
    /// of an `[n, k]` weight through strides is how a linear layer passes its weight), `out`
    /// `[m, n]`.
    ///
    /// # Safety
    /// The tensors describe memory of `stream`'s device that stays valid, and is not written by
    /// other work, until the queued work completes.
    pub unsafe fn matmul(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        a: &AclTensor<'_>,
        b: &AclTensor<'_>,
        out: &AclTensor<'_>,
        math: CubeMathType,
    ) -> Result<()> {
        let get = self.matmul.get_workspace_size;
        // SAFETY: the caller's contract; the descriptors are alive for the call.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                ("aclnnMatmulGetWorkspaceSize", "aclnnMatmul"),
                self.matmul.run,
                |size, exec| {
                    get.map(|f| {
                        f(
                            a.raw(),
                            b.raw(),
                            out.raw() as *mut c_void,
                            math as i8,
                            size,
                            exec,
                        )
                    })
                },
            )
        }
    }

    /// `out = silu(x₁) · x₂` with `x` split in two halves along `dim` (`aclnnSwiGlu`).
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    pub unsafe fn swi_glu(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        x: &AclTensor<'_>,
        dim: i64,
        out: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.swi_glu.get_workspace_size;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                ("aclnnSwiGluGetWorkspaceSize", "aclnnSwiGlu"),
                self.swi_glu.run,
                |size, exec| get.map(|f| f(x.raw(), dim, out.raw(), size, exec)),
            )
        }
    }

    /// `y = x / sqrt(mean(x²) + eps) · gamma` over `gamma`'s trailing dims, with the
    /// reciprocal root (f32, the leading dims and ones) in `rstd` (`aclnnRmsNorm`).
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rms_norm(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        x: &AclTensor<'_>,
        gamma: &AclTensor<'_>,
        eps: f64,
        y: &AclTensor<'_>,
        rstd: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.rms_norm.get_workspace_size;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                ("aclnnRmsNormGetWorkspaceSize", "aclnnRmsNorm"),
                self.rms_norm.run,
                |size, exec| {
                    get.map(|f| f(x.raw(), gamma.raw(), eps, y.raw(), rstd.raw(), size, exec))
                },
            )
        }
    }

    /// `x_out = x1 + x2`, then RMSNorm of it into `y` (`aclnnAddRmsNorm`).
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn add_rms_norm(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        x1: &AclTensor<'_>,
        x2: &AclTensor<'_>,
        gamma: &AclTensor<'_>,
        eps: f64,
        y: &AclTensor<'_>,
        rstd: &AclTensor<'_>,
        x_out: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.add_rms_norm.get_workspace_size;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                ("aclnnAddRmsNormGetWorkspaceSize", "aclnnAddRmsNorm"),
                self.add_rms_norm.run,
                |size, exec| {
                    get.map(|f| {
                        f(
                            x1.raw(),
                            x2.raw(),
                            gamma.raw(),
                            eps,
                            y.raw(),
                            rstd.raw(),
                            x_out.raw(),
                            size,
                            exec,
                        )
                    })
                },
            )
        }
    }
}

impl Aclnn {
    /// `out = weight[indices]` along dim 0 (`aclnnEmbedding`): `weight` `[vocab, hidden]`,
    /// `indices` `[n]` (int32 or int64), `out` `[n, hidden]`.
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    pub unsafe fn embedding(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        weight: &AclTensor<'_>,
        indices: &AclTensor<'_>,
        out: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.embedding.get_workspace_size;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                ("aclnnEmbeddingGetWorkspaceSize", "aclnnEmbedding"),
                self.embedding.run,
                |size, exec| get.map(|f| f(weight.raw(), indices.raw(), out.raw(), size, exec)),
            )
        }
    }

    /// `out = self + alpha · other`, with broadcasting (`aclnnAdd`).
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn add(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        a: &AclTensor<'_>,
        b: &AclTensor<'_>,
        alpha: &AclScalar<'_>,
        out: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.add.get_workspace_size;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                ("aclnnAddGetWorkspaceSize", "aclnnAdd"),
                self.add.run,
                |size, exec| {
                    get.map(|f| {
                        f(
                            a.raw(),
                            b.raw(),
                            alpha.raw.as_ptr(),
                            out.raw() as *mut c_void,
                            size,
                            exec,
                        )
                    })
                },
            )
        }
    }

    /// The indices of the largest values along `dim` (`aclnnArgMax`), into an int32 or int64
    /// `out`.
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    pub unsafe fn arg_max(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        x: &AclTensor<'_>,
        dim: i64,
        keepdim: bool,
        out: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.arg_max.get_workspace_size;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                ("aclnnArgMaxGetWorkspaceSize", "aclnnArgMax"),
                self.arg_max.run,
                |size, exec| {
                    get.map(|f| f(x.raw(), dim, keepdim, out.raw() as *mut c_void, size, exec))
                },
            )
        }
    }

    /// The `k` largest (or smallest) values along `dim` and their int64 indices
    /// (`aclnnTopk`).
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn topk(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        x: &AclTensor<'_>,
        k: i64,
        dim: i64,
        largest: bool,
        sorted: bool,
        values: &AclTensor<'_>,
        indices: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.topk.get_workspace_size;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                ("aclnnTopkGetWorkspaceSize", "aclnnTopk"),
                self.topk.run,
                |size, exec| {
                    get.map(|f| {
                        f(
                            x.raw(),
                            k,
                            dim,
                            largest,
                            sorted,
                            values.raw() as *mut c_void,
                            indices.raw() as *mut c_void,
                            size,
                            exec,
                        )
                    })
                },
            )
        }
    }
}

impl Aclnn {
    /// An `aclIntArray` holding `values` (`aclCreateIntArray`, which copies them): how ACLNN
    /// operators take host-side integer lists such as sequence lengths.
    pub fn int_array(&self, values: &[i64]) -> Result<AclIntArray<'_>> {
        let (create, destroy) = match (self.create_int_array, self.destroy_int_array) {
            (Some(c), Some(d)) => (c, d),
            _ => {
                return Err(Error::MissingSymbol {
                    library: self.nnopbase_path.clone(),
                    symbol: "aclCreateIntArray",
                    needs: "the ACLNN array API (CANN 7.0 or later)",
                })
            }
        };
        // SAFETY: `values` is valid for its length during the call, which copies it.
        let raw = unsafe { create(values.as_ptr(), values.len() as u64) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::Aclnn {
            function: "aclCreateIntArray",
            code: 161002,
            name: "NULL",
            meaning: "aclCreateIntArray returned NULL",
            recent: result::recent_message(&self.rt.api),
        })?;
        Ok(AclIntArray {
            raw,
            destroy,
            _aclnn: std::marker::PhantomData,
        })
    }

    /// An `aclTensorList` of `tensors` (`aclCreateTensorList`). The list owns them from here:
    /// `aclDestroyTensorList` destroys its tensors too, as `acl_meta.h`'s documentation says.
    pub fn tensor_list<'a>(&'a self, tensors: Vec<AclTensor<'a>>) -> Result<AclTensorList<'a>> {
        let (create, destroy) = match (self.create_tensor_list, self.destroy_tensor_list) {
            (Some(c), Some(d)) => (c, d),
            _ => {
                return Err(Error::MissingSymbol {
                    library: self.nnopbase_path.clone(),
                    symbol: "aclCreateTensorList",
                    needs: "the ACLNN tensor-list API (CANN 7.0 or later)",
                })
            }
        };
        let raws: Vec<*const c_void> = tensors.iter().map(AclTensor::raw).collect();
        // SAFETY: `raws` holds live descriptors for the call.
        let raw = unsafe { create(raws.as_ptr(), raws.len() as u64) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::Aclnn {
            function: "aclCreateTensorList",
            code: 161002,
            name: "NULL",
            meaning: "aclCreateTensorList returned NULL",
            recent: result::recent_message(&self.rt.api),
        })?;
        // The list destroys the tensors; they must not be destroyed again.
        tensors.into_iter().for_each(std::mem::forget);
        Ok(AclTensorList {
            raw,
            destroy,
            _aclnn: std::marker::PhantomData,
        })
    }

    /// Fused attention with a paged KV cache (`aclnnFusedInferAttentionScoreV2`, what
    /// torch_npu's `npu_fused_infer_attention_score` calls): `softmax(scale · Q Kᵀ + mask) V`
    /// with the other optional inputs (positional shift, quantization, padding, shared
    /// prefixes) absent. A query of one token per batch takes its incremental (decode) branch,
    /// longer ones its prompt branch.
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul); the block table's entries name blocks of the caches.
    pub unsafe fn fused_infer_attention_score_v2(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        t: &FusedAttentionTensors<'_, '_>,
        a: &FusedAttentionAttrs,
    ) -> Result<()> {
        let get = self.fused_attention.get_workspace_size;
        let opt = |x: Option<&AclTensor<'_>>| x.map_or(ptr::null(), AclTensor::raw);
        let opt_array = |x: Option<&AclIntArray<'_>>| x.map_or(ptr::null(), |a| a.as_raw());
        let null = ptr::null::<c_void>();
        // The layout string is read, never written, by the operator (its prototype says `char *`).
        let layout = a.input_layout.as_ptr() as *mut std::ffi::c_char;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                (
                    "aclnnFusedInferAttentionScoreV2GetWorkspaceSize",
                    "aclnnFusedInferAttentionScoreV2",
                ),
                self.fused_attention.run,
                |size, exec| {
                    get.map(|f| {
                        f(
                            t.query.raw(),
                            t.key.as_raw(),
                            t.value.as_raw(),
                            null,
                            opt(t.atten_mask),
                            opt_array(t.actual_seq_lengths),
                            opt_array(t.actual_seq_lengths_kv),
                            null,
                            null,
                            null,
                            null,
                            null,
                            null,
                            null,
                            opt(t.block_table),
                            null,
                            null,
                            null,
                            null,
                            null,
                            null,
                            null,
                            null,
                            null,
                            a.num_heads,
                            a.scale,
                            a.pre_tokens,
                            a.next_tokens,
                            layout,
                            a.num_key_value_heads,
                            a.sparse_mode,
                            a.inner_precise,
                            a.block_size,
                            0,
                            a.softmax_lse_flag,
                            0,
                            0,
                            t.attention_out.raw(),
                            t.softmax_lse.raw(),
                            size,
                            exec,
                        )
                    })
                },
            )
        }
    }

    /// Rotary embedding from a cos/sin cache (`aclnnRopeWithSinCosCache`, RoPE mode:
    /// `mropeSection` NULL): `query_in` `[tokens, heads · head_size]` and `key_in` `[tokens,
    /// kv_heads · head_size]` rotated by the rows of `cos_sin_cache` `[max_position,
    /// rotary_dim]` (cosines then sines) that `positions` (int64) select, into `query_out` and
    /// `key_out`; NeoX (rotate-half) or GPT-J (interleaved) pairing.
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rope_with_sin_cos_cache(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        positions: &AclTensor<'_>,
        query_in: &AclTensor<'_>,
        key_in: &AclTensor<'_>,
        cos_sin_cache: &AclTensor<'_>,
        head_size: i64,
        neox: bool,
        query_out: &AclTensor<'_>,
        key_out: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.rope_sin_cos.get_workspace_size;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                (
                    "aclnnRopeWithSinCosCacheGetWorkspaceSize",
                    "aclnnRopeWithSinCosCache",
                ),
                self.rope_sin_cos.run,
                |size, exec| {
                    get.map(|f| {
                        f(
                            positions.raw(),
                            query_in.raw(),
                            key_in.raw(),
                            cos_sin_cache.raw(),
                            ptr::null(),
                            head_size,
                            neox,
                            query_out.raw() as *mut c_void,
                            key_out.raw() as *mut c_void,
                            size,
                            exec,
                        )
                    })
                },
            )
        }
    }
}

impl Aclnn {
    /// `y = x · ((weight + offset) · scale)` (`aclnnWeightQuantBatchMatmulV2`, weight-only
    /// quantization): `x` `[m, k]` f16/bf16, `weight` `[k, n]` int8 or int4 (a transposed view
    /// of an `[n, k]` matrix is how a linear layer passes it), `scale` and `offset` in `x`'s
    /// dtype, per channel (`[n]`, `group_size` 0) or per group of `group_size` values along `k`
    /// (`[k / group_size, n]`), `y` `[m, n]` in `x`'s dtype. No bias, no output quantization.
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn weight_quant_batch_matmul_v2(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        x: &AclTensor<'_>,
        weight: &AclTensor<'_>,
        scale: &AclTensor<'_>,
        offset: Option<&AclTensor<'_>>,
        group_size: i32,
        y: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.weight_quant_matmul.get_workspace_size;
        let offset = offset.map_or(ptr::null(), |t| t.raw());
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                (
                    "aclnnWeightQuantBatchMatmulV2GetWorkspaceSize",
                    "aclnnWeightQuantBatchMatmulV2",
                ),
                self.weight_quant_matmul.run,
                |size, exec| {
                    get.map(|f| {
                        f(
                            x.raw(),
                            weight.raw(),
                            scale.raw(),
                            offset,
                            ptr::null(),
                            ptr::null(),
                            ptr::null(),
                            group_size,
                            y.raw(),
                            size,
                            exec,
                        )
                    })
                },
            )
        }
    }
}

impl Aclnn {
    /// Per-token symmetric int8 quantization (`aclnnDynamicQuant`, no smooth scales): `x`
    /// `[.., k]` f16/bf16, `y` int8 shaped as `x`, `scale` f32 `x`'s shape without its last
    /// dim; `scale = max|x| / 127` per row and `y = round(x / scale)`.
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    pub unsafe fn dynamic_quant(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        x: &AclTensor<'_>,
        y: &AclTensor<'_>,
        scale: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.dynamic_quant.get_workspace_size;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                ("aclnnDynamicQuantGetWorkspaceSize", "aclnnDynamicQuant"),
                self.dynamic_quant.run,
                |size, exec| get.map(|f| f(x.raw(), ptr::null(), y.raw(), scale.raw(), size, exec)),
            )
        }
    }

    /// `out = (x1 @ x2) · scale · pertoken_scale` with int8 operands and an int32 product
    /// (`aclnnQuantMatmulV4`, W8A8 with per-token activation scales): `x1` `[m, k]` int8, `x2`
    /// int8 `[k, n]`, or `[n, k]` with `transpose_x2` (a linear layer's weight), `scale` f32
    /// `[n]` (per channel) or `[1]`, `pertoken_scale` f32 `[m]`, `out` `[m, n]` f16 or bf16. No
    /// offset, no bias.
    ///
    /// # Safety
    /// As [`matmul`](Self::matmul).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn quant_matmul_v4(
        &self,
        stream: &AclStream,
        workspace: &dyn Allocator<AclBackend>,
        x1: &AclTensor<'_>,
        x2: &AclTensor<'_>,
        scale: &AclTensor<'_>,
        pertoken_scale: &AclTensor<'_>,
        transpose_x2: bool,
        out: &AclTensor<'_>,
    ) -> Result<()> {
        let get = self.quant_matmul_v4.get_workspace_size;
        // SAFETY: as in `matmul`.
        unsafe {
            self.two_phase(
                stream,
                workspace,
                ("aclnnQuantMatmulV4GetWorkspaceSize", "aclnnQuantMatmulV4"),
                self.quant_matmul_v4.run,
                |size, exec| {
                    get.map(|f| {
                        f(
                            x1.raw(),
                            x2.raw(),
                            scale.raw(),
                            ptr::null(),
                            pertoken_scale.raw(),
                            ptr::null(),
                            false,
                            transpose_x2,
                            out.raw(),
                            size,
                            exec,
                        )
                    })
                },
            )
        }
    }
}

/// The tensors [`Aclnn::fused_infer_attention_score_v2`] passes; every other optional input of
/// the operator is NULL.
pub struct FusedAttentionTensors<'t, 'a> {
    /// The query (`[B, S, N·D]` with layout `BSH`).
    pub query: &'t AclTensor<'a>,
    /// The keys: with a block table, one tensor `[num_blocks, block_size, KV_N·D]`.
    pub key: &'t AclTensorList<'a>,
    /// The values, shaped as the keys.
    pub value: &'t AclTensorList<'a>,
    /// The mask (`sparseMode` 2-4 take the optimised 2048 × 2048 one).
    pub atten_mask: Option<&'t AclTensor<'a>>,
    /// Valid query tokens per batch (host).
    pub actual_seq_lengths: Option<&'t AclIntArray<'a>>,
    /// Valid key/value tokens per batch (host; required with a block table).
    pub actual_seq_lengths_kv: Option<&'t AclIntArray<'a>>,
    /// `[B, max_blocks]` int32 block ids into the caches.
    pub block_table: Option<&'t AclTensor<'a>>,
    /// The output, shaped as the query.
    pub attention_out: &'t AclTensor<'a>,
    /// The log-sum-exp output: a float `[1]` when `softmax_lse_flag` is false.
    pub softmax_lse: &'t AclTensor<'a>,
}

/// The attributes of `aclnnFusedInferAttentionScoreV2` (antiquant modes 0).
#[derive(Debug, Clone, Copy)]
pub struct FusedAttentionAttrs {
    /// Query heads.
    pub num_heads: i64,
    /// Softmax scale.
    pub scale: f64,
    /// Tokens before the diagonal a query attends to (sparse modes 0 with a mask, and 4).
    pub pre_tokens: i64,
    /// Tokens after it.
    pub next_tokens: i64,
    /// `BSH`, `BSND`, `BNSD`, ...
    pub input_layout: &'static std::ffi::CStr,
    /// KV heads (0: as many as query heads).
    pub num_key_value_heads: i64,
    /// 0 default mask, 1 all, 2 left-up causal, 3 right-down causal, 4 band.
    pub sparse_mode: i64,
    /// 0 high precision, 1 high performance (+2: correct rows with nothing to attend to).
    pub inner_precise: i64,
    /// Tokens per cache block (with a block table).
    pub block_size: i64,
    /// Whether to write the log-sum-exp.
    pub softmax_lse_flag: bool,
}

/// An owned ACLNN descriptor: the pointer its `aclCreate*` returned and the `aclDestroy*` that
/// frees it on drop. The three kinds differ only in name and in their pair of calls.
macro_rules! owned_descriptor {
    ($(#[$doc:meta])* $name:ident, $destroy:ty) => {
        $(#[$doc])*
        pub struct $name<'a> {
            raw: NonNull<c_void>,
            destroy: $destroy,
            _aclnn: std::marker::PhantomData<&'a Aclnn>,
        }

        impl $name<'_> {
            /// The descriptor pointer, for ACLNN calls this crate does not bind (valid while
            /// `self` lives).
            pub fn as_raw(&self) -> *const c_void {
                self.raw.as_ptr()
            }
        }

        impl std::fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, concat!(stringify!($name), "({:p})"), self.raw)
            }
        }

        impl Drop for $name<'_> {
            fn drop(&mut self) {
                // SAFETY: `raw` came from the matching create call and is destroyed once,
                // here (a tensor list with the tensors it owns).
                let _ = unsafe { (self.destroy)(self.raw.as_ptr()) };
            }
        }
    };
}

owned_descriptor!(
    /// An `aclIntArray` descriptor; `aclDestroyIntArray` on drop.
    AclIntArray,
    sys::DestroyIntArray
);
owned_descriptor!(
    /// An `aclTensorList` descriptor that owns its tensors; `aclDestroyTensorList` on drop.
    AclTensorList,
    sys::DestroyTensorList
);
owned_descriptor!(
    /// An `aclScalar` descriptor; `aclDestroyScalar` on drop.
    AclScalar,
    sys::DestroyScalar
);

impl<G> Op<G> {
    fn available(&self) -> bool {
        self.get_workspace_size.is_some() && self.run.is_some()
    }
}

/// An `aclTensor` descriptor; `aclDestroyTensor` on drop.
pub struct AclTensor<'a> {
    raw: NonNull<c_void>,
    aclnn: &'a Aclnn,
}

impl AclTensor<'_> {
    /// The `aclTensor *`, for ACLNN calls this crate does not bind (valid while `self` lives).
    pub fn as_raw(&self) -> *const c_void {
        self.raw.as_ptr()
    }

    fn raw(&self) -> *const c_void {
        self.raw.as_ptr()
    }
}

impl std::fmt::Debug for AclTensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AclTensor({:p})", self.raw)
    }
}

impl Drop for AclTensor<'_> {
    fn drop(&mut self) {
        // SAFETY: created by aclCreateTensor and destroyed once, here. A failure leaves nothing
        // to do (the descriptor is host memory of the library).
        let _ = unsafe { (self.aclnn.destroy_tensor)(self.raw()) };
    }
}
