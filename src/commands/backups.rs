use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::cli::{
    BackupsCleanupArgs, BackupsCommand, BackupsCopyArgs, BackupsListArgs, BackupsPruneArgs,
};
use tusk::copy_sets;
use tusk::output::{human_bytes, table};
use tusk::prune_sets::{self, DestinationReport, PruneSetsOptions};
use tusk::set::manifest::Verification;

#[derive(Serialize)]
struct Listed {
    id: String,
    destination: String,
    path: String,
    started_at: String,
    bytes: u64,
    database: String,
    schema_version: Option<String>,
    verification: Option<Verification>,
}

pub async fn exec(ctx: &Context, command: BackupsCommand) -> Result<()> {
    match command {
        BackupsCommand::List(args) => list(ctx, args).await,
        BackupsCommand::Prune(args) => prune(ctx, args).await,
        BackupsCommand::Copy(args) => copy(ctx, args).await,
        BackupsCommand::Cleanup(args) => cleanup(ctx, args).await,
    }
}

async fn copy(ctx: &Context, args: BackupsCopyArgs) -> Result<()> {
    let to = ctx
        .instance
        .destinations(Some(&args.to))?
        .pop()
        .expect("one destination by name");
    let set = ctx
        .instance
        .find_set(&args.set, args.from.as_deref())
        .await?;
    let from = match &args.from {
        Some(from) => from.clone(),
        None => set.place.describe(),
    };
    let report =
        copy_sets::copy(&set, &from, &to, &ctx.instance.settings.lock, &ctx.output).await?;
    if ctx.output.json {
        return ctx.output.print_json(&report);
    }
    if !ctx.output.quiet {
        println!(
            "{}  {}  copied to {} ({}) in {:.1}s, checksums match",
            report.id,
            human_bytes(report.bytes),
            report.to,
            report.location,
            report.seconds
        );
    }
    Ok(())
}

async fn cleanup(ctx: &Context, args: BackupsCleanupArgs) -> Result<()> {
    let destinations = ctx.instance.destinations(args.destination.as_deref())?;
    let reports =
        copy_sets::cleanup(&destinations, args.dry_run, &ctx.instance.settings.lock).await?;
    if ctx.output.json {
        return ctx.output.print_json(&reports);
    }
    if ctx.output.quiet {
        return Ok(());
    }
    if reports.is_empty() {
        println!("no bucket destination: nothing to clean up");
    }
    for report in &reports {
        println!("{} ({}):", report.name, report.location);
        if report.uploads.is_empty() {
            println!("no open uploads");
            continue;
        }
        for upload in &report.uploads {
            let since = upload.initiated.map_or_else(
                || "?".to_string(),
                |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
            );
            println!(
                "{} {}  {}  started {since}",
                if report.dry_run { "open" } else { "aborted" },
                upload.key,
                upload.upload_id
            );
        }
    }
    Ok(())
}

async fn prune(ctx: &Context, args: BackupsPruneArgs) -> Result<()> {
    let destinations = ctx.instance.destinations(args.destination.as_deref())?;
    for destination in &destinations {
        prune_sets::require_retention(destination)?;
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
    println!("{} ({}):", report.name, report.location);
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

async fn list(ctx: &Context, args: BackupsListArgs) -> Result<()> {
    let destinations = ctx.instance.list_sets(args.destination.as_deref()).await?;
    let mut listed = Vec::new();
    for (destination, sets) in &destinations {
        for set in sets {
            listed.push(Listed {
                id: set.manifest.id.clone(),
                destination: destination.name.clone(),
                path: set.place.describe(),
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
            });
        }
    }
    if ctx.output.json {
        return ctx.output.print_json(&listed);
    }
    if listed.is_empty() {
        let places: Vec<String> = destinations
            .iter()
            .map(|(d, _)| format!("{} ({})", d.name, d.describe()))
            .collect();
        println!("no backup sets in {}", places.join(", "));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = destinations
        .iter()
        .flat_map(|(_, sets)| sets)
        .zip(&listed)
        .map(|(set, item)| {
            vec![
                item.id.clone(),
                item.destination.clone(),
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
        table(
            &["ID", "DESTINATION", "TIME", "SIZE", "SCHEMA", "VERIFIED"],
            &rows
        )
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
