//! The GGUF reader on hostile files: what llama.cpp's loader refuses (misaligned or overlapping
//! tensors) is refused; devices and FIFOs are refused before they are read; corrupt weights
//! (NaN) are refused by name; a block count past what the file holds is refused before any
//! per-layer allocation; and no declared length, count or array makes the reader allocate more
//! than a small multiple of the file's size (measured with a counting global allocator), with
//! every single-byte mutation of a small file answered without a panic; a weight type no
//! provider runs, or a block with a non-finite scale, is refused by tensor name.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ascend_examples::gguf::{Array, Gguf, Value};
use half::f16;

/// Counts live heap bytes and their peak, so a test can bound what the reader allocates.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests take turns: the counters are process-wide, so one test's allocations would count
/// against another's.
fn measuring() -> std::sync::MutexGuard<'static, ()> {
    static MEASURE: Mutex<()> = Mutex::new(());
    MEASURE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `f` and returns its result with the most heap it held at once beyond what was live
/// before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// A GGUF v3 file builder: metadata entries, then tensors with explicit offsets.
#[derive(Default)]
struct File {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<u8>,
    n_tensors: u64,
    data: Vec<u8>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl File {
    fn kv_u32(mut self, key: &str, v: u32) -> Self {
        string(&mut self.kv, key);
        self.kv.extend(4u32.to_le_bytes());
        self.kv.extend(v.to_le_bytes());
        self.n_kv += 1;
        self
    }
    fn kv_f32(mut self, key: &str, v: f32) -> Self {
        string(&mut self.kv, key);
        self.kv.extend(6u32.to_le_bytes());
        self.kv.extend(v.to_le_bytes());
        self.n_kv += 1;
        self
    }
    fn kv_strings(mut self, key: &str, v: &[&str]) -> Self {
        string(&mut self.kv, key);
        self.kv.extend(9u32.to_le_bytes());
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((v.len() as u64).to_le_bytes());
        for s in v {
            string(&mut self.kv, s);
        }
        self.n_kv += 1;
        self
    }
    fn kv_str(mut self, key: &str, v: &str) -> Self {
        string(&mut self.kv, key);
        self.kv.extend(8u32.to_le_bytes());
        string(&mut self.kv, v);
        self.n_kv += 1;
        self
    }
    /// An array of `n` elements of type `elem`, `width` bytes each, all `fill`.
    fn kv_array(mut self, key: &str, elem: u32, n: u64, width: usize, fill: u8) -> Self {
        string(&mut self.kv, key);
        self.kv.extend(9u32.to_le_bytes());
        self.kv.extend(elem.to_le_bytes());
        self.kv.extend(n.to_le_bytes());
        self.kv
            .extend(std::iter::repeat_n(fill, n as usize * width));
        self.n_kv += 1;
        self
    }
    /// An F16 tensor of `dims` at `offset` (relative to the data section).
    fn tensor(self, name: &str, dims: &[u64], offset: u64) -> Self {
        self.typed_tensor(name, dims, 1, offset)
    }
    /// A tensor of ggml type code `ty`.
    fn typed_tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        string(&mut self.tensors, name);
        self.tensors.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.tensors.extend(d.to_le_bytes());
        }
        self.tensors.extend(ty.to_le_bytes());
        self.tensors.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }
    fn data(mut self, values: &[f32]) -> Self {
        for &v in values {
            self.data.extend(f16::from_f32(v).to_bits().to_le_bytes());
        }
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.data.extend(bytes);
        self
    }
    fn bytes(self) -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend(self.n_tensors.to_le_bytes());
        f.extend(self.n_kv.to_le_bytes());
        f.extend(self.kv);
        f.extend(self.tensors);
        while !f.len().is_multiple_of(32) {
            f.push(0);
        }
        f.extend(self.data);
        f
    }
}

fn error(bytes: Vec<u8>) -> String {
    match Gguf::parse(bytes) {
        Ok(_) => panic!("the file was accepted"),
        Err(e) => e.0,
    }
}

#[test]
fn misaligned_and_overlapping_tensors_are_refused_as_llama_cpp_refuses_them() {
    let _m = measuring();
    let ok = File::default()
        .tensor("a", &[16], 0)
        .tensor("b", &[16], 32)
        .data(&[1.0; 32]);
    assert!(Gguf::parse(ok.bytes()).is_ok());
    let misaligned = File::default()
        .tensor("a", &[16], 0)
        .tensor("b", &[16], 34)
        .data(&[1.0; 40]);
    let e = error(misaligned.bytes());
    assert!(
        e.contains("tensor b has offset 34, not a multiple of the alignment 32"),
        "{e}"
    );
    let overlapping = File::default()
        .tensor("a", &[32], 0)
        .tensor("b", &[16], 32)
        .data(&[1.0; 32]);
    let e = error(overlapping.bytes());
    assert!(
        e.contains("tensors a (bytes") && e.contains("and b (bytes"),
        "{e}"
    );
    assert!(e.contains("overlap"), "{e}");
    let aliased = File::default()
        .tensor("a", &[16], 0)
        .tensor("b", &[16], 0)
        .data(&[1.0; 16]);
    assert!(error(aliased.bytes()).contains("overlap"));
}

#[test]
fn a_nan_weight_is_refused_naming_the_tensor() {
    let _m = measuring();
    let f = File::default()
        .tensor("good", &[4], 0)
        .tensor("bad", &[4], 32)
        .data(&[1.0; 16])
        .data(&[0.5, f32::NAN, 0.0, 1.0]);
    let g = Gguf::parse(f.bytes()).unwrap();
    assert_eq!(g.tensor_f32("good").unwrap(), vec![1.0; 4]);
    let e = g.tensor_f32("bad").unwrap_err().0;
    assert!(e.contains("tensor bad holds NaN at element 1"), "{e}");
}

#[test]
fn devices_fifos_and_directories_are_refused_before_they_are_read() {
    let _m = measuring();
    let e = Gguf::open("/dev/zero".as_ref()).unwrap_err().0;
    assert!(
        e.contains("/dev/zero is not a regular file (a device)"),
        "{e}"
    );
    let dir = std::env::temp_dir();
    let e = Gguf::open(&dir).unwrap_err().0;
    assert!(e.contains("is not a regular file (a directory)"), "{e}");
    let fifo = dir.join(format!("gguf-hostile-{}.fifo", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        // Opening a FIFO with no writer blocks forever: the reader must not open it.
        let e = Gguf::open(&fifo).unwrap_err().0;
        let _ = std::fs::remove_file(&fifo);
        assert!(e.contains("is not a regular file (a FIFO)"), "{e}");
    }
}

#[test]
fn a_block_count_past_the_files_tensors_is_refused_before_layers_are_allocated() {
    let _m = measuring();
    let mut f = File::default()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 1 << 24)
        .kv_u32("llama.embedding_length", 8)
        .kv_u32("llama.attention.head_count", 2)
        .kv_u32("llama.attention.head_count_kv", 1)
        .kv_u32("llama.feed_forward_length", 16)
        .kv_u32("llama.context_length", 64);
    f = f.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    let names = ["token_embd.weight", "blk.0.attn_norm.weight"];
    for (i, n) in names.iter().enumerate() {
        f = f.tensor(n, &[8, 1], 32 * i as u64);
    }
    let g = Gguf::parse(f.data(&[0.5; 24]).bytes()).unwrap();
    let (result, peak) = peak_of(|| ascend_examples::llama_gguf::config(&g, Some(64)));
    let e = result.unwrap_err().0;
    assert!(
        e.contains("llama.block_count = 16777216, but the file has tensors for 1 blocks"),
        "{e}"
    );
    assert!(peak < 1 << 20, "{peak} bytes allocated to refuse it");
}

fn temp_file(bytes: &[u8], tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("gguf-hostile-{}-{tag}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn metadata_arrays_cost_about_what_the_file_holds() {
    let _m = measuring();
    // 32 MiB of byte and bool arrays: kept as bytes, not as a value per element.
    let n = 16u64 << 20;
    let bytes = File::default()
        .kv_array("bytes", 0, n, 1, 7)
        .kv_array("bools", 7, n, 1, 1)
        .bytes();
    let size = bytes.len();
    let path = temp_file(&bytes, "arrays");
    drop(bytes);
    let (g, peak) = peak_of(|| Gguf::open(&path).unwrap());
    let _ = std::fs::remove_file(&path);
    assert!(
        peak < size + size / 4,
        "reading a {size}-byte file held {peak} bytes at once"
    );
    match g.get("bytes").unwrap() {
        Value::Array(Array::U8(v)) => assert!(v.len() == n as usize && v.iter().all(|&b| b == 7)),
        other => panic!("not a byte array: {:?}", other.as_array().map(Array::len)),
    }
    assert_eq!(
        g.get("bools").unwrap().as_array().unwrap().len(),
        n as usize
    );
}

#[test]
fn declared_lengths_past_the_file_allocate_nothing() {
    let _m = measuring();
    // An array of 2^24 strings, a string of 2^40 bytes, 2^24 tensors: declared, not present.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("strings", {
            let mut f = File::default().kv_u32("x", 1).bytes();
            f.truncate(24);
            f[16..24].copy_from_slice(&1u64.to_le_bytes());
            string(&mut f, "a");
            f.extend(9u32.to_le_bytes());
            f.extend(8u32.to_le_bytes());
            f.extend((1u64 << 24).to_le_bytes());
            f
        }),
        ("long string", {
            let mut f = File::default().kv_u32("x", 1).bytes();
            f.truncate(24);
            f.extend((1u64 << 40).to_le_bytes());
            f
        }),
        ("tensor count", {
            let mut f = File::default().bytes();
            f[8..16].copy_from_slice(&(1u64 << 24).to_le_bytes());
            f
        }),
    ];
    for (what, bytes) in cases {
        let path = temp_file(&bytes, "declared");
        let (result, peak) = peak_of(|| Gguf::open(&path));
        let _ = std::fs::remove_file(&path);
        let e = result.unwrap_err().0;
        assert!(
            e.contains("truncated") || e.contains("left in the file"),
            "{what}: {e}"
        );
        assert!(
            peak < 64 << 10,
            "{what}: {peak} bytes allocated to refuse it"
        );
    }
}

#[test]
fn every_single_byte_mutation_is_answered_without_a_panic() {
    let _m = measuring();
    let base = File::default()
        .kv_str("general.architecture", "llama")
        .kv_strings("tokens", &["<s>", "hello"])
        .kv_u32("n", 3)
        .tensor("a", &[16], 0)
        .tensor("b", &[4, 4], 32)
        .data(&[0.25; 32])
        .bytes();
    let mut outcomes = [0usize; 2];
    for at in 0..base.len() {
        for v in [0u8, 1, 0x7f, 0x80, 0xff, base[at] ^ 0x10] {
            let mut f = base.clone();
            f[at] = v;
            let (result, peak) = peak_of(|| {
                std::panic::catch_unwind(|| {
                    Gguf::parse(f.clone()).map(|g| {
                        for name in g.tensors.keys() {
                            let _ = g.tensor_f32(name);
                        }
                    })
                })
            });
            let result =
                result.unwrap_or_else(|_| panic!("byte {at} = {v:#x}: the reader panicked"));
            outcomes[usize::from(result.is_ok())] += 1;
            assert!(peak < 1 << 20, "byte {at} = {v:#x}: {peak} bytes allocated");
        }
    }
    assert!(outcomes[0] > 0, "some mutations are refused: {outcomes:?}");
}

#[test]
fn a_max_model_len_past_the_context_length_is_refused_not_clamped() {
    let _m = measuring();
    let mut f = File::default()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.embedding_length", 8)
        .kv_u32("llama.attention.head_count", 2)
        .kv_u32("llama.attention.head_count_kv", 1)
        .kv_u32("llama.feed_forward_length", 16)
        .kv_u32("llama.context_length", 64)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    for (i, n) in ["token_embd.weight", "blk.0.attn_norm.weight"]
        .iter()
        .enumerate()
    {
        f = f.tensor(n, &[8, 1], 32 * i as u64);
    }
    let g = Gguf::parse(f.data(&[0.5; 24]).bytes()).unwrap();
    let cfg = |m| ascend_examples::llama_gguf::config(&g, m);
    assert_eq!(cfg(None).unwrap().max_position, 64);
    assert_eq!(cfg(Some(64)).unwrap().max_position, 64);
    assert_eq!(cfg(Some(10)).unwrap().max_position, 10);
    let e = cfg(Some(1 << 20)).unwrap_err().0;
    assert!(
        e.contains("a max model length of 1048576 is more than the model's context length of 64 (llama.context_length)"),
        "{e}"
    );
}

/// A one-layer `llama` file with a 256-wide hidden state whose query projection is of ggml type
/// `ty` with `q_bytes` as its data.
fn one_layer_with_query(ty: u32, q_bytes: &[u8]) -> Gguf {
    let f = File::default()
        .kv_str("general.architecture", "llama")
        .kv_u32("llama.block_count", 1)
        .kv_u32("llama.embedding_length", 256)
        .kv_u32("llama.attention.head_count", 2)
        .kv_u32("llama.attention.head_count_kv", 1)
        .kv_u32("llama.feed_forward_length", 256)
        .kv_u32("llama.context_length", 64)
        .kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .tensor("token_embd.weight", &[256, 4], 0)
        .tensor("blk.0.attn_norm.weight", &[256], 2048)
        .typed_tensor("blk.0.attn_q.weight", &[256, 256], ty, 2560)
        .data(&[0.5; 256 * 5])
        .raw(q_bytes);
    Gguf::parse(f.bytes()).unwrap()
}

#[test]
fn a_weight_type_no_provider_runs_is_refused_naming_tensor_type_and_providers() {
    use ascend_examples::llama_gguf::{config, weights, Storage};
    let _m = measuring();
    // Q4_K (ggml type 12): 256 elements in 144 bytes, one block per row.
    let g = one_layer_with_query(12, &vec![0u8; 256 * 144]);
    let cfg = config(&g, None).unwrap();
    for storage in [Storage::Quantized, Storage::Dequantized] {
        let e = weights(&g, &cfg, storage).unwrap_err().0;
        assert!(
            e.contains(
                "tensor blk.0.attn_q.weight is of ggml type Q4_K (12), which no provider here runs"
            ),
            "{storage:?}: {e}"
        );
        assert!(
            e.contains("quant_matmul runs Q4_0, Q4_1 and Q8_0 (the CPU backend)")
                && e.contains("matmul runs F32, F16 and BF16"),
            "{storage:?}: {e}"
        );
    }
}

#[test]
fn a_block_with_a_non_finite_scale_is_refused_naming_the_tensor_and_block() {
    use ascend_examples::llama_gguf::{config, weights, Storage};
    let _m = measuring();
    // Q8_0 (ggml type 8): a f16 scale and 32 int8 values per block, 8 blocks per 256-wide row.
    let mut q = Vec::new();
    for b in 0..256 * 8 {
        let scale = if b == 3 {
            f16::INFINITY
        } else {
            f16::from_f32(0.01)
        };
        q.extend(scale.to_bits().to_le_bytes());
        q.extend([1u8; 32]);
    }
    let g = one_layer_with_query(8, &q);
    let cfg = config(&g, None).unwrap();
    let e = weights(&g, &cfg, Storage::Quantized).unwrap_err().0;
    assert!(
        e.contains("tensor blk.0.attn_q.weight (Q8_0) has a non-finite scale in block 3"),
        "{e}"
    );
}
