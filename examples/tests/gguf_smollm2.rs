//! The GGUF reader on the real SmolLM2-135M-Instruct file (fetched by
//! `scripts/fetch-smollm2.sh`, which `.ci/run` runs first): the metadata the model needs, the
//! tensor directory, and dequantized tensors of each type in the file (Q8_0, Q4_1, F32) against
//! sums computed by llama.cpp's own reader (the `gguf` 0.19.0 Python package:
//! `gguf.quants.dequantize(t.data, t.tensor_type)`, summed in float64).

use ascend_examples::gguf::{Gguf, TensorType};

mod common;
use common::smollm2_or_skip;

/// name, type, dims, sum, sum of |x|, first and last element.
type Golden = (&'static str, TensorType, [u64; 2], f64, f64, f64, f64);

#[test]
fn smollm2_reads_as_llama_cpp_reads_it() {
    let Some(path) = smollm2_or_skip() else {
        return;
    };
    let g = Gguf::open(&path).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.tensors.len(), 272);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    for (key, want) in [
        ("llama.block_count", 30),
        ("llama.embedding_length", 576),
        ("llama.feed_forward_length", 1536),
        ("llama.attention.head_count", 9),
        ("llama.attention.head_count_kv", 3),
        ("llama.rope.dimension_count", 64),
        ("llama.vocab_size", 49152),
    ] {
        assert_eq!(g.get_u64(key).unwrap(), want, "{key}");
    }
    assert_eq!(g.get_f64("llama.rope.freq_base").unwrap(), 100000.0);
    assert!((g.get_f64("llama.attention.layer_norm_rms_epsilon").unwrap() - 1e-5).abs() < 1e-12);
    let tokens = g.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens.strings().unwrap()[1], "<|im_start|>");
    let merges = g.get("tokenizer.ggml.merges").unwrap().as_array().unwrap();
    assert_eq!(merges.len(), 48900);
    assert!(g
        .get_str("tokenizer.chat_template")
        .unwrap()
        .contains("<|im_start|>"));

    // name, type, dims, sum, sum of |x|, first and last element (as float64, exactly
    // representable in f32).
    let golden: [Golden; 4] = [
        (
            "token_embd.weight",
            TensorType::Q8_0,
            [576, 49152],
            -15353.04449415207,
            2802153.619805813,
            -0.10654449462890625,
            -0.0417022705078125,
        ),
        (
            "blk.0.attn_q.weight",
            TensorType::Q4_1,
            [576, 576],
            59.22322082519531,
            63395.39872741699,
            -0.0963134765625,
            -0.255859375,
        ),
        (
            "blk.29.ffn_down.weight",
            TensorType::Q4_1,
            [1536, 576],
            49.83570861816406,
            126250.91435241699,
            -0.2733154296875,
            0.056640625,
        ),
        (
            "output_norm.weight",
            TensorType::F32,
            [576, 1],
            1038.33203125,
            1045.09765625,
            1.7578125,
            1.984375,
        ),
    ];
    for (name, ty, dims, sum, abs, first, last) in golden {
        let (first, last) = (first as f32, last as f32);
        let info = &g.tensors[name];
        assert_eq!(info.ty, ty, "{name}");
        assert_eq!(info.elements(), dims[0] * dims[1], "{name}");
        let x = g.tensor_f32(name).unwrap();
        let (s, a) = x.iter().fold((0f64, 0f64), |(s, a), &v| {
            (s + v as f64, a + (v as f64).abs())
        });
        // Element values are exact (f16 scales times small integers, in f32); the sums differ
        // from float64 ones only by summation order.
        assert!((s - sum).abs() < 1e-6 * abs, "{name}: sum {s} vs {sum}");
        assert!((a - abs).abs() < 1e-9 * abs, "{name}: |sum| {a} vs {abs}");
        assert_eq!((x[0], x[x.len() - 1]), (first, last), "{name}");
    }
    // The model ties its output to the embedding: there is no output.weight.
    assert!(!g.tensors.contains_key("output.weight"));
}

#[test]
fn smollm2_configures_the_model_as_transformers_does() {
    let Some(path) = smollm2_or_skip() else {
        return;
    };
    let g = Gguf::open(&path).unwrap();
    let cfg = ascend_examples::llama_gguf::config(&g, None).unwrap();
    let context = g.get_u64("llama.context_length").unwrap() as usize;
    assert_eq!(
        (cfg.vocab, cfg.hidden, cfg.layers, cfg.heads, cfg.kv_heads),
        (49152, 576, 30, 9, 3)
    );
    assert_eq!(
        (cfg.intermediate, cfg.head_size(), cfg.max_position),
        (1536, 64, context)
    );
    // Stored as f32, as the file (and so transformers) has it.
    assert_eq!((cfg.rope_theta, cfg.rms_eps as f32), (100000.0, 1e-5));
    assert_eq!(
        ascend_examples::llama_gguf::config(&g, Some(300))
            .unwrap()
            .max_position,
        300
    );
}
