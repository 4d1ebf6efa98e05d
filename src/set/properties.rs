//! The database's own properties as a set records them: settings, role
//! settings in the database, comment, privileges, connection limit and
//! template flag, in a form that reads the same on any server and under
//! any owner, and the comparison verify makes after applying them to its
//! scratch copy (see `restore::database_properties` for how they are
//! applied).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::manifest::Problem;

/// What a database carries besides its contents, in a form that does not
/// depend on the server it was read on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseProperties {
    /// `ALTER DATABASE ... SET`: setting name to value, as
    /// `pg_db_role_setting` stores them.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// `ALTER ROLE r IN DATABASE ... SET`: per role, setting name to value.
    #[serde(default)]
    pub role_settings: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub comment: Option<String>,
    /// Privileges on the database per grantee, in aclitem letters
    /// (`C` create, `T` temporary, `c` connect, `*` after one that may be
    /// granted on). The owner is `(owner)` and everyone `PUBLIC`, so the
    /// same grants read the same under another owner; grantors are left
    /// out for the same reason. Defaults included: a database nobody
    /// granted anything on reads `PUBLIC: Tc`, `(owner): CTc`.
    #[serde(default)]
    pub privileges: BTreeMap<String, String>,
    /// `-1` for no limit.
    #[serde(default = "no_limit")]
    pub connection_limit: i32,
    #[serde(default)]
    pub is_template: bool,
}

pub fn no_limit() -> i32 {
    -1
}

/// The grantee name that stands for the database's owner.
pub const OWNER: &str = "(owner)";

/// Reads the properties of `database` (any database on the server: all of
/// it lives in shared catalogs).
pub async fn read(client: &Client, database: &str) -> Result<DatabaseProperties> {
    let row = client
        .query_opt(
            "SELECT d.datconnlimit, d.datistemplate, \
                    shobj_description(d.oid, 'pg_database') \
             FROM pg_database d WHERE d.datname = $1",
            &[&database],
        )
        .await?
        .with_context(|| format!("database {database} does not exist"))?;
    let mut properties = DatabaseProperties {
        connection_limit: row.get(0),
        is_template: row.get(1),
        comment: row.get(2),
        ..DatabaseProperties::default()
    };

    let settings = client
        .query(
            "SELECT r.rolname::text, unnest(s.setconfig) \
             FROM pg_db_role_setting s \
             JOIN pg_database d ON d.oid = s.setdatabase \
             LEFT JOIN pg_roles r ON r.oid = s.setrole \
             WHERE d.datname = $1",
            &[&database],
        )
        .await
        .context("could not read the database's settings")?;
    for row in settings {
        let role: Option<String> = row.get(0);
        let setting: String = row.get(1);
        let (name, value) = setting.split_once('=').unwrap_or((setting.as_str(), ""));
        let target = match role {
            None => &mut properties.settings,
            Some(role) => properties.role_settings.entry(role).or_default(),
        };
        target.insert(name.to_string(), value.to_string());
    }

    let privileges = client
        .query(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' \
                         WHEN a.grantee = d.datdba THEN $2 \
                         ELSE pg_get_userbyid(a.grantee)::text END, \
                    a.privilege_type, a.is_grantable \
             FROM pg_database d, \
                  aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a \
             WHERE d.datname = $1",
            &[&database, &OWNER],
        )
        .await
        .context("could not read the database's privileges")?;
    let mut granted: BTreeMap<String, BTreeSet<(usize, bool)>> = BTreeMap::new();
    for row in privileges {
        let (grantee, privilege, grantable): (String, String, bool) =
            (row.get(0), row.get(1), row.get(2));
        let rank = PRIVILEGES
            .iter()
            .position(|(name, _)| *name == privilege)
            .with_context(|| format!("unknown database privilege {privilege}"))?;
        granted
            .entry(grantee)
            .or_default()
            .insert((rank, grantable));
    }
    for (grantee, set) in granted {
        let letters: String = set
            .iter()
            .map(|(rank, grantable)| {
                let letter = PRIVILEGES[*rank].1;
                if *grantable {
                    format!("{letter}*")
                } else {
                    letter.to_string()
                }
            })
            .collect();
        properties.privileges.insert(grantee, letters);
    }
    Ok(properties)
}

impl DatabaseProperties {
    /// The same properties without the role settings and privileges of
    /// roles not in `roles` (PUBLIC and the owner always stay).
    pub fn for_roles(&self, roles: &HashSet<String>) -> DatabaseProperties {
        let mut kept = self.clone();
        kept.role_settings.retain(|role, _| roles.contains(role));
        kept.privileges.retain(|grantee, _| {
            grantee == "PUBLIC" || grantee == OWNER || roles.contains(grantee)
        });
        kept
    }

    /// Every way `got` differs from `self`, as verify reports them.
    pub fn differences(&self, got: &DatabaseProperties) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut differ =
            |subject: String, expected: Option<&str>, got: Option<&str>, none: &str| {
                if expected != got {
                    problems.push(Problem {
                        kind: "database_property".into(),
                        subject,
                        expected: expected.unwrap_or(none).to_string(),
                        got: got.unwrap_or(none).to_string(),
                    });
                }
            };
        for name in union(&self.settings, &got.settings) {
            differ(
                format!("setting {name}"),
                self.settings.get(name).map(String::as_str),
                got.settings.get(name).map(String::as_str),
                "(not set)",
            );
        }
        let empty = BTreeMap::new();
        for role in union(&self.role_settings, &got.role_settings) {
            let expected = self.role_settings.get(role).unwrap_or(&empty);
            let actual = got.role_settings.get(role).unwrap_or(&empty);
            for name in union(expected, actual) {
                differ(
                    format!("setting {name} for role {role}"),
                    expected.get(name).map(String::as_str),
                    actual.get(name).map(String::as_str),
                    "(not set)",
                );
            }
        }
        differ(
            "comment".into(),
            self.comment.as_deref(),
            got.comment.as_deref(),
            "(none)",
        );
        for grantee in union(&self.privileges, &got.privileges) {
            differ(
                format!("privileges of {grantee}"),
                self.privileges.get(grantee).map(String::as_str),
                got.privileges.get(grantee).map(String::as_str),
                "(none)",
            );
        }
        differ(
            "connection limit".into(),
            Some(&self.connection_limit.to_string()),
            Some(&got.connection_limit.to_string()),
            "",
        );
        differ(
            "template flag".into(),
            Some(&self.is_template.to_string()),
            Some(&got.is_template.to_string()),
            "",
        );
        problems
    }
}

/// The keys of two maps, sorted, each once.
fn union<'a, V>(a: &'a BTreeMap<String, V>, b: &'a BTreeMap<String, V>) -> BTreeSet<&'a String> {
    a.keys().chain(b.keys()).collect()
}

/// Database privileges in aclitem order, with their letters.
const PRIVILEGES: [(&str, char); 3] = [("CREATE", 'C'), ("TEMPORARY", 'T'), ("CONNECT", 'c')];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_property_expected_and_got() {
        let mut expected = DatabaseProperties {
            connection_limit: -1,
            ..DatabaseProperties::default()
        };
        expected
            .settings
            .insert("search_path".into(), "\"$user\", public".into());
        expected.comment = Some("Mastodon".into());
        expected.privileges.insert("PUBLIC".into(), "T".into());
        expected.privileges.insert(OWNER.into(), "CTc".into());
        expected.privileges.insert("alice".into(), "c".into());
        expected
            .role_settings
            .entry("gone".into())
            .or_default()
            .insert("work_mem".into(), "64MB".into());
        let mut got = expected.clone();
        assert!(expected.differences(&got).is_empty());

        got.settings.clear();
        got.comment = None;
        got.privileges.insert("PUBLIC".into(), "Tc".into());
        got.connection_limit = 3;
        let problems = expected.differences(&got);
        let rows: Vec<(&str, &str, &str)> = problems
            .iter()
            .map(|p| (p.subject.as_str(), p.expected.as_str(), p.got.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("setting search_path", "\"$user\", public", "(not set)"),
                ("comment", "Mastodon", "(none)"),
                ("privileges of PUBLIC", "T", "Tc"),
                ("connection limit", "-1", "3"),
            ]
        );
        assert!(problems.iter().all(|p| p.kind == "database_property"));

        let roles: HashSet<String> = ["alice".to_string()].into();
        let kept = expected.for_roles(&roles);
        assert!(kept.role_settings.is_empty());
        assert_eq!(kept.privileges.len(), 3);
    }

    #[test]
    fn manifests_without_the_newer_fields_still_load() {
        let properties: DatabaseProperties = serde_json::from_str("{}").unwrap();
        assert_eq!(properties.connection_limit, -1);
        assert!(properties.settings.is_empty());
    }
}
