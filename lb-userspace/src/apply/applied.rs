//! What the plan maps hold, with the slots and endpoints it takes counted as it
//! changes: the capacity check of an apply needs the totals, and summing 10,000
//! services on every apply was most of a one-service change's apply time.

use std::collections::BTreeMap;
use std::ops::{Add, Sub};

use lb_common::SockAddr4;

use crate::compile::ServiceImage;
use crate::datapath::PinnedService;

/// Entries in the maps of slots and of endpoints (each holds `lb_common::PER_ENTRY`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub slots: u64,
    pub endpoints: u64,
}

impl Size {
    pub fn of(img: &ServiceImage) -> Size {
        Size {
            slots: u64::from(lb_common::chunks(img.slots.len() as u32)),
            endpoints: img
                .subsets
                .iter()
                .map(|s| u64::from(lb_common::chunks(s.entries())))
                .sum(),
        }
    }
}

impl Add for Size {
    type Output = Size;
    fn add(self, o: Size) -> Size {
        Size {
            slots: self.slots + o.slots,
            endpoints: self.endpoints + o.endpoints,
        }
    }
}

impl Sub for Size {
    type Output = Size;
    fn sub(self, o: Size) -> Size {
        Size {
            slots: self.slots - o.slots,
            endpoints: self.endpoints - o.endpoints,
        }
    }
}

/// The applied services by address (read like a map; changed only through
/// [`insert`](Self::insert) and [`remove`](Self::remove), which keep the count).
#[derive(Default)]
pub struct Applied {
    services: BTreeMap<SockAddr4, PinnedService>,
    size: Size,
}

impl Applied {
    pub fn new(services: BTreeMap<SockAddr4, PinnedService>) -> Self {
        let size = services
            .values()
            .map(|p| Size::of(&p.image))
            .fold(Size::default(), Add::add);
        Applied { services, size }
    }

    /// What the applied services take together.
    pub fn size(&self) -> Size {
        self.size
    }

    pub fn insert(&mut self, key: SockAddr4, new: PinnedService) -> Option<PinnedService> {
        self.size = self.size + Size::of(&new.image);
        let old = self.services.insert(key, new);
        if let Some(o) = &old {
            self.size = self.size - Size::of(&o.image);
        }
        old
    }

    pub fn remove(&mut self, key: &SockAddr4) -> Option<PinnedService> {
        let old = self.services.remove(key);
        if let Some(o) = &old {
            self.size = self.size - Size::of(&o.image);
        }
        old
    }
}

impl std::ops::Deref for Applied {
    type Target = BTreeMap<SockAddr4, PinnedService>;
    fn deref(&self) -> &Self::Target {
        &self.services
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_count_follows_inserts_and_removes() {
        let svc = |slots: usize, eps: usize| PinnedService {
            entry: Default::default(),
            image: Arc::new(ServiceImage {
                name: "s".into(),
                namespace: "n".into(),
                mode: 0,
                reason: 0,
                weight_scale: 1,
                flags: 0,
                slots: vec![0; slots],
                subsets: vec![crate::compile::SubsetImage {
                    id: 0,
                    name: "v0".into(),
                    endpoints: vec![SockAddr4::new([127, 0, 0, 2], 80); eps],
                    flags: 0,
                    table: 0,
                }],
            }),
        };
        let key = |i: u16| SockAddr4::new([127, 0, 0, 1], i);
        let mut a = Applied::new([(key(1), svc(10, 2))].into());
        a.insert(key(2), svc(5, 1));
        a.insert(key(1), svc(20, 3));
        a.remove(&key(3));
        a.insert(key(3), svc(1, 1));
        a.remove(&key(2));
        let whole = Applied::new(a.services.clone());
        assert_eq!(a.size(), whole.size());
        assert_eq!(
            a.size(),
            // Entries: 20 slots take two, one one; each subset's endpoints one.
            Size {
                slots: 3,
                endpoints: 2
            }
        );
    }
}
