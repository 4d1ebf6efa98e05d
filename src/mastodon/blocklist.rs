//! Domain blocklists as admins exchange them: Mastodon's own CSV export
//! (`#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate`)
//! and plain lists with one domain per line. Also Mastodon's order of
//! severities, which decides whether a listed block is stricter or looser
//! than the one in place (see docs/blocks.md for the rules relied on).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// What a domain block does, in Mastodon's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// No limit on the domain itself; only the reject flags apply.
    Noop,
    /// "Limit": the domain's accounts are hidden from those not following them.
    Silence,
    /// Nothing from the domain is accepted; its accounts are suspended.
    Suspend,
}

impl Severity {
    /// The names lists, settings and flags use, with what each means.
    pub const CHOICES: [(&'static str, &'static str); 3] = [
        ("noop", "No limit; only the reject flags apply"),
        ("silence", "Limit: hidden from accounts not following them"),
        ("suspend", "Suspend: nothing from the domain is accepted"),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Severity::Noop => "noop",
            Severity::Silence => "silence",
            Severity::Suspend => "suspend",
        }
    }

    fn parse(value: &str) -> Option<Severity> {
        match value.trim().to_ascii_lowercase().as_str() {
            "noop" | "none" => Some(Severity::Noop),
            "silence" | "limit" => Some(Severity::Silence),
            "suspend" => Some(Severity::Suspend),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One domain block: what the admin API lists and creates, and what one
/// row of a blocklist says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRule {
    pub domain: String,
    pub severity: Severity,
    #[serde(default)]
    pub reject_media: bool,
    #[serde(default)]
    pub reject_reports: bool,
    #[serde(default)]
    pub public_comment: Option<String>,
    #[serde(default)]
    pub private_comment: Option<String>,
    #[serde(default)]
    pub obfuscate: bool,
}

impl BlockRule {
    /// A block of `severity` with no flags and no comments.
    pub fn new(domain: impl Into<String>, severity: Severity) -> Self {
        BlockRule {
            domain: domain.into(),
            severity,
            reject_media: false,
            reject_reports: false,
            public_comment: None,
            private_comment: None,
            obfuscate: false,
        }
    }

    /// Mastodon's `DomainBlock#stricter_than?`: a suspension is always at
    /// least as strict; otherwise the severity must not drop and no reject
    /// flag the other block has may be missing.
    pub fn at_least_as_strict_as(&self, other: &BlockRule) -> bool {
        if self.severity == Severity::Suspend {
            return true;
        }
        if self.severity < other.severity {
            return false;
        }
        (self.reject_media || !other.reject_media) && (self.reject_reports || !other.reject_reports)
    }

    /// Whether the two blocks limit the domain the same way; comments and
    /// `obfuscate` do not count. Under a suspension the reject flags change
    /// nothing (Mastodon's `policies` lists only `suspend`).
    pub fn same_limits(&self, other: &BlockRule) -> bool {
        self.at_least_as_strict_as(other) && other.at_least_as_strict_as(self)
    }
}

/// The formats `blocks export` writes and `blocks import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListFormat {
    /// Mastodon's CSV export, with its `#domain,...` header.
    MastodonCsv,
    /// One domain per line.
    Plain,
}

impl ListFormat {
    pub const CHOICES: [(&'static str, &'static str); 2] = [
        ("mastodon-csv", "Mastodon's CSV (#domain,#severity,...)"),
        ("plain", "One domain per line"),
    ];
}

/// The columns of Mastodon's export, in its order.
pub const CSV_HEADER: [&str; 6] = [
    "#domain",
    "#severity",
    "#reject_media",
    "#reject_reports",
    "#public_comment",
    "#obfuscate",
];

/// A problem on one line of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListProblem {
    pub line: usize,
    pub message: String,
}

/// A parsed list: the rules in order of first appearance (a later line for
/// the same domain wins), and the lines that could not be read.
#[derive(Debug, Default)]
pub struct ParsedList {
    pub rules: Vec<BlockRule>,
    pub problems: Vec<ListProblem>,
}

/// Reads a list, recognising Mastodon's CSV by its header (a first line
/// naming a `domain` column, with or without the `#`) and taking anything
/// else as one domain per line. Blank lines and lines starting with `#` or
/// `!` in a plain list are comments. `default_severity` applies where the
/// list names none (Mastodon's importer uses suspend).
pub fn parse_list(text: &str, default_severity: Severity) -> ParsedList {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("");
    let header = split_csv_line(first);
    let is_csv = header.iter().any(|cell| {
        cell.trim()
            .trim_start_matches('#')
            .eq_ignore_ascii_case("domain")
    });
    let mut list = if is_csv {
        parse_csv(text, default_severity)
    } else {
        parse_plain(text, default_severity)
    };
    // One rule per domain: the last line wins, the first position stays.
    let mut position: BTreeMap<String, usize> = BTreeMap::new();
    let mut rules: Vec<BlockRule> = Vec::new();
    for rule in list.rules.drain(..) {
        match position.get(&rule.domain) {
            Some(&index) => rules[index] = rule,
            None => {
                position.insert(rule.domain.clone(), rules.len());
                rules.push(rule);
            }
        }
    }
    list.rules = rules;
    list
}

fn parse_plain(text: &str, severity: Severity) -> ParsedList {
    let mut list = ParsedList::default();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        // Some lists append a comment or a severity after the domain.
        let word = line.split_whitespace().next().unwrap_or(line);
        match normalize_domain(word) {
            Ok(domain) => list.rules.push(BlockRule::new(domain, severity)),
            Err(err) => list.problems.push(ListProblem {
                line: index + 1,
                message: format!("{err:#}"),
            }),
        }
    }
    list
}

fn parse_csv(text: &str, default_severity: Severity) -> ParsedList {
    let mut list = ParsedList::default();
    let mut records = csv_records(text).into_iter();
    let Some((_, header)) = records.next() else {
        return list;
    };
    let column = |name: &str| {
        header.iter().position(|cell| {
            cell.trim()
                .trim_start_matches('#')
                .eq_ignore_ascii_case(name)
        })
    };
    let domain_at = column("domain").expect("the header was recognised by its domain column");
    let severity_at = column("severity");
    let media_at = column("reject_media");
    let reports_at = column("reject_reports");
    let public_at = column("public_comment");
    let private_at = column("private_comment");
    let obfuscate_at = column("obfuscate");
    for (line, record) in records {
        let cell = |at: Option<usize>| {
            at.and_then(|i| record.get(i))
                .map(|value| value.trim())
                .filter(|value| !value.is_empty())
        };
        let Some(raw_domain) = cell(Some(domain_at)) else {
            if record.iter().any(|value| !value.trim().is_empty()) {
                list.problems.push(ListProblem {
                    line,
                    message: "no domain in the domain column".into(),
                });
            }
            continue;
        };
        if raw_domain.starts_with('#') {
            continue;
        }
        let domain = match normalize_domain(raw_domain) {
            Ok(domain) => domain,
            Err(err) => {
                list.problems.push(ListProblem {
                    line,
                    message: format!("{err:#}"),
                });
                continue;
            }
        };
        let severity = match cell(severity_at) {
            None => default_severity,
            Some(value) => match Severity::parse(value) {
                Some(severity) => severity,
                None => {
                    list.problems.push(ListProblem {
                        line,
                        message: format!(
                            "severity {value:?} of {domain} is none of noop, silence, suspend"
                        ),
                    });
                    continue;
                }
            },
        };
        let flag = |at| cell(at).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        list.rules.push(BlockRule {
            domain,
            severity,
            reject_media: flag(media_at),
            reject_reports: flag(reports_at),
            public_comment: cell(public_at).map(str::to_string),
            private_comment: cell(private_at).map(str::to_string),
            obfuscate: flag(obfuscate_at),
        });
    }
    list
}

/// CSV records with the line each starts on (RFC 4180: quoted fields may
/// hold commas, doubled quotes and line breaks).
fn csv_records(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1;
    let mut start_line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                fields.push(std::mem::take(&mut field));
                if fields.iter().any(|f| !f.trim().is_empty()) {
                    records.push((start_line, std::mem::take(&mut fields)));
                }
                fields.clear();
                line += 1;
                start_line = line;
            }
            (_, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
        }
    }
    fields.push(field);
    if fields.iter().any(|f| !f.trim().is_empty()) {
        records.push((start_line, fields));
    }
    records
}

fn split_csv_line(line: &str) -> Vec<String> {
    csv_records(line)
        .into_iter()
        .next()
        .map(|(_, fields)| fields)
        .unwrap_or_default()
}

/// A domain as Mastodon stores it: lower case, punycode (IDNA), no scheme,
/// path, port or trailing dot. `https://Bücher.Example/about` becomes
/// `xn--bcher-kva.example`.
pub fn normalize_domain(raw: &str) -> Result<String> {
    let mut value = raw.trim();
    if let Some((_, rest)) = value.split_once("://") {
        value = rest;
    }
    value = value.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((_, host)) = value.rsplit_once('@') {
        value = host;
    }
    if let Some((host, port)) = value.rsplit_once(':')
        && port.chars().all(|c| c.is_ascii_digit())
    {
        value = host;
    }
    let value = value.trim_end_matches('.');
    if value.is_empty() {
        bail!("{raw:?} is not a domain");
    }
    let ascii = idna::domain_to_ascii(value)
        .map_err(|_| anyhow::anyhow!("{raw:?} is not a valid domain name"))?;
    let valid = ascii.contains('.')
        && ascii.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if !valid {
        bail!("{raw:?} is not a valid domain name");
    }
    Ok(ascii)
}

/// The domain and every parent of it, most specific first:
/// `a.b.example` -> `a.b.example`, `b.example`, `example` (the order in
/// which Mastodon's `DomainBlock.rule_for` finds the block that applies).
pub fn domain_and_parents(domain: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(domain), |d| {
        d.split_once('.').map(|(_, parent)| parent)
    })
}

/// Mastodon's CSV, header included; fields quoted where they need it.
pub fn render_csv(rules: &[BlockRule]) -> String {
    let mut out = CSV_HEADER.join(",");
    out.push('\n');
    for rule in rules {
        let row = [
            quote(&rule.domain),
            rule.severity.name().to_string(),
            rule.reject_media.to_string(),
            rule.reject_reports.to_string(),
            quote(rule.public_comment.as_deref().unwrap_or("")),
            rule.obfuscate.to_string(),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// One domain per line.
pub fn render_plain(rules: &[BlockRule]) -> String {
    rules
        .iter()
        .map(|rule| format!("{}\n", rule.domain))
        .collect()
}

fn quote(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mastodon_csv_with_and_without_the_hash() {
        for header in [
            "#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate",
            "domain,severity,reject_media,reject_reports,public_comment,obfuscate",
        ] {
            let text = format!(
                "{header}\nBad.Example,silence,true,false,\"spam, lots\",false\nworse.example,suspend,false,true,,true\n"
            );
            let list = parse_list(&text, Severity::Suspend);
            assert!(list.problems.is_empty(), "{:?}", list.problems);
            assert_eq!(list.rules.len(), 2);
            assert_eq!(list.rules[0].domain, "bad.example");
            assert_eq!(list.rules[0].severity, Severity::Silence);
            assert!(list.rules[0].reject_media);
            assert_eq!(list.rules[0].public_comment.as_deref(), Some("spam, lots"));
            assert!(list.rules[1].obfuscate && list.rules[1].reject_reports);
        }
    }

    #[test]
    fn csv_without_a_severity_column_suspends_as_mastodon_does() {
        let list = parse_list("#domain\nbad.example\n", Severity::Suspend);
        assert_eq!(
            list.rules,
            vec![BlockRule::new("bad.example", Severity::Suspend)]
        );
    }

    #[test]
    fn plain_lists_skip_comments_and_normalise() {
        let text = "# a comment\n\nhttps://Bücher.Example/about\n! adblock-style comment\nspam.example  # trailing\n@user@troll.example\nnot a domain!\nspam.example\n";
        let list = parse_list(text, Severity::Silence);
        let domains: Vec<&str> = list.rules.iter().map(|r| r.domain.as_str()).collect();
        assert_eq!(
            domains,
            ["xn--bcher-kva.example", "spam.example", "troll.example"]
        );
        assert_eq!(list.problems.len(), 1);
        assert_eq!(list.problems[0].line, 7);
    }

    #[test]
    fn a_bad_severity_is_reported_with_its_line() {
        let list = parse_list("#domain,#severity\na.example,ban\n", Severity::Suspend);
        assert!(list.rules.is_empty());
        assert_eq!(list.problems[0].line, 2);
        assert!(list.problems[0].message.contains("ban"));
    }

    #[test]
    fn severities_order_as_mastodon_compares_blocks() {
        let silence = BlockRule::new("a", Severity::Silence);
        let suspend = BlockRule::new("a", Severity::Suspend);
        let noop_media = BlockRule {
            reject_media: true,
            ..BlockRule::new("a", Severity::Noop)
        };
        let silence_media = BlockRule {
            reject_media: true,
            ..silence.clone()
        };
        assert!(suspend.at_least_as_strict_as(&silence_media));
        assert!(!silence.at_least_as_strict_as(&suspend));
        assert!(
            !silence.at_least_as_strict_as(&noop_media),
            "drops reject_media"
        );
        assert!(silence_media.at_least_as_strict_as(&noop_media));
        assert!(!noop_media.at_least_as_strict_as(&silence));
        let suspend_media = BlockRule {
            reject_media: true,
            ..suspend.clone()
        };
        assert!(suspend.same_limits(&suspend_media));
    }

    #[test]
    fn csv_round_trips() {
        let rules = vec![
            BlockRule {
                public_comment: Some("said \"no\", twice".into()),
                reject_media: true,
                ..BlockRule::new("a.example", Severity::Silence)
            },
            BlockRule::new("b.example", Severity::Suspend),
            BlockRule {
                obfuscate: true,
                reject_reports: true,
                ..BlockRule::new("c.example", Severity::Noop)
            },
        ];
        let parsed = parse_list(&render_csv(&rules), Severity::Suspend);
        assert!(parsed.problems.is_empty());
        assert_eq!(parsed.rules, rules);
        let plain = parse_list(&render_plain(&rules), Severity::Suspend);
        assert_eq!(plain.rules.len(), 3);
    }

    #[test]
    fn parents_are_listed_most_specific_first() {
        let all: Vec<&str> = domain_and_parents("a.b.example").collect();
        assert_eq!(all, ["a.b.example", "b.example", "example"]);
    }
}
