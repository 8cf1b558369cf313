//! The cos/sin table [`rotary_embedding`](crate::KernelOps::rotary_embedding) reads, built the
//! way Hugging Face transformers builds it, so that a model's positions rotate exactly as in
//! the reference implementation.
//!
//! Layout: `[max_position, rotary_dim]` `f32`, row `p` holding `cos(p·θ_f)` for the
//! `rotary_dim / 2` frequencies `f`, then `sin(p·θ_f)`. The same table serves both pairings
//! ([`RopeStyle`](crate::RopeStyle)): the kernel pairs elements, the table only has angles.
//!
//! Frequencies are `θ_f = 1 / base^(2f / rotary_dim)` computed in `f32` (as `torch` does), then
//! rescaled by [`RopeScaling`] when a model asks for it (`rope_scaling` in its config).
//!
//! ```
//! use ascend_kernels::{RopeScaling, RopeTable};
//! let table = RopeTable::new(64, 2048, 10_000.0).build()?;
//! assert_eq!(table.len(), 2048 * 64);
//! assert_eq!(table[0], 1.0); // cos(0)
//! let llama3 = RopeTable {
//!     scaling: Some(RopeScaling::Llama3 {
//!         factor: 8.0,
//!         low_freq_factor: 1.0,
//!         high_freq_factor: 4.0,
//!         original_max_position: 8192,
//!     }),
//!     ..RopeTable::new(128, 16, 500_000.0)
//! };
//! assert_eq!(llama3.build()?.len(), 16 * 128);
//! # Ok::<(), ascend_hal::Error>(())
//! ```

use ascend_hal::{Error, Result};

/// How a model rescales its RoPE frequencies for longer contexts (`rope_scaling` in a Hugging
/// Face config).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// `"type": "linear"`: every frequency divided by `factor` (positions interpolated).
    Linear {
        /// The scaling factor (> 0).
        factor: f32,
    },
    /// `"rope_type": "llama3"` (Llama 3.1 and later): low frequencies divided by `factor`,
    /// high ones kept, the band between interpolated smoothly.
    Llama3 {
        /// Divides the low frequencies (> 0).
        factor: f32,
        /// Wavelengths above `original_max_position / low_freq_factor` are scaled.
        low_freq_factor: f32,
        /// Wavelengths below `original_max_position / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The context length the model was trained at.
        original_max_position: usize,
    },
}

/// What a RoPE cos/sin table is built from. [`build`](Self::build) makes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeTable {
    /// Elements of each head that rotate (even; usually the head size).
    pub rotary_dim: usize,
    /// Rows: positions `0..max_position`.
    pub max_position: usize,
    /// The frequency base (`rope_theta`).
    pub base: f64,
    /// Frequency rescaling, if the model has one.
    pub scaling: Option<RopeScaling>,
}

/// Most elements a table may have: a table is uploaded whole, and the kernels index it with
/// 32-bit offsets on the NPU.
const MAX_ELEMENTS: usize = 1 << 31;

impl RopeTable {
    /// A table without rescaling.
    pub fn new(rotary_dim: usize, max_position: usize, base: f64) -> Self {
        RopeTable {
            rotary_dim,
            max_position,
            base,
            scaling: None,
        }
    }

    fn invalid(message: String) -> Error {
        Error::InvalidArgument {
            op: "RopeTable",
            message,
        }
    }

    /// Checks the parameters (what [`build`](Self::build) refuses).
    pub fn validate(&self) -> Result<()> {
        if self.rotary_dim == 0 || !self.rotary_dim.is_multiple_of(2) {
            return Err(Self::invalid(format!(
                "rotary_dim {} must be even and positive",
                self.rotary_dim
            )));
        }
        if self.max_position == 0 {
            return Err(Self::invalid("max_position is 0".into()));
        }
        if self
            .rotary_dim
            .checked_mul(self.max_position)
            .is_none_or(|n| n > MAX_ELEMENTS)
        {
            return Err(Self::invalid(format!(
                "{} positions x {} elements is more than the {MAX_ELEMENTS} elements a table may \
                 hold; lower max_position",
                self.max_position, self.rotary_dim
            )));
        }
        if !(self.base.is_finite() && self.base > 1.0) {
            return Err(Self::invalid(format!(
                "base (rope_theta) {} must be a finite number above 1",
                self.base
            )));
        }
        let positive = |what: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Self::invalid(format!("{what} {v} must be positive")))
            }
        };
        match self.scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => positive("the linear scaling factor", factor)?,
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            }) => {
                positive("the llama3 factor", factor)?;
                positive("low_freq_factor", low_freq_factor)?;
                positive("high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(Self::invalid(format!(
                        "high_freq_factor {high_freq_factor} must be above low_freq_factor \
                         {low_freq_factor}"
                    )));
                }
                if original_max_position == 0 {
                    return Err(Self::invalid("original_max_position is 0".into()));
                }
            }
        }
        Ok(())
    }

    /// The `rotary_dim / 2` inverse frequencies, rescaled.
    pub fn inv_freq(&self) -> Result<Vec<f32>> {
        self.validate()?;
        let d = self.rotary_dim;
        let base = self.base as f32;
        let plain = (0..d / 2).map(|f| 1.0 / base.powf((2 * f) as f32 / d as f32));
        Ok(match self.scaling {
            None => plain.collect(),
            Some(RopeScaling::Linear { factor }) => plain.map(|v| v / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            }) => {
                // transformers' `_compute_llama3_parameters`, in f32.
                let old = original_max_position as f32;
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                plain
                    .map(|inv| {
                        let wavelen = 2.0 * std::f32::consts::PI / inv;
                        if wavelen < high_wavelen {
                            inv
                        } else if wavelen > low_wavelen {
                            inv / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * inv / factor + smooth * inv
                        }
                    })
                    .collect()
            }
        })
    }

    /// The table, `[max_position, rotary_dim]` (see the module docs).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the parameter: an odd or zero `rotary_dim`, no
    /// positions, a table past 2^31 elements, a base that is not a finite number above 1, a
    /// scaling factor that is not positive.
    pub fn build(&self) -> Result<Vec<f32>> {
        let inv_freq = self.inv_freq()?;
        let (d, half) = (self.rotary_dim, self.rotary_dim / 2);
        let mut table = vec![0f32; self.max_position * d];
        for (pos, row) in table.chunks_exact_mut(d).enumerate() {
            for (f, inv) in inv_freq.iter().enumerate() {
                // `pos * inv` in f32, as `torch.outer(t, inv_freq)` computes it.
                let angle = pos as f32 * inv;
                row[f] = angle.cos();
                row[half + f] = angle.sin();
            }
        }
        Ok(table)
    }
}
