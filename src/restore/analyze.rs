//! Planner statistics for a restored database (a dump carries none).
//!
//! With parallel pg_restore, one large table (Mastodon's `statuses`) keeps
//! one worker busy for most of the run while the other tables finish early.
//! tusk reads the archive's dependency graph, follows pg_restore's
//! `--verbose` "finished item" lines, and ANALYZEs each table on its own
//! session as soon as its data, indexes and constraints are in, so only
//! the last tables are left for the end.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};
use tokio_postgres::Client;

use crate::archive::{SECTION_DATA, SECTION_POST_DATA, TocEntry, read_toc};
use crate::postgres::BoxReader;
use crate::postgres::{PgServer, quote_ident};

/// A table as schema and name, unquoted.
pub type TableName = (String, String);

/// Which restore items each table waits for.
#[derive(Debug, Default)]
pub struct Plan {
    names: HashMap<i64, TableName>,
    /// Per TABLE DATA item: the table whose rows it loads.
    data: HashMap<i64, TableName>,
    /// Per table: items of the data and post-data sections not finished yet.
    waiting: HashMap<i64, usize>,
    /// Per item: the tables it holds back.
    holds: HashMap<i64, Vec<i64>>,
}

impl Plan {
    /// Every table with data waits for its data and for the post-data items
    /// on it (indexes, its own constraints and foreign keys, triggers, and
    /// items on those, such as comments on indexes). Another table's foreign
    /// key that references it does not hold it back: that ALTER only waits
    /// a moment for the ANALYZE, never deadlocks with it.
    pub fn from_toc(entries: &[TocEntry]) -> Plan {
        let by_id: HashMap<i64, &TocEntry> = entries.iter().map(|e| (e.dump_id, e)).collect();
        let tables: HashMap<i64, TableName> = entries
            .iter()
            .filter(|e| e.desc == "TABLE")
            .map(|e| {
                (
                    e.dump_id,
                    (e.namespace.clone().unwrap_or_default(), e.tag.clone()),
                )
            })
            .collect();
        let direct = |entry: &TocEntry| -> Vec<i64> {
            entry
                .deps
                .iter()
                .copied()
                .filter(|d| tables.contains_key(d))
                .collect()
        };
        let mut plan = Plan::default();
        for entry in entries {
            if entry.section != SECTION_DATA && entry.section != SECTION_POST_DATA {
                continue;
            }
            let mut held = direct(entry);
            if entry.desc != "FK CONSTRAINT" {
                for dep in &entry.deps {
                    if let Some(parent) = by_id.get(dep)
                        && parent.section == SECTION_POST_DATA
                    {
                        held.extend(direct(parent));
                    }
                }
            }
            held.sort_unstable();
            held.dedup();
            if held.is_empty() {
                continue;
            }
            for table in &held {
                *plan.waiting.entry(*table).or_default() += 1;
            }
            plan.holds.insert(entry.dump_id, held);
        }
        // Only tables with data are worth analyzing early.
        let with_data: HashSet<i64> = entries
            .iter()
            .filter(|e| e.desc == "TABLE DATA")
            .flat_map(direct)
            .collect();
        plan.waiting.retain(|table, _| with_data.contains(table));
        plan.data = entries
            .iter()
            .filter(|e| e.desc == "TABLE DATA")
            .map(|e| {
                (
                    e.dump_id,
                    (e.namespace.clone().unwrap_or_default(), e.tag.clone()),
                )
            })
            .collect();
        plan.names = tables
            .into_iter()
            .filter(|(id, _)| plan.waiting.contains_key(id))
            .collect();
        plan
    }

    /// The table whose rows `item` loaded, when it is a TABLE DATA item:
    /// its rows are final from then on (later items only add indexes and
    /// constraints).
    pub fn data_of(&self, item: i64) -> Option<&TableName> {
        self.data.get(&item)
    }

    /// Marks an item finished; returns the tables that are now complete.
    pub fn finished(&mut self, item: i64) -> Vec<TableName> {
        let mut ready = Vec::new();
        for table in self.holds.remove(&item).unwrap_or_default() {
            if let Some(count) = self.waiting.get_mut(&table) {
                *count -= 1;
                if *count == 0 {
                    self.waiting.remove(&table);
                    if let Some(name) = self.names.get(&table) {
                        ready.push(name.clone());
                    }
                }
            }
        }
        ready
    }
}

/// The dump id in pg_restore's `pg_restore: finished item 3507 TABLE DATA accounts`.
pub fn finished_item(line: &str) -> Option<i64> {
    let rest = line.split_once("finished item ")?.1;
    rest.split_whitespace().next()?.parse().ok()
}

/// Reads the table of contents from the start of the compressed archive;
/// `None` (and a debug line) when it cannot, which only costs the overlap.
pub async fn read_plan(archive: BoxReader) -> Option<Plan> {
    match read_toc(archive).await {
        Ok(entries) => Some(Plan::from_toc(&entries)),
        Err(err) => {
            tracing::debug!("no early ANALYZE: {err:#}");
            None
        }
    }
}

/// ANALYZEs one table.
pub async fn analyze_table(session: &Client, (schema, name): &TableName) -> Result<()> {
    session
        .batch_execute(&format!(
            "ANALYZE {}.{}",
            quote_ident(schema),
            quote_ident(name)
        ))
        .await
        .with_context(|| format!("ANALYZE {schema}.{name} failed"))
}

/// ANALYZEs every table not in `done`, one table per session across
/// `jobs` sessions, largest first.
pub async fn analyze_rest(
    server: &dyn PgServer,
    database: &str,
    jobs: u32,
    done: &HashSet<TableName>,
) -> Result<()> {
    let session = server.connect(database).await?;
    let tables: Vec<TableName> = session
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm', 'p') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' \
             ORDER BY pg_total_relation_size(c.oid) DESC",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .filter(|table| !done.contains(table))
        .collect();
    let queue = std::sync::Mutex::new(tables.into_iter());
    let worker = |session: Client| {
        let queue = &queue;
        async move {
            loop {
                let next = queue.lock().expect("queue lock").next();
                let Some(table) = next else {
                    return anyhow::Ok(());
                };
                analyze_table(&session, &table).await?;
            }
        }
    };
    let mut workers = vec![worker(session)];
    for _ in 1..jobs.max(1) {
        workers.push(worker(server.connect(database).await?));
    }
    futures_util::future::try_join_all(workers).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dump_id: i64, desc: &str, tag: &str, section: i64, deps: &[i64]) -> TocEntry {
        TocEntry::for_tests(dump_id, desc, tag, section, deps)
    }

    #[test]
    fn tables_wait_for_their_own_items_but_not_for_others_foreign_keys() {
        const PRE: i64 = 2;
        let entries = vec![
            entry(1, "TABLE", "accounts", PRE, &[]),
            entry(2, "TABLE", "statuses", PRE, &[]),
            entry(10, "TABLE DATA", "accounts", SECTION_DATA, &[1]),
            entry(11, "TABLE DATA", "statuses", SECTION_DATA, &[2]),
            entry(
                20,
                "CONSTRAINT",
                "accounts accounts_pkey",
                SECTION_POST_DATA,
                &[1],
            ),
            entry(
                21,
                "INDEX",
                "index_statuses_on_uri",
                SECTION_POST_DATA,
                &[2],
            ),
            entry(
                22,
                "COMMENT",
                "INDEX index_statuses_on_uri",
                SECTION_POST_DATA,
                &[21],
            ),
            // statuses.account_id -> accounts: depends on statuses and accounts' key.
            entry(
                30,
                "FK CONSTRAINT",
                "statuses fk_accounts",
                SECTION_POST_DATA,
                &[2, 20],
            ),
        ];
        let mut plan = Plan::from_toc(&entries);
        let accounts = ("".to_string(), "accounts".to_string());
        let statuses = ("".to_string(), "statuses".to_string());
        // The rows are in once the TABLE DATA item is: the content can be
        // read long before the table is complete.
        assert_eq!(plan.data_of(11), Some(&statuses));
        assert_eq!(plan.data_of(20), None);
        assert!(plan.finished(10).is_empty());
        assert_eq!(plan.finished(20), vec![accounts]);
        assert!(plan.finished(11).is_empty());
        assert!(plan.finished(21).is_empty());
        assert!(
            plan.finished(22).is_empty(),
            "the comment on its index holds statuses"
        );
        assert_eq!(plan.finished(30), vec![statuses]);
        assert!(plan.finished(30).is_empty());
    }

    #[test]
    fn reads_finished_items() {
        assert_eq!(
            finished_item("pg_restore: finished item 3507 TABLE DATA accounts"),
            Some(3507)
        );
        assert_eq!(
            finished_item("pg_restore: launching item 3507 TABLE DATA accounts"),
            None
        );
    }
}
