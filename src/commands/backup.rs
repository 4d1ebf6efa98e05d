use anyhow::{Context as _, Result};

use super::Context;
use crate::backup::{self, BackupOptions};
use crate::cli::BackupArgs;
use crate::config::PgMode;
use crate::docker::services;
use crate::error::TuskError;
use crate::output::human_bytes;

pub async fn exec(ctx: &Context, args: BackupArgs) -> Result<()> {
    let settings = &ctx.settings;
    if args.stop_services && settings.mode != PgMode::Docker {
        return Err(TuskError::usage(
            "--stop-services needs Docker mode (--postgres-mode docker or postgres.mode: docker)",
        ));
    }
    let server = ctx.source_server().await?;
    let database = settings
        .database()?
        .database()
        .context("the database URL names no database")?
        .to_string();
    let opts = BackupOptions {
        backup_dir: ctx.backup_dir(),
        instance: settings.instance.clone(),
        database,
        compression: settings.compression,
        compression_level: settings.compression_level,
        mode: ctx.mode_name().into(),
    };
    let stopped = if args.stop_services {
        let (docker, database) = ctx.source_container().await?;
        let containers = services::find(&docker, &database, &settings.services).await?;
        Some(services::stop(&docker, containers).await?)
    } else {
        None
    };
    let outcome = backup::run(server.as_ref(), &opts, &ctx.output).await;
    // The app comes back whatever happened to the dump.
    if let Some(stopped) = stopped {
        let names = stopped.names().join(", ");
        stopped.start().await?;
        if !names.is_empty() {
            tracing::info!("started {names} again");
        }
    }
    let report = outcome?;
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
    }
    Ok(())
}
