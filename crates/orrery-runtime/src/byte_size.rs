//! Byte sizes written by people (`--memory-budget 4GiB`, `ORRERY_PACK_BUDGET=8GiB`).

/// Parses `4GiB`, `3.5G`, `512MiB`, `2e9`, `1000000` (bytes); `K`/`M`/`G`/`T` and `KiB`…`TiB`
/// are powers of 1024, `KB`/`MB`/`GB`/`TB` powers of 1000. Case-insensitive, spaces allowed
/// before the unit.
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.trim().parse().map_err(|_| format!("`{s}` is not a size (try 4GiB, 3.5G or 512MiB)"))?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024f64,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => return Err(format!("`{s}`: unknown unit `{other}` (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{s}` is not a positive size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_byte_size;

    #[test]
    fn sizes_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_byte_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_byte_size("4 g").unwrap(), 4 << 30);
        assert_eq!(parse_byte_size("3.5G").unwrap(), 3758096384);
        assert_eq!(parse_byte_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_byte_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_byte_size("2e9").unwrap(), 2_000_000_000);
        assert_eq!(parse_byte_size("1000").unwrap(), 1000);
        for bad in ["", "GiB", "4 parsecs", "-1G", "0", "nan"] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }
}
