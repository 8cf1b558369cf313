//! The quantized GEMM on the CPU (`cpu::quant_matmul`) against its `f64` reference (the weight
//! decoded, each activation row quantized to int8 blocks and decoded): equal up to the order the
//! sums are added in, for every block format and W8A8 (activations quantized per token), f32/f16/bf16 activations, and random shapes; a
//! row's result is the same bits alone or in a batch; bad input is an error naming what is
//! wrong and writes nothing.

use ascend_hal::Error;
use ascend_kernels::quant::{quantize, BLOCK};
use ascend_kernels::{cpu, reference, KvFloat, QuantFormat, QuantMatmul};
use half::{bf16, f16};
use proptest::prelude::*;

struct Case {
    p: QuantMatmul,
    x: Vec<f32>,
    w: Vec<u8>,
    /// Per output element: `Σ |x'_i w'_i|`, the scale of its rounding error.
    magnitude: Vec<f64>,
}

fn case(format: QuantFormat, m: usize, n: usize, blocks: usize, seed: u64) -> Case {
    // W8A8 takes any k: some cases have a tail past the last 32 values.
    let k = blocks * BLOCK
        + if format.is_blocks() {
            0
        } else {
            seed as usize % 5
        };
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    };
    let x: Vec<f32> = (0..m * k).map(|_| next() * 3.0).collect();
    let wf: Vec<f32> = (0..n * k).map(|_| next() * 0.2).collect();
    let mut w = Vec::new();
    for row in wf.chunks(k) {
        quantize(format, row, &mut w).unwrap();
    }
    let mut decoded = vec![0f32; n * k];
    let row = format.row_bytes(k).unwrap();
    for (r, d) in w.chunks(row).zip(decoded.chunks_mut(k)) {
        ascend_kernels::quant::dequantize(format, r, d).unwrap();
    }
    let mut magnitude = vec![0f64; m * n];
    for r in 0..m {
        let xq = if format.is_blocks() {
            let mut a = ascend_kernels::quant::ActivationBlocks::default();
            a.quantize(&x[r * k..(r + 1) * k]);
            a.values()
        } else {
            let mut a = ascend_kernels::quant::TokenQuant::default();
            a.quantize(&x[r * k..(r + 1) * k]);
            a.values()
        };
        for c in 0..n {
            magnitude[r * n + c] = xq
                .iter()
                .zip(&decoded[c * k..(c + 1) * k])
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
        }
    }
    Case {
        p: QuantMatmul { m, n, k, format },
        x,
        w,
        magnitude,
    }
}

fn check<T: KvFloat>(c: &Case) -> Result<(), TestCaseError> {
    let x: Vec<T> = c.x.iter().map(|&v| T::from_f32(v)).collect();
    let mut fast = vec![T::from_f32(f32::NAN); c.p.m * c.p.n];
    let mut slow = vec![T::from_f32(0.0); c.p.m * c.p.n];
    cpu::quant_matmul(&c.p, &mut fast, &x, &c.w).unwrap();
    reference::quant_matmul(&c.p, &mut slow, &x, &c.w).unwrap();
    // Both round the same f64-exact value to T; the sums differ by f32 rounding only:
    // 1e-6 of the terms' magnitude, plus one rounding to T.
    let (_, rtol) = ascend_kernels::tolerance(T::DTYPE);
    let unit = if T::DTYPE == ascend_hal::DType::F32 {
        0.0
    } else {
        rtol
    };
    for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
        let (a, b) = (a.to_f32() as f64, b.to_f32() as f64);
        let tol = 1e-6 * (1.0 + c.magnitude[i]) + unit as f64 * b.abs();
        prop_assert!(
            (a - b).abs() <= tol,
            "{} {:?} element {i}: {a} vs {b} (tolerance {tol})",
            c.p.format,
            T::DTYPE
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_fast_kernel_equals_the_reference(
        fi in 0usize..4,
        m in 0usize..10,
        n in 1usize..40,
        blocks in 1usize..9,
        seed in any::<u64>(),
    ) {
        let c = case(QuantFormat::EVERY[fi], m, n, blocks, seed);
        check::<f32>(&c)?;
        check::<f16>(&c)?;
        check::<bf16>(&c)?;
    }
}

/// A row's result does not depend on the other rows of its batch (the tiles of 8 and 4 and the
/// single rows run the same per-row sums; 19 blocks are two whole groups of 8 and a last one).
#[test]
fn a_row_gives_the_same_bits_in_any_batch() {
    for f in QuantFormat::EVERY {
        let c = case(f, 13, 70, 19, 3);
        let mut batch = vec![0f32; 13 * 70];
        cpu::quant_matmul(&c.p, &mut batch, &c.x, &c.w).unwrap();
        for r in 0..13 {
            let p = QuantMatmul { m: 1, ..c.p };
            let mut one = vec![0f32; 70];
            cpu::quant_matmul(&p, &mut one, &c.x[r * c.p.k..(r + 1) * c.p.k], &c.w).unwrap();
            for (a, b) in one.iter().zip(&batch[r * 70..(r + 1) * 70]) {
                assert_eq!(a.to_bits(), b.to_bits(), "{f} row {r}");
            }
        }
    }
}

/// The CPU backend's layout in a batch big enough for AMX where the CPU has it (33 rows: tiles
/// of 16, 16 and 1): each row gets the bits it gets alone and from GGUF's blocks, with columns
/// in whole panels of 16 (48) and not (70), and rows of whole groups and a partial one (19
/// blocks).
#[test]
fn the_interleaved_layout_gives_a_row_its_bits_alone_in_a_batch_of_33() {
    for f in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4_1] {
        for n in [48, 70] {
            let c = case(f, 33, n, 19, 5);
            let k = c.p.k;
            let wi = ascend_kernels::interleaved::interleave(f, n, k, &c.w).unwrap();
            let (mut batch, mut blocks) = (vec![0f32; 33 * n], vec![0f32; 33 * n]);
            cpu::quant_matmul_interleaved(&c.p, &mut batch, &c.x, &wi).unwrap();
            cpu::quant_matmul(&c.p, &mut blocks, &c.x, &c.w).unwrap();
            for r in 0..33 {
                let p = QuantMatmul { m: 1, ..c.p };
                let mut one = vec![0f32; n];
                cpu::quant_matmul_interleaved(&p, &mut one, &c.x[r * k..(r + 1) * k], &wi).unwrap();
                for (col, (a, b)) in one.iter().zip(&batch[r * n..(r + 1) * n]).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{f} n {n} row {r} column {col}");
                }
                assert_eq!(
                    batch[r * n..(r + 1) * n]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    blocks[r * n..(r + 1) * n]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect::<Vec<_>>(),
                    "{f} n {n} row {r}: interleaved against blocks"
                );
            }
        }
    }
}

/// The kernel keeps a thread's quantized activation rows for its next GEMM: a sequence of GEMMs
/// of other shapes on one thread (more rows then fewer, longer rows then shorter, AMX's batches
/// without quads then the vector loop's with them, the layouts and formats mixed) gives every
/// GEMM the bits it gets on a fresh thread.
#[test]
fn a_gemm_gives_its_bits_after_gemms_of_other_shapes() {
    let calls: [(QuantFormat, usize, usize, usize, bool); 8] = [
        (QuantFormat::Q4_1, 8, 48, 19, true),
        (QuantFormat::Q4_1, 33, 48, 19, true),
        (QuantFormat::Q8_0, 3, 40, 32, false),
        (QuantFormat::Q4_0, 8, 48, 19, true),
        (QuantFormat::Q4_1, 1, 70, 7, true),
        (QuantFormat::Int8PerChannel, 5, 30, 9, false),
        (QuantFormat::Q8_0, 17, 32, 12, true),
        (QuantFormat::Q4_1, 8, 48, 19, true),
    ];
    let run = |&(f, m, n, blocks, interleaved): &(QuantFormat, usize, usize, usize, bool)| {
        let c = case(f, m, n, blocks, (m * n + blocks) as u64);
        let mut out = vec![0f32; m * n];
        if interleaved {
            let wi = ascend_kernels::interleaved::interleave(f, n, c.p.k, &c.w).unwrap();
            cpu::quant_matmul_interleaved(&c.p, &mut out, &c.x, &wi).unwrap();
        } else {
            cpu::quant_matmul(&c.p, &mut out, &c.x, &c.w).unwrap();
        }
        out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
    };
    let fresh: Vec<Vec<u32>> = calls
        .iter()
        .map(|call| std::thread::scope(|s| s.spawn(|| run(call)).join().unwrap()))
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| {
            for (i, call) in calls.iter().enumerate() {
                assert_eq!(run(call), fresh[i], "call {i}: {call:?}");
            }
        })
        .join()
        .unwrap()
    });
}

/// Llama-sized rows (k = 4096) in every format: the sums over 128 blocks stay within the bound.
#[test]
fn long_rows_stay_within_the_bound() {
    for f in QuantFormat::EVERY {
        check::<f32>(&case(f, 2, 24, 128, 9)).unwrap();
    }
}

#[test]
fn bad_input_is_an_error_that_names_it_and_writes_nothing() {
    let c = case(QuantFormat::Q4_1, 2, 3, 2, 1);
    let mut out = vec![7f32; 6];
    let e = cpu::quant_matmul(&c.p, &mut out, &c.x, &c.w[1..]).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { arg: "weight", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("120 bytes"), "{e}");
    let p = QuantMatmul { k: 48, ..c.p };
    let e = cpu::quant_matmul(&p, &mut out, &c.x[..96], &c.w).unwrap_err();
    assert!(
        e.to_string().contains("k = 48 is not whole Q4_1 blocks"),
        "{e}"
    );
    let mut x = c.x.clone();
    x[64 + 5] = f32::INFINITY;
    let e = cpu::quant_matmul(&c.p, &mut out, &x, &c.w).unwrap_err();
    assert!(
        e.to_string()
            .contains("x[1, 5] = inf cannot be quantized to int8"),
        "{e}"
    );
    let e = reference::quant_matmul(&c.p, &mut out, &x, &c.w).unwrap_err();
    assert!(e.to_string().contains("x[1, 5] = inf"), "{e}");
    // Zero and huge dimensions are refused by name before anything is read.
    let e = cpu::quant_matmul(&QuantMatmul { k: 0, ..c.p }, &mut out, &[], &[]).unwrap_err();
    assert!(e.to_string().contains("k must be positive"), "{e}");
    let huge = QuantMatmul {
        m: usize::MAX,
        ..c.p
    };
    let e = cpu::quant_matmul(&huge, &mut out, &c.x, &c.w).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { arg: "out", .. })
            && e.to_string().contains("more elements than usize counts"),
        "{e}"
    );
    let e = cpu::quant_matmul(
        &QuantMatmul {
            n: usize::MAX,
            ..c.p
        },
        &mut out,
        &c.x,
        &c.w,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("more elements than usize counts"),
        "{e}"
    );
    assert_eq!(out, vec![7f32; 6], "nothing written");
}

/// W8A8's bad input: a weight of the wrong size says what a row holds; a `k` whose int32 sums
/// could overflow is refused before anything is read.
#[test]
fn w8a8_bad_input_names_the_row_layout_and_the_k_limit() {
    let f = QuantFormat::Int8PerChannel;
    let c = case(f, 2, 3, 1, 2); // k = 34
    assert_eq!(c.p.k, 34);
    let mut out = vec![7f32; 6];
    let e = cpu::quant_matmul(&c.p, &mut out, &c.x, &c.w[1..]).unwrap_err();
    assert!(
        matches!(e, Error::ShapeMismatch { arg: "weight", .. })
            && e.to_string()
                .contains("114 bytes: 34 int8 values and an f32 scale per row"),
        "{e}"
    );
    let mut x = c.x.clone();
    x[34 + 3] = f32::NAN;
    let e = cpu::quant_matmul(&c.p, &mut out, &x, &c.w).unwrap_err();
    assert!(
        e.to_string()
            .contains("x[1, 3] = NaN cannot be quantized to int8"),
        "{e}"
    );
    // At the limit k runs; one past it is refused.
    let k = ascend_kernels::quant::INT8_MAX_K;
    let p = QuantMatmul {
        m: 1,
        n: 1,
        k,
        format: f,
    };
    let mut w = vec![1u8; k];
    w.extend(1f32.to_le_bytes());
    cpu::quant_matmul(&p, &mut out[..1], &vec![1f32; k], &w).unwrap();
    assert_eq!(out[0], k as f32, "127 · 1 per value, scaled by 1/127 and 1");
    out[0] = 7.0;
    let k = ascend_kernels::quant::INT8_MAX_K + 1;
    let p = QuantMatmul {
        m: 1,
        n: 1,
        k,
        format: f,
    };
    let e = cpu::quant_matmul(&p, &mut out[..1], &vec![0f32; k], &vec![0u8; k + 4]).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("k = {k} is past {} for W8A8 weights", k - 1)),
        "{e}"
    );
    assert_eq!(out, vec![7f32; 6], "nothing written");
}

/// W8A8 numbers as CANN defines them: a token's scale is `max|x| / 127` and its values round
/// half to even; each output is the exact integer sum times both scales.
#[test]
fn w8a8_quantizes_each_token_as_dynamic_quant_does() {
    let f = QuantFormat::Int8PerChannel;
    // max|x| = 127 · 0.5, so the scale is 0.5 and x / 0.5 = 2.5 rounds to 2 (ties to even).
    let mut x = vec![0f32; 32];
    x[0] = 63.5;
    x[1] = 1.25;
    x[2] = -1.75; // -3.5 rounds to -4
    let mut w = Vec::new();
    let mut row = vec![0f32; 32];
    row[0] = 1.0;
    row[1] = 127.0;
    row[2] = -127.0;
    quantize(f, &row, &mut w).unwrap(); // scale 1, values 1, 127, -127
    let p = QuantMatmul {
        m: 1,
        n: 1,
        k: 32,
        format: f,
    };
    let mut out = [0f32];
    cpu::quant_matmul(&p, &mut out, &x, &w).unwrap();
    // (127·1 + 2·127 + (-4)·(-127)) · 1 · 0.5
    assert_eq!(out[0], (127 + 2 * 127 + 4 * 127) as f32 * 0.5);
}

/// The bits of `m` rows times 48 columns of 19-block rows (`seed`) in every format, on GGUF's
/// blocks and, for the block formats, on the interleaved layout too.
fn every_format_bits(m: usize, seed: u64) -> Vec<u32> {
    let mut all = Vec::new();
    for f in QuantFormat::EVERY {
        let c = case(f, m, 48, 19, seed);
        let mut out = vec![0f32; m * 48];
        cpu::quant_matmul(&c.p, &mut out, &c.x, &c.w).unwrap();
        if f.is_blocks() {
            let wi = ascend_kernels::interleaved::interleave(f, 48, c.p.k, &c.w).unwrap();
            let mut il = vec![0f32; m * 48];
            cpu::quant_matmul_interleaved(&c.p, &mut il, &c.x, &wi).unwrap();
            out.extend(il);
        }
        all.extend(out.iter().map(|v| v.to_bits()));
    }
    all
}

/// Set in the child processes of `every_loop_the_cpu_can_be_told_to_run_gives_the_same_bits`.
const LOOP_CHILD: &str = "ASCEND_KERNELS_TEST_LOOP_CHILD";

/// The `ASCEND_KERNELS_NO_*` variables pick the int8 loop once per process, so each setting
/// runs in a child process of this test binary (`LOOP_CHILD` set), which prints the loop it
/// ran and a hash of its results' bits: batches of 8 and 33 rows (AMX where the CPU has it),
/// every format, on GGUF's blocks and on the interleaved layout. Every setting gives the same
/// bits, and the loop named is the one the CPU's features and the variables select: AVX-512
/// VNNI on 512 or 256-bit registers, AVX-VNNI (an AVX-512 server told to run as a client CPU
/// without AVX-512 does), AVX2.
#[test]
fn every_loop_the_cpu_can_be_told_to_run_gives_the_same_bits() {
    if std::env::var_os(LOOP_CHILD).is_some() {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        for m in [8, 33] {
            for bits in every_format_bits(m, 11) {
                for b in bits.to_le_bytes() {
                    hash = (hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
        println!(
            "child loop={} amx={} bits={hash:016x}",
            cpu::quant_matmul_loop().name(),
            cpu::amx_available()
        );
        return;
    }
    let run = |vars: &[&str]| -> (String, bool, String) {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "every_loop_the_cpu_can_be_told_to_run_gives_the_same_bits",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LOOP_CHILD, "1");
        for v in [
            "ASCEND_KERNELS_NO_AVX512",
            "ASCEND_KERNELS_NO_VNNI",
            "ASCEND_KERNELS_NO_ZMM",
            "ASCEND_KERNELS_NO_AMX",
        ] {
            cmd.env_remove(v);
        }
        for v in vars {
            cmd.env(v, "1");
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{vars:?}: the child failed: {stdout}");
        let line = stdout
            .lines()
            .find_map(|l| l.find("child ").map(|at| &l[at + "child ".len()..]))
            .unwrap_or_else(|| panic!("{vars:?}: no result line in {stdout}"));
        let field = |name: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name))
                .unwrap()
                .to_string()
        };
        (field("loop="), field("amx=") == "true", field("bits="))
    };
    // (Not compared with this process's `quant_matmul_loop`: the test beside this one limits
    // it for a while.)
    let (first_loop, _, bits) = run(&[]);
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma") && has!("f16c")) {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let avx512_vnni = has!("avx512vnni") && has!("avx512vl");
        let wide = avx512_vnni && has!("avx512f") && has!("avx512bw");
        let no_avx512 = if has!("avxvnni") { "avx-vnni" } else { "avx2" };
        let settings: [(&[&str], &str); 5] = [
            (&["ASCEND_KERNELS_NO_AMX"], first_loop.as_str()),
            (
                &["ASCEND_KERNELS_NO_ZMM"],
                if avx512_vnni {
                    "avx512-vnni"
                } else {
                    no_avx512
                },
            ),
            (&["ASCEND_KERNELS_NO_AVX512"], no_avx512),
            (&["ASCEND_KERNELS_NO_VNNI"], "avx2"),
            (
                &["ASCEND_KERNELS_NO_AVX512", "ASCEND_KERNELS_NO_VNNI"],
                "avx2",
            ),
        ];
        let expected_first = if wide {
            "avx512-vnni-512"
        } else if avx512_vnni {
            "avx512-vnni"
        } else {
            no_avx512
        };
        assert_eq!(first_loop, expected_first);
        for (vars, want) in settings {
            let (name, amx, got) = run(vars);
            assert_eq!(name, want, "{vars:?}: the loop");
            if vars.contains(&"ASCEND_KERNELS_NO_AMX") || vars.contains(&"ASCEND_KERNELS_NO_AVX512")
            {
                assert!(!amx, "{vars:?}: AMX must be off");
            }
            assert_eq!(
                got, bits,
                "{vars:?} ({name}): the bits differ from the default loop's"
            );
        }
    }
}

/// `cpu::limit_quant_matmul_loop` runs each x86 loop the CPU has in this process (the first
/// one available at or after the limit), and each gives the default loop's bits for every
/// format and both layouts. (Only the x86 loops: the portable one rounds differently, and the
/// tests running beside this one compare bits.)
#[test]
fn limiting_the_int8_loop_runs_each_x86_loop_with_the_same_bits() {
    use cpu::Int8Loop;
    let default = cpu::quant_matmul_loop();
    let want = every_format_bits(8, 21);
    let x86 = [
        Int8Loop::Vnni512,
        Int8Loop::Vnni,
        Int8Loop::AvxVnni,
        Int8Loop::Avx2,
    ];
    for first in x86.into_iter().filter(|l| l.available()) {
        cpu::limit_quant_matmul_loop(first);
        let ran = cpu::quant_matmul_loop();
        let got = every_format_bits(8, 21);
        cpu::limit_quant_matmul_loop(Int8Loop::Vnni512);
        assert_eq!(ran, first, "limited to {first:?}");
        assert!(got == want, "{first:?}: the bits differ from {default:?}'s");
    }
    assert_eq!(cpu::quant_matmul_loop(), default);
}
