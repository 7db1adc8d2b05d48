//! `cnilab`, and by the name it is run under, the lab's own `flannel` CNI
//! plugin and `flanneld` agent (the lab links those names to this binary).

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("cnilab")
        .to_string();
    match name.as_str() {
        "flannel" => cnilab::profile::flannel::plugin::main(),
        "flanneld" => cnilab::profile::flannel::agent::main(),
        "calico" => cnilab::profile::calico::plugin::main(),
        "calico-felix" => cnilab::profile::calico::felix::main(),
        "cnilab-watchd" => cnilab::watchd::main(),
        _ => std::process::exit(cnilab::cli::main()),
    }
}
