//! Prints every Sonde CRD as multi-document YAML (`crdgen`), or rewrites the
//! generated reference section of docs/api.md (`crdgen --docs docs/api.md`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [] => crds::crds_yaml()
            .map(|yaml| print!("{yaml}"))
            .map_err(|e| format!("cannot render the CRDs as YAML: {e}")),
        [flag, path] if flag == "--docs" => {
            crds::reference::update_file(path.as_ref()).map_err(|e| e.to_string())
        }
        _ => Err(
            "usage: crdgen               print the CRDs as YAML\n       \
                  crdgen --docs FILE   rewrite the generated reference section of FILE \
                  (docs/api.md)"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
