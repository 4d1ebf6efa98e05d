use anyhow::Result;

use super::Context;
use crate::backup::set::BackupSet;
use crate::cli::VerifyArgs;
use crate::config::PgMode;
use crate::docker::throwaway;
use crate::error::TuskError;
use crate::output::{human_bytes, table};
use crate::postgres::docker::DockerServer;
use crate::postgres::{DbTarget, PgServer};
use crate::verify::{self, VerifyOptions, VerifyReport};

pub async fn exec(ctx: &Context, args: VerifyArgs) -> Result<()> {
    let set = BackupSet::resolve(&ctx.backup_dir(), &args.set)?;
    let mut throwaway = None;
    let server: Option<Box<dyn PgServer>> = if args.checksums_only {
        None
    } else if let Some(url) = &args.verify_url {
        Some(ctx.direct_server(DbTarget::parse(url)?))
    } else if args.verify_container.is_some() {
        if ctx.settings.mode != PgMode::Docker {
            return Err(TuskError::usage(
                "--verify-container auto needs Docker mode: it uses the source container's image",
            ));
        }
        let (docker, source) = ctx.source_container().await?;
        let login = ctx.settings.database()?;
        let (container, guard) = throwaway::start_like(&docker, &source, login).await?;
        throwaway = Some(guard);
        Some(Box::new(DockerServer::new(docker, container, login)?))
    } else {
        Some(ctx.source_server().await?)
    };
    let opts = VerifyOptions {
        checksums_only: args.checksums_only,
        jobs: args.jobs.max(1),
    };
    let outcome = verify::run(&set, server.as_deref(), &opts, &ctx.output).await;
    if let Some(guard) = throwaway {
        guard.run().await?;
    }
    let report = outcome?;
    if ctx.output.json {
        ctx.output.print_json(&report)?;
    } else if !(ctx.output.quiet && report.ok) {
        print_report(&report);
    }
    if report.ok {
        Ok(())
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
                ", {} tables match after a {seconds:.1}s test restore",
                report.tables_compared
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
