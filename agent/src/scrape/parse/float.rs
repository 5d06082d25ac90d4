//! Floats as Prometheus reads and writes them: Go's `strconv.ParseFloat` (minus hex and `_`,
//! which Prometheus rejects) and `strconv.FormatFloat(v, 'g', -1, 64)`.

/// The bits Prometheus gives a NaN read from a body (`value.NormalNaN`); the staleness marker
/// is a different NaN (`0x7ff0000000000002`), so a scraped NaN never reads as stale.
pub const NORMAL_NAN_BITS: u64 = 0x7ff8_0000_0000_0001;

/// Integers of up to this many digits are exact in an f64 and skip the general parser.
const FAST_DIGITS: usize = 15;

/// Parses a float in Go syntax: `[+-]` digits with optional `.` and exponent, `.5`, `5.`,
/// `[+-]Inf`/`Infinity` and `NaN` in any case (no sign on NaN). Hex floats and `_` digit
/// separators are rejected, and so is a finite literal beyond the f64 range (Go returns
/// `ErrRange` and Prometheus fails the scrape). The error is a short reason.
pub fn parse_go_float(s: &str) -> Result<f64, &'static str> {
    let b = s.as_bytes();
    if !b.is_empty() && b.len() <= FAST_DIGITS && b.iter().all(u8::is_ascii_digit) {
        let mut v: u64 = 0;
        for &d in b {
            v = v * 10 + u64::from(d - b'0');
        }
        // Exact: v < 10^15 < 2^53.
        return Ok(v as f64);
    }
    let (negative, body) = match b.first() {
        Some(b'+') => (false, &b[1..]),
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    if body.eq_ignore_ascii_case(b"inf") || body.eq_ignore_ascii_case(b"infinity") {
        return Ok(if negative {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        });
    }
    if body.eq_ignore_ascii_case(b"nan") {
        if body.len() != b.len() {
            return Err("NaN cannot have a sign");
        }
        return Ok(f64::from_bits(NORMAL_NAN_BITS));
    }
    if body.is_empty() {
        return Err("empty number");
    }
    // Validate the grammar ourselves: Rust's parser accepts the same decimal syntax but we
    // want Go's exact set, and a precise reason.
    let mut i = 0;
    let mut mantissa_digits = 0;
    while body.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
        mantissa_digits += 1;
    }
    if body.get(i) == Some(&b'.') {
        i += 1;
        while body.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
            mantissa_digits += 1;
        }
    }
    if mantissa_digits == 0 {
        return Err("not a number");
    }
    if matches!(body.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(body.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exponent_start = i;
        while body.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exponent_start {
            return Err("exponent has no digits");
        }
    }
    if i != body.len() {
        return Err(match body.get(i) {
            Some(b'_') => "'_' is not allowed in a number",
            Some(b'x' | b'X' | b'p' | b'P') => "hexadecimal numbers are not allowed",
            _ => "not a number",
        });
    }
    let v: f64 = s.parse().map_err(|_| "not a number")?;
    if v.is_infinite() {
        return Err("out of the float64 range");
    }
    Ok(v)
}

/// Appends `v` as Go's `strconv.FormatFloat(v, 'g', -1, 64)` does (the form Prometheus
/// client libraries expose): the shortest digits that read back as `v`, in `%e` form when the
/// decimal exponent is below -4 or at least 6 (`1e+06`, `1.5e-05`), else in `%f` form;
/// `NaN`, `+Inf`, `-Inf` for the specials.
pub(super) fn write_go_float(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
        return;
    }
    if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+Inf" } else { b"-Inf" });
        return;
    }
    // Rust's `{:e}` without precision is the shortest round-trip representation, the same
    // digits Go picks; only the layout differs.
    let sci = format!("{v:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: Vec<u8> = mantissa.bytes().filter(|&c| c != b'.').collect();
    if negative {
        out.push(b'-');
    }
    if !(-4..6).contains(&exponent) {
        out.push(digits[0]);
        if digits.len() > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if exponent < 0 { b'-' } else { b'+' });
        let magnitude = exponent.unsigned_abs();
        if magnitude < 10 {
            out.push(b'0');
        }
        out.extend_from_slice(magnitude.to_string().as_bytes());
        return;
    }
    // Position of the decimal point relative to the first digit.
    let point = exponent + 1;
    if point <= 0 {
        out.extend_from_slice(b"0.");
        out.extend(std::iter::repeat_n(b'0', point.unsigned_abs() as usize));
        out.extend_from_slice(&digits);
        return;
    }
    let point = point as usize;
    if point >= digits.len() {
        out.extend_from_slice(&digits);
        out.extend(std::iter::repeat_n(b'0', point - digits.len()));
    } else {
        out.extend_from_slice(&digits[..point]);
        out.push(b'.');
        out.extend_from_slice(&digits[point..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(v: f64) -> String {
        let mut out = Vec::new();
        write_go_float(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn parses_go_syntax() {
        for (text, want) in [
            ("0", 0.0),
            ("1", 1.0),
            ("-0.5", -0.5),
            (".5", 0.5),
            ("5.", 5.0),
            ("+5", 5.0),
            ("1e3", 1000.0),
            ("1E+3", 1000.0),
            ("2.5e-3", 0.0025),
            ("123456789012345678", 123_456_789_012_345_680.0),
            ("1e-400", 0.0),
        ] {
            assert_eq!(parse_go_float(text), Ok(want), "{text}");
        }
        for text in ["Inf", "+Inf", "inf", "+infinity", "INFINITY"] {
            assert_eq!(parse_go_float(text), Ok(f64::INFINITY), "{text}");
        }
        assert_eq!(parse_go_float("-Inf"), Ok(f64::NEG_INFINITY));
        for text in ["NaN", "nan", "NAN"] {
            assert_eq!(parse_go_float(text).map(f64::to_bits), Ok(NORMAL_NAN_BITS));
        }
    }

    #[test]
    fn rejects_what_go_and_prometheus_reject() {
        for text in [
            "", "+", "-", ".", "e3", "1e", "1e+", "1_000", "0x10", "0x1p-2", "1.2.3", "--1",
            "+NaN", "-nan", "infinit", "1e400", "-1e400", "1 ", " 1", "1,5", "NaN1", "١",
        ] {
            assert!(parse_go_float(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn formats_like_go_g_shortest() {
        for (v, want) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (123456.0, "123456"),
            (1234567.0, "1.234567e+06"),
            (1e6, "1e+06"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (0.30000000000000004, "0.30000000000000004"),
            (100.25, "100.25"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(go(v), want, "{v:e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn format_then_parse_is_identity(bits in proptest::num::u64::ANY) {
            let v = f64::from_bits(bits);
            let text = go(v);
            let back = parse_go_float(&text).unwrap();
            if v.is_nan() {
                proptest::prop_assert!(back.is_nan());
            } else {
                proptest::prop_assert_eq!(back.to_bits(), v.to_bits(), "{}", text);
            }
        }
    }
}
