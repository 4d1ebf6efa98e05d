//! The layer rule of docs/architecture.md, checked on the source: modules
//! import only downward, and the library never names clap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level library module and its layer; a module may use its own
/// layer and the ones below (a lower number).
const LAYERS: &[(&str, u8)] = &[
    ("cleanup", 0),
    ("creator", 0),
    ("error", 0),
    ("names", 0),
    ("output", 0),
    ("signals", 0),
    ("process", 0),
    ("docker", 1),
    ("http", 1),
    ("postgres", 1),
    ("redis", 1),
    ("storage", 1),
    ("archive", 2),
    ("mastodon", 2),
    ("set", 2),
    ("backup", 3),
    ("janitor", 3),
    ("blocks", 3),
    ("media", 3),
    ("metrics", 3),
    ("notify", 3),
    ("prune", 3),
    ("prune_sets", 3),
    ("copy_sets", 3),
    ("restore", 3),
    ("status", 3),
    ("tune", 3),
    ("verify", 3),
    ("migrate", 3),
    ("rehearse", 3),
    ("config", 4),
    ("init", 4),
    ("instance", 4),
];

/// The binary's own files: the only place clap may appear.
const BINARY: &[&str] = &["main", "cli", "commands"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`postgres` for src/postgres/docker.rs).
fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix(src()).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

/// `crate::x` paths in code (comments left out).
fn crate_references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn library_modules_import_only_downward() {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut violations = Vec::new();
    for file in files {
        let module = module_of(&file);
        if module == "lib" || BINARY.contains(&module.as_str()) {
            continue;
        }
        let Some(&own) = layers.get(module.as_str()) else {
            panic!(
                "{} is in no layer: add its module to LAYERS (and docs/architecture.md)",
                file.display()
            );
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for target in crate_references(&text) {
            let Some(&theirs) = layers.get(target.as_str()) else {
                continue;
            };
            if theirs > own {
                violations.push(format!(
                    "{} ({module}, layer {own}) uses crate::{target} (layer {theirs})",
                    file.strip_prefix(src()).unwrap().display()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "upward imports:\n{}",
        violations.join("\n")
    );
}

#[test]
fn only_the_binary_names_clap() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let offenders: Vec<String> = files
        .iter()
        .filter(|file| !BINARY.contains(&module_of(file).as_str()))
        .filter(|file| {
            std::fs::read_to_string(file)
                .unwrap()
                .lines()
                .any(|line| !line.trim_start().starts_with("//") && line.contains("clap"))
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "clap outside the binary: {offenders:?}"
    );
}

#[test]
fn the_checker_sees_an_upward_import() {
    // Guards the scanner itself: a real use line is found, a comment is not.
    let refs = crate_references("use crate::restore::random_hex;\n// crate::backup\n");
    assert_eq!(refs, vec!["restore".to_string()]);
}
