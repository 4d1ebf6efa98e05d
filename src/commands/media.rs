use anyhow::Result;

use tusk::error::TuskError;
use tusk::media::{self, push::PushOptions};
use tusk::output::{human_bytes, table};
use tusk::storage::Storage;
use tusk::storage::retry::Retrying;
use tusk::storage::s3::S3Storage;

use super::Context;
use crate::cli::{MediaCommand, MediaPushArgs, MediaUsageArgs, MediaVerifyArgs};

pub async fn exec(ctx: &Context, command: MediaCommand) -> Result<()> {
    match command {
        MediaCommand::Push(args) => push(ctx, args).await,
        MediaCommand::Verify(args) => verify(ctx, args).await,
        MediaCommand::Usage(args) => usage(ctx, args).await,
    }
}

async fn push(ctx: &Context, args: MediaPushArgs) -> Result<()> {
    if args.dry_run && args.delete_local {
        return Err(TuskError::usage(
            "--dry-run and --delete-local exclude each other",
        ));
    }
    let storage = ctx.instance.media_bucket()?;
    let layout = ctx.instance.media_layout();
    let opts = PushOptions {
        concurrency: args.concurrency.max(1),
        dry_run: args.dry_run,
        delete_local: args.delete_local,
    };
    let report = media::push::run(&storage, &layout, &opts, &ctx.output).await?;
    if ctx.output.json {
        ctx.output.print_json(&report)?;
    } else if !ctx.output.quiet {
        let verb = if report.dry_run {
            "would upload"
        } else {
            "uploaded"
        };
        println!(
            "{} files in {}: {} already stored, {verb} {} ({}){} in {:.1}s",
            report.local_files,
            layout.root.display(),
            report.already_present,
            report.uploaded,
            human_bytes(report.uploaded_bytes),
            if report.deleted_local > 0 {
                format!(", deleted {} local files", report.deleted_local)
            } else {
                String::new()
            },
            report.seconds
        );
        if report.failed.is_empty() && report.not_attempted == 0 && !report.dry_run {
            print_switch_over(ctx, &storage);
        }
    }
    if let Some((key, error)) = report.failed.first() {
        anyhow::bail!(
            "{} uploads failed and {} were not attempted (first: {key}: {error}); \
             run the same command again to finish: what arrived is not uploaded twice",
            report.failed.len(),
            report.not_attempted
        );
    }
    Ok(())
}

/// What to put in .env.production once everything is in the bucket.
fn print_switch_over(ctx: &Context, storage: &Retrying<S3Storage>) {
    let settings = &ctx.instance.settings;
    let s3 = settings.s3().expect("bucket resolved above");
    println!(
        "\nEverything is in {}. To switch Mastodon over, set in .env.production:\n",
        storage.describe()
    );
    println!("  S3_ENABLED=true");
    println!("  S3_BUCKET={}", s3.bucket);
    println!("  S3_REGION={}", s3.region);
    if let Some(endpoint) = &s3.endpoint {
        println!("  S3_ENDPOINT={endpoint}");
    }
    println!(
        "  S3_ALIAS_HOST=media.example.com   # your CDN or proxy in front of the bucket, if any"
    );
    println!(
        "  S3_PERMISSION={}",
        settings.s3_permission.as_deref().unwrap_or("")
    );
    if let Some(prefix) = &settings.s3_key_prefix {
        println!("  S3_KEY_PREFIX={prefix}");
    }
    println!("  AWS_ACCESS_KEY_ID=...  AWS_SECRET_ACCESS_KEY=...");
    println!(
        "\nThen: serve the bucket with CORS (Access-Control-Allow-Origin: *), publicly readable but not\n\
         listable; add the media host to your Content-Security-Policy a week before switching (service\n\
         workers cache the old one); restart web, streaming and sidekiq; run `tusk media push` once more\n\
         for files written meanwhile, then `tusk media push --delete-local`."
    );
}

async fn verify(ctx: &Context, args: MediaVerifyArgs) -> Result<()> {
    let storage = ctx.instance.media_bucket()?;
    let report =
        media::verify::run(&storage, &ctx.instance.media_layout(), args.concurrency).await?;
    if ctx.output.json {
        ctx.output.print_json(&report)?;
    } else if !(ctx.output.quiet && report.ok()) {
        println!(
            "{} local files, {} objects: {} identical, {} missing, {} differ in size, {} differ in content, {} only in the bucket",
            report.local_files,
            report.objects,
            report.identical_count,
            report.missing.len(),
            report.size_mismatch.len(),
            report.checksum_mismatch.len(),
            report.extra.len()
        );
        let mut rows: Vec<Vec<String>> = Vec::new();
        rows.extend(
            report
                .missing
                .iter()
                .map(|k| vec!["missing".into(), k.clone()]),
        );
        rows.extend(
            report
                .size_mismatch
                .iter()
                .map(|(k, l, r)| vec![format!("size {l} != {r}"), k.clone()]),
        );
        rows.extend(
            report
                .checksum_mismatch
                .iter()
                .map(|k| vec!["content differs".into(), k.clone()]),
        );
        if !rows.is_empty() {
            print!("{}", table(&["PROBLEM", "KEY"], &rows));
        }
    }
    if report.ok() {
        Ok(())
    } else {
        Err(TuskError::VerificationFailed(format!(
            "{} objects missing, {} differ in size, {} differ in content",
            report.missing.len(),
            report.size_mismatch.len(),
            report.checksum_mismatch.len()
        ))
        .into())
    }
}

async fn usage(ctx: &Context, args: MediaUsageArgs) -> Result<()> {
    let instance = &ctx.instance;
    let server = instance.database_server().await?;
    let session = server.connect(&instance.database_name()?).await?;
    let bucket = match args.bucket {
        true => Some(instance.media_bucket()?),
        false => None,
    };
    let rows = media::usage::run(
        &session,
        &instance.media_layout(),
        bucket.as_ref().map(|b| b as &dyn Storage),
    )
    .await?;
    // `tusk status` reports the media's size from this record.
    let store = if bucket.is_some() { "s3" } else { "local" };
    if let Err(err) =
        media::usage::UsageRecord::of(&rows, store).save(&instance.settings.blocks_state_dir)
    {
        tracing::warn!("could not record the media usage for tusk status: {err:#}");
    }
    if ctx.output.json {
        return ctx.output.print_json(&rows);
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.class.clone(),
                human_bytes(r.database_bytes.max(0) as u64),
                r.local_bytes
                    .map_or("-".into(), |b| human_bytes(b.max(0) as u64)),
                human_bytes(r.stored_bytes),
                r.stored_files.to_string(),
                human_bytes(
                    r.stored_bytes
                        .saturating_sub(r.database_bytes.max(0) as u64),
                ),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "CLASS",
                "DATABASE",
                "LOCAL USERS",
                "STORED",
                "FILES",
                "NOT IN DATABASE"
            ],
            &table_rows
        )
    );
    Ok(())
}
