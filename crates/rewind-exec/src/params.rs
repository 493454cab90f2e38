//! Template values bound as statement parameters, with the parameter's type.
//!
//! A template renders to text. On PostgreSQL, text bound where the statement compares a `uuid`
//! or `bigint` column fails (`operator does not exist: uuid = text`), so a statement with
//! parameters is prepared first, its parameter types read from the server, and each value
//! converted to its parameter's type: `uuid`, `int2`/`int4`/`int8`, `float4`/`float8`,
//! `numeric`, `bool`, `date`, `time`, `timestamp`, `timestamptz`, `json`/`jsonb`, and the text
//! types (`text`, `varchar`, `bpchar`, `name`, `citext`, enums; domains as their base type). A
//! value that does not convert fails the statement permanently before it runs
//! (`$1 (= "abc") is not a uuid`); a parameter of another type is refused, naming it, with the
//! cast that makes it text.
//!
//! MySQL/MariaDB and SQLite bind the text as it is: both convert it where it meets a typed
//! column (an `INTEGER` column's affinity on SQLite; MySQL's comparison of a number with a
//! string).

use std::str::FromStr;

use sqlx::postgres::{PgArguments, PgConnection, PgTypeInfo, PgTypeKind};
use sqlx::types::chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use sqlx::{Arguments, AssertSqlSafe, Either, Executor, SqlSafeStr, Statement, TypeInfo};

/// Why a statement's parameters could not be bound.
#[derive(Debug)]
pub(crate) enum BindError {
    /// A value does not convert to its parameter's type, or the type is not supported:
    /// permanent.
    Value(String),
    /// The statement could not be prepared (the database's error).
    Prepare(sqlx::Error),
}

/// The arguments of `sql` on PostgreSQL: `params` (`$1`, `$2`, … in order) prepared on `conn`
/// and each converted to its parameter's type (see the module).
pub(crate) async fn pg_arguments(
    conn: &mut PgConnection,
    sql: &str,
    params: &[String],
) -> Result<PgArguments, BindError> {
    let mut args = PgArguments::default();
    if params.is_empty() {
        return Ok(args);
    }
    // The workflow's own text; the same statement runs next (sqlx caches it per connection).
    let stmt = conn
        .prepare(AssertSqlSafe(sql.to_owned()).into_sql_str())
        .await
        .map_err(BindError::Prepare)?;
    let types: Vec<PgTypeInfo> = match stmt.parameters() {
        Some(Either::Left(types)) => types.to_vec(),
        _ => Vec::new(),
    };
    for (i, value) in params.iter().enumerate() {
        let label = format!("${}", i + 1);
        match types.get(i) {
            Some(ty) => add(&mut args, ty, &label, value)?,
            // More values than the statement has parameters: the server says so.
            None => push(&mut args, value.clone())?,
        }
    }
    Ok(args)
}

fn push<'q, T>(args: &mut PgArguments, v: T) -> Result<(), BindError>
where
    T: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    args.add(v).map_err(|e| BindError::Value(e.to_string()))
}

/// Adds `value` as a `ty`, or says why it is not one.
fn add(args: &mut PgArguments, ty: &PgTypeInfo, label: &str, value: &str) -> Result<(), BindError> {
    let not = |what: &str| BindError::Value(format!("{label} (= {value:?}) is not {what}"));
    match ty.kind() {
        PgTypeKind::Enum(_) => return push(args, value.to_owned()),
        PgTypeKind::Domain(base) => return add(args, base, label, value),
        _ => {}
    }
    let Some(oid) = ty.oid() else {
        if ty.name().eq_ignore_ascii_case("citext") {
            return push(args, value.to_owned());
        }
        return Err(unsupported(label, ty));
    };
    match oid.0 {
        16 => push(args, parse_bool(value).ok_or_else(|| not("a bool"))?),
        21 => push(args, value.trim().parse::<i16>().map_err(|_| not("an int2 (smallint)"))?),
        23 => push(args, value.trim().parse::<i32>().map_err(|_| not("an int4 (integer)"))?),
        20 => push(args, value.trim().parse::<i64>().map_err(|_| not("an int8 (bigint)"))?),
        700 => push(args, value.trim().parse::<f32>().map_err(|_| not("a float4 (real)"))?),
        701 => {
            push(args, value.trim().parse::<f64>().map_err(|_| not("a float8 (double precision)"))?)
        }
        1700 => push(
            args,
            sqlx::types::Decimal::from_str_exact(value.trim())
                .or_else(|_| sqlx::types::Decimal::from_scientific(value.trim()))
                .map_err(|_| not("a numeric (at most 28 significant digits)"))?,
        ),
        2950 => push(args, uuid::Uuid::parse_str(value.trim()).map_err(|_| not("a uuid"))?),
        1082 => {
            push(args, NaiveDate::from_str(value.trim()).map_err(|_| not("a date (YYYY-MM-DD)"))?)
        }
        1083 => {
            push(args, NaiveTime::from_str(value.trim()).map_err(|_| not("a time (HH:MM:SS)"))?)
        }
        1114 => push(args, parse_timestamp(value).ok_or_else(|| not("a timestamp"))?),
        1184 => push(
            args,
            parse_timestamptz(value)
                .ok_or_else(|| not("a timestamptz (RFC 3339, with an offset)"))?
                .with_timezone(&Utc),
        ),
        114 | 3802 => push(
            args,
            sqlx::types::Json(
                serde_json::from_str::<serde_json::Value>(value)
                    .map_err(|_| not("a JSON value"))?,
            ),
        ),
        18 | 19 | 25 | 705 | 1042 | 1043 => push(args, value.to_owned()),
        _ => Err(unsupported(label, ty)),
    }
}

fn unsupported(label: &str, ty: &PgTypeInfo) -> BindError {
    BindError::Value(format!(
        "{label} is a parameter of type `{}`, which rewind cannot bind a template value to; \
         write `CAST({label} AS TEXT)` and cast the text in SQL",
        ty.name()
    ))
}

/// PostgreSQL's spellings of a boolean.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// `2024-03-01 13:45:00`, `2024-03-01T13:45:00.5`, or a date alone (midnight).
fn parse_timestamp(v: &str) -> Option<NaiveDateTime> {
    let v = v.trim();
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(v, f).ok())
        .or_else(|| NaiveDate::from_str(v).ok().map(|d| d.and_time(NaiveTime::MIN)))
}

/// RFC 3339 (`2024-03-01T13:45:00Z`, `…+01:00`), or with a space and a `+01`/`+0100` offset
/// as PostgreSQL prints it.
fn parse_timestamptz(v: &str) -> Option<DateTime<FixedOffset>> {
    let v = v.trim();
    DateTime::parse_from_rfc3339(v).ok().or_else(|| {
        ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"]
            .iter()
            .find_map(|f| DateTime::parse_from_str(v, f).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_in_the_usual_spellings() {
        assert!(parse_timestamp("2024-03-01 13:45:00").is_some());
        assert!(parse_timestamp("2024-03-01T13:45:00.25").is_some());
        assert!(parse_timestamp("2024-03-01").is_some());
        assert!(parse_timestamp("yesterday").is_none());
        let t = parse_timestamptz("2024-03-01 13:45:00+01").map(|t| t.with_timezone(&Utc));
        assert_eq!(t.map(|t| t.to_rfc3339()), Some("2024-03-01T12:45:00+00:00".to_owned()));
        assert!(parse_timestamptz("2024-03-01T13:45:00Z").is_some());
        assert!(parse_timestamptz("2024-03-01T13:45:00").is_none(), "no offset, no instant");
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("maybe"), None);
    }
}
