//! Who made a temporary thing: the run's host, process id and process start
//! time, recorded in the names of temporary files and the labels of helper
//! containers.
//!
//! A run killed by SIGKILL cannot undo anything; the next run tells what it
//! left from what a live run is using by asking whether the creator still
//! runs. The start time guards against a recycled process id.

use std::sync::OnceLock;

/// A tusk process, identified across the machine's lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creator {
    pub host: String,
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat`, field 22).
    pub started: u64,
}

/// Whether a creator still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Gone,
    /// On another host, or its process could not be inspected.
    Unknown,
}

impl Creator {
    /// This process.
    pub fn current() -> &'static Creator {
        static CURRENT: OnceLock<Creator> = OnceLock::new();
        CURRENT.get_or_init(|| {
            let pid = std::process::id();
            Creator {
                host: host_name().unwrap_or_else(|| "unknown".into()),
                pid,
                started: start_ticks(pid).unwrap_or(0),
            }
        })
    }

    /// `<pid>.<started>`, the part of a temporary name that names its creator.
    pub fn mark(&self) -> String {
        format!("{}.{}", self.pid, self.started)
    }

    /// The name prefix of this run's temporary entries of `kind`:
    /// `tusk-<kind>-<pid>.<started>-`.
    pub fn temp_prefix(&self, kind: &str) -> String {
        format!("tusk-{kind}-{}-", self.mark())
    }

    /// `<host> <pid> <started>`, for a file that names its creator where a
    /// name cannot (inside a container).
    pub fn record(&self) -> String {
        format!("{} {} {}\n", self.host, self.pid, self.started)
    }

    /// Reads [`Creator::record`] back.
    pub fn from_record(text: &str) -> Option<Creator> {
        let mut fields = text.split_whitespace();
        let creator = Creator {
            host: fields.next()?.to_string(),
            pid: fields.next()?.parse().ok()?,
            started: fields.next()?.parse().ok()?,
        };
        fields.next().is_none().then_some(creator)
    }

    /// Whether this creator still runs, as far as this host can tell.
    pub fn liveness(&self) -> Liveness {
        if self.host != Creator::current().host {
            return Liveness::Unknown;
        }
        process_liveness(self.pid, self.started)
    }
}

/// Reads the creator's process id and start time back from a name made with
/// [`Creator::temp_prefix`]: `tusk-<kind>-<pid>.<started>-<rest>` gives
/// (`pid`, `started`), for `kind` only.
pub fn parse_temp_name(name: &str, kind: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix("tusk-")?.strip_prefix(kind)?;
    let rest = rest.strip_prefix('-')?;
    let (mark, tail) = rest.split_once('-')?;
    if tail.is_empty() {
        return None;
    }
    let (pid, started) = mark.split_once('.')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || !all_digits(started) {
        return None;
    }
    Some((pid.parse().ok()?, started.parse().ok()?))
}

/// Whether process `pid`, started at `started`, runs on this host.
pub fn process_liveness(pid: u32, started: u64) -> Liveness {
    // Without a readable /proc nothing can be told apart.
    if Creator::current().started == 0 {
        return Liveness::Unknown;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match parse_start_ticks(&stat) {
            Some(ticks) if ticks == started => Liveness::Alive,
            // The id was given to another process since.
            Some(_) => Liveness::Gone,
            None => Liveness::Unknown,
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Liveness::Gone,
        Err(_) => Liveness::Unknown,
    }
}

fn start_ticks(pid: u32) -> Option<u64> {
    parse_start_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of `/proc/<pid>/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted after its closing one.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// This machine's name, when it has one.
pub fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return None;
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_recycled_or_missing_pid_is_gone() {
        let me = Creator::current();
        assert!(me.started > 0);
        assert_eq!(me.liveness(), Liveness::Alive);
        assert_eq!(process_liveness(me.pid, me.started + 1), Liveness::Gone);
        // Above the kernel's pid_max.
        assert_eq!(process_liveness(u32::MAX - 1, 1), Liveness::Gone);
        let elsewhere = Creator {
            host: format!("{}-elsewhere", me.host),
            ..me.clone()
        };
        assert_eq!(elsewhere.liveness(), Liveness::Unknown);
    }

    #[test]
    fn temp_names_carry_their_creator_and_nothing_else_parses() {
        let me = Creator::current();
        let name = format!("{}a1b2c3.dump", me.temp_prefix("restore"));
        assert_eq!(
            parse_temp_name(&name, "restore"),
            Some((me.pid, me.started))
        );
        assert_eq!(parse_temp_name(&name, "pipe"), None);
        assert_eq!(
            parse_temp_name("tusk-pipe-12.34-xyz", "pipe"),
            Some((12, 34))
        );
        for other in [
            "tusk-restore-abc.dump",
            "tusk-restore-12-x.dump",
            "tusk-restore-12.-x",
            "tusk-restore-12.34-",
            "tusk-pipe-1.2",
            "my-tusk-pipe-1.2-x",
        ] {
            assert_eq!(parse_temp_name(other, "restore"), None, "{other}");
            assert_eq!(parse_temp_name(other, "pipe"), None, "{other}");
        }
    }

    #[test]
    fn records_read_back() {
        let me = Creator::current();
        assert_eq!(Creator::from_record(&me.record()).as_ref(), Some(me));
        assert_eq!(Creator::from_record("host 12"), None);
        assert_eq!(Creator::from_record("host 12 34 56"), None);
        assert_eq!(Creator::from_record("host x 34"), None);
    }

    #[test]
    fn start_ticks_are_read_after_a_command_name_with_spaces() {
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987654));
    }
}
