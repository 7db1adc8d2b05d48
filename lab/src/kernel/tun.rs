//! TUN devices through /dev/net/tun, as userspace overlays (flannel's UDP
//! backend) open them: the device lives as long as its file stays open.

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};

/// IFF_TUN: IP packets, no Ethernet header.
const IFF_TUN: u16 = 0x0001;
/// IFF_NO_PI: no 4-byte packet information before each packet.
const IFF_NO_PI: u16 = 0x1000;
/// The ioctl that attaches the file to a (new) device.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens (creating) the TUN device `name` in the calling thread's network
/// namespace; reads give one IP packet each, writes take one.
pub fn open(name: &str) -> Result<File> {
    if name.is_empty() || name.len() > 15 {
        bail!("TUN device name {name:?} must be 1 to 15 bytes");
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("cannot open /dev/net/tun: load the tun module (modprobe tun)")?;
    // struct ifreq: a 16-byte name, then the flags.
    let mut req = [0u8; 40];
    req[..name.len()].copy_from_slice(name.as_bytes());
    req[16..18].copy_from_slice(&(IFF_TUN | IFF_NO_PI).to_ne_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is large enough to hold.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, req.as_mut_ptr()) };
    if rc != 0 {
        bail!("cannot create TUN device {name}: {}", std::io::Error::last_os_error());
    }
    Ok(file)
}
