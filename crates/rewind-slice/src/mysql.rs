//! mysql: catalog, copy and digest.
