//! The sandbox's backups through the library: a seed makes the same sandbox, point-in-time
//! restore reaches exactly the instant asked for, and retention drops what no instant of the
//! window needs while refusing instants outside it; instants the sandbox cannot write are
//! refused before anything is written.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use rewind_model::RestorePoint;
use rewind_sandbox::{
    IncidentOptions, InitOptions, Manifest, PitrOptions, PitrOut, SimTime, incident, init, pitr,
};

fn opts(dir: &Path, sites: u32, seed: u64) -> InitOptions {
    let mut o = InitOptions::new(dir, sites);
    o.shards = 2;
    o.seed = seed;
    o
}

fn rp(t: SimTime) -> RestorePoint {
    t.to_restore_point()
}

#[tokio::test]
async fn the_same_seed_makes_the_same_sandbox() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    init(&opts(&a, 5, 3)).await.unwrap();
    init(&opts(&b, 5, 3)).await.unwrap();
    init(&opts(&c, 5, 4)).await.unwrap();
    let ledger = |d: &Path| std::fs::read_to_string(d.join("ledger.jsonl")).unwrap();
    assert_eq!(ledger(&a), ledger(&b));
    assert_ne!(ledger(&a), ledger(&c));
    let (ma, mb) = (Manifest::load(&a).unwrap(), Manifest::load(&b).unwrap());
    assert_eq!(ma.sites, mb.sites);
    assert_eq!(ma.stores["tracker-s01"].chain, mb.stores["tracker-s01"].chain);
}

#[tokio::test]
async fn pitr_reaches_exactly_the_instant_and_the_state_moves_within_minutes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sb");
    init(&opts(&dir, 6, 1)).await.unwrap();
    let m = Manifest::load(&dir).unwrap();
    let t = m.now.minus(Duration::from_secs(3600));
    let later = t.plus(Duration::from_secs(300));
    let mut entries = (0, 0);
    for store in m.all_stores() {
        let mut reached = Vec::new();
        for (i, at) in [t, later].into_iter().enumerate() {
            let out = if store.name() == "media" {
                tmp.path().join(format!("media-{i}"))
            } else {
                tmp.path().join(format!("{}-{i}.sqlite", store.name()))
            };
            let o = PitrOptions {
                store: store.name().to_owned(),
                at: rp(at),
                out: PitrOut::Path(out.display().to_string()),
            };
            let r = pitr(&dir, &o).await.unwrap();
            assert_eq!(r.restore_point, rp(at));
            assert!(r.last_write <= at && r.snapshot <= r.last_write, "{r:?}");
            assert!(out.exists());
            reached.push(r.journal_entries);
        }
        assert!(reached[1] >= reached[0]);
        entries.0 += reached[0];
        entries.1 += reached[1];
    }
    // Some site writes every minute before the sandbox's now: five minutes later is another state.
    assert!(entries.1 >= entries.0 + 5, "{entries:?}");

    // The boundary: a write stamped exactly at the instant is in the copy; a millisecond
    // earlier it is not.
    let mut checked = 0;
    for store in m.all_stores() {
        let last = m.stores[store.name()].last_write;
        // (A shard no site of this small sandbox lives on has no write.)
        let Some(last) = last.filter(|t| t.plus_ms(-1) >= m.window_start()) else { continue };
        checked += 1;
        let mut reached = Vec::new();
        for (i, at) in [last, last.plus_ms(-1)].into_iter().enumerate() {
            let out = if store.name() == "media" {
                tmp.path().join(format!("media-edge-{i}"))
            } else {
                tmp.path().join(format!("{}-edge-{i}.sqlite", store.name()))
            };
            let o = PitrOptions {
                store: store.name().to_owned(),
                at: rp(at),
                out: PitrOut::Path(out.display().to_string()),
            };
            reached.push(pitr(&dir, &o).await.unwrap());
        }
        assert_eq!(reached[0].last_write, last, "{store}: the write at the instant is included");
        assert!(reached[1].last_write < last, "{store}: {:?}", reached[1]);
    }
    assert!(checked >= m.all_stores().len() / 2, "{checked} stores checked");
}

#[tokio::test]
async fn retention_drops_old_backups_and_refuses_instants_outside_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sb");
    let mut o = opts(&dir, 4, 2);
    o.retention = Duration::from_secs(2 * 86_400);
    o.history = Duration::from_secs(5 * 86_400);
    o.snapshot_every = Duration::from_secs(86_400);
    init(&o).await.unwrap();
    let m = Manifest::load(&dir).unwrap();
    let flags = &m.stores["flags"];
    // Daily snapshots over 5 days; those older than the one covering now - 2 days are gone.
    assert_eq!(flags.snapshots.len(), 3, "{:?}", flags.snapshots);
    let files = std::fs::read_dir(dir.join("backup/flags/snapshots")).unwrap().count();
    assert_eq!(files, 3);
    let oldest = flags.snapshots[0].at;
    assert!(oldest <= m.now.minus(o.retention));
    let segments = std::fs::read_dir(dir.join("backup/flags/journal")).unwrap().count();
    assert!(segments <= 3, "{segments} journal segments kept");

    let start = m.window_start();
    assert_eq!(start, m.now.minus(o.retention));
    let out = |n: &str| PitrOut::Path(tmp.path().join(n).display().to_string());
    let ok = PitrOptions { store: "flags".into(), at: rp(start), out: out("a.sqlite") };
    pitr(&dir, &ok).await.unwrap();
    let early =
        PitrOptions { store: "flags".into(), at: rp(start.plus_ms(-60_000)), out: out("b.sqlite") };
    let err = pitr(&dir, &early).await.unwrap_err();
    assert!(err.is_refusal() && err.to_string().contains("outside the retention window"), "{err}");
    assert!(!tmp.path().join("b.sqlite").exists());

    // Pruning kept every journal segment the window needs: every store restores to the
    // window's first day, replaying the journal after its oldest kept snapshot.
    let mut replayed = 0;
    for store in m.all_stores() {
        let at = start.plus(Duration::from_secs(23 * 3600));
        let o = PitrOptions { store: store.name().into(), at: rp(at), out: out(store.name()) };
        let r = pitr(&dir, &o).await.unwrap();
        assert_eq!(r.snapshot, start, "{r:?}");
        replayed += r.journal_entries;
    }
    assert!(replayed > 0, "the first day of the window has writes");
}

#[tokio::test]
async fn instants_the_sandbox_cannot_write_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    // A history reaching back before 1970.
    let early = tmp.path().join("early");
    let mut o = opts(&early, 2, 1);
    o.now = SimTime::parse("1970-01-05T00:00:00Z").unwrap();
    let err = init(&o).await.unwrap_err();
    assert!(err.is_refusal() && err.to_string().contains("give a shorter --history"), "{err}");
    assert!(!early.exists(), "nothing written");

    // An incident running past 9999-12-31.
    let dir = tmp.path().join("late");
    let mut o = opts(&dir, 3, 1);
    o.now = SimTime::parse("9999-12-31T23:00:00Z").unwrap();
    init(&o).await.unwrap();
    let before = std::fs::read_to_string(dir.join("sandbox.json")).unwrap();
    let inc = IncidentOptions {
        delete: 2,
        at: None,
        over: Duration::from_secs(23 * 60),
        then: Duration::from_secs(86_400),
    };
    let err = incident(&dir, &inc).await.unwrap_err();
    assert!(err.is_refusal() && err.to_string().contains("the last instant"), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("sandbox.json")).unwrap(), before);
    let summary = incident(&dir, &IncidentOptions { then: Duration::from_secs(60), ..inc }).await;
    assert_eq!(summary.unwrap().deleted.len(), 2);
}
