//! rewind's sandbox: a real multi-tenant system to restore, with point-in-time backups, the
//! mass deletion of the incident, and an independent verifier.
//!
//! This crate owns the sandbox's stores (catalog, contacts, identity per region, tracker and wiki
//! databases per shard, media, flags, apps: SQLite files or PostgreSQL schemas, media on disk),
//! their backups (full snapshots plus a hash-chained change journal, within a retention window),
//! the simulated activity and incident, point-in-time restore of one store into a scratch copy
//! ([`pitr`]), and verification ([`verify`]) that shares no code path with restore: it reads the
//! ledger the system writes at every write and the live stores with its own queries. For restore
//! workflows it also owns the scratch-copy convention (`pitr --scratch TAG`, [`resolve_url`] of
//! `sandbox://` URLs, [`drop_scratch`]), the media restore and check ([`restore_media`],
//! [`check_media`]), the outbox to outside systems ([`outbox`]) and the data-loss summary
//! ([`data_loss`]). The schema of every store and the layout of every file are in
//! `docs/sandbox.md`.
//!
//! **Invariant:** it must not depend on rewind's scheduler, runtime, checkpoint store or
//! executors, nor know clap or terminal output; it may use `rewind-model`'s typed IDs
//! ([`rewind_model::TargetId`], [`rewind_model::RestorePoint`]), and `rewind-pitr`'s process
//! helpers for the servers of [`clusters`]. Time is the sandbox's simulated clock (in its
//! manifest), never the wall clock, except to measure how long a restore took and in a clusters
//! sandbox (`init --clusters`), whose servers commit in real time: there the history's last part
//! and the incident are stamped with the wall clock.

mod as_new;
mod backup;
pub mod clusters;
mod digest;
mod error;
mod generate;
mod live;
mod loss;
mod manifest;
mod media;
mod media_restore;
mod model;
mod outbox;
mod pitr;
mod remapped;
mod rng;
mod schema;
mod scratch;
mod system;
pub mod targets;
mod tenants;
mod time;
mod value;
mod verify;

pub use as_new::{DropTenantReport, Removed, claimed, drop_tenant, live_sites, new_site_ids};
pub use error::{Error, Error as SandboxError, Result};
pub use loss::{StoreLoss, data_loss};
pub use manifest::{Backend, Deletion, Incident, Manifest, Site, StoreState, refuse_own_path};
pub use media_restore::{
    MAX_DIFFERENCES, MediaCheckReport, MediaRestoreReport, check_media, check_media_as,
    restore_media, restore_media_as,
};
pub use outbox::{OutboxReport, OutboxRequest, outbox};
pub use pitr::{PitrOptions, PitrOut, PitrReport, pitr};
pub use remapped::{RowFault, RowProblem};
pub use schema::{ColType, PRODUCTS, REGIONS, Reference, Store, StoreKind, Table};
pub use scratch::{DropReport, ScratchTag, destroy, drop_scratch, resolve_url};
pub use system::{
    IncidentOptions, IncidentSummary, InitOptions, RunSummary, incident, init, sites,
};
pub use tenants::{Tenant, tenants};
pub use time::SimTime;
pub use verify::{AsNew, Problem, Role, StoreCheck, VerifyOptions, VerifyReport, verify};
