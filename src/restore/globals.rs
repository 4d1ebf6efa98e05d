//! Makes a `pg_dumpall --globals-only` script safe to apply to a server
//! where some of its roles already exist.
//!
//! The script issues a bare `CREATE ROLE` for every role, so on any server
//! that already has one (always the bootstrap superuser) it stops at the
//! first line under `ON_ERROR_STOP`. Each `CREATE ROLE` becomes a block that
//! tolerates an existing role, so the `ALTER ROLE` that follows brings it
//! to the dumped attributes. The target's bootstrap superuser and the role
//! tusk connects as are left exactly as they are: altering them could lock
//! the operator out mid-restore.

/// The rewritten script and the roles it leaves untouched.
#[derive(Debug, PartialEq, Eq)]
pub struct GlobalsScript {
    pub sql: String,
    pub kept_roles: Vec<String>,
}

pub fn make_idempotent(script: &str, protected_roles: &[String]) -> GlobalsScript {
    let mut sql = String::with_capacity(script.len() + 1024);
    let mut kept_roles: Vec<String> = Vec::new();
    for line in script.lines() {
        match role_statement(line) {
            Some((verb, role)) if protected_roles.contains(&role) => {
                // The line may hold a password hash; say only what was kept.
                sql.push_str(&format!(
                    "-- tusk: {verb} for {role} skipped: it is kept as it is on this server\n"
                ));
                if !kept_roles.contains(&role) {
                    kept_roles.push(role);
                }
            }
            Some(("CREATE ROLE", _)) => {
                let create = line.trim_end();
                sql.push_str(&format!(
                    "DO $tusk$ BEGIN {create} EXCEPTION WHEN duplicate_object THEN NULL; END $tusk$;\n"
                ));
            }
            _ => {
                sql.push_str(line);
                sql.push('\n');
            }
        }
    }
    GlobalsScript { sql, kept_roles }
}

/// `CREATE ROLE x;`, `ALTER ROLE x ...`, `COMMENT ON ROLE x ...` -> (verb, role name).
fn role_statement(line: &str) -> Option<(&'static str, String)> {
    for verb in ["CREATE ROLE", "ALTER ROLE", "COMMENT ON ROLE"] {
        if let Some(rest) = line.strip_prefix(verb).and_then(|r| r.strip_prefix(' ')) {
            return parse_identifier(rest).map(|name| (verb, name));
        }
    }
    None
}

/// Reads one SQL identifier as pg_dump's fmtId writes it.
fn parse_identifier(text: &str) -> Option<String> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    name.push('"');
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let name: String = text
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ';')
            .collect();
        (!name.is_empty()).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "SET default_transaction_read_only = off;\n\
CREATE ROLE mastodon;\n\
ALTER ROLE mastodon WITH NOSUPERUSER INHERIT NOCREATEROLE CREATEDB LOGIN PASSWORD 'SCRAM-SHA-256$x';\n\
CREATE ROLE postgres;\n\
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE PASSWORD 'SCRAM-SHA-256$secret';\n\
CREATE ROLE \"Odd \"\"One\";\n\
GRANT mastodon TO \"Odd \"\"One\" GRANTED BY postgres;\n";

    #[test]
    fn tolerates_existing_roles_and_keeps_protected_ones() {
        let out = make_idempotent(DUMP, &["postgres".to_string()]);
        assert!(out.sql.contains(
            "DO $tusk$ BEGIN CREATE ROLE mastodon; EXCEPTION WHEN duplicate_object THEN NULL; END $tusk$;"
        ));
        assert!(out.sql.contains("ALTER ROLE mastodon WITH"));
        assert!(!out.sql.contains("CREATE ROLE postgres"));
        assert!(
            !out.sql.contains("secret"),
            "protected role's password line dropped"
        );
        assert!(out.sql.contains("CREATE ROLE \"Odd \"\"One\"; EXCEPTION"));
        assert!(out.sql.contains("GRANT mastodon TO"));
        assert_eq!(out.kept_roles, vec!["postgres".to_string()]);
    }

    #[test]
    fn parses_quoted_identifiers() {
        assert_eq!(parse_identifier("\"a \"\"b\" WITH"), Some("a \"b".into()));
        assert_eq!(parse_identifier("plain;"), Some("plain".into()));
        assert_eq!(parse_identifier("\"unterminated"), None);
    }
}
