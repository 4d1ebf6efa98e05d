use anyhow::{Context as _, Result};

use super::Context;
use crate::backup::{self, BackupOptions};
use crate::cli::BackupArgs;
use crate::output::human_bytes;

pub async fn exec(ctx: &Context, _args: BackupArgs) -> Result<()> {
    let settings = &ctx.settings;
    let server = ctx.source_server()?;
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
        mode: "direct".into(),
    };
    let report = backup::run(server.as_ref(), &opts, &ctx.output).await?;
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
