//! Parsers for the human-friendly quantities that appear in specs: Go-style
//! durations (`30s`, `1h30m`) and byte sizes (`67108864`, `64Mi`).
//!
//! Both follow the formats Kubernetes users already know, so a value that the
//! apiserver accepts (the CRD schema checks the same grammar) parses here too.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The grammar of a duration, as the CRD schemas check it.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// The grammar of a byte size given as a string, as the CRD schemas check it.
pub const BYTE_SIZE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("is empty; write a duration such as 30s, 5m or 1h30m")]
    Empty,
    /// A number was expected at a byte offset.
    #[error("expects a number at byte {at}; write a duration such as 30s, 5m or 1h30m")]
    ExpectedNumber {
        /// Byte offset into the string.
        at: usize,
    },
    /// A number has no unit after it.
    #[error("has no unit after {number}; units are ns, us, ms, s, m and h")]
    MissingUnit {
        /// The number without a unit.
        number: String,
    },
    /// A unit is not one of the known ones.
    #[error(
        "has unknown unit {unit:?}; units are ns, us, ms, s, m and h (there is no d: write 24h)"
    )]
    UnknownUnit {
        /// The unknown unit.
        unit: String,
    },
    /// The total does not fit in 2^63-1 nanoseconds (about 292 years), Go's limit.
    #[error("is longer than 2562047h, the longest duration Kubernetes can represent")]
    Overflow,
}

/// The longest duration Go (and so Kubernetes CEL) can represent, in nanoseconds.
const MAX_DURATION_NANOS: u128 = i64::MAX as u128;

/// Formats a duration the way Go does, to whole seconds from a second up
/// (`2h13m5s`, `4m0s`, `12s`) and in milliseconds below (`350ms`).
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.subsec_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// Parses a Go-style duration: a sequence of decimal numbers, each with an
/// optional fraction and a unit, such as `300ms`, `1.5h` or `2h45m`.
///
/// Signs and the unit-less `0` that Go also accepts are rejected: every
/// duration in the Sonde API is a length of time, never negative.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let at = text.len() - rest.len();
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return Err(DurationError::ExpectedNumber { at });
        }
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                if frac_len == 0 {
                    return Err(DurationError::ExpectedNumber {
                        at: at + int_len + 1,
                    });
                }
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        let unit_len = after_number
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(after_number.len(), |(i, _)| i);
        let (unit, next) = after_number.split_at(unit_len);
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                number: rest[..rest.len() - after_number.len()].to_owned(),
            });
        }
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_owned(),
                });
            }
        };
        let whole = decimal_to_u128(int_part).ok_or(DurationError::Overflow)?;
        let mut nanos = whole
            .checked_mul(unit_nanos)
            .ok_or(DurationError::Overflow)?;
        nanos = nanos
            .checked_add(fraction_of(frac_part, unit_nanos))
            .ok_or(DurationError::Overflow)?;
        total = total.checked_add(nanos).ok_or(DurationError::Overflow)?;
        if total > MAX_DURATION_NANOS {
            return Err(DurationError::Overflow);
        }
        rest = next;
    }
    // The bound check above keeps `total` within u64.
    let nanos = u64::try_from(total).map_err(|_| DurationError::Overflow)?;
    Ok(Duration::from_nanos(nanos))
}

/// Parses a run of ASCII digits, or `None` if it does not fit.
fn decimal_to_u128(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |acc, digit| {
        acc.checked_mul(10)?.checked_add(u128::from(digit - b'0'))
    })
}

/// `0.<digits>` of `unit_nanos`, truncated to whole nanoseconds. Digits past
/// nanosecond precision of the largest unit cannot change the result.
fn fraction_of(digits: &str, unit_nanos: u128) -> u128 {
    let digits = &digits[..digits.len().min(20)];
    let numerator = decimal_to_u128(digits).unwrap_or(0);
    let denominator = 10u128.pow(u32::try_from(digits.len()).unwrap_or(0));
    numerator * unit_nanos / denominator
}

/// Why a byte size could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// The text is not a plain or suffixed number.
    #[error(
        "is not a byte size; write a number of bytes, optionally with a suffix \
         Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024) or k, M, G, T, P, E (powers of 1000), such as 64Mi"
    )]
    Syntax,
    /// The size is zero.
    #[error("is zero; a size limit must be at least one byte")]
    Zero,
    /// The size does not fit in 64 bits.
    #[error("is larger than 2^64-1 bytes")]
    Overflow,
}

/// Parses a Kubernetes-style byte quantity (`1048576`, `64Mi`, `1.5Gi`, `500M`)
/// into a number of bytes, rounding a fractional byte up the way Kubernetes
/// quantities do.
pub fn parse_bytes(quantity: &Quantity) -> Result<u64, ByteSizeError> {
    parse_byte_str(&quantity.0)
}

fn parse_byte_str(text: &str) -> Result<u64, ByteSizeError> {
    let number_len = text
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = text.split_at(number_len);
    let multiplier: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        _ => return Err(ByteSizeError::Syntax),
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((int_part, frac_part)) => (int_part, frac_part),
        None => (number, ""),
    };
    let well_formed = !int_part.is_empty()
        && !frac_part.contains('.')
        && (frac_part.is_empty() != number.contains('.'));
    if !well_formed {
        return Err(ByteSizeError::Syntax);
    }
    let whole = decimal_to_u128(int_part).ok_or(ByteSizeError::Overflow)?;
    let mut bytes = whole
        .checked_mul(multiplier)
        .ok_or(ByteSizeError::Overflow)?;
    if !frac_part.is_empty() {
        let digits = &frac_part[..frac_part.len().min(20)];
        let numerator = decimal_to_u128(digits).ok_or(ByteSizeError::Overflow)?;
        let denominator = 10u128.pow(u32::try_from(digits.len()).unwrap_or(0));
        // Round up: a limit of "0.5" bytes still needs one byte to mean anything.
        bytes = bytes
            .checked_add((numerator * multiplier).div_ceil(denominator))
            .ok_or(ByteSizeError::Overflow)?;
    }
    if bytes == 0 {
        return Err(ByteSizeError::Zero);
    }
    u64::try_from(bytes).map_err(|_| ByteSizeError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_like_go() {
        for (duration, text) in [
            (Duration::from_millis(350), "350ms"),
            (Duration::from_secs(12), "12s"),
            (Duration::from_secs(240), "4m0s"),
            (Duration::from_secs(2 * 3600 + 13 * 60 + 5), "2h13m5s"),
        ] {
            assert_eq!(format_duration(duration), text);
            assert!(parse_duration(text).is_ok(), "{text} parses back");
        }
    }

    #[test]
    fn durations_parse_like_go() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5h", Duration::from_secs(5400)),
            ("300ms", Duration::from_millis(300)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
            ("1h0.5s", Duration::from_millis(3_600_500)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn durations_reject_what_go_and_the_schema_reject() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        assert_eq!(
            parse_duration("10"),
            Err(DurationError::MissingUnit {
                number: "10".into()
            })
        );
        assert_eq!(
            parse_duration("7d"),
            Err(DurationError::UnknownUnit { unit: "d".into() })
        );
        assert_eq!(
            parse_duration("-5s"),
            Err(DurationError::ExpectedNumber { at: 0 })
        );
        assert_eq!(
            parse_duration("1.s"),
            Err(DurationError::ExpectedNumber { at: 2 })
        );
        assert_eq!(
            parse_duration("1h m"),
            Err(DurationError::UnknownUnit { unit: "h m".into() })
        );
        assert_eq!(parse_duration("2562048h"), Err(DurationError::Overflow));
        assert!(parse_duration("2562047h").is_ok());
    }

    #[test]
    fn byte_sizes_parse_like_kubernetes_quantities() {
        let cases = [
            ("67108864", 67_108_864),
            ("64Mi", 64 << 20),
            ("1Gi", 1 << 30),
            ("1.5Ki", 1536),
            ("500M", 500_000_000),
            ("2k", 2000),
            ("0.5", 1),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_bytes(&Quantity(text.into())), Ok(expected), "{text}");
        }
    }

    #[test]
    fn byte_sizes_reject_nonsense() {
        for text in ["", "Mi", "64MB", "1..5", "1.", ".5", "-1", "64 Mi"] {
            assert_eq!(
                parse_bytes(&Quantity(text.into())),
                Err(ByteSizeError::Syntax),
                "{text}"
            );
        }
        assert_eq!(
            parse_bytes(&Quantity("0Mi".into())),
            Err(ByteSizeError::Zero)
        );
        assert_eq!(
            parse_bytes(&Quantity("16Ei".into())),
            Err(ByteSizeError::Overflow)
        );
    }
}
