//! `syn-flood ADDR:PORT SECONDS`: TCP SYNs at ADDR:PORT from a raw socket for SECONDS,
//! each from another spoofed source (10.248.0.0/15, every port) and so a new flow
//! for whatever balances them, with valid checksums (conntrack checks them).
//! Prints JSON {"sent", "seconds"}. For bench/north-south.sh's packet-rate row: run in
//! the outside client's namespace, on one CPU.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

/// Packets per `sendmmsg`.
const BATCH: usize = 256;

pub fn main(args: &[String]) -> anyhow::Result<()> {
    let [to, seconds] = args else {
        anyhow::bail!("syn-flood ADDR:PORT SECONDS")
    };
    let to: SocketAddrV4 = to.parse()?;
    let run = Duration::from_secs_f64(seconds.parse()?);
    // SAFETY: a raw IPv4 socket (IP_HDRINCL implied by IPPROTO_RAW), closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    anyhow::ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let mut packets = vec![[0u8; 40]; BATCH];
    let (mut sent, mut flow) = (0u64, 0u32);
    let start = Instant::now();
    while start.elapsed() < run {
        for p in &mut packets {
            syn(p, flow, to);
            flow = flow.wrapping_add(1);
        }
        let mut iov: Vec<libc::iovec> = (packets.iter_mut())
            .map(|p| libc::iovec {
                iov_base: p.as_mut_ptr().cast(),
                iov_len: p.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = (iov.iter_mut())
            .map(|v| {
                // SAFETY: all zeroes is a valid msghdr; the fields set below.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (&raw const dst).cast_mut().cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: `msgs` points at `iov`, `packets` and `dst`, all alive for the call.
        let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    // SAFETY: the socket opened above.
    unsafe { libc::close(fd) };
    println!("{{\"sent\": {sent}, \"seconds\": {seconds:.3}}}");
    Ok(())
}

/// SYN number `flow`: its own source address and port; the IP header's length and
/// checksum are the kernel's to fill (IP_HDRINCL), the TCP checksum is computed here.
fn syn(p: &mut [u8; 40], flow: u32, to: SocketAddrV4) {
    // 10.248.0.0/15 (no address of the harness's): 17 bits of address, then the port
    // from 1024.
    let src = (10u32 << 24 | 248 << 16) + (flow & 0x1_ffff);
    let sport = 1024 + ((flow >> 17) % 64_000) as u16;
    p.fill(0);
    p[0] = 0x45;
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.to_be_bytes());
    p[16..20].copy_from_slice(&to.ip().octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&to.port().to_be_bytes());
    p[24..28].copy_from_slice(&flow.to_be_bytes());
    p[32] = 0x50;
    p[33] = 0x02;
    p[34..36].copy_from_slice(&64_240u16.to_be_bytes());
    let check = !tcp_sum(p);
    p[36..38].copy_from_slice(&check.to_be_bytes());
}

/// The one's complement sum over the TCP pseudo-header (addresses, protocol, length)
/// and the 20-byte header, folded.
fn tcp_sum(p: &[u8; 40]) -> u16 {
    let mut sum: u32 = 6 + 20;
    for w in p[12..40].chunks(2) {
        sum += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syns_tcp_checksum_checks() {
        let mut p = [0u8; 40];
        syn(&mut p, 123_456_789, "10.250.0.1:30785".parse().unwrap());
        // Pseudo-header + header, checksum included, folds to all ones.
        assert_eq!(tcp_sum(&p), 0xffff);
        assert_eq!(&p[12..14], &[10, 249]);
    }
}
