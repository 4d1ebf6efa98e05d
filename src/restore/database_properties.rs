//! The database's own properties: what belongs to the database object
//! rather than to anything inside it.
//!
//! pg_dump (11 and later) writes them as separate entries of the archive's
//! table of contents (pg_dump.c, dumpDatabase):
//!
//! - `DATABASE`: `CREATE DATABASE` with encoding, locale, collation
//!   provider and tablespace. tusk creates the database itself (see
//!   docs/commands.md for which of these it keeps).
//! - `DATABASE PROPERTIES` (tag: the name): `ALTER DATABASE x CONNECTION
//!   LIMIT`, `ALTER DATABASE x IS_TEMPLATE`, `ALTER DATABASE x SET ...` and
//!   `ALTER ROLE r IN DATABASE x SET ...`.
//! - `COMMENT`, `SECURITY LABEL` and `ACL` entries tagged `DATABASE x`:
//!   the comment, security labels and `GRANT`/`REVOKE ... ON DATABASE x`.
//!
//! pg_restore runs all of them only with `--create`, which tusk cannot use:
//! it restores into a staging database under another name. So tusk takes
//! the SQL of those entries from the archive, points each statement at the
//! staging database (only the identifier after `DATABASE` changes, never a
//! string), and runs it before the staging database replaces the target.
//! Everything here is keyed by the database's OID, so it survives the
//! rename.
//!
//! The backup also records the same properties in the manifest
//! ([`DatabaseProperties`]), so `tusk verify` can check that a restore
//! brings them back.

use std::collections::{BTreeSet, HashSet};

use anyhow::{Context, Result, bail};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::archive::TocEntry;
use crate::postgres::quote_ident;
use crate::set::properties::{DatabaseProperties, no_limit};

/// What one statement of the database-level SQL does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementKind {
    /// `ALTER DATABASE x SET name ...` / `RESET`.
    Setting {
        name: String,
    },
    /// `ALTER ROLE r IN DATABASE x SET name ...`.
    RoleSetting {
        role: String,
        name: String,
    },
    ConnectionLimit,
    IsTemplate,
    Comment,
    SecurityLabel,
    /// `GRANT`/`REVOKE ... ON DATABASE x`, and the `SET SESSION
    /// AUTHORIZATION` pg_dump wraps around grants made by someone other
    /// than the owner; `roles` are those it names (not PUBLIC).
    Privileges {
        roles: Vec<String>,
    },
}

impl StatementKind {
    /// For logs and reports: `setting search_path`, `grants`...
    pub fn describe(&self) -> String {
        match self {
            StatementKind::Setting { name } => format!("setting {name}"),
            StatementKind::RoleSetting { role, name } => {
                format!("setting {name} for role {role}")
            }
            StatementKind::ConnectionLimit => "connection limit".into(),
            StatementKind::IsTemplate => "template flag".into(),
            StatementKind::Comment => "comment".into(),
            StatementKind::SecurityLabel => "security label".into(),
            StatementKind::Privileges { .. } => "grants".into(),
        }
    }

    /// The roles that must exist for the statement to run.
    pub fn roles(&self) -> Vec<&str> {
        match self {
            StatementKind::RoleSetting { role, .. } => vec![role.as_str()],
            StatementKind::Privileges { roles } => roles.iter().map(String::as_str).collect(),
            _ => Vec::new(),
        }
    }

    pub fn is_privileges(&self) -> bool {
        matches!(self, StatementKind::Privileges { .. })
    }
}

/// One statement, split around the database's name so it can be pointed
/// at any database.
#[derive(Debug, Clone)]
pub struct PropertyStatement {
    pub kind: StatementKind,
    /// The text before, between and after the occurrences of the name.
    pieces: Vec<String>,
}

impl PropertyStatement {
    /// The statement for database `name`.
    pub fn sql_for(&self, name: &str) -> String {
        self.pieces.join(&quote_ident(name))
    }
}

/// The database-level statements of an archive, in pg_restore's order.
#[derive(Debug, Clone, Default)]
pub struct PropertyScript {
    pub statements: Vec<PropertyStatement>,
}

impl PropertyScript {
    /// Takes the database-level entries from a table of contents.
    /// `fallback_name` is the dumped database's name when the archive has
    /// no `DATABASE` entry to tell it.
    pub fn from_toc(entries: &[TocEntry], fallback_name: &str) -> Result<PropertyScript> {
        let name = entries
            .iter()
            .find(|e| e.desc == "DATABASE")
            .map_or(fallback_name, |e| e.tag.as_str());
        let encoding = archive_encoding(entries);
        let mut statements = Vec::new();
        for entry in entries.iter().filter(|e| is_database_level(e)) {
            let Some(sql) = &entry.definition else {
                continue;
            };
            // The reader decodes the archive's text as UTF-8, and tusk's
            // sessions speak UTF-8: text in another encoding would arrive
            // altered, so it is refused rather than applied wrongly.
            let passes_through = match encoding.as_deref() {
                None | Some("UTF8") => true,
                // Bytes as they are: intact when they were UTF-8.
                Some("SQLASCII") => !sql.contains('\u{FFFD}'),
                Some(_) => false,
            };
            if !sql.is_ascii() && !passes_through {
                bail!(
                    "the archive is in encoding {}: tusk applies the database's properties \
                     only from UTF-8 archives",
                    encoding.unwrap_or_default()
                );
            }
            for statement in split_statements(sql)? {
                statements.push(parse_statement(&statement, name).with_context(|| {
                    format!("unexpected SQL in the archive's {} entry", entry.desc)
                })?);
            }
        }
        Ok(PropertyScript { statements })
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Roles the statements name, sorted.
    pub fn roles(&self) -> BTreeSet<&str> {
        self.statements
            .iter()
            .flat_map(|s| s.kind.roles())
            .collect()
    }

    /// The statements whose roles are all in `existing`, and the
    /// descriptions of those left out.
    pub fn split_by_roles(&self, existing: &HashSet<String>) -> (PropertyScript, Vec<String>) {
        let mut kept = Vec::new();
        let mut left_out = Vec::new();
        for statement in &self.statements {
            if statement
                .kind
                .roles()
                .iter()
                .all(|role| existing.contains(*role))
            {
                kept.push(statement.clone());
            } else {
                left_out.push(statement.kind.describe());
            }
        }
        left_out.dedup();
        (PropertyScript { statements: kept }, left_out)
    }

    pub fn without_privileges(&self) -> PropertyScript {
        PropertyScript {
            statements: self
                .statements
                .iter()
                .filter(|s| !s.kind.is_privileges())
                .cloned()
                .collect(),
        }
    }

    /// What the statements set, without repeats: `setting search_path`, `grants`...
    pub fn describe(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for statement in &self.statements {
            let description = statement.kind.describe();
            if !seen.contains(&description) {
                seen.push(description);
            }
        }
        seen
    }

    /// Runs the statements against `database` in one transaction: all of
    /// them or none, stopping at the first error.
    pub async fn apply(&self, client: &mut Client, database: &str) -> Result<()> {
        self.run(client, database, true).await
    }

    /// Runs the statements against `database` and rolls them back: proves
    /// they apply (roles, setting names and values, permissions) before a
    /// long restore, without their effect on it (a `statement_timeout` or
    /// `default_transaction_read_only` would hinder pg_restore).
    pub async fn check(&self, client: &mut Client, database: &str) -> Result<()> {
        self.run(client, database, false).await
    }

    /// Applies the statements the connecting role may run, in one
    /// transaction; returns those it was denied (insufficient privilege,
    /// e.g. a setting only a superuser may set, or a role's settings
    /// without CREATEROLE). Any other error stops and undoes all. For a
    /// check such as verify's, where the verifying role need not be able
    /// to do everything a restore does.
    pub async fn apply_permitted(
        &self,
        client: &mut Client,
        database: &str,
    ) -> Result<Vec<StatementKind>> {
        let mut denied = Vec::new();
        let mut transaction = client.transaction().await?;
        for statement in &self.statements {
            let sql = statement.sql_for(database);
            let savepoint = transaction.savepoint("tusk_property").await?;
            match savepoint.batch_execute(&sql).await {
                Ok(()) => savepoint.commit().await?,
                Err(err) if err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                    savepoint.rollback().await?;
                    denied.push(statement.kind.clone());
                }
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!(
                            "could not apply the database's {} to {database}: {}",
                            statement.kind.describe(),
                            abbreviate(&sql)
                        )
                    });
                }
            }
        }
        transaction.commit().await?;
        Ok(denied)
    }

    async fn run(&self, client: &mut Client, database: &str, commit: bool) -> Result<()> {
        if self.statements.is_empty() {
            return Ok(());
        }
        let transaction = client.transaction().await?;
        for statement in &self.statements {
            let sql = statement.sql_for(database);
            transaction.batch_execute(&sql).await.with_context(|| {
                format!(
                    "could not apply the database's {} to {database}: {}",
                    statement.kind.describe(),
                    abbreviate(&sql)
                )
            })?;
        }
        if commit {
            transaction.commit().await?;
        } else {
            transaction.rollback().await?;
        }
        Ok(())
    }
}

/// Leaves out of `properties` what `kind` sets, so it is not compared.
pub fn forget(properties: &mut DatabaseProperties, kind: &StatementKind) {
    match kind {
        StatementKind::Setting { name } => {
            properties.settings.remove(name);
        }
        StatementKind::RoleSetting { role, name } => {
            if let Some(settings) = properties.role_settings.get_mut(role) {
                settings.remove(name);
                if settings.is_empty() {
                    properties.role_settings.remove(role);
                }
            }
        }
        StatementKind::Comment => properties.comment = None,
        StatementKind::ConnectionLimit => properties.connection_limit = no_limit(),
        StatementKind::IsTemplate => properties.is_template = false,
        StatementKind::Privileges { .. } => properties.privileges.clear(),
        StatementKind::SecurityLabel => {}
    }
}

/// The roles among `roles` that do not exist on the server.
pub async fn missing_roles<'a>(
    client: &Client,
    roles: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>> {
    let existing = existing_roles(client).await?;
    Ok(roles
        .into_iter()
        .filter(|role| !existing.contains(*role))
        .map(str::to_string)
        .collect())
}

pub async fn existing_roles(client: &Client) -> Result<HashSet<String>> {
    Ok(client
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// The client encoding the archive's text is in (its `ENCODING` entry,
/// `SET client_encoding = 'UTF8';`), upper case; `None` when absent.
fn archive_encoding(entries: &[TocEntry]) -> Option<String> {
    let sql = entries
        .iter()
        .find(|e| e.desc == "ENCODING")?
        .definition
        .as_deref()?;
    let value = sql.split('\'').nth(1)?;
    Some(value.to_ascii_uppercase().replace(['-', '_'], ""))
}

/// Entries pg_restore runs only with `--create` (pg_backup_archiver.c,
/// _tocEntryRequired): the database's properties and the comment, security
/// label and privileges tagged `DATABASE <name>`. The `DATABASE` entry
/// itself (CREATE DATABASE) is not among them: tusk creates the database.
fn is_database_level(entry: &TocEntry) -> bool {
    match entry.desc.as_str() {
        "DATABASE PROPERTIES" => true,
        "COMMENT" | "SECURITY LABEL" | "ACL" => entry.tag.starts_with("DATABASE "),
        _ => false,
    }
}

fn abbreviate(sql: &str) -> String {
    const LIMIT: usize = 200;
    let line = sql.trim().replace('\n', " ");
    if line.len() <= LIMIT {
        return line;
    }
    let mut end = LIMIT;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

/// A lexical token of a statement, with its byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted word, as written.
    Word(String),
    /// A double-quoted identifier, unquoted.
    Quoted(String),
    /// A string or number constant, or any other character.
    Other,
}

#[derive(Debug, Clone)]
struct Lexeme {
    token: Token,
    start: usize,
    end: usize,
}

impl Lexeme {
    fn keyword(&self) -> Option<String> {
        match &self.token {
            Token::Word(word) => Some(word.to_ascii_uppercase()),
            _ => None,
        }
    }

    /// The identifier this token names, as PostgreSQL reads it.
    fn identifier(&self) -> Option<String> {
        match &self.token {
            Token::Word(word) => Some(word.to_lowercase()),
            Token::Quoted(name) => Some(name.clone()),
            Token::Other => None,
        }
    }
}

/// Splits SQL into statements at top-level semicolons (outside strings,
/// quoted identifiers and comments); each keeps its text, without the `;`.
fn split_statements(sql: &str) -> Result<Vec<String>> {
    let mut statements = Vec::new();
    let mut start = 0;
    for lexeme in lex(sql)? {
        if lexeme.token == Token::Other && &sql[lexeme.start..lexeme.end] == ";" {
            push_statement(&mut statements, &sql[start..lexeme.start]);
            start = lexeme.end;
        }
    }
    push_statement(&mut statements, &sql[start..]);
    Ok(statements)
}

fn push_statement(statements: &mut Vec<String>, text: &str) {
    let has_code = lex(text).is_ok_and(|lexemes| !lexemes.is_empty());
    if has_code {
        statements.push(text.trim().to_string());
    }
}

/// The tokens of `sql`, comments and white space left out.
fn lex(sql: &str) -> Result<Vec<Lexeme>> {
    let bytes = sql.as_bytes();
    let mut lexemes = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        let c = bytes[at];
        if c.is_ascii_whitespace() {
            at += 1;
            continue;
        }
        if sql[at..].starts_with("--") {
            at = sql[at..].find('\n').map_or(bytes.len(), |n| at + n + 1);
            continue;
        }
        if sql[at..].starts_with("/*") {
            at = block_comment_end(sql, at)?;
            continue;
        }
        let token = if c == b'"' {
            let (name, end) = quoted(sql, at, b'"', false)?;
            at = end;
            Token::Quoted(name)
        } else if c == b'\'' {
            at = quoted(sql, at, b'\'', false)?.1;
            Token::Other
        } else if (c == b'e' || c == b'E') && bytes.get(at + 1) == Some(&b'\'') {
            at = quoted(sql, at + 1, b'\'', true)?.1;
            Token::Other
        } else if c == b'$'
            && let Some(end) = dollar_quoted_end(sql, at)?
        {
            at = end;
            Token::Other
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            while at < bytes.len()
                && (bytes[at].is_ascii_alphanumeric()
                    || bytes[at] == b'_'
                    || bytes[at] == b'$'
                    || bytes[at] >= 0x80)
            {
                at += 1;
            }
            Token::Word(sql[start..at].to_string())
        } else {
            at += sql[at..].chars().next().map_or(1, char::len_utf8);
            Token::Other
        };
        lexemes.push(Lexeme {
            token,
            start,
            end: at,
        });
    }
    Ok(lexemes)
}

/// Reads a quoted token starting at `start` (the opening quote); returns
/// its content and the position after the closing quote.
fn quoted(sql: &str, start: usize, quote: u8, backslash_escapes: bool) -> Result<(String, usize)> {
    let bytes = sql.as_bytes();
    let mut content = Vec::new();
    let mut at = start + 1;
    while at < bytes.len() {
        let c = bytes[at];
        if backslash_escapes && c == b'\\' {
            content.extend_from_slice(&bytes[at..(at + 2).min(bytes.len())]);
            at += 2;
        } else if c == quote {
            if bytes.get(at + 1) == Some(&quote) {
                content.push(quote);
                at += 2;
            } else {
                return Ok((String::from_utf8_lossy(&content).into_owned(), at + 1));
            }
        } else {
            content.push(c);
            at += 1;
        }
    }
    bail!("unterminated quoted text")
}

fn block_comment_end(sql: &str, start: usize) -> Result<usize> {
    let mut depth = 0;
    let mut at = start;
    while at < sql.len() {
        if sql[at..].starts_with("/*") {
            depth += 1;
            at += 2;
        } else if sql[at..].starts_with("*/") {
            depth -= 1;
            at += 2;
            if depth == 0 {
                return Ok(at);
            }
        } else {
            at += 1;
        }
    }
    bail!("unterminated comment")
}

/// `$tag$ ... $tag$` starting at `start`; `None` when `$` starts no such quote.
fn dollar_quoted_end(sql: &str, start: usize) -> Result<Option<usize>> {
    let rest = &sql[start + 1..];
    let Some(close) = rest.find('$') else {
        return Ok(None);
    };
    let tag = &rest[..close];
    let valid = tag
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if !valid {
        return Ok(None);
    }
    let delimiter = format!("${tag}$");
    let body = start + delimiter.len();
    match sql[body..].find(&delimiter) {
        Some(end) => Ok(Some(body + end + delimiter.len())),
        None => bail!("unterminated dollar-quoted text"),
    }
}

/// Classifies one statement and finds where it names the database.
fn parse_statement(sql: &str, database: &str) -> Result<PropertyStatement> {
    let lexemes = lex(sql)?;
    let words: Vec<Option<String>> = lexemes.iter().map(Lexeme::keyword).collect();
    let word = |i: usize| words.get(i).cloned().flatten().unwrap_or_default();
    let ident = |i: usize| lexemes.get(i).and_then(Lexeme::identifier);

    // Every occurrence of the bare keyword DATABASE followed by the name.
    let mut name_at = Vec::new();
    for i in 0..lexemes.len() {
        if word(i) == "DATABASE"
            && let Some(next) = lexemes.get(i + 1)
            && next.identifier().as_deref() == Some(database)
        {
            name_at.push((next.start, next.end));
        }
    }

    let kind = match (word(0).as_str(), word(1).as_str()) {
        ("ALTER", "DATABASE") => match word(3).as_str() {
            "SET" | "RESET" => StatementKind::Setting {
                name: ident(4).context("no setting name")?,
            },
            "CONNECTION" => StatementKind::ConnectionLimit,
            "IS_TEMPLATE" => StatementKind::IsTemplate,
            other => bail!("unknown ALTER DATABASE form {other}: {}", abbreviate(sql)),
        },
        ("ALTER", "ROLE") if word(3) == "IN" && word(4) == "DATABASE" => {
            StatementKind::RoleSetting {
                role: ident(2).context("no role name")?,
                name: ident(7).context("no setting name")?,
            }
        }
        ("COMMENT", "ON") if word(2) == "DATABASE" => StatementKind::Comment,
        ("SECURITY", "LABEL") => StatementKind::SecurityLabel,
        ("GRANT", _) | ("REVOKE", _) => StatementKind::Privileges {
            roles: grantees(&lexemes, &words),
        },
        ("SET", "SESSION") | ("RESET", "SESSION") if word(2) == "AUTHORIZATION" => {
            let roles = match word(0).as_str() {
                "SET" => vec![ident(3).context("no role name")?],
                _ => Vec::new(),
            };
            // Names no database: nothing to point elsewhere.
            return Ok(PropertyStatement {
                kind: StatementKind::Privileges { roles },
                pieces: vec![sql.to_string()],
            });
        }
        _ => bail!("unknown statement: {}", abbreviate(sql)),
    };
    // The database must be named exactly once, right where the form puts
    // it; anything else could alter another database.
    if name_at.len() != 1 {
        bail!(
            "expected the database {database} named once in: {}",
            abbreviate(sql)
        );
    }
    let (start, end) = name_at[0];
    Ok(PropertyStatement {
        kind,
        pieces: vec![sql[..start].to_string(), sql[end..].to_string()],
    })
}

/// The roles a GRANT or REVOKE names: after `TO`/`FROM` and `GRANTED BY`.
fn grantees(lexemes: &[Lexeme], words: &[Option<String>]) -> Vec<String> {
    let mut roles = Vec::new();
    let mut i = match words
        .iter()
        .position(|w| matches!(w.as_deref(), Some("TO") | Some("FROM")))
    {
        Some(i) => i + 1,
        None => return roles,
    };
    while i < lexemes.len() {
        match words[i].as_deref() {
            Some("GROUP") => {}
            Some("PUBLIC") => {}
            Some("WITH") | Some("CASCADE") | Some("RESTRICT") => {}
            Some("GRANTED") if words.get(i + 1).cloned().flatten().as_deref() == Some("BY") => {
                if let Some(role) = lexemes.get(i + 2).and_then(Lexeme::identifier) {
                    roles.push(role);
                }
                break;
            }
            Some("GRANT") | Some("OPTION") => {}
            _ => {
                if let Some(role) = lexemes[i].identifier() {
                    roles.push(role);
                }
            }
        }
        i += 1;
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(desc: &str, tag: &str, sql: &str) -> TocEntry {
        let mut entry = TocEntry::for_tests(1, desc, tag, 2, &[]);
        entry.definition = Some(sql.to_string());
        entry
    }

    const PROPERTIES: &str = "ALTER DATABASE \"Mast\"\"odon\" CONNECTION LIMIT = 40;\n\
ALTER DATABASE \"Mast\"\"odon\" SET search_path TO '$user', 'public', 'Mast\"odon';\n\
ALTER DATABASE \"Mast\"\"odon\" SET statement_timeout TO '5min';\n\
ALTER ROLE alice IN DATABASE \"Mast\"\"odon\" SET work_mem TO '64MB';\n";

    fn script() -> PropertyScript {
        let toc = vec![
            entry(
                "DATABASE",
                "Mast\"odon",
                "CREATE DATABASE \"Mast\"\"odon\";",
            ),
            entry("DATABASE PROPERTIES", "Mast\"odon", PROPERTIES),
            entry(
                "COMMENT",
                "DATABASE \"Mast\"\"odon\"",
                "COMMENT ON DATABASE \"Mast\"\"odon\" IS 'the DATABASE \"Mast\"\"odon\"; really';\n",
            ),
            entry(
                "ACL",
                "DATABASE \"Mast\"\"odon\"",
                "REVOKE CONNECT,TEMPORARY ON DATABASE \"Mast\"\"odon\" FROM PUBLIC;\n\
SET SESSION AUTHORIZATION granter;\n\
GRANT CONNECT ON DATABASE \"Mast\"\"odon\" TO \"Bob\" WITH GRANT OPTION;\n\
RESET SESSION AUTHORIZATION;\n",
            ),
            entry(
                "COMMENT",
                "TABLE accounts",
                "COMMENT ON TABLE accounts IS 'x';",
            ),
            entry(
                "ACL",
                "SCHEMA public",
                "GRANT ALL ON SCHEMA public TO alice;",
            ),
        ];
        PropertyScript::from_toc(&toc, "unused").unwrap()
    }

    #[test]
    fn takes_only_the_database_level_entries_and_renames_the_database() {
        let script = script();
        let sql: Vec<String> = script
            .statements
            .iter()
            .map(|s| s.sql_for("new_db"))
            .collect();
        assert_eq!(
            sql,
            [
                "ALTER DATABASE \"new_db\" CONNECTION LIMIT = 40",
                "ALTER DATABASE \"new_db\" SET search_path TO '$user', 'public', 'Mast\"odon'",
                "ALTER DATABASE \"new_db\" SET statement_timeout TO '5min'",
                "ALTER ROLE alice IN DATABASE \"new_db\" SET work_mem TO '64MB'",
                "COMMENT ON DATABASE \"new_db\" IS 'the DATABASE \"Mast\"\"odon\"; really'",
                "REVOKE CONNECT,TEMPORARY ON DATABASE \"new_db\" FROM PUBLIC",
                "SET SESSION AUTHORIZATION granter",
                "GRANT CONNECT ON DATABASE \"new_db\" TO \"Bob\" WITH GRANT OPTION",
                "RESET SESSION AUTHORIZATION",
            ]
        );
        assert_eq!(
            script.describe(),
            [
                "connection limit",
                "setting search_path",
                "setting statement_timeout",
                "setting work_mem for role alice",
                "comment",
                "grants",
            ]
        );
        assert_eq!(
            script.roles().into_iter().collect::<Vec<_>>(),
            ["Bob", "alice", "granter"]
        );
    }

    #[test]
    fn leaves_out_statements_whose_roles_are_missing() {
        let existing: HashSet<String> = ["alice".to_string()].into();
        let (kept, left_out) = script().split_by_roles(&existing);
        assert_eq!(left_out, ["grants"]);
        assert!(
            kept.describe()
                .contains(&"setting work_mem for role alice".into())
        );
        assert_eq!(
            kept.statements
                .iter()
                .filter(|s| s.kind.is_privileges())
                .count(),
            2,
            "REVOKE ... FROM PUBLIC and RESET stay"
        );
        assert!(
            script()
                .without_privileges()
                .statements
                .iter()
                .all(|s| !s.kind.is_privileges())
        );
    }

    #[test]
    fn refuses_statements_that_name_another_database() {
        let toc = vec![entry(
            "DATABASE PROPERTIES",
            "mastodon",
            "ALTER DATABASE other SET work_mem TO '1GB';",
        )];
        assert!(PropertyScript::from_toc(&toc, "mastodon").is_err());
        let toc = vec![entry(
            "DATABASE PROPERTIES",
            "mastodon",
            "UPDATE pg_catalog.pg_database SET datfrozenxid = '1' WHERE datname = 'mastodon';",
        )];
        assert!(PropertyScript::from_toc(&toc, "mastodon").is_err());
    }

    #[test]
    fn lexes_strings_comments_and_dollar_quotes() {
        let statements =
            split_statements("-- a; comment\nA 'x;y' E'\\';' /* ; */ $q$;$q$;\n\nB \"c;d\";")
                .unwrap();
        assert_eq!(
            statements,
            [
                "-- a; comment\nA 'x;y' E'\\';' /* ; */ $q$;$q$",
                "B \"c;d\""
            ]
        );
        assert!(split_statements("A 'open").is_err());
    }

    #[test]
    fn text_in_another_encoding_is_refused() {
        let comment = entry(
            "COMMENT",
            "DATABASE mastodon",
            "COMMENT ON DATABASE mastodon IS 'caf\u{e9}';",
        );
        let latin1 = entry("ENCODING", "ENCODING", "SET client_encoding = 'LATIN1';\n");
        let utf8 = entry("ENCODING", "ENCODING", "SET client_encoding = 'UTF8';\n");
        assert!(PropertyScript::from_toc(&[utf8, comment.clone()], "mastodon").is_ok());
        let err = PropertyScript::from_toc(&[latin1.clone(), comment], "mastodon").unwrap_err();
        assert!(format!("{err:#}").contains("LATIN1"), "{err:#}");
        let ascii = entry(
            "COMMENT",
            "DATABASE mastodon",
            "COMMENT ON DATABASE mastodon IS 'cafe';",
        );
        assert!(PropertyScript::from_toc(&[latin1, ascii], "mastodon").is_ok());
    }

    #[test]
    fn unquoted_names_fold_to_lower_case() {
        let toc = vec![entry(
            "DATABASE PROPERTIES",
            "mastodon",
            "ALTER DATABASE MASTODON SET timezone TO 'UTC';",
        )];
        let script = PropertyScript::from_toc(&toc, "mastodon").unwrap();
        assert_eq!(
            script.statements[0].sql_for("x"),
            "ALTER DATABASE \"x\" SET timezone TO 'UTC'"
        );
    }
}
