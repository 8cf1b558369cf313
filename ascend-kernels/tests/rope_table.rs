//! The RoPE table builder against the formulas of Hugging Face transformers (evaluated in
//! `f64` here), and its refusals.

use ascend_hal::Error;
use ascend_kernels::{RopeScaling, RopeTable};

fn plain_inv_freq(d: usize, base: f64) -> Vec<f64> {
    (0..d / 2)
        .map(|f| 1.0 / base.powf((2 * f) as f64 / d as f64))
        .collect()
}

#[test]
fn plain_table_is_cos_then_sin_of_position_times_frequency() {
    let t = RopeTable::new(64, 300, 10_000.0);
    let table = t.build().unwrap();
    assert_eq!(table.len(), 300 * 64);
    let inv = plain_inv_freq(64, 10_000.0);
    for pos in [0usize, 1, 17, 299] {
        for f in [0usize, 1, 15, 31] {
            let angle = pos as f64 * inv[f];
            let (c, s) = (table[pos * 64 + f] as f64, table[pos * 64 + 32 + f] as f64);
            // f32 frequencies and products: about 1e-7 relative on the angle, times the angle.
            let tol = 1e-6 * (1.0 + angle);
            assert!((c - angle.cos()).abs() < tol, "cos at {pos}, {f}");
            assert!((s - angle.sin()).abs() < tol, "sin at {pos}, {f}");
        }
    }
}

#[test]
fn linear_scaling_divides_every_frequency() {
    let plain = RopeTable::new(32, 8, 10_000.0).inv_freq().unwrap();
    let scaled = RopeTable {
        scaling: Some(RopeScaling::Linear { factor: 4.0 }),
        ..RopeTable::new(32, 8, 10_000.0)
    }
    .inv_freq()
    .unwrap();
    for (p, s) in plain.iter().zip(&scaled) {
        assert_eq!(*s, p / 4.0);
    }
}

#[test]
fn llama3_scaling_keeps_high_frequencies_and_divides_low_ones() {
    // Llama 3.1 8B's rope_scaling.
    let (factor, low, high, old) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    let t = RopeTable {
        scaling: Some(RopeScaling::Llama3 {
            factor: factor as f32,
            low_freq_factor: low as f32,
            high_freq_factor: high as f32,
            original_max_position: old as usize,
        }),
        ..RopeTable::new(128, 4, 500_000.0)
    };
    let got = t.inv_freq().unwrap();
    let (mut kept, mut divided, mut smoothed) = (0, 0, 0);
    for (g, inv) in got.iter().zip(plain_inv_freq(128, 500_000.0)) {
        let wavelen = 2.0 * std::f64::consts::PI / inv;
        let want = if wavelen < old / high {
            kept += 1;
            inv
        } else if wavelen > old / low {
            divided += 1;
            inv / factor
        } else {
            smoothed += 1;
            let s = (old / wavelen - low) / (high - low);
            (1.0 - s) * inv / factor + s * inv
        };
        assert!(((*g as f64) - want).abs() <= 2e-6 * want, "{g} vs {want}");
    }
    assert!(
        kept > 0 && divided > 0 && smoothed > 0,
        "all three bands: {kept} {divided} {smoothed}"
    );
}

fn refusal(t: RopeTable) -> String {
    match t.build() {
        Err(Error::InvalidArgument { op, message }) => {
            assert_eq!(op, "RopeTable");
            message
        }
        other => panic!("expected a refusal, got {:?}", other.map(|v| v.len())),
    }
}

#[test]
fn bad_parameters_are_refused_by_name() {
    assert!(refusal(RopeTable::new(63, 8, 10_000.0)).contains("rotary_dim 63"));
    assert!(refusal(RopeTable::new(0, 8, 10_000.0)).contains("rotary_dim 0"));
    assert!(refusal(RopeTable::new(64, 0, 10_000.0)).contains("max_position"));
    assert!(refusal(RopeTable::new(64, 8, 1.0)).contains("base"));
    assert!(refusal(RopeTable::new(64, 8, f64::NAN)).contains("base"));
    assert!(refusal(RopeTable::new(128, 1 << 30, 10_000.0)).contains("lower max_position"));
    let bad_factor = RopeTable {
        scaling: Some(RopeScaling::Linear { factor: 0.0 }),
        ..RopeTable::new(64, 8, 10_000.0)
    };
    assert!(refusal(bad_factor).contains("factor 0"));
    let inverted = RopeTable {
        scaling: Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 4.0,
            high_freq_factor: 1.0,
            original_max_position: 8192,
        }),
        ..RopeTable::new(64, 8, 10_000.0)
    };
    assert!(refusal(inverted).contains("high_freq_factor"));
}
