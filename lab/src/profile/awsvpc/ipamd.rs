//! `aws-k8s-agent`: cnilab's ipamd, one per node. At start it does what
//! aws-vpc-cni-init and SetupHostNetwork do (rp_filter = 2 on eth0, rule
//! 1024, the mangle and nat rules of network.go), then keeps the warm pool
//! of pkg/ipamd (isDatastorePoolTooLow, then increaseDatastorePool: fill
//! an ENI that has room, else attach one), and answers the plugin on a
//! Unix socket (AddNetwork/DelNetwork as JSON lines). Its datastore is
//! checkpointed to `ipam.json` in the node's agent folder.
//!
//! Deviations (docs/aws-vpc-cni-facts.md, "cnilab's stand-in"): requests
//! are served one at a time and the pool is refilled before the next one
//! (the real ipamd refills every 5 s, so an ADD that finds the pool empty
//! fails until then); an address goes to the lowest device with a free
//! one, its lowest address (the real datastore walks a Go map); freed
//! addresses are reused at once (no 30 s cooldown); the pool never shrinks.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tracing::{info, warn};

use super::AwsNode;
use super::net::{self, Match};
use crate::kernel::netns;
use crate::kernel::nl::Nl;

/// The agent's command line.
#[derive(Parser, Debug)]
#[command(
    name = "aws-k8s-agent",
    about = "cnilab's ipamd: amazon-vpc-cni's warm pool of ENIs and addresses"
)]
pub struct Args {
    /// The node's part of the plan (aws-node.json).
    #[arg(long)]
    pub config: PathBuf,
}

/// The entry point: `aws-k8s-agent` as `argv[0]`.
pub fn main() -> ! {
    crate::kernel::overlay::agent_main(run(Args::parse()))
}

/// A pod holding an address (the datastore's IPAMKey and metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodKey {
    /// K8S_POD_NAMESPACE.
    pub namespace: String,
    /// K8S_POD_NAME.
    pub name: String,
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// CNI_IFNAME.
    #[serde(rename = "ifName")]
    pub ifname: String,
}

/// A secondary address of an ENI, and its pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slot {
    /// The address.
    pub ip: Ipv4Addr,
    /// Its pod, when assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodKey>,
}

/// An attached ENI and the secondary addresses EC2 assigned it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Eni {
    /// Device number.
    pub device: u32,
    /// Its interface in the node.
    pub ifname: String,
    /// Its primary address.
    #[serde(rename = "primaryIP")]
    pub primary: Ipv4Addr,
    /// Its route table.
    #[serde(rename = "routeTable")]
    pub table: u32,
    /// Its secondary addresses.
    pub ips: Vec<Slot>,
}

/// One allocation as ipamd's checkpoint (`vpc-cni-ipam/1`) lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Allocation {
    /// The CNI network.
    #[serde(rename = "networkName")]
    pub network: String,
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// CNI_IFNAME.
    #[serde(rename = "ifName")]
    pub ifname: String,
    /// The address.
    pub ipv4: Ipv4Addr,
    /// The pod.
    pub metadata: serde_json::Value,
}

/// ipamd's checkpoint: the real file's `version` and `allocations`, and
/// what EC2 knows of the node's ENIs (`enis`), which the real ipamd reads
/// from the instance metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// `vpc-cni-ipam/1`.
    pub version: String,
    /// Addresses held by pods.
    pub allocations: Vec<Allocation>,
    /// Attached ENIs, device order.
    pub enis: Vec<Eni>,
}

impl Checkpoint {
    /// Reads a checkpoint.
    pub fn read(path: &Path) -> Result<Checkpoint> {
        let text = std::fs::read_to_string(path)?;
        Ok(serde_json::from_str(&text)?)
    }

    fn write(&mut self, path: &Path) -> Result<()> {
        self.allocations = self
            .enis
            .iter()
            .flat_map(|e| &e.ips)
            .filter_map(|s| {
                let p = s.pod.as_ref()?;
                Some(Allocation {
                    network: "aws-cni".into(),
                    container_id: p.container_id.clone(),
                    ifname: p.ifname.clone(),
                    ipv4: s.ip,
                    metadata: serde_json::json!({"k8sPodNamespace": p.namespace, "k8sPodName": p.name}),
                })
            })
            .collect();
        crate::kernel::overlay::write_atomic(path, &serde_json::to_string_pretty(self)?)
    }

    fn total(&self) -> u32 {
        self.enis.iter().map(|e| e.ips.len() as u32).sum()
    }

    fn available(&self) -> u32 {
        self.enis
            .iter()
            .flat_map(|e| &e.ips)
            .filter(|s| s.pod.is_none())
            .count() as u32
    }
}

/// What the plugin asks (AddNetwork / DelNetwork).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// `add` or `del`.
    pub op: String,
    /// The pod.
    #[serde(flatten)]
    pub pod: PodKey,
}

/// ipamd's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Whether it succeeded.
    pub success: bool,
    /// The pod's address.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The ENI's device number.
    #[serde(default)]
    pub device: u32,
    /// The ENI's route table.
    #[serde(default)]
    pub table: u32,
    /// Why not.
    #[serde(default)]
    pub error: String,
}

/// What the pool should grow by: `None` when it is not too low, else how
/// many addresses it is short (0: a whole ENI's worth), as
/// isDatastorePoolTooLow and datastoreTargetState.
pub fn shortage(c: &AwsNode, total: u32, available: u32) -> Option<u32> {
    if total >= c.max_pods {
        return None;
    }
    let per_eni = c.ips_per_eni - 1;
    if c.warm_ip_target > 0 || c.minimum_ip_target > 0 {
        let short = (c.warm_ip_target as i64 - available as i64)
            .max(c.minimum_ip_target as i64 - total as i64)
            .max(0) as u32;
        return (short > 0).then_some(short);
    }
    let low = if c.warm_eni_target == 0 {
        available == 0
    } else {
        available < per_eni * c.warm_eni_target
    };
    low.then_some(0)
}

/// One step of increaseDatastorePool on the datastore: addresses for an
/// ENI with room (lowest device first), else a new ENI. Returns the
/// device and the addresses EC2 assigns, and whether it is a new ENI;
/// `None` when nothing can grow.
pub fn grow(c: &AwsNode, s: &Checkpoint, short: u32) -> Option<(u32, Vec<Ipv4Addr>, bool)> {
    let per_eni = (c.ips_per_eni - 1) as usize;
    let want = |have: usize| {
        let room = per_eni - have;
        if short == 0 { room } else { room.min(short as usize) }
    };
    for e in &s.enis {
        if e.ips.len() < per_eni {
            let plan = &c.enis[e.device as usize];
            let n = want(e.ips.len());
            let ips = plan.secondaries[e.ips.len()..e.ips.len() + n].to_vec();
            return Some((e.device, ips, false));
        }
    }
    let d = s.enis.len() as u32;
    if d >= c.max_enis {
        return None;
    }
    let n = want(0);
    Some((d, c.enis[d as usize].secondaries[..n].to_vec(), true))
}

/// The lowest device with a free address, its lowest one.
pub fn pick(s: &Checkpoint) -> Option<(usize, usize)> {
    for (i, e) in s.enis.iter().enumerate() {
        if let Some((j, _)) = e
            .ips
            .iter()
            .enumerate()
            .filter(|(_, x)| x.pod.is_none())
            .min_by_key(|(_, x)| u32::from(x.ip))
        {
            return Some((i, j));
        }
    }
    None
}

struct Ipamd {
    c: AwsNode,
    s: Checkpoint,
    nl: Nl,
    vpc: super::vpc::Vpc,
}

impl Ipamd {
    /// Grows the pool until it is not too low or cannot grow.
    async fn refill(&mut self) -> Result<()> {
        while let Some(short) = shortage(&self.c, self.s.total(), self.s.available()) {
            let Some((device, ips, new)) = grow(&self.c, &self.s, short) else {
                break;
            };
            if ips.is_empty() && !new {
                break;
            }
            let plan = self.c.enis[device as usize].clone();
            if new {
                info!(
                    "attaching ENI {} ({}, {}) with {} addresses",
                    device,
                    plan.ifname,
                    plan.primary,
                    ips.len()
                );
                super::vpc::attach_eni(&self.c, &plan, &self.nl, &self.vpc).await?;
                self.s.enis.push(Eni {
                    device,
                    ifname: plan.ifname.clone(),
                    primary: plan.primary,
                    table: plan.table(),
                    ips: Vec::new(),
                });
            } else {
                info!("assigning {} addresses to ENI {device}", ips.len());
            }
            self.vpc.assign(&plan, &ips).await?;
            let e = self.s.enis.iter_mut().find(|e| e.device == device).context("ENI")?;
            e.ips.extend(ips.into_iter().map(|ip| Slot { ip, pod: None }));
            self.s.write(&self.c.state)?;
        }
        Ok(())
    }

    async fn add(&mut self, pod: PodKey) -> Result<Reply> {
        // The same container asking again gets its address again.
        for e in &self.s.enis {
            if let Some(x) = e
                .ips
                .iter()
                .find(|x| x.pod.as_ref().is_some_and(|p| p.container_id == pod.container_id))
            {
                return Ok(Reply {
                    success: true,
                    ip: Some(x.ip),
                    device: e.device,
                    table: e.table,
                    error: String::new(),
                });
            }
        }
        // A refill that is due happens before the answer (see the module).
        self.refill().await?;
        let Some((i, j)) = pick(&self.s) else {
            warn!(
                "AssignPodIPAddress: no available IP/Prefix addresses for {}/{}",
                pod.namespace, pod.name
            );
            return Ok(Reply {
                error: "AssignPodIPAddress: no available IP/Prefix addresses".into(),
                ..Reply::default()
            });
        };
        let e = &mut self.s.enis[i];
        e.ips[j].pod = Some(pod.clone());
        let reply = Reply {
            success: true,
            ip: Some(e.ips[j].ip),
            device: e.device,
            table: e.table,
            error: String::new(),
        };
        info!(
            "assigned {} (ENI {}) to {}/{}",
            e.ips[j].ip, e.device, pod.namespace, pod.name
        );
        self.s.write(&self.c.state)?;
        self.refill().await?;
        Ok(reply)
    }

    fn del(&mut self, pod: PodKey) -> Result<Reply> {
        for e in &mut self.s.enis {
            if let Some(x) = e
                .ips
                .iter_mut()
                .find(|x| x.pod.as_ref().is_some_and(|p| p.container_id == pod.container_id))
            {
                x.pod = None;
                let reply = Reply {
                    success: true,
                    ip: Some(x.ip),
                    device: e.device,
                    table: e.table,
                    error: String::new(),
                };
                info!("released {} of {}/{}", x.ip, pod.namespace, pod.name);
                self.s.write(&self.c.state)?;
                return Ok(reply);
            }
        }
        Ok(Reply {
            error: "datastore: unknown pod".into(),
            ..Reply::default()
        })
    }
}

async fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let mut c: AwsNode = serde_json::from_str(&text).context("aws-node.json")?;
    let nl = Nl::connect()?;
    // The primary ENI is eth0 as the build made it.
    let eth0 = nl.link("eth0").await?.context("eth0 is missing")?;
    let mac = crate::kernel::nl::link_mac(&eth0).context("eth0 has no MAC")?;
    c.enis[0].mac = Some(crate::model::plan::mac_string(&mac));
    host_setup(&c, &nl).await?;
    let vpc = super::vpc::Vpc::open(&c).await?;
    let s = match Checkpoint::read(&c.state) {
        Ok(s) => {
            info!(
                "restored {} ENIs and {} allocations from {}",
                s.enis.len(),
                s.allocations.len(),
                c.state.display()
            );
            s
        }
        Err(_) => Checkpoint {
            version: "vpc-cni-ipam/1".into(),
            allocations: Vec::new(),
            enis: vec![Eni {
                device: 0,
                ifname: "eth0".into(),
                primary: c.enis[0].primary,
                table: net::MAIN,
                ips: Vec::new(),
            }],
        },
    };
    // Every attached ENI is there and the VPC knows its addresses (again,
    // after a restart).
    for e in &s.enis {
        let plan = &c.enis[e.device as usize];
        if e.device > 0 {
            super::vpc::attach_eni(&c, plan, &nl, &vpc).await?;
        } else {
            vpc.register_primary(plan).await?;
        }
        let ips: Vec<Ipv4Addr> = e.ips.iter().map(|x| x.ip).collect();
        vpc.assign(plan, &ips).await?;
    }
    let mut d = Ipamd { c, s, nl, vpc };
    d.s.write(&d.c.state)?;
    d.refill().await?;
    let _ = std::fs::remove_file(&d.c.socket);
    let listener =
        tokio::net::UnixListener::bind(&d.c.socket).with_context(|| format!("binding {}", d.c.socket.display()))?;
    info!(
        "ipamd ready: {} with {} ENIs x {} IPv4, max pods {}",
        d.c.instance_type, d.c.max_enis, d.c.ips_per_eni, d.c.max_pods
    );
    let serve = async {
        loop {
            let (stream, _) = listener.accept().await?;
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            BufReader::new(r).read_line(&mut line).await?;
            let reply = match serde_json::from_str::<Request>(&line) {
                Ok(req) if req.op == "add" => d.add(req.pod).await,
                Ok(req) if req.op == "del" => d.del(req.pod),
                Ok(req) => Err(anyhow!("unknown request {}", req.op)),
                Err(e) => Err(anyhow!("bad request: {e}")),
            }
            .unwrap_or_else(|e| Reply {
                error: format!("{e:#}"),
                ..Reply::default()
            });
            let mut out = serde_json::to_vec(&reply)?;
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        r = serve => r,
        r = crate::kernel::overlay::terminated() => r,
    }
}

/// The rules of network.go with the VPC CIDR and the primary address:
/// iptables-restore input for the mangle and nat tables, as iptables-save
/// prints them (docs/aws-vpc-cni-facts.md §4).
pub fn iptables_rules(vpc_cidr: &str, primary: Ipv4Addr) -> String {
    let restore = "-j CONNMARK --restore-mark --nfmask 0x80 --ctmask 0x80";
    format!(
        "*mangle\n\
-A PREROUTING -i eth0 -m comment --comment \"AWS, primary ENI\" -m addrtype --dst-type LOCAL --limit-iface-in -j CONNMARK --set-xmark 0x80/0x80\n\
-A PREROUTING -i eni+ -m comment --comment \"AWS, primary ENI\" {restore}\n\
-A PREROUTING -i vlan+ -m comment --comment \"AWS, primary ENI\" {restore}\n\
COMMIT\n\
*nat\n\
:AWS-CONNMARK-CHAIN-0 - [0:0]\n\
:AWS-SNAT-CHAIN-0 - [0:0]\n\
-A PREROUTING -i eni+ -m comment --comment \"AWS, outbound connections\" -j AWS-CONNMARK-CHAIN-0\n\
-A PREROUTING -m comment --comment \"AWS, CONNMARK\" {restore}\n\
-A POSTROUTING -m comment --comment \"AWS SNAT CHAIN\" -j AWS-SNAT-CHAIN-0\n\
-A AWS-CONNMARK-CHAIN-0 -d {vpc_cidr} -m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN\n\
-A AWS-CONNMARK-CHAIN-0 -m comment --comment \"AWS, CONNMARK\" -j CONNMARK --set-xmark 0x80/0x80\n\
-A AWS-SNAT-CHAIN-0 -d {vpc_cidr} -m comment --comment \"AWS SNAT CHAIN\" -j RETURN\n\
-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source {primary} --random-fully\n\
COMMIT\n"
    )
}

/// aws-vpc-cni-init and SetupHostNetwork: rp_filter loose on eth0,
/// forwarding (the AMI's), rule 1024, the mangle and nat rules (once).
async fn host_setup(c: &AwsNode, nl: &Nl) -> Result<()> {
    netns::write_sysctl("net/ipv4/conf/eth0/rp_filter", "2")?;
    netns::write_sysctl("net/ipv4/ip_forward", "1")?;
    net::add_rule(nl, net::rule(net::HOST_PRIO, Match::Mark(net::CONNMARK), net::MAIN)).await?;
    let have = std::process::Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "AWS-SNAT-CHAIN-0"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        let rules = iptables_rules(&c.vpc_cidr.to_string(), c.enis[0].primary);
        let mut child = std::process::Command::new("iptables-restore")
            .args(["-w", "--noflush"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("iptables-restore")?;
        use std::io::Write as _;
        child.stdin.take().context("stdin")?.write_all(rules.as_bytes())?;
        let st = child.wait()?;
        anyhow::ensure!(st.success(), "iptables-restore of the AWS rules failed");
    }
    Ok(())
}

/// The plugin's side: one request to ipamd, within `deadline`.
pub fn call(socket: &Path, req: &Request, deadline: std::time::Duration) -> Result<Reply> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(deadline))?;
    s.set_write_timeout(Some(deadline))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut out = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut out)
        .context("reading ipamd's reply")?;
    serde_json::from_str(&out).context("ipamd's reply")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(enis: u32, ips: u32) -> AwsNode {
        let text = format!(
            "name = \"a\"\n[network]\ncni = \"aws-vpc\"\n[[switch]]\nname = \"vpc\"\nsubnet = \"10.0.1.0/24\"\n[[router]]\nname = \"r\"\nswitches = [\"vpc\"]\n[[node]]\nname = \"n\"\nmax_enis = {enis}\nips_per_eni = {ips}\n"
        );
        let t = crate::profile::parse_topology(&crate::model::error::Source::new("t.toml", &text)).unwrap();
        let paths = crate::model::paths::LabPaths::new(Path::new("/run/cnilab"), "a");
        let plan = crate::profile::plan_lab(&t, "a", &paths);
        plan.profile.downcast::<super::super::AwsVpcPlan>().unwrap().nodes[0].clone()
    }

    fn empty() -> Checkpoint {
        Checkpoint {
            version: "vpc-cni-ipam/1".into(),
            allocations: Vec::new(),
            enis: vec![Eni {
                device: 0,
                ifname: "eth0".into(),
                primary: Ipv4Addr::new(10, 0, 1, 10),
                table: 254,
                ips: Vec::new(),
            }],
        }
    }

    /// Runs the pool as ipamd does, on the datastore alone.
    fn fill(c: &AwsNode, s: &mut Checkpoint) {
        while let Some(short) = shortage(c, s.total(), s.available()) {
            let Some((d, ips, new)) = grow(c, s, short) else { break };
            if new {
                s.enis.push(Eni {
                    device: d,
                    ifname: format!("eth{d}"),
                    primary: c.enis[d as usize].primary,
                    table: d + 1,
                    ips: Vec::new(),
                });
            }
            s.enis[d as usize]
                .ips
                .extend(ips.into_iter().map(|ip| Slot { ip, pod: None }));
        }
    }

    fn take(s: &mut Checkpoint, i: usize) -> Option<u32> {
        let (a, b) = pick(s)?;
        s.enis[a].ips[b].pod = Some(PodKey {
            namespace: "default".into(),
            name: format!("p{i}"),
            container_id: format!("c{i}"),
            ifname: "eth0".into(),
        });
        Some(s.enis[a].device)
    }

    #[test]
    fn warm_eni_target_one_attaches_an_eni_after_the_first_pod() {
        let c = node(3, 10);
        let mut s = empty();
        fill(&c, &mut s);
        assert_eq!((s.enis.len(), s.total()), (1, 9));
        assert_eq!(take(&mut s, 1), Some(0));
        fill(&c, &mut s);
        assert_eq!((s.enis.len(), s.total(), s.available()), (2, 18, 17));
        let mut devices = vec![0];
        for i in 2..=27 {
            devices.push(take(&mut s, i).unwrap());
            fill(&c, &mut s);
        }
        assert_eq!(devices.iter().filter(|d| **d == 0).count(), 9);
        assert_eq!(devices.iter().filter(|d| **d == 2).count(), 9);
        assert_eq!((s.enis.len(), s.total(), s.available()), (3, 27, 0));
        assert_eq!(take(&mut s, 28), None);
    }

    #[test]
    fn a_t3_nano_holds_two() {
        let c = node(2, 2);
        let mut s = empty();
        fill(&c, &mut s);
        assert_eq!(take(&mut s, 1), Some(0));
        fill(&c, &mut s);
        assert_eq!(take(&mut s, 2), Some(1));
        fill(&c, &mut s);
        assert_eq!(take(&mut s, 3), None);
    }

    #[test]
    fn warm_ip_target_assigns_only_what_is_short() {
        let mut c = node(3, 10);
        c.warm_ip_target = 2;
        let mut s = empty();
        fill(&c, &mut s);
        assert_eq!((s.enis.len(), s.total()), (1, 2));
        take(&mut s, 1);
        fill(&c, &mut s);
        assert_eq!((s.enis.len(), s.total(), s.available()), (1, 3, 2));
    }

    #[test]
    fn rules_follow_network_go() {
        let r = iptables_rules("10.0.0.0/16", Ipv4Addr::new(10, 0, 1, 10));
        assert!(r.contains("-A AWS-SNAT-CHAIN-0 ! -o vlan+ -m comment --comment \"AWS, SNAT\" -m addrtype ! --dst-type LOCAL -j SNAT --to-source 10.0.1.10 --random-fully\n"));
        assert!(r.contains(
            "-A AWS-CONNMARK-CHAIN-0 -d 10.0.0.0/16 -m comment --comment \"AWS CONNMARK CHAIN\" -j RETURN\n"
        ));
    }
}
