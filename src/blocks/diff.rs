//! The difference between a blocklist and the blocks a server has: which
//! blocks are new, which listed ones are stricter or looser than the block
//! in place, and which change nothing. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::mastodon::api::RemoteBlock;
use crate::mastodon::blocklist::{BlockRule, domain_and_parents};

/// A listed block for a domain the server already blocks.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// The server's id of the block in place.
    pub id: String,
    pub current: BlockRule,
    pub listed: BlockRule,
}

/// A listed block that changes nothing.
#[derive(Debug, Clone, Serialize)]
pub struct Unchanged {
    pub rule: BlockRule,
    /// The parent domain whose block already covers this one (Mastodon
    /// applies a block to every subdomain), if not the domain itself.
    pub covered_by: Option<String>,
}

/// A listed block the API would refuse.
#[derive(Debug, Clone, Serialize)]
pub struct Refused {
    pub rule: BlockRule,
    pub reason: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Diff {
    pub new: Vec<BlockRule>,
    pub stricter: Vec<Change>,
    pub looser: Vec<Change>,
    pub unchanged: Vec<Unchanged>,
    pub refused: Vec<Refused>,
}

/// Compares `listed` with `current`. A listed block is stricter when it is
/// at least as strict as the block in place in Mastodon's own sense
/// (`DomainBlock#stricter_than?`) and differs from it; anything else that
/// differs would loosen something and is "looser".
pub fn diff(listed: &[BlockRule], current: &[RemoteBlock]) -> Diff {
    let by_domain: BTreeMap<&str, &RemoteBlock> = current
        .iter()
        .map(|block| (block.rule.domain.as_str(), block))
        .collect();
    let mut out = Diff::default();
    let mut new: Vec<&BlockRule> = Vec::new();
    for rule in listed {
        if let Some(block) = by_domain.get(rule.domain.as_str()) {
            let change = Change {
                id: block.id.clone(),
                current: block.rule.clone(),
                listed: rule.clone(),
            };
            if rule.same_limits(&block.rule) {
                out.unchanged.push(Unchanged {
                    rule: rule.clone(),
                    covered_by: None,
                });
            } else if rule.at_least_as_strict_as(&block.rule) {
                out.stricter.push(change);
            } else {
                out.looser.push(change);
            }
            continue;
        }
        let parent = domain_and_parents(&rule.domain)
            .skip(1)
            .find_map(|parent| by_domain.get(parent));
        match parent {
            Some(parent) if parent.rule.at_least_as_strict_as(rule) => {
                out.unchanged.push(Unchanged {
                    rule: rule.clone(),
                    covered_by: Some(parent.rule.domain.clone()),
                })
            }
            Some(parent) => out.refused.push(Refused {
                rule: rule.clone(),
                reason: format!(
                    "{} is blocked with {}, which covers its subdomains; Mastodon's API refuses \
                     another block under it: make the block of {} stricter instead",
                    parent.rule.domain, parent.rule.severity, parent.rule.domain
                ),
            }),
            None => new.push(rule),
        }
    }
    // A new block under another new block in the same list: the parent's
    // creation would make the API refuse the child.
    let new_domains: BTreeMap<&str, &BlockRule> = new
        .iter()
        .map(|rule| (rule.domain.as_str(), *rule))
        .collect();
    let mut covered = BTreeSet::new();
    for rule in &new {
        let parent = domain_and_parents(&rule.domain)
            .skip(1)
            .find_map(|parent| new_domains.get(parent));
        match parent {
            Some(parent) if parent.at_least_as_strict_as(rule) => {
                covered.insert(rule.domain.as_str());
                out.unchanged.push(Unchanged {
                    rule: (*rule).clone(),
                    covered_by: Some(parent.domain.clone()),
                });
            }
            Some(parent) => {
                covered.insert(rule.domain.as_str());
                out.refused.push(Refused {
                    rule: (*rule).clone(),
                    reason: format!(
                        "the list also blocks its parent {} with {}, and Mastodon's API refuses \
                         a block under a blocked domain: list {} with the stricter block instead",
                        parent.domain, parent.severity, parent.domain
                    ),
                });
            }
            None => {}
        }
    }
    out.new = new
        .into_iter()
        .filter(|rule| !covered.contains(rule.domain.as_str()))
        .cloned()
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mastodon::blocklist::Severity;

    fn remote(id: &str, rule: BlockRule) -> RemoteBlock {
        RemoteBlock {
            id: id.into(),
            rule,
        }
    }

    #[test]
    fn sorts_listed_blocks_into_new_stricter_looser_unchanged() {
        let current = vec![
            remote("1", BlockRule::new("silenced.example", Severity::Silence)),
            remote("2", BlockRule::new("suspended.example", Severity::Suspend)),
            remote("3", BlockRule::new("same.example", Severity::Silence)),
            remote(
                "4",
                BlockRule {
                    reject_media: true,
                    ..BlockRule::new("media.example", Severity::Silence)
                },
            ),
        ];
        let listed = vec![
            BlockRule::new("fresh.example", Severity::Suspend),
            BlockRule::new("silenced.example", Severity::Suspend),
            BlockRule::new("suspended.example", Severity::Silence),
            BlockRule::new("same.example", Severity::Silence),
            // Suspending drops reject_media, which a suspension makes moot.
            BlockRule::new("media.example", Severity::Suspend),
            BlockRule::new("sub.suspended.example", Severity::Silence),
            BlockRule::new("sub.silenced.example", Severity::Suspend),
        ];
        let diff = diff(&listed, &current);
        let names = |rules: Vec<&BlockRule>| -> Vec<String> {
            rules.into_iter().map(|r| r.domain.clone()).collect()
        };
        assert_eq!(names(diff.new.iter().collect()), ["fresh.example"]);
        assert_eq!(
            names(diff.stricter.iter().map(|c| &c.listed).collect()),
            ["silenced.example", "media.example"]
        );
        assert_eq!(
            names(diff.looser.iter().map(|c| &c.listed).collect()),
            ["suspended.example"]
        );
        assert_eq!(
            names(diff.unchanged.iter().map(|u| &u.rule).collect()),
            ["same.example", "sub.suspended.example"]
        );
        assert_eq!(
            diff.unchanged[1].covered_by.as_deref(),
            Some("suspended.example")
        );
        assert_eq!(diff.refused.len(), 1);
        assert_eq!(diff.refused[0].rule.domain, "sub.silenced.example");
    }

    #[test]
    fn dropping_a_reject_flag_is_looser() {
        let current = vec![remote(
            "1",
            BlockRule {
                reject_reports: true,
                ..BlockRule::new("a.example", Severity::Silence)
            },
        )];
        let listed = vec![BlockRule::new("a.example", Severity::Silence)];
        assert_eq!(diff(&listed, &current).looser.len(), 1);
    }

    #[test]
    fn a_new_child_of_a_new_parent_is_covered() {
        let listed = vec![
            BlockRule::new("sub.bad.example", Severity::Silence),
            BlockRule::new("bad.example", Severity::Suspend),
        ];
        let diff = diff(&listed, &[]);
        assert_eq!(diff.new.len(), 1);
        assert_eq!(diff.new[0].domain, "bad.example");
        assert_eq!(diff.unchanged[0].covered_by.as_deref(), Some("bad.example"));
    }
}
