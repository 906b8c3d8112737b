//! The CLI describing itself: shell completion scripts (clap_complete) and man pages (clap_mangen),
//! both generated from the one clap definition, so they cannot drift from the flags.
//!
//! sandhost(1) adds to what clap_mangen renders an EXIT STATUS section (the table of `exit.rs`) and an
//! ENVIRONMENT section, in place of clap_mangen's generic EXTRA.

use std::io::{self, Write as _};
use std::path::Path;

use clap_mangen::Man;

use super::client::ClientError;
use super::exit::{EXIT_CODES, Outcome};

/// `sandhost completion SHELL`: the script on stdout.
pub(crate) fn completion(
    shell: clap_complete::Shell,
    mut cli: clap::Command,
) -> Result<Outcome, ClientError> {
    // Into memory first: clap_complete panics if its writer fails (a closed pipe, say).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cli, "sandhost", &mut script);
    io::stdout().lock().write_all(&script)?;
    Ok(Outcome::Done)
}

/// `sandhost man`: sandhost(1) on stdout; with `dir`, sandhost.1 and one page per subcommand
/// written there, and their paths on stdout.
pub(crate) fn man(cli: clap::Command, dir: Option<&Path>) -> Result<Outcome, ClientError> {
    let Some(dir) = dir else {
        let mut page = Vec::new();
        render_main_page(cli, &mut page)?;
        io::stdout().lock().write_all(&page)?;
        return Ok(Outcome::Done);
    };
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let mut written = Vec::new();
    for subcommand in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = Man::new(subcommand.clone());
        let path = dir.join(man.get_filename());
        man.generate_to(dir).map_err(|source| ClientError::WriteFile { path: path.clone(), source })?;
        written.push(path);
    }
    let main = dir.join("sandhost.1");
    let mut page = Vec::new();
    render_main_page(cli, &mut page)?;
    std::fs::write(&main, page).map_err(|source| ClientError::WriteFile { path: main.clone(), source })?;
    written.insert(0, main);
    let mut stdout = io::stdout().lock();
    for path in written {
        writeln!(stdout, "{}", path.display())?;
    }
    Ok(Outcome::Done)
}

/// sandhost(1): clap_mangen's sections, then EXIT STATUS and ENVIRONMENT, then the version.
fn render_main_page(cli: clap::Command, out: &mut dyn io::Write) -> io::Result<()> {
    let man = Man::new(cli);
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    out.write_all(exit_status_section().as_bytes())?;
    out.write_all(environment_section().as_bytes())?;
    man.render_version_section(out)
}

fn exit_status_section() -> String {
    let mut roff = String::from(".SH \"EXIT STATUS\"\nThe client subcommands exit with:\n");
    for (code, meaning) in EXIT_CODES {
        roff.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", escape(meaning)));
    }
    roff.push_str(".PP\n");
    roff.push_str(&escape(
        "sandhost serve exits with codes of its own (README, \"Shutdown and exit codes\").",
    ));
    roff.push('\n');
    roff
}

fn environment_section() -> String {
    let variables = [
        (
            "SANDHOST_ADDR",
            "the node the client subcommands talk to, HOST:PORT, when no --addr is given \
          (default 127.0.0.1:5008)",
        ),
        ("SANDHOST_TOKEN", "the bearer token the client subcommands send, and that serve requires"),
    ];
    let mut roff = String::from(".SH ENVIRONMENT\n");
    for (name, meaning) in variables {
        roff.push_str(&format!(".TP\n\\fB{name}\\fR\n{}\n", escape(meaning)));
    }
    roff
}

/// Text made safe for roff: backslashes and hyphens escaped, no line starting with a control
/// character.
fn escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) { format!("\\&{escaped}") } else { escaped }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("sandhost")
            .version("1.0")
            .subcommand(clap::Command::new("create").about("Start a sandbox"))
            .subcommand(clap::Command::new("list").about("List"))
    }

    #[test]
    fn the_page_has_its_sections_and_every_exit_code() {
        let mut page = Vec::new();
        render_main_page(cli(), &mut page).expect("renders");
        let page = String::from_utf8(page).expect("utf-8");
        assert!(page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH"), "{page}");
        for section in [
            ".TH sandhost 1",
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH SUBCOMMANDS",
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
        ] {
            assert!(page.contains(section), "{section} in {page}");
        }
        for (code, _) in EXIT_CODES {
            assert!(page.contains(&format!("\\fB{code}\\fR")), "{code}");
        }
        assert!(page.contains("sandhost\\-create(1)"), "{page}");
    }

    #[test]
    fn roff_control_characters_are_escaped() {
        assert_eq!(escape("a-b"), "a\\-b");
        assert_eq!(escape(".x"), "\\&.x");
        assert_eq!(escape("a\\b"), "a\\eb");
    }
}
