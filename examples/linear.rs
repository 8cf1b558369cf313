//! A model's weight matrices on the device ([`Linear`]): values in the activation dtype, or
//! quantized blocks in the backend's layout; what one GEMM reads of them ([`WeightView`]); and a
//! layer's query, key and value projections held in one buffer ([`Qkv`]), so that a one-token
//! step runs the three as one GEMM.

use std::ops::Range;

use ascend_hal::prelude::*;
use ascend_hal::{Error, Result};
use ascend_kernels::{In, KernelOps, KvFloat, Matmul, Out, QuantFormat, QuantMatmul};

use crate::model::Matrix;

/// A weight matrix on the device: values in the activation dtype, or blocks.
pub(crate) enum Linear<B: Backend, T: KvFloat> {
    Dense(DeviceBuffer<B, T>),
    Blocks {
        format: QuantFormat,
        bytes: DeviceBuffer<B, u8>,
    },
}

/// What one GEMM reads of a weight: a view of its values or of its packed blocks.
pub(crate) enum WeightView<'a, B: Backend, T: KvFloat> {
    Dense(In<'a, B, T>),
    Blocks {
        format: QuantFormat,
        bytes: In<'a, B, u8>,
    },
}

impl<B: KernelOps, T: KvFloat> WeightView<'_, B, T> {
    /// `out[m, n] = x[m, k] · selfᵀ`.
    fn forward(
        self,
        stream: &B::Stream,
        (m, n, k): (usize, usize, usize),
        out: Out<'_, B, T>,
        x: In<'_, B, T>,
    ) -> Result<()> {
        match self {
            WeightView::Dense(w) => B::matmul::<T>(stream, &Matmul { m, n, k }, out, x, w),
            WeightView::Blocks { format, bytes } => {
                B::quant_matmul::<T>(stream, &QuantMatmul { m, n, k, format }, out, x, bytes)
            }
        }
    }
}

impl<B: KernelOps, T: KvFloat> Linear<B, T> {
    /// Whether the backend's `quant_matmul` runs `format` with `T` activations; the error names
    /// the weight (`name`), its type and the providers that can.
    pub(crate) fn runnable(name: &str, format: QuantFormat) -> Result<()> {
        B::quant_matmul_supported::<T>(format).map_err(|why| Error::InvalidArgument {
            op: "Model::from_weights",
            message: format!(
                "{name} is {format} with {} activations, which this backend cannot run: {why}. \
                 The CPU backend's quant_matmul runs Q4_0, Q4_1, Q8_0 and W8A8 with \
                 f32/f16/bf16 activations; or load the weights dequantized",
                T::DTYPE,
            ),
        })
    }

    /// Uploads `m` (called `name` in errors), `[n, k]`: values as `T`, blocks in the backend's
    /// layout ([`KernelOps::pack_quant_weight`]) after asking the backend whether
    /// `quant_matmul` runs their format.
    pub(crate) fn upload(
        alloc: &(impl Allocator<B> + ?Sized),
        stream: &B::Stream,
        name: &str,
        m: &Matrix,
        (n, k): (usize, usize),
    ) -> Result<Self> {
        match m {
            Matrix::F32(v) => {
                let data: Vec<T> = v.iter().map(|&v| T::from_f32(v)).collect();
                Ok(Linear::Dense(DeviceBuffer::from_slice_in(
                    alloc, stream, &data,
                )?))
            }
            Matrix::Blocks { format, bytes } => {
                Self::runnable(name, *format)?;
                let packed = Self::pack(name, *format, (n, k), bytes)?;
                Ok(Linear::Blocks {
                    format: *format,
                    bytes: DeviceBuffer::from_slice_in(alloc, stream, &packed)?,
                })
            }
        }
    }

    /// `blocks` (`[n, k]` of `format`, called `name` in errors) in the backend's layout.
    fn pack<'a>(
        name: &str,
        format: QuantFormat,
        (n, k): (usize, usize),
        blocks: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>> {
        B::pack_quant_weight::<T>(format, n, k, blocks).map_err(|e| Error::InvalidArgument {
            op: "Model::from_weights",
            message: format!("{name}: {e}"),
        })
    }

    /// Bytes on the device.
    pub(crate) fn byte_len(&self) -> usize {
        match self {
            Linear::Dense(w) => w.len() * std::mem::size_of::<T>(),
            Linear::Blocks { bytes, .. } => bytes.len(),
        }
    }

    /// The whole weight, for one GEMM.
    fn view(&self) -> WeightView<'_, B, T> {
        match self {
            Linear::Dense(w) => WeightView::Dense(w.view()),
            Linear::Blocks { format, bytes } => WeightView::Blocks {
                format: *format,
                bytes: bytes.view(),
            },
        }
    }

    /// Elements (of values) or bytes (of blocks) `range`: a weight packed on its own inside
    /// this one.
    fn part(&self, range: Range<usize>) -> Result<WeightView<'_, B, T>> {
        Ok(match self {
            Linear::Dense(w) => WeightView::Dense(w.slice(range)?),
            Linear::Blocks { format, bytes } => WeightView::Blocks {
                format: *format,
                bytes: bytes.slice(range)?,
            },
        })
    }

    /// `out[m, n] = x[m, k] · selfᵀ`.
    pub(crate) fn forward(
        &self,
        stream: &B::Stream,
        m_n_k: (usize, usize, usize),
        out: Out<'_, B, T>,
        x: In<'_, B, T>,
    ) -> Result<()> {
        self.view().forward(stream, m_n_k, out, x)
    }
}

/// A layer's query, key and value projections (`[q, hidden]`, `[kv, hidden]`, `[kv, hidden]`).
pub(crate) struct Qkv<B: Backend, T: KvFloat> {
    weights: QkvWeights<B, T>,
    /// Output features of q, k and v.
    rows: [usize; 3],
    /// Input features.
    cols: usize,
}

enum QkvWeights<B: Backend, T: KvFloat> {
    /// One buffer: q's rows, then k's, then v's, each packed for the backend on its own, so its
    /// `parts` (elements of values, or bytes of blocks) are three weights. `fused` when the
    /// buffer is also the backend's packing of the three stacked (`[q + 2 kv, hidden]`), as
    /// for row-major values and the CPU backend's interleaved blocks: a one-token step then
    /// runs one GEMM, whose output row is q's, k's and v's side by side. (On the 2-core CPU
    /// backend one 960-row GEMM took 9.7 us and SmolLM2's three 17.5.)
    Joined {
        weight: Linear<B, T>,
        parts: [Range<usize>; 3],
        fused: bool,
    },
    /// Stored in different types (a GGUF may quantize v more finely than q and k): three.
    Separate([Linear<B, T>; 3]),
}

impl<B: KernelOps, T: KvFloat> Qkv<B, T> {
    /// Uploads layer `layer`'s `wq`, `wk` and `wv` (`rows[i]` x `cols` each), joined when they
    /// are stored alike.
    pub(crate) fn upload(
        alloc: &(impl Allocator<B> + ?Sized),
        stream: &B::Stream,
        layer: usize,
        [wq, wk, wv]: [&Matrix; 3],
        rows: [usize; 3],
        cols: usize,
    ) -> Result<Self> {
        let names = ["wq", "wk", "wv"].map(|w| format!("layer {layer} {w}"));
        let ranges = |lens: [usize; 3]| {
            let (a, b) = (lens[0], lens[0] + lens[1]);
            [0..a, a..b, b..b + lens[2]]
        };
        let weights = match [wq, wk, wv] {
            [Matrix::F32(q), Matrix::F32(k), Matrix::F32(v)] => {
                // Row-major: the three stacked are the three side by side.
                let values: Vec<T> = q
                    .iter()
                    .chain(k)
                    .chain(v)
                    .map(|&x| T::from_f32(x))
                    .collect();
                QkvWeights::Joined {
                    weight: Linear::Dense(DeviceBuffer::from_slice_in(alloc, stream, &values)?),
                    parts: ranges([q.len(), k.len(), v.len()]),
                    fused: true,
                }
            }
            [Matrix::Blocks {
                format: f,
                bytes: q,
            }, Matrix::Blocks {
                format: fk,
                bytes: k,
            }, Matrix::Blocks {
                format: fv,
                bytes: v,
            }] if f == fk && f == fv => {
                for name in &names {
                    Linear::<B, T>::runnable(name, *f)?;
                }
                let packed = [
                    Linear::<B, T>::pack(&names[0], *f, (rows[0], cols), q)?,
                    Linear::<B, T>::pack(&names[1], *f, (rows[1], cols), k)?,
                    Linear::<B, T>::pack(&names[2], *f, (rows[2], cols), v)?,
                ];
                let parts = ranges([packed[0].len(), packed[1].len(), packed[2].len()]);
                let joined = packed.concat();
                let stacked = [&q[..], k, v].concat();
                let fused = Linear::<B, T>::pack("", *f, (rows.iter().sum(), cols), &stacked)
                    .is_ok_and(|all| *all == joined[..]);
                QkvWeights::Joined {
                    weight: Linear::Blocks {
                        format: *f,
                        bytes: DeviceBuffer::from_slice_in(alloc, stream, &joined)?,
                    },
                    parts,
                    fused,
                }
            }
            _ => QkvWeights::Separate([
                Linear::upload(alloc, stream, &names[0], wq, (rows[0], cols))?,
                Linear::upload(alloc, stream, &names[1], wk, (rows[1], cols))?,
                Linear::upload(alloc, stream, &names[2], wv, (rows[2], cols))?,
            ]),
        };
        Ok(Qkv {
            weights,
            rows,
            cols,
        })
    }

    /// Bytes on the device.
    pub(crate) fn byte_len(&self) -> usize {
        match &self.weights {
            QkvWeights::Joined { weight, .. } => weight.byte_len(),
            QkvWeights::Separate(w) => w.iter().map(Linear::byte_len).sum(),
        }
    }

    /// Whether a one-token step runs the three projections as one GEMM.
    #[cfg(test)]
    fn fused(&self) -> bool {
        matches!(self.weights, QkvWeights::Joined { fused: true, .. })
    }

    /// Writes q, k and v of the `t` rows of `x` (`[t, cols]`) to `out`: `[t, q]`, then
    /// `[t, kv]`, then `[t, kv]` (at one token, the row `[q | k | v]` one fused GEMM writes).
    pub(crate) fn forward(
        &self,
        stream: &B::Stream,
        t: usize,
        out: Out<'_, B, T>,
        x: In<'_, B, T>,
    ) -> Result<()> {
        let [q, kv, _] = self.rows;
        if let (
            1,
            QkvWeights::Joined {
                weight,
                fused: true,
                ..
            },
        ) = (t, &self.weights)
        {
            return weight.forward(stream, (1, self.rows.iter().sum(), self.cols), out, x);
        }
        let (out_q, rest) = out.split_at(t * q)?;
        let (out_k, out_v) = rest.split_at(t * kv)?;
        for (i, out) in [out_q, out_k, out_v].into_iter().enumerate() {
            let w = match &self.weights {
                QkvWeights::Joined { weight, parts, .. } => weight.part(parts[i].clone())?,
                QkvWeights::Separate(w) => w[i].view(),
            };
            w.forward(stream, (t, self.rows[i], self.cols), out, x)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ascend_kernels::quant::quantize;
    use hal_mock::CpuBackend;

    const ROWS: [usize; 3] = [96, 32, 32];
    const COLS: usize = 96;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    fn stored(v: &[f32], format: Option<QuantFormat>) -> Matrix {
        match format {
            None => Matrix::F32(v.to_vec()),
            Some(format) => {
                let mut bytes = Vec::new();
                quantize(format, v, &mut bytes).unwrap();
                Matrix::Blocks { format, bytes }
            }
        }
    }

    /// q, k and v of `t` tokens through `Qkv`, and through three weights of their own, give the
    /// same bits: at one token through one fused GEMM when every part is stored alike, at
    /// several through the parts of the joined buffer, and through three weights when they
    /// are stored in different types.
    #[test]
    fn qkv_gives_the_bits_of_three_separate_projections() {
        let device = CpuBackend::new().device(0).unwrap();
        let stream = device.new_stream().unwrap();
        let alloc = ascend_hal::alloc::DirectAllocator::new(&device);
        let f = |q| Some(q);
        let cases = [
            [None, None, None],
            [f(QuantFormat::Q4_0); 3],
            [f(QuantFormat::Q4_1); 3],
            [f(QuantFormat::Q8_0); 3],
            [
                f(QuantFormat::Q4_1),
                f(QuantFormat::Q4_1),
                f(QuantFormat::Q8_0),
            ],
            [f(QuantFormat::Q8_0), None, f(QuantFormat::Q8_0)],
        ];
        for formats in cases {
            let m: Vec<Matrix> = (0..3)
                .map(|i| stored(&values(ROWS[i] * COLS, i as u32 + 1), formats[i]))
                .collect();
            let qkv = Qkv::<CpuBackend, f32>::upload(
                &alloc,
                &stream,
                0,
                [&m[0], &m[1], &m[2]],
                ROWS,
                COLS,
            )
            .unwrap();
            let alike = formats.iter().all(|&x| x == formats[0]);
            assert_eq!(qkv.fused(), alike, "{formats:?}");
            let own: Vec<Linear<CpuBackend, f32>> = (0..3)
                .map(|i| Linear::upload(&alloc, &stream, "w", &m[i], (ROWS[i], COLS)).unwrap())
                .collect();
            for t in [1, 3] {
                let x = DeviceBuffer::from_slice(&stream, &values(t * COLS, 9)).unwrap();
                let mut out = DeviceBuffer::<CpuBackend, f32>::zeros(&stream, t * 160).unwrap();
                qkv.forward(&stream, t, out.view_mut(), x.view()).unwrap();
                let mut expected = Vec::new();
                for (i, w) in own.iter().enumerate() {
                    let mut o =
                        DeviceBuffer::<CpuBackend, f32>::zeros(&stream, t * ROWS[i]).unwrap();
                    w.forward(&stream, (t, ROWS[i], COLS), o.view_mut(), x.view())
                        .unwrap();
                    expected.extend(stream.clone_to_host(&o).unwrap());
                }
                let got = stream.clone_to_host(&out).unwrap();
                assert!(expected.iter().any(|&v| v != 0.0));
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    expected.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{formats:?}, {t} tokens"
                );
                // An output of the wrong length is an error of the GEMM, not a partial write.
                let mut short =
                    DeviceBuffer::<CpuBackend, f32>::zeros(&stream, t * 160 - 1).unwrap();
                assert!(qkv.forward(&stream, t, short.view_mut(), x.view()).is_err());
            }
        }
    }
}
