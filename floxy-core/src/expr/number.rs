//! Numeric values used by comparisons: integers are kept exact (as `i128`),
//! everything else is an `f64`. Mixed integer/float comparisons are exact too.

use std::cmp::Ordering;

/// A number taking part in a comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    /// An integer (every `i64` and `u64` fits).
    Int(i128),
    /// A non-integer or out-of-range number.
    Float(f64),
}

/// 2^127 as an `f64` (exactly representable).
const TWO_POW_127: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;

impl Num {
    /// Converts a JSON number, keeping `i64`/`u64` values exact.
    pub(crate) fn from_json(n: &serde_json::Number) -> Option<Self> {
        if let Some(i) = n.as_i64() {
            Some(Self::Int(i128::from(i)))
        } else if let Some(u) = n.as_u64() {
            Some(Self::Int(i128::from(u)))
        } else {
            n.as_f64().map(Self::Float)
        }
    }

    /// Parses a numeric string with the strict decimal grammar of
    /// [`decimal_shape`]. Returns `None` for anything else (including
    /// `inf`, `nan`, hex, surrounding whitespace).
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match decimal_shape(s)? {
            Shape::Integer => match s.parse::<i128>() {
                Ok(i) => Some(Self::Int(i)),
                Err(_) => s.parse::<f64>().ok().map(Self::Float),
            },
            Shape::Float => s.parse::<f64>().ok().map(Self::Float),
        }
    }

    /// Compares two numbers. Integers compare exactly; integer vs float
    /// compares exactly too. `None` only when a NaN is involved.
    pub(crate) fn compare(self, other: Self) -> Option<Ordering> {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => Some(a.cmp(&b)),
            (Self::Float(a), Self::Float(b)) => a.partial_cmp(&b),
            (Self::Int(a), Self::Float(b)) => cmp_int_float(a, b),
            (Self::Float(a), Self::Int(b)) => cmp_int_float(b, a).map(Ordering::reverse),
        }
    }

    /// Whether the number is zero.
    pub(crate) fn is_zero(self) -> bool {
        match self {
            Self::Int(i) => i == 0,
            Self::Float(f) => f == 0.0,
        }
    }
}

/// Exact comparison of an integer with a float.
fn cmp_int_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    if f >= TWO_POW_127 {
        return Some(Ordering::Less);
    }
    if f < -TWO_POW_127 {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    // |t| <= 2^127 and t is integral, so the conversion is exact
    // (-2^127 is i128::MIN).
    #[allow(clippy::cast_possible_truncation)] // bounded and integral: see above
    let ti = t as i128;
    match i.cmp(&ti) {
        Ordering::Equal => {
            if f > t {
                Some(Ordering::Less)
            } else if f < t {
                Some(Ordering::Greater)
            } else {
                Some(Ordering::Equal)
            }
        }
        other => Some(other),
    }
}

/// The syntactic kind of a valid decimal number text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `[+-]?digits` — no fraction, no exponent.
    Integer,
    /// Has a fraction and/or an exponent.
    Float,
}

/// Checks `s` against `[+-]? (digits ('.' digits?)? | '.' digits) ([eE] [+-]? digits)?`
/// and reports whether it is an integer or a float. No whitespace allowed.
pub(crate) fn decimal_shape(s: &str) -> Option<Shape> {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut shape = Shape::Integer;
    let mut frac_digits = 0;
    if b.get(i) == Some(&b'.') {
        shape = Shape::Float;
        i += 1;
        let frac_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        frac_digits = i - frac_start;
    }
    if int_digits == 0 && frac_digits == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        shape = Shape::Float;
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exp_start {
            return None;
        }
    }
    (i == b.len()).then_some(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(decimal_shape("10"), Some(Shape::Integer));
        assert_eq!(decimal_shape("-10"), Some(Shape::Integer));
        assert_eq!(decimal_shape("+7"), Some(Shape::Integer));
        assert_eq!(decimal_shape("1.50"), Some(Shape::Float));
        assert_eq!(decimal_shape(".5"), Some(Shape::Float));
        assert_eq!(decimal_shape("5."), Some(Shape::Float));
        assert_eq!(decimal_shape("1e10"), Some(Shape::Float));
        assert_eq!(decimal_shape("-1.5E-3"), Some(Shape::Float));
        for bad in [
            "", "-", ".", "+.", "1e", "1e+", "abc", "inf", "nan", "0x10", "1_000", " 1", "1 ",
            "1.2.3", "--1", "1e5.0",
        ] {
            assert_eq!(decimal_shape(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parse_numbers() {
        assert_eq!(Num::parse("10"), Some(Num::Int(10)));
        assert_eq!(Num::parse("-3"), Some(Num::Int(-3)));
        assert_eq!(Num::parse("1.50"), Some(Num::Float(1.5)));
        assert_eq!(Num::parse("NaN"), None);
        assert_eq!(Num::parse("infinity"), None);
        assert_eq!(
            Num::parse("9007199254740993"),
            Some(Num::Int(9_007_199_254_740_993))
        );
        // Too big for i128: falls back to a float.
        let huge = "1".repeat(45);
        assert!(matches!(Num::parse(&huge), Some(Num::Float(f)) if f > 1e44));
    }

    #[test]
    fn exact_integer_comparison() {
        let a = Num::Int(9_007_199_254_740_993);
        let b = Num::Int(9_007_199_254_740_992);
        assert_eq!(a.compare(b), Some(Ordering::Greater));
        // The float 2^53 is exactly 9007199254740992, so the int 2^53+1 is greater.
        assert_eq!(
            a.compare(Num::Float(9_007_199_254_740_992.0)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            b.compare(Num::Float(9_007_199_254_740_992.0)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            Num::Int(i128::from(u64::MAX)).compare(Num::Int(i128::from(i64::MIN))),
            Some(Ordering::Greater)
        );
    }

    #[test]
    fn mixed_comparison() {
        assert_eq!(Num::Int(1).compare(Num::Float(1.5)), Some(Ordering::Less));
        assert_eq!(
            Num::Int(2).compare(Num::Float(1.5)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            Num::Int(-1).compare(Num::Float(-1.5)),
            Some(Ordering::Greater)
        );
        assert_eq!(Num::Int(-2).compare(Num::Float(-1.5)), Some(Ordering::Less));
        assert_eq!(Num::Float(1.0).compare(Num::Int(1)), Some(Ordering::Equal));
        assert_eq!(
            Num::Float(1e300).compare(Num::Int(i128::MAX)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            Num::Float(-1e300).compare(Num::Int(i128::MIN)),
            Some(Ordering::Less)
        );
        assert_eq!(
            Num::Float(f64::INFINITY).compare(Num::Int(0)),
            Some(Ordering::Greater)
        );
        assert_eq!(Num::Float(f64::NAN).compare(Num::Int(0)), None);
        assert_eq!(Num::Float(-0.0).compare(Num::Int(0)), Some(Ordering::Equal));
    }

    #[test]
    fn zero() {
        assert!(Num::Int(0).is_zero());
        assert!(Num::Float(-0.0).is_zero());
        assert!(!Num::Float(0.1).is_zero());
    }
}
