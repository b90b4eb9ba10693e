//! Client sockets: spread over loopback source addresses (127.0.0.2,
//! 127.0.0.3, …) so that tens of thousands of connections to one server
//! port do not run out of ephemeral ports, and the file-descriptor budget.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::bail;
use tokio::net::{TcpSocket, TcpStream};

/// Connections per source address at most (Linux has ~28k ephemeral ports
/// per address and destination).
pub const CONNS_PER_SOURCE: usize = 20_000;

/// Source addresses handed out round-robin.
#[derive(Debug)]
pub struct Sources {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Sources {
    /// `count` addresses from 127.0.0.2 on when the target is on loopback
    /// (0 means enough for `connections`); none otherwise, and the kernel
    /// picks the source.
    pub fn new(target: SocketAddr, count: usize, connections: usize) -> Self {
        let addrs = match target.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => {
                let count = if count == 0 {
                    connections.div_ceil(CONNS_PER_SOURCE).max(1)
                } else {
                    count
                };
                (0..count)
                    .map(|i| IpAddr::V4(Ipv4Addr::from(0x7f00_0002_u32 + i as u32)))
                    .collect()
            }
            _ => Vec::new(),
        };
        Self {
            addrs,
            next: AtomicUsize::new(0),
        }
    }

    /// The source address for the next connection (`None`: the kernel's
    /// choice).
    pub fn pick(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.addrs[n % self.addrs.len()])
    }

    pub fn addrs(&self) -> &[IpAddr] {
        &self.addrs
    }
}

/// Connects to `target` from `source` (if given), without Nagle's delay.
///
/// # Errors
/// Binding or connecting fails.
pub async fn connect(target: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        bind_address_no_port(&socket)?;
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Lets the kernel choose the port at `connect` rather than at `bind`, so
/// ports are unique per (source, destination) pair and ports left in
/// TIME_WAIT by an earlier run can be reused; without it, repeated runs of
/// 10,000 connections exhaust a source address's ports.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: `socket` owns a valid descriptor for the duration of the call,
    // and the option value is a `c_int` of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_: &TcpSocket) -> io::Result<()> {
    Ok(())
}

/// Raises this process's soft open-file limit to its hard limit (never
/// beyond) and returns it.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Fails early, with a clear message, when `connections` more sockets would
/// not fit under the open-file limit.
///
/// # Errors
/// When they would not fit.
pub fn ensure_fds(connections: usize) -> anyhow::Result<()> {
    let limit = raise_fd_limit();
    let used = open_fds() as u64;
    let needed = connections as u64 + 64;
    if used + needed > limit {
        bail!(
            "{connections} connections need about {needed} more file descriptors, but the limit is {limit} \
             and {used} are in use: lower --subscribers or raise `ulimit -n`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_sources_start_at_127_0_0_2_and_cover_connections() {
        let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let s = Sources::new(target, 0, 45_000);
        assert_eq!(
            s.addrs(),
            &[
                "127.0.0.2".parse::<IpAddr>().unwrap(),
                "127.0.0.3".parse().unwrap(),
                "127.0.0.4".parse().unwrap()
            ]
        );
        assert_eq!(s.pick(), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(s.pick(), Some("127.0.0.3".parse().unwrap()));
        let remote = Sources::new("10.0.0.1:80".parse().unwrap(), 0, 10);
        assert_eq!(remote.pick(), None);
    }
}
