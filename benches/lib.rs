//! Criterion benchmarks; see the `[[bench]]` targets in this package.
