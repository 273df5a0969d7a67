//! Reading secret values and confirmations from the person at the terminal, or from a pipe.
//!
//! Secret values never come from argv (they would land in shell history and `ps`): they are
//! piped on stdin or typed at a hidden prompt. The `String`s returned here are never printed and
//! never put in an error message.

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context};

/// True when stdin is a terminal, i.e. nothing is piped in.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// A secret value: all of stdin when it is piped (minus one trailing newline), else typed at a
/// hidden prompt.
pub fn read_secret(prompt: &str) -> anyhow::Result<String> {
    if stdin_is_terminal() {
        rpassword::prompt_password(prompt).context("cannot read from the terminal")
    } else {
        read_stdin()
    }
}

/// All of stdin, minus one trailing newline.
pub fn read_stdin() -> anyhow::Result<String> {
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .context("cannot read stdin")?;
    strip_one_newline(&mut value);
    Ok(value)
}

/// `echo value | berth ...` appends a newline that is not part of the value; exactly one is
/// removed, so a value that really ends in newlines can still be piped with one extra.
fn strip_one_newline(value: &mut String) {
    if value.ends_with("\r\n") {
        value.truncate(value.len() - 2);
    } else if value.ends_with('\n') {
        value.truncate(value.len() - 1);
    }
}

/// Asks `question [y/N]` on the terminal unless `yes` (the `--yes` flag) is set. Refuses when
/// there is no terminal to ask on, and when the answer is anything but yes.
pub fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !stdin_is_terminal() || !std::io::stderr().is_terminal() {
        bail!("{question} needs confirmation: pass --yes (no terminal to ask on)");
    }
    eprint!("{question}? [y/N] ");
    std::io::stderr()
        .flush()
        .context("cannot write to the terminal")?;
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("cannot read from the terminal")?;
    if !is_yes(&answer) {
        bail!("aborted");
    }
    Ok(())
}

fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripped(value: &str) -> String {
        let mut value = value.to_string();
        strip_one_newline(&mut value);
        value
    }

    #[test]
    fn exactly_one_trailing_newline_is_stripped() {
        assert_eq!(stripped("s3cret\n"), "s3cret");
        assert_eq!(stripped("s3cret\r\n"), "s3cret");
        assert_eq!(stripped("s3cret\n\n"), "s3cret\n");
        assert_eq!(stripped("s3cret"), "s3cret");
        assert_eq!(stripped(""), "");
    }

    #[test]
    fn only_y_or_yes_confirms() {
        assert!(is_yes("y\n"));
        assert!(is_yes("YES\n"));
        assert!(!is_yes("\n"));
        assert!(!is_yes("n\n"));
        assert!(!is_yes("yep\n"));
    }
}
