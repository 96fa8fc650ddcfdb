use clap::Parser;

fn main() {
    let cli = bushu::cli::Cli::parse();
    if let Err(e) = bushu::cli::main(cli) {
        // One line: the error and its causes.
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
