//! `tusk blocks` against a stand-in for Mastodon's admin API that follows
//! the documented requests and responses (docs/blocks.md): pages linked by
//! `Link` headers, 200 with the block on create, 422 with the existing
//! block on a domain already covered, 403 for a token without the write
//! scope, 429 with `X-RateLimit-Reset`; and a real PostgreSQL database with
//! Mastodon's schema for the impact figures.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use common::{Cluster, Workspace, run};

const RW_TOKEN: &str = "token-with-read-and-write";
const RO_TOKEN: &str = "token-with-read-only";

#[derive(Clone, Debug)]
struct Block {
    id: u64,
    domain: String,
    severity: String,
    reject_media: bool,
    reject_reports: bool,
    public_comment: Option<String>,
    obfuscate: bool,
}

impl Block {
    fn json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "domain": self.domain,
            "digest": "0",
            "created_at": "2024-01-01T00:00:00.000Z",
            "severity": self.severity,
            "reject_media": self.reject_media,
            "reject_reports": self.reject_reports,
            "private_comment": null,
            "public_comment": self.public_comment,
            "obfuscate": self.obfuscate,
        })
    }
}

#[derive(Default)]
struct State {
    blocks: Vec<Block>,
    /// Blocks the listing does not show: made by another moderator after
    /// tusk listed (the API still answers 422 for them).
    hidden: Vec<Block>,
    next_id: u64,
    creates: usize,
    writes: usize,
    /// Answer 500 to creates once this many succeeded.
    fail_after_creates: Option<usize>,
    /// Answer 429 once, to this create attempt (1-based).
    rate_limit_create: Option<usize>,
    create_attempts: usize,
    rate_limited: usize,
}

struct StandIn {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl StandIn {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            next_id: 1,
            ..Default::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, port, &state));
            }
        });
        StandIn { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn add(&self, domain: &str, severity: &str) {
        let mut state = self.state.lock().unwrap();
        let id = state.next_id;
        state.next_id += 1;
        state.blocks.push(Block {
            id,
            domain: domain.into(),
            severity: severity.into(),
            reject_media: false,
            reject_reports: false,
            public_comment: None,
            obfuscate: false,
        });
    }

    fn severity_of(&self, domain: &str) -> Option<String> {
        let state = self.state.lock().unwrap();
        state
            .blocks
            .iter()
            .find(|b| b.domain == domain)
            .map(|b| b.severity.clone())
    }

    fn domains(&self) -> BTreeSet<String> {
        let state = self.state.lock().unwrap();
        state.blocks.iter().map(|b| b.domain.clone()).collect()
    }

    fn writes(&self) -> usize {
        self.state.lock().unwrap().writes
    }
}

fn serve(stream: TcpStream, port: u16, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0;
    let mut auth = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap(),
            "authorization" => auth = value.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (status, headers, payload) = respond(&method, &target, &auth, &body, port, state);
    let mut out = stream;
    let mut text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        payload.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    let _ = out.write_all(text.as_bytes());
    let _ = out.write_all(payload.as_bytes());
}

/// Mastodon's `DomainBlock.rule_for`: the block of the domain or of the
/// nearest parent.
fn rule_for<'a>(
    blocks: impl Iterator<Item = &'a Block> + Clone,
    domain: &str,
) -> Option<&'a Block> {
    let mut candidate = Some(domain);
    while let Some(d) = candidate {
        if let Some(block) = blocks.clone().find(|b| b.domain == d) {
            return Some(block);
        }
        candidate = d.split_once('.').map(|(_, rest)| rest);
    }
    None
}

fn respond(
    method: &str,
    target: &str,
    auth: &str,
    body: &[u8],
    port: u16,
    state: &Mutex<State>,
) -> (String, Vec<(String, String)>, String) {
    let forbidden = || {
        (
            "403 Forbidden".to_string(),
            vec![],
            json!({"error": "This action is outside the authorized scopes"}).to_string(),
        )
    };
    let token = auth.strip_prefix("Bearer ").unwrap_or("");
    if token != RW_TOKEN && token != RO_TOKEN {
        return (
            "401 Unauthorized".into(),
            vec![],
            json!({"error": "The access token is invalid"}).to_string(),
        );
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| {
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| value.to_string())
        })
    };
    let mut state = state.lock().unwrap();
    let base = "/api/v1/admin/domain_blocks";
    match (method, path) {
        ("GET", p) if p == base => {
            let limit = param("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(100)
                .min(200);
            let max_id = param("max_id").and_then(|m| m.parse::<u64>().ok());
            let mut blocks: Vec<&Block> = state
                .blocks
                .iter()
                .filter(|b| max_id.is_none_or(|max| b.id < max))
                .collect();
            blocks.sort_by_key(|b| std::cmp::Reverse(b.id));
            blocks.truncate(limit);
            let mut links = Vec::new();
            if blocks.len() == limit {
                links.push(format!(
                    "<http://127.0.0.1:{port}{base}?limit={limit}&max_id={}>; rel=\"next\"",
                    blocks.last().unwrap().id
                ));
            }
            if let Some(first) = blocks.first() {
                links.push(format!(
                    "<http://127.0.0.1:{port}{base}?limit={limit}&min_id={}>; rel=\"prev\"",
                    first.id
                ));
            }
            let page: Vec<Value> = blocks.iter().map(|b| b.json()).collect();
            let headers = if links.is_empty() {
                vec![]
            } else {
                vec![("Link".to_string(), links.join(", "))]
            };
            ("200 OK".into(), headers, Value::Array(page).to_string())
        }
        ("POST", p) if p == base => {
            if token != RW_TOKEN {
                return forbidden();
            }
            state.create_attempts += 1;
            if state.rate_limit_create == Some(state.create_attempts) {
                state.rate_limited += 1;
                let reset = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
                return (
                    "429 Too Many Requests".into(),
                    vec![
                        ("X-RateLimit-Limit".into(), "300".into()),
                        ("X-RateLimit-Remaining".into(), "0".into()),
                        (
                            "X-RateLimit-Reset".into(),
                            reset.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                        ),
                    ],
                    json!({"error": "Too many requests"}).to_string(),
                );
            }
            if state.fail_after_creates.is_some_and(|n| state.creates >= n) {
                return (
                    "500 Internal Server Error".into(),
                    vec![],
                    json!({"error": "We're sorry, but something went wrong"}).to_string(),
                );
            }
            let params: Value = serde_json::from_slice(body).unwrap();
            let domain = params["domain"].as_str().unwrap().to_string();
            let all = state.blocks.iter().chain(state.hidden.iter());
            if let Some(existing) = rule_for(all, &domain) {
                return (
                    "422 Unprocessable Entity".into(),
                    vec![],
                    json!({
                        "error": format!("You have already imposed stricter limits on {}.", existing.domain),
                        "existing_domain_block": existing.json(),
                    })
                    .to_string(),
                );
            }
            let id = state.next_id;
            state.next_id += 1;
            let block = Block {
                id,
                domain,
                severity: params["severity"].as_str().unwrap_or("silence").into(),
                reject_media: params["reject_media"].as_bool().unwrap_or(false),
                reject_reports: params["reject_reports"].as_bool().unwrap_or(false),
                public_comment: params["public_comment"].as_str().map(String::from),
                obfuscate: params["obfuscate"].as_bool().unwrap_or(false),
            };
            state.blocks.push(block.clone());
            state.creates += 1;
            state.writes += 1;
            ("200 OK".into(), vec![], block.json().to_string())
        }
        ("PUT", p) if p.starts_with(base) => {
            if token != RW_TOKEN {
                return forbidden();
            }
            let id: u64 = p.rsplit('/').next().unwrap().parse().unwrap();
            let params: Value = serde_json::from_slice(body).unwrap();
            state.writes += 1;
            let Some(block) = state.blocks.iter_mut().find(|b| b.id == id) else {
                return (
                    "404 Not Found".into(),
                    vec![],
                    json!({"error": "Record not found"}).to_string(),
                );
            };
            if let Some(severity) = params["severity"].as_str() {
                block.severity = severity.into();
            }
            if let Some(flag) = params["reject_media"].as_bool() {
                block.reject_media = flag;
            }
            if let Some(flag) = params["reject_reports"].as_bool() {
                block.reject_reports = flag;
            }
            ("200 OK".into(), vec![], block.json().to_string())
        }
        _ => (
            "404 Not Found".into(),
            vec![],
            json!({"error": "Record not found"}).to_string(),
        ),
    }
}

/// `tusk` pointed at the stand-in, the database and a state directory in
/// the workspace.
fn tusk_blocks(ws: &Workspace, api: &StandIn, token: &str, database_url: Option<&str>) -> Command {
    let mut cmd = ws.tusk();
    cmd.env("TUSK_MASTODON_URL", api.url())
        .env("TUSK_MASTODON_TOKEN", token)
        .env("XDG_STATE_HOME", ws.path().join("state"));
    if let Some(url) = database_url {
        cmd.env("TUSK_DATABASE_URL", url);
    }
    cmd
}

fn domains_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["domain"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn imports_a_400_domain_blocklist_with_diff_impact_and_round_trips() {
    let db = Cluster::main().mastodon_database("blocks_import", 1);
    let api = StandIn::start();
    // 450 blocks in place: three pages of up to 200.
    for i in 0..400 {
        api.add(&format!("old{i}.example"), "silence");
    }
    for i in 400..450 {
        api.add(&format!("old{i}.example"), "suspend");
    }
    api.state.lock().unwrap().rate_limit_create = Some(5);

    // Accounts the instance knows on two of the new domains (one on a
    // subdomain), and follows between them and local accounts.
    db.sql(
        "INSERT INTO accounts (id, username, domain, created_at, updated_at) VALUES \
         (900001, 'a', 'new0.blocktest', now(), now()), \
         (900002, 'b', 'new0.blocktest', now(), now()), \
         (900003, 'c', 'media.new0.blocktest', now(), now()), \
         (900004, 'd', 'new1.blocktest', now(), now())",
    );
    let locals: Vec<i64> = db
        .sql("SELECT id FROM accounts WHERE domain IS NULL ORDER BY id LIMIT 2")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(locals.len(), 2);
    let (l1, l2) = (locals[0], locals[1]);
    db.sql(&format!(
        "INSERT INTO follows (created_at, updated_at, account_id, target_account_id) VALUES \
         (now(), now(), {l1}, 900001), (now(), now(), {l2}, 900001), \
         (now(), now(), 900002, {l1}), (now(), now(), 900003, {l2})"
    ));

    // The list: 300 new, 50 stricter, 30 unchanged, 20 looser.
    let ws = Workspace::new();
    let mut csv = String::from(
        "#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate\n",
    );
    for i in 0..300 {
        csv.push_str(&format!(
            "new{i}.blocktest,suspend,false,false,spam,false\n"
        ));
    }
    for i in 0..50 {
        csv.push_str(&format!("old{i}.example,suspend,false,false,,false\n"));
    }
    for i in 50..80 {
        csv.push_str(&format!("OLD{i}.example,silence,false,false,,false\n"));
    }
    for i in 400..420 {
        csv.push_str(&format!("old{i}.example,silence,false,false,,false\n"));
    }
    let list = ws.path().join("list.csv");
    std::fs::write(&list, &csv).unwrap();

    let mut dry = tusk_blocks(&ws, &api, RW_TOKEN, Some(&db.url()));
    dry.args(["--json", "blocks", "import", "--dry-run"])
        .arg(&list);
    let report = run(dry).expect_code(0).json();
    let keys: Vec<&String> = report.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "applied",
            "failed",
            "looser",
            "new",
            "stricter",
            "unchanged"
        ]
    );
    assert_eq!(report["new"].as_array().unwrap().len(), 300);
    assert_eq!(report["stricter"].as_array().unwrap().len(), 50);
    assert_eq!(report["unchanged"].as_array().unwrap().len(), 30);
    assert_eq!(report["looser"].as_array().unwrap().len(), 20);
    assert_eq!(report["applied"], json!([]));
    let new0 = &report["new"][0];
    assert_eq!(new0["domain"], "new0.blocktest");
    assert_eq!(new0["severity"], "suspend");
    assert_eq!(
        new0["known_accounts"], 3,
        "two on the domain, one on a subdomain"
    );
    assert_eq!(new0["local_follows"], 4);
    assert_eq!(new0["local_accounts"], 2);
    assert_eq!(report["new"][1]["known_accounts"], 1);
    assert_eq!(report["new"][1]["local_follows"], 0);
    assert_eq!(report["new"][2]["known_accounts"], 0);
    assert_eq!(api.writes(), 0, "a dry run changes nothing on the server");

    let mut apply = tusk_blocks(&ws, &api, RW_TOKEN, Some(&db.url()));
    apply
        .args(["--json", "--yes", "blocks", "import"])
        .arg(&list);
    let report = run(apply).expect_code(0).json();
    let applied = report["applied"].as_array().unwrap();
    assert_eq!(applied.len(), 350);
    assert_eq!(
        applied.iter().filter(|a| a["action"] == "created").count(),
        300
    );
    assert_eq!(
        api.state.lock().unwrap().rate_limited,
        1,
        "waited out one 429"
    );
    assert_eq!(api.domains().len(), 750);
    assert_eq!(api.severity_of("old0.example").as_deref(), Some("suspend"));
    assert_eq!(api.severity_of("old60.example").as_deref(), Some("silence"));
    assert_eq!(
        api.severity_of("old400.example").as_deref(),
        Some("suspend"),
        "never loosened without --allow-loosen"
    );

    // Export in both formats; importing either back changes nothing.
    let exported = ws.path().join("export.csv");
    let mut export = tusk_blocks(&ws, &api, RW_TOKEN, None);
    export.args(["blocks", "export", "--output"]).arg(&exported);
    run(export).expect_code(0);
    let text = std::fs::read_to_string(&exported).unwrap();
    assert!(text.starts_with(
        "#domain,#severity,#reject_media,#reject_reports,#public_comment,#obfuscate\n"
    ));
    assert_eq!(text.lines().count(), 751);
    let mut again = tusk_blocks(&ws, &api, RW_TOKEN, Some(&db.url()));
    again
        .args(["--json", "blocks", "import", "--dry-run"])
        .arg(&exported);
    let report = run(again).expect_code(0).json();
    assert_eq!(report["unchanged"].as_array().unwrap().len(), 750);
    for key in ["new", "stricter", "looser", "failed"] {
        assert_eq!(report[key], json!([]), "{key}");
    }

    let mut plain = tusk_blocks(&ws, &api, RW_TOKEN, None);
    plain.args(["blocks", "export", "--format", "plain"]);
    let out = run(plain).expect_code(0);
    let listed: BTreeSet<String> = out.stdout.lines().map(String::from).collect();
    assert_eq!(listed, api.domains());
    let plain_file = ws.path().join("export.txt");
    std::fs::write(&plain_file, &out.stdout).unwrap();
    let mut again = tusk_blocks(&ws, &api, RW_TOKEN, Some(&db.url()));
    again
        .args([
            "--json",
            "blocks",
            "import",
            "--dry-run",
            "--severity",
            "noop",
        ])
        .arg(&plain_file);
    let report = run(again).expect_code(0).json();
    // Every listed domain is blocked already, and more strictly than noop.
    assert_eq!(report["new"], json!([]));
    assert_eq!(report["failed"], json!([]));
    assert_eq!(report["looser"].as_array().unwrap().len(), 750);
}

fn plain_list(ws: &Workspace, name: &str, domains: &[String]) -> std::path::PathBuf {
    let path = ws.path().join(name);
    std::fs::write(&path, domains.join("\n") + "\n").unwrap();
    path
}

#[test]
fn a_failure_midway_exits_1_leaves_a_report_and_a_rerun_applies_the_rest() {
    let db = Cluster::main().mastodon_database("blocks_resume", 1);
    let api = StandIn::start();
    api.state.lock().unwrap().fail_after_creates = Some(5);
    let ws = Workspace::new();
    let domains: Vec<String> = (0..12).map(|i| format!("spam{i}.blocktest")).collect();
    let list = plain_list(&ws, "list.txt", &domains);

    let mut first = tusk_blocks(&ws, &api, RW_TOKEN, Some(&db.url()));
    first
        .args(["--json", "--yes", "blocks", "import"])
        .arg(&list);
    let out = run(first).expect_code(1);
    let report = out.json();
    assert_eq!(report["applied"].as_array().unwrap().len(), 5);
    assert_eq!(domains_of(&report["failed"]), ["spam5.blocktest"]);
    assert_eq!(api.domains().len(), 5);
    assert!(
        out.stderr.contains("run the same import again"),
        "{}",
        out.stderr
    );
    let state_dir = ws.path().join("state/tusk");
    let reports: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("blocks-import-")
        })
        .collect();
    assert_eq!(
        reports.len(),
        1,
        "one report file in {}",
        state_dir.display()
    );
    let saved: Value = serde_json::from_slice(&std::fs::read(&reports[0]).unwrap()).unwrap();
    assert_eq!(saved["applied"].as_array().unwrap().len(), 5);
    assert!(
        out.stderr.contains(&reports[0].display().to_string()),
        "{}",
        out.stderr
    );

    api.state.lock().unwrap().fail_after_creates = None;
    let mut rerun = tusk_blocks(&ws, &api, RW_TOKEN, Some(&db.url()));
    rerun
        .args(["--json", "--yes", "blocks", "import"])
        .arg(&list);
    let report = run(rerun).expect_code(0).json();
    assert_eq!(
        domains_of(&report["applied"]),
        domains[5..].to_vec(),
        "only the rest"
    );
    assert_eq!(report["unchanged"].as_array().unwrap().len(), 5);
    assert_eq!(api.domains().len(), 12);
}

#[test]
fn the_api_refusals_are_explained() {
    let db = Cluster::main().mastodon_database("blocks_refused", 1);
    let api = StandIn::start();
    let ws = Workspace::new();
    let list = plain_list(
        &ws,
        "list.txt",
        &["one.blocktest".into(), "raced.blocktest".into()],
    );

    // A token without admin:write:domain_blocks: 403, a usage error.
    let mut read_only = tusk_blocks(&ws, &api, RO_TOKEN, Some(&db.url()));
    read_only.args(["--yes", "blocks", "import"]).arg(&list);
    let out = run(read_only).expect_code(2);
    assert!(
        out.stderr.contains("admin:write:domain_blocks"),
        "{}",
        out.stderr
    );
    assert_eq!(api.domains().len(), 0);

    // A bad token: 401, a usage error too.
    let mut bad = tusk_blocks(&ws, &api, "nonsense", None);
    bad.args(["blocks", "export"]);
    let out = run(bad).expect_code(2);
    assert!(out.stderr.contains("401"), "{}", out.stderr);

    // Blocked by someone else after the listing: 422 with the block in
    // place, which is at least as strict, so nothing failed.
    {
        let mut state = api.state.lock().unwrap();
        state.hidden.push(Block {
            id: 99,
            domain: "raced.blocktest".into(),
            severity: "suspend".into(),
            reject_media: false,
            reject_reports: false,
            public_comment: None,
            obfuscate: false,
        });
    }
    let mut apply = tusk_blocks(&ws, &api, RW_TOKEN, Some(&db.url()));
    apply
        .args(["--json", "--yes", "blocks", "import"])
        .arg(&list);
    let report = run(apply).expect_code(0).json();
    assert_eq!(domains_of(&report["applied"]), ["one.blocktest"]);
    assert_eq!(report["failed"], json!([]));
    let unchanged = report["unchanged"].as_array().unwrap();
    assert_eq!(unchanged[0]["domain"], "raced.blocktest");
    assert_eq!(unchanged[0]["covered_by"], "raced.blocktest");

    // Without a terminal, applying needs --yes and --review cannot ask.
    let mut unconfirmed = tusk_blocks(&ws, &api, RW_TOKEN, Some(&db.url()));
    unconfirmed.args(["blocks", "import"]).arg(&list);
    run(unconfirmed).expect_code(2);
    let mut review = tusk_blocks(&ws, &api, RW_TOKEN, Some(&db.url()));
    review.args(["blocks", "import", "--review"]).arg(&list);
    let out = run(review).expect_code(2);
    assert!(out.stderr.contains("--review"), "{}", out.stderr);
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

#[test]
fn review_on_a_terminal_blocks_one_skips_one_and_quits() {
    let db = Cluster::main().mastodon_database("blocks_review", 1);
    let api = StandIn::start();
    let ws = Workspace::new();
    let domains: Vec<String> = ["first", "second", "third", "fourth"]
        .iter()
        .map(|d| format!("{d}.blocktest"))
        .collect();
    let list = plain_list(&ws, "list.txt", &domains);
    let binary = assert_cmd::cargo::cargo_bin("tusk");
    let line = format!(
        "cd {} && TUSK_MASTODON_URL={} TUSK_MASTODON_TOKEN={} TUSK_DATABASE_URL={} \
         XDG_STATE_HOME={} {} blocks import --review {}",
        shell_quote(&ws.path().display().to_string()),
        shell_quote(&api.url()),
        RW_TOKEN,
        shell_quote(&db.url()),
        shell_quote(&ws.path().join("state").display().to_string()),
        shell_quote(&binary.display().to_string()),
        shell_quote(&list.display().to_string()),
    );
    // Enter: block (the default); down down enter: skip; down x3 enter: quit.
    let (code, screen) = common::run_on_terminal(&line, b"\r\x1b[B\x1b[B\r\x1b[B\x1b[B\x1b[B\r");
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("first.blocktest"), "{screen}");
    assert!(screen.contains("known accounts"), "{screen}");
    assert_eq!(
        api.domains(),
        BTreeSet::from(["first.blocktest".to_string()]),
        "{screen}"
    );
}

#[test]
fn watch_lists_new_domains_once() {
    let api = StandIn::start();
    api.add("already-blocked.example", "suspend");
    let ws = Workspace::new();
    let feed = common::repo_root().join("fixtures/blocks/fediblock.rss");
    let watch = |json: bool| {
        let mut cmd = tusk_blocks(&ws, &api, RW_TOKEN, None);
        if json {
            cmd.arg("--json");
        }
        cmd.args(["blocks", "watch"]).arg(&feed);
        run(cmd).expect_code(0)
    };
    let report = watch(true).json();
    let new = report["new"].as_array().unwrap();
    let found: Vec<&str> = new.iter().map(|s| s["domain"].as_str().unwrap()).collect();
    assert_eq!(found.len(), 3, "{report:#}");
    assert!(
        found[0].starts_with("xn--") && found[0].ends_with(".example"),
        "{found:?}"
    );
    assert_eq!(found[1..], ["troll-farm.example", "fresh-spam.example"]);
    assert_eq!(
        new[0]["link"],
        "https://big.example/@mod/111000000000000001"
    );
    assert_eq!(
        new[2]["link"],
        "https://big.example/@mod/111000000000000003"
    );
    assert_eq!(report["posts"], 3);
    assert!(
        Path::new(&ws.path().join("state/tusk/blocks-watch.json")).is_file(),
        "the state file is under XDG_STATE_HOME"
    );

    let second = watch(false);
    assert!(second.stdout.contains("Nothing new"), "{}", second.stdout);
}
