//! How a set's artefacts are compressed.

/// How artefacts are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Gzip,
    None,
}

impl Compression {
    /// The names settings and flags accept, with what each means.
    pub const CHOICES: [(&'static str, &'static str); 3] =
        [("zstd", ""), ("gzip", ""), ("none", "")];

    pub fn default_level(self) -> i32 {
        match self {
            // Level 1 keeps compression off the dump's critical path on a
            // 2-core server and still beats pg_dump -Fc's size.
            Compression::Zstd => 1,
            Compression::Gzip => 6,
            Compression::None => 0,
        }
    }

    pub fn level_range(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Compression::Zstd => 1..=19,
            Compression::Gzip => 1..=9,
            Compression::None => 0..=0,
        }
    }

    /// File name suffix, e.g. `.zst`.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Zstd => ".zst",
            Compression::Gzip => ".gz",
            Compression::None => "",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        }
    }
}
