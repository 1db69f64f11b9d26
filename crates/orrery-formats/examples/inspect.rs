//! Prints what orrery-formats sees in a weights file or folder:
//! `cargo run --release -p orrery-formats --example inspect -- <path> [--json]`

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.iter().find(|a| !a.starts_with("--")) else {
        eprintln!("usage: inspect <file|dir> [--json]");
        return ExitCode::from(2);
    };
    let json = args.iter().any(|a| a == "--json");
    let p = std::path::Path::new(path);
    let result = if p.is_dir() {
        orrery_formats::describe_folder(p).map(|d| if json { d.to_json().to_string() } else { d.to_string() })
    } else {
        orrery_formats::inspect(p).map(|i| if json { i.to_json().to_string() } else { i.to_string() })
    };
    match result {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
