//! Source systems as users run them, for rewind's sandbox and tests to restore from.

pub mod mariadb;
pub mod pg;
