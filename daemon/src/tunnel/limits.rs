//! Connection accounting for the relay's listeners: a global cap and a cap per client address,
//! taken at accept time and released when the connection's [`Slot`] is dropped. Host names of the
//! relay are public (certificate, CT logs), so anyone can open sockets to it; these caps keep one
//! address, or a few, from using up descriptors and handshake capacity that boxes and WhatsApp
//! need.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The listener holds its global maximum.
    Total,
    /// The client's address (IPv6: its /64) holds its maximum.
    PerAddress,
}

/// Counts of live slots, global and per client address.
pub(crate) struct Slots {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// One taken slot; dropping it gives it back.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    key: IpAddr,
}

/// The unit a per-address cap counts: the address itself for IPv4, the /64 for IPv6 (one
/// subscriber usually holds a whole /64, so counting single IPv6 addresses would cap nothing).
/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

impl Slots {
    /// A pool with at most `max_total` slots, `max_per_address` of them per client address.
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max_total,
            max_per_address,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for a connection from `ip`, or says which cap is full.
    pub(crate) fn try_take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let key = address_key(ip);
        let mut counts = self.counts();
        if counts.total >= self.max_total {
            return Err(Refused::Total);
        }
        let mine = counts.by_address.entry(key).or_insert(0);
        if *mine >= self.max_per_address {
            return Err(Refused::PerAddress);
        }
        *mine += 1;
        counts.total += 1;
        Ok(Slot {
            slots: self.clone(),
            key,
        })
    }

    /// Slots taken now.
    pub(crate) fn in_use(&self) -> usize {
        self.counts().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_address.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                // Addresses without connections leave the map, so it stays as small as the
                // number of addresses connected now.
                counts.by_address.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn caps_hold_per_address_and_in_total_and_slots_come_back() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let a1 = slots.try_take(a).unwrap();
        let _a2 = slots.try_take(a).unwrap();
        assert_eq!(slots.try_take(a).err(), Some(Refused::PerAddress));
        let _b1 = slots.try_take(b).unwrap();
        assert_eq!(slots.try_take(c).err(), Some(Refused::Total));
        drop(a1);
        assert_eq!(slots.in_use(), 2);
        let _c1 = slots.try_take(c).unwrap();
        assert_eq!(slots.in_use(), 3);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let slots = Slots::new(10, 1);
        let _x = slots.try_take("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            slots.try_take("2001:db8:1:2::ffff".parse().unwrap()).err(),
            Some(Refused::PerAddress)
        );
        assert!(slots.try_take("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let _v4 = slots.try_take("192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(
            slots.try_take("::ffff:192.0.2.9".parse().unwrap()).err(),
            Some(Refused::PerAddress)
        );
    }
}
