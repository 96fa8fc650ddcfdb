//! The `bushu` executable: parses the command line and runs it, with one-line errors.

fn main() {
    // A bug must still end in one readable line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = bushu::display::escape_controls(&msg);
        eprintln!("error: internal error: {msg}{at} (please report this)");
    }));
    let cli = bushu::cli::parse();
    // Output into a closed pipe (`bushu info | head -1`) ends the process quietly, killed by SIGPIPE as
    // the shell's tools are (exit status 141 in the shell). Rust ignores SIGPIPE, which turns it into a
    // write error and `println!` into a panic. The server keeps ignoring it: a client that hangs up must
    // not end the process.
    if !matches!(cli.command, bushu::cli::Command::Serve(_)) {
        default_sigpipe();
    }
    if let Err(e) = bushu::cli::main(cli) {
        // One line: the error and its causes, with the control characters of whatever a file or a
        // user gave escaped (a newline, an ANSI escape sequence).
        let msg = bushu::display::escape_controls(&format!("{e:#}"));
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

/// Restores SIGPIPE's default action (terminate the process).
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_DFL, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
