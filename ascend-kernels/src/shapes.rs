//! One parameter struct per kernel, with named shapes, and the checks that turn a mismatch into
//! an error naming the argument and the shape it must have.

use std::fmt;

use ascend_hal::{Error, Result};

use crate::float::KvFloat;
use crate::quant::QuantFormat;

/// The shape of one layer's paged K (or V) cache: `[num_blocks, block_size, num_kv_heads,
/// head_size]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    /// Blocks in the cache.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// KV heads.
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_size: usize,
}

impl CacheShape {
    /// Elements of one token's K (or V) across heads.
    pub fn token_stride(&self) -> usize {
        self.num_kv_heads.saturating_mul(self.head_size)
    }
    /// Elements of one block.
    pub fn block_stride(&self) -> usize {
        self.block_size.saturating_mul(self.token_stride())
    }
    /// Elements of the whole cache.
    pub fn elements(&self) -> usize {
        self.num_blocks.saturating_mul(self.block_stride())
    }
    /// Slots in the cache.
    pub fn slots(&self) -> usize {
        self.num_blocks.saturating_mul(self.block_size)
    }
    fn describe(&self) -> impl fmt::Display + '_ {
        Shape(|f| {
            write!(
                f,
                "[num_blocks={}, block_size={}, kv_heads={}, head_size={}]",
                self.num_blocks, self.block_size, self.num_kv_heads, self.head_size
            )
        })
    }
}

/// `reshape_and_cache`: write `num_tokens` new K and V rows into the paged caches at their slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReshapeAndCache {
    /// Tokens in `key`, `value` and `slot_mapping`.
    pub num_tokens: usize,
    /// The caches' shape.
    pub cache: CacheShape,
}

/// Decode attention: one query token per sequence, over its paged context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PagedAttention {
    /// Sequences (one query token each).
    pub num_seqs: usize,
    /// Query heads: a multiple of `cache.num_kv_heads` (grouped-query attention).
    pub num_heads: usize,
    /// The caches' shape.
    pub cache: CacheShape,
    /// Width of each block-table row.
    pub max_blocks_per_seq: usize,
    /// Softmax scale, usually `1 / sqrt(head_size)`.
    pub scale: f32,
    /// Attend only to the last this many positions (Mistral-style), if set.
    pub sliding_window: Option<usize>,
}

/// Chunked-prefill attention: a chunk of new query tokens per sequence, each attending causally to
/// its sequence's cached context and to the chunk's earlier tokens (all already in the cache).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefillAttention {
    /// Sequences.
    pub num_seqs: usize,
    /// Query tokens across all sequences.
    pub num_tokens: usize,
    /// Query heads: a multiple of `cache.num_kv_heads`.
    pub num_heads: usize,
    /// The caches' shape.
    pub cache: CacheShape,
    /// Width of each block-table row.
    pub max_blocks_per_seq: usize,
    /// Softmax scale.
    pub scale: f32,
    /// Attend only to the last this many positions, if set.
    pub sliding_window: Option<usize>,
}

/// Which elements rotary embedding pairs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// GPT-NeoX / Llama: element `i` with `i + rotary_dim / 2`.
    Neox,
    /// GPT-J: element `2i` with `2i + 1`.
    GptJ,
}

/// Rotary position embedding applied in place to queries and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotary {
    /// Tokens.
    pub num_tokens: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key heads.
    pub num_kv_heads: usize,
    /// Elements per head.
    pub head_size: usize,
    /// Leading elements of each head that rotate (even, at most `head_size`).
    pub rotary_dim: usize,
    /// Rows of the cos/sin cache (`[max_position, rotary_dim]`: cosines then sines).
    pub max_position: usize,
    /// Pairing.
    pub style: RopeStyle,
}

/// RMSNorm over rows of `hidden` elements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RmsNorm {
    /// Rows.
    pub num_tokens: usize,
    /// Elements per row.
    pub hidden: usize,
    /// Added to the mean square.
    pub eps: f32,
}

/// `silu(x[:, :d]) * x[:, d:]` for rows of `2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SiluAndMul {
    /// Rows.
    pub num_tokens: usize,
    /// Output elements per row (the input has twice as many).
    pub d: usize,
}

/// Embedding lookup: the rows of a `[vocab, hidden]` table at `num_tokens` token ids (`i32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Embedding {
    /// Token ids, and rows of the output.
    pub num_tokens: usize,
    /// Rows of the table.
    pub vocab: usize,
    /// Elements per row.
    pub hidden: usize,
}

/// Elementwise `out = a + b` over `[rows, cols]`: `b` is `[rows, cols]` (a residual), or
/// `[cols]` added to every row (a bias) when `broadcast` is set. Sums in `f32`, rounded once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Add {
    /// Rows of `a` and `out`.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// `b` is one row, added to every row of `a`.
    pub broadcast: bool,
}

/// The index (`i32`) of each row's largest value, the first on ties; a NaN counts as the
/// largest (as `torch.argmax`), so corrupt logits show rather than hide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argmax {
    /// Rows (one index each).
    pub rows: usize,
    /// Elements per row (the vocabulary, for logits); positive.
    pub cols: usize,
}

/// Each row's `k` largest values, largest first (the lower index first on ties), and their
/// indices (`i64`, as `torch.topk` and `aclnnTopk` give them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK {
    /// Rows.
    pub rows: usize,
    /// Elements per row; positive.
    pub cols: usize,
    /// Values kept per row, at most `cols`.
    pub k: usize,
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` (a linear layer with PyTorch's `[out, in]` weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matmul {
    /// Rows of `x` and `out` (tokens).
    pub m: usize,
    /// Columns of `out` (output features).
    pub n: usize,
    /// Columns of `x` (input features).
    pub k: usize,
}

impl Matmul {
    /// Checks every length.
    pub fn validate<T: KvFloat>(&self, out: usize, x: usize, w: usize) -> Result<()> {
        const OP: &str = "matmul";
        positive(OP, &[("n", self.n), ("k", self.k)])?;
        representable(OP, "the weight", &[self.n, self.k])?;
        expect_len::<T>(
            OP,
            "out",
            format_args!("[m={}, n={}]", self.m, self.n),
            dims(&[self.m, self.n]),
            out,
        )?;
        expect_len::<T>(
            OP,
            "x",
            format_args!("[m={}, k={}]", self.m, self.k),
            dims(&[self.m, self.k]),
            x,
        )?;
        expect_len::<T>(
            OP,
            "weight",
            format_args!("[n={}, k={}]", self.n, self.k),
            dims(&[self.n, self.k]),
            w,
        )
    }
}

/// `out = x · wᵀ` for a weight `[n, k]` in a block format ([`crate::quant`]): `m` rows of `x`
/// (`[m, k]`, the op's float type) quantized to int8 per block of 32, then exact integer dot
/// products per block, scaled (see [`crate::reference::quant_matmul`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantMatmul {
    /// Rows of `x` and `out` (tokens).
    pub m: usize,
    /// Columns of `out` (output features): rows of the weight.
    pub n: usize,
    /// Columns of `x` (input features): a multiple of 32 for the block formats; at most
    /// [`INT8_MAX_K`](crate::quant::INT8_MAX_K) for `Int8PerChannel`.
    pub k: usize,
    /// The weight's format.
    pub format: QuantFormat,
}

impl QuantMatmul {
    /// Checks every length: `out` and `x` in elements, the weight in bytes.
    pub fn validate<T: KvFloat>(&self, out: usize, x: usize, weight_bytes: usize) -> Result<()> {
        const OP: &str = "quant_matmul";
        positive(OP, &[("n", self.n), ("k", self.k)])?;
        let f = self.format;
        let Some(row) = f.row_bytes(self.k) else {
            return Err(invalid(
                OP,
                format!("k = {} is not {}", self.k, f.row_rule()),
            ));
        };
        if !f.is_blocks() && self.k > crate::quant::INT8_MAX_K {
            return Err(invalid(
                OP,
                format!(
                    "k = {} is past {} for {f} weights (an int32 sum of k int8 products could \
                     overflow); split k",
                    self.k,
                    crate::quant::INT8_MAX_K
                ),
            ));
        }
        representable(OP, "the weight", &[self.n, row])?;
        expect_len::<T>(
            OP,
            "out",
            format_args!("[m={}, n={}]", self.m, self.n),
            dims(&[self.m, self.n]),
            out,
        )?;
        expect_len::<T>(
            OP,
            "x",
            format_args!("[m={}, k={}]", self.m, self.k),
            dims(&[self.m, self.k]),
            x,
        )?;
        let want = self.n * row;
        if weight_bytes != want {
            return Err(Error::ShapeMismatch {
                op: OP,
                arg: "weight",
                expected: if f.is_blocks() {
                    format!(
                        "[n={}, k={}] {f} ({} bytes: {} blocks of {} per row)",
                        self.n,
                        self.k,
                        want,
                        self.k / crate::quant::BLOCK,
                        f.block_bytes()
                    )
                } else {
                    format!(
                        "[n={}, k={}] {f} ({} bytes: {} int8 values and an f32 scale per row)",
                        self.n, self.k, want, self.k
                    )
                },
                actual: format!("{weight_bytes} bytes"),
            });
        }
        Ok(())
    }
}

/// The number of elements of a shape; `usize::MAX` when it overflows, which no buffer has, so
/// the length check that follows fails with an error instead of a panic.
pub fn dims(dims: &[usize]) -> usize {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .unwrap_or(usize::MAX)
}

/// Errors unless every named dimension is positive (a zero one would make a kernel divide its
/// work into rows of zero elements).
fn positive(op: &'static str, named: &[(&str, usize)]) -> Result<()> {
    match named.iter().find(|(_, d)| *d == 0) {
        Some((name, _)) => Err(invalid(op, format!("{name} must be positive"))),
        None => Ok(()),
    }
}

/// Errors when a row the kernel works in (a product of dimensions) overflows `usize`: kernels
/// compute row sizes even when there are no rows.
fn representable(op: &'static str, what: &str, named: &[usize]) -> Result<()> {
    if named
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .is_none()
    {
        return Err(invalid(
            op,
            format!("{what} ({named:?}) has more elements than usize counts"),
        ));
    }
    Ok(())
}

/// How a wanted element count reads in an error.
fn count(want: usize) -> String {
    if want == usize::MAX {
        "more elements than usize counts".into()
    } else {
        format!("{want} elements")
    }
}

/// A shape as an error describes it, formatted only when an error is made: every op checks its
/// lengths on every call, and formatting the descriptions eagerly cost a decode step ~1% of the
/// stream's time.
struct Shape<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result>(F);

impl<F: Fn(&mut fmt::Formatter<'_>) -> fmt::Result> fmt::Display for Shape<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (self.0)(f)
    }
}

/// Checks a length against the shape it must have. `shape` is formatted only for the error (a
/// `format_args!` costs nothing when the length is right).
pub fn expect_len<T: KvFloat>(
    op: &'static str,
    arg: &'static str,
    shape: impl fmt::Display,
    want: usize,
    got: usize,
) -> Result<()> {
    if want == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            arg,
            expected: format!("{shape} {} ({})", T::DTYPE, count(want)),
            actual: format!("{got} elements"),
        })
    }
}

/// Checks the length of an `i32`/`i64` index argument (`shape` as in [`expect_len`]).
pub fn expect_index_len(
    op: &'static str,
    arg: &'static str,
    shape: impl fmt::Display,
    want: usize,
    got: usize,
) -> Result<()> {
    if want == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            arg,
            expected: format!("{shape} ({})", count(want)),
            actual: format!("{got} elements"),
        })
    }
}

fn invalid(op: &'static str, message: String) -> Error {
    Error::InvalidArgument { op, message }
}

fn check_cache(op: &'static str, c: &CacheShape) -> Result<()> {
    if c.num_blocks == 0 || c.block_size == 0 || c.num_kv_heads == 0 || c.head_size == 0 {
        return Err(invalid(
            op,
            format!("every cache dimension must be positive: {}", c.describe()),
        ));
    }
    representable(
        op,
        "the cache",
        &[c.num_blocks, c.block_size, c.num_kv_heads, c.head_size],
    )
}

impl ReshapeAndCache {
    /// Checks every length; slots are checked by the kernel.
    pub fn validate<T: KvFloat>(
        &self,
        key: usize,
        value: usize,
        key_cache: usize,
        value_cache: usize,
        slots: usize,
    ) -> Result<()> {
        const OP: &str = "reshape_and_cache";
        check_cache(OP, &self.cache)?;
        let c = &self.cache;
        let rows = Shape(|f| {
            write!(
                f,
                "[num_tokens={}, kv_heads={}, head_size={}]",
                self.num_tokens, c.num_kv_heads, c.head_size
            )
        });
        expect_len::<T>(
            OP,
            "key",
            &rows,
            dims(&[self.num_tokens, c.token_stride()]),
            key,
        )?;
        expect_len::<T>(
            OP,
            "value",
            rows,
            dims(&[self.num_tokens, c.token_stride()]),
            value,
        )?;
        expect_len::<T>(OP, "key_cache", c.describe(), c.elements(), key_cache)?;
        expect_len::<T>(OP, "value_cache", c.describe(), c.elements(), value_cache)?;
        expect_index_len(
            OP,
            "slot_mapping",
            format_args!("[num_tokens={}] i32", self.num_tokens),
            self.num_tokens,
            slots,
        )
    }
}

/// A window of 0 tokens would attend to nothing (and a kernel would return zeros): refused.
fn check_window(op: &'static str, window: Option<usize>) -> Result<()> {
    if window == Some(0) {
        return Err(invalid(
            op,
            "sliding_window must be at least 1 token (None for no window)".into(),
        ));
    }
    Ok(())
}

fn check_heads(op: &'static str, num_heads: usize, c: &CacheShape) -> Result<()> {
    if num_heads == 0 || !num_heads.is_multiple_of(c.num_kv_heads) {
        return Err(invalid(
            op,
            format!(
                "num_heads {num_heads} must be a positive multiple of num_kv_heads {}",
                c.num_kv_heads
            ),
        ));
    }
    representable(op, "a query row", &[num_heads, c.head_size])
}

impl PagedAttention {
    /// Checks every length.
    #[allow(clippy::too_many_arguments)]
    pub fn validate<T: KvFloat>(
        &self,
        out: usize,
        q: usize,
        key_cache: usize,
        value_cache: usize,
        block_tables: usize,
        seq_lens: usize,
    ) -> Result<()> {
        const OP: &str = "paged_attention";
        check_cache(OP, &self.cache)?;
        check_window(OP, self.sliding_window)?;
        check_heads(OP, self.num_heads, &self.cache)?;
        let c = &self.cache;
        let rows = Shape(|f| {
            write!(
                f,
                "[num_seqs={}, num_heads={}, head_size={}]",
                self.num_seqs, self.num_heads, c.head_size
            )
        });
        let n = dims(&[self.num_seqs, self.num_heads, c.head_size]);
        expect_len::<T>(OP, "query", &rows, n, q)?;
        expect_len::<T>(OP, "out", rows, n, out)?;
        expect_len::<T>(OP, "key_cache", c.describe(), c.elements(), key_cache)?;
        expect_len::<T>(OP, "value_cache", c.describe(), c.elements(), value_cache)?;
        expect_index_len(
            OP,
            "block_tables",
            format_args!(
                "[num_seqs={}, max_blocks={}] i32",
                self.num_seqs, self.max_blocks_per_seq
            ),
            dims(&[self.num_seqs, self.max_blocks_per_seq]),
            block_tables,
        )?;
        expect_index_len(
            OP,
            "seq_lens",
            format_args!("[num_seqs={}] i32", self.num_seqs),
            self.num_seqs,
            seq_lens,
        )
    }
}

impl PagedAttention {
    /// Checks the host copy of the sequence lengths (`seq_lens_host`): one per sequence, each
    /// within what a block-table row reaches.
    pub fn validate_host(&self, seq_lens: &[i32]) -> Result<()> {
        check_host_lens(
            "paged_attention",
            &self.cache,
            self.max_blocks_per_seq,
            self.num_seqs,
            seq_lens,
        )
    }
}

impl PrefillAttention {
    /// Checks the host copies of the query offsets and sequence lengths: `num_seqs + 1`
    /// offsets from 0 to `num_tokens`, never decreasing, each sequence's queries at most its
    /// length, each length within what a block-table row reaches.
    pub fn validate_host(&self, query_start_loc: &[i32], seq_lens: &[i32]) -> Result<()> {
        const OP: &str = "paged_prefill_attention";
        expect_index_len(
            OP,
            "query_start_loc_host",
            format_args!("[num_seqs+1={}] i32", self.num_seqs.saturating_add(1)),
            self.num_seqs.saturating_add(1),
            query_start_loc.len(),
        )?;
        check_host_lens(
            OP,
            &self.cache,
            self.max_blocks_per_seq,
            self.num_seqs,
            seq_lens,
        )?;
        query_ranges(self, query_start_loc, seq_lens).map(|_| ())
    }

    /// Checks every length.
    #[allow(clippy::too_many_arguments)]
    pub fn validate<T: KvFloat>(
        &self,
        out: usize,
        q: usize,
        key_cache: usize,
        value_cache: usize,
        block_tables: usize,
        query_starts: usize,
        seq_lens: usize,
    ) -> Result<()> {
        const OP: &str = "paged_prefill_attention";
        check_cache(OP, &self.cache)?;
        check_window(OP, self.sliding_window)?;
        check_heads(OP, self.num_heads, &self.cache)?;
        let c = &self.cache;
        let rows = Shape(|f| {
            write!(
                f,
                "[num_tokens={}, num_heads={}, head_size={}]",
                self.num_tokens, self.num_heads, c.head_size
            )
        });
        let n = dims(&[self.num_tokens, self.num_heads, c.head_size]);
        expect_len::<T>(OP, "query", &rows, n, q)?;
        expect_len::<T>(OP, "out", rows, n, out)?;
        expect_len::<T>(OP, "key_cache", c.describe(), c.elements(), key_cache)?;
        expect_len::<T>(OP, "value_cache", c.describe(), c.elements(), value_cache)?;
        expect_index_len(
            OP,
            "block_tables",
            format_args!(
                "[num_seqs={}, max_blocks={}] i32",
                self.num_seqs, self.max_blocks_per_seq
            ),
            dims(&[self.num_seqs, self.max_blocks_per_seq]),
            block_tables,
        )?;
        expect_index_len(
            OP,
            "query_start_loc",
            format_args!("[num_seqs+1={}] i32", self.num_seqs.saturating_add(1)),
            self.num_seqs.saturating_add(1),
            query_starts,
        )?;
        expect_index_len(
            OP,
            "seq_lens",
            format_args!("[num_seqs={}] i32", self.num_seqs),
            self.num_seqs,
            seq_lens,
        )
    }
}

impl Rotary {
    /// Checks every length.
    pub fn validate<T: KvFloat>(
        &self,
        positions: usize,
        q: usize,
        k: usize,
        cos_sin: usize,
    ) -> Result<()> {
        const OP: &str = "rotary_embedding";
        positive(
            OP,
            &[
                ("num_heads", self.num_heads),
                ("num_kv_heads", self.num_kv_heads),
                ("head_size", self.head_size),
            ],
        )?;
        representable(OP, "a query row", &[self.num_heads, self.head_size])?;
        representable(OP, "a key row", &[self.num_kv_heads, self.head_size])?;
        representable(
            OP,
            "the cos/sin table",
            &[self.max_position, self.rotary_dim],
        )?;
        if self.rotary_dim == 0
            || !self.rotary_dim.is_multiple_of(2)
            || self.rotary_dim > self.head_size
        {
            return Err(invalid(
                OP,
                format!(
                    "rotary_dim {} must be even and in 2..={}",
                    self.rotary_dim, self.head_size
                ),
            ));
        }
        expect_index_len(
            OP,
            "positions",
            format_args!("[num_tokens={}] i64", self.num_tokens),
            self.num_tokens,
            positions,
        )?;
        expect_len::<T>(
            OP,
            "query",
            format_args!(
                "[num_tokens={}, num_heads={}, head_size={}]",
                self.num_tokens, self.num_heads, self.head_size
            ),
            dims(&[self.num_tokens, self.num_heads, self.head_size]),
            q,
        )?;
        expect_len::<T>(
            OP,
            "key",
            format_args!(
                "[num_tokens={}, kv_heads={}, head_size={}]",
                self.num_tokens, self.num_kv_heads, self.head_size
            ),
            dims(&[self.num_tokens, self.num_kv_heads, self.head_size]),
            k,
        )?;
        expect_index_len(
            OP,
            "cos_sin_cache",
            format_args!(
                "[max_position={}, rotary_dim={}] f32",
                self.max_position, self.rotary_dim
            ),
            dims(&[self.max_position, self.rotary_dim]),
            cos_sin,
        )
    }
}

impl RmsNorm {
    /// Checks every length (`x` for both the input and the output or residual).
    pub fn validate<T: KvFloat>(
        &self,
        x: usize,
        other: usize,
        weight: usize,
        other_name: &'static str,
    ) -> Result<()> {
        const OP: &str = "rms_norm";
        positive(OP, &[("hidden", self.hidden)])?;
        let rows = Shape(|f| {
            write!(
                f,
                "[num_tokens={}, hidden={}]",
                self.num_tokens, self.hidden
            )
        });
        let n = dims(&[self.num_tokens, self.hidden]);
        expect_len::<T>(OP, "input", &rows, n, x)?;
        expect_len::<T>(OP, other_name, rows, n, other)?;
        expect_len::<T>(
            OP,
            "weight",
            format_args!("[hidden={}]", self.hidden),
            self.hidden,
            weight,
        )
    }
}

impl SiluAndMul {
    /// Checks every length.
    pub fn validate<T: KvFloat>(&self, out: usize, x: usize) -> Result<()> {
        const OP: &str = "silu_and_mul";
        positive(OP, &[("d", self.d)])?;
        representable(OP, "an input row", &[2, self.d])?;
        expect_len::<T>(
            OP,
            "out",
            format_args!("[num_tokens={}, d={}]", self.num_tokens, self.d),
            dims(&[self.num_tokens, self.d]),
            out,
        )?;
        expect_len::<T>(
            OP,
            "input",
            format_args!(
                "[num_tokens={}, 2d={}]",
                self.num_tokens,
                self.d.saturating_mul(2)
            ),
            dims(&[self.num_tokens, 2, self.d]),
            x,
        )
    }
}

impl Embedding {
    /// Checks every length; the ids are checked by the kernel.
    pub fn validate<T: KvFloat>(&self, out: usize, table: usize, ids: usize) -> Result<()> {
        const OP: &str = "embedding";
        positive(OP, &[("vocab", self.vocab), ("hidden", self.hidden)])?;
        representable(OP, "the table", &[self.vocab, self.hidden])?;
        expect_len::<T>(
            OP,
            "out",
            format_args!("[num_tokens={}, hidden={}]", self.num_tokens, self.hidden),
            dims(&[self.num_tokens, self.hidden]),
            out,
        )?;
        expect_len::<T>(
            OP,
            "table",
            format_args!("[vocab={}, hidden={}]", self.vocab, self.hidden),
            dims(&[self.vocab, self.hidden]),
            table,
        )?;
        expect_index_len(
            OP,
            "ids",
            format_args!("[num_tokens={}] i32", self.num_tokens),
            self.num_tokens,
            ids,
        )
    }
}

impl Add {
    /// Checks every length.
    pub fn validate<T: KvFloat>(&self, out: usize, a: usize, b: usize) -> Result<()> {
        const OP: &str = "add";
        let shape = Shape(|f| write!(f, "[rows={}, cols={}]", self.rows, self.cols));
        let n = dims(&[self.rows, self.cols]);
        expect_len::<T>(OP, "out", &shape, n, out)?;
        expect_len::<T>(OP, "a", &shape, n, a)?;
        if self.broadcast {
            expect_len::<T>(OP, "b", format_args!("[cols={}]", self.cols), self.cols, b)
        } else {
            expect_len::<T>(OP, "b", shape, n, b)
        }
    }
}

impl Argmax {
    /// Checks every length.
    pub fn validate<T: KvFloat>(&self, out: usize, x: usize) -> Result<()> {
        const OP: &str = "argmax";
        positive(OP, &[("cols", self.cols)])?;
        if self.cols > i32::MAX as usize {
            return Err(invalid(
                OP,
                format!("cols {} is past what an i32 index holds", self.cols),
            ));
        }
        expect_len::<T>(
            OP,
            "x",
            format_args!("[rows={}, cols={}]", self.rows, self.cols),
            dims(&[self.rows, self.cols]),
            x,
        )?;
        expect_index_len(
            OP,
            "out",
            format_args!("[rows={}] i32", self.rows),
            self.rows,
            out,
        )
    }
}

impl TopK {
    /// Checks every length, and `k` against `cols`.
    pub fn validate<T: KvFloat>(&self, values: usize, indices: usize, x: usize) -> Result<()> {
        const OP: &str = "top_k";
        positive(OP, &[("cols", self.cols)])?;
        if self.cols > i32::MAX as usize {
            return Err(invalid(
                OP,
                format!("cols {} is past what the kernels index", self.cols),
            ));
        }
        if self.k > self.cols {
            return Err(invalid(
                OP,
                format!(
                    "k {} is more than the {} values of a row",
                    self.k, self.cols
                ),
            ));
        }
        expect_len::<T>(
            OP,
            "x",
            format_args!("[rows={}, cols={}]", self.rows, self.cols),
            dims(&[self.rows, self.cols]),
            x,
        )?;
        let out = Shape(|f| write!(f, "[rows={}, k={}]", self.rows, self.k));
        expect_len::<T>(OP, "values", &out, dims(&[self.rows, self.k]), values)?;
        expect_index_len(
            OP,
            "indices",
            format_args!("{out} i64"),
            dims(&[self.rows, self.k]),
            indices,
        )
    }
}

/// Checks `query_start_loc` and returns each sequence's query range.
pub(crate) fn query_ranges(
    p: &PrefillAttention,
    query_starts: &[i32],
    seq_lens: &[i32],
) -> Result<Vec<(usize, usize)>> {
    const OP: &str = "paged_prefill_attention";
    if query_starts.len() != p.num_seqs + 1 || seq_lens.len() != p.num_seqs {
        return Err(invalid(
            OP,
            format!(
                "{} query_start_loc and {} seq_lens entries for {} sequences",
                query_starts.len(),
                seq_lens.len(),
                p.num_seqs
            ),
        ));
    }
    let mut ranges = Vec::with_capacity(p.num_seqs);
    if query_starts[0] != 0 || query_starts[p.num_seqs] as usize != p.num_tokens {
        return Err(Error::InvalidArgument {
            op: OP,
            message: format!(
                "query_start_loc must run from 0 to num_tokens = {}, got {:?}",
                p.num_tokens, query_starts
            ),
        });
    }
    for s in 0..p.num_seqs {
        let (a, b) = (query_starts[s], query_starts[s + 1]);
        if b < a || (b - a) > seq_lens[s] {
            return Err(Error::InvalidArgument {
                op: OP,
                message: format!(
                    "sequence {s}: query_start_loc {a}..{b} must not decrease, and its {} queries \
                     cannot exceed seq_lens[{s}] = {}",
                    b - a,
                    seq_lens[s]
                ),
            });
        }
        ranges.push((a as usize, b as usize));
    }
    Ok(ranges)
}

/// Checks host sequence lengths: `num_seqs` of them, each from 0 to the `width * block_size`
/// tokens a block-table row reaches.
fn check_host_lens(
    op: &'static str,
    c: &CacheShape,
    width: usize,
    num_seqs: usize,
    seq_lens: &[i32],
) -> Result<()> {
    expect_index_len(
        op,
        "seq_lens_host",
        format_args!("[num_seqs={num_seqs}] i32"),
        num_seqs,
        seq_lens.len(),
    )?;
    let most = width.saturating_mul(c.block_size);
    for (s, &len) in seq_lens.iter().enumerate() {
        if len < 0 || len as usize > most {
            return Err(invalid(
                op,
                format!(
                    "seq_lens_host[{s}] = {len} is outside 0..={most} (block_tables rows of \
                     {width} blocks of {} tokens)",
                    c.block_size
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a block table row and a sequence length against the cache.
pub(crate) fn check_seq(
    op: &'static str,
    seq: usize,
    len: i32,
    row: &[i32],
    c: &CacheShape,
) -> Result<usize> {
    let len = usize::try_from(len)
        .map_err(|_| invalid(op, format!("seq_lens[{seq}] = {len} is negative")))?;
    let blocks = len.div_ceil(c.block_size);
    if blocks > row.len() {
        return Err(invalid(
            op,
            format!(
                "seq_lens[{seq}] = {len} needs {blocks} blocks, but block_tables rows hold {}",
                row.len()
            ),
        ));
    }
    for (i, &b) in row[..blocks].iter().enumerate() {
        if b < 0 || b as usize >= c.num_blocks {
            return Err(invalid(
                op,
                format!(
                    "block_tables[{seq}][{i}] = {b} is outside the cache's {} blocks",
                    c.num_blocks
                ),
            ));
        }
    }
    Ok(len)
}

/// [`check_seq`] for every sequence: `block_tables` holds rows of `width` blocks, one per
/// length in `seq_lens` (lengths already checked by `validate`). Returns the lengths.
pub(crate) fn check_seqs(
    op: &'static str,
    c: &CacheShape,
    width: usize,
    block_tables: &[i32],
    seq_lens: &[i32],
) -> Result<Vec<usize>> {
    seq_lens
        .iter()
        .enumerate()
        .map(|(s, &len)| check_seq(op, s, len, &block_tables[s * width..][..width], c))
        .collect()
}
