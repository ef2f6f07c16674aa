//! The man page, generated from the CLI definition.

use super::*;

/// Writes the man page (roff), generated from the CLI definition: clap's
/// page for `mailgate`, then a section per command with its arguments.
pub fn man_page(out: &mut Vec<u8>) -> std::io::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd.clone()).render(out)?;
    let esc = |s: &str| s.replace('\\', "\\\\").replace('-', "\\-");
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
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let path = format!("mailgate {}", sub.get_name());
        if sub.has_subcommands() {
            for inner in sub.get_subcommands().filter(|s| s.get_name() != "help") {
                section(&format!("{path} {}", inner.get_name()), inner, out)?;
            }
        } else {
            section(&path, sub, out)?;
        }
    }
    Ok(())
}
