//! The executors every run command uses, with the connection URL resolvers this binary knows.

use std::sync::Arc;

use rewind_exec::Registry;

/// The built-in executors, resolving `sandbox://` connection URLs to the sandbox's stores.
pub fn registry() -> Registry {
    let mut r = Registry::builtin();
    r.add_resolver(Arc::new(|url: &str| {
        rewind_sandbox::resolve_url(url).map(|res| res.map_err(|e| e.to_string()))
    }));
    r
}
