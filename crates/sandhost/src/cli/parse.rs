//! Parsing of the CLI's values: sizes, CPU counts, `K=V` pairs, labels, durations, times.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use super::client::ClientError;

/// A memory size: bytes, or a number with a binary unit `k`, `m`, `g`, `t` (any case, optionally
/// followed by `i`, `b` or `ib`, as in `512m`, `1G`, `64MiB`). Fractions are allowed with a unit
/// (`1.5g`).
pub(crate) fn size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kb" | "kib" => 10,
        "m" | "mi" | "mb" | "mib" => 20,
        "g" | "gi" | "gb" | "gib" => 30,
        "t" | "ti" | "tb" | "tib" => 40,
        _ => return Err(format!("{text:?}: expected a size such as 536870912, 512m or 2g")),
    };
    let invalid = || format!("{text:?}: expected a size such as 536870912, 512m or 2g");
    if let Ok(whole) = number.parse::<u64>() {
        return whole.checked_mul(1 << shift).ok_or_else(|| format!("{text:?}: too large"));
    }
    let value: f64 = number.parse().map_err(|_| invalid())?;
    if shift == 0 || !value.is_finite() || value < 0.0 {
        return Err(invalid());
    }
    let bytes = (value * f64::from(1u32 << (shift / 2)) * f64::from(1u32 << (shift - shift / 2))).round();
    if bytes >= 18_446_744_073_709_551_615.0 {
        return Err(format!("{text:?}: too large"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    // finite, >= 0, < u64::MAX: checked above
    Ok(bytes as u64)
}

/// A CPU count (`2`, `0.5`) in millicores.
pub(crate) fn cpus(text: &str) -> Result<u32, String> {
    let value: f64 =
        text.trim().parse().map_err(|_| format!("{text:?}: expected a number of CPUs such as 2 or 0.5"))?;
    if !value.is_finite() || value <= 0.0 || value > 1_000_000.0 {
        return Err(format!("{text:?}: expected a number of CPUs above 0"));
    }
    let millis = (value * 1000.0).round();
    if millis < 1.0 {
        return Err(format!("{text:?}: less than one millicore"));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 1 <= millis <= 1e9: checked above
    Ok(millis as u32)
}

/// `K=V` (the value may contain `=`; the key may not be empty).
pub(crate) fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?}: expected KEY=VALUE")),
    }
}

/// `--label K=V`s as a label map (a key given twice keeps its last value).
pub(crate) fn labels(texts: &[String]) -> Result<BTreeMap<String, String>, ClientError> {
    texts
        .iter()
        .map(|text| key_value(text))
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::usage("--label", e))
}

/// The value of a duration flag named `flag`, when given.
pub(crate) fn optional_duration(
    flag: &'static str,
    text: Option<&str>,
) -> Result<Option<prost_types::Duration>, ClientError> {
    text.map(duration).transpose().map_err(|e| ClientError::usage(flag, e))
}

/// A duration as the pinned settings accept it (`90s`, `5m`, `1h30m`), as a proto duration.
pub(crate) fn duration(text: &str) -> Result<prost_types::Duration, String> {
    let duration: Duration = crate::config::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    prost_types::Duration::try_from(duration).map_err(|e| format!("{text:?}: {e}"))
}

/// A point in time given as `logs --since` takes it: an RFC 3339 time with its zone
/// (`2026-01-02T15:04:05Z`, `2026-01-02T17:04:05.5+02:00`) or a duration before `now` (`90s`, `10m`,
/// `1h30m`).
pub(crate) fn since(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    if let Ok(ago) = crate::config::parse_duration(text) {
        return now
            .checked_sub(ago)
            .ok_or_else(|| format!("{text:?} before now is before any time this host can hold"));
    }
    rfc3339(text.trim()).map_err(|e| {
        format!(
            "{text:?}: {e}; expected an RFC 3339 time with its zone (2026-01-02T15:04:05Z, \
             2026-01-02T17:04:05+02:00) or a duration before now (90s, 10m, 1h30m)"
        )
    })
}

/// An RFC 3339 time, in `Z` or with a numeric offset (humantime reads only `Z`).
fn rfc3339(text: &str) -> Result<SystemTime, String> {
    let text = text.to_ascii_uppercase();
    let zone_at = text.len().saturating_sub(6);
    let (utc, east) = match (text.get(..zone_at), text.get(zone_at..).and_then(offset_seconds)) {
        (Some(local), Some(east)) => (format!("{local}Z"), east),
        _ => (text, 0),
    };
    let time = humantime::parse_rfc3339(&utc).map_err(|e| e.to_string())?;
    // 17:04:05+02:00 is 15:04:05Z.
    let shifted = if east >= 0 {
        time.checked_sub(Duration::from_secs(east.unsigned_abs()))
    } else {
        time.checked_add(Duration::from_secs(east.unsigned_abs()))
    };
    shifted.ok_or_else(|| "out of range".to_owned())
}

/// The seconds east of UTC of a zone `+HH:MM` or `-HH:MM`.
fn offset_seconds(zone: &str) -> Option<i64> {
    let (sign, rest) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let (hours, minutes) = rest.split_once(':')?;
    let all_digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(hours) || !all_digits(minutes) {
        return None;
    }
    let (hours, minutes): (i64, i64) = (hours.parse().ok()?, minutes.parse().ok()?);
    (hours < 24 && minutes < 60).then_some(sign * (hours * 3600 + minutes * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("1024", 1024),
            ("1k", 1024),
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("64MiB", 64 << 20),
            ("2g", 2 << 30),
            ("1.5g", 3 << 29),
            ("1t", 1 << 40),
        ] {
            assert_eq!(size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "m", "12x", "-1m", "1.5", "99999999999999999999", "1e3m"] {
            assert!(size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_counts() {
        assert_eq!(cpus("2"), Ok(2000));
        assert_eq!(cpus("0.5"), Ok(500));
        assert_eq!(cpus("0.001"), Ok(1));
        for bad in ["0", "-1", "x", "0.0001", "inf", "NaN"] {
            assert!(cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pairs() {
        assert_eq!(key_value("A=1"), Ok(("A".into(), "1".into())));
        assert_eq!(key_value("A="), Ok(("A".into(), String::new())));
        assert_eq!(key_value("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(key_value("=1").is_err());
        assert!(key_value("A").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("1m30s"), Ok(prost_types::Duration { seconds: 90, nanos: 0 }));
        assert!(duration("soon").is_err());
        assert_eq!(optional_duration("--x", None).ok(), Some(None));
        assert!(optional_duration("--x", Some("soon")).is_err_and(|e| e.to_string().contains("--x")));
    }

    #[test]
    fn since_takes_an_rfc_3339_time_or_a_duration_before_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |secs, nanos| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        assert_eq!(since("10m", now), Ok(now - Duration::from_secs(600)));
        assert_eq!(since("1h30m", now), Ok(now - Duration::from_secs(5_400)));
        assert_eq!(since("2026-01-02T15:04:05Z", now), Ok(at(1_767_366_245, 0)));
        assert_eq!(since("2026-01-02t15:04:05.25z", now), Ok(at(1_767_366_245, 250_000_000)));
        assert_eq!(since("2026-01-02T17:04:05+02:00", now), Ok(at(1_767_366_245, 0)));
        assert_eq!(since("2026-01-02T10:34:05-04:30", now), Ok(at(1_767_366_245, 0)));
        assert_eq!(since("2026-01-02T15:04:05+00:00", now), Ok(at(1_767_366_245, 0)));
        for bad in [
            "",
            "soon",
            "10",
            "2026-01-02",
            "2026-01-02T15:04:05",
            "2026-01-02T15:04:05+2:00",
            "2026-01-02T15:04:05+24:00",
            "-10m",
        ] {
            let error = since(bad, now).expect_err(bad);
            assert!(error.contains("RFC 3339"), "{bad:?}: {error}");
        }
        assert!(since("100000000000000y", now).is_err(), "before any time");
    }

    #[test]
    fn label_sets() {
        let labels = labels(&["a=1".into(), "b=x=y".into()]).expect("valid");
        assert_eq!(labels.get("b").map(String::as_str), Some("x=y"));
        assert!(super::labels(&["nokey".into()]).is_err_and(|e| e.to_string().contains("--label")));
    }
}
