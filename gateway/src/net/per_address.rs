//! Open connections counted per client address: the mail listeners'
//! `max_connections_per_ip` and the portal's per-address cap. A place is
//! held while its [`Held`] lives.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The connections open from each address.
#[derive(Debug, Clone, Default)]
pub struct PerAddress {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted against its address; dropping it gives its
/// place back.
#[derive(Debug)]
pub struct Held {
    held: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl PerAddress {
    /// A place for one more connection from `ip`, if it has fewer than
    /// `max` open.
    pub fn hold(&self, ip: IpAddr, max: usize) -> Option<Held> {
        let mut map = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Held {
            held: self.held.clone(),
            ip,
        })
    }

    /// Addresses holding a place now.
    pub fn addresses(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_and_given_back() {
        let p = PerAddress::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let a = p.hold(ip, 2).expect("first");
        let b = p.hold(ip, 2).expect("second");
        assert!(p.hold(ip, 2).is_none(), "the third is over the cap");
        assert!(p.hold("192.0.2.2".parse().expect("ip"), 2).is_some());
        drop(a);
        let c = p.hold(ip, 2).expect("a place came back");
        drop((b, c));
        assert_eq!(
            p.addresses(),
            0,
            "nothing is kept for an address with no place"
        );
    }
}
