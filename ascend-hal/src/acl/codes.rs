//! The table of ACL error codes: `acl_base.h` / `acl_base_rt.h` (1xxxxx, 2000xx, 3xxxxx, 5000xx)
//! and the runtime codes of `error_codes/rt_error_codes.h` (107xxx, 207xxx, 507xxx), CANN 8.5.0.
//!
//! A code missing from the table (a newer CANN) still gets a name from its range.

/// `(code, header name, meaning)`, sorted by code.
static CODES: &[(i32, &str, &str)] = &[
    (0, "ACL_SUCCESS", "success"),
    (
        100000,
        "ACL_ERROR_INVALID_PARAM",
        "bad argument (NULL pointer, size 0, bad enum value)",
    ),
    (100001, "ACL_ERROR_UNINITIALIZE", "aclInit was not called"),
    (
        100002,
        "ACL_ERROR_REPEAT_INITIALIZE",
        "aclInit was called again",
    ),
    (100003, "ACL_ERROR_INVALID_FILE", "invalid file"),
    (100004, "ACL_ERROR_WRITE_FILE", "write file failed"),
    (100005, "ACL_ERROR_INVALID_FILE_SIZE", "invalid file size"),
    (
        100006,
        "ACL_ERROR_PARSE_FILE",
        "parse file failed (e.g. the acl.json passed to aclInit)",
    ),
    (
        100007,
        "ACL_ERROR_FILE_MISSING_ATTR",
        "file missing attribute",
    ),
    (
        100008,
        "ACL_ERROR_FILE_ATTR_INVALID",
        "invalid file attribute",
    ),
    (
        100009,
        "ACL_ERROR_INVALID_DUMP_CONFIG",
        "invalid dump config",
    ),
    (
        100010,
        "ACL_ERROR_INVALID_PROFILING_CONFIG",
        "invalid profiling config",
    ),
    (100011, "ACL_ERROR_INVALID_MODEL_ID", "invalid model id"),
    (
        100012,
        "ACL_ERROR_DESERIALIZE_MODEL",
        "model deserialization failed",
    ),
    (100013, "ACL_ERROR_PARSE_MODEL", "model parse failed"),
    (100014, "ACL_ERROR_READ_MODEL_FAILURE", "model read failed"),
    (100015, "ACL_ERROR_MODEL_SIZE_INVALID", "invalid model size"),
    (
        100016,
        "ACL_ERROR_MODEL_MISSING_ATTR",
        "model missing attribute",
    ),
    (
        100017,
        "ACL_ERROR_MODEL_INPUT_NOT_MATCH",
        "model input mismatch",
    ),
    (
        100018,
        "ACL_ERROR_MODEL_OUTPUT_NOT_MATCH",
        "model output mismatch",
    ),
    (
        100019,
        "ACL_ERROR_MODEL_NOT_DYNAMIC",
        "model is not dynamic",
    ),
    (
        100020,
        "ACL_ERROR_OP_TYPE_NOT_MATCH",
        "operator type mismatch",
    ),
    (
        100021,
        "ACL_ERROR_OP_INPUT_NOT_MATCH",
        "operator input mismatch",
    ),
    (
        100022,
        "ACL_ERROR_OP_OUTPUT_NOT_MATCH",
        "operator output mismatch",
    ),
    (
        100023,
        "ACL_ERROR_OP_ATTR_NOT_MATCH",
        "operator attribute mismatch",
    ),
    (100024, "ACL_ERROR_OP_NOT_FOUND", "operator not found"),
    (100025, "ACL_ERROR_OP_LOAD_FAILED", "operator load failed"),
    (
        100026,
        "ACL_ERROR_UNSUPPORTED_DATA_TYPE",
        "unsupported data type",
    ),
    (100027, "ACL_ERROR_FORMAT_NOT_MATCH", "format mismatch"),
    (
        100028,
        "ACL_ERROR_BIN_SELECTOR_NOT_REGISTERED",
        "binary selector not registered",
    ),
    (100029, "ACL_ERROR_KERNEL_NOT_FOUND", "kernel not found"),
    (
        100030,
        "ACL_ERROR_BIN_SELECTOR_ALREADY_REGISTERED",
        "binary selector already registered",
    ),
    (
        100031,
        "ACL_ERROR_KERNEL_ALREADY_REGISTERED",
        "kernel already registered",
    ),
    (100032, "ACL_ERROR_INVALID_QUEUE_ID", "invalid queue id"),
    (
        100033,
        "ACL_ERROR_REPEAT_SUBSCRIBE",
        "stream already subscribed",
    ),
    (
        100034,
        "ACL_ERROR_STREAM_NOT_SUBSCRIBE",
        "callback on a stream that is not subscribed",
    ),
    (
        100035,
        "ACL_ERROR_THREAD_NOT_SUBSCRIBE",
        "thread not subscribed",
    ),
    (
        100036,
        "ACL_ERROR_WAIT_CALLBACK_TIMEOUT",
        "aclrtProcessReport timed out",
    ),
    (
        100037,
        "ACL_ERROR_REPEAT_FINALIZE",
        "aclFinalize was called again",
    ),
    (100038, "ACL_ERROR_NOT_STATIC_AIPP", "not a static AIPP"),
    (
        100039,
        "ACL_ERROR_COMPILING_STUB_MODE",
        "compiling stub mode",
    ),
    (100040, "ACL_ERROR_GROUP_NOT_SET", "group not set"),
    (100041, "ACL_ERROR_GROUP_NOT_CREATE", "group not created"),
    (
        100042,
        "ACL_ERROR_PROF_ALREADY_RUN",
        "profiling already running",
    ),
    (100043, "ACL_ERROR_PROF_NOT_RUN", "profiling not running"),
    (100044, "ACL_ERROR_DUMP_ALREADY_RUN", "dump already running"),
    (100045, "ACL_ERROR_DUMP_NOT_RUN", "dump not running"),
    (
        107000,
        "ACL_ERROR_RT_PARAM_INVALID",
        "runtime parameter invalid (also: copy of 0 bytes, or more than the destination holds)",
    ),
    (
        107001,
        "ACL_ERROR_RT_INVALID_DEVICEID",
        "invalid device id (out of range, or hidden by ASCEND_RT_VISIBLE_DEVICES)",
    ),
    (
        107002,
        "ACL_ERROR_RT_CONTEXT_NULL",
        "no current context on this thread (aclrtSetDevice was not called on it)",
    ),
    (
        107003,
        "ACL_ERROR_RT_STREAM_CONTEXT",
        "stream not in the current context",
    ),
    (
        107004,
        "ACL_ERROR_RT_MODEL_CONTEXT",
        "model not in the current context",
    ),
    (107005, "ACL_ERROR_RT_STREAM_MODEL", "stream not in model"),
    (
        107006,
        "ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID",
        "event timestamp invalid",
    ),
    (
        107007,
        "ACL_ERROR_RT_EVENT_TIMESTAMP_REVERSAL",
        "event timestamp reversal",
    ),
    (
        107008,
        "ACL_ERROR_RT_ADDR_UNALIGNED",
        "memory address unaligned",
    ),
    (107009, "ACL_ERROR_RT_FILE_OPEN", "open file failed"),
    (107010, "ACL_ERROR_RT_FILE_WRITE", "write file failed"),
    (
        107011,
        "ACL_ERROR_RT_STREAM_SUBSCRIBE",
        "stream subscribe failed",
    ),
    (
        107012,
        "ACL_ERROR_RT_THREAD_SUBSCRIBE",
        "thread subscribe failed",
    ),
    (107013, "ACL_ERROR_RT_GROUP_NOT_SET", "group not set"),
    (107014, "ACL_ERROR_RT_GROUP_NOT_CREATE", "group not created"),
    (
        107015,
        "ACL_ERROR_RT_STREAM_NO_CB_REG",
        "callback not registered to the stream",
    ),
    (
        107016,
        "ACL_ERROR_RT_INVALID_MEMORY_TYPE",
        "invalid memory type",
    ),
    (107017, "ACL_ERROR_RT_INVALID_HANDLE", "invalid handle"),
    (
        107018,
        "ACL_ERROR_RT_INVALID_MALLOC_TYPE",
        "invalid malloc type",
    ),
    (107019, "ACL_ERROR_RT_WAIT_TIMEOUT", "wait timed out"),
    (107020, "ACL_ERROR_RT_TASK_TIMEOUT", "task timed out"),
    (
        107021,
        "ACL_ERROR_RT_SYSPARAMOPT_NOT_SET",
        "system parameter option not set",
    ),
    (
        107022,
        "ACL_ERROR_RT_DEVICE_TASK_ABORT",
        "device task aborted",
    ),
    (107023, "ACL_ERROR_RT_STREAM_ABORT", "stream aborted"),
    (
        107024,
        "ACL_ERROR_RT_CAPTURE_DEPENDENCY",
        "stream capture dependency",
    ),
    (
        107025,
        "ACL_ERROR_RT_STREAM_UNJOINED",
        "stream capture: stream unjoined",
    ),
    (107026, "ACL_ERROR_RT_MODEL_CAPTURED", "model captured"),
    (107027, "ACL_ERROR_RT_STREAM_CAPTURED", "stream captured"),
    (107028, "ACL_ERROR_RT_EVENT_CAPTURED", "event captured"),
    (
        107029,
        "ACL_ERROR_RT_STREAM_NOT_CAPTURED",
        "stream not captured",
    ),
    (
        107030,
        "ACL_ERROR_RT_CAPTURE_MODE_NOT_SUPPORT",
        "capture mode not supported",
    ),
    (
        107031,
        "ACL_ERROR_RT_STREAM_CAPTURE_IMPLICIT",
        "implicit stream capture",
    ),
    (
        107032,
        "ACL_ERROR_STREAM_CAPTURE_CONFLICT",
        "stream capture conflict",
    ),
    (
        107033,
        "ACL_ERROR_STREAM_TASK_GROUP_STATUS",
        "stream task group status",
    ),
    (
        107034,
        "ACL_ERROR_STREAM_TASK_GROUP_INTR",
        "stream task group interrupted",
    ),
    (107035, "ACL_ERROR_RT_TASK_ABORT_STOP", "task abort stop"),
    (
        107036,
        "ACL_ERROR_RT_STREAM_CAPTURE_UNMATCHED",
        "stream capture unmatched",
    ),
    (107037, "ACL_ERROR_RT_MODEL_RUNNING", "model running"),
    (
        107038,
        "ACL_ERROR_RT_STREAM_CAPTURE_WRONG_THREAD",
        "stream capture on the wrong thread",
    ),
    (
        148046,
        "ACL_ERROR_PROF_REPEAT_SUBSCRIBE",
        "profiling repeat subscribe",
    ),
    (
        148047,
        "ACL_ERROR_PROF_API_CONFLICT",
        "profiling API conflict",
    ),
    (
        148048,
        "ACL_ERROR_INVALID_MAX_OPQUEUE_NUM_CONFIG",
        "invalid max op queue config",
    ),
    (
        148049,
        "ACL_ERROR_INVALID_OPP_PATH",
        "ASCEND_OPP_PATH is invalid (source set_env.sh)",
    ),
    (
        148050,
        "ACL_ERROR_OP_UNSUPPORTED_DYNAMIC",
        "operator does not support dynamic shapes",
    ),
    (
        148051,
        "ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED",
        "relative resource not cleared",
    ),
    (148052, "ACL_ERROR_UNSUPPORTED_JPEG", "unsupported JPEG"),
    (
        148053,
        "ACL_ERROR_INVALID_BUNDLE_MODEL_ID",
        "invalid bundle model id",
    ),
    (200000, "ACL_ERROR_BAD_ALLOC", "host-side allocation failed"),
    (200001, "ACL_ERROR_API_NOT_SUPPORT", "API not supported"),
    (200002, "ACL_ERROR_INVALID_DEVICE", "invalid device"),
    (
        200003,
        "ACL_ERROR_MEMORY_ADDRESS_UNALIGNED",
        "memory address unaligned",
    ),
    (
        200004,
        "ACL_ERROR_RESOURCE_NOT_MATCH",
        "resource does not match",
    ),
    (
        200005,
        "ACL_ERROR_INVALID_RESOURCE_HANDLE",
        "invalid resource handle",
    ),
    (
        200006,
        "ACL_ERROR_FEATURE_UNSUPPORTED",
        "feature unsupported",
    ),
    (
        200007,
        "ACL_ERROR_PROF_MODULES_UNSUPPORTED",
        "profiling modules unsupported",
    ),
    (
        207000,
        "ACL_ERROR_RT_FEATURE_NOT_SUPPORT",
        "feature not supported (e.g. VMM on this board)",
    ),
    (
        207001,
        "ACL_ERROR_RT_MEMORY_ALLOCATION",
        "out of device memory",
    ),
    (207002, "ACL_ERROR_RT_MEMORY_FREE", "memory free failed"),
    (207003, "ACL_ERROR_RT_AICORE_OVER_FLOW", "AI Core overflow"),
    (
        207004,
        "ACL_ERROR_RT_NO_DEVICE",
        "no device (driver not mounted, or bad ASCEND_RT_VISIBLE_DEVICES)",
    ),
    (
        207005,
        "ACL_ERROR_RT_RESOURCE_ALLOC_FAIL",
        "resource allocation failed",
    ),
    (
        207006,
        "ACL_ERROR_RT_NO_PERMISSION",
        "no permission (the device nodes are not accessible to this user)",
    ),
    (
        207007,
        "ACL_ERROR_RT_NO_EVENT_RESOURCE",
        "no event resources left",
    ),
    (
        207008,
        "ACL_ERROR_RT_NO_STREAM_RESOURCE",
        "no stream resources left",
    ),
    (
        207009,
        "ACL_ERROR_RT_NO_NOTIFY_RESOURCE",
        "no notify resources left",
    ),
    (
        207010,
        "ACL_ERROR_RT_NO_MODEL_RESOURCE",
        "no model resources left",
    ),
    (
        207011,
        "ACL_ERROR_RT_NO_CDQ_RESOURCE",
        "no CDQ resources left",
    ),
    (207012, "ACL_ERROR_RT_OVER_LIMIT", "over limit"),
    (207013, "ACL_ERROR_RT_QUEUE_EMPTY", "queue empty"),
    (207014, "ACL_ERROR_RT_QUEUE_FULL", "queue full"),
    (207015, "ACL_ERROR_RT_REPEATED_INIT", "repeated init"),
    (207016, "ACL_ERROR_RT_AIVEC_OVER_FLOW", "AI Vector overflow"),
    (207017, "ACL_ERROR_RT_OVER_FLOW", "overflow"),
    (207018, "ACL_ERROR_RT_DEVICE_OOM", "device out of memory"),
    (
        207019,
        "ACL_ERROR_RT_FEATURE_NOT_SUPPORT_UPDATE_OP",
        "feature not supported (update op)",
    ),
    (300000, "ACL_ERROR_STORAGE_OVER_LIMIT", "storage over limit"),
    (500000, "ACL_ERROR_INTERNAL_ERROR", "internal error"),
    (500001, "ACL_ERROR_FAILURE", "failure"),
    (500002, "ACL_ERROR_GE_FAILURE", "graph engine failure"),
    (500003, "ACL_ERROR_RT_FAILURE", "runtime failure"),
    (500004, "ACL_ERROR_DRV_FAILURE", "driver failure"),
    (500005, "ACL_ERROR_PROFILING_FAILURE", "profiling failure"),
    (
        507000,
        "ACL_ERROR_RT_INTERNAL_ERROR",
        "runtime internal error",
    ),
    (507001, "ACL_ERROR_RT_TS_ERROR", "task scheduler error"),
    (
        507002,
        "ACL_ERROR_RT_STREAM_TASK_FULL",
        "stream task queue full",
    ),
    (
        507003,
        "ACL_ERROR_RT_STREAM_TASK_EMPTY",
        "stream task queue empty",
    ),
    (
        507004,
        "ACL_ERROR_RT_STREAM_NOT_COMPLETE",
        "stream not complete",
    ),
    (507005, "ACL_ERROR_RT_END_OF_SEQUENCE", "end of sequence"),
    (
        507006,
        "ACL_ERROR_RT_EVENT_NOT_COMPLETE",
        "event not complete",
    ),
    (
        507007,
        "ACL_ERROR_RT_CONTEXT_RELEASE_ERROR",
        "context release error",
    ),
    (507008, "ACL_ERROR_RT_SOC_VERSION", "SoC version error"),
    (
        507009,
        "ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT",
        "task type not supported",
    ),
    (
        507010,
        "ACL_ERROR_RT_LOST_HEARTBEAT",
        "lost heartbeat with the device",
    ),
    (
        507011,
        "ACL_ERROR_RT_MODEL_EXECUTE",
        "model execution failed",
    ),
    (507012, "ACL_ERROR_RT_REPORT_TIMEOUT", "report timed out"),
    (507013, "ACL_ERROR_RT_SYS_DMA", "system DMA error"),
    (507014, "ACL_ERROR_RT_AICORE_TIMEOUT", "AI Core timed out"),
    (
        507015,
        "ACL_ERROR_RT_AICORE_EXCEPTION",
        "AI Core exception (a kernel faulted)",
    ),
    (
        507016,
        "ACL_ERROR_RT_AICORE_TRAP_EXCEPTION",
        "AI Core trap exception",
    ),
    (507017, "ACL_ERROR_RT_AICPU_TIMEOUT", "AI CPU timed out"),
    (507018, "ACL_ERROR_RT_AICPU_EXCEPTION", "AI CPU exception"),
    (
        507019,
        "ACL_ERROR_RT_AICPU_DATADUMP_RSP_ERR",
        "AI CPU data dump response error",
    ),
    (
        507020,
        "ACL_ERROR_RT_AICPU_MODEL_RSP_ERR",
        "AI CPU model response error",
    ),
    (507021, "ACL_ERROR_RT_PROFILING_ERROR", "profiling error"),
    (507022, "ACL_ERROR_RT_IPC_ERROR", "IPC error"),
    (507023, "ACL_ERROR_RT_MODEL_ABORT_NORMAL", "model aborted"),
    (
        507024,
        "ACL_ERROR_RT_KERNEL_UNREGISTERING",
        "kernel unregistering",
    ),
    (
        507025,
        "ACL_ERROR_RT_RINGBUFFER_NOT_INIT",
        "ring buffer not initialised",
    ),
    (
        507026,
        "ACL_ERROR_RT_RINGBUFFER_NO_DATA",
        "ring buffer has no data",
    ),
    (507027, "ACL_ERROR_RT_KERNEL_LOOKUP", "kernel lookup failed"),
    (507028, "ACL_ERROR_RT_KERNEL_DUPLICATE", "kernel duplicate"),
    (
        507029,
        "ACL_ERROR_RT_DEBUG_REGISTER_FAIL",
        "debug register failed",
    ),
    (
        507030,
        "ACL_ERROR_RT_DEBUG_UNREGISTER_FAIL",
        "debug unregister failed",
    ),
    (
        507031,
        "ACL_ERROR_RT_LABEL_CONTEXT",
        "label not in the current context",
    ),
    (
        507032,
        "ACL_ERROR_RT_PROGRAM_USE_OUT",
        "program register count exhausted",
    ),
    (507033, "ACL_ERROR_RT_DEV_SETUP_ERROR", "device setup error"),
    (
        507034,
        "ACL_ERROR_RT_VECTOR_CORE_TIMEOUT",
        "vector core timed out",
    ),
    (
        507035,
        "ACL_ERROR_RT_VECTOR_CORE_EXCEPTION",
        "vector core exception (a kernel faulted)",
    ),
    (
        507036,
        "ACL_ERROR_RT_VECTOR_CORE_TRAP_EXCEPTION",
        "vector core trap exception",
    ),
    (
        507037,
        "ACL_ERROR_RT_CDQ_BATCH_ABNORMAL",
        "CDQ batch abnormal",
    ),
    (
        507038,
        "ACL_ERROR_RT_DIE_MODE_CHANGE_ERROR",
        "die mode change error",
    ),
    (507039, "ACL_ERROR_RT_DIE_SET_ERROR", "die set error"),
    (507040, "ACL_ERROR_RT_INVALID_DIEID", "invalid die id"),
    (507041, "ACL_ERROR_RT_DIE_MODE_NOT_SET", "die mode not set"),
    (
        507042,
        "ACL_ERROR_RT_AICORE_TRAP_READ_OVERFLOW",
        "AI Core trap: read overflow",
    ),
    (
        507043,
        "ACL_ERROR_RT_AICORE_TRAP_WRITE_OVERFLOW",
        "AI Core trap: write overflow",
    ),
    (
        507044,
        "ACL_ERROR_RT_VECTOR_CORE_TRAP_READ_OVERFLOW",
        "vector core trap: read overflow",
    ),
    (
        507045,
        "ACL_ERROR_RT_VECTOR_CORE_TRAP_WRITE_OVERFLOW",
        "vector core trap: write overflow",
    ),
    (
        507046,
        "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT",
        "stream synchronisation timed out",
    ),
    (
        507047,
        "ACL_ERROR_RT_EVENT_SYNC_TIMEOUT",
        "event synchronisation timed out",
    ),
    (507048, "ACL_ERROR_RT_FFTS_PLUS_TIMEOUT", "FFTS+ timed out"),
    (
        507049,
        "ACL_ERROR_RT_FFTS_PLUS_EXCEPTION",
        "FFTS+ exception",
    ),
    (
        507050,
        "ACL_ERROR_RT_FFTS_PLUS_TRAP_EXCEPTION",
        "FFTS+ trap exception",
    ),
    (
        507051,
        "ACL_ERROR_RT_SEND_MSG",
        "sending a message to the device failed",
    ),
    (507052, "ACL_ERROR_RT_COPY_DATA", "copy data failed"),
    (
        507053,
        "ACL_ERROR_RT_DEVICE_MEM_ERROR",
        "device memory error",
    ),
    (
        507054,
        "ACL_ERROR_RT_HBM_MULTI_BIT_ECC_ERROR",
        "HBM multi-bit ECC error",
    ),
    (
        507055,
        "ACL_ERROR_RT_SUSPECT_DEVICE_MEM_ERROR",
        "suspected device memory error",
    ),
    (507056, "ACL_ERROR_RT_LINK_ERROR", "link error"),
    (
        507057,
        "ACL_ERROR_RT_SUSPECT_REMOTE_ERROR",
        "suspected remote error",
    ),
    (
        507899,
        "ACL_ERROR_RT_DRV_INTERNAL_ERROR",
        "driver internal error",
    ),
    (
        507900,
        "ACL_ERROR_RT_AICPU_INTERNAL_ERROR",
        "AI CPU internal error",
    ),
    (
        507901,
        "ACL_ERROR_RT_SOCKET_CLOSE",
        "host-device channel closed",
    ),
    (
        507902,
        "ACL_ERROR_RT_AICPU_INFO_LOAD_RSP_ERR",
        "AI CPU info load response error",
    ),
    (
        507903,
        "ACL_ERROR_RT_STREAM_CAPTURE_INVALIDATED",
        "stream capture invalidated",
    ),
    (
        507904,
        "ACL_ERROR_RT_COMM_OP_RETRY_FAIL",
        "HCCL operation retry failed",
    ),
    (
        507905,
        "ACL_ERROR_SNAPSHOT_LOCK_TIMEOUT",
        "snapshot lock timed out",
    ),
    (
        507906,
        "ACL_ERROR_SNAPSHOT_LOCK_FAILED",
        "snapshot lock failed",
    ),
    (
        507907,
        "ACL_ERROR_SNAPSHOT_UNLOCK_FAILED",
        "snapshot unlock failed",
    ),
    (
        507908,
        "ACL_ERROR_SNAPSHOT_BACKUP_FAILED",
        "snapshot backup failed",
    ),
    (
        507909,
        "ACL_ERROR_SNAPSHOT_RESTORE_FAILED",
        "snapshot restore failed",
    ),
    (
        507910,
        "ACL_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
        "host memory already registered",
    ),
    (
        507911,
        "ACL_ERROR_HOST_MEMORY_NOT_REGISTERED",
        "host memory not registered",
    ),
    (574006, "ACLNN_STRESS_BIT_FAIL", "stress test bit failure"),
    (
        574007,
        "ACLNN_CLEAR_DEVICE_STATE_FAIL",
        "clear device state failed",
    ),
    (
        574008,
        "ACLNN_STRESS_LOW_BIT_FAIL",
        "stress test low bit failure",
    ),
    (
        574009,
        "ACLNN_STRESS_HIGH_BIT_FAIL",
        "stress test high bit failure",
    ),
];

/// The header name and meaning of an ACL error code.
///
/// ```
/// let (name, meaning) = ascend_hal::acl::describe_code(207001);
/// assert_eq!(name, "ACL_ERROR_RT_MEMORY_ALLOCATION");
/// assert!(meaning.contains("out of device memory"));
/// ```
pub fn describe_code(code: i32) -> (&'static str, &'static str) {
    match CODES.binary_search_by_key(&code, |&(c, _, _)| c) {
        Ok(i) => (CODES[i].1, CODES[i].2),
        Err(_) => (
            "unknown ACL error code",
            match code / 100_000 {
                1 => "a caller or parameter error (1xxxxx range), newer than this table",
                2 => "a resource error (2xxxxx range), newer than this table",
                3 => "a storage error (3xxxxx range), newer than this table",
                5 => "an internal error (5xxxxx range), newer than this table",
                _ => "outside every documented ACL range",
            },
        ),
    }
}

/// Codes that mean the device needs to be reset: later calls on it will fail too.
pub(crate) fn is_device_lost(code: i32) -> bool {
    matches!(code, 507010 | 507053 | 507054 | 507056 | 507901)
}

/// Codes that mean the device is out of memory.
pub(crate) fn is_out_of_memory(code: i32) -> bool {
    matches!(code, 207001 | 207018)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_unique() {
        assert!(CODES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(describe_code(100000).0, "ACL_ERROR_INVALID_PARAM");
        assert_eq!(describe_code(107002).0, "ACL_ERROR_RT_CONTEXT_NULL");
        assert_eq!(describe_code(507046).0, "ACL_ERROR_RT_STREAM_SYNC_TIMEOUT");
        let (name, meaning) = describe_code(209999);
        assert_eq!(name, "unknown ACL error code");
        assert!(meaning.contains("2xxxxx"), "{meaning}");
    }
}
