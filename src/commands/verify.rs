use anyhow::Result;

use tusk::config::PgMode;
use tusk::error::TuskError;
use tusk::notify::RunDetails;
use tusk::output::{human_bytes, table};
use tusk::postgres::DbTarget;
use tusk::verify::{self, ContainerLike, ScratchServer, VerifyOptions, VerifyReport};

use super::Context;
use crate::cli::VerifyArgs;

pub async fn exec(ctx: &Context, args: VerifyArgs) -> Result<()> {
    let details = |report: &VerifyReport| RunDetails {
        set_id: Some(report.id.clone()),
        bytes: None,
        durations: report
            .restore_seconds
            .map(|seconds| ("restore".to_string(), seconds))
            .into_iter()
            .collect(),
    };
    ctx.reported("verify", verify_and_print(ctx, args), details)
        .await
        .map(drop)
}

/// Verifies and prints the report; a set with problems is an error (exit 3).
async fn verify_and_print(ctx: &Context, args: VerifyArgs) -> Result<VerifyReport> {
    let instance = &ctx.instance;
    let mut set = instance
        .find_set(&args.set, args.destination.as_deref())
        .await?;
    // The checksums cover the stored (encrypted) bytes: only the test
    // restore needs the key.
    if let Some(info) = set
        .manifest
        .encryption
        .clone()
        .filter(|_| !args.checksums_only)
    {
        set = set.unlock(std::sync::Arc::new(
            instance.identities_for(&info, &ctx.output)?,
        ));
    }
    let scratch = if args.checksums_only {
        None
    } else if let Some(url) = &args.verify_url {
        Some(ScratchServer::Database(
            instance.direct_server(DbTarget::parse(url)?),
        ))
    } else if args.verify_container.is_some() {
        if instance.settings.mode != PgMode::Docker {
            return Err(TuskError::usage(
                "--verify-container auto needs Docker mode: it uses the source container's image",
            ));
        }
        let (docker, like) = instance.database_container().await?;
        Some(ScratchServer::ContainerLike(Box::new(ContainerLike {
            docker,
            like,
            login: instance.settings.database()?.clone(),
        })))
    } else {
        Some(ScratchServer::Database(instance.database_server().await?))
    };
    let opts = VerifyOptions {
        scratch,
        jobs: args.jobs.max(1),
        content: !args.counts_only,
        while_restored: None,
    };
    let report = verify::run(&set, opts, &ctx.output).await?;
    if ctx.output.json {
        ctx.output.print_json(&report)?;
    } else if !(ctx.output.quiet && report.ok) {
        print_report(&report);
    }
    if report.ok {
        Ok(report)
    } else {
        Err(TuskError::VerificationFailed(format!(
            "{} problem(s) in backup set {}",
            report.problems.len(),
            report.id
        ))
        .into())
    }
}

fn print_report(report: &VerifyReport) {
    for note in &report.notes {
        println!("note: {note}");
    }
    if report.ok {
        let mut line = format!("{}: OK", report.id);
        if let Some(seconds) = report.restore_seconds {
            line.push_str(&format!(
                ", {} tables match{} after a {seconds:.1}s test restore",
                report.tables_compared,
                if report.content_compared {
                    " in content"
                } else {
                    " in row counts"
                }
            ));
        } else {
            line.push_str(", checksums match");
        }
        if let Some(peak) = report.peak_database_bytes {
            line.push_str(&format!(" (peak {})", human_bytes(peak.max(0) as u64)));
        }
        println!("{line}");
        return;
    }
    println!("{}: FAILED", report.id);
    let rows: Vec<Vec<String>> = report
        .problems
        .iter()
        .map(|p| {
            vec![
                p.kind.clone(),
                p.subject.clone(),
                p.expected.clone(),
                p.got.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["PROBLEM", "SUBJECT", "EXPECTED", "GOT"], &rows)
    );
}
