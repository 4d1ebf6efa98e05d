//! The command line itself: help, completions kept in the repository, man pages.

mod common;

use common::*;

/// What the failure messages tell the lead to run after a merge.
const REGENERATE: &str = "scripts/regenerate-completions.sh (then commit completions/)";

#[test]
fn checked_in_completions_match_the_binary() {
    let ws = Workspace::new();
    for (shell, file) in [
        ("bash", "tusk.bash"),
        ("zsh", "_tusk"),
        ("fish", "tusk.fish"),
        ("elvish", "tusk.elv"),
        ("powershell", "tusk.ps1"),
    ] {
        let mut cmd = tusk(ws.path());
        cmd.args(["completions", shell]);
        let generated = run(cmd).expect_code(0).stdout;
        // The same script a shell gets from the completion variable itself.
        let mut cmd = tusk(ws.path());
        cmd.env("TUSK_COMPLETE", shell);
        assert_eq!(run(cmd).expect_code(0).stdout, generated, "{shell}");
        let checked_in = std::fs::read_to_string(repo_root().join("completions").join(file))
            .unwrap_or_else(|err| {
                panic!("completions/{file}: {err}; regenerate with {REGENERATE}")
            });
        assert!(
            generated == checked_in,
            "completions/{file} is stale: regenerate with {REGENERATE}"
        );
    }
}

#[test]
fn checked_in_man_pages_match_the_binary() {
    let ws = Workspace::new();
    let dir = ws.path().join("man");
    let mut cmd = tusk(ws.path());
    cmd.arg("man").arg(&dir);
    run(cmd).expect_code(0);
    let pages = |dir: &std::path::Path| -> std::collections::BTreeMap<String, String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|err| panic!("{}: {err}; regenerate with {REGENERATE}", dir.display()))
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).unwrap())
            })
            .collect()
    };
    let generated = pages(&dir);
    let checked_in = pages(&repo_root().join("completions/man"));
    assert!(
        generated.contains_key("tusk-backup.1"),
        "{:?}",
        generated.keys()
    );
    let generated_names: Vec<&String> = generated.keys().collect();
    let checked_in_names: Vec<&String> = checked_in.keys().collect();
    assert!(
        generated_names == checked_in_names,
        "completions/man/ holds {checked_in_names:?}, the binary writes {generated_names:?}: \
         regenerate with {REGENERATE}"
    );
    for (name, page) in &generated {
        assert!(
            checked_in[name] == *page,
            "completions/man/{name} is stale: regenerate with {REGENERATE}"
        );
    }
    assert!(generated["tusk-backup.1"].contains("roles and the database"));
}

/// Runs the checked-in bash script the way bash runs it on TAB: the
/// completion function with COMP_WORDS/COMP_CWORD set, `tusk` found on PATH
/// (the built binary). Returns COMPREPLY, one word a line.
fn bash_complete(ws: &Workspace, line: &[&str], env: &[(&str, &std::path::Path)]) -> Vec<String> {
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tusk"));
    let path = format!(
        "{}:{}",
        binary.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let words: Vec<String> = line.iter().map(|w| format!("'{w}'")).collect();
    let script = format!(
        "source {script}\n\
         COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_TYPE=9\n\
         _clap_complete_tusk tusk '{current}' '{previous}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script = repo_root().join("completions/tusk.bash").display(),
        words = words.join(" "),
        cword = line.len() - 1,
        current = line[line.len() - 1],
        previous = line[line.len() - 2],
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.current_dir(ws.path())
        .arg("-c")
        .arg(script)
        .env("PATH", path)
        .env_remove("TUSK_BACKUP_DIR")
        .env_remove("TUSK_CONFIG");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = run(cmd).expect_code(0);
    // On an empty word the engine offers the flags too; the values are what
    // these tests look at.
    out.stdout
        .lines()
        .filter(|word| !word.starts_with('-') || line[line.len() - 1].starts_with('-'))
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_flags_and_the_set_ids_of_the_backup_dir() {
    let ws = Workspace::new();
    let db = Cluster::main().empty_database("completion");
    ws.backup(&db);
    let ids = ws.set_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let backups = ws.backup_dir();

    assert_eq!(bash_complete(&ws, &["tusk", "rest"], &[]), ["restore"]);
    let flags = bash_complete(&ws, &["tusk", "restore", "--no-"], &[]);
    assert!(flags.contains(&"--no-owner".to_string()), "{flags:?}");

    // The backup directory from TUSK_BACKUP_DIR ...
    let sets = bash_complete(
        &ws,
        &["tusk", "restore", ""],
        &[("TUSK_BACKUP_DIR", &backups)],
    );
    assert_eq!(sets, ["latest".to_string(), ids[0].clone()]);
    // ... from a --backup-dir flag on the line being completed ...
    let backup_dir = backups.to_string_lossy();
    let sets = bash_complete(
        &ws,
        &["tusk", "--backup-dir", &backup_dir, "verify", "te"],
        &[],
    );
    assert_eq!(sets, [ids[0].clone()]);
    // ... and from the config file.
    let config = ws.path().join("tusk.yaml");
    std::fs::write(&config, format!("backup_dir: {backup_dir}\n")).unwrap();
    let sets = bash_complete(&ws, &["tusk", "verify", "l"], &[("TUSK_CONFIG", &config)]);
    assert_eq!(sets, ["latest"]);
    let sets = bash_complete(&ws, &["tusk", "verify", ""], &[("TUSK_CONFIG", &config)]);
    assert_eq!(sets, ["latest".to_string(), ids[0].clone()]);
    // No sets (a backup dir that does not exist): only `latest`, no error.
    let empty = ws.path().join("none");
    let sets = bash_complete(
        &ws,
        &["tusk", "restore", ""],
        &[("TUSK_BACKUP_DIR", &empty)],
    );
    assert_eq!(sets, ["latest"]);
}

#[test]
fn help_lists_commands_and_exit_codes_and_unknown_flags_exit_2() {
    let ws = Workspace::new();
    let mut cmd = tusk(ws.path());
    cmd.arg("--help");
    let help = run(cmd).expect_code(0).stdout;
    for word in [
        "backup",
        "backups",
        "restore",
        "verify",
        "Exit codes",
        "--json",
        "--yes",
    ] {
        assert!(help.contains(word), "{word} missing from --help");
    }
    let mut cmd = tusk(ws.path());
    cmd.args(["backup", "--no-such-flag"]);
    run(cmd).expect_code(2);
    // Global flags work after the subcommand too.
    let mut cmd = tusk(ws.path());
    cmd.args(["backups", "list", "--json", "--backup-dir"])
        .arg(ws.backup_dir());
    assert_eq!(run(cmd).expect_code(0).json(), serde_json::json!([]));
}
