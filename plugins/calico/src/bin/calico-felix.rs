//! cnilab's `calico-felix` VXLAN agent as a standalone binary (cnilab also
//! answers to this name itself).

fn main() {
    cnilab::profile::calico::felix::main()
}
