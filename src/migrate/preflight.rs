//! The checks a migration makes before it changes anything: both servers
//! reachable, the target database absent or empty, versions Mastodon and
//! PostgreSQL accept, client tools new enough, room on the target.

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::Client;

use crate::output::human_bytes;
use crate::postgres::{PgServer, Tool, major_of_version_num};

/// The schema version of every stable Mastodon 4.3.x (its last migration).
/// A newer schema is Mastodon 4.4 or later, which refuses PostgreSQL < 13.
pub const MASTODON_4_3_SCHEMA: &str = "20241007071624";

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    /// Allowed, but the admin should know (e.g. `--force` on a full target).
    Warn,
    /// Could not be checked here; not a refusal.
    Unknown,
    /// Refuses the migration.
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

impl Check {
    fn new(name: &str, status: Status, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
        }
    }
}

/// What the preflight needs to know besides the two servers.
pub struct PreflightInputs<'a> {
    pub source_database: &'a str,
    pub target_database: &'a str,
    /// Replace a target database that holds tables.
    pub force: bool,
    /// An earlier run of this migration began restoring into the target, so
    /// tables there are its own.
    pub restore_started: bool,
}

/// What the preflight found about the source, for the later stages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceFacts {
    pub version: String,
    pub major: u32,
    pub database_bytes: i64,
    /// The newest applied migration (`schema_migrations`), if any.
    pub schema_version: Option<String>,
}

/// Runs every check; a failed one does not stop the others, so the admin
/// sees all that is wrong at once. Changes nothing on either server.
pub async fn run(
    source: &dyn PgServer,
    target: &dyn PgServer,
    inputs: &PreflightInputs<'_>,
) -> Result<(Vec<Check>, SourceFacts)> {
    let mut checks = Vec::new();
    let mut facts = SourceFacts::default();

    let source_session = match source.connect(inputs.source_database).await {
        Ok(session) => {
            checks.push(Check::new(
                "source reachable",
                Status::Pass,
                source
                    .target()
                    .with_database(inputs.source_database)
                    .redacted(),
            ));
            Some(session)
        }
        Err(err) => {
            checks.push(Check::new(
                "source reachable",
                Status::Fail,
                format!("{err:#}"),
            ));
            None
        }
    };
    if let Some(session) = &source_session {
        facts = read_source(session).await?;
    }

    let target_admin = match target.connect_maintenance().await {
        Ok(admin) => {
            checks.push(Check::new(
                "target reachable",
                Status::Pass,
                target.target().redacted(),
            ));
            Some(admin)
        }
        Err(err) => {
            checks.push(Check::new(
                "target reachable",
                Status::Fail,
                format!("{err:#}"),
            ));
            None
        }
    };
    let Some(admin) = target_admin else {
        return Ok((checks, facts));
    };

    checks.push(target_database_check(target, &admin, inputs).await?);

    let version_num: i32 = admin
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let target_version: String = admin
        .query_one("SELECT current_setting('server_version')", &[])
        .await?
        .get(0);
    if source_session.is_some() {
        checks.extend(version_checks(
            facts.major,
            &facts.version,
            version_num,
            &target_version,
            facts.schema_version.as_deref(),
        ));
        checks.push(
            tools_check(
                source,
                target,
                facts.major,
                major_of_version_num(version_num),
            )
            .await,
        );
        checks.push(free_space_check(target, &admin, facts.database_bytes).await);
    }
    Ok((checks, facts))
}

async fn read_source(session: &Client) -> Result<SourceFacts> {
    let row = session
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), \
                    pg_database_size(current_database()), \
                    to_regclass('public.schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .context("could not read the source server's version and size")?;
    let has_migrations: bool = row.get(3);
    let schema_version = if has_migrations {
        session
            .query_one(
                "SELECT max(version)::text FROM public.schema_migrations",
                &[],
            )
            .await?
            .get(0)
    } else {
        None
    };
    Ok(SourceFacts {
        major: major_of_version_num(row.get(0)),
        version: row.get(1),
        database_bytes: row.get(2),
        schema_version,
    })
}

async fn target_database_check(
    target: &dyn PgServer,
    admin: &Client,
    inputs: &PreflightInputs<'_>,
) -> Result<Check> {
    const NAME: &str = "target database empty";
    let database = inputs.target_database;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await?
        .is_some();
    if !exists {
        return Ok(Check::new(
            NAME,
            Status::Pass,
            format!("{database} does not exist yet; the restore creates it"),
        ));
    }
    let session = target.connect(database).await?;
    let relations: i64 = session
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')",
            &[],
        )
        .await?
        .get(0);
    Ok(if relations == 0 {
        Check::new(
            NAME,
            Status::Pass,
            format!("{database} exists and is empty"),
        )
    } else if inputs.restore_started {
        Check::new(
            NAME,
            Status::Pass,
            format!(
                "{database} holds {relations} relations restored by this migration's earlier run"
            ),
        )
    } else if inputs.force {
        Check::new(
            NAME,
            Status::Warn,
            format!("{database} holds {relations} relations; --force: the restore replaces it"),
        )
    } else {
        Check::new(
            NAME,
            Status::Fail,
            format!(
                "{database} holds {relations} tables, views or sequences; nothing was changed. \
                 Migrate into an empty database, or pass --force to replace it"
            ),
        )
    })
}

/// The version rules: the target at least the source's major; not
/// PostgreSQL 14.0-14.3 (their CREATE/REINDEX INDEX CONCURRENTLY can
/// silently corrupt indexes, fixed in 14.4); not below 13 for a Mastodon
/// 4.4+ schema.
pub fn version_checks(
    source_major: u32,
    source_version: &str,
    target_version_num: i32,
    target_version: &str,
    schema_version: Option<&str>,
) -> Vec<Check> {
    let target_major = major_of_version_num(target_version_num);
    let mut checks = Vec::new();
    checks.push(if target_major >= source_major {
        Check::new(
            "target version",
            Status::Pass,
            format!("PostgreSQL {source_version} -> {target_version}"),
        )
    } else {
        Check::new(
            "target version",
            Status::Fail,
            format!(
                "the target runs PostgreSQL {target_version}, older than the source's \
                 {source_version}; a dump does not go back to an older major. Use a target of \
                 PostgreSQL {source_major} or newer"
            ),
        )
    });
    if (140_000..140_400).contains(&target_version_num) {
        checks.push(Check::new(
            "mastodon accepts the target",
            Status::Fail,
            format!(
                "PostgreSQL {target_version} has the 14.0-14.3 bug that silently corrupts indexes \
                 built with CREATE INDEX CONCURRENTLY (which Mastodon's migrations use); \
                 update the target to 14.4 or newer"
            ),
        ));
    } else if target_major < 13
        && schema_version.is_some_and(|version| version > MASTODON_4_3_SCHEMA)
    {
        checks.push(Check::new(
            "mastodon accepts the target",
            Status::Fail,
            format!(
                "the instance's schema ({}) is Mastodon 4.4 or newer, which requires \
                 PostgreSQL 13 or newer; the target runs {target_version}",
                schema_version.unwrap_or_default()
            ),
        ));
    } else {
        checks.push(Check::new(
            "mastodon accepts the target",
            Status::Pass,
            match schema_version {
                Some(version) => format!("schema {version} on PostgreSQL {target_version}"),
                None => "no schema_migrations table in the source".to_string(),
            },
        ));
    }
    checks
}

/// pg_dump must be at least the source's major; pg_restore at least the
/// target's and the dump's (it cannot read a newer archive format).
async fn tools_check(
    source: &dyn PgServer,
    target: &dyn PgServer,
    source_major: u32,
    target_major: u32,
) -> Check {
    const NAME: &str = "client tools";
    let dump = source.tool_version(Tool::PgDump).await;
    let restore = target.tool_version(Tool::PgRestore).await;
    let (dump_major, dump_version) = match dump {
        Ok(found) => found,
        Err(err) => return Check::new(NAME, Status::Fail, format!("pg_dump: {err:#}")),
    };
    let (restore_major, restore_version) = match restore {
        Ok(found) => found,
        Err(err) => return Check::new(NAME, Status::Fail, format!("pg_restore: {err:#}")),
    };
    let mut wrong = Vec::new();
    if dump_major < source_major {
        wrong.push(format!(
            "pg_dump {dump_version} ({}) cannot dump PostgreSQL {source_major}",
            source.describe_tools()
        ));
    }
    if restore_major < target_major.max(dump_major) {
        wrong.push(format!(
            "pg_restore {restore_version} ({}) is older than {}",
            target.describe_tools(),
            if dump_major > target_major {
                format!("the pg_dump {dump_version} that writes the archive")
            } else {
                format!("the target's PostgreSQL {target_major}")
            }
        ));
    }
    if wrong.is_empty() {
        Check::new(
            NAME,
            Status::Pass,
            format!(
                "pg_dump {dump_version} ({}), pg_restore {restore_version} ({})",
                source.describe_tools(),
                target.describe_tools()
            ),
        )
    } else {
        Check::new(
            NAME,
            Status::Fail,
            format!(
                "{}; install the PostgreSQL {} client tools or set postgres.bin_dir",
                wrong.join("; "),
                source_major.max(target_major)
            ),
        )
    }
}

/// Room on the target's data directory for the database as it is on the
/// source (`pg_database_size` counts its tables, indexes and TOAST).
async fn free_space_check(target: &dyn PgServer, admin: &Client, needed: i64) -> Check {
    const NAME: &str = "free space on the target";
    let needed = needed.max(0) as u64;
    let data_directory: Option<String> = match admin.query_one("SHOW data_directory", &[]).await {
        Ok(row) => Some(row.get(0)),
        Err(_) => None,
    };
    let Some(data_directory) = data_directory else {
        return Check::new(
            NAME,
            Status::Unknown,
            format!(
                "unknown: the target login may not read data_directory (it needs superuser or \
                 pg_read_all_settings); the database needs about {}",
                human_bytes(needed)
            ),
        );
    };
    match target.free_bytes(&data_directory).await {
        Ok(Some(free)) if free >= needed => Check::new(
            NAME,
            Status::Pass,
            format!(
                "{} free on {data_directory}, the database needs about {}",
                human_bytes(free),
                human_bytes(needed)
            ),
        ),
        Ok(Some(free)) => Check::new(
            NAME,
            Status::Fail,
            format!(
                "only {} free on {data_directory}, the database needs about {} (its tables and \
                 indexes as they are on the source); free some space or grow the volume",
                human_bytes(free),
                human_bytes(needed)
            ),
        ),
        Ok(None) => Check::new(
            NAME,
            Status::Unknown,
            format!(
                "unknown: {data_directory} is on another machine; make sure it has more than {} free",
                human_bytes(needed)
            ),
        ),
        Err(err) => Check::new(
            NAME,
            Status::Unknown,
            format!(
                "unknown ({err:#}); make sure {data_directory} has more than {} free",
                human_bytes(needed)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(checks: &[Check]) -> Vec<Status> {
        checks.iter().map(|c| c.status).collect()
    }

    #[test]
    fn a_newer_or_equal_major_passes() {
        let checks = version_checks(13, "13.23", 170_012, "17.12", Some("20241007071624"));
        assert_eq!(statuses(&checks), [Status::Pass, Status::Pass]);
        let same = version_checks(15, "15.4", 150_018, "15.18", None);
        assert_eq!(statuses(&same), [Status::Pass, Status::Pass]);
    }

    #[test]
    fn an_older_target_is_refused() {
        let checks = version_checks(17, "17.2", 150_018, "15.18", None);
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].detail.contains("older than the source"));
    }

    #[test]
    fn postgres_14_0_to_14_3_is_refused_but_14_4_is_not() {
        for bad in [140_000, 140_003, 140_399] {
            let checks = version_checks(13, "13.1", bad, "14.x", None);
            assert_eq!(checks[1].status, Status::Fail, "{bad}");
            assert!(checks[1].detail.contains("14.4"));
        }
        let fixed = version_checks(13, "13.1", 140_400, "14.4", None);
        assert_eq!(fixed[1].status, Status::Pass);
    }

    #[test]
    fn mastodon_4_4_needs_postgres_13() {
        let newer_schema = "20250101000000";
        let checks = version_checks(12, "12.20", 120_020, "12.20", Some(newer_schema));
        assert_eq!(checks[1].status, Status::Fail);
        assert!(checks[1].detail.contains("4.4"));
        // A 4.3 schema is still fine on 12.
        let checks = version_checks(12, "12.20", 120_020, "12.20", Some(MASTODON_4_3_SCHEMA));
        assert_eq!(checks[1].status, Status::Pass);
    }
}
