//! The step ops around the model (embedding lookup, residual / bias add, argmax and top-k over
//! logits): the fast CPU kernels equal the reference exactly (they compute no sum but `a + b`,
//! which rounds the same once), on random shapes, with ties and NaNs in the logits; and bad
//! arguments are refused by name with nothing written.

use ascend_hal::Error;
use ascend_kernels::{cpu, reference, Add, Argmax, Embedding, KvFloat, TopK};
use half::{bf16, f16};
use proptest::prelude::*;

/// Values in [-1, 1), with repeats (every value drawn from 64 levels) so rows have ties.
fn levels<T: KvFloat>(n: usize, seed: u64) -> Vec<T> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            T::from_f32((x % 64) as f32 / 32.0 - 1.0)
        })
        .collect()
}

fn same<T: KvFloat + std::fmt::Debug>(what: &str, a: &[T], b: &[T]) -> Result<(), TestCaseError> {
    let bits = |v: &[T]| v.iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
    prop_assert_eq!(bits(a), bits(b), "{}", what);
    Ok(())
}

fn case<T: KvFloat + std::fmt::Debug>(
    rows: usize,
    cols: usize,
    k: usize,
    vocab: usize,
    nans: bool,
    seed: u64,
) -> Result<(), TestCaseError> {
    let zero = T::from_f32(0.0);
    // Embedding.
    let e = Embedding {
        num_tokens: rows,
        vocab,
        hidden: cols,
    };
    let table = levels::<T>(vocab * cols, seed);
    let ids: Vec<i32> = (0..rows)
        .map(|i| ((i as u64 * 31).wrapping_add(seed) % vocab as u64) as i32)
        .collect();
    let (mut fast, mut slow) = (vec![zero; rows * cols], vec![zero; rows * cols]);
    cpu::embedding(&e, &mut fast, &table, &ids).unwrap();
    reference::embedding(&e, &mut slow, &table, &ids).unwrap();
    same("embedding", &fast, &slow)?;
    // Add, both ways.
    for broadcast in [false, true] {
        let p = Add {
            rows,
            cols,
            broadcast,
        };
        let a = levels::<T>(rows * cols, seed.wrapping_add(1));
        let b = levels::<T>(
            if broadcast { cols } else { rows * cols },
            seed.wrapping_add(2),
        );
        let (mut fast, mut slow) = (vec![zero; rows * cols], vec![zero; rows * cols]);
        cpu::add(&p, &mut fast, &a, &b).unwrap();
        reference::add(&p, &mut slow, &a, &b).unwrap();
        same("add", &fast, &slow)?;
    }
    // Argmax and top-k over logits with ties (and NaNs, ranked largest).
    let mut logits = levels::<T>(rows * cols, seed.wrapping_add(3));
    if nans && !logits.is_empty() {
        let at = (seed as usize).wrapping_mul(13) % logits.len();
        logits[at] = T::from_f32(f32::NAN);
    }
    let p = Argmax { rows, cols };
    let (mut fast, mut slow) = (vec![0i32; rows], vec![0i32; rows]);
    cpu::argmax(&p, &mut fast, &logits).unwrap();
    reference::argmax(&p, &mut slow, &logits).unwrap();
    prop_assert_eq!(&fast, &slow, "argmax");
    let p = TopK { rows, cols, k };
    let (mut fv, mut fi) = (vec![zero; rows * k], vec![0i64; rows * k]);
    let (mut sv, mut si) = (vec![zero; rows * k], vec![0i64; rows * k]);
    cpu::top_k(&p, &mut fv, &mut fi, &logits).unwrap();
    reference::top_k(&p, &mut sv, &mut si, &logits).unwrap();
    prop_assert_eq!(&fi, &si, "top_k indices");
    same("top_k values", &fv, &sv)?;
    // The first of the top k is the argmax.
    if k > 0 {
        for r in 0..rows {
            prop_assert_eq!(fi[r * k] as i32, fast[r], "row {}", r);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn fast_step_ops_equal_the_reference(
        rows in 0usize..6,
        cols in 1usize..300,
        k_frac in 0.0f64..1.0,
        vocab in 1usize..40,
        nans in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let k = ((cols as f64 * k_frac) as usize).min(cols);
        case::<f32>(rows, cols, k, vocab, nans, seed)?;
        case::<f16>(rows, cols, k, vocab, nans, seed)?;
        case::<bf16>(rows, cols, k, vocab, nans, seed)?;
    }
}

#[test]
fn argmax_and_top_k_follow_torch_on_ties_and_nan() {
    let x = [1.0f32, 3.0, 3.0, -1.0, 2.0];
    let mut out = [0i32];
    cpu::argmax(&Argmax { rows: 1, cols: 5 }, &mut out, &x).unwrap();
    assert_eq!(out, [1], "the first of equal maxima");
    let (mut v, mut i) = ([0f32; 3], [0i64; 3]);
    cpu::top_k(
        &TopK {
            rows: 1,
            cols: 5,
            k: 3,
        },
        &mut v,
        &mut i,
        &x,
    )
    .unwrap();
    assert_eq!((v, i), ([3.0, 3.0, 2.0], [1, 2, 4]));
    let y = [1.0f32, f32::NAN, 5.0];
    cpu::argmax(&Argmax { rows: 1, cols: 3 }, &mut out, &y).unwrap();
    assert_eq!(out, [1], "a NaN is the largest, so corrupt logits show");
}

fn refused(r: ascend_hal::Result<()>) -> String {
    match r {
        Err(e @ (Error::ShapeMismatch { .. } | Error::InvalidArgument { .. })) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn bad_arguments_are_refused_by_name_and_write_nothing() {
    let e = Embedding {
        num_tokens: 2,
        vocab: 4,
        hidden: 3,
    };
    let table = [1f32; 12];
    let mut out = [7f32; 6];
    let m = refused(cpu::embedding(&e, &mut out, &table, &[1, 4]));
    assert!(
        m.contains("ids[1] = 4 is outside the table's 4 rows"),
        "{m}"
    );
    let m = refused(cpu::embedding(&e, &mut out, &table, &[-1, 0]));
    assert!(m.contains("ids[0] = -1"), "{m}");
    assert_eq!(out, [7f32; 6], "nothing written");
    let m = refused(cpu::embedding(&e, &mut out, &table[..9], &[0, 1]));
    assert!(
        m.contains("table") && m.contains("[vocab=4, hidden=3]"),
        "{m}"
    );

    let a = [1f32; 6];
    let m = refused(cpu::add(
        &Add {
            rows: 2,
            cols: 3,
            broadcast: true,
        },
        &mut [0f32; 6],
        &a,
        &a,
    ));
    assert!(m.contains("`b`") || m.contains(" b "), "{m}");
    assert!(m.contains("[cols=3]"), "{m}");

    let m = refused(cpu::top_k(
        &TopK {
            rows: 1,
            cols: 3,
            k: 4,
        },
        &mut [0f32; 4],
        &mut [0i64; 4],
        &[1f32; 3],
    ));
    assert!(m.contains("k 4 is more than the 3 values of a row"), "{m}");
    let m = refused(cpu::argmax::<f32>(
        &Argmax { rows: 1, cols: 0 },
        &mut [0],
        &[],
    ));
    assert!(m.contains("cols must be positive"), "{m}");
}
