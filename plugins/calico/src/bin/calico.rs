//! The `calico` CNI plugin as a standalone binary (cnilab also answers to
//! this name itself).

fn main() {
    cnilab::profile::calico::plugin::main()
}
