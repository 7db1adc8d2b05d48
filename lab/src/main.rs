//! `cnilab`, and by the name it is run under, a profile's own CNI plugin or
//! agent (the lab links those names to this binary).

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("cnilab")
        .to_string();
    if let Some((_, program)) = cnilab::profile::programs().into_iter().find(|(n, _)| *n == name) {
        program();
    }
    match name.as_str() {
        "cnilab-watchd" => cnilab::kernel::watchd::main(),
        _ => std::process::exit(cnilab::front::cli::main()),
    }
}
