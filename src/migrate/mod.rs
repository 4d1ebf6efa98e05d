//! `tusk migrate`: moves the instance's database to another server as one
//! guarded, resumable operation: preflight (changes nothing), stop writes,
//! backup (a normal set, the rollback point), restore into the target with
//! its roles, content verification against the set's manifest, and a
//! cut-over report. Each stage is logged as it starts and ends.
//!
//! Progress is kept in the backup directory ([`state`]), so a re-run after
//! a failure resumes at the first stage that did not complete and reuses
//! the set. A restore that failed half-way left the target as it was: tusk
//! restores into a staging database and renames it into place only once
//! complete (the janitor removes the staging database of a killed run).
//!
//! The old app stays stopped after the stop-writes stage, also when a later
//! stage fails: the set must stay the newest data for a resume to be right.
//! Should someone start the app containers between runs, the re-run notices
//! and makes a new set.

pub mod cutover;
pub mod preflight;
pub mod state;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::backup::{self, BackupOptions};
use crate::docker::services::{self, AppServices};
use crate::error::TuskError;
use crate::output::Output;
use crate::postgres::PgServer;
use crate::restore::{self, RestoreOptions};
use crate::set::BackupSet;
use crate::verify::{self, ContentCheck};
use cutover::{CutoverInputs, CutoverReport};
use preflight::{Check, PreflightInputs, Status};
use state::{MigrationState, Stage};

/// How the old app is kept from writing.
pub enum AppControl {
    /// Docker mode: the app containers beside the database container
    /// (never PostgreSQL's).
    Containers(Box<AppServices>),
    /// A non-Docker install: shell commands (`mastodon.stop_command` and
    /// `start_command`; by default systemctl on the three units).
    Commands { stop: String, start: String },
}

impl AppControl {
    fn describe(&self) -> String {
        match self {
            AppControl::Containers(app) => app.services.join(", "),
            AppControl::Commands { stop, .. } => format!("stopped with `{stop}`"),
        }
    }
}

/// What `tusk migrate` needs, free of any CLI type.
pub struct MigrateOptions {
    /// The backup stage's options (the source database, the backup
    /// directory, which also holds the migration's state). Its
    /// `stop_services` and `prune` are not used: migrate stops the app itself
    /// and never prunes.
    pub backup: BackupOptions,
    /// The keys that open the set (when the sets are encrypted).
    pub identities: Option<std::sync::Arc<crate::set::encryption::Identities>>,
    /// The instance's database server.
    pub source: Box<dyn PgServer>,
    pub target: Box<dyn PgServer>,
    pub target_database: String,
    /// Where Mastodon will connect, for the cut-over report.
    pub target_host: String,
    pub target_port: u16,
    pub app: AppControl,
    /// Replace a target database that holds tables.
    pub force: bool,
    /// Only the preflight.
    pub check_only: bool,
    /// Start over, forgetting a saved migration.
    pub restart: bool,
    /// Start the old app again at the end.
    pub restart_source: bool,
    pub jobs: u32,
    pub cutover: CutoverSource,
}

/// The instance's files the cut-over report reads.
pub struct CutoverSource {
    pub env: Option<crate::mastodon::env_file::EnvFile>,
    pub media_in_bucket: bool,
    pub media_root: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StageOutcome {
    Done,
    /// Completed by an earlier run.
    Skipped,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: Stage,
    pub started_at: DateTime<Utc>,
    pub seconds: f64,
    pub outcome: StageOutcome,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct MigrateReport {
    pub ok: bool,
    pub source: String,
    pub target: String,
    pub check_only: bool,
    /// An earlier run's progress was resumed.
    pub resumed: bool,
    pub preflight: Vec<Check>,
    pub stages: Vec<StageReport>,
    pub set_id: Option<String>,
    pub verification: Option<ContentCheck>,
    pub cutover: Option<CutoverReport>,
    /// `stopped`, `running` (restarted), or `untouched` (preflight only).
    pub source_app: String,
    /// Where the progress is kept.
    pub state_file: PathBuf,
    /// Why the run stopped, when it failed.
    pub error: Option<String>,
}

/// Runs the migration (or only its preflight). A failed stage ends the run
/// with an error carrying its exit status; the report so far is returned
/// beside it, for printing.
pub async fn run(opts: &MigrateOptions, output: &Output) -> (MigrateReport, Result<()>) {
    let backup_dir = opts.backup.backup_dir();
    let target_key = opts
        .target
        .target()
        .with_database(&opts.target_database)
        .redacted();
    let mut report = MigrateReport {
        ok: false,
        source: String::new(),
        target: target_key.clone(),
        check_only: opts.check_only,
        resumed: false,
        preflight: Vec::new(),
        stages: Vec::new(),
        set_id: None,
        verification: None,
        cutover: None,
        source_app: "untouched".into(),
        state_file: state::path(&backup_dir),
        error: None,
    };
    let outcome = migrate(opts, output, &target_key, &mut report).await;
    report.ok = outcome.is_ok();
    if let Err(err) = &outcome {
        report.error = Some(format!("{err:#}"));
    }
    (report, outcome)
}

async fn migrate(
    opts: &MigrateOptions,
    output: &Output,
    target_key: &str,
    report: &mut MigrateReport,
) -> Result<()> {
    let backup_dir = &opts.backup.backup_dir();
    let saved = state::load(backup_dir)?;
    let mut state = MigrationState::resume_or_new(saved, target_key, opts.restart);
    report.resumed = state.is_resumed();
    if report.resumed {
        tracing::info!(
            "resuming the migration to {target_key} begun {}: next stage {}",
            state.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            state.resume_at().map_or("none", Stage::name)
        );
    }

    let source = &opts.source;
    report.source = source
        .target()
        .with_database(&opts.backup.database)
        .redacted();

    // Preflight: always, also on resume (the servers may have changed).
    let started = StageClock::start(Stage::Preflight);
    let inputs = PreflightInputs {
        source_database: &opts.backup.database,
        target_database: &opts.target_database,
        force: opts.force,
        restore_started: state.restore_started,
    };
    let (checks, source_facts) = preflight::run(source.as_ref(), opts.target.as_ref(), &inputs)
        .await
        .context("the preflight could not run")?;
    for check in &checks {
        let line = format!("  {:<28} {:?}: {}", check.name, check.status, check.detail);
        match check.status {
            Status::Fail => tracing::error!("{line}"),
            Status::Warn | Status::Unknown => tracing::warn!("{line}"),
            Status::Pass => tracing::info!("{line}"),
        }
    }
    let refused: Vec<String> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    report.preflight = checks;
    if !refused.is_empty() {
        report
            .stages
            .push(started.end(StageOutcome::Failed, "refused"));
        return Err(TuskError::usage(format!(
            "the preflight refused the migration; nothing was changed:\n  {}",
            refused.join("\n  ")
        )));
    }
    report
        .stages
        .push(started.end(StageOutcome::Done, "every check passed"));
    if opts.check_only {
        return Ok(());
    }
    state.mark_done(Stage::Preflight);
    state::save(backup_dir, &state)?;

    // Stop writes. Done again on resume: it is idempotent, and it notices
    // an app someone started meanwhile.
    let started = StageClock::start(Stage::StopWrites);
    let stopped = stop_writes(opts, &mut state).await;
    let detail = match stopped {
        Ok(detail) => detail,
        Err(err) => {
            report
                .stages
                .push(started.end(StageOutcome::Failed, &format!("{err:#}")));
            return Err(err.context("could not stop the app; nothing was changed"));
        }
    };
    report.source_app = "stopped".into();
    state.mark_done(Stage::StopWrites);
    state::save(backup_dir, &state)?;
    report.stages.push(started.end(StageOutcome::Done, &detail));

    // Backup: a normal set, listed by `backups list`, the rollback point.
    let set = match reusable_set(backup_dir, &state) {
        Some(set) => {
            report.stages.push(StageClock::skipped(
                Stage::Backup,
                &format!("reusing set {}", set.manifest.id),
            ));
            set
        }
        None => {
            let started = StageClock::start(Stage::Backup);
            let written = backup::run(source.as_ref(), &opts.backup, output).await;
            let written = match written {
                Ok(written) => written,
                Err(err) => {
                    report
                        .stages
                        .push(started.end(StageOutcome::Failed, &format!("{err:#}")));
                    return Err(err.context(
                        "the backup failed; the target was not touched. Re-run tusk migrate to \
                         resume (the app stays stopped meanwhile)",
                    ));
                }
            };
            state.set_id = Some(written.id.clone());
            state.mark_done(Stage::Backup);
            state::save(backup_dir, &state)?;
            report.stages.push(started.end(
                StageOutcome::Done,
                &format!(
                    "set {} ({} tables, {} rows)",
                    written.id, written.tables, written.rows
                ),
            ));
            BackupSet::open(std::path::Path::new(&written.path))?
        }
    };
    let set = match &opts.identities {
        Some(identities) => set.unlock(identities.clone()),
        None => set,
    };
    report.set_id = Some(set.manifest.id.clone());

    // Restore into the target with its roles.
    // Tables digested while the restore ran; a resumed run reads them all.
    let mut early_content = crate::set::content::EarlyDigests::new();
    if state.is_done(Stage::Restore) {
        report.stages.push(StageClock::skipped(
            Stage::Restore,
            "restored by an earlier run",
        ));
    } else {
        let started = StageClock::start(Stage::Restore);
        // A target holding tables after an earlier run's restore began holds
        // this migration's own data (the preflight found it empty then).
        let force = opts.force || state.restore_started;
        state.restore_started = true;
        state::save(backup_dir, &state)?;
        let restore_opts = RestoreOptions {
            database: opts.target_database.clone(),
            force,
            jobs: opts.jobs,
            no_owner: false,
            no_acl: false,
            role: None,
            globals: true,
            early_content: set.manifest.content.clone(),
        };
        let restore_output = Output {
            // The preflight (or this migration's own earlier run) decided.
            assume_yes: true,
            ..output.clone()
        };
        let restored = match set.require_intact().await {
            Ok(()) => {
                restore::run(opts.target.as_ref(), &set, &restore_opts, &restore_output).await
            }
            Err(err) => Err(err),
        };
        match restored {
            Ok(restored) => {
                early_content = restored.early_content;
                state.mark_done(Stage::Restore);
                state::save(backup_dir, &state)?;
                report.stages.push(started.end(
                    StageOutcome::Done,
                    &format!("{} in {:.1}s", restored.target, restored.seconds),
                ));
            }
            Err(err) => {
                report
                    .stages
                    .push(started.end(StageOutcome::Failed, &format!("{err:#}")));
                return Err(err.context(format!(
                    "the restore into {target_key} failed; the source was not changed. \
                     Re-run tusk migrate to resume with set {}",
                    set.manifest.id
                )));
            }
        }
    }

    // Content verification against the set's manifest.
    if state.is_done(Stage::Verify) {
        report.stages.push(StageClock::skipped(
            Stage::Verify,
            "verified by an earlier run",
        ));
    } else {
        let started = StageClock::start(Stage::Verify);
        let checked = verify::compare_restored(
            &set,
            opts.target.as_ref(),
            &opts.target_database,
            &early_content,
        )
        .await;
        let checked = match checked {
            Ok(checked) => checked,
            Err(err) => {
                report
                    .stages
                    .push(started.end(StageOutcome::Failed, &format!("{err:#}")));
                return Err(err.context("could not verify the target; re-run tusk migrate"));
            }
        };
        let problems = checked.problems.len();
        let tables = checked.tables_compared;
        report.verification = Some(checked);
        if problems > 0 {
            report.stages.push(started.end(
                StageOutcome::Failed,
                &format!("{problems} difference(s) from set {}", set.manifest.id),
            ));
            return Err(TuskError::VerificationFailed(format!(
                "{target_key} differs from backup set {} in {problems} place(s) (see the report); \
                 do not switch over. Re-run tusk migrate to verify again, or \
                 `tusk migrate --restart --force` to restore again",
                set.manifest.id
            ))
            .into());
        }
        state.mark_done(Stage::Verify);
        state::save(backup_dir, &state)?;
        report.stages.push(started.end(
            StageOutcome::Done,
            &format!(
                "{tables} tables' rows and content, the sequences, the migrations and the \
                 database's properties match"
            ),
        ));
    }

    // The old app stays stopped unless asked.
    if opts.restart_source {
        start_source(opts, &state).await?;
        report.source_app = "running".into();
    }

    let started = StageClock::start(Stage::Cutover);
    let cutover = cutover::report(&CutoverInputs {
        env: opts.cutover.env.clone(),
        media_in_bucket: opts.cutover.media_in_bucket,
        media_root: opts.cutover.media_root.clone(),
        schema_version: source_facts.schema_version.clone().or_else(|| {
            set.manifest
                .database
                .schema_migrations
                .as_ref()
                .and_then(|m| m.max.clone())
        }),
        new_host: opts.target_host.clone(),
        new_port: opts.target_port,
        new_database: opts.target_database.clone(),
        source_restarted: opts.restart_source,
        source_app: opts.app.describe(),
        redis_in_set: set
            .manifest
            .artefacts
            .iter()
            .any(|a| a.kind == crate::set::manifest::ArtefactKind::Redis)
            .then(|| set.manifest.id.clone()),
    });
    report.cutover = Some(cutover);
    state.mark_done(Stage::Cutover);
    state::save(backup_dir, &state)?;
    report
        .stages
        .push(started.end(StageOutcome::Done, "what is left for the admin"));
    Ok(())
}

/// The set of an earlier run, if it still exists.
fn reusable_set(backup_dir: &std::path::Path, state: &MigrationState) -> Option<BackupSet> {
    let id = state.set_id.as_ref()?;
    if !state.is_done(Stage::Backup) {
        return None;
    }
    match BackupSet::open(&backup_dir.join(id)) {
        Ok(set) => Some(set),
        Err(err) => {
            tracing::warn!("the migration's set {id} is gone ({err:#}); backing up again");
            None
        }
    }
}

/// Stops the app; returns what was done. A container this migration
/// stopped before and finds running again means the app wrote since the
/// set was made: the copy is redone.
async fn stop_writes(opts: &MigrateOptions, state: &mut MigrationState) -> Result<String> {
    match &opts.app {
        AppControl::Containers(app) => {
            let running = services::find(&app.docker, &app.database, &app.services).await?;
            let restarted: Vec<String> = running
                .iter()
                .filter(|c| state.stopped_containers.contains(&c.name))
                .map(|c| c.name.clone())
                .collect();
            if !restarted.is_empty() && state.set_id.is_some() {
                tracing::warn!(
                    "{} ran again since set {} was made: backing up again",
                    restarted.join(", "),
                    state.set_id.as_deref().unwrap_or_default()
                );
                state.forget_the_copy();
            }
            let names = services::stop(&app.docker, running).await?.keep_stopped();
            for name in &names {
                if !state.stopped_containers.contains(name) {
                    state.stopped_containers.push(name.clone());
                }
            }
            Ok(if names.is_empty() {
                format!(
                    "no app container running ({} already stopped)",
                    if state.stopped_containers.is_empty() {
                        "none found".to_string()
                    } else {
                        state.stopped_containers.join(", ")
                    }
                )
            } else {
                format!("stopped {}; they stay stopped", names.join(", "))
            })
        }
        AppControl::Commands { stop, .. } => {
            run_shell(stop).await?;
            Ok(format!("ran `{stop}`"))
        }
    }
}

async fn start_source(opts: &MigrateOptions, state: &MigrationState) -> Result<()> {
    match &opts.app {
        AppControl::Containers(app) => {
            services::start_named(&app.docker, &state.stopped_containers).await?;
            tracing::info!(
                "started the old app again (--restart-source): {}",
                state.stopped_containers.join(", ")
            );
        }
        AppControl::Commands { start, .. } => {
            run_shell(start).await?;
            tracing::info!("started the old app again (--restart-source): ran `{start}`");
        }
    }
    Ok(())
}

/// Runs an admin's command line with `sh -c`; a non-zero exit is an error.
async fn run_shell(command: &str) -> Result<()> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .status()
        .await
        .with_context(|| format!("could not run `{command}`"))?;
    if !status.success() {
        anyhow::bail!("`{command}` failed ({status})");
    }
    Ok(())
}

/// A stage's start time, logged as it starts and ends.
struct StageClock {
    stage: Stage,
    started_at: DateTime<Utc>,
    started: Instant,
}

impl StageClock {
    fn start(stage: Stage) -> Self {
        tracing::info!("stage {}: started", stage.name());
        StageClock {
            stage,
            started_at: Utc::now(),
            started: Instant::now(),
        }
    }

    fn end(self, outcome: StageOutcome, detail: &str) -> StageReport {
        let seconds = self.started.elapsed().as_secs_f64();
        match outcome {
            StageOutcome::Failed => tracing::error!(
                "stage {}: failed after {seconds:.1}s: {detail}",
                self.stage.name()
            ),
            _ => tracing::info!(
                "stage {}: done in {seconds:.1}s: {detail}",
                self.stage.name()
            ),
        }
        StageReport {
            stage: self.stage,
            started_at: self.started_at,
            seconds,
            outcome,
            detail: detail.to_string(),
        }
    }

    fn skipped(stage: Stage, detail: &str) -> StageReport {
        tracing::info!("stage {}: skipped: {detail}", stage.name());
        StageReport {
            stage,
            started_at: Utc::now(),
            seconds: 0.0,
            outcome: StageOutcome::Skipped,
            detail: detail.to_string(),
        }
    }
}
