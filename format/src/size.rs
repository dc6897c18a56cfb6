//! Byte sizes as people write them: `500MiB`, `2GB`, `1048576` (bytes).
//!
//! The grammar of the client's `--max-download` (`client/src/cli/size.rs`), with the
//! decimal units a release's `disk=` requirement is often written in added.

use crate::error::{FormatError, Result};

/// Parses a whole number with an optional unit: none or `B` (bytes), binary `K`/`KiB`,
/// `M`/`MiB`, `G`/`GiB`, `T`/`TiB`, or decimal `KB`, `MB`, `GB`, `TB`. One space may
/// separate number and unit.
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || FormatError::BadSize(s.to_string());
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    if number.is_empty() || number.len() > 20 {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit = unit.strip_prefix(' ').unwrap_or(unit);
    let factor: u64 = match unit {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(factor).ok_or_else(bad)
}

/// A size for people: exact binary units when the number is a whole multiple
/// (`500 MiB`), else one decimal (`120.3 MiB`), bytes below 1 KiB.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (name, unit) in UNITS {
        if bytes >= unit {
            if bytes.is_multiple_of(unit) {
                return format!("{} {name}", bytes / unit);
            }
            return format!("{:.1} {name}", bytes as f64 / unit as f64);
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_size("500MiB").unwrap(), 500 << 20);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert_eq!(parse_size("0B").unwrap(), 0);
    }

    #[test]
    fn bad_sizes_are_refused_with_the_input() {
        for bad in [
            "",
            "MiB",
            "5PB",
            "5mb",
            "-1",
            "1.5MiB",
            "5  MiB",
            "99999999999999999999",
            "17179869184GiB",
        ] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(500 << 20), "500 MiB");
        assert_eq!(human_size(120 * (1 << 20) + 300 * 1024), "120.3 MiB");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(2 << 30), "2 GiB");
    }

    proptest! {
        #[test]
        fn whole_units_round_trip(n in 0u64..1 << 20, unit in 0usize..4) {
            let (suffix, shift) = [("", 0), ("KiB", 10), ("MiB", 20), ("GiB", 30)][unit];
            prop_assert_eq!(parse_size(&format!("{n}{suffix}")).unwrap(), n << shift);
        }
    }
}
