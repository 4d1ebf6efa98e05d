use anyhow::Result;

use serde::Serialize;
use tusk::config::PgMode;
use tusk::error::TuskError;
use tusk::postgres::{DbTarget, PgServer};
use tusk::restore::files::RestoredFile;
use tusk::restore::redis::{RedisRestoreOptions, RedisRestoreReport};
use tusk::restore::{self, RestoreOptions, RestoreReport};
use tusk::set::BackupSet;

use super::Context;
use crate::cli::RestoreArgs;

/// What `restore --json` prints: the database's report (when one was
/// restored) with the files written beside it.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    database: Option<RestoreReport>,
    files: Vec<RestoredFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<RedisRestoreReport>,
}

pub async fn exec(ctx: &Context, args: RestoreArgs) -> Result<()> {
    let instance = &ctx.instance;
    let mut set = instance
        .find_set(&args.set, args.destination.as_deref())
        .await?;
    if args.role.is_some() && !args.no_owner {
        return Err(TuskError::usage("--role goes with --no-owner"));
    }
    if args.jobs == 0 {
        return Err(TuskError::usage("--jobs must be at least 1"));
    }
    if args.no_database && args.files_to.is_none() && args.redis_to.is_none() {
        return Err(TuskError::usage(
            "--no-database leaves nothing to restore: add --files-to DIR or --redis-to DIR",
        ));
    }
    if let Some(info) = set.manifest.encryption.clone() {
        set = set.unlock(std::sync::Arc::new(
            instance.identities_for(&info, &ctx.output)?,
        ));
        // A key that does not fit is found before anything changes.
        set.check_identities().await?;
    }
    // The target is found before anything is written: a wrong one leaves
    // the files as they were too.
    let database_plan = if args.no_database {
        None
    } else {
        Some(plan_database(ctx, &set, &args).await?)
    };
    // Once, before the files, Redis or the database change.
    set.require_intact().await?;
    let mut files = Vec::new();
    if let Some(dir) = &args.files_to {
        files = restore::files::write_files(&set, dir, args.force).await?;
    }
    let redis = match &args.redis_to {
        Some(dir) => {
            let opts = RedisRestoreOptions {
                dir: dir.clone(),
                dbfilename: args.redis_dbfilename.clone(),
                server_bin: instance.settings.redis_backup.server_bin.clone(),
                force: args.force,
            };
            Some(restore::redis::run(&set, &opts).await?)
        }
        None => None,
    };
    let database = match database_plan {
        Some((server, opts)) => {
            Some(restore::run(server.as_ref(), &set, &opts, &ctx.output).await?)
        }
        None => None,
    };
    if ctx.output.json {
        ctx.output.print_json(&Report {
            database,
            files,
            redis,
        })?;
    } else if !ctx.output.quiet {
        for file in &files {
            println!("wrote {} (mode 0600)", file.path.display());
        }
        if let Some(redis) = &redis {
            println!(
                "wrote {} ({} keys, checked by loading it); start Redis to use it",
                redis.path.display(),
                redis.keys.values().sum::<u64>()
            );
            for kept in &redis.kept {
                println!("kept the previous file as {}", kept.display());
            }
        }
        if let Some(report) = database {
            println!(
                "restored {} into {} in {:.1}s",
                report.id, report.target, report.seconds
            );
        }
    }
    Ok(())
}

/// The server to restore into and how.
async fn plan_database(
    ctx: &Context,
    set: &BackupSet,
    args: &RestoreArgs,
) -> Result<(Box<dyn PgServer>, RestoreOptions)> {
    let instance = &ctx.instance;
    let (server, url_database) = match (&args.target_url, &args.target_container) {
        (Some(url), _) => {
            let target = DbTarget::parse(url)?;
            let database = target.database().map(str::to_string);
            (instance.direct_server(target), database)
        }
        (None, Some(name)) => (instance.container_server(name).await?, None),
        (None, None) if instance.settings.mode == PgMode::Docker => {
            (instance.database_server().await?, None)
        }
        (None, None) => {
            return Err(TuskError::usage(
                "name the target: --target-url URL, or --target-container NAME in Docker mode",
            ));
        }
    };
    let opts = RestoreOptions {
        database: args
            .database
            .clone()
            .or(url_database)
            .unwrap_or_else(|| set.manifest.database.name.clone()),
        force: args.force,
        jobs: args.jobs,
        no_owner: args.no_owner,
        no_acl: args.no_acl,
        role: args.role.clone(),
        globals: !args.no_globals,
        early_content: None,
    };
    Ok((server, opts))
}
