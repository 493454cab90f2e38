//! `plan::plan` on hand-built schemas: discovery, which key decides a row, the insert order,
//! reference cycles per engine, every refusal, the human rendering; and the selectors of the
//! example's plan run on a real SQLite database with three tenants.

use std::collections::BTreeMap;

use rewind_slice::plan::{PlanError, Reference, RootKey, declare, plan as slice_plan};
use rewind_slice::remap;
use rewind_slice::sql::{Dialect, Scope, selector};
use rewind_slice::{Column, Engine, ForeignKey, Request, Schema, SlicePlan, Table, Via};

// ---------------------------------------------------------------------------------------------
// A small builder.

struct T(Table);

fn t(name: &str) -> T {
    T(Table {
        name: name.to_owned(),
        columns: Vec::new(),
        primary_key: Vec::new(),
        foreign_keys: Vec::new(),
        triggers: Vec::new(),
    })
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

impl T {
    fn column(mut self, name: &str, data_type: &str, nullable: bool) -> Self {
        self.0.columns.push(Column {
            name: name.to_owned(),
            data_type: data_type.to_owned(),
            nullable,
            generated: false,
            sequence: None,
        });
        self
    }
    /// A NOT NULL column.
    fn col(self, name: &str, data_type: &str) -> Self {
        self.column(name, data_type, false)
    }
    /// A nullable column.
    fn null(self, name: &str, data_type: &str) -> Self {
        self.column(name, data_type, true)
    }
    fn pk(mut self, columns: &[&str]) -> Self {
        self.0.primary_key = names(columns);
        self
    }
    fn key(mut self, name: &str, columns: &[&str], parent: &str, parent_columns: &[&str]) -> Self {
        self.0.foreign_keys.push(ForeignKey {
            name: name.to_owned(),
            columns: names(columns),
            parent: parent.to_owned(),
            parent_columns: names(parent_columns),
            deferrable: false,
            declared: false,
        });
        self
    }
    /// A foreign key to `parent.id`.
    fn fk(self, name: &str, column: &str, parent: &str) -> Self {
        self.key(name, &[column], parent, &["id"])
    }
    /// The last foreign key becomes DEFERRABLE.
    fn deferrable(mut self) -> Self {
        if let Some(fk) = self.0.foreign_keys.last_mut() {
            fk.deferrable = true;
        }
        self
    }
    fn trigger(mut self, name: &str) -> Self {
        self.0.triggers.push(name.to_owned());
        self
    }
}

fn build(engine: Engine, tables: Vec<T>) -> Schema {
    Schema { engine, tables: tables.into_iter().map(|T(t)| (t.name.clone(), t)).collect() }
}

fn root(name: &str) -> Request {
    Request { root: Some(name.to_owned()), ..Request::default() }
}

fn order(plan: &SlicePlan) -> Vec<&str> {
    plan.tables.iter().map(|t| t.name.as_str()).collect()
}

fn parent(
    constraint: &str,
    columns: &[&str],
    parent: &str,
    parent_columns: &[&str],
    nullable: bool,
) -> Via {
    Via::Parent {
        constraint: constraint.to_owned(),
        columns: names(columns),
        parent: parent.to_owned(),
        parent_columns: names(parent_columns),
        nullable,
        declared: false,
    }
}

// ---------------------------------------------------------------------------------------------
// The issue's example shape.

/// sites (uuid root) ← users, projects (lead → users), labels (composite key); issues (→
/// projects, reporter → users, parent issue), comments (→ issues, author → users, reply_to),
/// issue_labels (→ issues, composite → labels), attachments (→ comments only), reactions (a
/// nullable key only); audit_log and settings without foreign keys.
fn example(engine: Engine) -> Schema {
    build(
        engine,
        vec![
            t("sites").col("id", "uuid").col("name", "text").pk(&["id"]),
            t("users")
                .col("id", "bigint")
                .col("site_id", "uuid")
                .col("name", "text")
                .pk(&["id"])
                .fk("users_site_fk", "site_id", "sites"),
            t("projects")
                .col("id", "bigint")
                .col("site_id", "uuid")
                .null("lead_user_id", "bigint")
                .pk(&["id"])
                .fk("projects_lead_fk", "lead_user_id", "users")
                .fk("projects_site_fk", "site_id", "sites"),
            t("labels")
                .col("site_id", "uuid")
                .col("id", "bigint")
                .col("name", "text")
                .pk(&["site_id", "id"])
                .fk("labels_site_fk", "site_id", "sites"),
            t("issues")
                .col("id", "bigint")
                .null("parent_issue_id", "bigint")
                .null("reporter_id", "bigint")
                .col("project_id", "bigint")
                .pk(&["id"])
                .fk("issues_parent_fk", "parent_issue_id", "issues")
                .fk("issues_reporter_fk", "reporter_id", "users")
                .fk("issues_project_fk", "project_id", "projects")
                .trigger("audit_issues"),
            t("comments")
                .col("id", "bigint")
                .col("issue_id", "bigint")
                .null("author_id", "bigint")
                .null("reply_to", "bigint")
                .pk(&["id"])
                .fk("comments_issue_fk", "issue_id", "issues")
                .fk("comments_author_fk", "author_id", "users")
                .fk("comments_reply_fk", "reply_to", "comments"),
            t("issue_labels")
                .col("issue_id", "bigint")
                .col("label_site_id", "uuid")
                .col("label_id", "bigint")
                .pk(&["issue_id", "label_site_id", "label_id"])
                .fk("issue_labels_issue_fk", "issue_id", "issues")
                .key(
                    "issue_labels_label_fk",
                    &["label_site_id", "label_id"],
                    "labels",
                    &["site_id", "id"],
                ),
            t("attachments").col("id", "bigint").col("comment_id", "bigint").pk(&["id"]).fk(
                "attachments_comment_fk",
                "comment_id",
                "comments",
            ),
            t("reactions").col("id", "bigint").null("comment_id", "bigint").pk(&["id"]).fk(
                "reactions_comment_fk",
                "comment_id",
                "comments",
            ),
            t("audit_log")
                .col("id", "bigint")
                .col("site_id", "uuid")
                .col("action", "text")
                .pk(&["id"]),
            t("settings").col("key", "text").col("value", "text").pk(&["key"]),
        ],
    )
}

/// Every foreign key between two planned tables, but self-references and the keys a plan
/// breaks (deferred or set after), has its parent inserted before its child.
fn assert_parents_first(schema: &Schema, plan: &SlicePlan) {
    let at: BTreeMap<&str, usize> =
        plan.tables.iter().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
    for st in &plan.tables {
        for fk in &schema.tables[&st.name].foreign_keys {
            let Some(&p) = at.get(fk.parent.as_str()) else { continue };
            let deferred = plan.deferred.contains(&(st.name.clone(), fk.name.clone()));
            let set_after = fk.columns.iter().any(|c| st.set_after.contains(c));
            if fk.parent == st.name || deferred || set_after {
                continue;
            }
            assert!(
                p < at[st.name.as_str()],
                "{} is inserted after its child {} ({})",
                fk.parent,
                st.name,
                fk.name
            );
        }
    }
}

#[test]
fn discovers_the_example_from_its_root() {
    let schema = example(Engine::Postgres);
    let plan = slice_plan(&schema, &root("sites")).unwrap();
    assert_eq!(
        plan.root,
        Some(RootKey { table: "sites".into(), column: "id".into(), data_type: "uuid".into() })
    );
    // Parents first; ties by distance, then name. audit_log and settings have no foreign key.
    assert_eq!(
        order(&plan),
        [
            "sites",
            "labels",
            "users",
            "projects",
            "issues",
            "comments",
            "issue_labels",
            "attachments",
            "reactions"
        ]
    );
    assert_parents_first(&schema, &plan);
    assert!(plan.deferred.is_empty());
    assert!(plan.tables.iter().all(|t| t.set_after.is_empty()));

    let via = |name: &str| plan.table(name).unwrap().via.clone();
    let path = |name: &str| plan.table(name).unwrap().path.clone();
    assert_eq!(via("sites"), [Via::Root { column: "id".into() }]);
    assert_eq!(path("sites"), ["sites"]);
    // The root (distance 0) ranks before users (distance 1); NOT NULL, so ranking stops.
    assert_eq!(
        via("projects"),
        [parent("projects_site_fk", &["site_id"], "sites", &["id"], false)]
    );
    // projects and users are both at distance 1: the NOT NULL key ranks first and decides
    // alone; the self-reference never decides.
    assert_eq!(
        via("issues"),
        [parent("issues_project_fk", &["project_id"], "projects", &["id"], false)]
    );
    assert_eq!(path("issues"), ["issues", "projects", "sites"]);
    // The NOT NULL issue ranks before the nearer but nullable author, and decides alone. The
    // path follows the first via.
    assert_eq!(
        via("comments"),
        [parent("comments_issue_fk", &["issue_id"], "issues", &["id"], false)]
    );
    assert_eq!(path("comments"), ["comments", "issues", "projects", "sites"]);
    // A composite key into the nearer labels decides before issues.
    assert_eq!(
        via("issue_labels"),
        [parent(
            "issue_labels_label_fk",
            &["label_site_id", "label_id"],
            "labels",
            &["site_id", "id"],
            false
        )]
    );
    assert_eq!(
        via("attachments"),
        [parent("attachments_comment_fk", &["comment_id"], "comments", &["id"], false)]
    );
    assert_eq!(path("attachments"), ["attachments", "comments", "issues", "projects", "sites"]);
    // Only a nullable key: a reaction without a comment is in no slice.
    assert_eq!(
        via("reactions"),
        [parent("reactions_comment_fk", &["comment_id"], "comments", &["id"], true)]
    );

    let issues = plan.table("issues").unwrap();
    assert_eq!(issues.columns, schema.tables["issues"].columns);
    assert_eq!(issues.primary_key, ["id"]);
    assert_eq!(issues.triggers, ["audit_issues"]);
    assert_eq!(plan.table("labels").unwrap().primary_key, ["site_id", "id"]);
}

#[test]
fn the_same_plan_on_every_engine_without_cycles() {
    let pg = slice_plan(&example(Engine::Postgres), &root("sites")).unwrap();
    for engine in [Engine::Mysql, Engine::Sqlite] {
        let other = slice_plan(&example(engine), &root("sites")).unwrap();
        assert_eq!(other.engine, engine);
        assert_eq!(other.tables, pg.tables, "{engine:?}");
    }
}

#[test]
fn exclude_leaves_out_what_is_reached_only_through_the_excluded() {
    let schema = example(Engine::Postgres);
    let request = Request { exclude: names(&["comments"]), ..root("sites") };
    let plan = slice_plan(&schema, &request).unwrap();
    assert_eq!(order(&plan), ["sites", "labels", "users", "projects", "issues", "issue_labels"]);

    // Without users, comments are found by their issue alone (now 3 steps away).
    let request = Request { exclude: names(&["users"]), ..root("sites") };
    let plan = slice_plan(&schema, &request).unwrap();
    assert!(plan.table("users").is_none());
    assert_eq!(
        plan.table("comments").unwrap().via,
        [parent("comments_issue_fk", &["issue_id"], "issues", &["id"], false)]
    );
    assert_eq!(plan.table("comments").unwrap().path, ["comments", "issues", "projects", "sites"]);
    assert_parents_first(&schema, &plan);
}

#[test]
fn tables_restrict_discovery_and_add_tenant_column_tables() {
    let schema = example(Engine::Postgres);
    let request = Request {
        tables: names(&["issues", "projects", "audit_log"]),
        tenant_column: Some("site_id".into()),
        ..root("sites")
    };
    let plan = slice_plan(&schema, &request).unwrap();
    assert_eq!(order(&plan), ["sites", "audit_log", "projects", "issues"]);
    assert_eq!(
        plan.table("audit_log").unwrap().via,
        [Via::TenantColumn { column: "site_id".into() }]
    );
    assert_eq!(plan.table("audit_log").unwrap().path, ["audit_log"]);
    // users is not in the slice: the reporter key is not a via, the project decides.
    assert_eq!(
        plan.table("issues").unwrap().via,
        [parent("issues_project_fk", &["project_id"], "projects", &["id"], false)]
    );

    // A listed table whose parents are left out no longer reaches the root by keys: it
    // needs the tenant column.
    let request = Request { tables: names(&["comments"]), ..root("sites") };
    assert_eq!(
        plan_err(&schema, &request),
        PlanError::Unreachable {
            table: "comments".into(),
            root: "sites".into(),
            tenant_column: None
        }
    );
}

#[test]
fn without_a_root_every_table_is_sliced_by_its_tenant_column() {
    let schema = example(Engine::Postgres);
    let request = Request {
        tables: names(&["projects", "users", "audit_log"]),
        tenant_column: Some("site_id".into()),
        ..Request::default()
    };
    let plan = slice_plan(&schema, &request).unwrap();
    assert_eq!(plan.root, None);
    // projects.lead_user_id → users still orders users first.
    assert_eq!(order(&plan), ["audit_log", "users", "projects"]);
    for t in &plan.tables {
        assert_eq!(t.via, [Via::TenantColumn { column: "site_id".into() }], "{}", t.name);
        assert_eq!(t.path, std::slice::from_ref(&t.name));
    }
    assert_eq!(
        plan.describe(),
        [
            "1. audit_log — tenant = audit_log.site_id (no foreign key)",
            "2. users — tenant = users.site_id (no foreign key)",
            "3. projects — tenant = projects.site_id (no foreign key)",
            "deletes run in the reverse order",
        ]
    );
}

fn plan_err(schema: &Schema, request: &Request) -> PlanError {
    slice_plan(schema, request).expect_err("the plan is refused")
}

#[test]
fn every_refusal_names_what_is_at_fault() {
    let schema = example(Engine::Postgres);
    assert_eq!(plan_err(&schema, &root("site")), PlanError::UnknownRoot("site".into()));
    assert_eq!(
        plan_err(&schema, &root("labels")),
        PlanError::RootCompositeKey { table: "labels".into(), columns: names(&["site_id", "id"]) }
    );
    let keyless = build(Engine::Postgres, vec![t("events").col("id", "bigint")]);
    assert_eq!(plan_err(&keyless, &root("events")), PlanError::RootWithoutKey("events".into()));
    assert_eq!(
        plan_err(&schema, &Request { exclude: names(&["comment"]), ..root("sites") }),
        PlanError::UnknownTable { field: "exclude", table: "comment".into() }
    );
    assert_eq!(
        plan_err(&schema, &Request { tables: names(&["issue"]), ..root("sites") }),
        PlanError::UnknownTable { field: "tables", table: "issue".into() }
    );
    assert_eq!(
        plan_err(&schema, &Request { exclude: names(&["sites"]), ..root("sites") }),
        PlanError::RootExcluded("sites".into())
    );
    assert_eq!(
        plan_err(&schema, &Request { tables: names(&["projects", "settings"]), ..root("sites") }),
        PlanError::Unreachable {
            table: "settings".into(),
            root: "sites".into(),
            tenant_column: None
        }
    );
    assert_eq!(
        plan_err(
            &schema,
            &Request {
                tables: names(&["settings"]),
                tenant_column: Some("site_id".into()),
                ..root("sites")
            }
        ),
        PlanError::NoTenantColumn { table: "settings".into(), column: "site_id".into() }
    );
    assert_eq!(
        plan_err(
            &schema,
            &Request {
                tables: names(&["audit_log", "settings"]),
                tenant_column: Some("site_id".into()),
                ..Request::default()
            }
        ),
        PlanError::NoTenantColumn { table: "settings".into(), column: "site_id".into() }
    );
    assert_eq!(plan_err(&schema, &Request::default()), PlanError::NothingToSlice);
    assert_eq!(
        plan_err(&schema, &Request { tables: names(&["audit_log"]), ..Request::default() }),
        PlanError::NothingToSlice
    );
    assert_eq!(
        plan_err(&schema, &Request { tenant_column: Some("site_id".into()), ..Request::default() }),
        PlanError::NothingToSlice
    );
    // The messages name the tables.
    let cycle = PlanError::UnbreakableCycle { tables: names(&["epics", "issues"]) };
    assert!(cycle.to_string().contains("`epics`, `issues`"), "{cycle}");
}

// ---------------------------------------------------------------------------------------------
// Reference cycles.

/// sites ← issues ⇄ epics: `issues.epic_id` and `epics.lead_issue_id`, made nullable or
/// deferrable per case.
fn cycle(
    engine: Engine,
    epic_nullable: bool,
    lead_nullable: bool,
    lead_deferrable: bool,
) -> Schema {
    let mut epics = t("epics")
        .col("id", "bigint")
        .col("site_id", "uuid")
        .column("lead_issue_id", "bigint", lead_nullable)
        .pk(&["id"])
        .fk("epics_site_fk", "site_id", "sites")
        .fk("epics_lead_fk", "lead_issue_id", "issues");
    if lead_deferrable {
        epics = epics.deferrable();
    }
    build(
        engine,
        vec![
            t("sites").col("id", "uuid").pk(&["id"]),
            t("issues")
                .col("id", "bigint")
                .col("site_id", "uuid")
                .column("epic_id", "bigint", epic_nullable)
                .pk(&["id"])
                .fk("issues_site_fk", "site_id", "sites")
                .fk("issues_epic_fk", "epic_id", "epics"),
            epics,
        ],
    )
}

#[test]
fn a_cycle_on_postgres_is_broken_by_a_deferrable_constraint_first() {
    // epic_id is nullable too, but deferring changes no data.
    let schema = cycle(Engine::Postgres, true, false, true);
    let plan = slice_plan(&schema, &root("sites")).unwrap();
    assert_eq!(plan.deferred, [("epics".to_owned(), "epics_lead_fk".to_owned())]);
    assert!(plan.tables.iter().all(|t| t.set_after.is_empty()));
    assert_eq!(order(&plan), ["sites", "epics", "issues"]);
    assert_parents_first(&schema, &plan);
    assert_eq!(
        plan.describe()[1..3],
        [
            "2. epics ← sites, by epics.site_id → sites.id",
            "   constraint epics_lead_fk checked at commit (breaks a reference cycle)"
        ]
    );
}

#[test]
fn a_cycle_on_postgres_is_broken_by_a_nullable_key_set_after() {
    let schema = cycle(Engine::Postgres, true, false, false);
    let plan = slice_plan(&schema, &root("sites")).unwrap();
    assert!(plan.deferred.is_empty());
    assert_eq!(plan.table("issues").unwrap().set_after, ["epic_id"]);
    assert!(plan.table("epics").unwrap().set_after.is_empty());
    assert_eq!(order(&plan), ["sites", "issues", "epics"]);
    assert_parents_first(&schema, &plan);
    assert_eq!(
        plan.describe()[1..3],
        [
            "2. issues ← sites, by issues.site_id → sites.id",
            "   issues.epic_id inserted as NULL and set after every insert (breaks a reference cycle)"
        ]
    );
}

#[test]
fn a_cycle_with_neither_is_refused_on_postgres_naming_its_tables() {
    let schema = cycle(Engine::Postgres, false, false, false);
    assert_eq!(
        plan_err(&schema, &root("sites")),
        PlanError::UnbreakableCycle { tables: names(&["epics", "issues"]) }
    );
}

#[test]
fn engines_that_defer_every_reference_keep_the_cycle() {
    for engine in [Engine::Sqlite, Engine::Mysql] {
        let schema = cycle(engine, false, false, false);
        let plan = slice_plan(&schema, &root("sites")).unwrap();
        assert_eq!(order(&plan), ["sites", "epics", "issues"], "{engine:?}");
        assert!(plan.deferred.is_empty());
        assert!(plan.tables.iter().all(|t| t.set_after.is_empty()));
    }
}

#[test]
fn a_cycle_breaks_a_key_that_does_not_decide_before_one_that_does() {
    // members are reached only through teams: members.team_id decides them. By name alone,
    // members_team_fk would be broken before teams_captain_fk.
    let schema = build(
        Engine::Postgres,
        vec![
            t("sites").col("id", "uuid").pk(&["id"]),
            t("teams")
                .col("id", "bigint")
                .col("site_id", "uuid")
                .null("captain_id", "bigint")
                .pk(&["id"])
                .fk("teams_site_fk", "site_id", "sites")
                .fk("teams_captain_fk", "captain_id", "members"),
            t("members").col("id", "bigint").null("team_id", "bigint").pk(&["id"]).fk(
                "members_team_fk",
                "team_id",
                "teams",
            ),
        ],
    );
    let plan = slice_plan(&schema, &root("sites")).unwrap();
    assert_eq!(plan.table("teams").unwrap().set_after, ["captain_id"]);
    assert!(plan.table("members").unwrap().set_after.is_empty());
    assert_eq!(order(&plan), ["sites", "teams", "members"]);
    // Inside the cycle only nearer parents decide: teams is not decided by its captain.
    assert_eq!(
        plan.table("teams").unwrap().via,
        [parent("teams_site_fk", &["site_id"], "sites", &["id"], false)]
    );
}

#[test]
fn a_cycle_through_the_root_is_broken_at_the_root() {
    // sites.owner_id → users, users.site_id → sites: the root's key decides it, never a
    // foreign key, so its nullable owner is set after.
    let schema = build(
        Engine::Postgres,
        vec![
            t("sites").col("id", "uuid").null("owner_id", "bigint").pk(&["id"]).fk(
                "sites_owner_fk",
                "owner_id",
                "users",
            ),
            t("users").col("id", "bigint").col("site_id", "uuid").pk(&["id"]).fk(
                "users_site_fk",
                "site_id",
                "sites",
            ),
        ],
    );
    let plan = slice_plan(&schema, &root("sites")).unwrap();
    assert_eq!(order(&plan), ["sites", "users"]);
    assert_eq!(plan.table("sites").unwrap().set_after, ["owner_id"]);
    assert_eq!(plan.table("sites").unwrap().via, [Via::Root { column: "id".into() }]);
    assert_eq!(
        plan.table("users").unwrap().via,
        [parent("users_site_fk", &["site_id"], "sites", &["id"], false)]
    );
}

#[test]
fn a_longer_cycle_is_broken_until_none_is_left() {
    // a → b → c → a, every key nullable; on Postgres one break suffices.
    let schema = build(
        Engine::Postgres,
        vec![
            t("sites").col("id", "uuid").pk(&["id"]),
            t("a")
                .col("id", "bigint")
                .col("site_id", "uuid")
                .null("c_id", "bigint")
                .pk(&["id"])
                .fk("a_site", "site_id", "sites")
                .fk("a_c", "c_id", "c"),
            t("b").col("id", "bigint").null("a_id", "bigint").pk(&["id"]).fk("b_a", "a_id", "a"),
            t("c").col("id", "bigint").null("b_id", "bigint").pk(&["id"]).fk("c_b", "b_id", "b"),
        ],
    );
    let plan = slice_plan(&schema, &root("sites")).unwrap();
    // a_c does not decide a (sites does) and is first by name.
    assert_eq!(plan.table("a").unwrap().set_after, ["c_id"]);
    assert_eq!(order(&plan), ["sites", "a", "b", "c"]);
    assert_parents_first(&schema, &plan);
    assert_eq!(plan.table("c").unwrap().path, ["c", "b", "a", "sites"]);
}

#[test]
fn two_cycles_through_one_nullable_key_break_it_alone() {
    // The example's: sites.default_project_id → projects, projects.site_id → sites (a cycle),
    // and projects.lead_id → users, users.site_id → sites (a second cycle through the same
    // sites → projects key). Breaking lead_id first is not enough and breaking both is more
    // than needed: only default_project_id is set after.
    let schema = build(
        Engine::Postgres,
        vec![
            t("sites").col("id", "uuid").null("default_project_id", "bigint").pk(&["id"]).fk(
                "sites_default_project_id_fkey",
                "default_project_id",
                "projects",
            ),
            t("users").col("id", "bigint").col("site_id", "uuid").pk(&["id"]).fk(
                "users_site_id_fkey",
                "site_id",
                "sites",
            ),
            t("projects")
                .col("id", "bigint")
                .col("site_id", "uuid")
                .null("lead_id", "bigint")
                .pk(&["id"])
                .fk("projects_site_id_fkey", "site_id", "sites")
                .fk("projects_lead_id_fkey", "lead_id", "users"),
        ],
    );
    let plan = slice_plan(&schema, &root("sites")).unwrap();
    assert_eq!(plan.table("sites").unwrap().set_after, ["default_project_id"]);
    assert!(plan.table("projects").unwrap().set_after.is_empty(), "{plan:?}");
    assert_eq!(order(&plan), ["sites", "users", "projects"]);
    assert_parents_first(&schema, &plan);
}

// ---------------------------------------------------------------------------------------------
// The rendering.

#[test]
fn describe_shows_paths_keys_order_and_triggers() {
    let plan = slice_plan(&example(Engine::Postgres), &root("sites")).unwrap();
    assert_eq!(
        plan.describe(),
        [
            "1. sites — root, tenant = sites.id (uuid)",
            "2. labels ← sites, by labels.site_id → sites.id",
            "3. users ← sites, by users.site_id → sites.id",
            "4. projects ← sites, by projects.site_id → sites.id",
            "5. issues ← projects ← sites, by issues.project_id → projects.id",
            "   triggers not fired during the copy (session_replication_role = replica): audit_issues",
            "6. comments ← issues ← projects ← sites, by comments.issue_id → issues.id",
            "7. issue_labels ← labels ← sites, by issue_labels(label_site_id, label_id) → labels(site_id, id)",
            "8. attachments ← comments ← issues ← projects ← sites, by attachments.comment_id → comments.id",
            "9. reactions ← comments ← issues ← projects ← sites, by reactions.comment_id → comments.id when set; rows with none set are in no slice",
            "deletes run in the reverse order",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Declared references.

fn reference(child: &str, columns: &[&str], parent: &str, parent_columns: &[&str]) -> Reference {
    Reference {
        child: child.to_owned(),
        columns: names(columns),
        parent: parent.to_owned(),
        parent_columns: names(parent_columns),
    }
}

/// The example's shape with no foreign key at all: sites ← projects ← issues (a nullable
/// parent issue) ← comments, and epics ⇄ issues in a cycle (both keys NOT NULL), all logical.
fn logical(engine: Engine) -> Schema {
    build(
        engine,
        vec![
            t("sites").col("id", "uuid").col("site_id", "uuid").pk(&["id"]),
            t("projects").col("id", "uuid").col("site_id", "uuid").pk(&["id"]),
            t("issues")
                .col("id", "uuid")
                .col("project_id", "uuid")
                .null("parent_id", "uuid")
                .null("epic_id", "uuid")
                .pk(&["id"]),
            t("epics").col("id", "uuid").col("lead_issue_id", "uuid").pk(&["id"]),
            t("comments").col("id", "uuid").col("issue_id", "uuid").pk(&["id"]),
        ],
    )
}

fn logical_references() -> Vec<Reference> {
    vec![
        reference("projects", &["site_id"], "sites", &["id"]),
        reference("issues", &["project_id"], "projects", &["id"]),
        reference("issues", &["parent_id"], "issues", &["id"]),
        reference("comments", &["issue_id"], "issues", &["id"]),
        reference("epics", &["lead_issue_id"], "issues", &["id"]),
        reference("issues", &["epic_id"], "epics", &["id"]),
    ]
}

#[test]
fn declared_references_are_discovered_ranked_and_ordered_like_foreign_keys() {
    let schema = logical(Engine::Postgres);
    assert_eq!(order(&slice_plan(&schema, &root("sites")).unwrap()), ["sites"], "no key: alone");
    let request = Request { references: logical_references(), ..root("sites") };
    let plan = slice_plan(&schema, &request).unwrap();
    assert_eq!(order(&plan), ["sites", "projects", "issues", "comments", "epics"]);
    let declared = |constraint: &str, columns: &[&str], to: &str, nullable: bool| Via::Parent {
        constraint: constraint.to_owned(),
        columns: names(columns),
        parent: to.to_owned(),
        parent_columns: names(&["id"]),
        nullable,
        declared: true,
    };
    assert_eq!(
        plan.table("issues").unwrap().via,
        [declared("declared:issues(project_id)->projects(id)", &["project_id"], "projects", false)]
    );
    assert_eq!(plan.table("comments").unwrap().path, ["comments", "issues", "projects", "sites"]);
    // The cycle issues ⇄ epics has no constraint behind it: nothing to defer or set after.
    assert!(plan.deferred.is_empty());
    assert!(plan.tables.iter().all(|t| t.set_after.is_empty()), "{plan:?}");
    assert_eq!(plan.references, request.references);
    let lines = plan.describe();
    assert!(
        lines.contains(
            &"3. issues ← projects ← sites, by issues.project_id → projects.id (declared)"
                .to_owned()
        ),
        "{lines:#?}"
    );
    // A schema declared once plans the same.
    let declared_schema = declare(&schema, &request.references).unwrap();
    assert_eq!(slice_plan(&declared_schema, &request).unwrap(), plan);
    assert_eq!(
        declared_schema.tables["issues"]
            .foreign_keys
            .iter()
            .map(|fk| fk.name.as_str())
            .collect::<Vec<_>>(),
        [
            "declared:issues(project_id)->projects(id)",
            "declared:issues(parent_id)->issues(id)",
            "declared:issues(epic_id)->epics(id)"
        ]
    );
    assert!(
        declared_schema.tables["issues"]
            .foreign_keys
            .iter()
            .all(|fk| fk.declared && !fk.deferrable)
    );
    assert!(matches!(declare(&schema, &[]).unwrap(), std::borrow::Cow::Borrowed(_)));
}

#[test]
fn a_declared_reference_is_the_first_to_break_a_cycle_on_postgres() {
    // epics.lead_issue_id is a catalog key, nullable and DEFERRABLE; issues.epic_id is
    // declared: breaking it needs nothing, so the catalog key is neither deferred nor set.
    let mut schema = cycle(Engine::Postgres, false, true, true);
    if let Some(issues) = schema.tables.get_mut("issues") {
        issues.foreign_keys.retain(|fk| fk.parent != "epics");
    }
    let request = Request {
        references: vec![reference("issues", &["epic_id"], "epics", &["id"])],
        ..root("sites")
    };
    let plan = slice_plan(&schema, &request).unwrap();
    assert!(plan.deferred.is_empty(), "{:?}", plan.deferred);
    assert!(plan.tables.iter().all(|t| t.set_after.is_empty()));
    assert_parents_first(&schema, &plan);
    // Without the declaration there is no cycle, and no declared key in any via.
    let plain = slice_plan(&schema, &root("sites")).unwrap();
    assert!(
        plain
            .tables
            .iter()
            .flat_map(|t| &t.via)
            .all(|v| !matches!(v, Via::Parent { declared: true, .. }))
    );
}

#[test]
fn a_declared_reference_is_refused_naming_it_as_written() {
    let mut schema = logical(Engine::Sqlite);
    if let Some(comments) = schema.tables.get_mut("comments") {
        comments.foreign_keys.push(ForeignKey {
            name: "fk0".into(),
            columns: names(&["issue_id"]),
            parent: "issues".into(),
            parent_columns: names(&["id"]),
            deferrable: false,
            declared: false,
        });
    }
    let refused = |r: Reference| {
        let request = Request { references: vec![r], ..root("sites") };
        plan_err(&schema, &request)
    };
    let cases = [
        (
            reference("issue", &["project_id"], "projects", &["id"]),
            "the reference `issue(project_id) -> projects(id)` names a table `issue` that does not exist",
        ),
        (
            reference("issues", &["project_id"], "project", &["id"]),
            "the reference `issues(project_id) -> project(id)` names a table `project` that does not exist",
        ),
        (
            reference("issues", &["projectid"], "projects", &["id"]),
            "the reference `issues(projectid) -> projects(id)` names a column `issues`.`projectid` that does not exist",
        ),
        (
            reference("issues", &["project_id"], "projects", &["key"]),
            "names a column `projects`.`key` that does not exist",
        ),
        (
            reference("issues", &["project_id", "epic_id"], "projects", &["id"]),
            "the reference `issues(project_id, epic_id) -> projects(id)` pairs 2 column(s) of the referring table with 1",
        ),
        (
            reference("issues", &[], "projects", &[]),
            "the reference `issues() -> projects()` pairs 0 column(s)",
        ),
        (
            reference("comments", &["issue_id"], "issues", &["id"]),
            "the reference `comments(issue_id) -> issues(id)` is declared already: the catalog has it as the foreign key `fk0`",
        ),
    ];
    for (r, needle) in cases {
        let e = refused(r).to_string();
        assert!(e.contains(needle), "{e}");
    }
    assert!(matches!(
        refused(reference("comments", &["issue_id"], "issues", &["id"])),
        PlanError::ReferenceDeclaredAlready { .. }
    ));
}

#[test]
fn as_a_new_tenant_declared_references_follow_and_the_roots_tenant_column_is_the_tenant() {
    let schema = logical(Engine::Postgres);
    let request = Request {
        references: logical_references(),
        tenant_column: Some("site_id".into()),
        ..root("sites")
    };
    let plan = slice_plan(&schema, &request).unwrap();
    // The remap reads the catalog as given: it declares the plan's references itself.
    let r = remap::plan(&schema, &plan).unwrap();
    let changed = |table: &str| {
        let i = plan.tables.iter().position(|t| t.name == table).unwrap();
        r.columns[i].clone()
    };
    assert_eq!(changed("sites").get("id"), Some(&remap::Source::Tenant));
    assert_eq!(
        changed("sites").get("site_id"),
        Some(&remap::Source::Tenant),
        "the root's tenant column"
    );
    assert_eq!(changed("projects").get("site_id"), Some(&remap::Source::Tenant));
    let issues = changed("issues");
    let owner =
        |table: &str| r.owners.iter().position(|o| o.table == table).map(remap::Source::Key);
    assert_eq!(issues.get("project_id").copied(), owner("projects"));
    assert_eq!(issues.get("parent_id").copied(), owner("issues"));
    assert_eq!(issues.get("epic_id").copied(), owner("epics"));
    assert_eq!(changed("comments").get("issue_id").copied(), owner("issues"));
    assert_eq!(
        r.describe(&schema, &plan),
        [
            "the new tenant id: sites.id, sites.site_id, projects.site_id",
            "keys remapped: projects.id (uuid, derived), issues.id (uuid, derived), comments.id (uuid, derived), epics.id (uuid, derived)",
            "following their parent: projects.site_id -> sites.id (declared), issues.project_id -> projects.id (declared), issues.parent_id -> issues.id (declared), issues.epic_id -> epics.id (declared), comments.issue_id -> issues.id (declared), epics.lead_issue_id -> issues.id (declared)",
        ]
    );
    // Without `tenant_column` the root's `site_id` is an ordinary column.
    let plan = slice_plan(&schema, &Request { tenant_column: None, ..request }).unwrap();
    let r = remap::plan(&schema, &plan).unwrap();
    assert_eq!(r.columns[0].get("site_id"), None);
}

/// Review findings: `tenant_column` is the tenant in every planned table that has it (also one
/// reached through a reference); a declared reference must name its parent's key, must not give
/// a column a second parent, and under `as` must not leave the slice.
#[test]
fn declared_references_under_as_never_keep_the_old_tenant() {
    let schema = build(
        Engine::Sqlite,
        vec![
            t("sites").col("id", "text").col("site_id", "text").pk(&["id"]),
            t("projects").col("id", "text").col("site_id", "text").pk(&["id"]),
            t("issues")
                .col("id", "text")
                .col("site_id", "text")
                .col("project_id", "text")
                .pk(&["id"]),
        ],
    );
    let request = Request {
        tables: names(&["projects", "issues"]),
        tenant_column: Some("site_id".into()),
        references: vec![
            reference("projects", &["site_id"], "sites", &["id"]),
            reference("issues", &["project_id"], "projects", &["id"]),
        ],
        ..root("sites")
    };
    let plan = slice_plan(&schema, &request).unwrap();
    let r = remap::plan(&schema, &plan).unwrap();
    let i = plan.tables.iter().position(|t| t.name == "issues").unwrap();
    assert_eq!(
        r.columns[i].get("site_id"),
        Some(&remap::Source::Tenant),
        "issues are reached through project_id, and their site_id still holds the tenant"
    );

    // The parent's key, not another of its columns (a typo).
    let typo = Request {
        references: vec![reference("issues", &["project_id"], "projects", &["site_id"])],
        ..request.clone()
    };
    let e = slice_plan(&schema, &typo).unwrap_err().to_string();
    assert!(
        e.contains("issues(project_id) -> projects(site_id)") && e.contains("primary key"),
        "{e}"
    );
    // One column, two parents.
    let twice = Request {
        references: vec![
            reference("issues", &["project_id"], "projects", &["id"]),
            reference("issues", &["project_id"], "sites", &["id"]),
        ],
        ..request.clone()
    };
    let e = slice_plan(&schema, &twice).unwrap_err().to_string();
    assert!(e.contains("second parent") && e.contains("`issues`.`project_id`"), "{e}");
    // Under `as`, a declared reference out of the slice: refused, naming it.
    let outside = Request {
        root: None,
        tables: names(&["issues"]),
        references: vec![reference("issues", &["project_id"], "projects", &["id"])],
        ..request
    };
    let plan = slice_plan(&schema, &outside).unwrap();
    let e = remap::plan(&schema, &plan).unwrap_err().to_string();
    assert!(
        e.contains("issues(project_id)->projects(id)") && e.contains("not in the slice"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// The selectors on a real SQLite database.

const DDL: &str = r#"
CREATE TABLE sites (id TEXT PRIMARY KEY, name TEXT NOT NULL, owner TEXT);
CREATE TABLE users (id INTEGER PRIMARY KEY, site_id TEXT NOT NULL REFERENCES sites(id), name TEXT NOT NULL, owner TEXT);
CREATE TABLE projects (id INTEGER PRIMARY KEY, site_id TEXT NOT NULL REFERENCES sites(id), lead_user_id INTEGER REFERENCES users(id), owner TEXT);
CREATE TABLE labels (site_id TEXT NOT NULL REFERENCES sites(id), id INTEGER NOT NULL, name TEXT NOT NULL, owner TEXT, PRIMARY KEY (site_id, id));
CREATE TABLE issues (id INTEGER PRIMARY KEY, parent_issue_id INTEGER REFERENCES issues(id), reporter_id INTEGER REFERENCES users(id), project_id INTEGER NOT NULL REFERENCES projects(id), owner TEXT);
CREATE TABLE comments (id INTEGER PRIMARY KEY, issue_id INTEGER NOT NULL REFERENCES issues(id), author_id INTEGER REFERENCES users(id), reply_to INTEGER REFERENCES comments(id), owner TEXT);
CREATE TABLE issue_labels (issue_id INTEGER NOT NULL REFERENCES issues(id), label_site_id TEXT NOT NULL, label_id INTEGER NOT NULL, owner TEXT,
  PRIMARY KEY (issue_id, label_site_id, label_id), FOREIGN KEY (label_site_id, label_id) REFERENCES labels(site_id, id));
CREATE TABLE attachments (id INTEGER PRIMARY KEY, comment_id INTEGER NOT NULL REFERENCES comments(id), owner TEXT);
CREATE TABLE reactions (id INTEGER PRIMARY KEY, comment_id INTEGER REFERENCES comments(id), owner TEXT);
"#;

const TENANTS: [&str; 3] = [
    "0b7c5a1e-0000-4000-8000-00000000000a",
    "0b7c5a1e-0000-4000-8000-00000000000b",
    "0b7c5a1e-0000-4000-8000-00000000000c",
];

/// Rows of three tenants; each row's `owner` is the tenant the module's rule gives it
/// (`NULL`: none), written by hand here and compared with what the selectors find.
fn rows() -> Vec<String> {
    let mut sql = Vec::new();
    for (k, site) in TENANTS.iter().enumerate() {
        let n = |i: usize| 100 * (k + 1) + i;
        let o = format!("'{site}'");
        sql.push(format!("INSERT INTO sites VALUES ('{site}', 'site {k}', {o})"));
        sql.push(format!(
            "INSERT INTO users VALUES ({}, '{site}', 'lead', {o}), ({}, '{site}', 'dev', {o})",
            n(1),
            n(2)
        ));
        sql.push(format!(
            "INSERT INTO projects VALUES ({}, '{site}', {}, {o}), ({}, '{site}', NULL, {o})",
            n(1),
            n(1),
            n(2)
        ));
        sql.push(format!(
            "INSERT INTO labels VALUES ('{site}', 1, 'bug', {o}), ('{site}', 2, 'idea', {o})"
        ));
        // An issue, and its sub-task without a reporter in the other project.
        sql.push(format!(
            "INSERT INTO issues VALUES ({}, NULL, {}, {}, {o}), ({}, {}, NULL, {}, {o})",
            n(1),
            n(2),
            n(1),
            n(2),
            n(1),
            n(2)
        ));
        // A comment by a user, an anonymous one (decided by its issue), a reply.
        sql.push(format!(
            "INSERT INTO comments VALUES ({}, {}, {}, NULL, {o}), ({}, {}, NULL, NULL, {o}), ({}, {}, {}, {}, {o})",
            n(1), n(1), n(1), n(2), n(2), n(3), n(1), n(2), n(1)
        ));
        sql.push(format!(
            "INSERT INTO issue_labels VALUES ({}, '{site}', 1, {o}), ({}, '{site}', 2, {o})",
            n(1),
            n(2)
        ));
        sql.push(format!("INSERT INTO attachments VALUES ({}, {}, {o})", n(1), n(2)));
        sql.push(format!("INSERT INTO reactions VALUES ({}, {}, {o})", n(1), n(3)));
    }
    let b = TENANTS[1];
    // Across tenants: user 101 (of A) comments on issue 201 (of B). The NOT NULL issue key
    // decides before the nearer, nullable author: the comment is B's (where it was written),
    // and so is its attachment.
    sql.push(format!("INSERT INTO comments VALUES (901, 201, 101, NULL, '{b}')"));
    sql.push(format!("INSERT INTO attachments VALUES (901, 901, '{b}')"));
    // Issue 101 (of A) labelled with B's label: the composite key into labels (distance 1)
    // decides before the issue (distance 2): B's.
    sql.push(format!("INSERT INTO issue_labels VALUES (101, '{b}', 2, '{b}')"));
    // A reaction without a comment is no tenant's.
    sql.push("INSERT INTO reactions VALUES (999, NULL, NULL)".to_owned());
    sql
}

/// Runs every table's selector of `$plan` for each tenant on `$conn` (`$tenant`: the
/// placeholder) and compares the rows with those whose `owner` is the tenant.
macro_rules! check_selectors {
    ($conn:ident, $plan:ident, $tenant:expr) => {{
        let plan = &$plan;
        let scope = Scope { dialect: Dialect::Ansi, qualifier: "", tenant: $tenant };
        let mut selected_somewhere = 0i64;
        for table in &plan.tables {
            let key = Dialect::Ansi.list(table.primary_key.iter().map(String::as_str));
            let q = Dialect::Ansi.quote(&table.name);
            let condition = selector(&plan, table, scope);
            for tenant in TENANTS {
                let select = |filter: &str| {
                    format!(
                        "SELECT CAST(({}) AS TEXT) AS k FROM {q} WHERE {filter} ORDER BY 1",
                        key.replace(", ", " || '/' || ")
                    )
                };
                let found: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(select(&condition)))
                    .bind(tenant)
                    .fetch_all(&mut $conn)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {condition}: {e}", table.name))
                    .iter()
                    .map(|r| r.get("k"))
                    .collect();
                let expected: Vec<String> =
                    sqlx::query(sqlx::AssertSqlSafe(select(&format!("owner = {}", $tenant))))
                        .bind(tenant)
                        .fetch_all(&mut $conn)
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.get("k"))
                        .collect();
                assert!(!expected.is_empty(), "{} has no rows of {tenant}", table.name);
                assert_eq!(found, expected, "{} of {tenant}, selected by {condition}", table.name);
                selected_somewhere += found.len() as i64;
            }
        }
        // Every row but the ownerless reaction is in exactly one planned slice.
        let mut total = 0i64;
        for table in &plan.tables {
            let q = format!("SELECT count(*) FROM {}", Dialect::Ansi.quote(&table.name));
            total += sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(q))
                .fetch_one(&mut $conn)
                .await
                .unwrap();
        }
        assert_eq!(selected_somewhere, total - 1);
    }};
}

/// Loads `DDL` and `rows()` into `$conn`.
macro_rules! load_fixture {
    ($conn:ident) => {{
        sqlx::raw_sql(DDL).execute(&mut $conn).await.unwrap();
        for statement in rows() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                .execute(&mut $conn)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
    }};
}

#[tokio::test]
async fn selectors_find_exactly_each_tenants_rows_on_sqlite() {
    use sqlx::{Connection, Row};

    let plan = slice_plan(&example(Engine::Sqlite), &root("sites")).unwrap();
    let db = rewind_testkit::SqliteDb::new();
    let mut conn = sqlx::SqliteConnection::connect(&format!("{}?mode=rwc", db.url)).await.unwrap();
    sqlx::raw_sql("PRAGMA foreign_keys = ON").execute(&mut conn).await.unwrap();
    load_fixture!(conn);
    let violations = sqlx::query("PRAGMA foreign_key_check").fetch_all(&mut conn).await.unwrap();
    assert!(violations.is_empty(), "the fixture's rows violate a foreign key");
    check_selectors!(conn, plan, "?1");
    conn.close().await.unwrap();
}

/// The same SQL (composite row values, nested `IN`) on PostgreSQL, where the fixture's
/// foreign keys are enforced row by row.
#[tokio::test]
async fn selectors_find_exactly_each_tenants_rows_on_postgres() {
    use sqlx::{Connection, Row};

    let Some(base) = rewind_testkit::postgres_url("selectors_on_postgres") else { return };
    let plan = slice_plan(&example(Engine::Postgres), &root("sites")).unwrap();
    let schema = rewind_testkit::PgSchema::create(&base).await;
    let outcome = tokio::spawn({
        let url = schema.url.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            load_fixture!(conn);
            check_selectors!(conn, plan, "$1");
            conn.close().await.unwrap();
        }
    })
    .await;
    schema.drop_schema().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
