//! Choosing the next token from a row of logits: greedy, or seeded temperature / top-p
//! (nucleus) sampling, reproducible for a given seed whatever else shares the batch.

use std::fmt;

/// How a request picks its tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// `0` is greedy (the largest logit; the first of equal ones); above it, logits are divided
    /// by the temperature before the softmax.
    pub temperature: f32,
    /// Sample from the smallest set of most likely tokens whose probabilities reach `top_p`
    /// (`1` keeps every token). Ignored when greedy.
    pub top_p: f32,
    /// Seed of the request's random stream.
    pub seed: u64,
}

impl Default for SamplingParams {
    /// Greedy.
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl fmt::Display for SamplingParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_greedy() {
            f.write_str("greedy")
        } else {
            write!(
                f,
                "temperature {}, top-p {}, seed {}",
                self.temperature, self.top_p, self.seed
            )
        }
    }
}

impl SamplingParams {
    /// Seeded sampling at `temperature` over the `top_p` nucleus.
    pub fn sampled(temperature: f32, top_p: f32, seed: u64) -> Self {
        SamplingParams {
            temperature,
            top_p,
            seed,
        }
    }

    /// Whether this picks the largest logit.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Checks the values, saying which is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature {} must be a finite number >= 0 (0 is greedy)",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        Ok(())
    }
}

/// A request's sampler: its parameters and its random stream (SplitMix64).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    state: u64,
    order: Vec<u32>,
    probs: Vec<f64>,
}

/// The first of the largest values (NaN never wins; 0 if every value is NaN).
pub fn argmax(row: &[f32]) -> u32 {
    // Two passes the compiler vectorises: the largest value in 16 lanes (NaN fails every
    // comparison, so it never wins), then the first chunk holding it. A one-pass loop's running
    // index does not vectorise: 60 us for a 49152-token vocabulary against 10 (a batch-8 decode
    // step samples 8 such rows).
    const LANES: usize = 16;
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let first = |c: &[f32]| c.iter().fold(false, |seen, &x| seen | (x == max));
    row.chunks(LANES)
        .position(first)
        .and_then(|i| {
            let at = row[i * LANES..].iter().position(|&x| x == max)?;
            Some(i * LANES + at)
        })
        .unwrap_or(0) as u32
}

impl Sampler {
    /// A sampler with its stream at the start of `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            params,
            state: params.seed,
            order: Vec::new(),
            probs: Vec::new(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// A uniform draw in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next token from `logits` (one row over the vocabulary; not empty).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() || logits.len() <= 1 {
            return argmax(logits);
        }
        let t = self.params.temperature as f64;
        let max = logits[argmax(logits) as usize] as f64;
        if !max.is_finite() {
            return argmax(logits);
        }
        // Softmax in f64, then the most likely first.
        self.probs.clear();
        self.probs.extend(logits.iter().map(|&x| {
            let p = ((x as f64 - max) / t).exp();
            if p.is_nan() {
                0.0
            } else {
                p
            }
        }));
        let total: f64 = self.probs.iter().sum();
        self.order.clear();
        self.order.extend(0..logits.len() as u32);
        let probs = &self.probs;
        self.order.sort_unstable_by(|&a, &b| {
            probs[b as usize]
                .total_cmp(&probs[a as usize])
                .then(a.cmp(&b))
        });
        // The nucleus: the fewest tokens whose mass reaches top_p (always at least one).
        let want = self.params.top_p as f64 * total;
        let mut kept = 0;
        let mut mass = 0.0;
        for &i in &self.order {
            mass += self.probs[i as usize];
            kept += 1;
            if mass >= want {
                break;
            }
        }
        let mut u = self.uniform() * mass;
        for &i in &self.order[..kept] {
            u -= self.probs[i as usize];
            if u < 0.0 {
                return i;
            }
        }
        self.order[kept - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest_logit() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(s.sample(&[f32::NAN, 1.0, 0.0]), 1);
    }

    /// The argmax as one loop defines it: the first index whose value is larger than every
    /// value before it, a NaN at the best index giving way to any number.
    fn one_pass_argmax(row: &[f32]) -> u32 {
        let mut best = 0;
        for (j, &x) in row.iter().enumerate() {
            if x > row[best] || row[best].is_nan() && !x.is_nan() {
                best = j;
            }
        }
        best as u32
    }

    proptest::proptest! {
        /// The vectorised argmax is the one-pass loop's, on rows of every length around the
        /// lane count made of ties, NaN, infinities and both zeros.
        #[test]
        fn argmax_is_the_first_largest_value(
            picks in proptest::collection::vec(0usize..9, 0..80),
        ) {
            const VALUES: [f32; 9] =
                [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.0, -1.0, 2.5, 1e-30];
            let row: Vec<f32> = picks.iter().map(|&i| VALUES[i]).collect();
            proptest::prop_assert_eq!(argmax(&row), one_pass_argmax(&row), "{:?}", row);
        }
    }

    #[test]
    fn argmax_of_a_vocabulary_row_finds_its_first_peak() {
        let mut row: Vec<f32> = (0..49152).map(|i| ((i * 7919) % 1000) as f32).collect();
        row[30001] = 1e6;
        row[40000] = 1e6;
        assert_eq!(argmax(&row), 30001);
        assert_eq!(argmax(&row), one_pass_argmax(&row));
        assert_eq!(argmax(&[f32::NAN; 40]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn a_seed_repeats_its_draws_and_another_seed_differs() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams::sampled(1.0, 1.0, seed));
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities about 0.64, 0.24, 0.09, 0.03: top-p 0.7 keeps the first two only.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(SamplingParams::sampled(1.0, 0.7, 11));
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            seen[s.sample(&logits) as usize] += 1;
        }
        assert_eq!((seen[2], seen[3]), (0, 0), "{seen:?}");
        // Renormalised over the two: 0.731 and 0.269.
        let share = seen[0] as f64 / 4000.0;
        assert!((share - 0.731).abs() < 0.03, "{seen:?}");
    }

    #[test]
    fn temperature_matches_the_softmax_frequencies() {
        let logits = [1.0f32, 0.0, -1.0];
        let mut s = Sampler::new(SamplingParams::sampled(2.0, 1.0, 3));
        let mut seen = [0usize; 3];
        let n = 20000;
        for _ in 0..n {
            seen[s.sample(&logits) as usize] += 1;
        }
        let z: f64 = [0.5f64, 0.0, -0.5].iter().map(|x| x.exp()).sum();
        for (i, x) in [0.5f64, 0.0, -0.5].iter().enumerate() {
            let want = x.exp() / z;
            let got = seen[i] as f64 / n as f64;
            assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = SamplingParams::sampled(-1.0, 1.0, 0)
            .validate()
            .unwrap_err();
        assert!(e.contains("temperature -1"), "{e}");
        let e = SamplingParams::sampled(f32::NAN, 1.0, 0)
            .validate()
            .unwrap_err();
        assert!(e.contains("temperature NaN"), "{e}");
        let e = SamplingParams::sampled(1.0, 0.0, 0).validate().unwrap_err();
        assert!(e.contains("top-p 0"), "{e}");
        assert!(SamplingParams::sampled(0.7, 0.9, 1).validate().is_ok());
    }
}
