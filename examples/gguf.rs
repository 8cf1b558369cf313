//! Reading GGUF model files (llama.cpp's format, version 2 and 3): the metadata, the tensor
//! directory, and tensors dequantized to `f32` (F32, F16, BF16, Q4_0, Q4_1, Q8_0: what
//! SmolLM2-135M-Instruct's Q4_1 file and the usual small quantisations use) or as their raw
//! bytes.
//!
//! Written here rather than taken from a crate: the well-kept implementation (candle's
//! `quantized::gguf_file`) comes with a tensor library of its own, and the format part this
//! engine needs is a header, a directory and three block layouts.
//!
//! A file is untrusted input. [`Gguf::open`] reads only regular files (a device such as
//! `/dev/zero` or a FIFO is refused before it is read), streams the header, and reads a
//! tensor's bytes only when asked for it. Every length, count and offset read from the file is
//! checked against the bytes the file has left before anything is allocated for it, and
//! metadata arrays are kept in their own element type, so memory stays within a small multiple
//! of the file's size whatever the file declares. The tensor directory is checked as
//! llama.cpp's loader checks it: every offset a multiple of `general.alignment`, every tensor
//! inside the file, no two tensors overlapping. A tensor holding a NaN or an infinity is an
//! error naming it.
//!
//! Block layouts (ggml, 32 elements per block): Q4_0 `{f16 d; u8 qs[16]}`, `x = (q - 8) d`;
//! Q4_1 `{f16 d; f16 m; u8 qs[16]}`, `x = q d + m`; in both, element `j < 16` is the low nibble
//! of `qs[j]` and element `j + 16` its high nibble. Q8_0 `{f16 d; i8 qs[32]}`, `x = q d`.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ascend_kernels::QuantFormat;
use half::{bf16, f16};

/// What can go wrong reading a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufError(pub String);

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GGUF: {}", self.0)
    }
}

impl std::error::Error for GgufError {}

type Result<T> = std::result::Result<T, GgufError>;

fn bad<T>(message: impl Into<String>) -> Result<T> {
    Err(GgufError(message.into()))
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// `f32` or `f64`.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array, in its element type.
    Array(Array),
}

/// A metadata array, kept in the element type the file declares (a byte array costs a byte an
/// element, not a [`Value`] an element).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    /// `uint8`.
    U8(Vec<u8>),
    /// `int8`.
    I8(Vec<i8>),
    /// `uint16`.
    U16(Vec<u16>),
    /// `int16`.
    I16(Vec<i16>),
    /// `uint32`.
    U32(Vec<u32>),
    /// `int32`.
    I32(Vec<i32>),
    /// `uint64`.
    U64(Vec<u64>),
    /// `int64`.
    I64(Vec<i64>),
    /// `float32`.
    F32(Vec<f32>),
    /// `float64`.
    F64(Vec<f64>),
    /// `bool`.
    Bool(Vec<bool>),
    /// `string`.
    String(Vec<String>),
}

impl Array {
    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            Array::U8(v) => v.len(),
            Array::I8(v) => v.len(),
            Array::U16(v) => v.len(),
            Array::I16(v) => v.len(),
            Array::U32(v) => v.len(),
            Array::I32(v) => v.len(),
            Array::U64(v) => v.len(),
            Array::I64(v) => v.len(),
            Array::F32(v) => v.len(),
            Array::F64(v) => v.len(),
            Array::Bool(v) => v.len(),
            Array::String(v) => v.len(),
        }
    }

    /// Whether it has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The strings of a string array.
    pub fn strings(&self) -> Option<&[String]> {
        match self {
            Array::String(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an integer array as `i64` (`None` for other arrays, or a `u64` past
    /// `i64::MAX`).
    pub fn integers(&self) -> Option<Vec<i64>> {
        fn all<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            Array::U8(v) => all(v, |x| Some(x.into())),
            Array::I8(v) => all(v, |x| Some(x.into())),
            Array::U16(v) => all(v, |x| Some(x.into())),
            Array::I16(v) => all(v, |x| Some(x.into())),
            Array::U32(v) => all(v, |x| Some(x.into())),
            Array::I32(v) => all(v, |x| Some(x.into())),
            Array::U64(v) => all(v, |x| i64::try_from(x).ok()),
            Array::I64(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor's element encoding (ggml's `ggml_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// 0.
    F32,
    /// 1.
    F16,
    /// 2: 32-element blocks, a scale.
    Q4_0,
    /// 3: 32-element blocks, a scale and a minimum.
    Q4_1,
    /// 8: 32-element blocks of bytes, a scale.
    Q8_0,
    /// 30.
    BF16,
    /// Any other type: listed in the directory, refused by [`Gguf::tensor_f32`].
    Other(u32),
}

impl TensorType {
    /// ggml's name for the type (`ggml_type_name`), `"unknown"` for a code ggml does not define.
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q4_1 => "Q4_1",
            TensorType::Q8_0 => "Q8_0",
            TensorType::BF16 => "BF16",
            TensorType::Other(code) => match code {
                6 => "Q5_0",
                7 => "Q5_1",
                9 => "Q8_1",
                10 => "Q2_K",
                11 => "Q3_K",
                12 => "Q4_K",
                13 => "Q5_K",
                14 => "Q6_K",
                15 => "Q8_K",
                16 => "IQ2_XXS",
                17 => "IQ2_XS",
                18 => "IQ3_XXS",
                19 => "IQ1_S",
                20 => "IQ4_NL",
                21 => "IQ3_S",
                22 => "IQ2_S",
                23 => "IQ4_XS",
                24 => "I8",
                25 => "I16",
                26 => "I32",
                27 => "I64",
                28 => "F64",
                29 => "IQ1_M",
                34 => "TQ1_0",
                35 => "TQ2_0",
                _ => "unknown",
            },
        }
    }

    fn from_code(code: u32) -> TensorType {
        match code {
            0 => TensorType::F32,
            1 => TensorType::F16,
            2 => TensorType::Q4_0,
            3 => TensorType::Q4_1,
            8 => TensorType::Q8_0,
            30 => TensorType::BF16,
            other => TensorType::Other(other),
        }
    }

    /// `(elements per block, bytes per block)`, for the types this module reads.
    fn block(self) -> Option<(usize, usize)> {
        Some(match self {
            TensorType::F32 => (1, 4),
            TensorType::F16 | TensorType::BF16 => (1, 2),
            TensorType::Q4_0 => (32, 18),
            TensorType::Q4_1 => (32, 20),
            TensorType::Q8_0 => (32, 34),
            TensorType::Other(_) => return None,
        })
    }

    /// `(elements per block, bytes per block)` of every ggml type whose layout this module
    /// knows, read or not (so that the directory's layout is checked for those too).
    fn layout(self) -> Option<(usize, usize)> {
        self.block().or(match self {
            // Q5_0, Q5_1, Q8_1 and the K-quants (Q2_K .. Q8_K), as ggml defines their blocks.
            TensorType::Other(6) => Some((32, 22)),
            TensorType::Other(7) => Some((32, 24)),
            TensorType::Other(9) => Some((32, 36)),
            TensorType::Other(10) => Some((256, 84)),
            TensorType::Other(11) => Some((256, 110)),
            TensorType::Other(12) => Some((256, 144)),
            TensorType::Other(13) => Some((256, 176)),
            TensorType::Other(14) => Some((256, 210)),
            TensorType::Other(15) => Some((256, 292)),
            // I8, I16, I32, I64, F64.
            TensorType::Other(24) => Some((1, 1)),
            TensorType::Other(25) => Some((1, 2)),
            TensorType::Other(26) => Some((1, 4)),
            TensorType::Other(27 | 28) => Some((1, 8)),
            _ => None,
        })
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// ggml dimensions: `dims[0]` varies fastest (a `[576, 49152]` embedding is 49,152 rows of
    /// 576).
    pub dims: Vec<u64>,
    /// The encoding.
    pub ty: TensorType,
    /// Byte offset of the data from the start of the file.
    pub offset: u64,
}

impl TensorInfo {
    /// Elements in the tensor (saturating for a corrupt directory; the loader refuses those).
    pub fn elements(&self) -> u64 {
        self.dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .unwrap_or(u64::MAX)
    }
}

/// Where a file's bytes come from: the open file (read a tensor at a time), or memory.
#[derive(Debug)]
enum Source {
    File(Mutex<File>),
    Bytes(Vec<u8>),
}

impl Source {
    /// `len` bytes at `offset` (the caller checked they lie inside the file).
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        match self {
            Source::Bytes(b) => {
                let at = usize::try_from(offset).unwrap_or(usize::MAX);
                b.get(at..at.saturating_add(len))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| GgufError(format!("{len} bytes at {offset}: past the data")))
            }
            Source::File(f) => {
                let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
                let mut buf = vec![0u8; len];
                f.seek(SeekFrom::Start(offset))
                    .and_then(|_| f.read_exact(&mut buf))
                    .map_err(|e| {
                        GgufError(format!(
                            "reading {len} bytes at offset {offset}: {e} (was the file changed \
                             while it was read?)"
                        ))
                    })?;
                Ok(buf)
            }
        }
    }
}

/// A GGUF file: metadata and tensor directory in memory, tensor data read on demand.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor directory, by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// The file's size in bytes.
    pub file_size: u64,
    source: Arc<Source>,
}

/// Most metadata entries, tensors and array elements a file may declare (far above any real
/// model; a declared count past these is a corrupt file, not an allocation). Counts below it are
/// also bounded by the bytes the file has left.
const MAX_COUNT: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;

/// Reads the header of a file of `len` bytes from `inner`, refusing any length past what is
/// left before allocating for it.
struct Reader<R: Read> {
    inner: R,
    at: u64,
    len: u64,
}

impl<R: Read> Reader<R> {
    fn left(&self) -> u64 {
        self.len - self.at
    }

    /// Refuses `what` needing `n` bytes when the file has fewer left.
    fn need(&self, n: u64, what: &str) -> Result<()> {
        if n > self.left() {
            return bad(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {} bytes",
                self.at, self.len
            ));
        }
        Ok(())
    }

    fn take(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        self.need(n as u64, what)?;
        let mut buf = vec![0u8; n];
        self.inner.read_exact(&mut buf).or_else(|e| {
            bad(format!(
                "{what}: reading {n} bytes at offset {}: {e}",
                self.at
            ))
        })?;
        self.at += n as u64;
        Ok(buf)
    }

    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut a = [0u8; N];
        self.inner
            .read_exact(&mut a)
            .or_else(|e| bad(format!("{what}: reading at offset {}: {e}", self.at)))?;
        self.at += N as u64;
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    /// A count of items each taking at least `min_bytes` of the file.
    fn count(&mut self, what: &str, min_bytes: u64) -> Result<u64> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return bad(format!("{what} = {n} is past any real model ({MAX_COUNT})"));
        }
        self.need(n.saturating_mul(min_bytes), what).or_else(|_| {
            bad(format!(
                "{what} = {n}, but the {} bytes left in the file hold at most {}",
                self.left(),
                self.left() / min_bytes.max(1)
            ))
        })?;
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        self.need(n, what)?;
        let b = self.take(n as usize, what)?;
        String::from_utf8(b).or_else(|_| bad(format!("{what} is not UTF-8")))
    }

    /// `n` fixed-width elements, checked against the bytes left first, read through a small
    /// buffer (so an array costs its own size once, not twice).
    fn elements<const N: usize, T>(
        &mut self,
        n: u64,
        key: &str,
        f: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        self.need(n.saturating_mul(N as u64), key)?;
        let mut out = Vec::with_capacity(n as usize);
        let mut buf = vec![0u8; 4096 * N];
        let mut left = n as usize;
        while left > 0 {
            let k = left.min(4096);
            let chunk = &mut buf[..k * N];
            self.inner
                .read_exact(chunk)
                .or_else(|e| bad(format!("{key}: reading at offset {}: {e}", self.at)))?;
            self.at += (k * N) as u64;
            out.extend(chunk.chunks_exact(N).map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            }));
            left -= k;
        }
        Ok(out)
    }

    fn array(&mut self, key: &str) -> Result<Array> {
        let elem = self.u32(key)?;
        let n = self.count(key, 0)?;
        Ok(match elem {
            0 => Array::U8(self.elements(n, key, |[b]: [u8; 1]| b)?),
            1 => Array::I8(self.elements(n, key, |[b]: [u8; 1]| b as i8)?),
            2 => Array::U16(self.elements(n, key, u16::from_le_bytes)?),
            3 => Array::I16(self.elements(n, key, i16::from_le_bytes)?),
            4 => Array::U32(self.elements(n, key, u32::from_le_bytes)?),
            5 => Array::I32(self.elements(n, key, i32::from_le_bytes)?),
            6 => Array::F32(self.elements(n, key, f32::from_le_bytes)?),
            7 => Array::Bool(self.elements(n, key, |[b]: [u8; 1]| b != 0)?),
            8 => {
                // Each string takes at least its 8-byte length.
                self.need(n.saturating_mul(8), key)?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.string(key)?);
                }
                Array::String(v)
            }
            10 => Array::U64(self.elements(n, key, u64::from_le_bytes)?),
            11 => Array::I64(self.elements(n, key, i64::from_le_bytes)?),
            12 => Array::F64(self.elements(n, key, f64::from_le_bytes)?),
            9 => return bad(format!("{key}: nested arrays")),
            other => return bad(format!("{key}: unknown array element type {other}")),
        })
    }

    fn value(&mut self, ty: u32, key: &str) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.fixed::<1>(key)?[0] as u64),
            1 => Value::I64(self.fixed::<1>(key)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.fixed(key)?) as u64),
            3 => Value::I64(i16::from_le_bytes(self.fixed(key)?) as i64),
            4 => Value::U64(u32::from_le_bytes(self.fixed(key)?) as u64),
            5 => Value::I64(i32::from_le_bytes(self.fixed(key)?) as i64),
            6 => Value::F64(f32::from_le_bytes(self.fixed(key)?) as f64),
            7 => Value::Bool(self.fixed::<1>(key)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => Value::Array(self.array(key)?),
            10 => Value::U64(u64::from_le_bytes(self.fixed(key)?)),
            11 => Value::I64(i64::from_le_bytes(self.fixed(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.fixed(key)?)),
            other => return bad(format!("{key}: unknown metadata type {other}")),
        })
    }
}

impl Gguf {
    /// Opens and indexes `path`: a regular file (anything else is refused before it is
    /// read); its tensors are read when asked for.
    pub fn open(path: &Path) -> Result<Gguf> {
        let shown = path.display();
        // `stat` before `open`: opening a FIFO blocks until a writer comes.
        let meta = std::fs::metadata(path).or_else(|e| bad(format!("cannot read {shown}: {e}")))?;
        if !meta.is_file() {
            return bad(format!(
                "{shown} is not a regular file ({}); give the path of a .gguf file",
                kind_of(&meta)
            ));
        }
        let file = File::open(path).or_else(|e| bad(format!("cannot read {shown}: {e}")))?;
        let meta = file
            .metadata()
            .or_else(|e| bad(format!("cannot read {shown}: {e}")))?;
        if !meta.is_file() {
            return bad(format!(
                "{shown} is not a regular file ({})",
                kind_of(&meta)
            ));
        }
        let len = meta.len();
        let header = Self::read_header(BufReader::new(&file), len)
            .map_err(|e| GgufError(format!("{shown}: {}", e.0)))?;
        Ok(header.with_source(Source::File(Mutex::new(file)), len))
    }

    /// Indexes a file's bytes held in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<Gguf> {
        let len = bytes.len() as u64;
        let header = Self::read_header(&bytes[..], len)?;
        Ok(header.with_source(Source::Bytes(bytes), len))
    }

    fn read_header<R: Read>(inner: R, len: u64) -> Result<Header> {
        let mut r = Reader { inner, at: 0, len };
        if &r.fixed::<4>("magic")? != b"GGUF" {
            return bad("not a GGUF file (no GGUF magic)");
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return bad(format!("version {version}; this reader takes 2 and 3"));
        }
        // A tensor record takes at least 8 + 4 + 8 + 4 + 8 bytes; a key/value 8 + 4 + 1.
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.count("metadata count", 13)?;
        if n_tensors > MAX_COUNT {
            return bad(format!(
                "tensor count = {n_tensors} is past any real model ({MAX_COUNT})"
            ));
        }
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key)?;
            if metadata.insert(key.clone(), v).is_some() {
                return bad(format!("metadata key {key} is listed twice"));
            }
        }
        r.need(n_tensors.saturating_mul(32), "the tensor directory")?;
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let nd = r.u32(&name)?;
            if nd == 0 || nd > MAX_DIMS {
                return bad(format!("{name}: {nd} dims"));
            }
            let dims = (0..nd)
                .map(|_| r.u64(&name))
                .collect::<Result<Vec<u64>>>()?;
            let ty = TensorType::from_code(r.u32(&name)?);
            let offset = r.u64(&name)?;
            raw.push((name, dims, ty, offset));
        }
        let align = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32);
        if align == 0 || !align.is_power_of_two() || align > 1 << 20 {
            return bad(format!("general.alignment = {align}"));
        }
        let start = r.at.div_ceil(align) * align;
        let mut tensors = BTreeMap::new();
        let mut extents = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            if !offset.is_multiple_of(align) {
                return bad(format!(
                    "tensor {name} has offset {offset}, not a multiple of the alignment {align} \
                     (general.alignment); the file is corrupt"
                ));
            }
            let info = TensorInfo {
                dims,
                ty,
                offset: start.saturating_add(offset),
            };
            if info.offset > len {
                return bad(format!(
                    "tensor {name} starts at offset {}, past the {len}-byte file",
                    info.offset
                ));
            }
            if let Some(bytes) = info.layout_len() {
                let end = info.offset.checked_add(bytes);
                if end.is_none_or(|e| e > len) {
                    return bad(format!(
                        "tensor {name}: {bytes} bytes at offset {} run past the {len}-byte file",
                        info.offset
                    ));
                }
                if bytes > 0 {
                    extents.push((info.offset, info.offset + bytes, name.clone()));
                }
            } else if info.ty.layout().is_some() {
                return bad(format!(
                    "tensor {name}: dims {:?} do not make whole blocks of {:?}",
                    info.dims, info.ty
                ));
            }
            if tensors.insert(name.clone(), info).is_some() {
                return bad(format!("tensor {name} is listed twice"));
            }
        }
        extents.sort();
        for pair in extents.windows(2) {
            let ((a0, a1, a), (b0, b1, b)) = (&pair[0], &pair[1]);
            if b0 < a1 {
                return bad(format!(
                    "tensors {a} (bytes {a0}..{a1}) and {b} (bytes {b0}..{b1}) overlap; the \
                     file is corrupt"
                ));
            }
        }
        Ok(Header {
            version,
            metadata,
            tensors,
        })
    }

    /// A metadata value, or an error naming the key.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| GgufError(format!("no metadata key {key}")))
    }

    /// An unsigned integer metadata value.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)?
            .as_u64()
            .ok_or_else(|| GgufError(format!("{key} is not an unsigned integer")))
    }

    /// A float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)?
            .as_f64()
            .ok_or_else(|| GgufError(format!("{key} is not a number")))
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| GgufError(format!("{key} is not a string")))
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| GgufError(format!("no tensor {name}")))
    }

    /// The encoded bytes of tensor `name` (of a type this module reads), read from the file.
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let info = self.info(name)?;
        let len = info
            .byte_len()
            .ok_or_else(|| GgufError(format!("{name}: type {:?} is not read here", info.ty)))?;
        self.source.read_at(info.offset, len)
    }

    /// The tensor `name`, dequantized to `f32` in ggml order (`dims[0]` fastest). A NaN or an
    /// infinity in it is an error naming the tensor and the element.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info(name)?;
        let bytes = self.tensor_bytes(name)?;
        let values = dequantize(info.ty, &bytes, info.elements() as usize)
            .map_err(|e| GgufError(format!("{name}: {}", e.0)))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return bad(format!(
                "tensor {name} holds {} at element {i}: the weights are corrupt",
                values[i]
            ));
        }
        Ok(values)
    }
}

/// What `meta` is, for refusing a path that is not a regular file.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a file"
}

/// The parsed header, before the data source is attached.
struct Header {
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl Header {
    fn with_source(self, source: Source, file_size: u64) -> Gguf {
        Gguf {
            version: self.version,
            metadata: self.metadata,
            tensors: self.tensors,
            file_size,
            source: Arc::new(source),
        }
    }
}

impl TensorInfo {
    /// Bytes of the data, for the types this module reads (`None` for others, or overflow).
    fn byte_len(&self) -> Option<usize> {
        self.ty.block()?;
        usize::try_from(self.layout_len()?).ok()
    }

    /// Bytes of the data, for every type whose layout is known.
    fn layout_len(&self) -> Option<u64> {
        let (per, bytes) = self.ty.layout()?;
        let n = self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        if !n.is_multiple_of(per as u64) {
            return None;
        }
        (n / per as u64).checked_mul(bytes as u64)
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Decodes `n` elements of type `ty` from `bytes` (exactly their encoded length).
pub fn dequantize(ty: TensorType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let Some((per, size)) = ty.block() else {
        return bad(format!("type {ty:?} is not read here"));
    };
    if !n.is_multiple_of(per) || bytes.len() != n / per * size {
        return bad(format!(
            "{n} elements of {ty:?} take {} bytes, got {}",
            n / per * size,
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        TensorType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        TensorType::F16 => out.extend(bytes.chunks_exact(2).map(|c| half_at(c, 0))),
        TensorType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        TensorType::Q4_0 | TensorType::Q4_1 | TensorType::Q8_0 => {
            let format = match ty {
                TensorType::Q4_0 => QuantFormat::Q4_0,
                TensorType::Q4_1 => QuantFormat::Q4_1,
                _ => QuantFormat::Q8_0,
            };
            out.resize(n, 0.0);
            ascend_kernels::quant::dequantize(format, bytes, &mut out)
                .map_err(|e| GgufError(e.to_string()))?;
        }
        TensorType::Other(_) => unreachable!("refused above"),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    /// The block types decode through `ascend_kernels::quant` (tested there value by value).
    #[test]
    fn quant_blocks_decode_as_ggml_defines_them() {
        // Q4_1: d = 0.5, m = -1; nibbles 0..15 low, 15..0 high.
        let mut b = Vec::new();
        b.extend(h(0.5));
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let x = dequantize(TensorType::Q4_1, &b, 32).unwrap();
        assert_eq!((x[1], x[16]), (-0.5, 6.5));
        // Wrong lengths are errors.
        assert!(dequantize(TensorType::Q8_0, &b[..19], 32).is_err());
        assert!(dequantize(TensorType::Q4_1, &[0; 20], 31).is_err());
        assert!(dequantize(TensorType::Other(12), &[0; 20], 32).is_err());
    }

    /// A little GGUF file: two metadata entries and one F16 tensor.
    fn tiny() -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend(3u32.to_le_bytes());
        f.extend(1u64.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        let s = |f: &mut Vec<u8>, t: &str| {
            f.extend((t.len() as u64).to_le_bytes());
            f.extend(t.as_bytes());
        };
        s(&mut f, "general.architecture");
        f.extend(8u32.to_le_bytes());
        s(&mut f, "llama");
        s(&mut f, "llama.block_count");
        f.extend(4u32.to_le_bytes());
        f.extend(30u32.to_le_bytes());
        s(&mut f, "w");
        f.extend(2u32.to_le_bytes());
        f.extend(2u64.to_le_bytes());
        f.extend(3u64.to_le_bytes());
        f.extend(1u32.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        while !f.len().is_multiple_of(32) {
            f.push(0);
        }
        for v in 0..6 {
            f.extend(h(v as f32));
        }
        f
    }

    #[test]
    fn a_small_file_reads_back() {
        let g = Gguf::parse(tiny()).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u64("llama.block_count").unwrap(), 30);
        assert_eq!(g.tensors["w"].dims, vec![2, 3]);
        assert_eq!(
            g.tensor_f32("w").unwrap(),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        assert!(g.get("missing").unwrap_err().0.contains("missing"));
        assert!(g
            .tensor_f32("nope")
            .unwrap_err()
            .0
            .contains("no tensor nope"));
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error() {
        let f = tiny();
        for cut in 0..f.len() {
            assert!(Gguf::parse(f[..cut].to_vec()).is_err(), "cut at {cut}");
        }
        // A count past any real model, a tensor past the end, a bad magic.
        let mut g = f.clone();
        g[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Gguf::parse(g)
            .unwrap_err()
            .0
            .contains("past any real model"));
        let mut g = f.clone();
        // The tensor record: name "w" (length-prefixed), the dim count, then the dims.
        let name_at = f
            .windows(9)
            .position(|w| w == b"\x01\0\0\0\0\0\0\0w")
            .unwrap();
        let dims_at = name_at + 9 + 4;
        g[dims_at..dims_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(Gguf::parse(g).is_err());
        let mut g = f;
        g[0] = b'X';
        assert!(Gguf::parse(g).unwrap_err().0.contains("magic"));
    }
}
