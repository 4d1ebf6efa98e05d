use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::Context;
use crate::cli::PruneArgs;
use crate::config::{MediaStoreKind, PruneRule};
use crate::output::{human_bytes, table};
use crate::prune::{self, CacheSemantics, MediaStore, PruneOptions};
use crate::storage::Storage;
use crate::storage::local::LocalStorage;
use crate::storage::retry::Retrying;
use crate::storage::s3::S3Storage;

/// Tries per request; a DeleteObjects batch is safe to repeat.
const ATTEMPTS: u32 = 5;

pub async fn exec(ctx: &Context, args: PruneArgs) -> Result<()> {
    let opts = options(ctx, &args);
    prune::validate(&opts)?;
    let store = media_store(ctx)?;
    let server = ctx.source_server().await?;
    let database = ctx.source_database_name()?;
    if !opts.dry_run {
        let question = format!(
            "Prune {} from {} and database {database}?",
            rule_names(&opts).join(", "),
            store.storage.describe()
        );
        if !ctx.output.confirm(&question)? {
            anyhow::bail!("nothing pruned: not confirmed");
        }
    }
    let report = prune::run(server.as_ref(), &database, &store, &opts, &ctx.output).await?;

    if ctx.output.json {
        return ctx.output.print_json(&report);
    }
    if ctx.output.quiet {
        return Ok(());
    }
    if report.journal_replayed > 0 {
        println!(
            "Deleted {} files an interrupted run had left.",
            report.journal_replayed
        );
    }
    let rows: Vec<Vec<String>> = report
        .rules
        .iter()
        .map(|r| {
            vec![
                r.rule.clone(),
                r.rows.to_string(),
                r.files.to_string(),
                human_bytes(r.bytes),
                format!("{:.1}s", r.seconds),
            ]
        })
        .collect();
    let verb = if report.dry_run {
        "WOULD FREE"
    } else {
        "FREED"
    };
    print!("{}", table(&["RULE", "ROWS", "FILES", verb, "TIME"], &rows));
    for rule in &report.rules {
        if let Some(stats) = &rule.orphans {
            println!(
                "orphans: {} objects listed; kept {} of unknown classes, {} of other shapes, {} younger than the minimum age",
                stats.listed, stats.kept_unknown_class, stats.kept_unrecognized, stats.kept_recent
            );
        }
        for key in &rule.keys {
            println!("{}: {key}", rule.rule);
        }
    }
    if report.dry_run {
        println!("Dry run: nothing was changed.");
    }
    Ok(())
}

/// Flags over the `prune:` section: rules named on the command line
/// replace the configured ones; the other settings fall back one by one.
fn options(ctx: &Context, args: &PruneArgs) -> PruneOptions {
    let file = &ctx.settings.prune;
    let flag_rules = args.media_cache_days.is_some()
        || args.profiles_days.is_some()
        || args.preview_cards_days.is_some()
        || args.unattached_media
        || args.orphans;
    let (media_cache_days, profiles_days, preview_cards_days, unattached_media, orphans) =
        if flag_rules {
            (
                args.media_cache_days,
                args.profiles_days,
                args.preview_cards_days,
                args.unattached_media,
                args.orphans,
            )
        } else {
            (
                file.media_cache_days,
                file.profiles_days,
                file.preview_cards_days,
                file.unattached_media.unwrap_or(false),
                file.orphans.unwrap_or(false),
            )
        };
    let only = |rule: PruneRule| args.only.is_empty() || args.only.contains(&rule);
    // Neither named: both, as `tootctl media remove --prune-profiles`.
    let (avatars, headers) = if args.avatars || args.headers {
        (args.avatars, args.headers)
    } else {
        match (file.avatars, file.headers) {
            (None, None) => (true, true),
            (avatars, headers) => (avatars.unwrap_or(false), headers.unwrap_or(false)),
        }
    };
    PruneOptions {
        media_cache_days: media_cache_days.filter(|_| only(PruneRule::MediaCache)),
        media_cache_semantics: args
            .media_cache_semantics
            .or(file.media_cache_semantics)
            .unwrap_or(CacheSemantics::Tootctl),
        profiles_days: profiles_days.filter(|_| only(PruneRule::Profiles)),
        avatars,
        headers,
        include_follows: args.include_follows || file.include_follows.unwrap_or(false),
        preview_cards_days: preview_cards_days.filter(|_| only(PruneRule::PreviewCards)),
        unattached_media: unattached_media && only(PruneRule::UnattachedMedia),
        orphans: orphans && only(PruneRule::Orphans),
        orphans_min_age: Duration::from_secs(
            60 * args
                .orphans_min_age
                .or(file.orphans_min_age_minutes)
                .unwrap_or(60),
        ),
        start_after: args.start_after.clone(),
        dry_run: args.dry_run,
        concurrency: args.concurrency.or(file.concurrency).unwrap_or(4).max(1),
        batch_size: args.batch_size.or(file.batch_size).unwrap_or(1000).max(1),
        list_keys: args.dry_run && tracing::enabled!(tracing::Level::DEBUG),
    }
}

fn rule_names(opts: &PruneOptions) -> Vec<String> {
    let mut names = Vec::new();
    if opts.unattached_media {
        names.push("unattached media".to_string());
    }
    if let Some(days) = opts.media_cache_days {
        names.push(format!("media cached over {days} days"));
    }
    if let Some(days) = opts.profiles_days {
        names.push(format!("profiles unseen for {days} days"));
    }
    if let Some(days) = opts.preview_cards_days {
        names.push(format!("preview cards over {days} days"));
    }
    if opts.orphans {
        names.push("orphaned files".to_string());
    }
    names
}

/// The store Mastodon reads its media from now.
fn media_store(ctx: &Context) -> Result<MediaStore> {
    let storage: Arc<dyn Storage> = match ctx.settings.media_store {
        MediaStoreKind::Local => {
            let root = ctx.settings.media_root.clone();
            if !root.is_dir() {
                return Err(crate::error::TuskError::usage(format!(
                    "media root {} is not a directory; set mastodon.media_root or --media-root \
                     (or --media-store s3 if Mastodon stores media in a bucket)",
                    root.display()
                )));
            }
            Arc::new(LocalStorage::new(root))
        }
        MediaStoreKind::S3 => Arc::new(Retrying::new(
            S3Storage::new(ctx.settings.s3()?.clone()),
            ATTEMPTS,
            Duration::from_millis(500),
        )),
    };
    let key_prefix = match ctx.settings.media_store {
        MediaStoreKind::Local => None,
        MediaStoreKind::S3 => ctx.settings.s3_key_prefix.clone(),
    };
    Ok(MediaStore {
        storage,
        key_prefix,
    })
}
