use anyhow::Result;
use serde::Serialize;

use super::Context;
use crate::cli::BackupsCommand;
use tusk::output::{human_bytes, table};
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
