use anyhow::Result;

use tusk::backup::files::{self, SetContents};
use tusk::backup::{self, BackupOptions, BackupReport};
use tusk::notify::RunDetails;
use tusk::output::human_bytes;
use tusk::prune_sets;

use super::Context;
use crate::cli::BackupArgs;

pub async fn exec(ctx: &Context, args: BackupArgs) -> Result<()> {
    let report = ctx
        .reported("backup", write_set(ctx, args), |report| RunDetails {
            set_id: Some(report.id.clone()),
            bytes: Some(report.bytes),
            durations: report.durations.clone(),
        })
        .await?;
    if ctx.output.json {
        ctx.output.print_json(&report)?;
    } else if !ctx.output.quiet {
        let places: Vec<String> = report
            .destinations
            .iter()
            .map(|written| written.location.clone())
            .collect();
        println!(
            "{}  {}  {} tables, {} rows  {}",
            report.id,
            human_bytes(report.bytes),
            report.tables,
            report.rows,
            places.join("  ")
        );
        for pruned in &report.pruned {
            super::backups::print_pruned(pruned);
        }
    }
    Ok(())
}

async fn write_set(ctx: &Context, args: BackupArgs) -> Result<BackupReport> {
    let instance = &ctx.instance;
    let destinations = instance.destinations(args.destination.as_deref())?;
    // Checked before the dump: a backup that cannot prune as asked is a
    // configuration mistake, found now rather than after an hour of pg_dump.
    if args.prune {
        for destination in &destinations {
            prune_sets::require_retention(destination)?;
        }
    }
    let stop_services = match args.stop_services {
        true => Some(instance.app_services().await?),
        false => None,
    };
    let contents = set_contents(ctx, &args).await?;
    let server = instance.database_server().await?;
    let opts = BackupOptions {
        destinations,
        contents,
        instance: instance.settings.instance.clone(),
        database: instance.named_database()?,
        compression: instance.settings.compression,
        compression_level: instance.settings.compression_level,
        mode: instance.settings.mode.name().into(),
        stop_services,
        lock: instance.settings.lock,
        prune: args.prune.then_some(instance.settings.time_zone),
    };
    backup::run(server.as_ref(), &opts, &ctx.output).await
}

/// What goes into the set beside the database, and how it is sealed. A
/// config with recipients (or a passphrase) always encrypts: there is no
/// flag to write such a set in clear text.
async fn set_contents(ctx: &Context, args: &BackupArgs) -> Result<SetContents> {
    let instance = &ctx.instance;
    let encryption = instance.backup_encryption(&ctx.output)?;
    let env_file = instance.settings.mastodon_env.clone();
    let deployment = instance.deployment_files().await?;
    let mut notes = Vec::new();
    let files = files::plan(
        env_file.as_ref().map(|env| env.path.as_path()),
        &deployment,
        encryption.is_some(),
        args.include_secrets_unencrypted,
        &mut notes,
    );
    let redis = &instance.settings.redis_backup;
    let redis = instance
        .redis_snapshots(
            redis.sidekiq && !args.no_redis,
            (redis.cache || args.redis_cache) && !args.no_redis,
        )
        .await?;
    Ok(SetContents {
        encryption,
        files,
        env_file,
        mastodon: instance.mastodon_version().await,
        redis,
        notes,
    })
}
