//! `inference-router-config`: see the library, or `--help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    match inference_router_config::run(
        &args,
        &mut std::io::stdin().lock(),
        &mut stdout,
        &mut stderr,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inference-router-config: {e}");
            ExitCode::FAILURE
        }
    }
}
