//! A real model ready to serve: a Llama-architecture GGUF file's weights on a backend, its
//! tokenizer and chat template, and a paged KV cache sized for it. What the `chat` example, the
//! reference test against Hugging Face transformers and the speed script share.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};

use ascend_hal::prelude::*;
use ascend_hal::Result as HalResult;
use ascend_kernels::{KernelOps, KvFloat};
use paged_kv::{KvCache, KvCacheConfig, KvCacheSpec, MemoryBudget};

use crate::llama_gguf::{self, Storage};
use crate::model::{Model, ModelConfig, ModelMemory};
use crate::tokenizer::GgufTokenizer;

/// Any error of loading or serving, with its message.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The file name of the SmolLM2-135M-Instruct model `scripts/fetch-smollm2.sh` fetches.
pub const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The model cache: `$ASCEND_RS_MODELS`, else `~/.cache/ascend-rs/models`.
pub fn model_cache() -> Option<PathBuf> {
    std::env::var_os("ASCEND_RS_MODELS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ascend-rs/models"))
        })
}

/// SmolLM2-135M-Instruct in the model cache, if it has been fetched.
pub fn smollm2_path() -> Option<PathBuf> {
    let path = model_cache()?.join(SMOLLM2_FILE);
    path.exists().then_some(path)
}

/// A model on a device with its tokenizer, computing in `T` (f32 by default).
pub struct Llm<B: KernelOps, T: KvFloat = f32> {
    /// The weights and the forward pass.
    pub model: Model<B, T>,
    /// The tokenizer and chat template.
    pub tokenizer: GgufTokenizer,
}

impl<B: KernelOps, T: KvFloat> Llm<B, T> {
    /// Loads `path` (a Llama-architecture GGUF), keeping its Q4_0/Q4_1/Q8_0 matrices as
    /// blocks ([`Storage::Quantized`]) and uploading them and everything else (as `T`) through
    /// `stream`; the RoPE table covers `max_model_len` positions, which must be at most the
    /// file's context length. A backend without a `quant_matmul` provider for the file's formats
    /// is an error naming the first such tensor: load with [`Llm::load_with`] and
    /// [`Storage::Dequantized`] there.
    pub fn load(
        stream: &B::Stream,
        path: &Path,
        max_model_len: usize,
        memory: ModelMemory<B>,
    ) -> Result<Self, BoxError> {
        Self::load_with(stream, path, max_model_len, memory, Storage::Quantized)
    }

    /// [`Llm::load`] with the block-quantized matrices stored as `storage` says.
    pub fn load_with(
        stream: &B::Stream,
        path: &Path,
        max_model_len: usize,
        memory: ModelMemory<B>,
        storage: Storage,
    ) -> Result<Self, BoxError> {
        let (file, cfg, weights) = llama_gguf::load(path, Some(max_model_len), storage)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let tokenizer = GgufTokenizer::from_gguf(&file)?;
        if tokenizer.vocab_size() != cfg.vocab {
            return Err(format!(
                "the tokenizer has {} tokens, the embedding {}",
                tokenizer.vocab_size(),
                cfg.vocab
            )
            .into());
        }
        drop(file);
        let model = Model::from_weights(stream, cfg, weights, memory)?;
        stream.synchronize()?;
        Ok(Llm { model, tokenizer })
    }

    /// The model's sizes.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }
}

/// A paged KV cache for `cfg` from `alloc`: `block_size` tokens per block, as many blocks as
/// `utilization` of the device's memory holds beside what is already used and
/// `activation_peak` bytes of activations, capped at `max_blocks`, prefix caching on.
pub fn kv_cache<B: KernelOps, T: KvFloat>(
    stream: &B::Stream,
    alloc: ascend_hal::alloc::SharedAllocator<B>,
    cfg: &ModelConfig,
    block_size: usize,
    utilization: f64,
    max_blocks: usize,
) -> HalResult<KvCache<B, T>> {
    let device = stream.device();
    let info = device.memory_info()?;
    let spec = KvCacheSpec::new(cfg.layers, cfg.kv_heads, cfg.head_size(), T::DTYPE)
        .with_block_size(block_size);
    let config = KvCacheConfig {
        utilization,
        activation_peak: 256 << 20,
        max_model_len: cfg.max_position,
        max_blocks: Some(max_blocks),
        enable_prefix_caching: true,
        swap_blocks: 64,
        enable_kv_cache_events: false,
    };
    let kv_err = |e: paged_kv::KvError| match e {
        paged_kv::KvError::Device(e) => e,
        other => ascend_hal::Error::InvalidArgument {
            op: "KV cache",
            message: other.to_string(),
        },
    };
    // Sized as an engine sizes it; an error here says how much memory is missing.
    spec.size_for(&MemoryBudget {
        total_memory: info.total,
        utilization,
        non_kv_peak: info.used() + config.activation_peak,
        max_model_len: cfg.max_position,
    })
    .map_err(kv_err)?;
    KvCache::with_allocator(alloc, stream, spec, config).map_err(kv_err)
}
