//! Prints every Sonde CRD as multi-document YAML (`crdgen`), or rewrites the
//! generated reference section of docs/api.md (`crdgen --docs docs/api.md`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => crds::crds_yaml()
            .map(|yaml| print!("{yaml}"))
            .map_err(|e| format!("cannot render the CRDs as YAML: {e}")),
        _ => Err("usage: crdgen    print the CRDs as YAML".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
