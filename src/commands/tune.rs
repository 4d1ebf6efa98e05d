use anyhow::Result;
use serde::Serialize;

use tusk::config::PgMode;
use tusk::error::TuskError;
use tusk::tune::{self, AppliedSetting, Machine, Surroundings, TuneOptions, TuneReport};

use super::Context;
use crate::cli::TuneArgs;

#[derive(Serialize)]
struct Document<'a> {
    #[serde(flatten)]
    report: &'a TuneReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<&'a [AppliedSetting]>,
}

pub async fn exec(ctx: &Context, args: TuneArgs) -> Result<()> {
    let instance = &ctx.instance;
    let settings = &instance.settings;
    if args.cpus == Some(0) {
        return Err(TuskError::usage("--cpus must be at least 1"));
    }
    let opts = TuneOptions {
        memory_kb: args.memory.as_deref().map(tune::parse_memory).transpose()?,
        cpus: args.cpus,
        storage: args.storage,
        connections: args.connections,
        compose_file: args.compose_file.clone(),
    };
    let everything_given = opts.memory_kb.is_some() && opts.cpus.is_some();

    let server = instance.database_server().await;
    let (machine, compose_from_labels, remote_host) = match settings.mode {
        PgMode::Docker => {
            let (docker, container) = instance.database_container().await?;
            let resources = tusk::docker::limits::resources(&docker, &container.id).await?;
            let files = resources
                .compose_config_files
                .iter()
                .map(|file| match &resources.compose_working_dir {
                    Some(dir) if file.is_relative() => dir.join(file),
                    _ => file.clone(),
                })
                .collect();
            let machine = match tune::container_machine(&container.name, &resources) {
                Ok(machine) => machine,
                Err(_) if everything_given => given_only(),
                Err(err) => return Err(err),
            };
            (machine, files, None)
        }
        PgMode::Direct => {
            let machine = match tune::this_machine() {
                Ok(machine) => machine,
                Err(_) if everything_given => given_only(),
                Err(err) => return Err(err),
            };
            let remote = settings.database().ok().and_then(|login| {
                login
                    .host_names()
                    .into_iter()
                    .find(|host| !tune::is_local_host(host))
            });
            (machine, Vec::new(), remote)
        }
    };
    let report = tune::run(
        &opts,
        Surroundings {
            machine,
            env: settings.mastodon_env.as_ref(),
            compose_from_labels,
            server: server
                .as_ref()
                .map(|s| s.as_ref())
                .map_err(|err| format!("{err:#}")),
            remote_host,
        },
    )
    .await?;

    let applied = if args.apply {
        let server = server?;
        let question = format!(
            "Write {} settings into postgresql.auto.conf of {} with ALTER SYSTEM and reload the configuration?",
            report.lines.len(),
            server.target().redacted()
        );
        if !ctx.output.confirm(&question)? {
            anyhow::bail!("nothing applied: not confirmed");
        }
        Some(tune::apply(server.as_ref(), &report.lines).await?)
    } else {
        None
    };

    if ctx.output.json {
        return ctx.output.print_json(&Document {
            report: &report,
            applied: applied.as_deref(),
        });
    }
    if ctx.output.quiet && applied.is_some() {
        return Ok(());
    }
    print_snippet(&report);
    if let Some(applied) = &applied {
        print_applied(applied);
    }
    Ok(())
}

/// Memory and CPUs could not be measured, and both were given.
fn given_only() -> Machine {
    Machine {
        memory_kb: 0,
        memory_source: "given".into(),
        cpus: 0,
        cpus_source: "given".into(),
    }
}

fn print_snippet(report: &TuneReport) {
    let inputs = &report.inputs;
    println!("# PostgreSQL settings for Mastodon, computed as PgTune computes them (db type web)");
    println!("# memory: {} ({})", inputs.memory, inputs.memory_source);
    println!("# CPUs: {} ({})", inputs.cpus, inputs.cpus_source);
    println!(
        "# storage: {} ({})",
        inputs.storage.name(),
        inputs.storage_source
    );
    println!(
        "# connections: {} ({})",
        inputs.connections, inputs.connections_source
    );
    if let Some(budget) = &report.connection_budget {
        for process in &budget.processes {
            println!(
                "#   {}: {} = {}",
                process.service, process.derivation, process.connections
            );
        }
        println!(
            "#   headroom for tootctl, backups and superusers: {}",
            budget.headroom
        );
    }
    match &inputs.postgres_version {
        Some(version) => println!("# PostgreSQL: {version}"),
        None => println!("# PostgreSQL: unknown (assumed {})", inputs.postgres_major),
    }
    println!();
    let width = report
        .lines
        .iter()
        .map(|s| s.name.len() + s.value.len() + 3)
        .max()
        .unwrap_or(0);
    for setting in &report.lines {
        let line = format!("{} = {}", setting.name, setting.value);
        println!("{line:width$}  # {}", setting.reason);
    }
    println!();
    println!("# Advice");
    for advice in &report.advice {
        println!("# - {}: {}", advice.topic, advice.message);
    }
}

fn print_applied(applied: &[AppliedSetting]) {
    println!();
    println!("# Applied with ALTER SYSTEM (postgresql.auto.conf) and reloaded:");
    for setting in applied {
        let state = match (setting.changed, setting.needs_restart) {
            (false, _) => "unchanged".to_string(),
            (true, true) => "written; in force after a restart".to_string(),
            (true, false) => "in force".to_string(),
        };
        println!(
            "#   {}: {} -> {} ({state})",
            setting.name, setting.before, setting.value
        );
    }
    let restart: Vec<&str> = applied
        .iter()
        .filter(|s| s.needs_restart)
        .map(|s| s.name)
        .collect();
    if restart.is_empty() {
        println!("# No restart needed.");
    } else {
        println!(
            "# Restart PostgreSQL for: {} (pg_settings.pending_restart)",
            restart.join(", ")
        );
    }
}
