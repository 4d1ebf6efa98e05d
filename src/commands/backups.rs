use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::cli::{BackupsCommand, BackupsPruneArgs};
use tusk::output::{human_bytes, table};
use tusk::prune_sets::{self, DestinationReport, PruneSetsOptions};
use tusk::set::BackupSet;
use tusk::set::manifest::Verification;

#[derive(Serialize)]
struct Listed {
    id: String,
    path: String,
    started_at: String,
    bytes: u64,
    database: String,
    schema_version: Option<String>,
    verification: Option<Verification>,
}

pub async fn exec(ctx: &Context, command: BackupsCommand) -> Result<()> {
    match command {
        BackupsCommand::List => list(ctx),
        BackupsCommand::Prune(args) => prune(ctx, args).await,
    }
}

async fn prune(ctx: &Context, args: BackupsPruneArgs) -> Result<()> {
    let destinations = ctx.instance.destinations(args.destination.as_deref())?;
    for destination in &destinations {
        destination.require_retention()?;
    }
    let opts = PruneSetsOptions {
        destinations,
        time_zone: ctx.instance.settings.time_zone,
        dry_run: args.dry_run,
        confirm: true,
        lock: ctx.instance.settings.lock,
    };
    let report = prune_sets::run(&opts, &ctx.output).await?;
    if ctx.output.json {
        return ctx.output.print_json(&report);
    }
    for destination in &report.destinations {
        print_pruned(destination);
    }
    Ok(())
}

/// A destination's sets with their fate, and the reasons they are kept.
pub fn print_pruned(report: &DestinationReport) {
    let (keep, remove) = match (report.dry_run, report.held.is_some()) {
        (true, _) => ("keep", "remove"),
        (false, _) => ("kept", "removed"),
    };
    println!("{} ({}):", report.name, report.dir.display());
    if let Some(why) = &report.held {
        println!("nothing removed: {why}");
    }
    if report.sets.is_empty() {
        println!("no backup sets");
        return;
    }
    let rows: Vec<Vec<String>> = report
        .sets
        .iter()
        .map(|entry| {
            let reasons: Vec<&str> = entry.reasons.iter().map(|r| r.name()).collect();
            vec![
                format!(
                    "{}{}",
                    entry.id,
                    if entry.incomplete {
                        " (incomplete)"
                    } else {
                        ""
                    }
                ),
                entry.started_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                if entry.keep { keep } else { remove }.to_string(),
                reasons.join(", "),
            ]
        })
        .collect();
    print!("{}", table(&["ID", "TIME", "ACTION", "KEPT BY"], &rows));
    if !report.dry_run {
        println!("{} removed", report.removed);
    }
}

fn list(ctx: &Context) -> Result<()> {
    let sets = BackupSet::list(&ctx.instance.backup_dir())?;
    let listed: Vec<Listed> = sets
        .iter()
        .map(|set| Listed {
            id: set.manifest.id.clone(),
            path: set.dir.display().to_string(),
            started_at: set.manifest.started_at.to_rfc3339(),
            bytes: set.manifest.total_bytes(),
            database: set.manifest.database.name.clone(),
            schema_version: set
                .manifest
                .database
                .schema_migrations
                .as_ref()
                .and_then(|m| m.max.clone()),
            verification: set.verification(),
        })
        .collect();
    if ctx.output.json {
        return ctx.output.print_json(&listed);
    }
    if listed.is_empty() {
        println!("no backup sets in {}", ctx.instance.backup_dir().display());
        return Ok(());
    }
    let rows: Vec<Vec<String>> = sets
        .iter()
        .zip(&listed)
        .map(|(set, item)| {
            vec![
                item.id.clone(),
                set.manifest
                    .started_at
                    .format("%Y-%m-%d %H:%M:%S UTC")
                    .to_string(),
                human_bytes(item.bytes),
                item.schema_version.clone().unwrap_or_else(|| "-".into()),
                describe_verification(item.verification.as_ref()),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["ID", "TIME", "SIZE", "SCHEMA", "VERIFIED"], &rows)
    );
    Ok(())
}

fn describe_verification(verification: Option<&Verification>) -> String {
    match verification {
        None => "never".into(),
        Some(v) => {
            let when = v.verified_at.format("%Y-%m-%d %H:%M UTC");
            match (v.ok, v.checksums_only) {
                (true, false) => format!("{when} restored ok"),
                (true, true) => format!("{when} checksums ok"),
                (false, _) => format!("{when} FAILED"),
            }
        }
    }
}
