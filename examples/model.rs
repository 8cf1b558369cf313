//! A small Llama/Qwen-style decoder (RMSNorm, GQA attention with RoPE, SiLU-gated MLP) with
//! random weights from a fixed seed, running entirely on a backend's stream through the kernel
//! ops, with its KV cache behind [`KvAccess`] (the paged cache, or a contiguous one for checking).
//! Its weights and its activations come from allocators the caller chooses ([`ModelMemory`]).

use std::sync::Arc;

use ascend_hal::alloc::{CachingAllocator, SharedAllocator};
use ascend_hal::prelude::*;
use ascend_hal::{Error, Result};
use ascend_kernels::{KernelOps, Matmul, RmsNorm, RopeStyle, Rotary, SiluAndMul};
use paged_kv::KvCache;

/// Sizes of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl ModelConfig {
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

/// Where attention keeps its keys and values.
pub trait KvAccess<B: KernelOps> {
    /// Writes this step's K and V rows of `layer`.
    fn write_kv(
        &mut self,
        layer: usize,
        stream: &B::Stream,
        key: &DeviceBuffer<B, f32>,
        value: &DeviceBuffer<B, f32>,
    ) -> Result<()>;
    /// Causal attention of this step's queries over the cached context.
    fn attention(
        &self,
        layer: usize,
        stream: &B::Stream,
        heads: usize,
        scale: f32,
        out: &mut DeviceBuffer<B, f32>,
        query: &DeviceBuffer<B, f32>,
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

impl<B: KernelOps> KvAccess<B> for KvCache<B, f32> {
    fn write_kv(
        &mut self,
        layer: usize,
        stream: &B::Stream,
        key: &DeviceBuffer<B, f32>,
        value: &DeviceBuffer<B, f32>,
    ) -> Result<()> {
        KvCache::write_kv(self, layer, stream, key, value).map_err(kv_err)
    }
    fn attention(
        &self,
        layer: usize,
        stream: &B::Stream,
        heads: usize,
        scale: f32,
        out: &mut DeviceBuffer<B, f32>,
        query: &DeviceBuffer<B, f32>,
    ) -> Result<()> {
        KvCache::attention(self, layer, stream, heads, scale, out, query).map_err(kv_err)
    }
}

struct Layer<B: Backend> {
    attn_norm: DeviceBuffer<B, f32>,
    wq: DeviceBuffer<B, f32>,
    wk: DeviceBuffer<B, f32>,
    wv: DeviceBuffer<B, f32>,
    wo: DeviceBuffer<B, f32>,
    mlp_norm: DeviceBuffer<B, f32>,
    w_gate_up: DeviceBuffer<B, f32>,
    w_down: DeviceBuffer<B, f32>,
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

/// The model's weights on a device.
pub struct Model<B: KernelOps> {
    cfg: ModelConfig,
    embed: Vec<f32>,
    layers: Vec<Layer<B>>,
    final_norm: DeviceBuffer<B, f32>,
    lm_head: DeviceBuffer<B, f32>,
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

impl<B: KernelOps> Model<B> {
    /// Random weights from `seed`, uploaded through `stream` into memory from
    /// `memory.weights`; activations will come from `memory.activations`.
    pub fn new(
        stream: &B::Stream,
        cfg: ModelConfig,
        seed: u64,
        memory: ModelMemory<B>,
    ) -> Result<Self> {
        let mut init = Init(seed | 1);
        let (h, i, hs) = (cfg.hidden, cfg.intermediate, cfg.head_size());
        let kv = cfg.kv_heads * hs;
        let weights = memory.weights.as_ref();
        let put = |data: &[f32]| DeviceBuffer::from_slice_in(weights, stream, data);
        let mut upload = |n: usize, scale: f32| put(&init.take(n, scale));
        let w = |fan_in: usize| 1.0 / (fan_in as f32).sqrt();
        let layers = (0..cfg.layers)
            .map(|_| {
                Ok(Layer {
                    attn_norm: put(&vec![1.0f32; h])?,
                    wq: upload(h * h, w(h))?,
                    wk: upload(kv * h, w(h))?,
                    wv: upload(kv * h, w(h))?,
                    wo: upload(h * h, w(h))?,
                    mlp_norm: put(&vec![1.0f32; h])?,
                    w_gate_up: upload(2 * i * h, w(h))?,
                    w_down: upload(h * i, w(i))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = upload(cfg.vocab * h, w(h))?;
        let embed = init.take(cfg.vocab * h, 1.0);
        let half = hs / 2;
        let mut cs = vec![0f32; cfg.max_position * hs];
        for pos in 0..cfg.max_position {
            for f in 0..half {
                let theta = pos as f32 / 10000f32.powf(2.0 * f as f32 / hs as f32);
                cs[pos * hs + f] = theta.cos();
                cs[pos * hs + half + f] = theta.sin();
            }
        }
        Ok(Model {
            cfg,
            embed,
            layers,
            final_norm: put(&vec![1.0f32; h])?,
            lm_head,
            cos_sin: put(&cs)?,
            memory,
        })
    }

    /// The sizes.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Where the model's memory comes from (the activation allocator's statistics say what a
    /// step needs).
    pub fn memory(&self) -> &ModelMemory<B> {
        &self.memory
    }

    /// Runs one step over `tokens` at `positions` (the batch's tokens, request after request, in
    /// the order the KV cache's step tables were built), and returns the greedy next token of
    /// each row in `sample_rows`.
    pub fn forward(
        &self,
        stream: &B::Stream,
        kv: &mut impl KvAccess<B>,
        tokens: &[u32],
        positions: &[i64],
        sample_rows: &[usize],
    ) -> Result<Vec<u32>> {
        let cfg = &self.cfg;
        let (t, h, hs, i) = (tokens.len(), cfg.hidden, cfg.head_size(), cfg.intermediate);
        let kvw = cfg.kv_heads * hs;
        let device = stream.device();
        let activations = self.memory.activations.as_ref();
        let buf = |n: usize| DeviceBuffer::<B, f32>::alloc_in(activations, stream, n);

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
            rows.extend_from_slice(&self.embed[tok * h..(tok + 1) * h]);
        }
        let staged_rows = PinnedBuffer::<B, f32>::from_slice(&device, &rows)?;
        let staged_pos = PinnedBuffer::<B, i64>::from_slice(&device, positions)?;
        let mut hidden = buf(t * h)?;
        let mut pos = DeviceBuffer::<B, i64>::alloc_in(activations, stream, t)?;
        stream.copy_h2d(&staged_rows, &mut hidden)?;
        stream.copy_h2d(&staged_pos, &mut pos)?;

        let norm = RmsNorm {
            num_tokens: t,
            hidden: h,
            eps: 1e-6,
        };
        let mm = |n: usize, k: usize| Matmul { m: t, n, k };
        let mut residual = buf(t * h)?;
        let mut x = buf(t * h)?;
        let (mut q, mut k, mut v) = (buf(t * h)?, buf(t * kvw)?, buf(t * kvw)?);
        let mut attn = buf(t * h)?;
        let mut gate_up = buf(t * 2 * i)?;
        let mut act = buf(t * i)?;
        let scale = 1.0 / (hs as f32).sqrt();
        for (l, w) in self.layers.iter().enumerate() {
            if l == 0 {
                stream.copy_d2d(&hidden, &mut residual)?;
                B::rms_norm::<f32>(
                    stream,
                    &norm,
                    x.view_mut(),
                    hidden.view(),
                    w.attn_norm.view(),
                )?;
            } else {
                // `hidden` holds the previous MLP's output: residual += hidden; x = norm(residual).
                B::fused_add_rms_norm::<f32>(
                    stream,
                    &norm,
                    hidden.view_mut(),
                    residual.view_mut(),
                    w.attn_norm.view(),
                )?;
                std::mem::swap(&mut x, &mut hidden);
            }
            B::matmul::<f32>(stream, &mm(h, h), q.view_mut(), x.view(), w.wq.view())?;
            B::matmul::<f32>(stream, &mm(kvw, h), k.view_mut(), x.view(), w.wk.view())?;
            B::matmul::<f32>(stream, &mm(kvw, h), v.view_mut(), x.view(), w.wv.view())?;
            let rope = Rotary {
                num_tokens: t,
                num_heads: cfg.heads,
                num_kv_heads: cfg.kv_heads,
                head_size: hs,
                rotary_dim: hs,
                max_position: cfg.max_position,
                style: RopeStyle::Neox,
            };
            B::rotary_embedding::<f32>(
                stream,
                &rope,
                pos.view(),
                q.view_mut(),
                k.view_mut(),
                self.cos_sin.view(),
            )?;
            kv.write_kv(l, stream, &k, &v)?;
            kv.attention(l, stream, cfg.heads, scale, &mut attn, &q)?;
            B::matmul::<f32>(
                stream,
                &mm(h, h),
                hidden.view_mut(),
                attn.view(),
                w.wo.view(),
            )?;
            B::fused_add_rms_norm::<f32>(
                stream,
                &norm,
                hidden.view_mut(),
                residual.view_mut(),
                w.mlp_norm.view(),
            )?;
            B::matmul::<f32>(
                stream,
                &mm(2 * i, h),
                gate_up.view_mut(),
                hidden.view(),
                w.w_gate_up.view(),
            )?;
            B::silu_and_mul::<f32>(
                stream,
                &SiluAndMul {
                    num_tokens: t,
                    d: i,
                },
                act.view_mut(),
                gate_up.view(),
            )?;
            B::matmul::<f32>(
                stream,
                &mm(h, i),
                hidden.view_mut(),
                act.view(),
                w.w_down.view(),
            )?;
        }
        B::fused_add_rms_norm::<f32>(
            stream,
            &norm,
            hidden.view_mut(),
            residual.view_mut(),
            self.final_norm.view(),
        )?;
        let mut logits = buf(t * cfg.vocab)?;
        B::matmul::<f32>(
            stream,
            &mm(cfg.vocab, h),
            logits.view_mut(),
            hidden.view(),
            self.lm_head.view(),
        )?;
        // The one synchronisation of a step: sampling needs the logits on the host.
        let logits = stream.clone_to_host(&logits)?;
        Ok(sample_rows
            .iter()
            .map(|&r| {
                let row = &logits[r * cfg.vocab..(r + 1) * cfg.vocab];
                let mut best = 0;
                for (j, &x) in row.iter().enumerate() {
                    if x > row[best] {
                        best = j;
                    }
                }
                best as u32
            })
            .collect())
    }
}
