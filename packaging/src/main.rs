//! `inference-router-image`: what `make image` runs (see the library for the image it writes).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", inference_router_packaging::USAGE);
        return ExitCode::SUCCESS;
    }
    match inference_router_packaging::run(&args, &mut std::io::stdout()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inference-router-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}
