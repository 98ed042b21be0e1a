//! Test helpers shared by the integration tests: the deterministic sample generator that
//! `reference/make_expected.py` also implements (bit-identical on both sides), and the
//! expected-values file it writes.

#![allow(dead_code)] // each test binary uses a different subset

use serde_json::Value;

/// SplitMix64, as in `make_expected.py`.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): top 53 bits / 2^53.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Approximately standard normal: sum of 12 uniforms − 6.
    pub fn normal(&mut self) -> f64 {
        let mut s = 0.0;
        for _ in 0..12 {
            s += self.uniform();
        }
        s - 6.0
    }
}

/// A sample description as written in expected.json.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Spec {
    pub kind: String,
    pub seed: u64,
    pub n: usize,
    pub loc: f64,
    pub scale: f64,
    pub step: f64,
}

/// Draws the sample a spec describes, exactly as `draw()` in make_expected.py.
pub fn draw(spec: &Spec) -> Vec<f64> {
    let mut g = SplitMix::new(spec.seed);
    (0..spec.n)
        .map(|_| {
            let z = match spec.kind.as_str() {
                "normal" => g.normal(),
                "uniform" => g.uniform(),
                other => panic!("unknown kind {other}"),
            };
            let v = spec.loc + spec.scale * z;
            if spec.step > 0.0 {
                (v / spec.step).floor() * spec.step
            } else {
                v
            }
        })
        .collect()
}

/// Draws a spec's sample and checks it against the first values and sum recorded by Python.
pub fn draw_checked(spec: &Value, check: &Value) -> Vec<f64> {
    let spec: Spec = serde_json::from_value(spec.clone()).expect("spec");
    let values = draw(&spec);
    let first: Vec<f64> = serde_json::from_value(check["first"].clone()).expect("first");
    assert_eq!(
        &values[..first.len()],
        &first[..],
        "generator differs for {spec:?}"
    );
    let sum: f64 = values.iter().sum();
    let expected = check["sum"].as_f64().expect("sum");
    assert!(
        (sum - expected).abs() <= 1e-9 * (1.0 + expected.abs()),
        "sum {sum} vs {expected} for {spec:?}"
    );
    values
}

/// tests/expected.json.
pub fn expected() -> Value {
    let text = include_str!("../expected.json");
    serde_json::from_str(text).expect("expected.json parses")
}

/// Normal sample with the generator.
pub fn normal_sample(seed: u64, n: usize, loc: f64, scale: f64) -> Vec<f64> {
    let mut g = SplitMix::new(seed);
    (0..n).map(|_| loc + scale * g.normal()).collect()
}
