use anyhow::{Context as _, Result};

use tusk::blocks::{self, ImportOptions, ImportReport, WatchOptions};
use tusk::output::table;

use super::Context;
use crate::cli::{BlocksCommand, BlocksExportArgs, BlocksImportArgs, BlocksWatchArgs};

/// The file `blocks watch` remembers shown domains in, in the state dir.
const WATCH_STATE_FILE: &str = "blocks-watch.json";

pub async fn exec(ctx: &Context, command: BlocksCommand) -> Result<()> {
    match command {
        BlocksCommand::Export(args) => export(ctx, args).await,
        BlocksCommand::Import(args) => import(ctx, args).await,
        BlocksCommand::Watch(args) => watch(ctx, args).await,
    }
}

async fn export(ctx: &Context, args: BlocksExportArgs) -> Result<()> {
    let api = ctx.instance.mastodon_admin_api()?;
    let text = blocks::export(&api, args.format).await?;
    match &args.output {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("could not write {}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

async fn import(ctx: &Context, args: BlocksImportArgs) -> Result<()> {
    let instance = &ctx.instance;
    let opts = ImportOptions {
        source: args.source,
        default_severity: args.severity,
        dry_run: args.dry_run,
        review: args.review,
        allow_loosen: args.allow_loosen,
        report_dir: instance.settings.blocks_state_dir.clone(),
    };
    let api = instance.mastodon_admin_api()?;
    let server = instance.database_server().await?;
    let database = instance.database_name()?;
    let report = blocks::import(&api, server.as_ref(), &database, &opts, &ctx.output).await?;

    if ctx.output.json {
        ctx.output.print_json(&report)?;
    } else if !ctx.output.quiet {
        print_import(&report);
    }
    if let Some(stopped) = &report.stopped {
        let file = report
            .report_file
            .as_ref()
            .map(|path| format!("; what was applied is in {}", path.display()))
            .unwrap_or_default();
        anyhow::bail!(
            "stopped after {} changes: {stopped}{file}; run the same import again to apply the rest",
            report.applied.len()
        );
    }
    Ok(())
}

fn print_import(report: &ImportReport) {
    if !report.new.is_empty() {
        let rows: Vec<Vec<String>> = report
            .new
            .iter()
            .map(|b| {
                vec![
                    b.domain.clone(),
                    b.severity.to_string(),
                    b.known_accounts.to_string(),
                    b.local_follows.to_string(),
                    b.local_accounts.to_string(),
                ]
            })
            .collect();
        println!("New blocks:");
        print!(
            "{}",
            table(
                &[
                    "DOMAIN",
                    "SEVERITY",
                    "KNOWN ACCOUNTS",
                    "SEVERS FOLLOWS",
                    "LOCAL ACCOUNTS"
                ],
                &rows
            )
        );
    }
    for (title, changes) in [("Stricter", &report.stricter), ("Looser", &report.looser)] {
        for change in changes {
            println!(
                "{title}: {} {} -> {}",
                change.domain, change.current_severity, change.severity
            );
        }
    }
    for failed in &report.failed {
        println!("Failed: {}: {}", failed.domain, failed.error);
    }
    println!(
        "{} new, {} stricter, {} looser, {} unchanged; {} applied{}.",
        report.new.len(),
        report.stricter.len(),
        report.looser.len(),
        report.unchanged.len(),
        report.applied.len(),
        if report.not_applied > 0 {
            format!(", {} not applied", report.not_applied)
        } else {
            String::new()
        }
    );
    if !report.looser.is_empty() && report.applied.iter().all(|a| a.action != "updated") {
        println!("Looser blocks are never applied without --allow-loosen.");
    }
    if report.dry_run {
        println!("Dry run: nothing was changed.");
    }
}

async fn watch(ctx: &Context, args: BlocksWatchArgs) -> Result<()> {
    let instance = &ctx.instance;
    let opts = WatchOptions {
        feed: args.feed,
        state_file: args
            .state_file
            .unwrap_or_else(|| instance.settings.blocks_state_dir.join(WATCH_STATE_FILE)),
    };
    let api = instance.mastodon_admin_api()?;
    let report = blocks::watch(&api, &opts).await?;
    if ctx.output.json {
        return ctx.output.print_json(&report);
    }
    if ctx.output.quiet {
        return Ok(());
    }
    if report.new.is_empty() {
        println!(
            "Nothing new in {} posts (state in {}).",
            report.posts,
            report.state_file.display()
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = report
        .new
        .iter()
        .map(|s| {
            vec![
                s.published
                    .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_default(),
                s.domain.clone(),
                s.link.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["POSTED", "DOMAIN", "POST"], &rows));
    Ok(())
}
