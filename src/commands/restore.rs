use anyhow::Result;

use tusk::config::PgMode;
use tusk::error::TuskError;
use tusk::postgres::DbTarget;
use tusk::restore::{self, RestoreOptions};

use super::Context;
use crate::cli::RestoreArgs;

pub async fn exec(ctx: &Context, args: RestoreArgs) -> Result<()> {
    let instance = &ctx.instance;
    let set = instance
        .find_set(&args.set, args.destination.as_deref())
        .await?;
    if args.role.is_some() && !args.no_owner {
        return Err(TuskError::usage("--role goes with --no-owner"));
    }
    if args.jobs == 0 {
        return Err(TuskError::usage("--jobs must be at least 1"));
    }
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
            .or(url_database)
            .unwrap_or_else(|| set.manifest.database.name.clone()),
        force: args.force,
        jobs: args.jobs,
        no_owner: args.no_owner,
        no_acl: args.no_acl,
        role: args.role,
        globals: !args.no_globals,
    };
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
