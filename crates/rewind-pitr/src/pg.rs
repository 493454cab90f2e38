//! pg scratch instances (being built).

use crate::scratch::Ctx;
use crate::{Error, Recovered};

/// What the pre-check found.
#[derive(Debug)]
pub(crate) struct Plan {}

/// Checks the instant against what the backups cover; writes nothing.
pub(crate) async fn check(_ctx: &Ctx<'_>) -> Result<Plan, Error> {
    Err(Error::Permanent("pg: not built yet".into()))
}

/// Restores and recovers into `ctx.into`, judges where the server stopped.
pub(crate) async fn restore(_ctx: &Ctx<'_>, _plan: Plan) -> Result<Recovered, Error> {
    Err(Error::Permanent("pg: not built yet".into()))
}

/// Starts a ready instance again on `ctx.port`.
pub(crate) async fn start(_ctx: &Ctx<'_>) -> Result<(), Error> {
    Err(Error::Permanent("pg: not built yet".into()))
}
