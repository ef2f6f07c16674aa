//! The man page, generated from the CLI definition.

use std::io::Write;

use super::args::Cli;

/// Writes the man page (roff), generated from the CLI definition: clap's
/// title, synopsis, description and options for `mailgate`, a list of the
/// commands, then a section per command with its arguments. There is one
/// page: clap's own command list would name pages such as
/// `mailgate-run(1)` that do not exist.
pub fn man_page(out: &mut Vec<u8>) -> std::io::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let esc = |s: &str| s.replace('\\', "\\\\").replace('-', "\\-");
    writeln!(out, ".SH COMMANDS")?;
    for sub in commands(&cmd) {
        writeln!(out, ".TP\n\\fB{}\\fR", esc(sub.get_name()))?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{}", esc(&about.to_string()))?;
        }
    }
    let section = |path: &str, c: &clap::Command, out: &mut Vec<u8>| -> std::io::Result<()> {
        writeln!(out, ".SH \"{}\"", esc(&path.to_uppercase()))?;
        if let Some(about) = c.get_long_about().or(c.get_about()) {
            writeln!(out, "{}", esc(&about.to_string()))?;
        }
        for a in c
            .get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set())
        {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let name = match (a.get_short(), a.get_long()) {
                (Some(s), Some(l)) => format!("\\fB\\-{s}\\fR, \\fB\\-\\-{}\\fR", esc(l)),
                (None, Some(l)) => format!("\\fB\\-\\-{}\\fR", esc(l)),
                (Some(s), None) => format!("\\fB\\-{s}\\fR"),
                (None, None) => format!("\\fI{}\\fR", esc(&id.to_uppercase())),
            };
            writeln!(out, ".TP\n{name}")?;
            if let Some(h) = a.get_long_help().or(a.get_help()) {
                writeln!(out, "{}", esc(&h.to_string()))?;
            }
            let values: Vec<String> = a
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| esc(v.get_name()))
                .collect();
            if !values.is_empty() {
                writeln!(out, "One of: {}.", values.join(", "))?;
            }
        }
        Ok(())
    };
    for sub in commands(&cmd) {
        let path = format!("mailgate {}", sub.get_name());
        if sub.has_subcommands() {
            for inner in sub.get_subcommands().filter(|s| s.get_name() != "help") {
                section(&format!("{path} {}", inner.get_name()), inner, out)?;
            }
        } else {
            section(&path, sub, out)?;
        }
    }
    man.render_version_section(out)?;
    Ok(())
}

/// The commands a user can run (not `help`, not hidden ones).
fn commands(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}
