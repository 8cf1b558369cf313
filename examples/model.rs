//! A Llama/Qwen-style decoder (RMSNorm, GQA attention with RoPE, SiLU-gated MLP), running
//! entirely on a backend's stream through the kernel ops, with its KV cache behind [`KvAccess`]
//! (the paged cache, or a contiguous one for checking). Its weights are random from a fixed seed
//! ([`Model::new`]) or given ([`Model::from_weights`]; [`crate::llama_gguf`] reads them from a
//! GGUF file); they and the activations come from allocators the caller chooses
//! ([`ModelMemory`]). A weight matrix is `f32` values or GGUF blocks ([`Matrix`]): blocks stay
//! blocks on the device and run through `quant_matmul`.

use std::sync::Arc;

use ascend_hal::alloc::{CachingAllocator, SharedAllocator};
use ascend_hal::comm::{Communicator, CommunicatorExt, ReduceOp};
use ascend_hal::prelude::*;
use ascend_hal::{Error, Result};
use ascend_kernels::{In, Out};
use ascend_kernels::{
    KernelOps, KvFloat, QuantFormat, RmsNorm, RopeStyle, RopeTable, Rotary, SiluAndMul,
};
use paged_kv::KvCache;

use crate::linear::{Linear, Qkv};

/// Sizes and constants of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelConfig {
    /// Vocabulary.
    pub vocab: usize,
    /// Hidden size (`heads * head_size`).
    pub hidden: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// KV heads (grouped-query attention).
    pub kv_heads: usize,
    /// MLP intermediate size.
    pub intermediate: usize,
    /// Positions the RoPE table covers.
    pub max_position: usize,
    /// RoPE base (`rope_theta`).
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_eps: f64,
}

impl Default for ModelConfig {
    /// The small model `paged_decode` serves by default.
    fn default() -> Self {
        ModelConfig {
            vocab: 512,
            hidden: 256,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 512,
            max_position: 512,
            rope_theta: 10000.0,
            rms_eps: 1e-6,
        }
    }
}

/// What one rank of a tensor-parallel group holds: its share of the query heads, KV heads and
/// MLP columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank.
    pub rank: usize,
    /// Ranks in the group.
    pub size: usize,
    /// Query heads on this rank.
    pub heads: usize,
    /// KV heads on this rank.
    pub kv_heads: usize,
    /// MLP intermediate columns on this rank.
    pub intermediate: usize,
}

impl ModelConfig {
    /// Rank `rank` of `size`'s share, or why the model does not split that way (Megatron-style
    /// tensor parallelism: whole heads and whole KV heads per rank, the MLP split by columns).
    pub fn shard(&self, rank: usize, size: usize) -> std::result::Result<Shard, String> {
        if size == 0 || rank >= size {
            return Err(format!("rank {rank} of a group of {size}"));
        }
        for (what, n) in [
            ("heads", self.heads),
            ("KV heads", self.kv_heads),
            ("the intermediate size", self.intermediate),
        ] {
            if n % size != 0 {
                return Err(format!(
                    "{what} ({n}) do not split over {size} ranks: tensor parallelism needs a \
                     whole share per rank"
                ));
            }
        }
        Ok(Shard {
            rank,
            size,
            heads: self.heads / size,
            kv_heads: self.kv_heads / size,
            intermediate: self.intermediate / size,
        })
    }

    /// The whole model as one rank.
    pub fn unsharded(&self) -> Shard {
        Shard {
            rank: 0,
            size: 1,
            heads: self.heads,
            kv_heads: self.kv_heads,
            intermediate: self.intermediate,
        }
    }

    /// The most elements (weights plus the RoPE table) this example builds a model of: 2^30
    /// `f32` values, 4 GiB.
    pub const MAX_ELEMENTS: usize = 1 << 30;

    /// Elements per head.
    pub fn head_size(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Elements of every weight, the host-side embedding and the RoPE table, or `None` when
    /// the count overflows `usize`.
    pub fn elements(&self) -> Option<usize> {
        let h = self.hidden;
        let kv = self.kv_heads.checked_mul(self.head_size())?;
        let per_layer = [
            h,
            h.checked_mul(h)?,
            kv.checked_mul(h)?,
            kv.checked_mul(h)?,
            h.checked_mul(h)?,
            h,
            self.intermediate.checked_mul(2)?.checked_mul(h)?,
            h.checked_mul(self.intermediate)?,
        ]
        .iter()
        .try_fold(0usize, |n, &x| n.checked_add(x))?;
        let vocab = self.vocab.checked_mul(h)?.checked_mul(2)?; // lm head + embedding
        let rope = self.max_position.checked_mul(self.head_size())?;
        per_layer
            .checked_mul(self.layers)?
            .checked_add(vocab)?
            .checked_add(h)?
            .checked_add(rope)
    }
}

/// A weight matrix on the host, `[rows, cols]` row-major (PyTorch's `Linear` layout): `f32`
/// values, or rows of GGUF blocks as the file stores them (`cols / 32` blocks per row) or of
/// W8A8 int8 values and a scale, which the model keeps as they are on the device and runs with
/// [`quant_matmul`](KernelOps::quant_matmul) rather than copying them out as floats.
#[derive(Debug, Clone, PartialEq)]
pub enum Matrix {
    /// Values.
    F32(Vec<f32>),
    /// Rows in a quantized format.
    Blocks {
        /// The format.
        format: QuantFormat,
        /// `rows` rows of `format.row_bytes(cols)` bytes.
        bytes: Vec<u8>,
    },
}

impl From<Vec<f32>> for Matrix {
    fn from(v: Vec<f32>) -> Self {
        Matrix::F32(v)
    }
}

impl Matrix {
    /// What the matrix holds, as ggml names it (`F32`, `Q4_1`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Matrix::F32(_) => "F32",
            Matrix::Blocks { format, .. } => format.name(),
        }
    }

    /// Bytes the matrix takes on the host (and on a device).
    pub fn byte_len(&self) -> usize {
        match self {
            Matrix::F32(v) => std::mem::size_of_val(&v[..]),
            Matrix::Blocks { bytes, .. } => bytes.len(),
        }
    }

    /// Bytes of one row of `cols` columns, or why a row cannot have that many.
    fn row_bytes(&self, cols: usize) -> std::result::Result<usize, String> {
        match self {
            Matrix::F32(_) => cols
                .checked_mul(4)
                .ok_or_else(|| format!("{cols} columns overflow")),
            Matrix::Blocks { format, .. } => format
                .row_bytes(cols)
                .ok_or_else(|| format!("{cols} columns are not {}", format.row_rule())),
        }
    }

    /// Checks that this is a `[rows, cols]` matrix.
    pub fn check(&self, rows: usize, cols: usize) -> std::result::Result<(), String> {
        let want = rows
            .checked_mul(self.row_bytes(cols)?)
            .ok_or_else(|| format!("[{rows}, {cols}] overflows"))?;
        if self.byte_len() == want {
            return Ok(());
        }
        Err(match self {
            Matrix::F32(v) => format!(
                "has {} elements, the configuration needs {rows} x {cols} = {}",
                v.len(),
                rows * cols
            ),
            Matrix::Blocks { bytes, .. } => format!(
                "is {} bytes of {}, the configuration needs [{rows}, {cols}] ({want} bytes)",
                bytes.len(),
                self.type_name()
            ),
        })
    }

    /// Rows `r0..r1` of this `[_, cols]` matrix (which [`check`](Self::check) accepted).
    pub fn rows(&self, r0: usize, r1: usize, cols: usize) -> Matrix {
        match self {
            Matrix::F32(v) => Matrix::F32(v[r0 * cols..r1 * cols].to_vec()),
            Matrix::Blocks { format, bytes } => {
                let rb = format.row_bytes(cols).expect("checked");
                Matrix::Blocks {
                    format: *format,
                    bytes: bytes[r0 * rb..r1 * rb].to_vec(),
                }
            }
        }
    }

    /// Columns `c0..c1` of every row of this `[rows, cols]` matrix; in blocks, the bounds must
    /// fall on block boundaries.
    pub fn columns(
        &self,
        rows: usize,
        cols: usize,
        c0: usize,
        c1: usize,
    ) -> std::result::Result<Matrix, String> {
        match self {
            Matrix::F32(v) => Ok(Matrix::F32(
                (0..rows)
                    .flat_map(|r| v[r * cols + c0..r * cols + c1].iter().copied())
                    .collect(),
            )),
            Matrix::Blocks {
                format: format @ QuantFormat::Int8PerChannel,
                bytes,
            } => {
                // Any columns: each row keeps its values c0..c1 and its scale.
                let rb = cols + 4;
                Ok(Matrix::Blocks {
                    format: *format,
                    bytes: (0..rows)
                        .flat_map(|r| {
                            let row = &bytes[r * rb..(r + 1) * rb];
                            row[c0..c1].iter().chain(&row[cols..]).copied()
                        })
                        .collect(),
                })
            }
            Matrix::Blocks { format, bytes } => {
                let (rb, b0, b1) = match (
                    format.row_bytes(cols),
                    format.row_bytes(c0),
                    format.row_bytes(c1),
                ) {
                    (Some(rb), Some(b0), Some(b1)) => (rb, b0, b1),
                    _ => {
                        return Err(format!(
                            "columns {c0}..{c1} of {cols} do not fall on {format} block \
                             boundaries (every 32 values)"
                        ))
                    }
                };
                Ok(Matrix::Blocks {
                    format: *format,
                    bytes: (0..rows)
                        .flat_map(|r| bytes[r * rb + b0..r * rb + b1].iter().copied())
                        .collect(),
                })
            }
        }
    }

    /// Row `r` of this `[_, cols]` matrix as values, appended to `out` (an embedding lookup).
    pub fn row_into(&self, r: usize, cols: usize, out: &mut Vec<f32>) -> Result<()> {
        match self {
            Matrix::F32(v) => out.extend_from_slice(&v[r * cols..(r + 1) * cols]),
            Matrix::Blocks { format, bytes } => {
                let rb = format.row_bytes(cols).expect("checked");
                let at = out.len();
                out.resize(at + cols, 0.0);
                ascend_kernels::quant::dequantize(
                    *format,
                    &bytes[r * rb..(r + 1) * rb],
                    &mut out[at..],
                )?;
            }
        }
        Ok(())
    }

    /// This matrix's rows, then `other`'s (the gate and up projections as one GEMM's weight):
    /// both must be stored alike.
    pub fn stack(mut self, other: Matrix) -> std::result::Result<Matrix, String> {
        let types = (self.type_name(), other.type_name());
        match (&mut self, other) {
            (Matrix::F32(a), Matrix::F32(b)) => a.extend_from_slice(&b),
            (
                Matrix::Blocks {
                    format: fa,
                    bytes: a,
                },
                Matrix::Blocks {
                    format: fb,
                    bytes: b,
                },
            ) if *fa == fb => a.extend_from_slice(&b),
            _ => {
                return Err(format!(
                    "one is {} and the other {}: they run as one GEMM, so they must be stored \
                     alike",
                    types.0, types.1
                ))
            }
        }
        Ok(self)
    }
}

/// Where attention keeps its keys and values (of the model's activation dtype `T`).
pub trait KvAccess<B: KernelOps, T: KvFloat = f32> {
    /// Writes this step's K and V rows of `layer`.
    fn write_kv(
        &mut self,
        layer: usize,
        stream: &B::Stream,
        key: In<'_, B, T>,
        value: In<'_, B, T>,
    ) -> Result<()>;
    /// Causal attention of this step's queries over the cached context.
    fn attention(
        &self,
        layer: usize,
        stream: &B::Stream,
        heads: usize,
        scale: f32,
        out: Out<'_, B, T>,
        query: In<'_, B, T>,
    ) -> Result<()>;
}

fn kv_err(e: paged_kv::KvError) -> Error {
    match e {
        paged_kv::KvError::Device(e) => e,
        other => Error::InvalidArgument {
            op: "kv cache",
            message: other.to_string(),
        },
    }
}

impl<B: KernelOps, T: KvFloat> KvAccess<B, T> for KvCache<B, T> {
    fn write_kv(
        &mut self,
        layer: usize,
        stream: &B::Stream,
        key: In<'_, B, T>,
        value: In<'_, B, T>,
    ) -> Result<()> {
        KvCache::write_kv(self, layer, stream, key, value).map_err(kv_err)
    }
    fn attention(
        &self,
        layer: usize,
        stream: &B::Stream,
        heads: usize,
        scale: f32,
        out: Out<'_, B, T>,
        query: In<'_, B, T>,
    ) -> Result<()> {
        KvCache::attention(self, layer, stream, heads, scale, out, query).map_err(kv_err)
    }
}

/// One decoder layer's weights on the host, each matrix `[out, in]` row-major (PyTorch's
/// `Linear` layout).
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// RMSNorm weight before attention, `[hidden]`.
    pub attn_norm: Vec<f32>,
    /// Query projection, `[heads * head_size, hidden]`, rows in NeoX RoPE order (Hugging Face's).
    pub wq: Matrix,
    /// Key projection, `[kv_heads * head_size, hidden]`, rows in NeoX RoPE order.
    pub wk: Matrix,
    /// Value projection, `[kv_heads * head_size, hidden]`.
    pub wv: Matrix,
    /// Output projection, `[hidden, heads * head_size]`.
    pub wo: Matrix,
    /// RMSNorm weight before the MLP, `[hidden]`.
    pub mlp_norm: Vec<f32>,
    /// Gate projection, `[intermediate, hidden]`.
    pub w_gate: Matrix,
    /// Up projection, `[intermediate, hidden]`.
    pub w_up: Matrix,
    /// Down projection, `[hidden, intermediate]`.
    pub w_down: Matrix,
}

/// A whole model's weights on the host.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embedding, `[vocab, hidden]` (its rows are gathered on the host).
    pub embed: Matrix,
    /// The decoder layers.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm weight, `[hidden]`.
    pub final_norm: Vec<f32>,
    /// Output projection `[vocab, hidden]`, or `None` when it is the embedding (tied).
    pub lm_head: Option<Matrix>,
}

impl Weights {
    /// Every matrix with the name errors give it (`layer 3 wq`, `embed`, `lm_head`).
    pub fn matrices(&self) -> Vec<(String, &Matrix)> {
        let mut out = vec![("embed".to_string(), &self.embed)];
        if let Some(head) = &self.lm_head {
            out.push(("lm_head".to_string(), head));
        }
        for (l, w) in self.layers.iter().enumerate() {
            for (name, m) in [
                ("wq", &w.wq),
                ("wk", &w.wk),
                ("wv", &w.wv),
                ("wo", &w.wo),
                ("w_gate", &w.w_gate),
                ("w_up", &w.w_up),
                ("w_down", &w.w_down),
            ] {
                out.push((format!("layer {l} {name}"), m));
            }
        }
        out
    }

    /// Deterministic random weights: uniform in `±1/sqrt(fan_in)` from an xorshift stream
    /// seeded by `seed`, norms of ones.
    pub fn random(cfg: &ModelConfig, seed: u64) -> Self {
        let mut init = Init(seed | 1);
        let (h, i, hs) = (cfg.hidden, cfg.intermediate, cfg.head_size());
        let kv = cfg.kv_heads * hs;
        let w = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
        let layers = (0..cfg.layers)
            .map(|_| {
                let wq = init.take(h * h, w(h));
                let wk = init.take(kv * h, w(h));
                let wv = init.take(kv * h, w(h));
                let wo = init.take(h * h, w(h));
                let gate_up = init.take(2 * i * h, w(h));
                LayerWeights {
                    attn_norm: vec![1.0; h],
                    wq: wq.into(),
                    wk: wk.into(),
                    wv: wv.into(),
                    wo: wo.into(),
                    mlp_norm: vec![1.0; h],
                    w_gate: gate_up[..i * h].to_vec().into(),
                    w_up: gate_up[i * h..].to_vec().into(),
                    w_down: init.take(h * i, w(i)).into(),
                }
            })
            .collect();
        let lm_head = init.take(cfg.vocab * h, w(h));
        Weights {
            embed: init.take(cfg.vocab * h, 1.0).into(),
            layers,
            final_norm: vec![1.0; h],
            lm_head: Some(lm_head.into()),
        }
    }

    /// Checks every length against `cfg`, naming the first that is wrong.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        self.validate_shard(cfg, &cfg.unsharded())
    }

    /// Rank `shard.rank`'s share of these (whole-model) weights: its query, key and value rows
    /// (whole heads), its columns of the output projection, its gate and up rows and its
    /// columns of the down projection; norms, embedding and output projection whole.
    pub fn shard(&self, cfg: &ModelConfig, shard: &Shard) -> Result<Weights> {
        self.validate(cfg)?;
        let (h, hs, r) = (cfg.hidden, cfg.head_size(), shard.rank);
        // Whole heads' rows, and columns on block boundaries for weights kept in blocks.
        let rows = |w: &Matrix, per_rank: usize| w.rows(r * per_rank, (r + 1) * per_rank, h);
        let cols = |name: &str, w: &Matrix, full: usize, per_rank: usize| {
            w.columns(h, full, r * per_rank, (r + 1) * per_rank)
                .map_err(|message| Error::InvalidArgument {
                    op: "Weights::shard",
                    message: format!("{name}: {message}"),
                })
        };
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(l, w)| {
                Ok(LayerWeights {
                    attn_norm: w.attn_norm.clone(),
                    wq: rows(&w.wq, shard.heads * hs),
                    wk: rows(&w.wk, shard.kv_heads * hs),
                    wv: rows(&w.wv, shard.kv_heads * hs),
                    wo: cols(
                        &format!("layer {l} wo"),
                        &w.wo,
                        cfg.heads * hs,
                        shard.heads * hs,
                    )?,
                    mlp_norm: w.mlp_norm.clone(),
                    w_gate: rows(&w.w_gate, shard.intermediate),
                    w_up: rows(&w.w_up, shard.intermediate),
                    w_down: cols(
                        &format!("layer {l} w_down"),
                        &w.w_down,
                        cfg.intermediate,
                        shard.intermediate,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Weights {
            embed: self.embed.clone(),
            layers,
            final_norm: self.final_norm.clone(),
            lm_head: self.lm_head.clone(),
        })
    }

    /// Checks every length against rank `shard`'s share of `cfg`.
    pub fn validate_shard(&self, cfg: &ModelConfig, shard: &Shard) -> Result<()> {
        if cfg.heads == 0
            || cfg.kv_heads == 0
            || cfg.vocab == 0
            || !cfg.hidden.is_multiple_of(cfg.heads)
            || !cfg.heads.is_multiple_of(cfg.kv_heads)
            || cfg.head_size() == 0
            || !cfg.head_size().is_multiple_of(2)
            || !(cfg.rms_eps.is_finite() && cfg.rms_eps > 0.0)
            || !(cfg.rope_theta.is_finite() && cfg.rope_theta > 1.0)
        {
            return Err(Error::InvalidArgument {
                op: "Model::from_weights",
                message: format!(
                    "the configuration is not a decoder this model runs: {cfg:?} (heads must \
                     split hidden into even heads, KV heads divide heads, epsilon > 0, RoPE \
                     base > 1)"
                ),
            });
        }
        let (h, i, hs) = (cfg.hidden, shard.intermediate, cfg.head_size());
        let (q, kv) = (shard.heads * hs, shard.kv_heads * hs);
        let check = |name: String, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(Error::InvalidArgument {
                    op: "Model::from_weights",
                    message: format!("{name} has {got} elements, the configuration needs {want}"),
                })
            }
        };
        let check_matrix = |name: String, m: &Matrix, rows: usize, cols: usize| {
            m.check(rows, cols)
                .map_err(|message| Error::InvalidArgument {
                    op: "Model::from_weights",
                    message: format!("{name} {message}"),
                })
        };
        if self.layers.len() != cfg.layers {
            return Err(Error::InvalidArgument {
                op: "Model::from_weights",
                message: format!(
                    "{} layers of weights for a {}-layer configuration",
                    self.layers.len(),
                    cfg.layers
                ),
            });
        }
        check_matrix("embed".into(), &self.embed, cfg.vocab, h)?;
        check("final_norm".into(), self.final_norm.len(), h)?;
        if let Some(head) = &self.lm_head {
            check_matrix("lm_head".into(), head, cfg.vocab, h)?;
        }
        for (l, w) in self.layers.iter().enumerate() {
            check(format!("layer {l} attn_norm"), w.attn_norm.len(), h)?;
            check(format!("layer {l} mlp_norm"), w.mlp_norm.len(), h)?;
            for (name, m, rows, cols) in [
                ("wq", &w.wq, q, h),
                ("wk", &w.wk, kv, h),
                ("wv", &w.wv, kv, h),
                ("wo", &w.wo, h, q),
                ("w_gate", &w.w_gate, i, h),
                ("w_up", &w.w_up, i, h),
                ("w_down", &w.w_down, h, i),
            ] {
                check_matrix(format!("layer {l} {name}"), m, rows, cols)?;
            }
        }
        Ok(())
    }
}

struct Layer<B: Backend, T: KvFloat> {
    attn_norm: DeviceBuffer<B, T>,
    /// q, k and v: one GEMM at one token when the backend's layout allows.
    qkv: Qkv<B, T>,
    wo: Linear<B, T>,
    mlp_norm: DeviceBuffer<B, T>,
    /// Gate rows then up rows: one GEMM gives `silu_and_mul`'s input.
    w_gate_up: Linear<B, T>,
    w_down: Linear<B, T>,
}

/// Where a model's device memory comes from.
pub struct ModelMemory<B: Backend> {
    /// Weights: allocated once, live as long as the model.
    pub weights: SharedAllocator<B>,
    /// Activations: allocated and dropped every step.
    pub activations: SharedAllocator<B>,
}

impl<B: Backend> Clone for ModelMemory<B> {
    fn clone(&self) -> Self {
        ModelMemory {
            weights: Arc::clone(&self.weights),
            activations: Arc::clone(&self.activations),
        }
    }
}

impl<B: Backend> ModelMemory<B> {
    /// Everything from one allocator.
    pub fn shared(alloc: SharedAllocator<B>) -> Self {
        ModelMemory {
            weights: Arc::clone(&alloc),
            activations: alloc,
        }
    }

    /// Everything from one caching allocator (default configuration) on `device`.
    pub fn caching(device: &B::Device) -> Result<Self> {
        Ok(Self::shared(Arc::new(CachingAllocator::new(
            device,
            Default::default(),
        )?)))
    }
}

/// The model's weights on a device, in the activation dtype `T` (f32 by default; f16 and bf16
/// run every op in that dtype, with f32 accumulation inside the kernels, as NPU engines do).
pub struct Model<B: KernelOps, T: KvFloat = f32> {
    cfg: ModelConfig,
    shard: Shard,
    /// The tensor-parallel group this rank belongs to, if any.
    comm: Option<Arc<dyn Communicator<Backend = B>>>,
    embed: Matrix,
    layers: Vec<Layer<B, T>>,
    final_norm: DeviceBuffer<B, T>,
    lm_head: Linear<B, T>,
    cos_sin: DeviceBuffer<B, f32>,
    memory: ModelMemory<B>,
    /// Bytes of every weight, on the device and (the embedding) on the host.
    weight_bytes: usize,
}

/// Deterministic weights: uniform in `[-scale, scale)` from an xorshift stream.
struct Init(u64);
impl Init {
    fn take(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }
}

/// The logits of the rows a step samples from.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    vocab: usize,
    data: Vec<f32>,
}

impl Logits {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab.max(1)
    }

    /// Row `r` (`vocab` values).
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.vocab..(r + 1) * self.vocab]
    }

    /// The greedy token of row `r`: the first of the largest logits.
    pub fn argmax(&self, r: usize) -> u32 {
        crate::sampling::argmax(self.row(r))
    }
}

impl<B: KernelOps, T: KvFloat> Model<B, T> {
    /// Random weights from `seed` ([`Weights::random`]), uploaded through `stream` into memory
    /// from `memory.weights`; activations will come from `memory.activations`.
    pub fn new(
        stream: &B::Stream,
        cfg: ModelConfig,
        seed: u64,
        memory: ModelMemory<B>,
    ) -> Result<Self> {
        Self::from_weights(stream, cfg, Weights::random(&cfg, seed), memory)
    }

    /// `weights` uploaded through `stream` into memory from `memory.weights` (the embedding
    /// stays on the host, where the rows of a step's tokens are gathered; a tied output
    /// projection is uploaded from it).
    pub fn from_weights(
        stream: &B::Stream,
        cfg: ModelConfig,
        weights: Weights,
        memory: ModelMemory<B>,
    ) -> Result<Self> {
        Self::build(stream, cfg, cfg.unsharded(), None, weights, memory)
    }

    /// One rank of a tensor-parallel model: `weights` is the whole model's (each rank takes its
    /// share, [`Weights::shard`]), `comm` the group, whose rank and size say which share. The
    /// ranks' forward passes all-reduce after the attention output and MLP down projections,
    /// so every rank ends each step with the same hidden states and the same logits.
    pub fn tensor_parallel(
        stream: &B::Stream,
        cfg: ModelConfig,
        weights: &Weights,
        memory: ModelMemory<B>,
        comm: Arc<dyn Communicator<Backend = B>>,
    ) -> Result<Self> {
        let shard =
            cfg.shard(comm.rank(), comm.size())
                .map_err(|message| Error::InvalidArgument {
                    op: "Model::tensor_parallel",
                    message,
                })?;
        let mine = weights.shard(&cfg, &shard)?;
        Self::build(stream, cfg, shard, Some(comm), mine, memory)
    }

    fn build(
        stream: &B::Stream,
        cfg: ModelConfig,
        shard: Shard,
        comm: Option<Arc<dyn Communicator<Backend = B>>>,
        weights: Weights,
        memory: ModelMemory<B>,
    ) -> Result<Self> {
        weights.validate_shard(&cfg, &shard)?;
        // Every block format is asked about before anything is uploaded: a model the backend
        // cannot run is refused without first copying hundreds of megabytes to the device.
        // (The embedding's rows are gathered on the host; it runs on the device only as a tied
        // output projection.)
        for (name, m) in weights.matrices() {
            let host_only = name == "embed" && weights.lm_head.is_some();
            if let (Matrix::Blocks { format, .. }, false) = (m, host_only) {
                Linear::<B, T>::runnable(&name, *format)?;
            }
        }
        let alloc = memory.weights.as_ref();
        let put = |data: &[f32]| {
            let data: Vec<T> = data.iter().map(|&v| T::from_f32(v)).collect();
            DeviceBuffer::from_slice_in(alloc, stream, &data)
        };
        let linear = |name: String, m: &Matrix, n_k: (usize, usize)| {
            Linear::upload(alloc, stream, &name, m, n_k)
        };
        let (h, hs) = (cfg.hidden, cfg.head_size());
        let (q, kv, i) = (shard.heads * hs, shard.kv_heads * hs, shard.intermediate);
        let layers = weights
            .layers
            .into_iter()
            .enumerate()
            .map(|(l, w)| {
                let gate_up = w
                    .w_gate
                    .stack(w.w_up)
                    .map_err(|why| Error::InvalidArgument {
                        op: "Model::from_weights",
                        message: format!("layer {l} w_gate and w_up: {why}"),
                    })?;
                Ok(Layer {
                    attn_norm: put(&w.attn_norm)?,
                    qkv: Qkv::upload(alloc, stream, l, [&w.wq, &w.wk, &w.wv], [q, kv, kv], h)?,
                    wo: linear(format!("layer {l} wo"), &w.wo, (h, q))?,
                    mlp_norm: put(&w.mlp_norm)?,
                    w_gate_up: linear(format!("layer {l} w_gate_up"), &gate_up, (2 * i, h))?,
                    w_down: linear(format!("layer {l} w_down"), &w.w_down, (h, i))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match &weights.lm_head {
            Some(m) => linear("lm_head".into(), m, (cfg.vocab, h))?,
            None => linear(
                "lm_head (the embedding, tied)".into(),
                &weights.embed,
                (cfg.vocab, h),
            )?,
        };
        let norm_bytes = |n: usize| n * std::mem::size_of::<T>();
        let weight_bytes = weights.embed.byte_len()
            + lm_head.byte_len()
            + norm_bytes(weights.final_norm.len())
            + layers
                .iter()
                .map(|l| {
                    l.qkv.byte_len()
                        + [&l.wo, &l.w_gate_up, &l.w_down]
                            .iter()
                            .map(|w| w.byte_len())
                            .sum::<usize>()
                        + norm_bytes(l.attn_norm.len() + l.mlp_norm.len())
                })
                .sum::<usize>();
        Ok(Model {
            cfg,
            shard,
            comm,
            embed: weights.embed,
            layers,
            final_norm: put(&weights.final_norm)?,
            lm_head,
            weight_bytes,
            cos_sin: DeviceBuffer::from_slice_in(
                alloc,
                stream,
                &RopeTable::new(cfg.head_size(), cfg.max_position, cfg.rope_theta).build()?,
            )?,
            memory,
        })
    }

    /// The sizes.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Bytes of the weights: on the device, and the embedding on the host (a tied output
    /// projection counts twice, as it is held twice). A decode step reads all but the
    /// embedding.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Bytes of weights one decode step reads, whatever its batch: every device weight (the
    /// embedding contributes only its gathered rows, counted as nothing). Divided into a
    /// machine's memory bandwidth, the fastest batch-1 decode that machine can run.
    pub fn weight_bytes_per_step(&self) -> usize {
        self.weight_bytes - self.embed.byte_len()
    }

    /// This rank's share of the model (the whole model without tensor parallelism).
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// Where the model's memory comes from (the activation allocator's statistics say what a
    /// step needs).
    pub fn memory(&self) -> &ModelMemory<B> {
        &self.memory
    }

    /// Sums a row-parallel projection's partial results over the tensor-parallel group.
    fn all_reduce(&self, stream: &B::Stream, x: &mut DeviceBuffer<B, T>) -> Result<()> {
        match &self.comm {
            Some(c) => c.all_reduce_in_place(stream, x, ReduceOp::Sum),
            None => Ok(()),
        }
    }

    /// Runs one step over `tokens` at `positions` (the batch's tokens, request after request, in
    /// the order the KV cache's step tables were built), and returns the greedy next token of
    /// each row in `sample_rows`.
    pub fn forward(
        &self,
        stream: &B::Stream,
        kv: &mut impl KvAccess<B, T>,
        tokens: &[u32],
        positions: &[i64],
        sample_rows: &[usize],
    ) -> Result<Vec<u32>> {
        let logits = self.forward_logits(stream, kv, tokens, positions, sample_rows)?;
        Ok((0..sample_rows.len()).map(|r| logits.argmax(r)).collect())
    }

    /// Runs one step as [`forward`](Self::forward) does and returns the logits of the rows in
    /// `sample_rows` (row `j` of the result is token `sample_rows[j]`'s); the output projection
    /// runs on those rows only.
    pub fn forward_logits(
        &self,
        stream: &B::Stream,
        kv: &mut impl KvAccess<B, T>,
        tokens: &[u32],
        positions: &[i64],
        sample_rows: &[usize],
    ) -> Result<Logits> {
        let cfg = &self.cfg;
        let sh = &self.shard;
        let (t, h, hs, i) = (tokens.len(), cfg.hidden, cfg.head_size(), sh.intermediate);
        let (qw, kvw) = (sh.heads * hs, sh.kv_heads * hs);
        let device = stream.device();
        let activations = self.memory.activations.as_ref();
        let buf = |n: usize| DeviceBuffer::<B, T>::alloc_in(activations, stream, n);

        if positions.len() != t {
            return Err(Error::InvalidArgument {
                op: "forward",
                message: format!("{} positions for {t} tokens", positions.len()),
            });
        }
        if let Some(&r) = sample_rows.iter().find(|&&r| r >= t) {
            return Err(Error::InvalidArgument {
                op: "forward",
                message: format!("sample row {r} of a {t}-token step"),
            });
        }
        // Embedding rows and positions, staged in pinned memory and uploaded asynchronously.
        let (mut values, mut rows) = (Vec::with_capacity(t * h), Vec::with_capacity(t * h));
        for &tok in tokens {
            let tok = tok as usize;
            if tok >= cfg.vocab {
                return Err(Error::InvalidArgument {
                    op: "forward",
                    message: format!("token {tok} is outside the vocabulary of {}", cfg.vocab),
                });
            }
            self.embed.row_into(tok, h, &mut values)?;
        }
        rows.extend(values.iter().map(|&v| T::from_f32(v)));
        let staged_rows = PinnedBuffer::<B, T>::from_slice(&device, &rows)?;
        let staged_pos = PinnedBuffer::<B, i64>::from_slice(&device, positions)?;
        let mut hidden = buf(t * h)?;
        let mut pos = DeviceBuffer::<B, i64>::alloc_in(activations, stream, t)?;
        stream.copy_h2d(&staged_rows, &mut hidden)?;
        stream.copy_h2d(&staged_pos, &mut pos)?;

        let norm = RmsNorm {
            num_tokens: t,
            hidden: h,
            eps: cfg.rms_eps as f32,
        };
        let mut residual = buf(t * h)?;
        let mut x = buf(t * h)?;
        // q, k and v of every token, `[t, qw]` then `[t, kvw]` twice: at one token, the one
        // row a fused QKV GEMM writes.
        let mut qkv = buf(t * (qw + 2 * kvw))?;
        let mut attn = buf(t * qw)?;
        let mut gate_up = buf(t * 2 * i)?;
        let mut act = buf(t * i)?;
        let scale = 1.0 / (hs as f32).sqrt();
        for (l, w) in self.layers.iter().enumerate() {
            if l == 0 {
                stream.copy_d2d(&hidden, &mut residual)?;
                B::rms_norm::<T>(
                    stream,
                    &norm,
                    x.view_mut(),
                    hidden.view(),
                    w.attn_norm.view(),
                )?;
            } else {
                // `hidden` holds the previous MLP's output: residual += hidden; x = norm(residual).
                B::fused_add_rms_norm::<T>(
                    stream,
                    &norm,
                    hidden.view_mut(),
                    residual.view_mut(),
                    w.attn_norm.view(),
                )?;
                std::mem::swap(&mut x, &mut hidden);
            }
            w.qkv.forward(stream, t, qkv.view_mut(), x.view())?;
            let (mut q, kv_rows) = qkv.view_mut().split_at(t * qw)?;
            let (mut k, v) = kv_rows.split_at(t * kvw)?;
            let rope = Rotary {
                num_tokens: t,
                num_heads: sh.heads,
                num_kv_heads: sh.kv_heads,
                head_size: hs,
                rotary_dim: hs,
                max_position: cfg.max_position,
                style: RopeStyle::Neox,
            };
            B::rotary_embedding::<T>(
                stream,
                &rope,
                pos.view(),
                q.sub_mut(..)?,
                k.sub_mut(..)?,
                self.cos_sin.view(),
            )?;
            kv.write_kv(l, stream, k.as_view(), v.as_view())?;
            kv.attention(l, stream, sh.heads, scale, attn.view_mut(), q.as_view())?;
            w.wo.forward(stream, (t, h, qw), hidden.view_mut(), attn.view())?;
            self.all_reduce(stream, &mut hidden)?;
            B::fused_add_rms_norm::<T>(
                stream,
                &norm,
                hidden.view_mut(),
                residual.view_mut(),
                w.mlp_norm.view(),
            )?;
            w.w_gate_up
                .forward(stream, (t, 2 * i, h), gate_up.view_mut(), hidden.view())?;
            B::silu_and_mul::<T>(
                stream,
                &SiluAndMul {
                    num_tokens: t,
                    d: i,
                },
                act.view_mut(),
                gate_up.view(),
            )?;
            w.w_down
                .forward(stream, (t, h, i), hidden.view_mut(), act.view())?;
            self.all_reduce(stream, &mut hidden)?;
        }
        B::fused_add_rms_norm::<T>(
            stream,
            &norm,
            hidden.view_mut(),
            residual.view_mut(),
            self.final_norm.view(),
        )?;
        // The output projection for the sampled rows only (a prefill chunk samples one row of
        // many); a decode step samples every row, in order, and needs no gather.
        let s = sample_rows.len();
        if s == 0 {
            // A step of prefill chunks that end no prompt samples nothing.
            return Ok(Logits {
                vocab: cfg.vocab,
                data: Vec::new(),
            });
        }
        let every_row = s == t && sample_rows.iter().enumerate().all(|(j, &r)| j == r);
        let picked;
        let last = if every_row {
            &hidden
        } else {
            let mut rows = buf(s * h)?;
            for (j, &r) in sample_rows.iter().enumerate() {
                stream.copy_d2d(
                    &hidden.slice(r * h..(r + 1) * h)?,
                    &mut rows.slice_mut(j * h..(j + 1) * h)?,
                )?;
            }
            picked = rows;
            &picked
        };
        let mut logits = buf(s * cfg.vocab)?;
        self.lm_head
            .forward(stream, (s, cfg.vocab, h), logits.view_mut(), last.view())?;
        // The one synchronisation of a step: sampling needs the logits on the host.
        let data = stream.clone_to_host(&logits)?;
        Ok(Logits {
            vocab: cfg.vocab,
            data: data.into_iter().map(T::to_f32).collect(),
        })
    }
}
