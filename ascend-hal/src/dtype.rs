//! Element types of device buffers, at compile time ([`Element`]) and at run time ([`DType`]).

use std::fmt;

/// The element type of a buffer, known at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary16 ([`half::f16`]).
    F16,
    /// bfloat16 ([`half::bf16`]).
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 32-bit integer (block tables, slot mappings, sequence lengths).
    I32,
    /// Signed 64-bit integer.
    I64,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::I64,
    ];

    /// Size of one element in bytes.
    pub const fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 => 1,
            DType::I64 => 8,
        }
    }

    /// Whether this is a floating-point type.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// The short name used in logs and errors (`"f16"`, `"bf16"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        DType::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| crate::Error::InvalidArgument {
                op: "DType::from_str",
                message: format!(
                    "unknown dtype {s:?}; expected one of f32, f16, bf16, i8, u8, i32, i64"
                ),
            })
    }
}

/// A type that can live in a device buffer: plain old data with a run-time [`DType`].
///
/// `bytemuck::Pod` is what makes device memory safe to read back: any bit pattern a device writes
/// is a valid value of the type.
pub trait Element: bytemuck::Pod + Send + Sync + fmt::Debug + 'static {
    /// The run-time description of this type.
    const DTYPE: DType;
}

macro_rules! impl_element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(impl Element for $t { const DTYPE: DType = DType::$d; })*
    };
}

impl_element!(
    f32 => F32,
    half::f16 => F16,
    half::bf16 => BF16,
    i8 => I8,
    u8 => U8,
    i32 => I32,
    i64 => I64,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: Element>() {
        assert_eq!(T::DTYPE.size_in_bytes(), std::mem::size_of::<T>());
    }

    #[test]
    fn sizes_match_rust_types() {
        check::<f32>();
        check::<half::f16>();
        check::<half::bf16>();
        check::<i8>();
        check::<u8>();
        check::<i32>();
        check::<i64>();
    }

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(d.as_str().parse::<DType>().unwrap(), d);
        }
        let err = "f8".parse::<DType>().unwrap_err();
        assert!(err.to_string().contains("unknown dtype \"f8\""), "{err}");
    }
}
