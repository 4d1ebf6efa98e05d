//! PostgreSQL settings as PgTune computes them for its "web" database type
//! on Linux, with its default database size ("1x - 3x RAM").
//!
//! The facts come from PgTune's source (github.com/le0pard/pgtune,
//! `src/features/configuration/configurationSlice.js` and the view that
//! writes the values, as of its June 2026 change): see docs/tune.md for each
//! formula. Memory is computed in kB with integer arithmetic, as PgTune's
//! `Math.floor` does, and written in the largest of kB, MB and GB that
//! holds the value exactly.

use serde::{Deserialize, Serialize};

const KB_PER_MB: u64 = 1024;
const KB_PER_GB: u64 = 1024 * 1024;

/// What the data directory sits on: it drives the planner's cost of a
/// random read and how many reads PostgreSQL issues ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Ssd,
    Hdd,
    San,
    Nvme,
}

impl StorageKind {
    /// The names settings and flags accept, with what each means.
    pub const CHOICES: [(&'static str, &'static str); 4] = [
        (
            "ssd",
            "Solid-state drive (tusk's default when it cannot tell)",
        ),
        ("hdd", "Spinning disk"),
        ("san", "Network storage (SAN, cloud block volumes)"),
        ("nvme", "NVMe drive"),
    ];

    pub fn name(self) -> &'static str {
        match self {
            StorageKind::Ssd => "ssd",
            StorageKind::Hdd => "hdd",
            StorageKind::San => "san",
            StorageKind::Nvme => "nvme",
        }
    }
}

/// The inputs PgTune asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardware {
    /// Memory the server may use, in kB.
    pub memory_kb: u64,
    pub cpus: u32,
    pub storage: StorageKind,
    /// Connections the server must accept (`max_connections`).
    pub connections: u32,
    /// The server's major version: parallel settings depend on it.
    pub pg_major: u32,
}

/// One line of the recommendation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub name: &'static str,
    /// Written as PgTune writes it (`4GB`, `20560kB`, `1.1`, `try`).
    pub value: String,
    /// Why, in one line: the formula with its inputs.
    pub reason: String,
}

/// Writes kB as PgTune does: GB or MB only when the value is a whole number
/// of them, else kB.
pub fn format_kb(kb: u64) -> String {
    if kb.is_multiple_of(KB_PER_GB) {
        format!("{}GB", kb / KB_PER_GB)
    } else if kb.is_multiple_of(KB_PER_MB) {
        format!("{}MB", kb / KB_PER_MB)
    } else {
        format!("{kb}kB")
    }
}

/// `max_worker_processes` PgTune assumes when it writes no parallel
/// settings (PostgreSQL's default), for the work_mem divisor.
const DEFAULT_WORKER_PROCESSES: u64 = 8;
/// Parallel settings are written only from this many CPUs on.
const PARALLEL_MIN_CPUS: u32 = 4;
/// Workers per Gather (and per maintenance command) stop growing here for
/// a web workload.
const PARALLEL_WORKERS_CAP: u32 = 4;

/// The settings, in the order PgTune writes them.
pub fn recommend(hw: &Hardware) -> Vec<Setting> {
    let memory = hw.memory_kb;
    let memory_text = format_kb(memory);
    let mut out = Vec::new();
    let mut push = |name: &'static str, value: String, reason: String| {
        out.push(Setting {
            name,
            value,
            reason,
        })
    };

    push(
        "max_connections",
        hw.connections.to_string(),
        "the connections the instance needs (see connections above)".into(),
    );

    let shared_buffers = memory / 4;
    push(
        "shared_buffers",
        format_kb(shared_buffers),
        format!("1/4 of {memory_text} memory"),
    );
    push(
        "effective_cache_size",
        format_kb(memory * 3 / 4),
        format!("3/4 of {memory_text}: what PostgreSQL and the OS cache together hold"),
    );
    let maintenance_cap = 8 * KB_PER_GB;
    let maintenance = (memory / 16).min(maintenance_cap);
    push(
        "maintenance_work_mem",
        format_kb(maintenance),
        if memory / 16 >= maintenance_cap {
            format!("1/16 of {memory_text}, capped at 8GB")
        } else {
            format!("1/16 of {memory_text} (at most 8GB)")
        },
    );
    push(
        "checkpoint_completion_target",
        "0.9".into(),
        "spread checkpoint writes over 90% of the interval (PostgreSQL 14's default)".into(),
    );
    push(
        "wal_buffers",
        format_kb(wal_buffers(shared_buffers)),
        "3% of shared_buffers, between 32kB and 16MB (rounded up to 16MB above 14MB)".into(),
    );
    push(
        "default_statistics_target",
        "100".into(),
        "PostgreSQL's default sample size suits a web workload".into(),
    );
    let (random_page_cost, io_concurrency) = match hw.storage {
        StorageKind::Hdd => ("4", 2),
        StorageKind::Ssd => ("1.1", 200),
        StorageKind::San => ("1.1", 300),
        StorageKind::Nvme => ("1.1", 1000),
    };
    push(
        "random_page_cost",
        random_page_cost.into(),
        match hw.storage {
            StorageKind::Hdd => "hdd: a random read costs 4 sequential ones".into(),
            other => format!(
                "{}: a random read costs about a sequential one",
                other.name()
            ),
        },
    );
    push(
        "effective_io_concurrency",
        io_concurrency.to_string(),
        format!("{}: reads the storage serves at once", hw.storage.name()),
    );

    let parallel = hw.cpus >= PARALLEL_MIN_CPUS;
    let workers_for_work_mem = if parallel {
        u64::from(hw.cpus)
    } else {
        DEFAULT_WORKER_PROCESSES
    };
    let per_connection =
        (memory - shared_buffers) / ((u64::from(hw.connections) + workers_for_work_mem) * 3);
    let work_mem_floor = 4 * KB_PER_MB;
    push(
        "work_mem",
        format_kb(per_connection.max(work_mem_floor)),
        if per_connection < work_mem_floor {
            format!(
                "(memory - shared_buffers) / ((connections {} + workers {workers_for_work_mem}) x 3) \
                 is {per_connection}kB: raised to the 4MB floor",
                hw.connections
            )
        } else {
            format!(
                "(memory - shared_buffers) / ((connections {} + workers {workers_for_work_mem}) x 3)",
                hw.connections
            )
        },
    );
    let huge_pages = shared_buffers >= 2 * KB_PER_GB;
    push(
        "huge_pages",
        if huge_pages { "try" } else { "off" }.into(),
        if huge_pages {
            "shared_buffers is 2GB or more: use huge pages when the kernel has them".into()
        } else {
            "shared_buffers is under 2GB: huge pages gain little".into()
        },
    );
    push(
        "min_wal_size",
        format_kb(KB_PER_GB),
        "web workload: keep 1GB of WAL segments for reuse".into(),
    );
    push(
        "max_wal_size",
        format_kb(4 * KB_PER_GB),
        "web workload: checkpoint at the latest after 4GB of WAL".into(),
    );

    if parallel {
        let half = hw.cpus.div_ceil(2).min(PARALLEL_WORKERS_CAP);
        push(
            "max_worker_processes",
            hw.cpus.to_string(),
            format!("one background worker per CPU ({})", hw.cpus),
        );
        push(
            "max_parallel_workers_per_gather",
            half.to_string(),
            "half the CPUs, at most 4 for a web workload".into(),
        );
        if hw.pg_major >= 10 {
            push(
                "max_parallel_workers",
                hw.cpus.to_string(),
                format!("parallel query may use every CPU ({})", hw.cpus),
            );
        }
        if hw.pg_major >= 11 {
            push(
                "max_parallel_maintenance_workers",
                half.to_string(),
                "half the CPUs, at most 4, for CREATE INDEX and VACUUM".into(),
            );
        }
    }
    out
}

/// 3% of shared_buffers, at most 16MB, at least 32kB; values just under
/// 16MB are rounded up to it.
fn wal_buffers(shared_buffers_kb: u64) -> u64 {
    let max = 16 * KB_PER_MB;
    let near = 14 * KB_PER_MB;
    let value = (3 * shared_buffers_kb / 100).min(max);
    if value > near && value < max {
        max
    } else {
        value.max(32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hw(memory_gb: u64, cpus: u32, storage: StorageKind, connections: u32) -> Hardware {
        Hardware {
            memory_kb: memory_gb * KB_PER_GB,
            cpus,
            storage,
            connections,
            pg_major: 17,
        }
    }

    fn settings(hw: &Hardware) -> Vec<(&'static str, String)> {
        recommend(hw)
            .into_iter()
            .map(|s| (s.name, s.value))
            .collect()
    }

    fn value(hw: &Hardware, name: &str) -> Option<String> {
        settings(hw)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    fn expect(hw: &Hardware, expected: &[(&str, &str)]) {
        let got = settings(hw);
        let got: Vec<(&str, &str)> = got.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(got, expected, "{hw:?}");
    }

    /// 16GB, 4 CPUs, SSD, 200 connections (PgTune's default for web).
    /// From PgTune's tests: "calculates properly below the limit cap"
    /// (16GB -> maintenance_work_mem 1GB), "returns try when shared_buffers
    /// is large (>= 2GB)" (16GB -> huge_pages try), selectRandomPageCost
    /// "ssd" (1.1), selectEffectiveIoConcurrency "ssd" (200),
    /// selectDefaultStatisticsTarget "web app" (100). The rest follows
    /// the formulas: work_mem = (16GB - 4GB) / ((200 + 4) x 3) = 20560kB.
    #[test]
    fn web_16gb_4_cpus_ssd_200_connections() {
        expect(
            &hw(16, 4, StorageKind::Ssd, 200),
            &[
                ("max_connections", "200"),
                ("shared_buffers", "4GB"),
                ("effective_cache_size", "12GB"),
                ("maintenance_work_mem", "1GB"),
                ("checkpoint_completion_target", "0.9"),
                ("wal_buffers", "16MB"),
                ("default_statistics_target", "100"),
                ("random_page_cost", "1.1"),
                ("effective_io_concurrency", "200"),
                ("work_mem", "20560kB"),
                ("huge_pages", "try"),
                ("min_wal_size", "1GB"),
                ("max_wal_size", "4GB"),
                ("max_worker_processes", "4"),
                ("max_parallel_workers_per_gather", "2"),
                ("max_parallel_workers", "4"),
                ("max_parallel_maintenance_workers", "2"),
            ],
        );
    }

    /// 2GB, 2 CPUs, HDD, 100 connections: no parallel settings under 4
    /// CPUs (PgTune's "less 2 cpu provided" gives none), so work_mem
    /// divides by PostgreSQL's 8 default workers: 1.5GB / (108 x 3) =
    /// 4854kB; wal_buffers 3% of 512MB = 15728kB rounds up to 16MB;
    /// selectRandomPageCost "hdd" (4), selectEffectiveIoConcurrency "hdd" (2);
    /// "returns off when shared_buffers is small (< 2GB)".
    #[test]
    fn web_2gb_2_cpus_hdd_100_connections() {
        expect(
            &hw(2, 2, StorageKind::Hdd, 100),
            &[
                ("max_connections", "100"),
                ("shared_buffers", "512MB"),
                ("effective_cache_size", "1536MB"),
                ("maintenance_work_mem", "128MB"),
                ("checkpoint_completion_target", "0.9"),
                ("wal_buffers", "16MB"),
                ("default_statistics_target", "100"),
                ("random_page_cost", "4"),
                ("effective_io_concurrency", "2"),
                ("work_mem", "4854kB"),
                ("huge_pages", "off"),
                ("min_wal_size", "1GB"),
                ("max_wal_size", "4GB"),
            ],
        );
    }

    /// The table of PgTune's test cases, setting by setting.
    #[test]
    fn matches_pgtunes_published_cases() {
        let cases: &[(Hardware, &str, Option<&str>)] = &[
            // selectMaintenanceWorkMem "caps at 8GB for linux servers with extreme memory"
            (
                hw(256, 4, StorageKind::Ssd, 200),
                "maintenance_work_mem",
                Some("8GB"),
            ),
            // selectMaintenanceWorkMem "calculates properly below the limit cap"
            (
                hw(16, 4, StorageKind::Ssd, 200),
                "maintenance_work_mem",
                Some("1GB"),
            ),
            // selectHugePages "returns off when shared_buffers is small (< 2GB)"
            (hw(4, 4, StorageKind::Ssd, 200), "huge_pages", Some("off")),
            // selectHugePages "returns try when shared_buffers is large (>= 2GB)"
            (hw(16, 4, StorageKind::Ssd, 200), "huge_pages", Some("try")),
            // selectWorkMem "protects work_mem by flooring to 4MB during extreme max_connections"
            (hw(4, 4, StorageKind::Ssd, 9999), "work_mem", Some("4MB")),
            // selectWorkMem "allows work_mem to exceed 2GB ..." (Linux has no
            // Windows cap): "Actually evaluates to 2796202"
            (
                hw(256, 4, StorageKind::Ssd, 20),
                "work_mem",
                Some("2796202kB"),
            ),
            // selectRandomPageCost "hdd" / "ssd" / "san" / "nvme"
            (
                hw(16, 4, StorageKind::Hdd, 200),
                "random_page_cost",
                Some("4"),
            ),
            (
                hw(16, 4, StorageKind::Ssd, 200),
                "random_page_cost",
                Some("1.1"),
            ),
            (
                hw(16, 4, StorageKind::San, 200),
                "random_page_cost",
                Some("1.1"),
            ),
            (
                hw(16, 4, StorageKind::Nvme, 200),
                "random_page_cost",
                Some("1.1"),
            ),
            // selectEffectiveIoConcurrency "hdd" / "ssd" / "san" / "nvme" (linux)
            (
                hw(16, 4, StorageKind::Hdd, 200),
                "effective_io_concurrency",
                Some("2"),
            ),
            (
                hw(16, 4, StorageKind::Ssd, 200),
                "effective_io_concurrency",
                Some("200"),
            ),
            (
                hw(16, 4, StorageKind::San, 200),
                "effective_io_concurrency",
                Some("300"),
            ),
            (
                hw(16, 4, StorageKind::Nvme, 200),
                "effective_io_concurrency",
                Some("1000"),
            ),
            // selectDefaultStatisticsTarget "web app"
            (
                hw(16, 4, StorageKind::Ssd, 200),
                "default_statistics_target",
                Some("100"),
            ),
            // selectParallelSettings "less 2 cpu provided": none
            (
                hw(16, 1, StorageKind::Ssd, 200),
                "max_worker_processes",
                None,
            ),
            (
                hw(16, 1, StorageKind::Ssd, 200),
                "max_parallel_workers",
                None,
            ),
        ];
        for (hardware, name, expected) in cases {
            assert_eq!(
                value(hardware, name).as_deref(),
                *expected,
                "{name} for {hardware:?}"
            );
        }
    }

    /// selectParallelSettings "postgresql 13" (12 CPUs), "postgresql 10"
    /// (12 CPUs) and "postgresql 10 with 31 cpu".
    #[test]
    fn parallel_settings_follow_cpus_and_version() {
        let parallel = |cpus: u32, pg_major: u32| -> Vec<(&'static str, String)> {
            let hardware = Hardware {
                pg_major,
                ..hw(16, cpus, StorageKind::Ssd, 200)
            };
            settings(&hardware)
                .into_iter()
                .filter(|(name, _)| name.contains("parallel") || *name == "max_worker_processes")
                .collect()
        };
        let owned = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
            pairs.iter().map(|(n, v)| (*n, v.to_string())).collect()
        };
        assert_eq!(
            parallel(12, 13),
            owned(&[
                ("max_worker_processes", "12"),
                ("max_parallel_workers_per_gather", "4"),
                ("max_parallel_workers", "12"),
                ("max_parallel_maintenance_workers", "4"),
            ])
        );
        assert_eq!(
            parallel(12, 10),
            owned(&[
                ("max_worker_processes", "12"),
                ("max_parallel_workers_per_gather", "4"),
                ("max_parallel_workers", "12"),
            ])
        );
        assert_eq!(
            parallel(31, 10),
            owned(&[
                ("max_worker_processes", "31"),
                ("max_parallel_workers_per_gather", "4"),
                ("max_parallel_workers", "31"),
            ])
        );
        assert_eq!(parallel(3, 17), owned(&[]));
    }

    #[test]
    fn small_memory_writes_kb_and_floors() {
        let small = Hardware {
            memory_kb: KB_PER_GB,
            ..hw(1, 1, StorageKind::Ssd, 200)
        };
        // 3% of 256MB = 7864kB; work_mem (768MB / 624) is under the floor.
        assert_eq!(value(&small, "wal_buffers").as_deref(), Some("7864kB"));
        assert_eq!(value(&small, "work_mem").as_deref(), Some("4MB"));
        let tiny = Hardware {
            memory_kb: 4 * KB_PER_MB,
            ..small
        };
        assert_eq!(value(&tiny, "wal_buffers").as_deref(), Some("32kB"));
    }

    #[test]
    fn formats_as_pgtune() {
        assert_eq!(format_kb(4 * KB_PER_GB), "4GB");
        assert_eq!(format_kb(1536 * KB_PER_MB), "1536MB");
        assert_eq!(format_kb(20560), "20560kB");
    }
}
