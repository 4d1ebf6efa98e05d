use anyhow::Result;

use tusk::backup::BackupOptions;
use tusk::backup::files::SetContents;
use tusk::config::PgMode;
use tusk::error::TuskError;
use tusk::notify::RunDetails;
use tusk::output::human_bytes;
use tusk::postgres::DbTarget;
use tusk::rehearse::{self, RehearseOptions, RehearseReport, SetChoice};
use tusk::verify::{ContainerLike, FromImage, ScratchServer};

use super::Context;
use crate::cli::RehearseArgs;

pub async fn exec(ctx: &Context, args: RehearseArgs) -> Result<()> {
    let instance = &ctx.instance;
    let settings = &instance.settings;
    if args.jobs == 0 {
        return Err(TuskError::usage("--jobs must be at least 1"));
    }
    let scratch = if let Some(url) = &args.target_url {
        ScratchServer::Database(instance.direct_server(DbTarget::parse(url)?))
    } else if let Some(image) = &args.image {
        let login = match settings.mode {
            PgMode::Docker => settings.database()?.clone(),
            // The throwaway container's superuser: the instance's login may
            // carry a password the new container does not know.
            PgMode::Direct => DbTarget::parse("postgresql://postgres@localhost/postgres")?,
        };
        ScratchServer::Image(Box::new(FromImage {
            docker: tusk::docker::connect(settings.docker_host.as_deref())?,
            image: image.clone(),
            login,
        }))
    } else if settings.mode == PgMode::Docker {
        let (docker, like) = instance.database_container().await?;
        ScratchServer::ContainerLike(Box::new(ContainerLike {
            docker,
            like,
            login: settings.database()?.clone(),
        }))
    } else {
        return Err(TuskError::usage(
            "name the throwaway target: --target-url URL (a server where tusk may create and \
             drop a database) or --image IMAGE (a PostgreSQL image for a throwaway container); \
             rehearse never restores next to the production database by itself",
        ));
    };
    let set = if args.fresh {
        SetChoice::Fresh {
            source: instance.database_server().await?,
            backup: Box::new(BackupOptions {
                destinations: vec![instance.local_destination()],
                instance: settings.instance.clone(),
                database: instance.named_database()?,
                compression: settings.compression,
                compression_level: settings.compression_level,
                mode: settings.mode.name().into(),
                stop_services: None,
                lock: settings.lock,
                prune: None,
                contents: SetContents {
                    encryption: instance.backup_encryption(&ctx.output)?,
                    ..SetContents::default()
                },
            }),
        }
    } else if let Some(id) = &args.set {
        SetChoice::Given(Box::new(instance.find_set(id, None).await?))
    } else {
        // Every destination (directories and buckets) and the backup directory.
        let listed = instance.list_sets(None).await?;
        let searched: Vec<String> = listed
            .iter()
            .map(|(destination, _)| format!("{} ({})", destination.name, destination.describe()))
            .collect();
        SetChoice::LatestGood {
            sets: listed.into_iter().flat_map(|(_, sets)| sets).collect(),
            searched: searched.join(", "),
        }
    };
    let opts = RehearseOptions {
        identities: instance.configured_identities(&ctx.output)?,
        set,
        scratch,
        run: args.run.clone(),
        jobs: args.jobs,
        junit: args.junit.clone(),
        report_file: args.report.clone(),
    };
    // Reported like verify: a failed drill alerts through notify.url and
    // notify.ping_url; the report is printed either way.
    let rehearsed = async {
        let (report, outcome) = rehearse::run(opts, &ctx.output).await;
        if ctx.output.json {
            ctx.output.print_json(&report)?;
        } else if !ctx.output.quiet || outcome.is_err() {
            print_report(&report);
        }
        outcome.map(|()| report)
    };
    ctx.reported("rehearse", rehearsed, |report| RunDetails {
        set_id: report.set_id.clone(),
        bytes: None,
        durations: report
            .restore_seconds
            .map(|seconds| ("restore".to_string(), seconds))
            .into_iter()
            .collect(),
    })
    .await
    .map(drop)
}

fn print_report(report: &RehearseReport) {
    for note in &report.notes {
        println!("note: {note}");
    }
    let set = report.set_id.as_deref().unwrap_or("(no set)");
    let mut line = format!(
        "rehearsal of {set}: {}",
        if report.ok { "OK" } else { "FAILED" }
    );
    if let Some(target) = &report.target {
        line.push_str(&format!(" on {target}"));
    }
    if let Some(image) = &report.image {
        line.push_str(&format!(" ({image})"));
    }
    println!("{line}");
    if let Some(seconds) = report.restore_seconds {
        let peak = report
            .peak_database_bytes
            .map(|peak| format!(", peak {}", human_bytes(peak.max(0) as u64)))
            .unwrap_or_default();
        println!(
            "  restore {seconds:.1}s{peak}; {} tables compared",
            report.tables_compared
        );
    }
    for problem in &report.problems {
        println!(
            "  {} {}: expected {}, got {}",
            problem.kind, problem.subject, problem.expected, problem.got
        );
    }
    if let Some(run) = &report.run {
        println!(
            "  `{}`: {} after {:.1}s",
            run.command,
            run.exit_code
                .map_or("ended by a signal".to_string(), |code| format!(
                    "exit {code}"
                )),
            run.seconds
        );
    }
}
