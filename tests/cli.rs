//! The command line itself: help, completions kept in the repository, man pages.

mod common;

use common::*;

#[test]
fn checked_in_completions_match_the_binary() {
    let ws = Workspace::new();
    for (shell, file) in [
        ("bash", "tusk.bash"),
        ("zsh", "_tusk"),
        ("fish", "tusk.fish"),
    ] {
        let mut cmd = tusk(ws.path());
        cmd.args(["completions", shell]);
        let generated = run(cmd).expect_code(0).stdout;
        let checked_in =
            std::fs::read_to_string(repo_root().join("completions").join(file)).unwrap();
        assert!(
            generated == checked_in,
            "completions/{file} is stale: regenerate with `tusk completions {shell} > completions/{file}`"
        );
    }
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

#[test]
fn man_pages_are_written() {
    let ws = Workspace::new();
    let mut cmd = tusk(ws.path());
    cmd.arg("man").arg(ws.path().join("man"));
    run(cmd).expect_code(0);
    let page = std::fs::read_to_string(ws.path().join("man/tusk-backup.1")).unwrap();
    assert!(page.contains("roles and the database"), "{page}");
}
