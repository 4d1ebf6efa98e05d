//! The Debian package: `cargo deb` builds it from `[package.metadata.deb]`,
//! and it installs into a plain Debian bookworm container (built like the
//! test images, by scripts/lib/package.sh), works there, and leaves nothing
//! behind when purged.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A container of the package test image, removed on drop.
struct Debian {
    name: String,
}

impl Debian {
    fn start() -> Self {
        let image = std::env::var("TUSK_TEST_PACKAGE_IMAGE").expect(
            "TUSK_TEST_PACKAGE_IMAGE is not set: scripts/test.sh builds the image \
             (scripts/lib/package.sh, tusk_package_image_build)",
        );
        let name = unique_name("tusk-package");
        let out = Command::new("docker")
            .args([
                "run",
                "-d",
                "--label",
                "tusk.test=1",
                "--name",
                &name,
                &image,
            ])
            .args(["sleep", "infinity"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker run {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Debian { name }
    }

    /// Runs a shell command in the container: (exit code, stdout, stderr).
    fn sh(&self, script: &str) -> (i32, String, String) {
        let out = Command::new("docker")
            .args(["exec", &self.name, "sh", "-c", script])
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Like `sh`, and the command must succeed; returns stdout.
    fn ok(&self, script: &str) -> String {
        let (code, stdout, stderr) = self.sh(script);
        assert_eq!(
            code, 0,
            "`{script}` failed in the container\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        stdout
    }

    fn copy_in(&self, from: &Path, to: &str) {
        let status = Command::new("docker")
            .arg("cp")
            .arg(from)
            .arg(format!("{}:{to}", self.name))
            .status()
            .unwrap();
        assert!(status.success(), "docker cp {}", from.display());
    }
}

impl Drop for Debian {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.name])
            .output();
    }
}

/// `cargo deb` on the binary the tests run (the dev profile's: a release
/// build would double the CI's compile time; the package's layout, scripts
/// and metadata are the same for every profile).
fn build_deb(out_dir: &Path) -> PathBuf {
    let cargo_deb = std::env::var("TUSK_TEST_CARGO_DEB").expect(
        "TUSK_TEST_CARGO_DEB is not set: scripts/test.sh installs cargo-deb \
         (scripts/lib/package.sh, tusk_cargo_deb_install)",
    );
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tusk"));
    // CARGO_BIN_EXE_tusk is <target dir>/debug/tusk.
    let target_dir = binary.parent().unwrap().parent().unwrap();
    let out = Command::new(cargo_deb)
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["--no-build", "--profile", "dev", "--fast", "--output"])
        .arg(out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo deb failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let debs: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    assert_eq!(
        debs.len(),
        1,
        "one .deb expected in {}: {debs:?}",
        out_dir.display()
    );
    debs.into_iter().next().unwrap()
}

/// Every file the package owns, as `mode owner path` lines, to compare.
const EXPECTED_FILES: &[(&str, &str)] = &[
    ("/usr/bin/tusk", "755 root"),
    ("/etc/tusk/tusk.yaml", "600 root"),
    ("/usr/share/man/man1/tusk.1.gz", "644 root"),
    ("/usr/share/man/man1/tusk-backup.1.gz", "644 root"),
    ("/usr/share/man/man1/tusk-restore.1.gz", "644 root"),
    ("/usr/share/bash-completion/completions/tusk", "644 root"),
    ("/usr/share/zsh/vendor-completions/_tusk", "644 root"),
    ("/usr/share/fish/vendor_completions.d/tusk.fish", "644 root"),
    ("/usr/share/tusk/completions/tusk.elv", "644 root"),
    ("/usr/share/tusk/completions/tusk.ps1", "644 root"),
    ("/usr/lib/systemd/system/tusk-backup.service", "644 root"),
    ("/usr/lib/systemd/system/tusk-backup.timer", "644 root"),
    ("/usr/lib/systemd/system/tusk-verify.service", "644 root"),
    ("/usr/lib/systemd/system/tusk-verify.timer", "644 root"),
    ("/usr/lib/systemd/system/tusk-prune.service", "644 root"),
    ("/usr/lib/systemd/system/tusk-prune.timer", "644 root"),
];

const UNITS: &str = "/usr/lib/systemd/system/tusk-backup.service \
/usr/lib/systemd/system/tusk-backup.timer /usr/lib/systemd/system/tusk-verify.service \
/usr/lib/systemd/system/tusk-verify.timer /usr/lib/systemd/system/tusk-prune.service \
/usr/lib/systemd/system/tusk-prune.timer";

#[test]
fn the_deb_installs_works_and_purges_cleanly() {
    if !docker_tests_enabled() {
        return;
    }
    let ws = Workspace::new();
    let deb = build_deb(ws.path());
    let debian = Debian::start();
    debian.copy_in(&deb, "/tmp/tusk.deb");
    // What the image holds before, to prove the purge leaves nothing new.
    // /run and /tmp are scratch (systemd-analyze leaves /run/systemd behind).
    let listing =
        "find / -xdev \\( -path /proc -o -path /tmp -o -path /run \\) -prune -o -print | sort";
    let before = debian.ok(listing);

    debian.ok("dpkg -i /tmp/tusk.deb");
    let version = debian.ok("tusk --version");
    assert_eq!(
        version.trim(),
        format!("tusk {}", env!("CARGO_PKG_VERSION"))
    );

    for (path, mode_owner) in EXPECTED_FILES {
        let stat = debian.ok(&format!("stat -c '%a %U' {path}"));
        assert_eq!(stat.trim(), *mode_owner, "{path}");
    }
    let conffiles = debian.ok("cat /var/lib/dpkg/info/tusk.conffiles");
    assert_eq!(conffiles.trim(), "/etc/tusk/tusk.yaml");
    let installed_config = debian.ok("cat /etc/tusk/tusk.yaml");
    let example = std::fs::read_to_string(repo_root().join("examples/tusk.yaml")).unwrap();
    assert_eq!(installed_config, example);
    // The installed man pages are the checked-in ones (gzipped, as Debian
    // wants), and man finds them.
    let page = debian.ok("zcat /usr/share/man/man1/tusk-backup.1.gz");
    let checked_in =
        std::fs::read_to_string(repo_root().join("completions/man/tusk-backup.1")).unwrap();
    assert_eq!(page, checked_in);
    debian.ok("man -w tusk-verify && man -w tusk-prune && man -w tusk");

    // systemd-analyze verify loads the units offline (no running systemd is
    // needed) and checks every directive, the ExecStart binary and the
    // timers' calendar specifications; it exits non-zero on an error, and
    // prints warnings (unknown keys, bad values) that must not name our units.
    let (code, stdout, stderr) = debian.sh(&format!("systemd-analyze verify {UNITS}"));
    assert_eq!(
        code, 0,
        "systemd-analyze verify failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains("tusk-"),
        "systemd-analyze verify complains about the units:\n{stderr}"
    );
    for timer in ["tusk-backup", "tusk-verify", "tusk-prune"] {
        let calendar = debian.ok(&format!(
            "systemd-analyze calendar \"$(sed -n 's/^OnCalendar=//p' /usr/lib/systemd/system/{timer}.timer)\""
        ));
        assert!(calendar.contains("Next elapse:"), "{timer}: {calendar}");
    }

    // bash loads the installed script, which asks the installed binary.
    let words = debian.ok(
        "bash -c '. /usr/share/bash-completion/completions/tusk; COMP_WORDS=(tusk rest); \
         COMP_CWORD=1; _clap_complete_tusk tusk rest tusk; echo \"${COMPREPLY[@]}\"'",
    );
    assert_eq!(words.trim(), "restore", "{words:?}");

    // Remove keeps the edited configuration (a conffile), purge removes it.
    debian.ok("echo '# edited' >> /etc/tusk/tusk.yaml && dpkg -r tusk");
    let (code, ..) = debian.sh("command -v tusk");
    assert_ne!(code, 0, "tusk still on PATH after dpkg -r");
    debian.ok("grep -q '# edited' /etc/tusk/tusk.yaml");
    debian.ok("dpkg -P tusk");
    let status =
        debian.ok("dpkg-query -W -f '${db:Status-Status}' tusk 2>/dev/null || echo not-installed");
    assert!(
        status.trim() == "not-installed" || status.trim().is_empty(),
        "dpkg still knows tusk: {status}"
    );
    let after = debian.ok(listing);
    let before: std::collections::HashSet<&str> = before.lines().collect();
    let left: Vec<&str> = after
        .lines()
        .filter(|line| !before.contains(line))
        .filter(|line| !line.starts_with("/var/lib/dpkg/") && !line.starts_with("/var/log/"))
        .collect();
    assert!(left.is_empty(), "dpkg -P left files behind: {left:?}");
    let dpkg_db = debian.ok("ls /var/lib/dpkg/info | grep '^tusk\\.' || true");
    assert!(dpkg_db.trim().is_empty(), "dpkg -P left {dpkg_db}");
}
