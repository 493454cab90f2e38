//! A PostgreSQL source server (being built by the pg engineer).
