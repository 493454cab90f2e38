//! A result row as JSON, for a `sql` step's output and a `[preflight]` query: every common column
//! type of each engine becomes the JSON value a reader expects, and any other type is refused
//! with the column's name and type (never a panic, never a silent `null`).
//!
//! | PostgreSQL | JSON |
//! |---|---|
//! | `bool` | boolean |
//! | `int2`, `int4`, `int8`, `oid` | number |
//! | `float4`, `float8` | number (`NaN` and infinities: the strings `"NaN"`, `"Infinity"`, `"-Infinity"`) |
//! | `numeric` | **string**, exactly as PostgreSQL prints it (`"12.50"`): a JSON number would pass through an `f64` in most readers and lose digits |
//! | `text`, `varchar`, `bpchar`, `char`, `name`, `citext`, enums | string |
//! | `uuid` | string, lower-case hyphenated |
//! | `date`, `time`, `timestamp` | string, ISO 8601 (`2024-03-01`, `13:45:00.5`, `2024-03-01T13:45:00.5`) |
//! | `timestamptz` | string, RFC 3339 in UTC (`2024-03-01T12:45:00Z`) |
//! | `interval` | string, as PostgreSQL prints it (`1 year 2 mons 3 days 04:05:06`) |
//! | `json`, `jsonb` | the JSON value itself |
//! | `bytea` | string, `\x` and lower-case hex |
//! | `inet`, `cidr` | string, as PostgreSQL prints it |
//! | arrays of these | arrays (nested per dimension), NULL elements `null` |
//! | domains | as their base type |
//!
//! MySQL/MariaDB: integers (signed and unsigned), `BIT` and `YEAR` numbers; `FLOAT`/`DOUBLE`
//! numbers; `DECIMAL` a string (exact, as for `numeric`); `DATE`, `TIME`, `DATETIME` ISO strings,
//! `TIMESTAMP` RFC 3339 in UTC; `JSON` the value (MariaDB's `JSON` is a `LONGTEXT` alias and
//! arrives as text: a string); text, `ENUM`, `SET` strings; binary strings and blobs `\x…` hex.
//!
//! SQLite: by each value's storage class: `INTEGER` number, `REAL` number, `TEXT` string, `BLOB`
//! `\x…` hex, `NULL` null.

use serde_json::{Map, Number, Value};
use sqlx::postgres::{PgRow, PgTypeInfo, PgTypeKind};
use sqlx::types::chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::{Column, Row, TypeInfo, ValueRef};

/// Why a column cannot become JSON: permanent (the same row fails the same way).
pub(crate) fn unsupported(column: &str, data_type: &str) -> String {
    format!(
        "column `{column}` is of type `{data_type}`, which rewind cannot turn into JSON; \
         cast it to text in the query (`CAST({column} AS TEXT)`)"
    )
}

/// A PostgreSQL row as a JSON object, by column name.
pub(crate) fn pg_row(row: &PgRow) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(|e| format!("column `{}`: {e}", col.name()))?;
        let v = if raw.is_null() {
            Value::Null
        } else {
            let bytes = raw.as_bytes().map_err(|e| format!("column `{}`: {e}", col.name()))?;
            pg_value(col.type_info(), bytes).map_err(|bad| {
                if bad.is_empty() {
                    unsupported(col.name(), col.type_info().name())
                } else {
                    format!("column `{}` (`{}`): {bad}", col.name(), col.type_info().name())
                }
            })?
        };
        out.insert(col.name().to_owned(), v);
    }
    Ok(out)
}

/// One PostgreSQL value in binary format. `Err("")`: the type is not supported; any other
/// `Err`: the bytes are not what the type says.
fn pg_value(ty: &PgTypeInfo, b: &[u8]) -> Result<Value, String> {
    match ty.kind() {
        PgTypeKind::Enum(_) => return text(b),
        PgTypeKind::Domain(base) => return pg_value(base, b),
        PgTypeKind::Array(elem) => return pg_array(elem, b),
        _ => {}
    }
    let Some(oid) = ty.oid() else {
        return if ty.name().eq_ignore_ascii_case("citext") { text(b) } else { Err(String::new()) };
    };
    match oid.0 {
        16 => Ok(Value::Bool(fixed::<1>(b)?[0] != 0)),
        21 => Ok(i16::from_be_bytes(fixed(b)?).into()),
        23 => Ok(i32::from_be_bytes(fixed(b)?).into()),
        20 => Ok(i64::from_be_bytes(fixed(b)?).into()),
        26 => Ok(u32::from_be_bytes(fixed(b)?).into()),
        700 => Ok(float(f64::from(f32::from_be_bytes(fixed(b)?)))),
        701 => Ok(float(f64::from_be_bytes(fixed(b)?))),
        1700 => numeric(b).map(Value::String),
        18 | 19 | 25 | 1042 | 1043 | 705 => text(b),
        2950 => Ok(Value::String(uuid::Uuid::from_bytes(fixed(b)?).to_string())),
        1082 => date(i32::from_be_bytes(fixed(b)?)),
        1083 => time(i64::from_be_bytes(fixed(b)?)),
        1114 => timestamp(i64::from_be_bytes(fixed(b)?))
            .map(|t| t.naive_utc().format(NAIVE).to_string().into()),
        1184 => timestamp(i64::from_be_bytes(fixed(b)?)).map(|t| t.format(UTC).to_string().into()),
        1186 => interval(b).map(Value::String),
        114 => json(b),
        3802 => match b.split_first() {
            Some((1, rest)) => json(rest),
            _ => Err("a jsonb value of an unknown version".to_owned()),
        },
        17 => Ok(Value::String(hex(b))),
        869 | 650 => inet(b, oid.0 == 650).map(Value::String),
        _ => Err(String::new()),
    }
}

/// An array in binary format: dimensions, then each element (length -1: NULL).
fn pg_array(elem: &PgTypeInfo, b: &[u8]) -> Result<Value, String> {
    let mut r = Reader(b);
    let ndim = r.i32()?;
    let _has_null = r.i32()?;
    let _elem_oid = r.i32()?;
    if ndim == 0 {
        return Ok(Value::Array(Vec::new()));
    }
    let mut dims = Vec::new();
    for _ in 0..ndim {
        let len = usize::try_from(r.i32()?).map_err(|_| "a negative array length".to_owned())?;
        let _lower = r.i32()?;
        dims.push(len);
    }
    let total: usize = dims.iter().product();
    let mut flat = Vec::with_capacity(total);
    for _ in 0..total {
        let len = r.i32()?;
        if len < 0 {
            flat.push(Value::Null);
        } else {
            let bytes = r.take(usize::try_from(len).map_err(|e| e.to_string())?)?;
            flat.push(pg_value(elem, bytes)?);
        }
    }
    Ok(nest(&dims, &mut flat.into_iter()))
}

/// The flat elements as nested arrays of `dims`.
fn nest(dims: &[usize], flat: &mut impl Iterator<Item = Value>) -> Value {
    match dims.split_first() {
        None => flat.next().unwrap_or(Value::Null),
        Some((n, rest)) => Value::Array((0..*n).map(|_| nest(rest, flat)).collect()),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a value shorter than its type".to_owned());
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(fixed(self.take(2)?)?))
    }

    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(fixed(self.take(4)?)?))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(fixed(self.take(8)?)?))
    }
}

fn fixed<const N: usize>(b: &[u8]) -> Result<[u8; N], String> {
    b.try_into().map_err(|_| format!("{} bytes where {N} were expected", b.len()))
}

fn text(b: &[u8]) -> Result<Value, String> {
    std::str::from_utf8(b).map(|s| Value::String(s.to_owned())).map_err(|e| e.to_string())
}

fn json(b: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(b).map_err(|e| e.to_string())
}

/// A float as a JSON number; NaN and the infinities, which JSON has no numbers for, as strings.
fn float(f: f64) -> Value {
    match Number::from_f64(f) {
        Some(n) => Value::Number(n),
        None if f.is_nan() => Value::String("NaN".to_owned()),
        None if f > 0.0 => Value::String("Infinity".to_owned()),
        None => Value::String("-Infinity".to_owned()),
    }
}

/// `\x` and lower-case hex, as PostgreSQL prints `bytea`.
pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("\\x");
    for byte in b {
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// ISO 8601 without a zone; the fraction only as long as it needs (none, 3, 6 or 9 digits).
const NAIVE: &str = "%Y-%m-%dT%H:%M:%S%.f";
/// RFC 3339 in UTC.
const UTC: &str = "%Y-%m-%dT%H:%M:%S%.fZ";
/// 2000-01-01, PostgreSQL's epoch, in days from 0001-01-01 (day 1) and seconds from 1970.
const PG_EPOCH_DAYS_FROM_CE: i32 = 730_120;
const PG_EPOCH_MICROS_FROM_UNIX: i64 = 946_684_800_000_000;

fn date(days: i32) -> Result<Value, String> {
    match days {
        i32::MAX => Ok("infinity".into()),
        i32::MIN => Ok("-infinity".into()),
        _ => days
            .checked_add(PG_EPOCH_DAYS_FROM_CE)
            .and_then(NaiveDate::from_num_days_from_ce_opt)
            .map(|d| Value::String(d.format("%Y-%m-%d").to_string()))
            .ok_or_else(|| format!("date {days} days from 2000-01-01 is out of range")),
    }
}

fn time(micros: i64) -> Result<Value, String> {
    let secs = u32::try_from(micros.div_euclid(1_000_000)).map_err(|e| e.to_string())?;
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1000).map_err(|e| e.to_string())?;
    let t = NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos)
        .ok_or_else(|| format!("time {micros}µs is out of range"))?;
    Ok(t.format("%H:%M:%S%.f").to_string().into())
}

/// A timestamp (microseconds from 2000-01-01) as a UTC instant; infinities are refused.
fn timestamp(micros: i64) -> Result<DateTime<Utc>, String> {
    micros
        .checked_add(PG_EPOCH_MICROS_FROM_UNIX)
        .and_then(DateTime::<Utc>::from_timestamp_micros)
        .filter(|_| micros != i64::MAX && micros != i64::MIN)
        .ok_or_else(|| format!("timestamp {micros}µs from 2000-01-01 is out of range (infinity?)"))
}

/// `interval` as PostgreSQL prints it with the default `IntervalStyle` (`postgres`).
fn interval(b: &[u8]) -> Result<String, String> {
    let mut r = Reader(b);
    let micros = r.i64()?;
    let days = r.i32()?;
    let months = r.i32()?;
    let mut parts = Vec::new();
    let unit = |n: i64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let (years, mons) = (months / 12, months % 12);
    if years != 0 {
        parts.push(unit(i64::from(years), "year", "years"));
    }
    if mons != 0 {
        parts.push(unit(i64::from(mons), "mon", "mons"));
    }
    if days != 0 {
        parts.push(unit(i64::from(days), "day", "days"));
    }
    if micros != 0 || parts.is_empty() {
        let sign = if micros < 0 { "-" } else { "" };
        let m = micros.unsigned_abs();
        let (h, rest) = (m / 3_600_000_000, m % 3_600_000_000);
        let (min, rest) = (rest / 60_000_000, rest % 60_000_000);
        let (s, frac) = (rest / 1_000_000, rest % 1_000_000);
        let mut t = format!("{sign}{h:02}:{min:02}:{s:02}");
        if frac != 0 {
            t.push_str(format!(".{frac:06}").trim_end_matches('0'));
        }
        parts.push(t);
    }
    Ok(parts.join(" "))
}

/// `numeric` in binary format (base-10000 digits, a weight, a sign, a display scale) as
/// PostgreSQL prints it: every digit kept, trailing zeros up to the scale.
fn numeric(b: &[u8]) -> Result<String, String> {
    let mut r = Reader(b);
    let ndigits = usize::try_from(r.i16()?).map_err(|e| e.to_string())?;
    let weight = i32::from(r.i16()?);
    let sign = r.i16()? as u16;
    let dscale = usize::try_from(r.i16()?).map_err(|e| e.to_string())?;
    match sign {
        0xC000 => return Ok("NaN".to_owned()),
        0xD000 => return Ok("Infinity".to_owned()),
        0xF000 => return Ok("-Infinity".to_owned()),
        _ => {}
    }
    let digits = (0..ndigits).map(|_| r.i16()).collect::<Result<Vec<_>, _>>()?;
    let digit = |i: i32| -> i16 {
        usize::try_from(i).ok().and_then(|i| digits.get(i)).copied().unwrap_or(0)
    };
    let mut int = String::new();
    for i in 0..=weight {
        let d = digit(i);
        if int.is_empty() {
            if d != 0 {
                int = d.to_string();
            }
        } else {
            int.push_str(&format!("{d:04}"));
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    let mut frac = String::new();
    let mut i = weight + 1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", digit(i)));
        i += 1;
    }
    frac.truncate(dscale);
    let minus = if sign == 0x4000 { "-" } else { "" };
    Ok(if frac.is_empty() { format!("{minus}{int}") } else { format!("{minus}{int}.{frac}") })
}

/// `inet`/`cidr` in binary format (family, bits, is-cidr, length, address) as PostgreSQL
/// prints it: an `inet` of a whole address without its prefix length.
fn inet(b: &[u8], cidr: bool) -> Result<String, String> {
    let mut r = Reader(b);
    let head = r.take(4)?;
    let (family, bits, len) = (head[0], head[1], usize::from(head[3]));
    let addr = r.take(len)?;
    let (ip, full): (std::net::IpAddr, u8) = match family {
        2 => (std::net::Ipv4Addr::from(fixed::<4>(addr)?).into(), 32),
        3 => (std::net::Ipv6Addr::from(fixed::<16>(addr)?).into(), 128),
        other => return Err(format!("an address of unknown family {other}")),
    };
    Ok(if bits == full && !cidr { ip.to_string() } else { format!("{ip}/{bits}") })
}

/// A MySQL/MariaDB row as a JSON object, by column name.
pub(crate) fn mysql_row(row: &sqlx::mysql::MySqlRow) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let info = col.type_info();
        let ty = info.name();
        // A string column is text unless its collation is `binary` (sqlx names a `_bin`
        // collation's text `VARBINARY`/`BLOB` too).
        let text = <str as sqlx::Type<sqlx::MySql>>::compatible(info);
        let v = mysql_value(row, i, ty, text).map_err(|bad| {
            if bad.is_empty() {
                unsupported(col.name(), ty)
            } else {
                format!("column `{}` (`{ty}`): {bad}", col.name())
            }
        })?;
        out.insert(col.name().to_owned(), v);
    }
    Ok(out)
}

/// One MySQL value, decoded by sqlx as the Rust type that holds every value of `ty` exactly.
fn mysql_value(
    row: &sqlx::mysql::MySqlRow,
    i: usize,
    ty: &str,
    text: bool,
) -> Result<Value, String> {
    use sqlx::mysql::types::MySqlTime;
    fn get<'r, T: sqlx::Decode<'r, sqlx::MySql>>(
        row: &'r sqlx::mysql::MySqlRow,
        i: usize,
    ) -> Result<Option<T>, String> {
        row.try_get_unchecked::<Option<T>, _>(i).map_err(|e| e.to_string())
    }
    let or_null = |v: Option<Value>| v.unwrap_or(Value::Null);
    Ok(match ty {
        "NULL" => Value::Null,
        "BOOLEAN" | "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" => {
            or_null(get::<i64>(row, i)?.map(Value::from))
        }
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED"
        | "BIGINT UNSIGNED" | "BIT" => or_null(get::<u64>(row, i)?.map(Value::from)),
        "YEAR" => or_null(get::<u16>(row, i)?.map(Value::from)),
        "FLOAT" => or_null(get::<f32>(row, i)?.map(|f| float(f64::from(f)))),
        "DOUBLE" => or_null(get::<f64>(row, i)?.map(float)),
        "DECIMAL" => or_null(get::<String>(row, i)?.map(Value::from)),
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET"
        | "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB"
            if text =>
        {
            or_null(get::<String>(row, i)?.map(Value::from))
        }
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "BINARY"
        | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" => {
            or_null(get::<Vec<u8>>(row, i)?.map(|b| Value::String(hex(&b))))
        }
        "JSON" => match get::<String>(row, i)? {
            Some(s) => serde_json::from_str(&s).map_err(|e| e.to_string())?,
            None => Value::Null,
        },
        "DATE" => {
            or_null(get::<NaiveDate>(row, i)?.map(|d| d.format("%Y-%m-%d").to_string().into()))
        }
        "TIME" => or_null(get::<MySqlTime>(row, i)?.map(|t| t.to_string().into())),
        "DATETIME" => {
            or_null(get::<NaiveDateTime>(row, i)?.map(|t| t.format(NAIVE).to_string().into()))
        }
        "TIMESTAMP" => {
            or_null(get::<DateTime<Utc>>(row, i)?.map(|t| t.format(UTC).to_string().into()))
        }
        _ => return Err(String::new()),
    })
}

/// A SQLite row as a JSON object, by column name: each value by its storage class.
pub(crate) fn sqlite_row(row: &sqlx::sqlite::SqliteRow) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(|e| format!("column `{}`: {e}", col.name()))?;
        let class =
            if raw.is_null() { "NULL".to_owned() } else { raw.type_info().name().to_owned() };
        let bad = |e: sqlx::Error| format!("column `{}`: {e}", col.name());
        let v = match class.as_str() {
            "NULL" => Value::Null,
            "INTEGER" => row.try_get_unchecked::<i64, _>(i).map_err(bad)?.into(),
            "REAL" => float(row.try_get_unchecked::<f64, _>(i).map_err(bad)?),
            "BLOB" => Value::String(hex(&row.try_get_unchecked::<Vec<u8>, _>(i).map_err(bad)?)),
            _ => row.try_get_unchecked::<String, _>(i).map_err(bad)?.into(),
        };
        out.insert(col.name().to_owned(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numerics_keep_every_digit() {
        // 12345678.9012 = digits [1234, 5678, 9012], weight 1, scale 4.
        let mut b = Vec::new();
        for v in [3i16, 1, 0, 4, 1234, 5678, 9012] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(numeric(&b).unwrap_or_default(), "12345678.9012");
        // -0.05 with scale 3: digits [500], weight -1.
        let mut b = Vec::new();
        for v in [1i16, -1, 0x4000, 3, 500] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(numeric(&b).unwrap_or_default(), "-0.050");
    }

    #[test]
    fn intervals_print_as_postgres_does() {
        let iv = |micros: i64, days: i32, months: i32| {
            let mut b = micros.to_be_bytes().to_vec();
            b.extend_from_slice(&days.to_be_bytes());
            b.extend_from_slice(&months.to_be_bytes());
            interval(&b).unwrap_or_default()
        };
        assert_eq!(iv(14_706_789_000, 3, 14), "1 year 2 mons 3 days 04:05:06.789");
        assert_eq!(iv(0, 0, 0), "00:00:00");
        assert_eq!(iv(-3_600_000_000, 1, 0), "1 day -01:00:00");
    }
}
