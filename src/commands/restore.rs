use anyhow::Result;

use super::Context;
use crate::backup::set::BackupSet;
use crate::cli::RestoreArgs;
use crate::error::TuskError;
use crate::postgres::DbTarget;
use crate::restore::{self, RestoreOptions};

pub async fn exec(ctx: &Context, args: RestoreArgs) -> Result<()> {
    let set = BackupSet::resolve(&ctx.backup_dir(), &args.set)?;
    let target = DbTarget::parse(&args.target_url)?;
    if args.role.is_some() && !args.no_owner {
        return Err(TuskError::usage("--role goes with --no-owner"));
    }
    if args.jobs == 0 {
        return Err(TuskError::usage("--jobs must be at least 1"));
    }
    let opts = RestoreOptions {
        database: target
            .database()
            .map_or_else(|| set.manifest.database.name.clone(), str::to_string),
        force: args.force,
        jobs: args.jobs,
        no_owner: args.no_owner,
        role: args.role,
        globals: !args.no_globals,
    };
    let server = ctx.server_for(target);
    let report = restore::run(server.as_ref(), &set, &opts, &ctx.output).await?;
    if ctx.output.json {
        ctx.output.print_json(&report)?;
    } else if !ctx.output.quiet {
        println!(
            "restored {} into {} in {:.1}s",
            report.id, report.target, report.seconds
        );
    }
    Ok(())
}
