use clap::Parser;

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
    let cli = bushu::cli::Cli::parse();
    if let Err(e) = bushu::cli::main(cli) {
        // One line: the error and its causes, with the control characters of whatever a file or a
        // user gave escaped (a newline, an ANSI escape sequence).
        let msg = bushu::display::escape_controls(&format!("{e:#}"));
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
