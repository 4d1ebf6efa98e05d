//! What a set records about its database, and the comparison verify makes.
//!
//! The same function reads the facts at backup time (in the dump's
//! snapshot) and from a restored copy, so a difference can only come from
//! the data, never from two ways of asking.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::manifest::{DatabaseFacts, MigrationsFacts, Problem};
use crate::postgres::quote_ident;

/// Reads the facts of the database `session` is connected to. Backup calls
/// it inside the dump's snapshot transaction; verify on the scratch copy, so
/// both sides of the comparison come from the same queries.
pub async fn read(session: &Client) -> Result<DatabaseFacts> {
    let row = session
        .query_one(
            "SELECT current_database(), pg_get_userbyid(d.datdba), \
                    pg_encoding_to_char(d.encoding), pg_database_size(d.oid) \
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await?;
    let (name, owner, encoding, size_bytes): (String, String, String, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));

    let tables = session
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                               WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                                 AND d.deptype = 'e') \
             ORDER BY 1, 2",
            &[],
        )
        .await?;
    let mut counts = BTreeMap::new();
    for table in tables {
        let (schema, relname): (String, String) = (table.get(0), table.get(1));
        let count: i64 = session
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.{}",
                    quote_ident(&schema),
                    quote_ident(&relname)
                ),
                &[],
            )
            .await
            .with_context(|| format!("could not count rows of {schema}.{relname}"))?
            .get(0);
        counts.insert(table_key(&schema, &relname), count);
    }

    let schema_migrations = if counts.contains_key("schema_migrations") {
        let versions = session
            .query("SELECT version::text FROM public.schema_migrations", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        Some(migrations_facts(versions))
    } else {
        None
    };

    let timestamp_id: bool = session
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'timestamp_id')",
            &[],
        )
        .await?
        .get(0);
    let sequences = session
        .query(
            "SELECT n.nspname, c.relname FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1, 2",
            &[],
        )
        .await?
        .iter()
        .map(|row| table_key(row.get(0), row.get(1)))
        .collect();

    let properties = super::properties::read(session, &name).await?;

    Ok(DatabaseFacts {
        properties: Some(properties),
        name,
        owner,
        encoding,
        size_bytes,
        schema_migrations,
        tables: counts,
        timestamp_id,
        sequences,
    })
}

/// `accounts` for the public schema, `schema.table` elsewhere.
pub fn table_key(schema: &str, name: &str) -> String {
    if schema == "public" {
        name.to_string()
    } else {
        format!("{schema}.{name}")
    }
}

/// Count, maximum and hash of the applied migration versions. Sorted here,
/// not in SQL, so the servers' collations cannot change the hash.
pub fn migrations_facts(mut versions: Vec<String>) -> MigrationsFacts {
    versions.sort();
    let mut hasher = Sha256::new();
    for (i, version) in versions.iter().enumerate() {
        if i > 0 {
            hasher.update(b"\n");
        }
        hasher.update(version.as_bytes());
    }
    MigrationsFacts {
        count: versions.len() as i64,
        max: versions.last().cloned(),
        sha256: hex::encode(hasher.finalize()),
    }
}

/// Every difference between the facts a set recorded and those read from a
/// restored copy: row counts, the applied migrations, and the objects
/// Mastodon needs that schema.rb does not create (`timestamp_id()`, the id
/// sequences).
pub fn compare(expected: &DatabaseFacts, got: &DatabaseFacts) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (table, rows) in &expected.tables {
        match got.tables.get(table) {
            Some(got_rows) if got_rows == rows => {}
            Some(got_rows) => problems.push(Problem {
                kind: "row_count".into(),
                subject: table.clone(),
                expected: rows.to_string(),
                got: got_rows.to_string(),
            }),
            None => problems.push(Problem {
                kind: "missing".into(),
                subject: table.clone(),
                expected: format!("{rows} rows"),
                got: "no such table".into(),
            }),
        }
    }
    if let Some(migrations) = &expected.schema_migrations {
        match &got.schema_migrations {
            Some(got_migrations) if got_migrations == migrations => {}
            Some(got_migrations) => problems.push(Problem {
                kind: "schema_migrations".into(),
                subject: "schema_migrations".into(),
                expected: format!("{} versions, max {:?}", migrations.count, migrations.max),
                got: format!(
                    "{} versions, max {:?}",
                    got_migrations.count, got_migrations.max
                ),
            }),
            None => problems.push(Problem {
                kind: "missing".into(),
                subject: "schema_migrations".into(),
                expected: "table".into(),
                got: "no such table".into(),
            }),
        }
    }
    if expected.timestamp_id && !got.timestamp_id {
        problems.push(Problem {
            kind: "object".into(),
            subject: "timestamp_id()".into(),
            expected: "function".into(),
            got: "missing".into(),
        });
    }
    for sequence in &expected.sequences {
        if !got.sequences.contains(sequence) {
            problems.push(Problem {
                kind: "object".into(),
                subject: sequence.clone(),
                expected: "sequence".into(),
                got: "missing".into(),
            });
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(tables: &[(&str, i64)], migrations: &[&str]) -> DatabaseFacts {
        DatabaseFacts {
            name: "mastodon".into(),
            owner: "mastodon".into(),
            encoding: "UTF8".into(),
            size_bytes: 0,
            schema_migrations: Some(migrations_facts(
                migrations.iter().map(|v| v.to_string()).collect(),
            )),
            tables: tables.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            timestamp_id: true,
            sequences: vec!["statuses_id_seq".into()],
            properties: None,
        }
    }

    #[test]
    fn identical_facts_have_no_problems() {
        let a = facts(&[("accounts", 3), ("statuses", 10)], &["1", "2"]);
        assert!(compare(&a, &a.clone()).is_empty());
    }

    #[test]
    fn names_each_difference() {
        let expected = facts(&[("accounts", 3), ("statuses", 10)], &["1", "2"]);
        let mut got = facts(&[("accounts", 2)], &["1"]);
        got.timestamp_id = false;
        got.sequences.clear();
        let kinds: Vec<(String, String)> = compare(&expected, &got)
            .into_iter()
            .map(|p| (p.kind, p.subject))
            .collect();
        assert_eq!(
            kinds,
            [
                ("row_count", "accounts"),
                ("missing", "statuses"),
                ("schema_migrations", "schema_migrations"),
                ("object", "timestamp_id()"),
                ("object", "statuses_id_seq"),
            ]
            .map(|(k, s)| (k.to_string(), s.to_string()))
        );
    }

    #[test]
    fn migration_hash_ignores_order() {
        let a = migrations_facts(vec!["2".into(), "10".into(), "1".into()]);
        let b = migrations_facts(vec!["1".into(), "10".into(), "2".into()]);
        assert_eq!(a, b);
        assert_eq!(a.max.as_deref(), Some("2"));
    }
}
