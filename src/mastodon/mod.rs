//! Facts about a Mastodon installation that tusk reads from the outside.

pub mod api;
pub mod blocklist;
pub mod env_file;
pub mod paperclip;
pub mod pools;
pub mod secrets;
pub mod sidekiq;
