//! tusk as a library: the operations that back up, restore, verify and
//! maintain a Mastodon instance, and everything they stand on. The `tusk`
//! binary (src/main.rs, src/cli.rs, src/commands/) is a thin shell over it:
//! arguments in, an options struct out, one operation called.
//!
//! The library never sees clap: it builds with `--no-default-features`,
//! which leaves clap out of the dependency graph (see docs/architecture.md).
//! Modules import only downward, in this order:
//!
//! - settings: [`config`] (one precedence for every setting),
//!   [`instance`] (the configured instance's servers and stores) and
//!   [`init`] (writing a first tusk.yaml);
//! - operations: [`backup`], [`blocks`], [`restore`], [`verify`], [`media`],
//!   [`prune`], [`prune_sets`], [`status`], [`tune`], [`janitor`] (which backup, restore
//!   and verify call first to remove what a killed run left), and the reports
//!   around them, [`notify`] and [`metrics`]; [`migrate`] and [`rehearse`],
//!   which compose backup, restore and verify;
//! - domain: [`set`] (backup sets, manifests, facts), [`archive`]
//!   (pg_dump's custom format), [`mastodon`] (Mastodon's files and rules);
//! - infrastructure: [`postgres`], [`docker`], [`storage`], [`http`],
//!   [`redis`];
//! - base: [`error`], [`output`], [`cleanup`], [`names`], [`signals`],
//!   [`creator`].

// base
pub mod cleanup;
pub mod creator;
pub mod error;
pub mod names;
pub mod output;
pub mod process;
pub mod signals;

// infrastructure
pub mod docker;
pub mod http;
pub mod postgres;
pub mod redis;
pub mod storage;

// domain
pub mod archive;
pub mod mastodon;
pub mod set;

// operations
pub mod backup;
pub mod blocks;
pub mod copy_sets;
pub mod janitor;
pub mod media;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod prune;
pub mod prune_sets;
pub mod rehearse;
pub mod restore;
pub mod status;
pub mod tune;
pub mod verify;

// settings
pub mod config;
pub mod init;
pub mod instance;
