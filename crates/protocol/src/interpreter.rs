//! Inline-code flags of common interpreters, for execWay 0.
//!
//! execWay 0 runs `content` as code given on the interpreter's command line.
//! Each interpreter spells that flag differently, so the agent looks it up by
//! the interpreter's file name, ignoring a version suffix (`python3.11` is
//! `python`). The coordinator uses the same table to reject an interpreter
//! it cannot run before any peer sees the job.

/// How an interpreter takes inline code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlineForm {
    /// The flag that precedes the code, such as `-c` or `-e`.
    pub flag: &'static str,
    /// True when the interpreter takes the next argument as `$0` before the
    /// positional parameters, as POSIX shells do after `-c CODE`.
    pub takes_arg0: bool,
}

/// Returns how `cmd` takes inline code, or `None` when the interpreter is not
/// in the table. `cmd` may be a bare name or a path.
pub fn inline_form(cmd: &str) -> Option<InlineForm> {
    let file_name = cmd.rsplit('/').next().unwrap_or(cmd);
    let base = file_name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');

    let shell = InlineForm {
        flag: "-c",
        takes_arg0: true,
    };
    let code_flag = |flag| InlineForm {
        flag,
        takes_arg0: false,
    };

    match base {
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" => Some(shell),
        "python" | "pypy" => Some(code_flag("-c")),
        "node" | "nodejs" | "perl" | "ruby" => Some(code_flag("-e")),
        "php" => Some(code_flag("-r")),
        _ => None,
    }
}

/// The interpreter names [`inline_form`] knows, for error messages.
pub const KNOWN_INLINE_INTERPRETERS: &str =
    "sh, bash, dash, zsh, ksh, mksh, ash, python, pypy, node, perl, ruby, php";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_python_uses_dash_c() {
        let form = inline_form("/usr/bin/python3.11").unwrap();
        assert_eq!(form.flag, "-c");
        assert!(!form.takes_arg0);
    }

    #[test]
    fn shells_take_arg0() {
        assert!(inline_form("/bin/bash").unwrap().takes_arg0);
        assert!(inline_form("sh").unwrap().takes_arg0);
    }

    #[test]
    fn unknown_interpreter_has_no_form() {
        assert_eq!(inline_form("/usr/bin/awk"), None);
        assert_eq!(inline_form(""), None);
    }
}
