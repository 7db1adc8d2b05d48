//! Calico's IPAM blocks, as libcalico-go's `lib/ipam` hands them out: each
//! host walks the pool from its own random starting block and claims the
//! first block nobody holds (`randomBlockGenerator`, `findUsableBlock`);
//! when every block affine to the host is full, `autoAssign` claims another
//! the same way, up to a per-host limit (`maxNumBlocks`: the request's, else
//! IPAMConfig's `maxBlocksPerHost`, else 20). cnilab draws the random starts
//! from the seed, plans as many blocks as a node's pods need, and claims
//! more at `pod add` time. Borrowing addresses from other hosts' blocks
//! (non-strict affinity, when the pool has no free block left) is not done.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use rand::RngExt;

use super::CalicoPlan;
use crate::model::plan::{Stream, rng};

/// The per-host block limit Calico applies when neither the request nor
/// IPAMConfig sets one (libcalico-go ipam.go, autoAssign: `maxNumBlocks = 20`).
pub const MAX_BLOCKS_PER_HOST: usize = 20;

/// How many addresses host-local gives out of one block: all but the first
/// (the range's "gateway", kept for Calico's tunnel address) and the last
/// (host-local never hands out an IPv4 range's broadcast address).
pub fn block_capacity(block_size: u8) -> u32 {
    let size = 1u64 << (32 - u32::from(block_size.min(32)));
    size.saturating_sub(2) as u32
}

/// Every block of the pool, in address order.
fn block_at(pool: Ipv4Net, block_size: u8, index: u64) -> Ipv4Net {
    let size = 1u64 << (32 - block_size);
    let addr = Ipv4Addr::from((u64::from(u32::from(pool.network())) + index * size) as u32);
    Ipv4Net::new(addr, block_size).expect("valid prefix")
}

fn block_count(pool: Ipv4Net, block_size: u8) -> u64 {
    1u64 << (block_size - pool.prefix_len())
}

/// Each node's random starting block (an index into the pool), in node
/// order, drawn from the seed as Calico draws it from the host name.
pub fn walk_starts(pool: Ipv4Net, block_size: u8, nodes: usize, seed: u64) -> Vec<u64> {
    let mut r = rng(seed, Stream::Leases);
    let total = block_count(pool, block_size);
    (0..nodes).map(|_| r.random_range(0..total)).collect()
}

/// The first block from `start` on, wrapping around, that nobody holds.
pub fn next_free(pool: Ipv4Net, block_size: u8, start: u64, taken: &BTreeSet<Ipv4Net>) -> Option<Ipv4Net> {
    let total = block_count(pool, block_size);
    (0..total)
        .map(|i| block_at(pool, block_size, (start + i) % total))
        .find(|b| !taken.contains(b))
}

/// How many blocks a node needs for `pods` pods: enough for them all, or
/// for `max_pods` when that is lower; at least one (Calico claims the first
/// with the first pod; cnilab plans it with the node), at most the limit.
pub fn blocks_wanted(pods: usize, max_pods: Option<u32>, block_size: u8) -> usize {
    let want = max_pods.map_or(pods, |m| pods.min(m as usize));
    let cap = block_capacity(block_size).max(1) as usize;
    want.div_ceil(cap).clamp(1, MAX_BLOCKS_PER_HOST)
}

/// Plans the blocks of every node: first one block each, in node order (so
/// adding pods never moves another node's first block), then the further
/// blocks each node needs, in node order. A node whose further block finds
/// the pool exhausted gets fewer; host-local then reports it full.
pub fn plan_blocks(pool: Ipv4Net, block_size: u8, wanted: &[usize], seed: u64) -> Vec<Vec<Ipv4Net>> {
    let starts = walk_starts(pool, block_size, wanted.len(), seed);
    let mut taken = BTreeSet::new();
    let mut out: Vec<Vec<Ipv4Net>> = Vec::with_capacity(wanted.len());
    for start in &starts {
        let b = next_free(pool, block_size, *start, &taken).expect("validation guarantees a block per node");
        taken.insert(b);
        out.push(vec![b]);
    }
    for (i, want) in wanted.iter().enumerate() {
        while out[i].len() < *want {
            let Some(b) = next_free(pool, block_size, starts[i], &taken) else {
                break;
            };
            taken.insert(b);
            out[i].push(b);
        }
    }
    out
}

/// host-local's range set over a node's blocks, one range per block: the
/// block's first address kept out as the range's gateway, and the ranges
/// together holding no more than `max_pods` addresses.
pub fn ranges(blocks: &[Ipv4Net], max_pods: Option<u32>) -> Vec<serde_json::Value> {
    let mut left = max_pods.map(u64::from);
    let mut out = Vec::new();
    for b in blocks {
        let first = Ipv4Addr::from(u32::from(b.network()) + 1);
        let mut range = serde_json::json!({
            "subnet": b.to_string(),
            "rangeStart": first.to_string(),
            "gateway": b.network().to_string(),
        });
        if let Some(l) = left {
            if l == 0 {
                break;
            }
            let cap = u64::from(block_capacity(b.prefix_len()));
            if l < cap {
                range["rangeEnd"] = serde_json::json!(Ipv4Addr::from(u32::from(b.network()) + l as u32).to_string());
            }
            left = Some(l.saturating_sub(cap));
        }
        out.push(range);
    }
    out
}

/// The block a node claims next: the first free one from its own starting
/// block; or why it cannot, in Calico's words, with the fix.
pub fn claim_next(c: &CalicoPlan, node_index: usize, seed: u64) -> Result<Ipv4Net, String> {
    let n = &c.nodes[node_index];
    if n.blocks().count() >= MAX_BLOCKS_PER_HOST {
        return Err(format!(
            "Need to allocate an IPAM block but could not - limit of {MAX_BLOCKS_PER_HOST} blocks reached for this node \
             (Calico's default maxBlocksPerHost); use a shorter block_size for larger blocks, or add the pod to another node"
        ));
    }
    let taken: BTreeSet<Ipv4Net> = c.nodes.iter().flat_map(|n| n.blocks()).collect();
    let starts = walk_starts(c.pool, c.block_size, c.nodes.len(), seed);
    next_free(c.pool, c.block_size, starts[node_index], &taken).ok_or_else(|| {
        format!(
            "No more free affine blocks: every block of the pool {} is claimed; use a larger pod_cidr",
            c.pool
        )
    })
}

/// Addresses a node's range set holds.
pub fn capacity(c: &CalicoPlan, node_index: usize, max_pods: Option<u32>) -> u64 {
    let n = &c.nodes[node_index];
    let all = n.blocks().count() as u64 * u64::from(block_capacity(c.block_size));
    max_pods.map_or(all, |m| all.min(u64::from(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn a_block_holds_all_but_its_first_and_last_address() {
        assert_eq!(block_capacity(26), 62);
        assert_eq!(block_capacity(28), 14);
        assert_eq!(block_capacity(31), 0);
    }

    #[test]
    fn nodes_get_as_many_blocks_as_their_pods_need_within_the_limits() {
        assert_eq!(blocks_wanted(0, None, 26), 1);
        assert_eq!(blocks_wanted(62, None, 26), 1);
        assert_eq!(blocks_wanted(63, None, 26), 2);
        assert_eq!(blocks_wanted(100, None, 26), 2);
        assert_eq!(blocks_wanted(20, None, 28), 2);
        assert_eq!(blocks_wanted(20, Some(4), 28), 1, "max_pods bounds the range");
        assert_eq!(blocks_wanted(10_000, None, 28), MAX_BLOCKS_PER_HOST);
    }

    #[test]
    fn further_blocks_follow_the_first_from_the_nodes_own_start() {
        let pool = net("10.244.0.0/22");
        let one = plan_blocks(pool, 28, &[1, 1, 1], 7);
        let more = plan_blocks(pool, 28, &[3, 1, 2], 7);
        // First blocks do not move when a node needs more.
        let firsts: Vec<Ipv4Net> = more.iter().map(|b| b[0]).collect();
        assert_eq!(firsts, one.iter().map(|b| b[0]).collect::<Vec<_>>());
        assert_eq!(more.iter().map(Vec::len).collect::<Vec<_>>(), [3, 1, 2]);
        let all: BTreeSet<Ipv4Net> = more.iter().flatten().copied().collect();
        assert_eq!(all.len(), 6, "no block is given twice");
        assert!(all.iter().all(|b| pool.contains(b) && b.prefix_len() == 28));
        assert_eq!(
            plan_blocks(pool, 28, &[3, 1, 2], 7),
            more,
            "deterministic from the seed"
        );
        // The walk goes on from the node's start: the next free block upward.
        let starts = walk_starts(pool, 28, 3, 7);
        let taken: BTreeSet<Ipv4Net> = more[1..].iter().flatten().copied().collect();
        let mut walk = taken.clone();
        walk.insert(more[0][0]);
        assert_eq!(next_free(pool, 28, starts[0], &walk), Some(more[0][1]));
    }

    #[test]
    fn an_exhausted_pool_gives_fewer_blocks_instead_of_failing() {
        let b = plan_blocks(net("10.0.0.0/26"), 28, &[3, 3], 1);
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 4);
        assert!(b.iter().all(|x| !x.is_empty()));
    }

    #[test]
    fn the_range_set_has_one_range_per_block_trimmed_to_max_pods() {
        let blocks = [net("10.0.0.0/28"), net("10.0.0.32/28")];
        let r = ranges(&blocks, None);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1]["subnet"], "10.0.0.32/28");
        assert_eq!(r[1]["rangeStart"], "10.0.0.33");
        assert_eq!(r[1]["gateway"], "10.0.0.32");
        assert!(r[0].get("rangeEnd").is_none());
        let r = ranges(&blocks, Some(20));
        assert!(r[0].get("rangeEnd").is_none());
        assert_eq!(r[1]["rangeEnd"], "10.0.0.38", "14 + 6 addresses");
        let r = ranges(&blocks[..1], Some(4));
        assert_eq!(r[0]["rangeEnd"], "10.0.0.4");
        assert_eq!(ranges(&blocks, Some(14)).len(), 1);
    }
}
