//! Shell completions and the man page, generated from the clap definition. The committed copies
//! under `completions/` are checked for staleness by the integration tests.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell as ClapShell;

use crate::args::{Cli, Shell};

/// Writes the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) -> io::Result<()> {
    let shell = match shell {
        Shell::Bash => ClapShell::Bash,
        Shell::Zsh => ClapShell::Zsh,
        Shell::Fish => ClapShell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "agentctl", &mut buf);
    out.write_all(&buf)
}

/// Writes the man page (roff) of the whole command.
pub fn man(out: &mut dyn Write) -> io::Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
    out.write_all(&buf)
}

/// The files committed under `completions/`, with their expected contents.
pub fn expected_files() -> io::Result<Vec<(&'static str, Vec<u8>)>> {
    let mut files = Vec::new();
    for (name, shell) in [
        ("agentctl.bash", Shell::Bash),
        ("_agentctl", Shell::Zsh),
        ("agentctl.fish", Shell::Fish),
    ] {
        let mut buf = Vec::new();
        completions(shell, &mut buf)?;
        files.push((name, buf));
    }
    let mut buf = Vec::new();
    man(&mut buf)?;
    files.push(("agentctl.1", buf));
    Ok(files)
}
