//! What the simulated customers do: the initial data of a site and the writes of its activity.
//! Pure functions of a random generator, the site, the current rows and the time.

use crate::digest::sha256_hex;
use crate::manifest::Site;
use crate::model::{Model, Write};
use crate::rng::Rng;
use crate::schema::{Store, StoreKind};
use crate::time::SimTime;
use crate::value::{Row, Val};

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ra", "ven", "to", "sa", "del", "qu", "an", "bri", "os", "te", "nor", "lu",
    "ix", "pa", "mer", "di", "zo",
];
const WORDS: &[&str] = &[
    "deploy",
    "login",
    "page",
    "error",
    "billing",
    "search",
    "slow",
    "cache",
    "report",
    "export",
    "import",
    "timeout",
    "button",
    "mobile",
    "sync",
    "backup",
    "invoice",
    "upgrade",
    "crash",
    "label",
    "filter",
    "dashboard",
    "release",
    "review",
    "draft",
    "meeting",
    "notes",
    "roadmap",
    "quarterly",
    "onboarding",
    "policy",
    "budget",
];
const PLANS: &[&str] = &["free", "standard", "premium", "enterprise"];
const ROLES: &[&str] = &["admin", "billing", "technical"];
const STATUSES: &[&str] = &["open", "in-progress", "review", "done"];
const FLAGS: &[&str] = &[
    "new-editor",
    "dark-mode",
    "ai-summary",
    "fast-search",
    "beta-board",
    "audit-log",
    "sso-enforced",
    "legacy-export",
];
const APPS: &[&str] = &["insight", "timesheets", "diagram-pro", "slack-bridge", "zephyr", "gantt"];
const CONTENT: &[&str] = &["image/png", "application/pdf", "image/jpeg", "text/plain"];

fn word(rng: &mut Rng) -> &'static str {
    rng.pick(WORDS).copied().unwrap_or("word")
}

fn name(rng: &mut Rng) -> String {
    let n = rng.range(2, 3);
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(rng.pick(SYLLABLES).copied().unwrap_or("a"));
    }
    s
}

fn person(rng: &mut Rng) -> String {
    let mut first = name(rng);
    let mut last = name(rng);
    capitalize(&mut first);
    capitalize(&mut last);
    format!("{first} {last}")
}

fn capitalize(s: &mut String) {
    if let Some(c) = s.get(..1) {
        let up = c.to_ascii_uppercase();
        s.replace_range(..1, &up);
    }
}

fn sentence(rng: &mut Rng, lo: u64, hi: u64) -> String {
    let n = rng.range(lo, hi);
    let mut words: Vec<&str> = (0..n).map(|_| word(rng)).collect();
    if words.is_empty() {
        words.push("note");
    }
    let mut s = words.join(" ");
    capitalize(&mut s);
    s
}

fn id(rng: &mut Rng) -> String {
    rng.uuid().to_string()
}

fn ts_val(ts: SimTime) -> Val {
    Val::Text(ts.to_string())
}

/// A new site's attributes.
pub(crate) fn site(rng: &mut Rng, shards: u32) -> Site {
    let id = rewind_model::TargetId::from_uuid(rng.uuid());
    let region = ["us-east", "eu-west", "ap-southeast"][rng.weighted(&[5, 3, 2])].to_owned();
    let shard = crate::schema::shard_name(rng.range(1, u64::from(shards)) as u32);
    let products = match rng.weighted(&[7, 2, 1]) {
        0 => vec!["tracker".to_owned(), "wiki".to_owned()],
        1 => vec!["tracker".to_owned()],
        _ => vec!["wiki".to_owned()],
    };
    let url = format!("https://{}-{}.example.net", name(rng), rng.range(1, 999));
    crate::manifest::Site { id, url, region, shard, products }
}

/// Rows of one table of one store, with their writes collected.
struct Out {
    writes: Vec<Write>,
    site: String,
}

impl Out {
    fn put(&mut self, store: &Store, table: &str, row: Row) {
        let t = store.kind.table_index(table).unwrap_or(0);
        let id = row[0].to_string();
        self.writes.push(Write {
            store: store.clone(),
            table: t,
            id,
            site: self.site.clone(),
            row: Some(row),
            blob: None,
        });
    }

    fn put_blob(&mut self, store: &Store, row: Row, blob: Vec<u8>) {
        self.put(store, "objects", row);
        if let Some(w) = self.writes.last_mut() {
            w.blob = Some(blob);
        }
    }

    fn del(&mut self, store: &Store, table: &str, id: &str) {
        let t = store.kind.table_index(table).unwrap_or(0);
        self.writes.push(Write {
            store: store.clone(),
            table: t,
            id: id.to_owned(),
            site: self.site.clone(),
            row: None,
            blob: None,
        });
    }
}

fn media_object(
    rng: &mut Rng,
    site: &str,
    id: String,
    version: i64,
    ts: SimTime,
) -> (Row, Vec<u8>) {
    let size = rng.range(256, 4096) as usize;
    let blob = rng.bytes(size);
    let sha = sha256_hex(&blob);
    let ct = rng.pick(CONTENT).copied().unwrap_or("image/png");
    let row = vec![
        Val::Text(id),
        site.into(),
        format!("{}-{}.{}", word(rng), rng.range(1, 999), ct.rsplit('/').next().unwrap_or("bin"))
            .into(),
        ct.into(),
        Val::Int(version),
        Val::Text(sha),
        Val::Int(size as i64),
        ts_val(ts),
    ];
    (row, blob)
}

fn issue(rng: &mut Rng, site: &str, project: &str, number: i64, ts: SimTime) -> Row {
    vec![
        Val::Text(id(rng)),
        site.into(),
        project.into(),
        Val::Int(number),
        sentence(rng, 3, 8).into(),
        rng.pick(STATUSES).copied().unwrap_or("open").into(),
        person(rng).into(),
        ts_val(ts),
    ]
}

fn comment(rng: &mut Rng, site: &str, issue: &str, ts: SimTime) -> Row {
    vec![
        Val::Text(id(rng)),
        site.into(),
        issue.into(),
        person(rng).into(),
        sentence(rng, 5, 30).into(),
        ts_val(ts),
    ]
}

fn page(rng: &mut Rng, site: &str, space: &str, ts: SimTime) -> Row {
    vec![
        Val::Text(id(rng)),
        site.into(),
        space.into(),
        sentence(rng, 2, 6).into(),
        sentence(rng, 40, 150).into(),
        Val::Int(1),
        ts_val(ts),
    ]
}

fn user(rng: &mut Rng, site: &str, ts: SimTime) -> Row {
    let n = person(rng);
    let email = format!("{}@{}.example.com", n.to_lowercase().replace(' ', "."), name(rng));
    vec![Val::Text(id(rng)), site.into(), email.into(), n.into(), Val::Int(1), ts_val(ts)]
}

/// Every row of a new site.
pub(crate) fn create_site(rng: &mut Rng, site: &Site, ts: SimTime) -> Vec<Write> {
    let sid = site.id.to_string();
    let mut out = Out { writes: Vec::new(), site: sid.clone() };
    let s = sid.as_str();
    let plan = rng.pick(PLANS).copied().unwrap_or("free");

    let catalog = Store::single(StoreKind::Catalog);
    out.put(
        &catalog,
        "sites",
        vec![
            Val::Text(sid.clone()),
            s.into(),
            site.url.clone().into(),
            Val::Text(id(rng)),
            site.region.clone().into(),
            site.shard.clone().into(),
            site.products.join(";").into(),
            plan.into(),
            "active".into(),
            ts_val(ts),
        ],
    );
    for p in &site.products {
        let seats = rng.range(5, 500) as i64;
        out.put(
            &catalog,
            "licences",
            vec![
                Val::Text(id(rng)),
                s.into(),
                p.as_str().into(),
                plan.into(),
                Val::Int(seats),
                ts_val(ts),
            ],
        );
    }

    let contacts = Store::single(StoreKind::Contacts);
    for i in 0..rng.range(1, 4) {
        let n = person(rng);
        let email = format!(
            "{}@customer-{}.example.com",
            n.to_lowercase().replace(' ', "."),
            rng.range(1, 99)
        );
        let role = ROLES[(i as usize) % ROLES.len()];
        out.put(
            &contacts,
            "contacts",
            vec![Val::Text(id(rng)), s.into(), n.into(), email.into(), role.into(), ts_val(ts)],
        );
    }

    let identity = Store::identity(&site.region);
    let users: Vec<Row> = (0..rng.range(4, 20)).map(|_| user(rng, s, ts)).collect();
    let mut groups = vec!["administrators", "users"];
    for extra in ["developers", "support"] {
        if rng.chance(0.5) {
            groups.push(extra);
        }
    }
    let group_ids: Vec<String> = groups.iter().map(|_| id(rng)).collect();
    for (g, gid) in groups.iter().zip(&group_ids) {
        out.put(
            &identity,
            "groups",
            vec![Val::Text(gid.clone()), s.into(), (*g).into(), ts_val(ts)],
        );
    }
    for (i, u) in users.iter().enumerate() {
        let uid = u[0].to_string();
        out.put(&identity, "users", u.clone());
        let mut member_of = vec![1usize];
        if i == 0 {
            member_of.push(0);
        }
        if group_ids.len() > 2 && rng.chance(0.4) {
            member_of.push(2 + rng.below(group_ids.len() as u64 - 2) as usize);
        }
        for g in member_of {
            out.put(
                &identity,
                "memberships",
                vec![
                    Val::Text(id(rng)),
                    s.into(),
                    Val::Text(group_ids[g].clone()),
                    Val::Text(uid.clone()),
                    ts_val(ts),
                ],
            );
        }
    }
    for (g, gid) in groups.iter().zip(&group_ids) {
        for p in &site.products {
            let level = if *g == "administrators" {
                "admin"
            } else if rng.chance(0.7) {
                "write"
            } else {
                "read"
            };
            out.put(
                &identity,
                "permissions",
                vec![
                    Val::Text(id(rng)),
                    s.into(),
                    Val::Text(gid.clone()),
                    p.as_str().into(),
                    level.into(),
                    ts_val(ts),
                ],
            );
        }
    }

    if site.has("tracker") {
        let tracker = Store::product(StoreKind::Tracker, &site.shard);
        for _ in 0..rng.range(1, 3) {
            let pid = id(rng);
            let key: String = name(rng).to_ascii_uppercase().chars().take(4).collect();
            out.put(
                &tracker,
                "projects",
                vec![
                    Val::Text(pid.clone()),
                    s.into(),
                    key.into(),
                    sentence(rng, 1, 3).into(),
                    ts_val(ts),
                ],
            );
            for n in 1..=rng.range(3, 12) {
                let iss = issue(rng, s, &pid, n as i64, ts);
                let iid = iss[0].to_string();
                out.put(&tracker, "issues", iss);
                for _ in 0..rng.range(0, 2) {
                    out.put(&tracker, "comments", comment(rng, s, &iid, ts));
                }
            }
        }
    }

    if site.has("wiki") {
        let wiki = Store::product(StoreKind::Wiki, &site.shard);
        for _ in 0..rng.range(1, 2) {
            let spid = id(rng);
            let key: String = name(rng).to_ascii_uppercase().chars().take(4).collect();
            out.put(
                &wiki,
                "spaces",
                vec![
                    Val::Text(spid.clone()),
                    s.into(),
                    key.into(),
                    sentence(rng, 1, 3).into(),
                    ts_val(ts),
                ],
            );
            for _ in 0..rng.range(3, 10) {
                out.put(&wiki, "pages", page(rng, s, &spid, ts));
            }
        }
    }

    let media = Store::single(StoreKind::Media);
    for _ in 0..rng.range(2, 6) {
        let oid = id(rng);
        let (row, blob) = media_object(rng, s, oid, 1, ts);
        out.put_blob(&media, row, blob);
    }

    let flags = Store::single(StoreKind::Flags);
    let n = rng.range(3, 6) as usize;
    let start = rng.below(FLAGS.len() as u64) as usize;
    for k in 0..n {
        let f = FLAGS[(start + k) % FLAGS.len()];
        out.put(
            &flags,
            "flags",
            vec![
                Val::Text(id(rng)),
                s.into(),
                f.into(),
                Val::Int(i64::from(rng.chance(0.5))),
                ts_val(ts),
            ],
        );
    }

    let apps = Store::single(StoreKind::Apps);
    for _ in 0..rng.range(0, 3) {
        install(rng, &mut out, &apps, s, ts);
    }
    out.writes
}

fn install(rng: &mut Rng, out: &mut Out, apps: &Store, s: &str, ts: SimTime) {
    let iid = id(rng);
    let app = rng.pick(APPS).copied().unwrap_or("insight");
    let config = format!("{{\"mode\":\"{}\",\"limit\":{}}}", word(rng), rng.range(1, 100));
    out.put(
        apps,
        "installations",
        vec![
            Val::Text(iid.clone()),
            s.into(),
            app.into(),
            format!("{}.{}.{}", rng.range(1, 5), rng.range(0, 20), rng.range(0, 9)).into(),
            config.into(),
            ts_val(ts),
        ],
    );
    for _ in 0..rng.range(0, 2) {
        out.put(
            apps,
            "webhooks",
            vec![
                Val::Text(id(rng)),
                s.into(),
                Val::Text(iid.clone()),
                format!("https://hooks.{app}.example.org/{}", rng.range(1000, 9999)).into(),
                ["issue.created", "page.updated", "user.added"][rng.below(3) as usize].into(),
                ts_val(ts),
            ],
        );
    }
}

/// Every row of a site, to delete it from every store (catalog last).
pub(crate) fn delete_site(model: &Model, site: &Site) -> Vec<Write> {
    let sid = site.id.to_string();
    let mut out = Out { writes: Vec::new(), site: sid.clone() };
    for store in site.stores() {
        for (t, table) in store.kind.tables().iter().enumerate() {
            for id in model.ids(&store, &sid, t) {
                out.del(&store, table.name, &id);
            }
        }
    }
    out.writes
}

/// One burst of a site's activity: a few writes to one of its stores.
pub(crate) fn activity(rng: &mut Rng, model: &Model, site: &Site, ts: SimTime) -> Vec<Write> {
    let sid = site.id.to_string();
    let s = sid.as_str();
    let mut out = Out { writes: Vec::new(), site: sid.clone() };
    let tracker = Store::product(StoreKind::Tracker, &site.shard);
    let wiki = Store::product(StoreKind::Wiki, &site.shard);
    let identity = Store::identity(&site.region);
    let catalog = Store::single(StoreKind::Catalog);
    let media = Store::single(StoreKind::Media);
    let flags = Store::single(StoreKind::Flags);
    let apps = Store::single(StoreKind::Apps);
    let contacts = Store::single(StoreKind::Contacts);

    let t_on = if site.has("tracker") { 1 } else { 0 };
    let w_on = if site.has("wiki") { 1 } else { 0 };
    let weights = [
        30 * t_on, // 0 new issue
        30 * t_on, // 1 update issue
        25 * t_on, // 2 comment
        4 * t_on,  // 3 delete comment
        30 * w_on, // 4 edit page
        10 * w_on, // 5 new page
        2 * w_on,  // 6 delete page
        5,         // 7 new user
        3,         // 8 user active toggle
        3,         // 9 membership change
        2,         // 10 permission level
        2,         // 11 contact update
        4,         // 12 flag toggle
        1,         // 13 app install
        1,         // 14 app uninstall
        2,         // 15 app config
        4,         // 16 new media object
        4,         // 17 new media version
        2,         // 18 licence seats
    ];
    let now = ts_val(ts);
    match rng.weighted(&weights) {
        0 => {
            if let Some(p) = model.pick(rng, &tracker, s, "projects") {
                let pid = p[0].to_string();
                let next = model
                    .rows(&tracker, s, "issues")
                    .filter(|r| r[2].as_text() == Some(pid.as_str()))
                    .filter_map(|r| r[3].as_int())
                    .max()
                    .unwrap_or(0)
                    + 1;
                out.put(&tracker, "issues", issue(rng, s, &pid, next, ts));
            }
        }
        1 => {
            if let Some(mut r) = model.pick(rng, &tracker, s, "issues") {
                r[5] = rng.pick(STATUSES).copied().unwrap_or("done").into();
                if rng.chance(0.3) {
                    r[6] = person(rng).into();
                }
                r[7] = now;
                out.put(&tracker, "issues", r);
            }
        }
        2 => {
            if let Some(i) = model.pick(rng, &tracker, s, "issues") {
                out.put(&tracker, "comments", comment(rng, s, &i[0].to_string(), ts));
            }
        }
        3 => {
            if let Some(c) = model.pick(rng, &tracker, s, "comments") {
                out.del(&tracker, "comments", &c[0].to_string());
            }
        }
        4 => {
            if let Some(mut p) = model.pick(rng, &wiki, s, "pages") {
                p[4] = sentence(rng, 40, 150).into();
                p[5] = Val::Int(p[5].as_int().unwrap_or(0) + 1);
                p[6] = now;
                out.put(&wiki, "pages", p);
            }
        }
        5 => {
            if let Some(sp) = model.pick(rng, &wiki, s, "spaces") {
                out.put(&wiki, "pages", page(rng, s, &sp[0].to_string(), ts));
            }
        }
        6 => {
            if model.count(&wiki, s, "pages") > 2
                && let Some(p) = model.pick(rng, &wiki, s, "pages")
            {
                out.del(&wiki, "pages", &p[0].to_string());
            }
        }
        7 => {
            let u = user(rng, s, ts);
            let uid = u[0].to_string();
            out.put(&identity, "users", u);
            if let Some(g) = model.pick(rng, &identity, s, "groups") {
                out.put(
                    &identity,
                    "memberships",
                    vec![Val::Text(id(rng)), s.into(), g[0].clone(), Val::Text(uid), now],
                );
            }
        }
        8 => {
            if let Some(mut u) = model.pick(rng, &identity, s, "users") {
                u[4] = Val::Int(1 - u[4].as_int().unwrap_or(1));
                u[5] = now;
                out.put(&identity, "users", u);
            }
        }
        9 => {
            if rng.chance(0.5)
                && model.count(&identity, s, "memberships") > 2
                && let Some(m) = model.pick(rng, &identity, s, "memberships")
            {
                out.del(&identity, "memberships", &m[0].to_string());
            } else if let (Some(g), Some(u)) =
                (model.pick(rng, &identity, s, "groups"), model.pick(rng, &identity, s, "users"))
            {
                out.put(
                    &identity,
                    "memberships",
                    vec![Val::Text(id(rng)), s.into(), g[0].clone(), u[0].clone(), now],
                );
            }
        }
        10 => {
            if let Some(mut p) = model.pick(rng, &identity, s, "permissions") {
                p[4] = ["read", "write", "admin"][rng.below(3) as usize].into();
                p[5] = now;
                out.put(&identity, "permissions", p);
            }
        }
        11 => {
            if let Some(mut c) = model.pick(rng, &contacts, s, "contacts") {
                c[3] = format!("{}@customer-{}.example.com", name(rng), rng.range(1, 99)).into();
                c[5] = now;
                out.put(&contacts, "contacts", c);
            }
        }
        12 => {
            if let Some(mut f) = model.pick(rng, &flags, s, "flags") {
                f[3] = Val::Int(1 - f[3].as_int().unwrap_or(0));
                f[4] = now;
                out.put(&flags, "flags", f);
            }
        }
        13 => install(rng, &mut out, &apps, s, ts),
        14 => {
            if let Some(i) = model.pick(rng, &apps, s, "installations") {
                let iid = i[0].to_string();
                let hooks: Vec<String> = model
                    .rows(&apps, s, "webhooks")
                    .filter(|w| w[2].as_text() == Some(iid.as_str()))
                    .map(|w| w[0].to_string())
                    .collect();
                for h in hooks {
                    out.del(&apps, "webhooks", &h);
                }
                out.del(&apps, "installations", &iid);
            }
        }
        15 => {
            if let Some(mut i) = model.pick(rng, &apps, s, "installations") {
                i[4] = format!("{{\"mode\":\"{}\",\"limit\":{}}}", word(rng), rng.range(1, 100))
                    .into();
                i[5] = now;
                out.put(&apps, "installations", i);
            }
        }
        16 => {
            let oid = id(rng);
            let (row, blob) = media_object(rng, s, oid, 1, ts);
            out.put_blob(&media, row, blob);
        }
        17 => {
            if let Some(o) = model.pick(rng, &media, s, "objects") {
                let version = o[4].as_int().unwrap_or(1) + 1;
                let (mut row, blob) = media_object(rng, s, o[0].to_string(), version, ts);
                row[2] = o[2].clone();
                row[3] = o[3].clone();
                out.put_blob(&media, row, blob);
            }
        }
        _ => {
            if let Some(mut l) = model.pick(rng, &catalog, s, "licences") {
                l[4] = Val::Int(rng.range(5, 500) as i64);
                l[5] = now;
                out.put(&catalog, "licences", l);
            }
        }
    }
    out.writes
}
