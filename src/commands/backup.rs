use anyhow::Result;

use tusk::backup::{self, BackupOptions, BackupReport, PruneAfter};
use tusk::notify::RunDetails;
use tusk::output::human_bytes;

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
        println!(
            "{}  {}  {} tables, {} rows  {}",
            report.id,
            human_bytes(report.bytes),
            report.tables,
            report.rows,
            report.path.display()
        );
        if let Some(pruned) = &report.pruned {
            super::backups::print_pruned(pruned);
        }
    }
    Ok(())
}

async fn write_set(ctx: &Context, args: BackupArgs) -> Result<BackupReport> {
    let instance = &ctx.instance;
    // Checked before the dump: a backup that cannot prune as asked is a
    // configuration mistake, found now rather than after an hour of pg_dump.
    let prune = match args.prune {
        true => {
            let destination = instance.backup_destination()?;
            destination.require_retention()?;
            Some(PruneAfter {
                destination,
                time_zone: instance.settings.time_zone,
            })
        }
        false => None,
    };
    let stop_services = match args.stop_services {
        true => Some(instance.app_services().await?),
        false => None,
    };
    let server = instance.database_server().await?;
    let opts = BackupOptions {
        backup_dir: instance.backup_dir(),
        instance: instance.settings.instance.clone(),
        database: instance.named_database()?,
        compression: instance.settings.compression,
        compression_level: instance.settings.compression_level,
        mode: instance.settings.mode.name().into(),
        stop_services,
        lock: instance.settings.lock,
        prune,
    };
    backup::run(server.as_ref(), &opts, &ctx.output).await
}
