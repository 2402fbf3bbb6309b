//! The image limit flags `skiff serve` and `skiff image pull` share, and the size syntax
//! they take (`512M`, `16GiB`, `4096`: binary multiples, a plain number is bytes).
//! Parsed here rather than with a crate: four suffixes do not justify a dependency.

use clap::Args;
use control_plane::images::limits::{
    DEFAULT_MAX_CONFIG_BYTES, DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_ENTRIES,
    DEFAULT_MAX_MANIFEST_BYTES,
};
use control_plane::images::Limits;

#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest image, uncompressed (all layers' tar streams together), e.g. 16G.
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_MAX_IMAGE_BYTES)]
    max_image_size: u64,
    /// Most files, folders and links an image may hold (all layers together).
    #[arg(long, default_value_t = DEFAULT_MAX_IMAGE_ENTRIES)]
    max_image_entries: u64,
    /// Largest image config blob, e.g. 8M.
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_MAX_CONFIG_BYTES)]
    max_config_size: u64,
    /// Largest manifest or index, e.g. 4M.
    #[arg(long, value_parser = parse_size, default_value_t = DEFAULT_MAX_MANIFEST_BYTES)]
    max_manifest_size: u64,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_image_bytes: self.max_image_size,
            max_image_entries: self.max_image_entries,
            max_config_bytes: self.max_config_size,
            max_manifest_bytes: self.max_manifest_size,
        }
    }
}

/// A size in bytes: digits, then optionally K, M, G or T (powers of 1024), with or
/// without a trailing `i` and `B`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 512M or 16G"))?;
    let unit = unit.trim_end_matches(['B', 'b']).trim_end_matches('i');
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    if n == 0 {
        return Err(format!("{s:?}: a limit must be more than 0"));
    }
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("16GiB"), Ok(16 << 30));
        assert_eq!(parse_size("2kb"), Ok(2048));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        for bad in ["", "M", "12Q", "-1", "0", "1.5G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("12Q").unwrap_err().contains("unknown unit"));
    }
}
