//! Prometheus text exposition (format 0.0.4) helpers shared by the renderers of `reflexd`
//! and `reflex-cloud`: family headers, label escaping and sample values. Pure: callers
//! build the text and serve it with [`CONTENT_TYPE`].

use std::fmt::Write as _;

/// The `Content-Type` of the text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One unlabelled series with its HELP and TYPE lines.
pub fn single(out: &mut String, name: &str, help: &str, kind: &str, v: u64) -> std::fmt::Result {
    header(out, name, help, kind)?;
    writeln!(out, "{name} {v}")
}

/// The HELP and TYPE lines of a metric family.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) -> std::fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

/// A label value escaped for the text format: `\`, `"` and newline.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Nanoseconds printed as seconds, exactly (no float rounding): `1500` → `0.0000015`.
pub struct Seconds(pub u64);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, ns) = (self.0 / 1_000_000_000, self.0 % 1_000_000_000);
        if ns == 0 {
            return write!(f, "{s}");
        }
        let frac = format!("{ns:09}");
        write!(f, "{s}.{}", frac.trim_end_matches('0'))
    }
}

/// A sample value: shortest round-trip decimal, exponent form for very small or large
/// magnitudes (a KS p-value of 1e-300 is not 300 zeros), `NaN`, `+Inf`, `-Inf`.
pub struct Float(pub f64);

impl std::fmt::Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else if v == 0.0 || (1e-4..1e15).contains(&v.abs()) {
            write!(f, "{v}")
        } else {
            write!(f, "{v:e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_values_use_exponents_only_for_extreme_magnitudes() {
        assert_eq!(Float(0.0).to_string(), "0");
        assert_eq!(Float(0.25).to_string(), "0.25");
        assert_eq!(Float(1e-300).to_string(), "1e-300");
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Float(1_796_000_060.0).to_string(), "1796000060");
    }
}
