//! Sizes as people write them on a command line: `512M`, `1G`, `4096`, `2GiB`.
//! Suffixes are binary (K = 1024), case-insensitive, with an optional `B` or `iB`.

use anyhow::{Result, bail};

/// Parses a size in bytes; zero and overflowing sizes are refused.
pub fn parse_size(text: &str) -> Result<u64> {
    let bytes = parse_bytes(text)?;
    if bytes == 0 {
        bail!("invalid size '{text}': must be more than zero");
    }
    Ok(bytes)
}

/// Parses an offset or length in bytes (zero allowed), with the suffixes of sizes.
pub fn parse_offset(text: &str) -> Result<u64> {
    parse_bytes(text)
}

fn parse_bytes(text: &str) -> Result<u64> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(digits_end);
    if digits.is_empty() {
        bail!("invalid size '{text}': expected a number with an optional K, M, G or T suffix");
    }
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => bail!("invalid size '{text}': unknown suffix '{suffix}' (use K, M, G or T)"),
    };
    let Ok(n) = digits.parse::<u64>() else {
        bail!("invalid size '{text}': too large");
    };
    let Some(bytes) = n.checked_mul(1u64 << shift) else {
        bail!("invalid size '{text}': too large");
    };
    Ok(bytes)
}

/// A byte count for people: `1.5 GiB`, `512 MiB`, `4096 B`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("2gib").unwrap(), 2 << 30);
        assert_eq!(parse_size("3KB").unwrap(), 3 << 10);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        for bad in [
            "",
            "G",
            "1X",
            "0",
            "0M",
            "-1G",
            "1.5G",
            "99999999999999999999",
            "16384P",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("1Q").unwrap_err().to_string().contains("'Q'"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(1536 << 20), "1.5 GiB");
        assert_eq!(human(100), "100 B");
    }
}
