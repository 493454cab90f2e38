//! Typed identifiers. Nothing crosses an API as a bare string: a target ID cannot be passed where a
//! run ID is expected, and every name is validated once, where it is parsed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a string is not a valid identifier of some kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is not valid: {rule}")]
pub struct IdError {
    /// Which kind of identifier was being parsed ("step id", "target id", ...).
    pub what: &'static str,
    /// The offending text.
    pub value: String,
    /// What a valid value looks like.
    pub rule: &'static str,
}

fn is_name(s: &str, first: impl Fn(u8) -> bool, rest: impl Fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && first(b[0]) && b[1..].iter().all(|&c| rest(c))
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $rule:literal, $first:expr, $rest:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` and wraps it.
            pub fn new(s: &str) -> Result<Self, IdError> {
                if is_name(s, $first, $rest) {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError { what: $what, value: s.to_owned(), rule: $rule })
                }
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn lower_or_digit(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

name_type!(
    /// A step of a workflow: `[a-z0-9][a-z0-9._-]*`, e.g. `catalog.undelete`. The part before the
    /// first `.` names the store or system the step touches.
    StepId,
    "step id",
    "use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
    lower_or_digit,
    |c| lower_or_digit(c) || matches!(c, b'.' | b'_' | b'-')
);

name_type!(
    /// The kind of a target (`site`, `app`, ...). A workflow restores targets of exactly one kind.
    TargetKind,
    "target kind",
    "use lowercase letters, digits, '_' and '-', starting with a letter",
    |c| c.is_ascii_lowercase(),
    |c| lower_or_digit(c) || matches!(c, b'_' | b'-')
);

name_type!(
    /// A named resource pool (`db_restore`, `api`).
    PoolName,
    "resource name",
    "use lowercase letters, digits, '_' and '-', starting with a letter",
    |c| c.is_ascii_lowercase(),
    |c| lower_or_digit(c) || matches!(c, b'_' | b'-')
);

name_type!(
    /// A target attribute (`shard`, `products`, `region`).
    AttrName,
    "attribute name",
    "use letters, digits and '_', starting with a letter or '_'",
    |c| c.is_ascii_alphabetic() || c == b'_',
    |c| c.is_ascii_alphanumeric() || c == b'_'
);

name_type!(
    /// A named database connection declared under `[connections]`.
    ConnectionName,
    "connection name",
    "use lowercase letters, digits, '_' and '-', starting with a letter",
    |c| c.is_ascii_lowercase(),
    |c| lower_or_digit(c) || matches!(c, b'_' | b'-')
);

impl StepId {
    /// The store or system the step touches: the id up to its first `.` (`catalog` for
    /// `catalog.undelete`), or the whole id.
    pub fn store(&self) -> &str {
        self.0.split('.').next().unwrap_or(&self.0)
    }
}

macro_rules! uuid_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(u: Uuid) -> Self {
                Self(u)
            }

            /// The all-zero id: a stand-in where none exists yet (a preflight, a dry run).
            pub const NIL: Self = Self(Uuid::nil());

            /// The underlying UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            /// Only the canonical hyphenated form (36 characters) is accepted, in either case.
            fn from_str(s: &str) -> Result<Self, IdError> {
                let err = || IdError {
                    what: $what,
                    value: s.to_owned(),
                    rule: "expected a UUID like 6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b",
                };
                if s.len() != 36 {
                    return Err(err());
                }
                Uuid::try_parse(s).map(Self).map_err(|_| err())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_type!(
    /// One thing being restored (a site).
    TargetId,
    "target id"
);

uuid_type!(
    /// One execution of a plan.
    RunId,
    "run id"
);

/// What one step instance is about: the whole run, one target, or one group of targets sharing an
/// attribute value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubjectKey {
    /// The single instance of a run-scope step.
    Run,
    /// The instance of a target-scope step for this target.
    Target(TargetId),
    /// The instance of a `group:<attr>` step for the targets whose `attr` holds `value`.
    Group {
        /// The grouping attribute.
        attr: AttrName,
        /// The attribute value shared by the group.
        value: String,
    },
}

/// The stable name of a step instance: `STEP` (run scope), `STEP/<target-uuid>` (target scope) or
/// `STEP/<attr>=<value>` (group scope).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    /// The step this is an instance of.
    pub step: StepId,
    /// What the instance is about.
    pub subject: SubjectKey,
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            SubjectKey::Run => write!(f, "{}", self.step),
            SubjectKey::Target(t) => write!(f, "{}/{}", self.step, t),
            SubjectKey::Group { attr, value } => write!(f, "{}/{}={}", self.step, attr, value),
        }
    }
}

impl FromStr for InstanceKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let Some((step, rest)) = s.split_once('/') else {
            return Ok(Self { step: StepId::new(s)?, subject: SubjectKey::Run });
        };
        let step = StepId::new(step)?;
        let subject = match rest.split_once('=') {
            Some((attr, value)) if !value.is_empty() => {
                SubjectKey::Group { attr: AttrName::new(attr)?, value: value.to_owned() }
            }
            Some(_) => {
                return Err(IdError {
                    what: "instance key",
                    value: s.to_owned(),
                    rule: "a group key needs a value after '='",
                });
            }
            None => SubjectKey::Target(rest.parse()?),
        };
        Ok(Self { step, subject })
    }
}

impl Serialize for InstanceKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_ids_follow_the_contract() {
        for ok in ["catalog.undelete", "a", "0x", "db-restore_2.pitr"] {
            assert!(StepId::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Catalog", ".x", "-x", "a b", "a/b", "a=b", "é"] {
            assert!(StepId::new(bad).is_err(), "{bad}");
        }
        assert_eq!(StepId::new("catalog.undelete").unwrap().store(), "catalog");
        assert_eq!(StepId::new("preflight").unwrap().store(), "preflight");
    }

    #[test]
    fn target_ids_are_canonical_uuids_only() {
        let id: TargetId = "6F1C2A3E-0B4D-4E5F-8A9B-0C1D2E3F4A5B".parse().unwrap();
        assert_eq!(id.to_string(), "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b");
        for bad in [
            "6f1c2a3e0b4d4e5f8a9b0c1d2e3f4a5b",
            "{6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b}",
            "6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5",
            "site-42",
            "",
        ] {
            let err = bad.parse::<TargetId>().unwrap_err();
            assert_eq!(err.what, "target id");
        }
    }

    #[test]
    fn instance_keys_round_trip() {
        for key in [
            "preflight",
            "catalog.undelete/6f1c2a3e-0b4d-4e5f-8a9b-0c1d2e3f4a5b",
            "tracker.db.pitr/shard=s01",
            "x/region=eu/west",
        ] {
            let parsed: InstanceKey = key.parse().unwrap();
            assert_eq!(parsed.to_string(), key);
        }
        assert!("x/shard=".parse::<InstanceKey>().is_err());
        assert!("x/not-a-uuid".parse::<InstanceKey>().is_err());
    }
}
