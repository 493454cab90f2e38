//! sqlite: catalog, copy and digest.
