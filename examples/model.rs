//! A Llama/Qwen-style decoder (RMSNorm, GQA attention with RoPE, SiLU-gated MLP), running
//! entirely on a backend's stream through the kernel ops, with its KV cache behind [`KvAccess`]
//! (the paged cache, or a contiguous one for checking). Its weights are random from a fixed seed
//! ([`Model::new`]) or given ([`Model::from_weights`]; [`crate::llama_gguf`] reads them from a
//! GGUF file); they and the activations come from allocators the caller chooses
//! ([`ModelMemory`]).

use std::sync::Arc;

use ascend_hal::alloc::{CachingAllocator, SharedAllocator};
use ascend_hal::comm::{Communicator, CommunicatorExt, ReduceOp};
use ascend_hal::prelude::*;
use ascend_hal::{Error, Result};
use ascend_kernels::{
    KernelOps, KvFloat, Matmul, RmsNorm, RopeStyle, RopeTable, Rotary, SiluAndMul,
};
use paged_kv::KvCache;

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

/// Where attention keeps its keys and values (of the model's activation dtype `T`).
pub trait KvAccess<B: KernelOps, T: KvFloat = f32> {
    /// Writes this step's K and V rows of `layer`.
    fn write_kv(
        &mut self,
        layer: usize,
        stream: &B::Stream,
        key: &DeviceBuffer<B, T>,
        value: &DeviceBuffer<B, T>,
    ) -> Result<()>;
    /// Causal attention of this step's queries over the cached context.
    fn attention(
        &self,
        layer: usize,
        stream: &B::Stream,
        heads: usize,
        scale: f32,
        out: &mut DeviceBuffer<B, T>,
        query: &DeviceBuffer<B, T>,
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
        key: &DeviceBuffer<B, T>,
        value: &DeviceBuffer<B, T>,
    ) -> Result<()> {
        KvCache::write_kv(self, layer, stream, key, value).map_err(kv_err)
    }
    fn attention(
        &self,
        layer: usize,
        stream: &B::Stream,
        heads: usize,
        scale: f32,
        out: &mut DeviceBuffer<B, T>,
        query: &DeviceBuffer<B, T>,
    ) -> Result<()> {
        KvCache::attention(self, layer, stream, heads, scale, out, query).map_err(kv_err)
    }
}

/// One decoder layer's weights on the host, each matrix `[out, in]` row-major (PyTorch's
/// `Linear` layout).
#[derive(Debug, Clone, Default)]
pub struct LayerWeights {
    /// RMSNorm weight before attention, `[hidden]`.
    pub attn_norm: Vec<f32>,
    /// Query projection, `[heads * head_size, hidden]`, rows in NeoX RoPE order (Hugging Face's).
    pub wq: Vec<f32>,
    /// Key projection, `[kv_heads * head_size, hidden]`, rows in NeoX RoPE order.
    pub wk: Vec<f32>,
    /// Value projection, `[kv_heads * head_size, hidden]`.
    pub wv: Vec<f32>,
    /// Output projection, `[hidden, heads * head_size]`.
    pub wo: Vec<f32>,
    /// RMSNorm weight before the MLP, `[hidden]`.
    pub mlp_norm: Vec<f32>,
    /// Gate projection, `[intermediate, hidden]`.
    pub w_gate: Vec<f32>,
    /// Up projection, `[intermediate, hidden]`.
    pub w_up: Vec<f32>,
    /// Down projection, `[hidden, intermediate]`.
    pub w_down: Vec<f32>,
}

/// A whole model's weights on the host.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    /// Token embedding, `[vocab, hidden]`.
    pub embed: Vec<f32>,
    /// The decoder layers.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm weight, `[hidden]`.
    pub final_norm: Vec<f32>,
    /// Output projection `[vocab, hidden]`, or `None` when it is the embedding (tied).
    pub lm_head: Option<Vec<f32>>,
}

impl Weights {
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
                    wq,
                    wk,
                    wv,
                    wo,
                    mlp_norm: vec![1.0; h],
                    w_gate: gate_up[..i * h].to_vec(),
                    w_up: gate_up[i * h..].to_vec(),
                    w_down: init.take(h * i, w(i)),
                }
            })
            .collect();
        let lm_head = init.take(cfg.vocab * h, w(h));
        Weights {
            embed: init.take(cfg.vocab * h, 1.0),
            layers,
            final_norm: vec![1.0; h],
            lm_head: Some(lm_head),
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
        let (h, hs) = (cfg.hidden, cfg.head_size());
        let rows = |w: &[f32], per_rank: usize, cols: usize| -> Vec<f32> {
            w[shard.rank * per_rank * cols..(shard.rank + 1) * per_rank * cols].to_vec()
        };
        let cols = |w: &[f32], rows_n: usize, full: usize, per_rank: usize| -> Vec<f32> {
            (0..rows_n)
                .flat_map(|r| {
                    w[r * full + shard.rank * per_rank..r * full + (shard.rank + 1) * per_rank]
                        .iter()
                        .copied()
                })
                .collect()
        };
        let layers = self
            .layers
            .iter()
            .map(|l| LayerWeights {
                attn_norm: l.attn_norm.clone(),
                wq: rows(&l.wq, shard.heads * hs, h),
                wk: rows(&l.wk, shard.kv_heads * hs, h),
                wv: rows(&l.wv, shard.kv_heads * hs, h),
                wo: cols(&l.wo, h, cfg.heads * hs, shard.heads * hs),
                mlp_norm: l.mlp_norm.clone(),
                w_gate: rows(&l.w_gate, shard.intermediate, h),
                w_up: rows(&l.w_up, shard.intermediate, h),
                w_down: cols(&l.w_down, h, cfg.intermediate, shard.intermediate),
            })
            .collect();
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
        check("embed".into(), self.embed.len(), cfg.vocab * h)?;
        check("final_norm".into(), self.final_norm.len(), h)?;
        if let Some(head) = &self.lm_head {
            check("lm_head".into(), head.len(), cfg.vocab * h)?;
        }
        for (l, w) in self.layers.iter().enumerate() {
            for (name, got, want) in [
                ("attn_norm", w.attn_norm.len(), h),
                ("wq", w.wq.len(), q * h),
                ("wk", w.wk.len(), kv * h),
                ("wv", w.wv.len(), kv * h),
                ("wo", w.wo.len(), h * q),
                ("mlp_norm", w.mlp_norm.len(), h),
                ("w_gate", w.w_gate.len(), i * h),
                ("w_up", w.w_up.len(), i * h),
                ("w_down", w.w_down.len(), h * i),
            ] {
                check(format!("layer {l} {name}"), got, want)?;
            }
        }
        Ok(())
    }
}

struct Layer<B: Backend, T: KvFloat> {
    attn_norm: DeviceBuffer<B, T>,
    wq: DeviceBuffer<B, T>,
    wk: DeviceBuffer<B, T>,
    wv: DeviceBuffer<B, T>,
    wo: DeviceBuffer<B, T>,
    mlp_norm: DeviceBuffer<B, T>,
    /// Gate rows then up rows: one GEMM gives `silu_and_mul`'s input.
    w_gate_up: DeviceBuffer<B, T>,
    w_down: DeviceBuffer<B, T>,
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
    embed: Vec<f32>,
    layers: Vec<Layer<B, T>>,
    final_norm: DeviceBuffer<B, T>,
    lm_head: DeviceBuffer<B, T>,
    cos_sin: DeviceBuffer<B, f32>,
    memory: ModelMemory<B>,
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
        let alloc = memory.weights.as_ref();
        let put = |data: &[f32]| {
            let data: Vec<T> = data.iter().map(|&v| T::from_f32(v)).collect();
            DeviceBuffer::from_slice_in(alloc, stream, &data)
        };
        let layers = weights
            .layers
            .into_iter()
            .map(|w| {
                let mut gate_up = w.w_gate;
                gate_up.extend_from_slice(&w.w_up);
                Ok(Layer {
                    attn_norm: put(&w.attn_norm)?,
                    wq: put(&w.wq)?,
                    wk: put(&w.wk)?,
                    wv: put(&w.wv)?,
                    wo: put(&w.wo)?,
                    mlp_norm: put(&w.mlp_norm)?,
                    w_gate_up: put(&gate_up)?,
                    w_down: put(&w.w_down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = put(weights.lm_head.as_deref().unwrap_or(&weights.embed))?;
        Ok(Model {
            cfg,
            shard,
            comm,
            embed: weights.embed,
            layers,
            final_norm: put(&weights.final_norm)?,
            lm_head,
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
        let mut rows = Vec::with_capacity(t * h);
        for &tok in tokens {
            let tok = tok as usize;
            if tok >= cfg.vocab {
                return Err(Error::InvalidArgument {
                    op: "forward",
                    message: format!("token {tok} is outside the vocabulary of {}", cfg.vocab),
                });
            }
            rows.extend(
                self.embed[tok * h..(tok + 1) * h]
                    .iter()
                    .map(|&v| T::from_f32(v)),
            );
        }
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
        let mm = |n: usize, k: usize| Matmul { m: t, n, k };
        let mut residual = buf(t * h)?;
        let mut x = buf(t * h)?;
        let (mut q, mut k, mut v) = (buf(t * qw)?, buf(t * kvw)?, buf(t * kvw)?);
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
            B::matmul::<T>(stream, &mm(qw, h), q.view_mut(), x.view(), w.wq.view())?;
            B::matmul::<T>(stream, &mm(kvw, h), k.view_mut(), x.view(), w.wk.view())?;
            B::matmul::<T>(stream, &mm(kvw, h), v.view_mut(), x.view(), w.wv.view())?;
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
                q.view_mut(),
                k.view_mut(),
                self.cos_sin.view(),
            )?;
            kv.write_kv(l, stream, &k, &v)?;
            kv.attention(l, stream, sh.heads, scale, &mut attn, &q)?;
            B::matmul::<T>(
                stream,
                &mm(h, qw),
                hidden.view_mut(),
                attn.view(),
                w.wo.view(),
            )?;
            self.all_reduce(stream, &mut hidden)?;
            B::fused_add_rms_norm::<T>(
                stream,
                &norm,
                hidden.view_mut(),
                residual.view_mut(),
                w.mlp_norm.view(),
            )?;
            B::matmul::<T>(
                stream,
                &mm(2 * i, h),
                gate_up.view_mut(),
                hidden.view(),
                w.w_gate_up.view(),
            )?;
            B::silu_and_mul::<T>(
                stream,
                &SiluAndMul {
                    num_tokens: t,
                    d: i,
                },
                act.view_mut(),
                gate_up.view(),
            )?;
            B::matmul::<T>(
                stream,
                &mm(h, i),
                hidden.view_mut(),
                act.view(),
                w.w_down.view(),
            )?;
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
        B::matmul::<T>(
            stream,
            &Matmul {
                m: s,
                n: cfg.vocab,
                k: h,
            },
            logits.view_mut(),
            last.view(),
            self.lm_head.view(),
        )?;
        // The one synchronisation of a step: sampling needs the logits on the host.
        let data = stream.clone_to_host(&logits)?;
        Ok(Logits {
            vocab: cfg.vocab,
            data: data.into_iter().map(T::to_f32).collect(),
        })
    }
}
