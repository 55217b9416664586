//! The value rules of the contract: a [`RawRow`] becomes an [`Event`] or a [`Rejection`] whose
//! reason names the field, the problem and the value.

use crate::event::{Column, Event, EventType, COLUMNS};
use crate::wire::{Defect, RawRow, RowRef, WIRE_VERSION};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};
use std::fmt;

pub use crate::reason::RejectCode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: RejectCode,
    pub field: Option<Column>,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

pub const MAX_EVENT_ID_CHARS: usize = 64;
const MAX_PRICE_INTEGER_DIGITS: usize = 8;

/// A row as the rules read it, whether owned ([`RawRow`]) or borrowed from a message ([`RowRef`]).
pub trait RowValues {
    fn value(&self, column: Column) -> Option<&str>;
    fn defect(&self) -> Option<&Defect>;
    /// The JSON version the row claims, where it is not the one this build reads.
    fn unsupported_version(&self) -> Option<u32> {
        None
    }
}

impl RowValues for RawRow {
    fn value(&self, column: Column) -> Option<&str> {
        RawRow::value(self, column)
    }
    fn defect(&self) -> Option<&Defect> {
        self.defect.as_ref()
    }
    fn unsupported_version(&self) -> Option<u32> {
        (self.v != WIRE_VERSION).then_some(self.v)
    }
}

impl RowValues for RowRef<'_> {
    fn value(&self, column: Column) -> Option<&str> {
        RowRef::value(self, column)
    }
    fn defect(&self) -> Option<&Defect> {
        self.defect.as_ref()
    }
}

pub fn validate(row: &impl RowValues) -> Result<Event, Rejection> {
    if let Some(version) = row.unsupported_version() {
        return Err(Rejection {
            code: RejectCode::Undecodable,
            field: None,
            reason: format!("message format version {version} is not supported"),
        });
    }
    if let Some(defect) = row.defect() {
        return Err(Rejection {
            code: defect.code,
            field: None,
            reason: defect.reason.clone(),
        });
    }
    let missing: Vec<&str> = COLUMNS
        .into_iter()
        .filter(|column| row.value(*column).is_none())
        .map(Column::name)
        .collect();
    if let Some(first) = missing.first() {
        return Err(Rejection {
            code: RejectCode::MissingColumn,
            field: Column::from_header(first),
            reason: format!("header has no column `{}`", missing.join("`, `")),
        });
    }
    Ok(Event {
        event_id: field(row, Column::EventId, parse_event_id)?,
        user_id: field(row, Column::UserId, parse_id)?,
        event_type: field(row, Column::EventType, parse_event_type)?,
        product_id: field(row, Column::ProductId, parse_id)?,
        price_cents: field(row, Column::Price, parse_price_cents)?,
        event_time: field(row, Column::EventTime, parse_event_time)?,
    })
}

fn field<T>(
    row: &impl RowValues,
    column: Column,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, Rejection> {
    let value = row.value(column).unwrap_or_default().trim();
    parse(value).map_err(|problem| Rejection {
        code: RejectCode::InvalidField,
        field: Some(column),
        reason: format!("field `{column}`: {problem}: {}", shown(value)),
    })
}

/// The value as quoted in a reason, cut short so a 10 MB field does not make a 10 MB reason.
fn shown(value: &str) -> String {
    const LIMIT: usize = 80;
    match value.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{:?}...", &value[..cut]),
        None => format!("{value:?}"),
    }
}

pub fn parse_event_id(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if value.chars().count() > MAX_EVENT_ID_CHARS {
        return Err(format!("is longer than {MAX_EVENT_ID_CHARS} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    Ok(value.to_owned())
}

/// `user_id` and `product_id`: ASCII digits only, 1..=2147483647.
pub fn parse_id(value: &str) -> Result<i32, String> {
    if value.is_empty() {
        return Err("is empty".into());
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("is not a whole number of ASCII digits".into());
    }
    let significant = value.trim_start_matches('0');
    match significant.parse::<i32>() {
        Ok(id) if id >= 1 => Ok(id),
        _ if significant.is_empty() => Err("must be at least 1".into()),
        _ => Err("is out of range 1..=2147483647".into()),
    }
}

pub fn parse_event_type(value: &str) -> Result<EventType, String> {
    EventType::parse(value)
        .ok_or_else(|| "is not one of view, add_to_cart, remove_from_cart, purchase".into())
}

/// A plain decimal: digits, an optional point and at most two digits after it, 0..=99999999.99.
pub fn parse_price_cents(value: &str) -> Result<i64, String> {
    const PLAIN: &str = "is not a plain decimal (digits, optional point, at most 2 decimals)";
    let (integer, fraction) = value.split_once('.').unwrap_or((value, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if integer.is_empty() || !all_digits(integer) || !all_digits(fraction) {
        return Err(PLAIN.into());
    }
    if fraction.len() > 2 {
        return Err("has more than 2 decimals".into());
    }
    let integer = integer.trim_start_matches('0');
    if integer.len() > MAX_PRICE_INTEGER_DIGITS {
        return Err("is out of range 0..=99999999.99".into());
    }
    let whole: i64 = if integer.is_empty() {
        0
    } else {
        integer.parse().map_err(|_| PLAIN.to_owned())?
    };
    // At most two digits, checked above: "5" is 50 cents, "05" is 5.
    let cents = i64::from(scaled_digits(fraction.as_bytes(), 2));
    Ok(whole * 100 + cents)
}

/// ASCII digits read as the first of `places` decimal places: `b"5"` in 2 places is 50. Callers
/// pass at most `places` digits, all checked to be ASCII digits.
fn scaled_digits(digits: &[u8], places: usize) -> u32 {
    let value = digits
        .iter()
        .fold(0u32, |n, digit| n * 10 + u32::from(digit - b'0'));
    value * 10u32.pow((places - digits.len()) as u32)
}

/// RFC 3339 with `T` or a space, an optional fraction (kept to the microsecond), and `Z`, an
/// offset `+HH:MM`/`-HH:MM`, or nothing (UTC). One grammar, read top to bottom in one function.
pub fn parse_event_time(value: &str) -> Result<DateTime<Utc>, String> {
    const SHAPE: &str = "is not an RFC 3339 date-time like 2026-11-25T13:00:00.123Z";
    let bytes = value.as_bytes();
    if bytes.len() < 19 || !value.is_char_boundary(19) {
        return Err(SHAPE.into());
    }
    let number = |range: std::ops::Range<usize>| -> Result<u32, String> {
        let part = &bytes[range];
        if part.iter().all(u8::is_ascii_digit) {
            Ok(part.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
        } else {
            Err(SHAPE.to_owned())
        }
    };
    let separators_ok = bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !separators_ok {
        return Err(SHAPE.into());
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);

    let mut rest = &value[19..];
    let mut micros = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return Err(SHAPE.into());
        }
        micros = scaled_digits(&fraction.as_bytes()[..digits.min(6)], 6);
        rest = &fraction[digits..];
    }
    let offset_minutes: i64 = match rest.as_bytes() {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [h1, h2, m1, m2];
            if !digits.iter().all(|d| d.is_ascii_digit()) {
                return Err(SHAPE.into());
            }
            let hours = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let minutes = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if hours > 23 || minutes > 59 {
                return Err("has an offset that does not exist".into());
            }
            let total = hours * 60 + minutes;
            if *sign == b'-' {
                -total
            } else {
                total
            }
        }
        _ => return Err(SHAPE.into()),
    };
    if year == 0 {
        return Err("has year 0000, which does not exist".into());
    }
    let date = NaiveDate::from_ymd_opt(year as i32, month, day)
        .ok_or_else(|| "has a date that does not exist".to_owned())?;
    let time = NaiveTime::from_hms_micro_opt(hour, minute, second, micros)
        .filter(|_| second <= 59)
        .ok_or_else(|| "has a time that does not exist".to_owned())?;
    let local = NaiveDateTime::new(date, time);
    let utc = local
        .checked_sub_signed(TimeDelta::minutes(offset_minutes))
        .ok_or_else(|| SHAPE.to_owned())?;
    Ok(utc.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(values: [&str; 6]) -> RawRow {
        RawRow {
            v: WIRE_VERSION,
            file: "f.csv".into(),
            file_id: "id".into(),
            line: 2,
            landed_ms: 0,
            values: values.map(|v| Some(v.to_owned())),
            defect: None,
        }
    }

    const GOOD: [&str; 6] = ["e1", "42", "view", "7", "19.99", "2026-11-25T13:00:00Z"];

    fn with(column: Column, value: &str) -> RawRow {
        let mut values = GOOD;
        values[column.index()] = value;
        row(values)
    }

    fn rejection(column: Column, value: &str) -> Rejection {
        let rejection = validate(&with(column, value)).expect_err(value);
        assert_eq!(rejection.code, RejectCode::InvalidField);
        assert_eq!(rejection.field, Some(column));
        assert!(
            rejection.reason.starts_with(&format!("field `{column}`: ")),
            "{}",
            rejection.reason
        );
        rejection
    }

    #[test]
    fn a_good_row_validates_trimmed() {
        let event = validate(&row([
            "  e1 ",
            " 42",
            " VIEW ",
            "7 ",
            " 19.9 ",
            " 2026-11-25T13:00:00Z ",
        ]))
        .unwrap();
        assert_eq!(event.event_id, "e1");
        assert_eq!(event.user_id, 42);
        assert_eq!(event.event_type, EventType::View);
        assert_eq!(event.product_id, 7);
        assert_eq!(event.price_cents, 1990);
        assert_eq!(
            event.event_time,
            Utc.with_ymd_and_hms(2026, 11, 25, 13, 0, 0).unwrap()
        );
    }

    #[test]
    fn event_id_rules() {
        rejection(Column::EventId, "");
        rejection(Column::EventId, "   ");
        rejection(Column::EventId, &"x".repeat(65));
        rejection(Column::EventId, "a\u{0}b");
        rejection(Column::EventId, "a\tb");
        rejection(Column::EventId, "a\u{85}b");
        // 64 characters is fine even when that is more than 64 bytes.
        let long = "é".repeat(64);
        assert_eq!(
            validate(&with(Column::EventId, &long)).unwrap().event_id,
            long
        );
    }

    #[test]
    fn id_rules() {
        for column in [Column::UserId, Column::ProductId] {
            for bad in [
                "",
                "0",
                "000",
                "-1",
                "+1",
                "1.0",
                "1e3",
                "2147483648",
                "99999999999999999999",
                "١٢",
                "12a",
            ] {
                rejection(column, bad);
            }
            assert_eq!(parse_id("2147483647"), Ok(i32::MAX));
            assert_eq!(parse_id("0007"), Ok(7));
            assert_eq!(parse_id("1"), Ok(1));
        }
        assert!(rejection(Column::UserId, "2147483648")
            .reason
            .contains("out of range"));
    }

    #[test]
    fn event_type_rules() {
        for (input, kind) in [
            ("view", EventType::View),
            ("Add_To_Cart", EventType::AddToCart),
            ("REMOVE_FROM_CART", EventType::RemoveFromCart),
            ("purchase", EventType::Purchase),
        ] {
            assert_eq!(
                validate(&with(Column::EventType, input))
                    .unwrap()
                    .event_type,
                kind
            );
        }
        for bad in ["", "click", "add to cart", "views"] {
            rejection(Column::EventType, bad);
        }
    }

    #[test]
    fn price_rules() {
        for (input, cents) in [
            ("0", 0),
            ("0.00", 0),
            ("5", 500),
            ("5.", 500),
            ("5.5", 550),
            ("5.05", 505),
            ("007.10", 710),
            ("99999999.99", 9_999_999_999),
        ] {
            assert_eq!(parse_price_cents(input), Ok(cents), "{input}");
        }
        for bad in [
            "",
            ".5",
            "-1",
            "+1",
            "1e3",
            "1E3",
            "NaN",
            "inf",
            "1,000.00",
            "1 000",
            "5.123",
            "100000000",
            "1e309",
            "0x10",
            "$5",
        ] {
            rejection(Column::Price, bad);
        }
    }

    #[test]
    fn event_time_rules() {
        let at = |y, mo, d, h, mi, s, us| {
            Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap() + TimeDelta::microseconds(us)
        };
        for (input, expected) in [
            ("2026-11-25T13:00:00Z", at(2026, 11, 25, 13, 0, 0, 0)),
            ("2026-11-25 13:00:00", at(2026, 11, 25, 13, 0, 0, 0)),
            ("2026-11-25t13:00:00z", at(2026, 11, 25, 13, 0, 0, 0)),
            (
                "2026-11-25T13:00:00.5Z",
                at(2026, 11, 25, 13, 0, 0, 500_000),
            ),
            (
                "2026-11-25T13:00:00.123456789Z",
                at(2026, 11, 25, 13, 0, 0, 123_456),
            ),
            ("2026-11-25T13:00:00+02:00", at(2026, 11, 25, 11, 0, 0, 0)),
            ("2026-11-25T13:00:00-05:30", at(2026, 11, 25, 18, 30, 0, 0)),
            ("2024-02-29T00:00:00Z", at(2024, 2, 29, 0, 0, 0, 0)),
        ] {
            assert_eq!(parse_event_time(input), Ok(expected), "{input}");
        }
        for bad in [
            "",
            "2026-11-25",
            "2026-02-30T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-25T25:00:00Z",
            "2026-11-25T23:60:00Z",
            "2026-11-25T23:59:60Z",
            "2026-11-25T13:00:00+24:00",
            "2026-11-25T13:00:00+02:60",
            "2026-11-25T13:00:00+0200",
            "2026-11-25T13:00:00 UTC",
            "2026-11-25T13:00:00.Z",
            "2026-11-25T13:00:00.1234567890Z",
            "0000-01-01T00:00:00Z",
            "2026/11/25 13:00:00",
            "1764075600",
            "2026-11-25T13:00Z",
            "2026-13-01T00:00:00Z",
        ] {
            rejection(Column::EventTime, bad);
        }
    }

    #[test]
    fn missing_columns_are_named() {
        let mut raw = row(GOOD);
        raw.values[Column::Price.index()] = None;
        raw.values[Column::UserId.index()] = None;
        let rejection = validate(&raw).unwrap_err();
        assert_eq!(rejection.code, RejectCode::MissingColumn);
        assert_eq!(rejection.reason, "header has no column `user_id`, `price`");
    }

    #[test]
    fn defects_from_the_bridge_are_rejections() {
        let mut raw = row(GOOD);
        raw.defect = Some(Defect {
            code: RejectCode::FieldCount,
            reason: "row has 5 fields, header has 6".into(),
            raw_hex: String::new(),
        });
        assert_eq!(validate(&raw).unwrap_err().code, RejectCode::FieldCount);
        raw.defect.as_mut().unwrap().code = RejectCode::InvalidUtf8;
        assert_eq!(validate(&raw).unwrap_err().code, RejectCode::InvalidUtf8);
    }

    #[test]
    fn unknown_wire_version_is_undecodable() {
        let mut raw = row(GOOD);
        raw.v = 99;
        assert_eq!(validate(&raw).unwrap_err().code, RejectCode::Undecodable);
    }

    #[test]
    fn reasons_quote_long_values_briefly() {
        let reason = rejection(Column::Price, &"9".repeat(10_000_000)).reason;
        assert!(reason.len() < 200, "{}", reason.len());
    }

    #[test]
    fn formula_and_sql_lookalikes_are_ordinary_event_ids() {
        for id in ["=1+2", "'; DROP TABLE ecommerce_events; --", "@SUM(A1)"] {
            assert_eq!(validate(&with(Column::EventId, id)).unwrap().event_id, id);
        }
    }
}
