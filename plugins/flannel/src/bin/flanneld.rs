//! cnilab's `flanneld` agent as a standalone binary (cnilab also answers to
//! this name itself).

fn main() {
    cnilab::profile::flannel::agent::main()
}
