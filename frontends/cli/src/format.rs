//! Pure formatting and parsing for the command line: `ls -l` mode strings,
//! UTC timestamps, byte sizes ("64MiB"), octal modes and plain-text tables.
//! No I/O here, so every piece is unit-tested.
//!
//! Times print in UTC (the CLI has no time-zone database and cluster
//! operators compare logs across machines); sizes parse with binary
//! suffixes for `K`/`M`/`G`/`T`/`P` and `KiB`..`PiB`, decimal for
//! `KB`..`PB`.

use cairn_proto::meta::FileType;

/// Returns the `ls -l` mode string, e.g. `drwxr-xr-x` or `-rwsr-x--T`.
pub fn mode_string(kind: FileType, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        FileType::Directory => 'd',
        FileType::Symlink => 'l',
        FileType::Regular => '-',
        FileType::Fifo => 'p',
        FileType::Socket => 's',
        FileType::CharDevice => 'c',
        FileType::BlockDevice => 'b',
        FileType::Unspecified => '?',
    });
    // (read, write, execute bit, special bit, special char)
    let triples = [
        (0o400, 0o200, 0o100, 0o4000, 's'),
        (0o040, 0o020, 0o010, 0o2000, 's'),
        (0o004, 0o002, 0o001, 0o1000, 't'),
    ];
    for (r, w, x, special, c) in triples {
        s.push(if mode & r != 0 { 'r' } else { '-' });
        s.push(if mode & w != 0 { 'w' } else { '-' });
        s.push(match (mode & x != 0, mode & special != 0) {
            (true, true) => c,
            (false, true) => c.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// Returns a short name of a file type for JSON (`file`, `directory`,
/// `symlink`, `fifo`, `socket`, `char-device`, `block-device`, `unknown`).
pub fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Regular => "file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharDevice => "char-device",
        FileType::BlockDevice => "block-device",
        FileType::Unspecified => "unknown",
    }
}

/// Returns the `stat(1)` name of a file type.
pub fn kind_long_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Regular => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharDevice => "character special file",
        FileType::BlockDevice => "block special file",
        FileType::Unspecified => "unknown",
    }
}

/// Returns (year, month, day) of the civil date `days` after 1970-01-01
/// (Howard Hinnant's `civil_from_days`, proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1..=31, 1..=12).
    (year, month as u32, day as u32)
}

/// Splits nanoseconds since the epoch into (date, h, m, s, ns).
fn split_ns(ns: i64) -> ((i64, u32, u32), i64, i64, i64, i64) {
    let secs = ns.div_euclid(1_000_000_000);
    let sub = ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    (
        civil_from_days(days),
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        sub,
    )
}

/// Returns `YYYY-MM-DD HH:MM` (UTC) for nanoseconds since the epoch, as in
/// `ls -l`.
pub fn short_time(ns: i64) -> String {
    let ((y, mo, d), h, mi, _, _) = split_ns(ns);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}")
}

/// Returns RFC 3339 with nanoseconds (UTC), e.g.
/// `2026-11-28T17:04:05.123456789Z`.
pub fn full_time(ns: i64) -> String {
    let ((y, mo, d), h, mi, s, sub) = split_ns(ns);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{sub:09}Z")
}

/// Parses a byte size: a whole number with an optional unit (`B`, `K`,
/// `KiB`, `KB`, ... `P`, `PiB`, `PB`; case-insensitive, a space allowed
/// before the unit).
///
/// # Errors
/// A message for an empty, malformed or overflowing size.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "{s:?} is not a size (expected e.g. 64MiB, 1G, 4096)"
        ));
    }
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "p" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "pb" => 1_000_000_000_000_000,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Returns a byte count for people: `512 B`, `64 MiB`, `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut div: u64 = 1024;
    while unit + 1 < UNITS.len() && n / div >= 1024 {
        div <<= 10;
        unit += 1;
    }
    // `div` is a power of two: an exact multiple prints without decimals.
    if n & (div - 1) == 0 {
        format!("{} {}", n / div, UNITS[unit])
    } else {
        // Precision loss is fine: one decimal is printed.
        format!("{:.1} {}", n as f64 / div as f64, UNITS[unit])
    }
}

/// Parses an octal permission mode such as `755`, `0755` or `0o2775`.
///
/// # Errors
/// A message when it is not octal or above `7777`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(t, 8) {
        Ok(m) if m <= 0o7777 && !t.is_empty() => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode between 0 and 7777")),
    }
}

/// Returns lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Returns `rows` as a table with left-aligned columns separated by two
/// spaces, headed by `headers`; the last column is not padded. `right`
/// lists the columns to align right (numbers).
pub fn table(headers: &[&str], rows: &[Vec<String>], right: &[usize]) -> String {
    let cols = headers.len();
    let mut width: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate().take(cols) {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = width[i].saturating_sub(cell.chars().count());
            if right.contains(&i) {
                l.extend(std::iter::repeat_n(' ', pad));
                l.push_str(cell);
            } else {
                l.push_str(cell);
                if i + 1 < cols {
                    l.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

/// Returns the last `/`-separated component of `path` (`""` for `/`).
pub fn basename(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_strings() {
        assert_eq!(mode_string(FileType::Directory, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(FileType::Regular, 0o644), "-rw-r--r--");
        assert_eq!(mode_string(FileType::Symlink, 0o777), "lrwxrwxrwx");
        assert_eq!(mode_string(FileType::Fifo, 0o644), "prw-r--r--");
        assert_eq!(mode_string(FileType::CharDevice, 0o620), "crw--w----");
        assert_eq!(mode_string(FileType::Regular, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(FileType::Regular, 0o2745), "-rwxr-Sr-x");
        assert_eq!(mode_string(FileType::Directory, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(FileType::Directory, 0o1776), "drwxrwxrwT");
        assert_eq!(mode_string(FileType::Unspecified, 0), "?---------");
    }

    #[test]
    fn times_in_utc() {
        assert_eq!(full_time(0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29 12:34:56.000000789 UTC (a leap day).
        let ns = 951_827_696 * 1_000_000_000 + 789;
        assert_eq!(full_time(ns), "2000-02-29T12:34:56.000000789Z");
        assert_eq!(short_time(ns), "2000-02-29 12:34");
        // 2026-11-28 00:00:00 UTC.
        assert_eq!(
            short_time(1_795_824_000 * 1_000_000_000),
            "2026-11-28 00:00"
        );
        // Before the epoch.
        assert_eq!(full_time(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(short_time(i64::MIN), "1677-09-21 00:12");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64 mib"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("10kb"), Ok(10_000));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("1.5G").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("16384P").is_err());
    }

    #[test]
    fn sizes_print() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1 KiB");
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn modes_parse() {
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("0o2775"), Ok(0o2775));
        assert!(parse_mode("8").is_err());
        assert!(parse_mode("17777").is_err());
        assert!(parse_mode("").is_err());
        assert!(parse_mode("rwx").is_err());
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["ID", "NAME", "SIZE"],
            &[
                vec!["1".into(), "alpha".into(), "10".into()],
                vec!["22".into(), "b".into(), "3000".into()],
            ],
            &[2],
        );
        assert_eq!(t, "ID  NAME   SIZE\n1   alpha    10\n22  b      3000\n");
    }

    #[test]
    fn basenames() {
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(basename("/a/b/"), "b");
        assert_eq!(basename("b"), "b");
        assert_eq!(basename("../x"), "x");
        assert_eq!(basename("/"), "");
    }
}
