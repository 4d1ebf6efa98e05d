use anyhow::Result;

use tusk::output::{human_bytes, table};
use tusk::prune::{self, PruneOptions, PruneSettings, RunChoices};

use super::Context;
use crate::cli::PruneArgs;

pub async fn exec(ctx: &Context, args: PruneArgs) -> Result<()> {
    let instance = &ctx.instance;
    let opts = PruneOptions::resolve(
        &instance.settings.prune,
        &args.settings(),
        RunChoices {
            only: args.only.clone(),
            start_after: args.start_after.clone(),
            dry_run: args.dry_run,
            list_keys: args.dry_run && tracing::enabled!(tracing::Level::DEBUG),
        },
    );
    prune::validate(&opts)?;
    let store = instance.media_store()?;
    let server = instance.database_server().await?;
    let database = instance.database_name()?;
    if !opts.dry_run {
        let question = format!(
            "Prune {} from {} and database {database}?",
            opts.describe_rules().join(", "),
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

impl PruneArgs {
    /// The rules and knobs given on the command line; a switch not given is
    /// "not said", so the config file's value applies.
    fn settings(&self) -> PruneSettings {
        let said = |flag: bool| flag.then_some(true);
        PruneSettings {
            media_cache_days: self.media_cache_days,
            media_cache_semantics: self.media_cache_semantics,
            profiles_days: self.profiles_days,
            avatars: said(self.avatars),
            headers: said(self.headers),
            include_follows: said(self.include_follows),
            preview_cards_days: self.preview_cards_days,
            unattached_media: said(self.unattached_media),
            user_archives_days: self.user_archives_days,
            orphans: said(self.orphans),
            orphans_min_age_minutes: self.orphans_min_age,
            concurrency: self.concurrency,
            batch_size: self.batch_size,
        }
    }
}
