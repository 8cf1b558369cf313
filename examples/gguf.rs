//! Reading GGUF model files (llama.cpp's format, version 2 and 3): the metadata, the tensor
//! directory, and tensors dequantized to `f32` (F32, F16, BF16, Q4_0, Q4_1, Q8_0: what
//! SmolLM2-135M-Instruct's Q4_1 file and the usual small quantisations use).
//!
//! Written here rather than taken from a crate: the well-kept implementation (candle's
//! `quantized::gguf_file`) comes with a tensor library of its own, and the format part this
//! engine needs is a header, a directory and three block layouts. Every length, count and offset
//! read from the file is checked against the file's size before use, so a truncated or hostile
//! file is an error naming what is wrong, never a panic or a huge allocation.
//!
//! Block layouts (ggml, 32 elements per block): Q4_0 `{f16 d; u8 qs[16]}`, `x = (q - 8) d`;
//! Q4_1 `{f16 d; f16 m; u8 qs[16]}`, `x = q d + m`; in both, element `j < 16` is the low nibble
//! of `qs[j]` and element `j + 16` its high nibble. Q8_0 `{f16 d; i8 qs[32]}`, `x = q d`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

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
    /// An array (of one element type).
    Array(Vec<Value>),
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
    pub fn as_array(&self) -> Option<&[Value]> {
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
    /// Elements in the tensor.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A GGUF file in memory: metadata, tensor directory, and the bytes.
#[derive(Debug, Clone)]
pub struct Gguf {
    /// The format version (2 or 3).
    pub version: u32,
    /// The metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor directory, by name.
    pub tensors: BTreeMap<String, TensorInfo>,
    data: Vec<u8>,
}

/// Most metadata entries, tensors, array elements and dims a file may declare (far above any
/// real model; a declared count past these is a corrupt file, not an allocation).
const MAX_COUNT: u64 = 1 << 24;
const MAX_DIMS: u32 = 4;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return bad(format!(
                "truncated: {what} needs {n} bytes at offset {}, the file has {}",
                self.at,
                self.bytes.len()
            ));
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn count(&mut self, what: &str) -> Result<u64> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return bad(format!("{what} = {n} is past any real model ({MAX_COUNT})"));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).or_else(|_| bad(format!("{what}: length {n}")))?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).or_else(|_| bad(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        let mut fixed = |n: usize| -> Result<[u8; 8]> {
            let b = self.take(n, key)?;
            let mut a = [0u8; 8];
            a[..n].copy_from_slice(b);
            Ok(a)
        };
        Ok(match ty {
            0 => Value::U64(fixed(1)?[0] as u64),
            1 => Value::I64(fixed(1)?[0] as i8 as i64),
            2 => {
                let a = fixed(2)?;
                Value::U64(u16::from_le_bytes([a[0], a[1]]) as u64)
            }
            3 => {
                let a = fixed(2)?;
                Value::I64(i16::from_le_bytes([a[0], a[1]]) as i64)
            }
            4 => {
                let a = fixed(4)?;
                Value::U64(u32::from_le_bytes([a[0], a[1], a[2], a[3]]) as u64)
            }
            5 => {
                let a = fixed(4)?;
                Value::I64(i32::from_le_bytes([a[0], a[1], a[2], a[3]]) as i64)
            }
            6 => {
                let a = fixed(4)?;
                Value::F64(f32::from_le_bytes([a[0], a[1], a[2], a[3]]) as f64)
            }
            7 => Value::Bool(fixed(1)?[0] != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth > 0 {
                    return bad(format!("{key}: nested arrays"));
                }
                let elem = self.u32(key)?;
                let n = self.count(key)?;
                let mut items = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(fixed(8)?)),
            11 => Value::I64(i64::from_le_bytes(fixed(8)?)),
            12 => Value::F64(f64::from_le_bytes(fixed(8)?)),
            other => return bad(format!("{key}: unknown metadata type {other}")),
        })
    }
}

impl Gguf {
    /// Reads and indexes `path`.
    pub fn open(path: &Path) -> Result<Gguf> {
        let bytes =
            std::fs::read(path).or_else(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        Gguf::parse(bytes)
    }

    /// Indexes a file's bytes.
    pub fn parse(bytes: Vec<u8>) -> Result<Gguf> {
        let mut r = Reader {
            bytes: &bytes,
            at: 0,
        };
        if r.take(4, "magic")? != b"GGUF" {
            return bad("not a GGUF file (no GGUF magic)");
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return bad(format!("version {version}; this reader takes 2 and 3"));
        }
        let n_tensors = r.count("tensor count")?;
        let n_kv = r.count("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut raw = Vec::new();
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
        let start = (r.at as u64).div_ceil(align) * align;
        let mut tensors = BTreeMap::new();
        for (name, dims, ty, offset) in raw {
            let info = TensorInfo {
                dims,
                ty,
                offset: start.saturating_add(offset),
            };
            if let Some(len) = info.byte_len() {
                let end = info.offset.checked_add(len as u64);
                if end.is_none_or(|e| e > bytes.len() as u64) {
                    return bad(format!(
                        "{name}: {len} bytes at offset {} run past the {}-byte file",
                        info.offset,
                        bytes.len()
                    ));
                }
            }
            if tensors.insert(name.clone(), info).is_some() {
                return bad(format!("tensor {name} is listed twice"));
            }
        }
        Ok(Gguf {
            version,
            metadata,
            tensors,
            data: bytes,
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

    /// The tensor `name`, dequantized to `f32` in ggml order (`dims[0]` fastest).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| GgufError(format!("no tensor {name}")))?;
        let len = info
            .byte_len()
            .ok_or_else(|| GgufError(format!("{name}: type {:?} is not read here", info.ty)))?;
        let at = info.offset as usize;
        dequantize(info.ty, &self.data[at..at + len], info.elements() as usize)
            .map_err(|e| GgufError(format!("{name}: {}", e.0)))
    }
}

impl TensorInfo {
    /// Bytes of the data, for the types this module reads (`None` for others, or overflow).
    fn byte_len(&self) -> Option<usize> {
        let (per, bytes) = self.ty.block()?;
        let n = self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        if !n.is_multiple_of(per as u64) {
            return None;
        }
        usize::try_from((n / per as u64).checked_mul(bytes as u64)?).ok()
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
        TensorType::Q4_0 | TensorType::Q4_1 => {
            for b in bytes.chunks_exact(size) {
                let d = half_at(b, 0);
                let (m, qs) = if ty == TensorType::Q4_1 {
                    (half_at(b, 2), &b[4..20])
                } else {
                    (-8.0 * d, &b[2..18])
                };
                out.extend(qs.iter().map(|&q| (q & 0x0f) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        TensorType::Q8_0 => {
            for b in bytes.chunks_exact(size) {
                let d = half_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
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

    #[test]
    fn quant_blocks_decode_as_ggml_defines_them() {
        // Q4_1: d = 0.5, m = -1; nibbles 0..15 low, 15..0 high.
        let mut b = Vec::new();
        b.extend(h(0.5));
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let x = dequantize(TensorType::Q4_1, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(x[j], j as f32 * 0.5 - 1.0);
            assert_eq!(x[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
        // Q4_0: x = (q - 8) d.
        let mut b = Vec::new();
        b.extend(h(0.25));
        b.extend((0..16u8).map(|j| j | (j << 4)));
        let x = dequantize(TensorType::Q4_0, &b, 32).unwrap();
        assert_eq!(x[0], -2.0);
        assert_eq!(x[31], 1.75);
        // Q8_0: x = q d with signed q.
        let mut b = Vec::new();
        b.extend(h(2.0));
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let x = dequantize(TensorType::Q8_0, &b, 32).unwrap();
        assert_eq!(x[0], -32.0);
        assert_eq!(x[31], 30.0);
        // Wrong lengths are errors.
        assert!(dequantize(TensorType::Q8_0, &b[..33], 32).is_err());
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
