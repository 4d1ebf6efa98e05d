use anyhow::Result;

use tusk::backup::BackupOptions;
use tusk::backup::files::SetContents;
use tusk::config::{MediaStoreKind, PgMode};
use tusk::docker::{ContainerSelector, find_running};
use tusk::error::TuskError;
use tusk::migrate::preflight::Status;
use tusk::migrate::{self, AppControl, CutoverSource, MigrateOptions, MigrateReport};
use tusk::notify::RunDetails;
use tusk::output::table;
use tusk::postgres::docker::DockerServer;
use tusk::postgres::{DbTarget, PgServer};

use super::Context;
use crate::cli::MigrateArgs;

/// The login in a new PostgreSQL container when --to-url gives none: the
/// official image's superuser.
const CONTAINER_LOGIN: &str = "postgresql://postgres@localhost/postgres";

pub async fn exec(ctx: &Context, args: MigrateArgs) -> Result<()> {
    let instance = &ctx.instance;
    let settings = &instance.settings;
    if args.jobs == 0 {
        return Err(TuskError::usage("--jobs must be at least 1"));
    }
    let source_database = instance.named_database()?;
    let url = args.to_url.as_deref().map(DbTarget::parse).transpose()?;
    let url_database = url.as_ref().and_then(|u| u.database().map(str::to_string));
    let target_database = args
        .to_database
        .clone()
        .or(url_database)
        .unwrap_or_else(|| source_database.clone());

    let (target, target_host, target_port): (Box<dyn PgServer>, String, u16) =
        match (&args.to_container, url) {
            (Some(name), url) => {
                let login = match url {
                    Some(url) => url,
                    None => DbTarget::parse(CONTAINER_LOGIN)?,
                };
                let host = args
                    .to_docker_host
                    .as_deref()
                    .or(settings.docker_host.as_deref());
                let docker = tusk::docker::connect(host)?;
                let container =
                    find_running(&docker, &ContainerSelector::Name(name.clone())).await?;
                let server = DockerServer::new(docker, container, &login)?;
                (Box::new(server), name.clone(), 5432)
            }
            (None, Some(url)) => {
                let host = url.host_names().first().cloned().unwrap_or_default();
                let port = url
                    .libpq_env()
                    .into_iter()
                    .find(|(key, _)| *key == "PGPORT")
                    .and_then(|(_, port)| port.parse().ok())
                    .unwrap_or(5432);
                (instance.direct_server(url), host, port)
            }
            (None, None) => {
                return Err(TuskError::usage(
                    "name the target: --to-url URL (direct), or --to-container NAME \
                     (with --to-docker-host HOST for another Engine)",
                ));
            }
        };

    let app = match settings.mode {
        PgMode::Docker => AppControl::Containers(Box::new(instance.app_services().await?)),
        PgMode::Direct => AppControl::Commands {
            stop: settings.app_stop_command.clone(),
            start: settings.app_start_command.clone(),
        },
    };
    let opts = MigrateOptions {
        backup: BackupOptions {
            destinations: vec![instance.local_destination()],
            instance: settings.instance.clone(),
            database: source_database,
            compression: settings.compression,
            compression_level: settings.compression_level,
            mode: settings.mode.name().into(),
            stop_services: None,
            lock: settings.lock,
            prune: None,
            contents: SetContents {
                encryption: instance.backup_encryption(&ctx.output)?,
                // With the app stopped, the snapshot is exactly the old server's queues.
                redis: instance
                    .redis_snapshots(settings.redis_backup.sidekiq, false)
                    .await?,
                ..SetContents::default()
            },
        },
        identities: instance.configured_identities(&ctx.output)?,
        source: instance.database_server().await?,
        target,
        target_database,
        target_host,
        target_port,
        app,
        force: args.force,
        check_only: args.check,
        restart: args.restart,
        restart_source: args.restart_source,
        jobs: args.jobs,
        cutover: CutoverSource {
            env: settings.mastodon_env.clone(),
            media_in_bucket: settings.media_store == MediaStoreKind::S3,
            media_root: settings.media_root.clone(),
        },
    };
    let migrated = async {
        let (report, outcome) = migrate::run(&opts, &ctx.output).await;
        if ctx.output.json {
            ctx.output.print_json(&report)?;
        } else if !ctx.output.quiet || outcome.is_err() {
            print_report(&report);
        }
        outcome.map(|()| report)
    };
    ctx.reported("migrate", migrated, |report| RunDetails {
        set_id: report.set_id.clone(),
        bytes: None,
        durations: report
            .stages
            .iter()
            .map(|stage| (stage.stage.name().to_string(), stage.seconds))
            .collect(),
    })
    .await
    .map(drop)
}

fn print_report(report: &MigrateReport) {
    let rows: Vec<Vec<String>> = report
        .preflight
        .iter()
        .map(|check| {
            vec![
                match check.status {
                    Status::Pass => "ok",
                    Status::Warn => "warn",
                    Status::Unknown => "unknown",
                    Status::Fail => "REFUSED",
                }
                .to_string(),
                check.name.clone(),
                check.detail.clone(),
            ]
        })
        .collect();
    println!("preflight {} -> {}", report.source, report.target);
    print!("{}", table(&["", "CHECK", "DETAIL"], &rows));
    if report.check_only {
        return;
    }
    println!();
    for stage in &report.stages {
        println!(
            "{:<16} {:<8} {:>7.1}s  {}",
            stage.stage.name(),
            format!("{:?}", stage.outcome).to_lowercase(),
            stage.seconds,
            stage.detail
        );
    }
    if let Some(check) = &report.verification {
        for problem in &check.problems {
            println!(
                "  differs: {} {}: expected {}, got {}",
                problem.kind, problem.subject, problem.expected, problem.got
            );
        }
    }
    if let Some(cutover) = &report.cutover {
        println!(
            "\nmigrated: backup set {} restored into {} and verified",
            report.set_id.as_deref().unwrap_or(""),
            report.target
        );
        for warning in &cutover.warnings {
            println!("warning: {warning}");
        }
        println!("left for you:");
        for (n, item) in cutover.todo.iter().enumerate() {
            println!("  {}. {item}", n + 1);
        }
    } else if report.error.is_some() {
        println!(
            "\nthe migration stopped; the old app is {}. Its progress is in {}: re-run \
             tusk migrate with the same target to resume",
            report.source_app,
            report.state_file.display()
        );
    }
}
