use std::time::Duration;

use anyhow::Result;

use tusk::config::{MediaStoreKind, PgMode};
use tusk::error::TuskError;
use tusk::instance::Instance;
use tusk::media::usage::UsageRecord;
use tusk::output::{human_bytes, table};
use tusk::status::backups::{DestinationListing, SetsListing};
use tusk::status::{self, MediaSource, StatusOptions, StatusReport, StatusSources};

use super::Context;
use crate::cli::StatusArgs;

/// How long making a source may take (finding the database container).
const SOURCE_TIMEOUT: Duration = Duration::from_secs(10);

/// A failure before the checks could run, as Nagios' UNKNOWN (exit 3).
pub fn unknown(err: anyhow::Error) -> anyhow::Error {
    match err.downcast_ref::<TuskError>() {
        Some(TuskError::Status { .. }) => err,
        _ => TuskError::Status {
            code: status::State::Unknown.exit_code(),
            message: format!("UNKNOWN: {err:#}"),
        }
        .into(),
    }
}

pub async fn exec(ctx: &Context, args: StatusArgs) -> Result<()> {
    if let Some(address) = &args.listen {
        return listen(ctx, &args, address).await;
    }
    let opts = options(ctx, &args, true);
    let sources = sources(&ctx.instance).await;
    let report = status::run(&sources, &opts).await;
    if let Some(path) = &ctx.metrics_file
        && let Err(err) = tusk::metrics::write_text(path, &status::metrics::render(&report))
    {
        tracing::warn!("could not write the metrics file: {err:#}");
    }
    if ctx.output.json {
        ctx.output.print_json(&report).map_err(unknown)?;
    } else {
        print_report(&report);
    }
    match report.exit_code() {
        0 => Ok(()),
        code => Err(TuskError::Status {
            code,
            message: String::new(),
        }
        .into()),
    }
}

fn options(ctx: &Context, args: &StatusArgs, walk_media: bool) -> StatusOptions {
    let settings = &ctx.instance.settings;
    StatusOptions {
        thresholds: settings.status.thresholds(),
        only: args.checks.clone(),
        timeout: Duration::from_secs(10).max(settings.redis_timeout * 2),
        walk_media,
    }
}

/// Serves /metrics until a signal drops this future.
async fn listen(ctx: &Context, args: &StatusArgs, address: &str) -> Result<()> {
    let listener = status::serve::bind(address).await?;
    tracing::info!(
        "serving tusk status metrics on http://{}/metrics",
        listener.local_addr()?
    );
    let opts = options(ctx, args, false);
    // The settings are read once; each scrape connects anew.
    let instance = &ctx.instance;
    let opts = &opts;
    let snapshot =
        move || -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send + '_>> {
            Box::pin(async move {
                let sources = sources(instance).await;
                status::metrics::render(&status::run(&sources, opts).await)
            })
        };
    status::serve::serve(listener, &snapshot).await
}

/// The instance's servers and stores as `status` reads them; what cannot be
/// made becomes an `unknown` check.
async fn sources(instance: &Instance) -> StatusSources {
    let settings = &instance.settings;
    let database = tokio::time::timeout(SOURCE_TIMEOUT, instance.database_server())
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "the database container was not found within {} s",
                SOURCE_TIMEOUT.as_secs()
            ))
        });
    let destinations: Vec<Box<dyn SetsListing>> = settings
        .destinations
        .iter()
        .map(|destination| {
            Box::new(DestinationListing {
                destination: destination.clone(),
            }) as Box<dyn SetsListing>
        })
        .collect();
    let app_containers: Option<status::AppContainers> = match settings.mode {
        PgMode::Direct => None,
        PgMode::Docker => {
            let docker_host = settings.docker_host.clone();
            let selector = settings.container.clone();
            let services = settings.services.clone();
            Some(Box::new(move || {
                let (docker_host, selector, services) =
                    (docker_host.clone(), selector.clone(), services.clone());
                Box::pin(async move {
                    let docker = tusk::docker::connect(docker_host.as_deref())?;
                    let database = tusk::docker::find_running(&docker, &selector).await?;
                    tusk::docker::services::states(&docker, &database, &services).await
                })
            }))
        }
    };
    let media = match settings.media_store {
        MediaStoreKind::Local => MediaSource {
            store: "local".into(),
            location: settings.media_root.display().to_string(),
            local_root: Some(settings.media_root.clone()),
            record: UsageRecord::load(&settings.blocks_state_dir),
        },
        MediaStoreKind::S3 => MediaSource {
            store: "s3".into(),
            location: match (settings.s3(), &settings.s3_key_prefix) {
                (Ok(s3), Some(prefix)) => format!("s3://{}/{prefix}", s3.bucket),
                (Ok(s3), None) => format!("s3://{}", s3.bucket),
                (Err(_), _) => "the media bucket".into(),
            },
            local_root: None,
            record: UsageRecord::load(&settings.blocks_state_dir),
        },
    };
    StatusSources {
        database,
        database_name: instance
            .database_name()
            .unwrap_or_else(|_| "postgres".into()),
        sidekiq_redis: settings.sidekiq_redis().cloned(),
        redis_timeout: settings.redis_timeout,
        destinations,
        backup_dir: settings.backup_dir.clone(),
        temp_dir: settings.temp_dir.clone().unwrap_or_else(std::env::temp_dir),
        app_containers,
        media,
    }
}

/// One screen: the checks, then Sidekiq's queues.
fn print_report(report: &StatusReport) {
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|check| {
            vec![
                check.state.name().to_uppercase(),
                check.name.clone(),
                check.message.clone(),
            ]
        })
        .collect();
    print!("{}", table(&["STATE", "CHECK", "DETAILS"], &rows));
    if let Some(sidekiq) = &report.sidekiq
        && !sidekiq.queues.is_empty()
    {
        println!();
        let rows: Vec<Vec<String>> = sidekiq
            .queues
            .iter()
            .map(|queue| {
                vec![
                    queue.name.clone(),
                    queue.size.to_string(),
                    format!("{:.1} s", queue.latency_seconds),
                ]
            })
            .collect();
        print!("{}", table(&["QUEUE", "JOBS", "LATENCY"], &rows));
        println!(
            "scheduled {}, retries {}, dead {}, {} processes, {}/{} threads busy",
            sidekiq.scheduled,
            sidekiq.retries,
            sidekiq.dead,
            sidekiq.processes,
            sidekiq.busy,
            sidekiq.threads
        );
    }
    if let Some(postgres) = &report.postgres {
        println!(
            "\nPostgreSQL {}: {} {}",
            postgres.version,
            postgres.database,
            human_bytes(postgres.size_bytes.max(0) as u64)
        );
    }
    println!("\nstatus: {}", report.state.name().to_uppercase());
}
