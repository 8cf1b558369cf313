//! A Llama-architecture GGUF file (Llama, SmolLM, ...) as the example model's configuration and
//! weights: Q4_0, Q4_1 and Q8_0 matrices kept as their blocks ([`Storage::Quantized`], the
//! default) or dequantized to `f32` ([`Storage::Dequantized`]), F32/F16/BF16 ones as `f32`
//! values, the query and key projections put back in Hugging Face's row order.
//!
//! llama.cpp's converter permutes the rows of `q_proj` and `k_proj` so that ggml's RoPE, which
//! rotates adjacent pairs (GPT-J style), computes what Hugging Face's rotation of the two halves
//! (NeoX style) computes on the original rows. Undoing that permutation (as transformers does
//! when it loads a GGUF) gives the original weights, so the model runs the same NeoX RoPE kernel
//! and the same arithmetic as the reference.

use std::path::Path;

use ascend_kernels::QuantFormat;

use crate::gguf::{Gguf, GgufError, TensorType};
use crate::model::{LayerWeights, Matrix, ModelConfig, Weights};

type Result<T> = std::result::Result<T, GgufError>;

fn bad<T>(message: impl Into<String>) -> Result<T> {
    Err(GgufError(message.into()))
}

/// The configuration a `llama` GGUF file states, with the RoPE table covering `max_position`
/// positions, or the file's `context_length` when `None`. A `max_position` past the context
/// length is refused (the model was not trained past it), not shortened behind the caller's
/// back.
pub fn config(file: &Gguf, max_position: Option<usize>) -> Result<ModelConfig> {
    let arch = file.get_str("general.architecture")?;
    if arch != "llama" {
        return bad(format!(
            "general.architecture is {arch:?}; this reads Llama-architecture files"
        ));
    }
    let n = |key: &str| -> Result<usize> {
        let v = file.get_u64(key)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0 && v <= 1 << 24)
            .ok_or_else(|| GgufError(format!("{key} = {v} is not a size this model takes")))
    };
    let embd = file
        .tensors
        .get("token_embd.weight")
        .ok_or_else(|| GgufError("no tensor token_embd.weight".into()))?;
    let cfg = ModelConfig {
        vocab: embd.dims.get(1).copied().unwrap_or(0) as usize,
        hidden: n("llama.embedding_length")?,
        layers: n("llama.block_count")?,
        heads: n("llama.attention.head_count")?,
        kv_heads: n("llama.attention.head_count_kv")?,
        intermediate: n("llama.feed_forward_length")?,
        max_position: {
            let context = n("llama.context_length")?;
            match max_position {
                None => context,
                Some(m) if m <= context => m,
                Some(m) => {
                    return bad(format!(
                        "a max model length of {m} is more than the model's context length of \
                         {context} (llama.context_length): it was not trained on longer \
                         sequences; use at most {context}"
                    ))
                }
            }
        },
        rope_theta: file.get_f64("llama.rope.freq_base").unwrap_or(10000.0),
        rms_eps: file.get_f64("llama.attention.layer_norm_rms_epsilon")?,
    };
    // Every per-layer allocation is sized by block_count: it must be what the file holds.
    let blocks = file
        .tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix("blk.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    if cfg.layers != blocks {
        return bad(format!(
            "llama.block_count = {}, but the file has tensors for {blocks} blocks (blk.0 ..): \
             the file is corrupt",
            cfg.layers
        ));
    }
    if !cfg.hidden.is_multiple_of(cfg.heads)
        || !cfg.heads.is_multiple_of(cfg.kv_heads)
        || !cfg.head_size().is_multiple_of(2)
    {
        return bad(format!(
            "{} heads over {} KV heads do not split a hidden size of {} into even heads",
            cfg.heads, cfg.kv_heads, cfg.hidden
        ));
    }
    for key in ["llama.attention.key_length", "llama.attention.value_length"] {
        if let Ok(len) = file.get_u64(key) {
            if len as usize != cfg.head_size() {
                return bad(format!(
                    "{key} = {len}, but hidden / heads = {}: heads of another size are not \
                     supported",
                    cfg.head_size()
                ));
            }
        }
    }
    if let Ok(rot) = file.get_u64("llama.rope.dimension_count") {
        if rot as usize != cfg.head_size() {
            return bad(format!(
                "RoPE over {rot} of {} dimensions per head: partial rotation is not supported",
                cfg.head_size()
            ));
        }
    }
    if file.metadata.contains_key("llama.rope.scaling.type") {
        let kind = file.get_str("llama.rope.scaling.type").unwrap_or("?");
        if kind != "none" {
            return bad(format!("RoPE scaling {kind:?} is not supported"));
        }
    }
    Ok(cfg)
}

/// How the loader stores a file's block-quantized matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Q4_0, Q4_1 and Q8_0 matrices stay blocks, as the file holds them (the model runs them
    /// with `quant_matmul`, reading a quarter to a half of the bytes of f16).
    #[default]
    Quantized,
    /// Every matrix dequantized to `f32` (the model uploads it in its activation dtype): for a
    /// backend without a `quant_matmul` provider, or to compute exactly as a float reference
    /// does.
    Dequantized,
    /// W8A8: every linear layer's weight (attention and MLP projections) requantized from its
    /// values to int8 per output channel ([`QuantFormat::Int8PerChannel`]), so that
    /// `quant_matmul` multiplies int8 activations quantized per token with int8 weights
    /// (`aclnnDynamicQuant` + `aclnnQuantMatmulV4` on the NPU). The embedding and the output
    /// projection stay as the file stores them, as W8A8 deployments keep them.
    W8A8,
}

/// The block format a GGUF tensor type is, if it is one `quant_matmul` runs.
fn block_format(ty: TensorType) -> Option<QuantFormat> {
    match ty {
        TensorType::Q4_0 => Some(QuantFormat::Q4_0),
        TensorType::Q4_1 => Some(QuantFormat::Q4_1),
        TensorType::Q8_0 => Some(QuantFormat::Q8_0),
        _ => None,
    }
}

/// The tensor `name`, checked to be `[rows, cols]` (ggml's `[cols, rows]`), stored as `storage`
/// says.
fn matrix(file: &Gguf, name: &str, rows: usize, cols: usize, storage: Storage) -> Result<Matrix> {
    let info = file
        .tensors
        .get(name)
        .ok_or_else(|| GgufError(format!("no tensor {name}")))?;
    match (block_format(info.ty), storage) {
        (Some(format), Storage::Quantized) => {
            vector(file, name, rows, cols, false)?;
            let bytes = file.tensor_bytes(name)?;
            if let Some(b) = ascend_kernels::quant::first_non_finite_block(format, &bytes) {
                return bad(format!(
                    "tensor {name} ({format}) has a non-finite scale in block {b}: the weights \
                     are corrupt"
                ));
            }
            Ok(Matrix::Blocks { format, bytes })
        }
        (_, Storage::W8A8) => {
            let values = vector(file, name, rows, cols, true)?;
            let mut bytes = Vec::with_capacity(rows * (cols + 4));
            for row in values.chunks(cols.max(1)) {
                ascend_kernels::quant::quantize(QuantFormat::Int8PerChannel, row, &mut bytes)
                    .map_err(|e| GgufError(format!("tensor {name}: {e}")))?;
            }
            Ok(Matrix::Blocks {
                format: QuantFormat::Int8PerChannel,
                bytes,
            })
        }
        _ => vector(file, name, rows, cols, true).map(Matrix::F32),
    }
}

/// The tensor `name`, checked to be `[rows, cols]` (ggml's `[cols, rows]`), as `f32` rows when
/// `read` (else only checked).
fn vector(file: &Gguf, name: &str, rows: usize, cols: usize, read: bool) -> Result<Vec<f32>> {
    let info = file
        .tensors
        .get(name)
        .ok_or_else(|| GgufError(format!("no tensor {name}")))?;
    let want: &[u64] = if rows == 1 {
        &[cols as u64]
    } else {
        &[cols as u64, rows as u64]
    };
    if info.dims != want {
        return bad(format!(
            "{name} has dims {:?} (ggml order); the configuration needs {want:?}",
            info.dims
        ));
    }
    if let TensorType::Other(code) = info.ty {
        return bad(format!(
            "tensor {name} is of ggml type {} ({code}), which no provider here runs: \
             quant_matmul runs Q4_0, Q4_1 and Q8_0 (the CPU backend), matmul runs F32, F16 and \
             BF16 (every backend); requantize the file to one of those (llama-quantize)",
            info.ty.name()
        ));
    }
    if !read {
        return Ok(Vec::new());
    }
    file.tensor_f32(name)
}

/// Undoes llama.cpp's row permutation of a query or key projection (`heads` heads of
/// `head_size` rows of `cols` elements, values or bytes of blocks): ggml's row `(head, j, s)` is
/// Hugging Face's row `(head, s, j)`.
pub fn unpermute_rows<E: Copy + Default>(
    w: &[E],
    heads: usize,
    head_size: usize,
    cols: usize,
) -> Vec<E> {
    let half = head_size / 2;
    let mut out = vec![E::default(); w.len()];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let from = (h * head_size + 2 * j + s) * cols;
                let to = (h * head_size + s * half + j) * cols;
                out[to..to + cols].copy_from_slice(&w[from..from + cols]);
            }
        }
    }
    out
}

/// [`unpermute_rows`] of a `[heads * head_size, cols]` matrix.
fn unpermute(m: Matrix, heads: usize, head_size: usize, cols: usize) -> Matrix {
    match m {
        Matrix::F32(v) => Matrix::F32(unpermute_rows(&v, heads, head_size, cols)),
        Matrix::Blocks { format, bytes } => {
            let row = format.row_bytes(cols).expect("checked by matrix()");
            Matrix::Blocks {
                format,
                bytes: unpermute_rows(&bytes, heads, head_size, row),
            }
        }
    }
}

/// Every weight of a `llama` file, for `cfg` (from [`config`]), matrices stored as `storage`
/// says (norms are always `f32`).
pub fn weights(file: &Gguf, cfg: &ModelConfig, storage: Storage) -> Result<Weights> {
    let (h, i, hs) = (cfg.hidden, cfg.intermediate, cfg.head_size());
    let (q, kv) = (cfg.heads * hs, cfg.kv_heads * hs);
    let layer = |l: usize| -> Result<LayerWeights> {
        let name = |name: &str| format!("blk.{l}.{name}.weight");
        let t = |n: &str, rows, cols| matrix(file, &name(n), rows, cols, storage);
        let norm = |n: &str| vector(file, &name(n), 1, h, true);
        Ok(LayerWeights {
            attn_norm: norm("attn_norm")?,
            wq: unpermute(t("attn_q", q, h)?, cfg.heads, hs, h),
            wk: unpermute(t("attn_k", kv, h)?, cfg.kv_heads, hs, h),
            wv: t("attn_v", kv, h)?,
            wo: t("attn_output", h, q)?,
            mlp_norm: norm("ffn_norm")?,
            w_gate: t("ffn_gate", i, h)?,
            w_up: t("ffn_up", i, h)?,
            w_down: t("ffn_down", h, i)?,
        })
    };
    // Dequantizing (or checking blocks) is most of the load time: layers on every core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut layers: Vec<Option<Result<LayerWeights>>> = (0..cfg.layers).map(|_| None).collect();
    std::thread::scope(|scope| {
        for (c, chunk) in layers.chunks_mut(cfg.layers.div_ceil(threads)).enumerate() {
            let first = c * cfg.layers.div_ceil(threads);
            scope.spawn(move || {
                for (j, slot) in chunk.iter_mut().enumerate() {
                    *slot = Some(layer(first + j));
                }
            });
        }
    });
    let layers = layers
        .into_iter()
        .map(|l| l.expect("every layer was read"))
        .collect::<Result<Vec<_>>>()?;
    // W8A8 quantizes the linear layers only; the embedding and the head stay as stored.
    let table_storage = match storage {
        Storage::W8A8 => Storage::Quantized,
        other => other,
    };
    let lm_head = if file.tensors.contains_key("output.weight") {
        Some(matrix(file, "output.weight", cfg.vocab, h, table_storage)?)
    } else {
        None // tied to the embedding
    };
    Ok(Weights {
        embed: matrix(file, "token_embd.weight", cfg.vocab, h, table_storage)?,
        layers,
        final_norm: vector(file, "output_norm.weight", 1, h, true)?,
        lm_head,
    })
}

/// Reads `path` and returns its configuration (RoPE table over `max_position` positions, see
/// [`config`]) and weights, stored as `storage` says.
pub fn load(
    path: &Path,
    max_position: Option<usize>,
    storage: Storage,
) -> Result<(Gguf, ModelConfig, Weights)> {
    let file = Gguf::open(path)?;
    let cfg = config(&file, max_position)?;
    let w = weights(&file, &cfg, storage)?;
    Ok((file, cfg, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute` (convert_hf_to_gguf.py): `w.reshape(n_head, 2, dim // n_head // 2,
    /// *rest).swapaxes(1, 2)`, so its row `(head, j, s)` is Hugging Face's row `(head, s, j)`.
    fn llama_cpp_permute(w: &[f32], heads: usize, head_size: usize, cols: usize) -> Vec<f32> {
        let half = head_size / 2;
        let mut out = vec![0f32; w.len()];
        for h in 0..heads {
            for s in 0..2 {
                for j in 0..half {
                    let hf = (h * head_size + s * half + j) * cols;
                    let gg = (h * head_size + 2 * j + s) * cols;
                    out[gg..gg + cols].copy_from_slice(&w[hf..hf + cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermuting_undoes_llama_cpps_permutation() {
        for (heads, hs, cols) in [(3usize, 64usize, 5usize), (1, 4, 1), (9, 8, 3)] {
            let hf: Vec<f32> = (0..heads * hs * cols).map(|i| i as f32).collect();
            let gguf = llama_cpp_permute(&hf, heads, hs, cols);
            assert_ne!(
                gguf, hf,
                "the permutation moves rows (heads {heads}, size {hs})"
            );
            assert_eq!(unpermute_rows(&gguf, heads, hs, cols), hf);
        }
        // Head 0, head size 4: ggml rows are (j0 s0, j0 s1, j1 s0, j1 s1) = HF rows 0, 2, 1, 3.
        let gguf = [0.0f32, 2.0, 1.0, 3.0];
        assert_eq!(unpermute_rows(&gguf, 1, 4, 1), [0.0, 1.0, 2.0, 3.0]);
    }
}
