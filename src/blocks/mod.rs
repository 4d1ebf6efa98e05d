//! `tusk blocks`: the instance's domain blocks through Mastodon's admin API,
//! so that Mastodon does its own work on each new block (suspending or
//! silencing the domain's known accounts, severing follows) as it does for
//! a block made in its web interface.
//!
//! - [`export`]: the blocks as Mastodon's CSV or a plain list;
//! - [`import`]: a blocklist compared with the blocks in place, each new
//!   block with its impact read from the database, then applied (never
//!   loosening a block unless asked), one request at a time;
//! - [`watch`]: domains named in a hashtag's RSS feed that are not blocked.

pub mod diff;
pub mod feed;
pub mod impact;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::TuskError;
use crate::mastodon::api::{self, AdminApi, Created};
use crate::mastodon::blocklist::{
    self, BlockRule, ListFormat, ListProblem, Severity, domain_and_parents,
};
use crate::output::Output;
use crate::postgres::PgServer;

/// The server's blocks as `format`, sorted by domain.
pub async fn export(api: &AdminApi, format: ListFormat) -> Result<String> {
    let mut rules: Vec<BlockRule> = api.list().await?.into_iter().map(|b| b.rule).collect();
    rules.sort_by(|a, b| a.domain.cmp(&b.domain));
    Ok(match format {
        ListFormat::MastodonCsv => blocklist::render_csv(&rules),
        ListFormat::Plain => blocklist::render_plain(&rules),
    })
}

/// What `blocks import` is asked to do.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// A file path or an `http(s)://` URL.
    pub source: String,
    /// The severity of blocks the list does not give one (plain lists, CSV
    /// without a severity column).
    pub default_severity: Severity,
    pub dry_run: bool,
    /// Ask for each new block on the terminal.
    pub review: bool,
    /// Apply listed blocks that are looser than the block in place.
    pub allow_loosen: bool,
    /// Where a run that stopped on an error writes its report.
    pub report_dir: PathBuf,
}

/// A new block with what it would touch.
#[derive(Debug, Clone, Serialize)]
pub struct NewBlock {
    pub domain: String,
    pub severity: Severity,
    pub reject_media: bool,
    pub reject_reports: bool,
    pub known_accounts: u64,
    pub local_follows: u64,
    pub local_accounts: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangedBlock {
    pub domain: String,
    /// The listed severity.
    pub severity: Severity,
    pub reject_media: bool,
    pub reject_reports: bool,
    pub current_severity: Severity,
    pub current_reject_media: bool,
    pub current_reject_reports: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnchangedBlock {
    pub domain: String,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub covered_by: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppliedBlock {
    pub domain: String,
    pub severity: Severity,
    /// `created` or `updated`.
    pub action: String,
    pub id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedBlock {
    pub domain: String,
    pub severity: Severity,
    pub error: String,
}

/// The outcome of `blocks import`; its JSON form is exactly the six lists.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub new: Vec<NewBlock>,
    pub stricter: Vec<ChangedBlock>,
    pub looser: Vec<ChangedBlock>,
    pub unchanged: Vec<UnchangedBlock>,
    pub applied: Vec<AppliedBlock>,
    pub failed: Vec<FailedBlock>,
    #[serde(skip)]
    pub dry_run: bool,
    /// Lines of the list that could not be read.
    #[serde(skip)]
    pub problems: Vec<ListProblem>,
    /// The run stopped on this error; the rest was not attempted.
    #[serde(skip)]
    pub stopped: Option<String>,
    /// Where the report of a stopped run was written.
    #[serde(skip)]
    pub report_file: Option<PathBuf>,
    /// Listed changes not applied: skipped in review, not confirmed, or
    /// looser without `--allow-loosen`.
    #[serde(skip)]
    pub not_applied: usize,
}

/// What the admin chose for one new block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewChoice {
    /// As listed.
    Block,
    /// As a silence ("limit"), keeping the listed flags.
    Limit,
    Skip,
    /// Stop reviewing; nothing after this one is applied.
    Quit,
}

/// Reads the list, compares it with the server's blocks, reads the impact
/// of every new block from the database, and (unless a dry run) applies
/// what the admin confirms or picks in review.
pub async fn import(
    api: &AdminApi,
    server: &dyn PgServer,
    database: &str,
    opts: &ImportOptions,
    output: &Output,
) -> Result<ImportReport> {
    if opts.review && !opts.dry_run && !output.interactive {
        return Err(TuskError::usage(
            "--review asks about each new block on a terminal, and there is none: run with \
             --dry-run to see the list, then without --review and with --yes to apply it",
        ));
    }
    let text = read_source(&opts.source).await?;
    let parsed = blocklist::parse_list(&text, opts.default_severity);
    for problem in &parsed.problems {
        tracing::warn!(
            "{} line {}: {} (skipped)",
            opts.source,
            problem.line,
            problem.message
        );
    }
    if parsed.rules.is_empty() {
        return Err(TuskError::usage(format!(
            "{} names no domain to block: give Mastodon's CSV export (#domain,#severity,...) or \
             one domain per line",
            opts.source
        )));
    }
    let current = api.list().await?;
    let plan = diff::diff(&parsed.rules, &current);

    let session = server.connect(database).await?;
    let new_domains: Vec<String> = plan.new.iter().map(|r| r.domain.clone()).collect();
    let impact = impact::read(&session, &new_domains).await?;

    let mut report = ImportReport {
        dry_run: opts.dry_run,
        problems: parsed.problems,
        ..Default::default()
    };
    report.new = plan
        .new
        .iter()
        .map(|rule| {
            let impact = impact.get(&rule.domain).copied().unwrap_or_default();
            NewBlock {
                domain: rule.domain.clone(),
                severity: rule.severity,
                reject_media: rule.reject_media,
                reject_reports: rule.reject_reports,
                known_accounts: impact.known_accounts,
                local_follows: impact.local_follows,
                local_accounts: impact.local_accounts,
            }
        })
        .collect();
    report.stricter = plan.stricter.iter().map(changed).collect();
    report.looser = plan.looser.iter().map(changed).collect();
    report.unchanged = plan
        .unchanged
        .iter()
        .map(|u| UnchangedBlock {
            domain: u.rule.domain.clone(),
            severity: u.rule.severity,
            covered_by: u.covered_by.clone(),
        })
        .collect();
    report.failed = plan
        .refused
        .iter()
        .map(|r| FailedBlock {
            domain: r.rule.domain.clone(),
            severity: r.rule.severity,
            error: r.reason.clone(),
        })
        .collect();
    if opts.dry_run {
        return Ok(report);
    }

    // What to create: everything new, or what the review picked.
    let mut creates: Vec<BlockRule> = Vec::new();
    if opts.review {
        for (index, rule) in plan.new.iter().enumerate() {
            let choice = ask(&report.new[index], index, plan.new.len())?;
            match choice {
                ReviewChoice::Block => creates.push(rule.clone()),
                ReviewChoice::Limit => creates.push(BlockRule {
                    severity: Severity::Silence,
                    ..rule.clone()
                }),
                ReviewChoice::Skip => {}
                ReviewChoice::Quit => break,
            }
        }
    } else {
        creates = plan.new.clone();
    }
    let mut updates: Vec<&diff::Change> = plan.stricter.iter().collect();
    if opts.allow_loosen {
        updates.extend(plan.looser.iter());
    }
    if !updates.is_empty() || (!opts.review && !creates.is_empty()) {
        let mut parts = Vec::new();
        if !opts.review && !creates.is_empty() {
            parts.push(format!("block {} new domains", creates.len()));
        }
        if !plan.stricter.is_empty() {
            parts.push(format!("make {} blocks stricter", plan.stricter.len()));
        }
        if opts.allow_loosen && !plan.looser.is_empty() {
            parts.push(format!("loosen {} blocks", plan.looser.len()));
        }
        let question = format!("On {}: {}?", api.base(), parts.join(", "));
        if !output.confirm(&question)? {
            if opts.review {
                updates.clear();
            } else {
                anyhow::bail!("nothing changed: not confirmed");
            }
        }
    }
    report.not_applied =
        plan.new.len() - creates.len() + plan.stricter.len() + plan.looser.len() - updates.len();

    let bar = output.count_progress("blocks", (creates.len() + updates.len()) as u64);
    for rule in &creates {
        bar.inc(1);
        match api.create(rule).await {
            Ok(Created::New(block)) => report.applied.push(AppliedBlock {
                domain: block.rule.domain,
                severity: block.rule.severity,
                action: "created".into(),
                id: block.id,
            }),
            Ok(Created::Exists { message, existing }) => match existing {
                Some(existing) if existing.rule.at_least_as_strict_as(rule) => {
                    report.unchanged.push(UnchangedBlock {
                        domain: rule.domain.clone(),
                        severity: rule.severity,
                        covered_by: Some(existing.rule.domain),
                    })
                }
                _ => report.failed.push(FailedBlock {
                    domain: rule.domain.clone(),
                    severity: rule.severity,
                    error: message,
                }),
            },
            Err(err) => {
                stop(&mut report, &rule.domain, rule.severity, err)?;
                break;
            }
        }
    }
    if report.stopped.is_none() {
        for change in updates {
            bar.inc(1);
            match api.update(&change.id, &change.listed).await {
                Ok(block) => report.applied.push(AppliedBlock {
                    domain: block.rule.domain,
                    severity: block.rule.severity,
                    action: "updated".into(),
                    id: block.id,
                }),
                Err(err) => {
                    stop(
                        &mut report,
                        &change.listed.domain,
                        change.listed.severity,
                        err,
                    )?;
                    break;
                }
            }
        }
    }
    bar.finish_and_clear();
    if report.stopped.is_some() {
        report.report_file = Some(write_report(&opts.report_dir, &report)?);
    }
    Ok(report)
}

/// Records the error a run stopped on; usage errors (a token without the
/// write scope) end the run at once, as nothing else would succeed.
fn stop(
    report: &mut ImportReport,
    domain: &str,
    severity: Severity,
    err: anyhow::Error,
) -> Result<()> {
    if err
        .chain()
        .any(|cause| cause.downcast_ref::<TuskError>().is_some())
        && report.applied.is_empty()
    {
        return Err(err);
    }
    report.failed.push(FailedBlock {
        domain: domain.to_string(),
        severity,
        error: format!("{err:#}"),
    });
    report.stopped = Some(format!("{err:#}"));
    Ok(())
}

fn changed(change: &diff::Change) -> ChangedBlock {
    ChangedBlock {
        domain: change.listed.domain.clone(),
        severity: change.listed.severity,
        reject_media: change.listed.reject_media,
        reject_reports: change.listed.reject_reports,
        current_severity: change.current.severity,
        current_reject_media: change.current.reject_media,
        current_reject_reports: change.current.reject_reports,
    }
}

/// One new block on the terminal: block / limit / skip / quit.
fn ask(block: &NewBlock, index: usize, total: usize) -> Result<ReviewChoice> {
    let prompt = format!(
        "[{}/{}] {} ({}{}{}): {} known accounts, severs {} follows of {} local accounts",
        index + 1,
        total,
        block.domain,
        block.severity,
        if block.reject_media {
            ", reject media"
        } else {
            ""
        },
        if block.reject_reports {
            ", reject reports"
        } else {
            ""
        },
        block.known_accounts,
        block.local_follows,
        block.local_accounts,
    );
    let items = [
        format!("block ({})", block.severity),
        "limit (silence)".to_string(),
        "skip".to_string(),
        "quit (apply what was chosen so far)".to_string(),
    ];
    let picked = dialoguer::Select::new()
        .with_prompt(prompt)
        .items(&items)
        .default(0)
        .interact()
        .context("could not read the answer from the terminal")?;
    Ok(match picked {
        0 => ReviewChoice::Block,
        1 => ReviewChoice::Limit,
        2 => ReviewChoice::Skip,
        _ => ReviewChoice::Quit,
    })
}

/// A report of a stopped run, for the admin to see what was applied; the
/// next run's diff skips those.
fn write_report(dir: &Path, report: &ImportReport) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("could not create {} for the report", dir.display()))?;
    let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
    let path = dir.join(format!("blocks-import-{stamp}.json"));
    let mut value = serde_json::to_value(report)?;
    value["stopped_on"] = serde_json::Value::String(report.stopped.clone().unwrap_or_default());
    std::fs::write(&path, serde_json::to_vec_pretty(&value)?)
        .with_context(|| format!("could not write {}", path.display()))?;
    Ok(path)
}

async fn read_source(source: &str) -> Result<String> {
    if source.starts_with("https://") || source.starts_with("http://") {
        return api::fetch_text(source).await;
    }
    std::fs::read_to_string(source).map_err(|err| {
        TuskError::usage(format!(
            "could not read {source}: {err}; give a file path or an https:// URL"
        ))
    })
}

/// What `blocks watch` is asked to do.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// A file path or an `http(s)://` URL of an RSS feed.
    pub feed: String,
    /// Remembers the domains already shown.
    pub state_file: PathBuf,
}

/// A domain a post named that is not blocked.
#[derive(Debug, Clone, Serialize)]
pub struct Sighting {
    pub domain: String,
    pub link: String,
    pub published: Option<DateTime<Utc>>,
}

#[derive(Debug, Default, Serialize)]
pub struct WatchReport {
    /// Domains not blocked and not shown before, oldest post first.
    pub new: Vec<Sighting>,
    pub posts: usize,
    #[serde(skip)]
    pub state_file: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct WatchState {
    /// Domain -> when it was first shown.
    shown: BTreeMap<String, DateTime<Utc>>,
}

/// Lists the domains the feed's posts name that are neither blocked (nor
/// under a blocked domain) nor shown by an earlier run, and remembers them.
pub async fn watch(api: &AdminApi, opts: &WatchOptions) -> Result<WatchReport> {
    let xml = read_source(&opts.feed).await?;
    let posts = feed::parse_rss(&xml).with_context(|| format!("could not read {}", opts.feed))?;
    let blocked: BTreeSet<String> = api
        .list()
        .await?
        .into_iter()
        .map(|b| b.rule.domain)
        .collect();
    let mut state = load_state(&opts.state_file)?;
    // The feed's own server and ours are named in every post's links.
    let own_hosts: Vec<String> = [opts.feed.as_str(), api.base().as_str()]
        .iter()
        .filter(|s| s.contains("://"))
        .filter_map(|s| blocklist::normalize_domain(s).ok())
        .collect();
    let now = Utc::now();
    let mut report = WatchReport {
        posts: posts.len(),
        state_file: opts.state_file.clone(),
        ..Default::default()
    };
    for post in &posts {
        for domain in feed::domains_named(&post.html) {
            let covered = domain_and_parents(&domain).any(|d| blocked.contains(d));
            if covered || own_hosts.contains(&domain) || state.shown.contains_key(&domain) {
                continue;
            }
            state.shown.insert(domain.clone(), now);
            report.new.push(Sighting {
                domain,
                link: post.link.clone(),
                published: post.published,
            });
        }
    }
    save_state(&opts.state_file, &state)?;
    Ok(report)
}

fn load_state(path: &Path) -> Result<WatchState> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
            TuskError::usage(format!(
                "{} is not a tusk watch state file ({err}); move it away to start afresh",
                path.display()
            ))
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(WatchState::default()),
        Err(err) => Err(err).with_context(|| format!("could not read {}", path.display())),
    }
}

fn save_state(path: &Path, state: &WatchState) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    let temp = path.with_extension("json.tmp");
    std::fs::write(&temp, serde_json::to_vec_pretty(state)?)
        .with_context(|| format!("could not write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("could not replace {}", path.display()))
}
