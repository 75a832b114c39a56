//! Durations written by people: `500ms`, `10s`, `10m`, `1h30m`, `30d`, `2w`.
//!
//! A duration is one or more `<number><unit>` parts (units `ms`, `s`, `m`, `h`, `d`, `w`;
//! `us`/`µs` and `ns` are accepted too, as in Go), added up. A bare `0` is zero. A number
//! without a unit, an unknown unit, an empty string or an overflow is an error: `10` could
//! mean seconds or milliseconds, so it is refused instead of guessed.

use std::fmt;
use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (examples: 500ms, 10s, 10m, 1h30m, 30d)")]
pub struct DurationError {
    /// The text given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses a duration (see the [module docs](self)).
///
/// # Errors
/// [`DurationError`] for anything but `<number><unit>` parts or a bare `0`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason: &str| DurationError {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err("expected a number"));
        }
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "d" => 86_400 * 1_000_000_000,
            "w" => 7 * 86_400 * 1_000_000_000,
            "" => return Err(err("a number needs a unit")),
            _ => return Err(err(&format!("unknown unit {unit:?}"))),
        };
        let nanos = scaled(num, nanos_per_unit).ok_or_else(|| err("bad number or too large"))?;
        let part = u64::try_from(nanos / 1_000_000_000)
            .ok()
            .map(|secs| {
                // The remainder is below 1e9, it fits.
                #[allow(clippy::cast_possible_truncation)]
                let sub = (nanos % 1_000_000_000) as u32;
                Duration::new(secs, sub)
            })
            .ok_or_else(|| err("too large"))?;
        total = total.checked_add(part).ok_or_else(|| err("too large"))?;
        rest = tail;
    }
    Ok(total)
}

/// `num` (digits with at most one `.`) times `unit` nanoseconds, truncated to whole
/// nanoseconds.
fn scaled(num: &str, unit: u128) -> Option<u128> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut value = int.checked_mul(unit)?;
    let mut scale = unit;
    for d in frac.chars() {
        scale /= 10;
        let digit = u128::from(d.to_digit(10)?);
        value = value.checked_add(digit.checked_mul(scale)?)?;
    }
    Some(value)
}

/// A [`Duration`] shown the way [`parse_duration`] reads it (`1h30m`, `250ms`, `0s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms < 1_000 {
            return write!(f, "{ms}ms");
        }
        if ms < 60_000 {
            let tenths = ms / 100;
            return if tenths.is_multiple_of(10) {
                write!(f, "{}s", tenths / 10)
            } else {
                write!(f, "{}.{}s", tenths / 10, tenths % 10)
            };
        }
        let secs = ms / 1_000;
        let (d, h, m, s) = (
            secs / 86_400,
            (secs % 86_400) / 3_600,
            (secs % 3_600) / 60,
            secs % 60,
        );
        let mut out = String::new();
        for (v, u) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
            if v > 0 {
                out.push_str(&format!("{v}{u}"));
            }
        }
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() -> Result<(), DurationError> {
        assert_eq!(parse_duration("500ms")?, Duration::from_millis(500));
        assert_eq!(parse_duration("10s")?, Duration::from_secs(10));
        assert_eq!(parse_duration("10m")?, Duration::from_secs(600));
        assert_eq!(parse_duration("1h30m")?, Duration::from_secs(5_400));
        assert_eq!(parse_duration("30d")?, Duration::from_secs(30 * 86_400));
        assert_eq!(parse_duration("2w")?, Duration::from_secs(14 * 86_400));
        assert_eq!(parse_duration("1.5s")?, Duration::from_millis(1_500));
        assert_eq!(parse_duration("250us")?, Duration::from_micros(250));
        assert_eq!(parse_duration("0")?, Duration::ZERO);
        assert_eq!(parse_duration(" 5s ")?, Duration::from_secs(5));
        Ok(())
    }

    #[test]
    fn refuses_what_it_would_have_to_guess() {
        for bad in [
            "",
            "10",
            "5x",
            "ms",
            "1..5s",
            "s5",
            "-5s",
            "99999999999999999999999w",
        ] {
            let e = parse_duration(bad);
            assert!(e.is_err(), "{bad:?} parsed as {e:?}");
        }
        let msg = parse_duration("10").err().map(|e| e.to_string());
        assert_eq!(
            msg.as_deref(),
            Some(
                "invalid duration \"10\": a number needs a unit (examples: 500ms, 10s, 10m, 1h30m, 30d)"
            )
        );
    }

    #[test]
    fn displays_round_trip() -> Result<(), DurationError> {
        for s in ["250ms", "10s", "1.5s", "1h30m", "30d", "0s", "2d3h4m5s"] {
            let d = parse_duration(s)?;
            assert_eq!(HumanDuration(d).to_string(), s);
        }
        Ok(())
    }
}
