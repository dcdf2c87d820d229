//! Durations as data teams write them: `90s`, `30m`, `1h`, `7d`, `2w`, `1.5h`.
//!
//! A duration is a whole number of seconds. Units: `s`, `m` (minutes), `h`, `d`, `w`.
//! Fractions are allowed as long as the result is a whole number of seconds, so that
//! every window and timer in the engine works on integer seconds.

/// Parses `text` into seconds, or says what is wrong with it.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a duration: expected a number followed by a unit (s, m, h, d, w), for example `30m`"
        ));
    }
    let seconds_per_unit: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 604_800,
        "" => {
            return Err(format!(
            "`{text}` has no unit: write for example `{text}s`, `{text}m`, `{text}h` or `{text}d`"
        ))
        }
        other if other.starts_with(char::is_whitespace) => {
            return Err(format!(
                "`{text}` has a space before its unit: write it without one, as in `{number}{}`",
                other.trim_start()
            ))
        }
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{text}`: expected s, m, h, d or w"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{number}` in `{text}` is not a number"))?;
    let seconds = value * seconds_per_unit as f64;
    if seconds.fract() != 0.0 {
        return Err(format!("`{text}` is not a whole number of seconds"));
    }
    if seconds <= 0.0 {
        return Err(format!("`{text}` must be longer than zero"));
    }
    if seconds > u32::MAX as f64 {
        return Err(format!("`{text}` is too long: at most 49710 days"));
    }
    Ok(seconds as u64)
}

/// Renders seconds back in the largest unit that divides them: 1800 -> `30m`.
pub fn format_duration(seconds: u64) -> String {
    for (unit, size) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds >= size && seconds % size == 0 {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_fractions() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("1.5h"), Ok(5400));
        assert_eq!(parse_duration("7d"), Ok(604_800));
        assert_eq!(parse_duration("2w"), Ok(1_209_600));
    }

    #[test]
    fn rejects_bad_durations_with_reasons() {
        assert!(parse_duration("30").unwrap_err().contains("has no unit"));
        assert!(parse_duration("3y")
            .unwrap_err()
            .contains("unknown duration unit `y`"));
        assert!(parse_duration("0.5s").unwrap_err().contains("whole number"));
        assert!(parse_duration("m").unwrap_err().contains("not a duration"));
        assert!(parse_duration("0s")
            .unwrap_err()
            .contains("longer than zero"));
    }

    #[test]
    fn formats_in_the_largest_unit() {
        assert_eq!(format_duration(1800), "30m");
        assert_eq!(format_duration(86_400 * 30), "30d");
        assert_eq!(format_duration(90), "90s");
    }
}
