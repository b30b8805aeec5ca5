//! `bench-report`: turns the raw outputs `benches/suite.sh` keeps in its
//! report directory into `report.md` (Markdown tables with ratios) and SVG
//! charts; see [`ringwire_benches::report`] for the directory's layout.
//!
//! Usage: `bench-report [DIR]` (default `target/bench-report`).

use std::path::PathBuf;
use std::process::ExitCode;

use ringwire_benches::report::write_report;

const USAGE: &str = "\
usage: bench-report [DIR]

Reads DIR/suite.env, DIR/steps.tsv, DIR/raw/*.txt and DIR/criterion/, and
writes DIR/report.md and DIR/*.svg. DIR defaults to target/bench-report.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [] => PathBuf::from("target/bench-report"),
        [h] if h == "-h" || h == "--help" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        [d] if !d.starts_with('-') => PathBuf::from(d),
        _ => {
            eprintln!("bench-report: unexpected arguments {args:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match write_report(&dir) {
        Ok(w) => {
            println!("bench-report: wrote {}", w.report.display());
            for c in &w.charts {
                println!("bench-report: wrote {}", c.display());
            }
            for warn in &w.warnings {
                eprintln!("bench-report: warning: {warn}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-report: error: {e}");
            ExitCode::FAILURE
        }
    }
}
