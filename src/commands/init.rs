use anyhow::Result;

use tusk::init::{self, InitOptions, Unattended};
use tusk::output::{Output, Prompter, TerminalPrompter};

use crate::cli::{GlobalArgs, InitArgs};

/// Runs before any settings are resolved: there is no config file yet.
pub async fn exec(global: &GlobalArgs, args: &InitArgs) -> Result<()> {
    let output = Output::new(global.json, global.quiet, global.yes);
    let opts = InitOptions {
        output: args.output.clone(),
        force: args.force,
        env_file: global.mastodon_env_file.clone(),
        postgres_mode: global.postgres_mode,
        container: global.container.clone(),
        backup_dir: global.backup_dir.clone(),
        docker_host: global.docker_host.clone(),
    };
    let mut prompter: Box<dyn Prompter> = if args.non_interactive {
        Box::new(Unattended)
    } else if output.interactive {
        Box::new(TerminalPrompter)
    } else {
        return Err(tusk::error::TuskError::usage(
            "tusk init asks its questions on a terminal, and there is none: run it in one, \
             or pass --non-interactive with --env-file, --postgres-mode, --container and \
             --backup-dir as needed",
        ));
    };
    let report = init::run(&opts, prompter.as_mut()).await?;
    if output.json {
        return output.print_json(&report);
    }
    if !output.quiet {
        println!("Wrote {} (mode 0600).", report.path.display());
        if report.checks_failed {
            println!(
                "The checks failed: fix the file, then try `tusk backups list` and `tusk backup`."
            );
        } else {
            println!(
                "Next: `tusk --config {} backup` makes a first backup set.",
                report.path.display()
            );
        }
    }
    Ok(())
}
