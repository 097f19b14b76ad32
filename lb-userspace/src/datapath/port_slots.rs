//! `LB_ORIG_DST_BY_PORT` mapped into the proxy's memory: the original destination of
//! an accepted connection read with two loads and a store instead of a `bpf` syscall
//! (~3 % of the proxy's CPU with a new connection per request, perf). `sock_ops`
//! claims the slot of the client's port with a compare-and-swap of its `client` and
//! writes the service after it (`lb_common::PortSlot`); a slot held by another client
//! address sends that connection to the `LB_ORIG_DST` hash instead.

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::MapFd;
use lb_common::{PortSlot, SockAddr4, capacity};

pub struct PortSlots {
    base: NonNull<PortSlot>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access goes
// through atomics or reads of a slot this process has just seen claimed for it.
unsafe impl Send for PortSlots {}

impl PortSlots {
    /// Maps the array behind `fd` (created with `BPF_F_MMAPABLE`) read-write.
    pub fn map(fd: &MapFd) -> std::io::Result<Self> {
        Self::mmap(libc::MAP_SHARED, fd.as_fd().as_raw_fd())
    }

    fn mmap(flags: libc::c_int, fd: libc::c_int) -> std::io::Result<Self> {
        let len = capacity::PORTS as usize * size_of::<PortSlot>();
        // SAFETY: a fresh mapping; for a map's fd the kernel checks the length against
        // the map and the flags against its mmap-ability.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast()).ok_or_else(|| std::io::Error::other("mmap: null"))?;
        Ok(Self { base, len })
    }

    /// The service `client` dialled, if its port's slot holds it; the slot is freed.
    pub fn take(&self, client: SockAddr4) -> Option<SockAddr4> {
        // SAFETY: the port indexes one of the PORTS slots of the mapping.
        let slot = unsafe { self.base.as_ptr().add(client.port as usize) };
        // SAFETY: slots are 16 bytes, 8-aligned (page-aligned mapping); `client` is
        // the first 8 bytes, which sock_ops updates only with atomic instructions.
        let claim = unsafe { AtomicU64::from_ptr(slot.cast::<u64>()) };
        if claim.load(Ordering::Acquire) != client.to_u64() {
            return None;
        }
        // SAFETY: written before this connection's handshake completed, which the
        // accept() that gave us `client` follows; nobody else writes a held slot.
        let service = unsafe { std::ptr::read_volatile(&raw const (*slot).service) };
        // Only a connect from this same address and port could claim the slot now,
        // and that tuple is ours until the connection closes.
        claim.store(0, Ordering::Release);
        Some(service)
    }
}

impl Drop for PortSlots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_taken_once_and_only_by_its_client() {
        let slots = PortSlots::mmap(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1).expect("mmap");
        let client = SockAddr4::new([127, 0, 0, 1], 40000);
        let service = SockAddr4::new([127, 10, 0, 1], 80);
        // As sock_ops leaves it.
        // SAFETY: slot 40000 of the mapping, nobody else touches it in this test.
        unsafe { *slots.base.as_ptr().add(40000) = PortSlot { client, service } };
        let other = SockAddr4::new([127, 0, 0, 2], 40000);
        assert_eq!(slots.take(other), None, "another address on the same port");
        assert_eq!(slots.take(client), Some(service));
        assert_eq!(slots.take(client), None, "freed once taken");
        // SAFETY: as above.
        let freed = unsafe { *slots.base.as_ptr().add(40000) };
        assert_eq!(freed.client.to_u64(), 0);
    }
}
