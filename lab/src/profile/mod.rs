//! CNI profiles, each behind [`Profile`], in the spirit of netavark's
//! `NetworkDriver`.
//!
//! A profile is one folder, `profile/<name>/`: its plan (leases or blocks,
//! MTU rule, conflist, agents), its build and readiness (what "converged"
//! means), and what observation needs from it (overlay devices, capture
//! port, address owners, graph lines and edges, doctor requirements). Its
//! saved decisions, a [`ProfilePlan`], are what the lab's state keeps
//! (`{"cni": "<name>", ...}`): reading one finds the profile by its `cni`
//! in [`PROFILES`] (the one dispatch on a profile's name) and gives
//! `&dyn Profile`; everything outside the profile's folder goes through the
//! trait (a `ProfilePlan` derefs to it).
//!
//! A profile also owns its options (`profile/<name>/options.rs`): it reads
//! `[network.<name>]` for the topology's parser through
//! [`topology::ProfileSyntax`], and reads its options back when it plans.
//! The model layer below (topology, plan) and the runtime know no profile:
//! [`parse_topology`] and [`load_topology`] give the parser the profiles'
//! syntaxes, [`plan_lab`] plans a lab with its profile, and [`Plan`] and
//! [`Built`] name the model's and runtime's types with [`ProfilePlan`].
//!
//! Adding a profile: a new folder `profile/<name>/` with its options'
//! `Syntax`, a plan type (`Clone + Serialize + Deserialize`) that
//! implements [`Profile`], and its [`Registered`] entry (syntax, planner,
//! programs, loader); then its `pub mod` and one entry in [`PROFILES`].

pub mod awsvpc;
pub mod calico;
pub mod canal;
pub mod flannel;
pub mod weave;

use std::net::Ipv4Addr;

use anyhow::Result;
use futures::future::BoxFuture;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::kernel::runtime;
use crate::model::error::{Error, InputError, Source};
use crate::model::paths::LabPaths;
use crate::model::plan::BirdPlan;
use crate::model::plan::{NodePlan, RouterPlan};
use crate::model::topology::{self, ProfileSyntax, Topology};

pub use crate::kernel::runtime::AgentSpec;

/// A profile's decisions for a lab, as the lab's state saves them
/// (`{"cni": "<name>", ...}`): the profile behind `&dyn Profile`. Saving
/// asks the profile ([`Saved::save`]); reading finds the profile by its
/// `cni` in [`PROFILES`] and lets it read the rest, so no code outside a
/// profile's folder names its type.
pub struct ProfilePlan(Box<dyn Profile>);

impl ProfilePlan {
    /// A profile's plan.
    pub fn new(profile: impl Profile + 'static) -> ProfilePlan {
        ProfilePlan(Box::new(profile))
    }

    /// The profile behind the saved plan.
    pub fn get(&self) -> &dyn Profile {
        self.0.as_ref()
    }

    /// The profile's own plan type, for the profile's own code.
    pub fn downcast<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

impl std::ops::Deref for ProfilePlan {
    type Target = dyn Profile;

    fn deref(&self) -> &(dyn Profile + 'static) {
        self.0.as_ref()
    }
}

impl Clone for ProfilePlan {
    fn clone(&self) -> ProfilePlan {
        ProfilePlan(self.0.clone_box())
    }
}

impl std::fmt::Debug for ProfilePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ProfilePlan").field(&self.0.name()).finish()
    }
}

impl Serialize for ProfilePlan {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = self.0.save().map_err(serde::ser::Error::custom)?;
        let serde_json::Value::Object(fields) = &mut v else {
            return Err(serde::ser::Error::custom("a profile's plan saves as a table"));
        };
        fields.insert("cni".into(), self.0.name().into());
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ProfilePlan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ProfilePlan, D::Error> {
        use serde::de::Error as _;
        let mut v = serde_json::Value::deserialize(d)?;
        let cni = v
            .as_object_mut()
            .and_then(|m| m.remove("cni"))
            .and_then(|c| c.as_str().map(str::to_string))
            .ok_or_else(|| D::Error::missing_field("cni"))?;
        let entry = PROFILES
            .iter()
            .find(|p| p.syntax.name() == cni)
            .ok_or_else(|| D::Error::custom(format!("no profile \"{cni}\" is registered")))?;
        (entry.load)(v).map_err(D::Error::custom)
    }
}

/// What every profile plan can do as a saved value; implemented for every
/// [`Profile`] that is `Clone + Serialize`.
pub trait Saved {
    /// Its fields as JSON, without the `cni` tag.
    fn save(&self) -> serde_json::Result<serde_json::Value>;
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn Profile>;
    /// For [`ProfilePlan::downcast`].
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<T: Profile + Clone + Serialize + 'static> Saved for T {
    fn save(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self)
    }

    fn clone_box(&self) -> Box<dyn Profile> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Reads a profile's saved plan as its type `T`: a [`Registered::load`].
pub fn load_as<T: Profile + serde::de::DeserializeOwned + 'static>(
    v: serde_json::Value,
) -> serde_json::Result<ProfilePlan> {
    serde_json::from_value::<T>(v).map(ProfilePlan::new)
}

/// The registry of profiles, the default (`cni` left out) first.
pub const PROFILES: &[Registered] = &[
    flannel::REGISTERED,
    calico::REGISTERED,
    canal::REGISTERED,
    weave::REGISTERED,
    awsvpc::REGISTERED,
];

/// A profile in the registry: how the topology's parser reads its options,
/// how it plans a lab, and the programs it runs as.
pub struct Registered {
    /// How its options are read.
    pub syntax: &'static dyn ProfileSyntax,
    /// Plans its part of a lab from the validated topology and the nodes;
    /// it may give routers BGP peers.
    pub plan: fn(&Topology, &[NodePlan], &mut [RouterPlan], &LabPaths) -> ProfilePlan,
    /// Its multi-call programs (CNI plugins and agents).
    pub programs: &'static [Program],
    /// Reads its saved plan (the lab's state, without the `cni` tag).
    pub load: fn(serde_json::Value) -> serde_json::Result<ProfilePlan>,
    /// The sysctls its CNI plugin sets on a host-side link named so (keys
    /// as under /proc/sys; none when the name is not its plugin's).
    pub host_link_sysctls: fn(&str) -> Vec<String>,
}

/// What a node's policy engine programs: `iptables-restore --noflush`
/// input for its chains, `ipset restore` input for its sets, the names of
/// both (anything else of the engine's, by `prefixes`, is stale), and the
/// rules it keeps in built-in chains (FORWARD, INPUT) to send traffic
/// through its chains.
#[derive(Debug, Clone)]
pub struct PolicyState {
    /// iptables-restore input.
    pub iptables: String,
    /// ipset restore input.
    pub ipsets: String,
    /// Every chain it declares.
    pub chains: Vec<String>,
    /// Every set it creates.
    pub sets: Vec<String>,
    /// Rules at the top of built-in chains, in order: (chain, rule as after
    /// `-A <chain> `). Where one of a chain's is missing, all of that
    /// chain's are deleted and inserted again at its top in this order
    /// (weave's `ensureRulesAtTop`; felix's one jump the same way).
    pub top: Vec<(&'static str, String)>,
    /// Rules at the end of built-in chains, in order, each appended where
    /// missing.
    pub append: Vec<(&'static str, String)>,
    /// What its chains' and sets' names start with (one or more prefixes).
    pub prefixes: Vec<&'static str>,
}

impl PolicyState {
    /// Whether a chain or set of this name is the engine's (by its prefixes).
    pub fn owns(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| name.starts_with(p))
    }
}

/// How the topology's parser reads each profile's options.
fn syntaxes() -> Vec<&'static dyn ProfileSyntax> {
    PROFILES.iter().map(|p| p.syntax).collect()
}

/// A lab's plan with its profile's decisions.
pub type Plan = crate::model::plan::Plan<ProfilePlan>;

/// What the core build made, for a profile to build on.
pub type Built<'a> = runtime::Built<'a, ProfilePlan>;

/// Parses and validates a topology from its source text
/// ([`topology::parse`] with every profile's options).
pub fn parse_topology(src: &Source) -> Result<Topology, InputError> {
    topology::parse(src, &syntaxes())
}

/// Reads and validates a topology file ([`Topology::load`] with every
/// profile's options).
pub fn load_topology(path: &std::path::Path) -> Result<Topology, Error> {
    Topology::load(path, &syntaxes())
}

/// `--<profile> VALUE` of `up` and `run`: runs `value`'s implementation of
/// the profile named `profile`. `Ok(false)` when the topology has another
/// profile (the caller says whether that is a mistake).
pub fn set_implementation(profile: &str, t: &mut Topology, value: &str) -> Result<bool, Error> {
    // canal runs flannel's overlay, so --flannel chooses its flannel too.
    let name = t.network.profile.name();
    if name != profile && !(profile == "flannel" && name == "canal") {
        return Ok(false);
    }
    let syntax = PROFILES
        .iter()
        .find(|p| p.syntax.name() == name)
        .map(|p| p.syntax)
        .ok_or_else(|| Error::usage(format!("no profile \"{profile}\""), "see docs/topology.md"))?;
    syntax.set_implementation(t, value)?;
    Ok(true)
}

/// Plans a lab named `lab` from `topology`, its state kept under `paths`.
pub fn plan_lab(topology: &Topology, lab: &str, paths: &LabPaths) -> Plan {
    Plan::new(topology, lab, |nodes, routers| plan(topology, nodes, routers, paths))
}

/// Plans the profile's part of a lab.
fn plan(topology: &Topology, nodes: &[NodePlan], routers: &mut [RouterPlan], paths: &LabPaths) -> ProfilePlan {
    let name = topology.network.profile.name();
    let profile = PROFILES
        .iter()
        .find(|p| p.syntax.name() == name)
        .unwrap_or_else(|| panic!("no profile \"{name}\" is registered"));
    (profile.plan)(topology, nodes, routers, paths)
}

/// The options the profile's syntax read from `topology`, as its own type.
pub fn options_of<T: serde::de::DeserializeOwned>(topology: &Topology) -> T {
    let options = &topology.network.profile;
    options
        .get()
        .unwrap_or_else(|| panic!("the options of cni = \"{}\" were not validated", options.name()))
}

/// A profile's options as the topology keeps them.
pub fn to_options(options: &impl Serialize) -> topology::Options {
    topology::Options::of(options).unwrap_or_else(|e| panic!("a profile's options serialize as a table: {e}"))
}

/// A program cnilab is, by the name it runs under (`argv[0]`): the profiles'
/// CNI plugins and agents.
pub type Program = (&'static str, fn() -> !);

/// Every profile's multi-call programs.
pub fn programs() -> Vec<Program> {
    PROFILES.iter().flat_map(|p| p.programs.iter().copied()).collect()
}

/// Sysctls a profile's CNI plugin sets on a host-side link named `ifname`
/// (keys as under /proc/sys), whichever profile made it.
pub fn host_link_sysctls(ifname: &str) -> Vec<String> {
    // Profiles that share a plugin (calico and canal) name its sysctls once.
    let mut keys: Vec<String> = Vec::new();
    for k in PROFILES.iter().flat_map(|p| (p.host_link_sysctls)(ifname)) {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys
}

/// What a pod add needs a profile to know about the lab.
pub struct PodAdd<'a> {
    /// The lab's plan.
    pub plan: &'a Plan,
    /// The lab's folders.
    pub paths: &'a LabPaths,
    /// The node the pod goes on.
    pub node: &'a str,
    /// How many pods of the node hold an address now.
    pub in_use: u64,
}

/// Saves a profile's changed plan in the lab's state.
pub type SavePlan<'a> = &'a mut (dyn FnMut(ProfilePlan) -> Result<()> + Send);

/// A node router's view of one peer ([`Profile::overlay_peers`]), as
/// Weave's `weave status connections` gives it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct OverlayPeer {
    /// The node whose router this is.
    pub on: String,
    /// The peer, as `name(nickname)`.
    pub peer: String,
    /// Its address and port.
    pub address: String,
    /// `established`, `pending` or `disconnected`.
    pub state: String,
    /// Live mesh connections to it.
    pub connections: usize,
    /// MACs the router has learned at it.
    pub macs: usize,
}

/// A bridge overlay ([`Profile::bridge_overlay`]).
#[derive(Debug, Clone, Copy)]
pub struct BridgeOverlay {
    /// The bridge.
    pub bridge: &'static str,
    /// Its port whose other end the router holds.
    pub port: &'static str,
    /// That other end.
    pub router_end: &'static str,
    /// The UDP port between nodes.
    pub udp_port: u16,
    /// The router's program.
    pub agent: &'static str,
    /// Bytes the UDP datagram adds to an IP packet (outer IP and UDP, and
    /// the overlay's own header and the inner Ethernet header).
    pub overhead: u32,
}

/// A CNI profile: its plan for a lab and everything the rest of cnilab asks
/// of it. Node arguments are node names.
pub trait Profile: Saved + Send + Sync {
    /// Its name, as in `cni = "..."`.
    fn name(&self) -> &'static str;

    /// A one-line description, e.g. `flannel vxlan (VNI 1, port 8472)`.
    fn describe(&self) -> String;

    /// Its settings as `status` lists them (`network.<name>.<key>`), from
    /// the topology's options.
    fn settings(&self, topology: &Topology) -> Vec<(String, String)>;

    /// A node's agents (started in node order, before routers' BIRDs).
    fn node_agents(&self, node: &NodePlan, paths: &LabPaths) -> Vec<AgentSpec>;

    /// Every agent of the lab: nodes' in node order, then routers'.
    fn agents(&self, plan: &Plan, paths: &LabPaths) -> Vec<AgentSpec> {
        let mut v: Vec<AgentSpec> = plan.nodes.iter().flat_map(|n| self.node_agents(n, paths)).collect();
        for r in &plan.routers {
            if let Some(b) = &r.bird {
                v.push(crate::kernel::runtime::bird_agent(
                    &r.name,
                    &r.ns,
                    paths.router_dir(&r.name),
                    &b.config,
                ));
            }
        }
        v
    }

    /// The name of the node agent's program.
    fn agent_name(&self) -> &'static str;

    /// The etcd prefix the profile keeps its keys under, with an etcd
    /// datastore (snapshots and status show what is there).
    fn etcd_prefix(&self) -> Option<&str> {
        None
    }

    /// A node's CNI configuration list.
    fn conflist(&self, node: &str) -> Option<&serde_json::Value>;

    /// The MTU a node's pods get.
    fn pod_mtu(&self, node: &str) -> Option<u32>;

    /// A node's (first) pod subnet.
    fn pod_subnet(&self, node: &str) -> Option<Ipv4Net>;

    /// Every pod subnet a node holds.
    fn pod_subnets(&self, node: &str) -> Vec<Ipv4Net> {
        self.pod_subnet(node).into_iter().collect()
    }

    /// The gateway every pod routes through, when the profile fixes one
    /// (otherwise the CNI result's).
    fn pod_gateway(&self) -> Option<Ipv4Addr> {
        None
    }

    /// A node's overlay device and its MTU.
    fn overlay(&self, node: &str) -> Option<(String, u32)>;

    /// The UDP port of its VXLAN overlay, for `capture` to decode.
    fn vxlan_port(&self) -> Option<u16>;

    /// The UDP port of an overlay that carries bare IP packets as UDP
    /// payload (flannel's udp backend), which tcpdump cannot decode, for
    /// `capture` to say so.
    fn ip_in_udp_port(&self) -> Option<u16> {
        None
    }

    /// The UDP port of an overlay whose datagrams the profile decodes
    /// itself (Weave's sleeve), for `capture` to say so and decode them
    /// with [`Profile::decode_sleeve`].
    fn sleeve_port(&self) -> Option<u16> {
        None
    }

    /// What one UDP payload on [`Profile::sleeve_port`] carries, a line
    /// each (`None` when it is not the profile's).
    fn decode_sleeve(&self, _payload: &[u8]) -> Option<Vec<String>> {
        None
    }

    /// A bridge whose frames for other nodes leave through one of its ports
    /// to a userspace router, which carries them in UDP to the node that
    /// has the destination (Weave's `weave` bridge, `vethwe-bridge`,
    /// weaver's sleeve on UDP 6783), for `trace` to follow.
    fn bridge_overlay(&self) -> Option<BridgeOverlay> {
        None
    }

    /// Each node router's view of its peers, as the routers last wrote it
    /// (`status` shows them).
    fn overlay_peers(&self, _paths: &LabPaths) -> Vec<OverlayPeer> {
        Vec::new()
    }

    /// The label of the overlay tunnels between nodes in `graph`.
    fn tunnel_label(&self) -> Option<String>;

    /// The lines of a node's box in `graph` after eth0, and what its pods'
    /// boxes show before they have addresses: (text, pod MTU).
    fn graph_lines(&self, node: &str) -> (Vec<String>, Option<(String, u32)>);

    /// The BIRDs in nodes: (node, its AS, its plan).
    fn node_birds(&self) -> Vec<(&str, u32, &BirdPlan)> {
        Vec::new()
    }

    /// Addresses the profile gives nodes' devices, for `trace` to name:
    /// (address, what holds it, its namespace).
    fn address_owners(&self, _plan: &Plan) -> Vec<(Ipv4Addr, String, String)> {
        Vec::new()
    }

    /// Kernel features its data plane needs (doctor and `up` check them).
    fn kernel_features(&self) -> Vec<&'static str>;

    /// Kernel features its data plane would use but does without, and
    /// what it does then (doctor reports a missing one so, not as a fault).
    fn optional_kernel_features(&self) -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }

    /// Programs its nodes run beyond the CNI plugins (doctor checks them).
    fn programs_needed(&self) -> Vec<String> {
        Vec::new()
    }

    /// Checks this machine for what the profile runs beyond the tools
    /// `programs_needed` names (a user's own binaries, say), before
    /// anything is made.
    fn preflight(&self) -> Result<(), crate::model::error::Error> {
        Ok(())
    }

    /// Why no machine can build it, though the topology is valid:
    /// (message, fix).
    fn unbuildable(&self) -> Option<(String, String)> {
        None
    }

    /// Writes its configuration and starts its agents in a built lab,
    /// waiting until each is ready. Returns each agent's (owner, PID).
    fn start<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<Vec<(String, u32)>>>;

    /// Waits until its control plane has converged.
    fn converge<'a>(&'a self, b: &'a Built<'_>) -> BoxFuture<'a, Result<()>>;

    /// The files a node's agent keeps in /run, which a reboot clears
    /// (`agent-down --reboot` removes them).
    fn agent_run_files(&self, _node: &str, _paths: &LabPaths) -> Vec<std::path::PathBuf> {
        Vec::new()
    }

    /// The MAC the plan gives a node's VTEP, when the profile chooses it.
    fn planned_vtep_mac(&self, _node: &str) -> Option<String> {
        None
    }

    /// Just before a node's agent starts (at `up`, or again after a fault
    /// stopped it): what the profile makes beside the agent, with `mac`
    /// for its device when a fault asks for a new one.
    fn prepare_agent<'a>(
        &'a self,
        _node: &'a NodePlan,
        _nl: &'a crate::kernel::nl::Nl,
        _mac: Option<&'a str>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether its nodes enforce Kubernetes NetworkPolicy: whether it has a
    /// policy engine (felix in Calico and Canal, weave-npc in Weave);
    /// flannel and aws-vpc enforce none.
    fn enforces_policy(&self) -> bool {
        self.policy_state(&crate::model::netpol::World::default(), &[], "")
            .is_some()
    }

    /// What its policy engine programs on `node` for `policies` acting on
    /// `world` (felix's chains and sets in Calico and Canal); `None` where
    /// it enforces no policy.
    fn policy_state(
        &self,
        _world: &crate::model::netpol::World,
        _policies: &[crate::model::netpol::NetworkPolicy],
        _node: &str,
    ) -> Option<PolicyState> {
        None
    }

    /// What `status` shows of a node beyond the common columns: (key,
    /// value), e.g. aws-vpc's instance type, ENIs, addresses, max pods.
    fn node_status(&self, _node: &str, _paths: &LabPaths) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Whether its switches drop a frame whose source address the sending
    /// port's device does not hold (aws-vpc: EC2's source/dest check), for
    /// `trace` to judge.
    fn switch_checks_source(&self) -> bool {
        false
    }

    /// Before a pod is added: the profile may change its plan (Calico
    /// claims another block for a full node), saved through `save`.
    fn before_pod_add<'a>(&'a self, _pod: PodAdd<'a>, _save: SavePlan<'a>) -> BoxFuture<'a, Result<()>> {
        Box::pin(async { Ok(()) })
    }
}
