//! Output for people (aligned tables, times, durations) and for scripts (`--output json`).

use crate::duration::HumanDuration;
use floxy::Timestamp;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// `--output`: tables and text for people, or JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[non_exhaustive]
pub enum OutputFormat {
    /// Aligned tables and lines of text.
    #[default]
    Table,
    /// One JSON document on stdout.
    Json,
}

/// A table with aligned columns.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Longest cell shown in a table; longer cells are cut with `…`.
pub const MAX_CELL_CHARS: usize = 80;

impl Table {
    /// A table with these column headers.
    #[must_use]
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty, extra cells are dropped).
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(|c| clip(&one_line_cell(&c.into())))
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// Number of rows.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text: a header line, then one line per row; columns separated by two
    /// spaces, no trailing spaces.
    #[must_use]
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    l.push_str("  ");
                }
                l.push_str(cell);
                let pad = w.saturating_sub(cell.chars().count());
                l.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut out, &self.headers);
        for row in &self.rows {
            line(&mut out, row);
        }
        out
    }
}

fn one_line_cell(s: &str) -> String {
    s.replace(['\n', '\r', '\t'], " ")
}

fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_CELL_CHARS {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_CELL_CHARS - 1).collect();
        t.push('…');
        t
    }
}

/// `value` as pretty JSON (serialization of the binaries' own types cannot fail; a failure
/// is shown as a JSON string naming it).
#[must_use]
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string_pretty(value)
        .unwrap_or_else(|e| serde_json::Value::String(format!("cannot encode: {e}")).to_string())
}

/// `value` as compact JSON.
#[must_use]
pub fn to_json_line<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value)
        .unwrap_or_else(|e| serde_json::Value::String(format!("cannot encode: {e}")).to_string())
}

/// A timestamp as UTC RFC 3339 with milliseconds (`2025-01-31T12:00:00.123Z`).
#[must_use]
pub fn format_time(t: Timestamp) -> String {
    let ms = t.as_millis();
    let secs = ms.div_euclid(1_000);
    let millis = ms.rem_euclid(1_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = String::new();
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3_600,
        (sod % 3_600) / 60,
        sod % 60
    );
    s
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    // d is in 1..=31 and m in 1..=12.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    (if m <= 2 { y + 1 } else { y }, m as u32, d as u32)
}

/// Milliseconds as a short duration (`250ms`, `1.5s`, `2m3s`).
#[must_use]
pub fn format_ms(ms: u64) -> String {
    HumanDuration(Duration::from_millis(ms)).to_string()
}

/// A JSON value on one line, cut to `max` characters.
#[must_use]
pub fn short_json(v: &serde_json::Value, max: usize) -> String {
    let s = to_json_line(v);
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(["ID", "STATUS"]);
        t.row(["1", "completed"]);
        t.row(["12345", "x\ny"]);
        assert_eq!(t.render(), "ID     STATUS\n1      completed\n12345  x y\n");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn long_cells_are_clipped() {
        let mut t = Table::new(["A"]);
        t.row(["x".repeat(200)]);
        let line = t
            .render()
            .lines()
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_default();
        assert_eq!(line.chars().count(), MAX_CELL_CHARS);
        assert!(line.ends_with('…'));
    }

    #[test]
    fn formats_times() {
        assert_eq!(format_time(Timestamp(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_time(Timestamp(1_738_324_800_123)),
            "2025-01-31T12:00:00.123Z"
        );
        assert_eq!(
            format_time(Timestamp(951_782_400_000)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(format_ms(1_500), "1.5s");
    }
}
