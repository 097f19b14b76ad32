//! The few `bpf(2)` commands aya does not offer: a pinned object opened read-only,
//! a link's program replaced in place, and lookup-and-delete on a hash map.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;

const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_F_RDONLY: u32 = 1 << 3;

fn bpf<A>(cmd: libc::c_long, attr: &A) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, fully initialised prefix of `union bpf_attr` for `cmd`
    // (the kernel zero-extends the rest); pointers inside it outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<A>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// `BPF_OBJ_GET`: a pinned object's fd, read-only when asked.
pub fn obj_get(path: &Path, read_only: bool) -> std::io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: if read_only { BPF_F_RDONLY } else { 0 },
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_LINK_UPDATE`: the link runs `program` from now on, atomically (the old
/// program runs until the switch, the new one from it; nothing in between).
pub fn link_update(link: impl AsFd, program: impl AsFd) -> std::io::Result<()> {
    #[repr(C)]
    struct LinkUpdateAttr {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    let attr = LinkUpdateAttr {
        link_fd: link.as_fd().as_raw_fd() as u32,
        new_prog_fd: program.as_fd().as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &attr).map(|_| ())
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (hash maps since 5.14): copies the value of `key`
/// out and removes the entry in one call. `K` and `V` must be the map's key and value
/// types (the caller's map was created from the same lb-common types).
pub fn lookup_and_delete<K, V>(map: impl AsFd, key: &K, value: &mut V) -> std::io::Result<()> {
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = ElemAttr {
        map_fd: map.as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(value) as u64,
        flags: 0,
    };
    bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &attr).map(|_| ())
}
