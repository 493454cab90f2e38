//! pg: catalog, copy and digest.
