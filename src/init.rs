//! `tusk init`: from nothing to a working tusk.yaml. Finds Mastodon's
//! `.env.production` and its database container, proposes a backup
//! directory, proves the result by loading it with tusk's own settings and
//! connecting to the database (and the bucket, when there is one), and only
//! then puts the file in place, readable by its owner alone.
//!
//! Every question goes through a [`Prompter`]: on a terminal a person
//! answers, with `--non-interactive` the flags and the proposals do, so
//! both paths run this one flow.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt as _;
use serde::Serialize;

use crate::config::{DEFAULT_BACKUP_DIR, DEFAULT_COMPOSE_SERVICE, Overrides, PgMode, Settings};
use crate::docker::Container;
use crate::error::TuskError;
use crate::instance::Instance;
use crate::mastodon::env_file::EnvFile;
use crate::output::Prompter;
use crate::storage::Storage as _;

/// Where Mastodon's installation guide puts the live tree.
pub const STANDARD_LIVE_DIR: &str = "/home/mastodon/live";

/// What the command line already answers; `None` leaves the question open.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// The file to write.
    pub output: PathBuf,
    /// Replace `output` when it exists.
    pub force: bool,
    pub env_file: Option<PathBuf>,
    pub postgres_mode: Option<PgMode>,
    /// The database container by name (Docker mode).
    pub container: Option<String>,
    pub backup_dir: Option<PathBuf>,
    /// The Docker Engine, when not `DOCKER_HOST` or the local socket.
    pub docker_host: Option<String>,
}

/// What was written and what was checked.
#[derive(Debug, Serialize)]
pub struct InitReport {
    pub path: PathBuf,
    pub env_file: PathBuf,
    pub postgres_mode: &'static str,
    /// The database container, as the file names it (Docker mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub backup_dir: PathBuf,
    /// The database reached, without its password.
    pub database: String,
    pub server_version: String,
    /// Whether Mastodon's `accounts` table was there.
    pub mastodon_tables: bool,
    /// The bucket listed, when media are in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Whether the file was written although a check failed.
    pub checks_failed: bool,
}

/// How the file names the database container.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ContainerChoice {
    /// A compose project's `db` service: survives re-creating the container.
    Compose {
        project: String,
    },
    Name(String),
}

impl ContainerChoice {
    fn describe(&self) -> String {
        match self {
            ContainerChoice::Compose { project } => {
                format!("compose service {DEFAULT_COMPOSE_SERVICE} of project {project}")
            }
            ContainerChoice::Name(name) => format!("container {name}"),
        }
    }
}

/// The answers, ready to be written.
#[derive(Debug)]
struct Answers {
    env_file: PathBuf,
    mode: PgMode,
    container: Option<ContainerChoice>,
    backup_dir: PathBuf,
    docker_host: Option<String>,
}

pub async fn run(opts: &InitOptions, prompter: &mut dyn Prompter) -> Result<InitReport> {
    refuse_to_overwrite(opts)?;
    let databases = database_containers(opts.docker_host.as_deref(), prompter).await;

    let env_file = ask_env_file(opts, &databases, prompter)?;
    let env_dir = env_file.path.parent().map(Path::to_path_buf);
    let mode = ask_mode(opts, &databases, &env_file, env_dir.as_deref(), prompter)?;
    let container = match mode {
        PgMode::Docker => Some(ask_container(
            opts,
            &databases,
            env_dir.as_deref(),
            prompter,
        )?),
        PgMode::Direct => None,
    };
    let backup_dir = ask_backup_dir(opts, prompter)?;
    let answers = Answers {
        env_file: env_file.path.clone(),
        mode,
        container,
        backup_dir,
        docker_host: opts.docker_host.clone(),
    };

    // The file is written beside its destination first, loaded with the
    // settings every other command uses and checked; a refusal removes it.
    let staged = staging_path(&opts.output)?;
    write_private(&staged, &render(&answers))?;
    let checked = check(&staged, prompter).await;
    let (checked, checks_failed) = match checked {
        Ok(checked) => (checked, false),
        Err(err) => {
            prompter.note(&format!("check failed: {err:#}"));
            let keep =
                prompter.confirm(&format!("Write {} anyway?", opts.output.display()), false)?;
            if !keep {
                let _ = std::fs::remove_file(&staged);
                return Err(err.context(format!("{} not written", opts.output.display())));
            }
            (Checked::default(), true)
        }
    };
    if prompter.is_interactive()
        && !prompter.confirm(&format!("Write {}?", opts.output.display()), true)?
    {
        let _ = std::fs::remove_file(&staged);
        return Err(TuskError::usage(format!(
            "{} not written: not confirmed",
            opts.output.display()
        )));
    }
    refuse_to_overwrite(opts).inspect_err(|_| {
        let _ = std::fs::remove_file(&staged);
    })?;
    std::fs::rename(&staged, &opts.output)
        .with_context(|| format!("could not move the file to {}", opts.output.display()))?;

    Ok(InitReport {
        path: opts.output.clone(),
        env_file: answers.env_file,
        postgres_mode: answers.mode.name(),
        container: answers.container.as_ref().map(ContainerChoice::describe),
        backup_dir: answers.backup_dir,
        database: checked.database,
        server_version: checked.server_version,
        mastodon_tables: checked.mastodon_tables,
        bucket: checked.bucket,
        checks_failed,
    })
}

fn refuse_to_overwrite(opts: &InitOptions) -> Result<()> {
    if !opts.force && opts.output.exists() {
        return Err(TuskError::usage(format!(
            "{} already exists; pass --force to replace it, or --output FILE to write elsewhere",
            opts.output.display()
        )));
    }
    Ok(())
}

/// The running `db` containers of compose projects; none when the Engine is
/// not there (a host without Docker is normal).
async fn database_containers(host: Option<&str>, prompter: &mut dyn Prompter) -> Vec<Container> {
    let found = async {
        let docker = crate::docker::connect(host)?;
        crate::docker::running_of_service(&docker, DEFAULT_COMPOSE_SERVICE).await
    }
    .await;
    match found {
        Ok(containers) => {
            for container in &containers {
                prompter.note(&format!(
                    "found database container {} (compose project {}, in {})",
                    container.name,
                    container.project.as_deref().unwrap_or("?"),
                    container.working_dir.as_deref().unwrap_or("?")
                ));
            }
            containers
        }
        Err(err) => {
            tracing::debug!("no Docker Engine to ask: {err:#}");
            prompter.note("no Docker Engine reachable: looking for a direct setup");
            Vec::new()
        }
    }
}

/// `.env.production` in the working directory, in the standard live tree,
/// or in the directory of a running compose project, in that order.
fn env_file_candidates(databases: &[Container]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd);
    }
    dirs.push(PathBuf::from(STANDARD_LIVE_DIR));
    dirs.extend(
        databases
            .iter()
            .filter_map(|c| c.working_dir.as_ref().map(PathBuf::from)),
    );
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let path = dir.join(".env.production");
        if path.is_file() && !found.contains(&path) {
            found.push(path);
        }
    }
    found
}

fn ask_env_file(
    opts: &InitOptions,
    databases: &[Container],
    prompter: &mut dyn Prompter,
) -> Result<EnvFile> {
    if let Some(path) = &opts.env_file {
        return load_env_file(path);
    }
    let candidates = env_file_candidates(databases);
    if candidates.len() > 1 {
        let others: Vec<String> = candidates[1..]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        prompter.note(&format!("also found: {}", others.join(", ")));
    }
    let proposal = candidates.first().map(|p| p.display().to_string());
    loop {
        let answer = prompter.text(
            "Mastodon's .env.production",
            proposal.as_deref(),
            "--env-file",
        )?;
        match load_env_file(Path::new(&answer)) {
            Ok(env) => return Ok(env),
            Err(err) if prompter.is_interactive() => prompter.note(&format!("{err:#}")),
            Err(err) => return Err(err),
        }
    }
}

fn load_env_file(path: &Path) -> Result<EnvFile> {
    let absolute = std::path::absolute(path)
        .with_context(|| format!("could not resolve {}", path.display()))?;
    if !absolute.is_file() {
        return Err(TuskError::usage(format!(
            "{} is not a file: give the path of Mastodon's .env.production (--env-file)",
            absolute.display()
        )));
    }
    EnvFile::load(&absolute)
        .map_err(|err| TuskError::usage(format!("{err:#}; give Mastodon's .env.production")))
}

fn ask_mode(
    opts: &InitOptions,
    databases: &[Container],
    env_file: &EnvFile,
    env_dir: Option<&Path>,
    prompter: &mut dyn Prompter,
) -> Result<PgMode> {
    if let Some(mode) = opts.postgres_mode {
        return Ok(mode);
    }
    // Docker when the database container belongs to this .env.production's
    // compose project, or Mastodon reaches its database as the `db` service.
    let same_project = databases
        .iter()
        .any(|c| c.working_dir.as_deref().map(Path::new) == env_dir);
    let db_host_is_service = env_file.get("DB_HOST") == Some(DEFAULT_COMPOSE_SERVICE);
    let proposal = if same_project || (db_host_is_service && !databases.is_empty()) {
        1
    } else {
        0
    };
    let choices = PgMode::CHOICES.map(|(name, what)| format!("{name}: {what}"));
    let picked = prompter.select("Where do pg_dump and psql run?", &choices, proposal)?;
    Ok(if picked == 1 {
        PgMode::Docker
    } else {
        PgMode::Direct
    })
}

fn ask_container(
    opts: &InitOptions,
    databases: &[Container],
    env_dir: Option<&Path>,
    prompter: &mut dyn Prompter,
) -> Result<ContainerChoice> {
    if let Some(name) = &opts.container {
        return Ok(ContainerChoice::Name(name.clone()));
    }
    if databases.is_empty() {
        let name = prompter.text("Name of the database container", None, "--container")?;
        return Ok(ContainerChoice::Name(name));
    }
    let proposal = databases
        .iter()
        .position(|c| c.working_dir.as_deref().map(Path::new) == env_dir)
        .unwrap_or(0);
    let choices: Vec<String> = databases
        .iter()
        .map(|c| match &c.project {
            Some(project) => format!("{} (compose project {project})", c.name),
            None => c.name.clone(),
        })
        .collect();
    let picked = prompter.select("The database container", &choices, proposal)?;
    let container = &databases[picked];
    Ok(match &container.project {
        Some(project) => ContainerChoice::Compose {
            project: project.clone(),
        },
        None => ContainerChoice::Name(container.name.clone()),
    })
}

fn ask_backup_dir(opts: &InitOptions, prompter: &mut dyn Prompter) -> Result<PathBuf> {
    let answer = match &opts.backup_dir {
        Some(dir) => dir.clone(),
        None => PathBuf::from(prompter.text(
            "Backup directory",
            Some(DEFAULT_BACKUP_DIR),
            "--backup-dir",
        )?),
    };
    let dir = std::path::absolute(&answer)
        .with_context(|| format!("could not resolve {}", answer.display()))?;
    if !dir.is_dir() {
        prompter.note(&format!(
            "{} does not exist yet: tusk backup creates it",
            dir.display()
        ));
    }
    Ok(dir)
}

/// A YAML scalar for `value`, quoted where YAML needs it.
fn scalar(value: &str) -> String {
    serde_yaml_ng::to_string(value)
        .map(|text| text.trim_end().to_string())
        .unwrap_or_else(|_| format!("{value:?}"))
}

fn path_scalar(path: &Path) -> String {
    scalar(&path.display().to_string())
}

/// The file, with a comment on each key.
fn render(answers: &Answers) -> String {
    let mut text = String::from(
        "# tusk's settings, written by `tusk init`. Every key is in docs/configuration.md.\n\
         # Flags and TUSK_* variables win over this file; it wins over .env.production.\n\
         # Mode 0600: keep it that way if you add credentials (database_url, s3 keys).\n\n",
    );
    text.push_str("# Where backup sets are written (one directory per set).\n");
    text.push_str(&format!(
        "backup_dir: {}\n\n",
        path_scalar(&answers.backup_dir)
    ));
    text.push_str(
        "mastodon:\n\
         \x20 # Mastodon's own settings: the database login (DB_* or DATABASE_URL), the bucket\n\
         \x20 # (S3_*), LOCAL_DOMAIN for the instance name; media_root defaults to public/system\n\
         \x20 # beside it.\n",
    );
    text.push_str(&format!(
        "  env_file: {}\n\n",
        path_scalar(&answers.env_file)
    ));
    text.push_str(
        "postgres:\n\
         \x20 # direct: pg_dump and psql run on this machine against DB_HOST;\n\
         \x20 # docker: they run inside the database container, through the Docker Engine.\n",
    );
    text.push_str(&format!("  mode: {}\n", answers.mode.name()));
    let docker_keys = answers.container.is_some() || answers.docker_host.is_some();
    if docker_keys {
        text.push_str("\ndocker:\n");
    }
    if let Some(host) = &answers.docker_host {
        text.push_str("  # The Docker Engine (unix:///... or tcp://...).\n");
        text.push_str(&format!("  host: {}\n", scalar(host)));
    }
    match &answers.container {
        Some(ContainerChoice::Compose { project }) => {
            text.push_str(
                "  # The database container, found by its compose labels, so a re-created\n\
                 \x20 # container is found again.\n",
            );
            text.push_str(&format!(
                "  compose_service: {}\n  compose_project: {}\n",
                scalar(DEFAULT_COMPOSE_SERVICE),
                scalar(project)
            ));
        }
        Some(ContainerChoice::Name(name)) => {
            text.push_str("  # The database container, by name.\n");
            text.push_str(&format!("  container: {}\n", scalar(name)));
        }
        None => {}
    }
    text
}

/// `.tusk.yaml.init-<pid>` beside `output`.
fn staging_path(output: &Path) -> Result<PathBuf> {
    let name = output
        .file_name()
        .with_context(|| format!("{} names no file", output.display()))?;
    Ok(output.with_file_name(format!(
        ".{}.init-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Creates `path` readable and writable by its owner only, from the start.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("could not create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("could not write {}", path.display()))
}

#[derive(Debug, Default)]
struct Checked {
    database: String,
    server_version: String,
    mastodon_tables: bool,
    bucket: Option<String>,
}

/// Loads the staged file as every command would and reaches what it names.
async fn check(staged: &Path, prompter: &mut dyn Prompter) -> Result<Checked> {
    let settings = Settings::resolve(&Overrides {
        config: Some(staged.to_path_buf()),
        ..Overrides::default()
    })
    .context("the written settings do not load")?;
    let database = settings.database()?.redacted();
    let instance = Instance::new(settings);
    let server = instance.database_server().await?;
    let name = instance.database_name()?;
    let client = server
        .connect(&name)
        .await
        .with_context(|| format!("could not connect to {database}"))?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), to_regclass('accounts') IS NOT NULL",
            &[],
        )
        .await
        .with_context(|| format!("could not query {database}"))?;
    let mut checked = Checked {
        database,
        server_version: row.get(0),
        mastodon_tables: row.get(1),
        bucket: None,
    };
    prompter.note(&format!(
        "connected to {} (PostgreSQL {}){}",
        checked.database,
        checked.server_version,
        if checked.mastodon_tables {
            ""
        } else {
            "; it has no accounts table: is this Mastodon's database?"
        }
    ));
    if let Ok(s3) = instance.settings.s3() {
        let bucket = s3.bucket.clone();
        let store = instance.media_bucket()?;
        let prefix = crate::media::list_prefix(instance.settings.s3_key_prefix.as_deref());
        let mut pages = store.list(prefix, None);
        pages
            .try_next()
            .await
            .with_context(|| format!("could not list bucket {bucket}"))?;
        prompter.note(&format!("bucket {bucket} answers"));
        checked.bucket = Some(bucket);
    }
    Ok(checked)
}

/// Answers without a terminal: the flags were applied before asking, so
/// each question takes its proposal, and one without a proposal is an
/// error naming the flag that answers it.
pub struct Unattended;

impl Prompter for Unattended {
    fn is_interactive(&self) -> bool {
        false
    }

    fn text(&mut self, question: &str, proposal: Option<&str>, flag: &str) -> Result<String> {
        proposal.map(str::to_string).ok_or_else(|| {
            TuskError::usage(format!("{question}: nothing found to propose; pass {flag}"))
        })
    }

    fn select(&mut self, _question: &str, _choices: &[String], proposal: usize) -> Result<usize> {
        Ok(proposal)
    }

    fn confirm(&mut self, _question: &str, proposal: bool) -> Result<bool> {
        Ok(proposal)
    }

    fn note(&mut self, line: &str) {
        tracing::info!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_file_parses_with_the_config_loader() {
        for container in [
            None,
            Some(ContainerChoice::Compose {
                project: "live".into(),
            }),
            Some(ContainerChoice::Name("mastodon-db-1".into())),
        ] {
            let answers = Answers {
                env_file: PathBuf::from("/home/mastodon/live/.env.production"),
                mode: if container.is_some() {
                    PgMode::Docker
                } else {
                    PgMode::Direct
                },
                container: container.clone(),
                backup_dir: PathBuf::from("/srv/backups: tusk #1"),
                docker_host: container.as_ref().map(|_| "unix:///run/docker.sock".into()),
            };
            let text = render(&answers);
            let parsed = crate::config::FileSettings::parse(Path::new("tusk.yaml"), &text)
                .unwrap_or_else(|e| panic!("{e:#}\n{text}"));
            assert_eq!(
                parsed.backup_dir.as_deref(),
                Some(Path::new("/srv/backups: tusk #1"))
            );
            assert_eq!(parsed.postgres.mode, Some(answers.mode));
            assert_eq!(
                parsed.mastodon.env_file.as_deref(),
                Some(answers.env_file.as_path())
            );
            match container {
                Some(ContainerChoice::Compose { project }) => {
                    assert_eq!(parsed.docker.compose_project, Some(project));
                    assert_eq!(parsed.docker.compose_service.as_deref(), Some("db"));
                }
                Some(ContainerChoice::Name(name)) => {
                    assert_eq!(parsed.docker.container, Some(name))
                }
                None => assert!(parsed.docker.container.is_none()),
            }
        }
    }

    #[test]
    fn without_a_terminal_a_question_without_proposal_names_its_flag() {
        let err = Unattended
            .text("Name of the database container", None, "--container")
            .unwrap_err();
        assert!(err.to_string().contains("--container"), "{err}");
        assert_eq!(Unattended.text("q", Some("p"), "--x").unwrap(), "p");
    }
}
