//! The model on block-quantized weights: every matrix (and a tied output projection taken from
//! the embedding's blocks) kept as Q4_0 / Q4_1 / Q8_0 blocks gives, within the error of
//! quantizing the activations, the logits of the same model holding those blocks' dequantized
//! values as floats, on the CPU backend (int8 activation blocks) and on the ACL backend over the
//! fake (f16, `aclnnWeightQuantBatchMatmulV2` on the repacked blocks); tensor parallelism shards
//! the blocks as it shards floats; and a backend that cannot run the blocks with the model's
//! activation dtype (ACL with f32) refuses the model by weight name before it uploads anything.

mod common;

use std::sync::Arc;

use ascend_examples::llm::kv_cache;
use ascend_examples::model::{
    LayerWeights, Logits, Matrix, Model, ModelConfig, ModelMemory, Weights,
};
use ascend_hal::acl::AclBackend;
use ascend_hal::{Backend, Device};
use ascend_kernels::quant::{dequantize, quantize};
use ascend_kernels::{KernelOps, KvFloat, QuantFormat};
use hal_mock::CpuBackend;
use paged_kv::{RequestId, RequestKeys};

const CFG: ModelConfig = ModelConfig {
    vocab: 256,
    hidden: 128,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    intermediate: 256,
    max_position: 64,
    rope_theta: 10000.0,
    rms_eps: 1e-6,
};

/// A layer's seven matrices.
fn layer_matrices(l: &mut LayerWeights) -> [&mut Matrix; 7] {
    [
        &mut l.wq,
        &mut l.wk,
        &mut l.wv,
        &mut l.wo,
        &mut l.w_gate,
        &mut l.w_up,
        &mut l.w_down,
    ]
}

/// Every matrix of `w` as blocks of `format` (`tied`: without an output projection of its own,
/// so the embedding's blocks serve as one).
fn quantized(w: &Weights, format: QuantFormat, tied: bool) -> Weights {
    let q = |m: &Matrix| match m {
        Matrix::F32(v) => {
            let mut bytes = Vec::new();
            quantize(format, v, &mut bytes).unwrap();
            Matrix::Blocks { format, bytes }
        }
        blocks => blocks.clone(),
    };
    let mut out = w.clone();
    out.embed = q(&w.embed);
    out.lm_head = if tied {
        None
    } else {
        Some(q(w.lm_head.as_ref().unwrap_or(&w.embed)))
    };
    for l in &mut out.layers {
        for m in layer_matrices(l) {
            *m = q(m);
        }
    }
    out
}

/// `w` with every block matrix replaced by its dequantized values.
fn dequantized(w: &Weights) -> Weights {
    let d = |m: &Matrix| match m {
        Matrix::Blocks { format, bytes } => {
            let mut v = vec![0f32; bytes.len() / format.block_bytes() * 32];
            dequantize(*format, bytes, &mut v).unwrap();
            Matrix::F32(v)
        }
        f => f.clone(),
    };
    let mut out = w.clone();
    out.embed = d(&w.embed);
    out.lm_head = w.lm_head.as_ref().map(d);
    for l in &mut out.layers {
        for m in layer_matrices(l) {
            *m = d(m);
        }
    }
    out
}

/// `w` with its layers' seven matrices requantized to W8A8 (int8 per output channel, as
/// `Storage::W8A8` loads a file), and the same model with those matrices' dequantized values;
/// the embedding and the output projection stay floats in both.
fn w8a8(w: &Weights) -> (Weights, Weights) {
    let (h, i) = (CFG.hidden, CFG.intermediate);
    // The columns of wq, wk, wv, wo, w_gate, w_up, w_down.
    let columns = [h, h, h, CFG.heads * CFG.head_size(), h, h, i];
    let (mut q, mut f) = (w.clone(), w.clone());
    for (lq, lf) in q.layers.iter_mut().zip(&mut f.layers) {
        let pairs = layer_matrices(lq).into_iter().zip(layer_matrices(lf));
        for ((mq, mf), cols) in pairs.zip(columns) {
            let Matrix::F32(v) = &*mf else {
                panic!("random weights are floats")
            };
            let (mut bytes, mut values) = (Vec::new(), vec![0f32; v.len()]);
            for (row, out) in v.chunks(cols).zip(values.chunks_mut(cols)) {
                let at = bytes.len();
                quantize(QuantFormat::Int8PerChannel, row, &mut bytes).unwrap();
                dequantize(QuantFormat::Int8PerChannel, &bytes[at..], out).unwrap();
            }
            *mq = Matrix::Blocks {
                format: QuantFormat::Int8PerChannel,
                bytes,
            };
            *mf = Matrix::F32(values);
        }
    }
    (q, f)
}

/// The values of a W8A8 matrix of `cols` columns.
fn w8a8_values(m: &Matrix, cols: usize) -> Matrix {
    let Matrix::Blocks { bytes, .. } = m else {
        panic!("not W8A8")
    };
    let rows = bytes.len() / (cols + 4);
    let mut v = vec![0f32; rows * cols];
    for (r, out) in bytes.chunks(cols + 4).zip(v.chunks_mut(cols)) {
        dequantize(QuantFormat::Int8PerChannel, r, out).unwrap();
    }
    Matrix::F32(v)
}

/// The logits of every position of `prompt`, prefilled in one step.
fn prefill_logits<B: KernelOps, T: KvFloat>(
    model: &Model<B, T>,
    stream: &B::Stream,
    prompt: &[u32],
) -> Logits {
    let mut kv = kv_cache::<B, T>(
        stream,
        Arc::clone(&model.memory().weights),
        model.config(),
        16,
        0.5,
        16,
    )
    .unwrap();
    let n = prompt.len();
    kv.admit(RequestId(1), prompt, &RequestKeys::default(), n)
        .unwrap();
    kv.begin_step(stream, &[(RequestId(1), n)]).unwrap();
    let positions: Vec<i64> = (0..n as i64).collect();
    let rows: Vec<usize> = (0..n).collect();
    model
        .forward_logits(stream, &mut kv, prompt, &positions, &rows)
        .unwrap()
}

fn cpu_model(w: Weights) -> (Model<CpuBackend>, <CpuBackend as Backend>::Stream) {
    let device = CpuBackend::new().device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let memory = ModelMemory::caching(&device).unwrap();
    (
        Model::from_weights(&stream, CFG, w, memory).unwrap(),
        stream,
    )
}

/// Largest difference between `a` and `b` over every row, relative to `b`'s largest magnitude.
fn relative_error(a: &Logits, b: &Logits) -> f32 {
    let (mut diff, mut scale) = (0f32, 0f32);
    for r in 0..b.rows() {
        for (x, y) in a.row(r).iter().zip(b.row(r)) {
            diff = diff.max((x - y).abs());
            scale = scale.max(y.abs());
        }
    }
    diff / scale
}

#[test]
fn blocks_give_the_logits_of_their_dequantized_values() {
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % CFG.vocab as u32).collect();
    let base = Weights::random(&CFG, 7);
    for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4_1] {
        for tied in [false, true] {
            let blocks = quantized(&base, format, tied);
            let floats = dequantized(&blocks);
            let (qm, qs) = cpu_model(blocks);
            let (fm, fs) = cpu_model(floats);
            // The blocks take what the file holds; the floats four times (4-bit: eight).
            assert!(
                qm.weight_bytes() * 3 < fm.weight_bytes(),
                "{format}: {} bytes of blocks, {} of floats",
                qm.weight_bytes(),
                fm.weight_bytes()
            );
            let (q, f) = (
                prefill_logits(&qm, &qs, &prompt),
                prefill_logits(&fm, &fs, &prompt),
            );
            // quant_matmul rounds each activation block to int8 (relative error <= 1/254 per
            // value); through two layers and the output projection that stays under 2% of
            // the largest logit. A wrong nibble order, a lost Q4_1 minimum or a misplaced row
            // moves logits by their whole size.
            let err = relative_error(&q, &f);
            assert!(err < 0.02, "{format}, tied {tied}: relative error {err}");
            let same = (0..q.rows())
                .filter(|&r| q.argmax(r) == f.argmax(r))
                .count();
            assert!(
                same * 10 >= q.rows() * 9,
                "{format}, tied {tied}: {same} of {} argmaxes agree",
                q.rows()
            );
        }
    }
}

#[test]
fn w8a8_gives_the_logits_of_its_dequantized_weights_on_the_cpu_and_the_acl_fake() {
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % CFG.vocab as u32).collect();
    let (q, f) = w8a8(&Weights::random(&CFG, 11));
    let (qm, qs) = cpu_model(q.clone());
    let (fm, fs) = cpu_model(f.clone());
    let (lq, lf) = (
        prefill_logits(&qm, &qs, &prompt),
        prefill_logits(&fm, &fs, &prompt),
    );
    // Each activation row rounds to int8 as a whole (relative error <= 1/254 of its largest
    // value per element), a coarser grid than 32-value blocks; a lost scale or a transposed
    // weight moves logits by their whole size.
    let err = relative_error(&lq, &lf);
    assert!(err < 0.03, "CPU W8A8: relative error {err}");
    let same = (0..lq.rows())
        .filter(|&r| lq.argmax(r) == lf.argmax(r))
        .count();
    assert!(
        same * 10 >= lq.rows() * 9,
        "{same} of {} argmaxes agree",
        lq.rows()
    );
    eprintln!(
        "CPU f32 W8A8 vs floats: relative error {err:.5}, {same}/{} argmaxes",
        lq.rows()
    );

    // On the ACL fake in f16 (aclnnDynamicQuant + aclnnQuantMatmulV4) against the same
    // dequantized weights through aclnnMatmul in f16, and against the CPU backend's W8A8 in f16.
    let device = common::acl_backend().device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let load = |w: Weights| {
        let memory = ModelMemory::<AclBackend>::caching(&device).unwrap();
        Model::<_, half::f16>::from_weights(&stream, CFG, w, memory).unwrap()
    };
    let (aq, af) = (load(q.clone()), load(f));
    assert!(
        aq.weight_bytes() < af.weight_bytes(),
        "int8 layers take less than f16"
    );
    let (a, b) = (
        prefill_logits(&aq, &stream, &prompt),
        prefill_logits(&af, &stream, &prompt),
    );
    let err = relative_error(&a, &b);
    assert!(err < 0.03, "ACL f16 W8A8 vs floats: relative error {err}");
    let cpu16 = {
        let device = CpuBackend::new().device(0).unwrap();
        let cs = device.new_stream().unwrap();
        let memory = ModelMemory::<CpuBackend>::caching(&device).unwrap();
        let m = Model::<_, half::f16>::from_weights(&cs, CFG, q, memory).unwrap();
        prefill_logits(&m, &cs, &prompt)
    };
    let across = relative_error(&a, &cpu16);
    assert!(
        across < 0.01,
        "ACL vs CPU W8A8 in f16: relative error {across}"
    );
    eprintln!("ACL f16 W8A8: vs floats {err:.5}, vs the CPU backend's W8A8 {across:.5}");
}

#[test]
fn a_sharded_block_matrix_is_the_blocks_of_the_sharded_values() {
    let base = quantized(&Weights::random(&CFG, 3), QuantFormat::Q4_1, false);
    let shard = CFG.shard(1, 2).unwrap();
    let blocks = base.shard(&CFG, &shard).unwrap();
    let floats = dequantized(&base).shard(&CFG, &shard).unwrap();
    assert_eq!(dequantized(&blocks).layers[0].wo, floats.layers[0].wo);
    assert_eq!(
        dequantized(&blocks).layers[1].w_down,
        floats.layers[1].w_down
    );
    assert_eq!(dequantized(&blocks).layers[1].wq, floats.layers[1].wq);
    assert!(blocks.validate_shard(&CFG, &shard).is_ok());
    // W8A8 rows shard on any column: each keeps its scale.
    let (q, f) = w8a8(&Weights::random(&CFG, 3));
    let (q, f) = (
        q.shard(&CFG, &shard).unwrap(),
        f.shard(&CFG, &shard).unwrap(),
    );
    assert_eq!(w8a8_values(&q.layers[0].wo, CFG.hidden / 2), f.layers[0].wo);
    assert_eq!(
        w8a8_values(&q.layers[1].w_down, CFG.intermediate / 2),
        f.layers[1].w_down
    );
    // A split off the 32-value block grid is refused by name, not rounded.
    let cfg = ModelConfig {
        heads: 8,
        kv_heads: 8,
        ..CFG
    };
    let w = quantized(&Weights::random(&cfg, 3), QuantFormat::Q8_0, false);
    let e = w.shard(&cfg, &cfg.shard(1, 8).unwrap()).unwrap_err();
    assert!(
        e.to_string().contains("layer 0 wo")
            && e.to_string()
                .contains("do not fall on Q8_0 block boundaries"),
        "{e}"
    );
}

#[test]
fn the_acl_backend_refuses_a_block_model_with_f32_activations_before_uploading() {
    let device = common::acl_backend().device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let memory = ModelMemory::<AclBackend>::caching(&device).unwrap();
    let weights = quantized(&Weights::random(&CFG, 1), QuantFormat::Q4_0, false);
    let before = device.memory_info().unwrap().free;
    let e = Model::<_, f32>::from_weights(&stream, CFG, weights, memory.clone())
        .err()
        .expect("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("lm_head is Q4_0 with f32 activations, which this backend cannot run"),
        "{msg}"
    );
    assert!(
        msg.contains("aclnnWeightQuantBatchMatmulV2, takes f16 or bf16 activations")
            && msg.contains("The CPU backend's quant_matmul runs Q4_0, Q4_1, Q8_0 and W8A8"),
        "{msg}"
    );
    assert_eq!(memory.weights.stats().allocated, 0, "nothing uploaded");
    assert_eq!(device.memory_info().unwrap().free, before);
    // Dequantized, the same model loads.
    let weights = dequantized(&quantized(
        &Weights::random(&CFG, 1),
        QuantFormat::Q4_0,
        false,
    ));
    assert!(Model::<_, f32>::from_weights(&stream, CFG, weights, memory).is_ok());
}

#[test]
fn on_the_acl_fake_f16_blocks_give_the_logits_of_their_dequantized_values() {
    // aclnnWeightQuantBatchMatmulV2 on the repacked blocks against aclnnMatmul on their
    // dequantized values, both in f16: the weights are the same numbers (up to the f16
    // rounding of a dequantized weight, and of Q4_1's offset), so the logits agree to f16
    // accumulation error.
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % CFG.vocab as u32).collect();
    let base = Weights::random(&CFG, 7);
    let device = common::acl_backend().device(0).unwrap();
    let stream = device.new_stream().unwrap();
    for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4_1] {
        for tied in [false, true] {
            let blocks = quantized(&base, format, tied);
            let floats = dequantized(&blocks);
            let load = |w: Weights| {
                let memory = ModelMemory::<AclBackend>::caching(&device).unwrap();
                Model::<_, half::f16>::from_weights(&stream, CFG, w, memory).unwrap()
            };
            let (qm, fm) = (load(blocks), load(floats));
            assert!(qm.weight_bytes() * 2 < fm.weight_bytes(), "{format}");
            let (q, f) = (
                prefill_logits(&qm, &stream, &prompt),
                prefill_logits(&fm, &stream, &prompt),
            );
            let err = relative_error(&q, &f);
            assert!(err < 0.01, "{format}, tied {tied}: relative error {err}");
            eprintln!("{format}, tied {tied}: ACL f16 blocks vs floats, relative error {err:.5}");
        }
    }
}

#[test]
fn mixed_storage_and_wrong_sizes_are_refused_by_name() {
    let mut blocks = Vec::new();
    quantize(QuantFormat::Q8_0, &[0.5; 64], &mut blocks).unwrap();
    let b = Matrix::Blocks {
        format: QuantFormat::Q8_0,
        bytes: blocks,
    };
    assert!(b.check(2, 32).is_ok() && b.check(1, 64).is_ok());
    assert_eq!(
        b.check(2, 64).unwrap_err(),
        "is 68 bytes of Q8_0, the configuration needs [2, 64] (136 bytes)"
    );
    assert_eq!(
        b.check(2, 40).unwrap_err(),
        "40 columns are not whole Q8_0 blocks of 32 values"
    );
    let e = Matrix::F32(vec![0.0; 64]).stack(b.clone()).unwrap_err();
    assert!(e.contains("one is F32 and the other Q8_0"), "{e}");
    let stacked = b.clone().stack(b.clone()).unwrap();
    assert_eq!(stacked.byte_len(), 2 * b.byte_len());
    // A model whose gate and up projections are stored differently is refused naming both.
    let mut w = quantized(&Weights::random(&CFG, 2), QuantFormat::Q8_0, false);
    w.layers[1].w_up = dequantized(&w).layers[1].w_up.clone();
    let device = CpuBackend::new().device(0).unwrap();
    let stream = device.new_stream().unwrap();
    let memory = ModelMemory::<CpuBackend>::caching(&device).unwrap();
    let e = Model::<_, f32>::from_weights(&stream, CFG, w, memory)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("layer 1 w_gate and w_up: one is Q8_0 and the other F32"),
        "{e}"
    );
}
