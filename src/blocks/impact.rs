//! What a new block would touch, read from the instance's database: the
//! accounts it knows on the domain (and its subdomains, which a block
//! covers too) and the follows between them and local accounts, which a
//! suspension severs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{Context as _, Result};
use serde::Serialize;
use tokio_postgres::Client;

use crate::mastodon::blocklist::domain_and_parents;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Impact {
    /// Accounts on the domain the instance knows (`accounts.domain`).
    pub known_accounts: u64,
    /// Follows between local accounts and those accounts, both ways.
    pub local_follows: u64,
    /// Local accounts with such a follow.
    pub local_accounts: u64,
}

/// The impact of blocking each of `domains`.
pub async fn read(session: &Client, domains: &[String]) -> Result<BTreeMap<String, Impact>> {
    let targets: BTreeSet<&str> = domains.iter().map(String::as_str).collect();
    let mut impact: BTreeMap<String, Impact> = domains
        .iter()
        .map(|domain| (domain.clone(), Impact::default()))
        .collect();
    // Few distinct domains compared with accounts: count per domain in the
    // database, match domains to their blocked parents here.
    let rows = session
        .query(
            "SELECT lower(domain), count(*) FROM accounts WHERE domain IS NOT NULL GROUP BY 1",
            &[],
        )
        .await
        .context("could not count the known accounts per domain (is this Mastodon's database?)")?;
    let mut target_of: HashMap<String, Vec<String>> = HashMap::new();
    for row in rows {
        let domain: String = row.get(0);
        let count: i64 = row.get(1);
        let covering: Vec<String> = domain_and_parents(&domain)
            .filter(|d| targets.contains(d))
            .map(str::to_string)
            .collect();
        for target in &covering {
            if let Some(entry) = impact.get_mut(target) {
                entry.known_accounts += count as u64;
            }
        }
        if !covering.is_empty() {
            target_of.insert(domain, covering);
        }
    }
    if target_of.is_empty() {
        return Ok(impact);
    }
    let account_domains: Vec<String> = target_of.keys().cloned().collect();
    let rows = session
        .query(
            "SELECT lower(r.domain), l.id, count(*) FROM follows f \
               JOIN accounts l ON l.id = f.account_id AND l.domain IS NULL \
               JOIN accounts r ON r.id = f.target_account_id AND lower(r.domain) = ANY($1) \
             GROUP BY 1, 2 \
             UNION ALL \
             SELECT lower(r.domain), l.id, count(*) FROM follows f \
               JOIN accounts l ON l.id = f.target_account_id AND l.domain IS NULL \
               JOIN accounts r ON r.id = f.account_id AND lower(r.domain) = ANY($1) \
             GROUP BY 1, 2",
            &[&account_domains],
        )
        .await
        .context("could not count the follows between local accounts and the blocked domains")?;
    let mut locals: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for row in &rows {
        let domain: String = row.get(0);
        let local: i64 = row.get(1);
        let count: i64 = row.get(2);
        for target in target_of.get(&domain).into_iter().flatten() {
            if let Some(entry) = impact.get_mut(target) {
                entry.local_follows += count as u64;
            }
            locals.entry(target.clone()).or_default().insert(local);
        }
    }
    for (domain, ids) in locals {
        if let Some(entry) = impact.get_mut(&domain) {
            entry.local_accounts = ids.len() as u64;
        }
    }
    Ok(impact)
}
