//! Maglev lookup tables (Eisenbud et al., NSDI 2016) for the endpoints of a subset
//! served north-south: `lb_xdp` picks a new flow's endpoint by indexing the table with
//! the flow's hash instead of taking the hash modulo the endpoint count. Two nodes
//! with the same endpoints build the same table (it depends on the set only, never on
//! the order it was read in), so a flow the upstream router moves to another node
//! lands on the same endpoint; and when an endpoint comes or goes, only about its
//! share of flows changes endpoint (modulo moves nearly all of them). The table is
//! written after the endpoint list in `LB_ENDPOINTS`, one endpoint address per entry.

use lb_common::SockAddr4;

/// Table sizes: primes, each about 4 × the last. The kernel indexes a table by the
/// flow's hash modulo its size, so a subset keeps its size while its endpoints change
/// (else every flow would move): the size is the smallest of these with at least
/// [`PER_ENDPOINT`] entries per endpoint, and changes only when the subset grows or
/// shrinks past a step (then, once, flows move as with modulo).
const SIZES: [u32; 5] = [251, 1_021, 4_093, 16_381, 65_521];
/// Maglev's table is balanced whatever its size (each endpoint holds ⌊M/N⌋ or ⌈M/N⌉
/// entries, so within 2 % here); a larger one moves fewer of the flows whose endpoint
/// stays when another comes or goes (measured by `tests::disruption`: ~6 % at 25
/// entries per endpoint, ~4 % at 50, ~2.5 % at 100, against (N-1)/N for modulo), at
/// one kernel map entry (~80 bytes) per table entry.
const PER_ENDPOINT: usize = 50;

/// The table size for a subset of `endpoints`; 0 (no table: the modulo pick) for one
/// endpoint or none, and past 1,310 endpoints.
pub fn table_size(endpoints: usize) -> u32 {
    if endpoints <= 1 {
        return 0;
    }
    (SIZES.into_iter())
        .find(|m| *m as usize >= endpoints * PER_ENDPOINT)
        .unwrap_or(0)
}

/// The table of `size` entries over `endpoints` (sorted, unique): entry → index into
/// `endpoints`. Each endpoint walks its own permutation of the table (an offset and a
/// skip from its address's hash) and takes the next free entry in turn.
pub fn table(endpoints: &[SockAddr4], size: u32) -> Vec<u32> {
    let m = size as u64;
    if endpoints.is_empty() || m == 0 {
        return Vec::new();
    }
    let walks: Vec<(u64, u64)> = endpoints
        .iter()
        .map(|e| {
            let key = u64::from(u32::from_be_bytes(e.addr)) << 16 | u64::from(e.port);
            let offset = lb_common::mix(key ^ 0x6d61_676c_6576_0001) % m;
            let skip = lb_common::mix(key ^ 0x6d61_676c_6576_0002) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; endpoints.len()];
    let mut out = vec![u32::MAX; size as usize];
    let mut filled = 0;
    loop {
        for (i, (offset, skip)) in walks.iter().enumerate() {
            let mut at = (offset + next[i] * skip) % m;
            while out[at as usize] != u32::MAX {
                next[i] += 1;
                at = (offset + next[i] * skip) % m;
            }
            out[at as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == out.len() {
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u8) -> Vec<SockAddr4> {
        (1..=n)
            .map(|i| SockAddr4::new([10, 244, 1, i], 8080))
            .collect()
    }

    /// Endpoint addresses per entry (what the kernel reads).
    fn image(endpoints: &[SockAddr4]) -> Vec<SockAddr4> {
        let size = table_size(endpoints.len());
        table(endpoints, size)
            .into_iter()
            .map(|i| endpoints[i as usize])
            .collect()
    }

    #[test]
    fn sizes_are_primes_with_room_for_the_endpoints() {
        let is_prime = |n: u32| {
            (2..)
                .take_while(|d| d * d <= n)
                .all(|d| !n.is_multiple_of(d))
        };
        assert!(SIZES.into_iter().all(is_prime));
        assert_eq!((table_size(0), table_size(1)), (0, 0));
        assert_eq!((table_size(2), table_size(5)), (251, 251));
        assert_eq!((table_size(6), table_size(1_310)), (1_021, 65_521));
        assert_eq!(table_size(1_311), 0);
    }

    #[test]
    fn every_endpoint_holds_its_share() {
        for n in [2u8, 3, 7, 10, 50] {
            let e = eps(n);
            let t = table(&e, table_size(e.len()));
            assert_eq!(t.len(), table_size(e.len()) as usize);
            let mut held = vec![0usize; e.len()];
            for i in t {
                held[i as usize] += 1;
            }
            let (lo, hi) = (held.iter().min().unwrap(), held.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} endpoints: {held:?}");
        }
    }

    #[test]
    fn the_table_depends_on_the_set_only() {
        let e = eps(10);
        let mut shuffled = e.clone();
        shuffled.reverse();
        shuffled.sort();
        assert_eq!(image(&e), image(&shuffled));
    }

    /// Entries that move from one endpoint to another present in both sets, among those
    /// whose owner is in both (what a change costs flows it need not touch).
    fn moved_between_survivors(a: &[SockAddr4], b: &[SockAddr4]) -> f64 {
        let (ta, tb) = (image(a), image(b));
        assert_eq!(ta.len(), tb.len(), "the same size, entry for entry");
        let mut both = 0;
        let mut moved = 0;
        for (&x, &y) in ta.iter().zip(&tb) {
            if a.contains(&x) && b.contains(&x) {
                both += 1;
                if x != y && a.contains(&y) {
                    moved += 1;
                }
            }
        }
        moved as f64 / both as f64
    }

    #[test]
    fn disruption() {
        for n in [4u8, 10, 40] {
            let all = eps(n);
            let fewer: Vec<_> = all[..all.len() - 1].to_vec();
            let mut middle = all.clone();
            middle.remove(all.len() / 2);
            // Removing an endpoint: the flows of those that stay (nearly) all stay.
            let removed_last = moved_between_survivors(&all, &fewer);
            let removed_middle = moved_between_survivors(&all, &middle);
            // Adding one: only the flows it takes move.
            let added = moved_between_survivors(&fewer, &all);
            println!(
                "{n}: removed last {removed_last:.4}, middle {removed_middle:.4}, added {added:.4}"
            );
            assert!(removed_last < 0.06 && removed_middle < 0.06 && added < 0.06);
        }
    }
}
