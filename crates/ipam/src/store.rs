//! The on-disk store: one directory per network, one file per reserved address.
//! See the crate documentation for the layout and the crash/concurrency rules.

use crate::config::{from_u128, to_u128, RangeSet, ValidatedRange};
use crate::error::{IpamError, Result};
use ipnet::IpNet;
use nix::errno::Errno;
use nix::fcntl::{openat, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const LOCK_FILE: &str = "lock";
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Temp files start with this; readers never take them for reservations.
pub const TEMP_PREFIX: &str = ".tmp-";

/// How long `check_usable` waits for the lock before calling the store unusable.
const CHECK_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Who holds an address: the CNI (containerID, ifname) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Self {
        Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// One address handed out by [`Store::allocate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The address with its subnet's prefix length.
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index of the range set it came from.
    pub set_index: usize,
}

/// Occupancy of one range, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeUsage {
    pub set_index: usize,
    pub subnet: IpNet,
    pub range_start: IpAddr,
    pub range_end: IpAddr,
    /// Reserved addresses inside `range_start..=range_end`.
    pub used: u128,
    /// Allocatable addresses: the range minus the gateways that fall in it.
    pub total: u128,
}

/// What [`Store::gc`] did.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Reservations removed because their owner was not in the valid list.
    pub released: Vec<(IpAddr, Attachment)>,
    /// Reservation files removed because they could not be read or parsed.
    pub removed_unreadable: Vec<(IpAddr, PathBuf)>,
    /// Errors met on the way; gc went on past each of them.
    pub errors: Vec<IpamError>,
}

/// The fsyncs of an [`Store::allocate_deferred_sync`], running on their own thread.
#[derive(Debug)]
pub struct PendingSync {
    thread: std::thread::JoinHandle<Result<()>>,
}

impl PendingSync {
    /// Waits until the reservations are durable.
    pub fn wait(self) -> Result<()> {
        self.thread
            .join()
            .unwrap_or_else(|_| Err(IpamError::request("fsync thread panicked")))
    }
}

/// The store of one network: `<data_dir>/<network>/`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A reservation file found in the directory.
struct Reservation {
    ip: IpAddr,
    path: PathBuf,
    owner: Result<Attachment>,
}

struct Listing {
    reservations: Vec<Reservation>,
    temps: Vec<PathBuf>,
}

impl Listing {
    fn held_by(&self, who: &Attachment) -> Vec<&Reservation> {
        self.reservations
            .iter()
            .filter(|r| r.owner.as_ref().is_ok_and(|o| o == who))
            .collect()
    }
}

impl Store {
    /// Opens (creating as needed, mode 0700) the directory of `network` under `data_dir`.
    pub fn open(data_dir: impl AsRef<Path>, network: &str) -> Result<Store> {
        check_network_name(network)?;
        let dir = data_dir.as_ref().join(network);
        if let Ok(md) = fs::metadata(&dir) {
            if !md.is_dir() {
                return Err(IpamError::io(
                    "use as IPAM directory",
                    &dir,
                    io::Error::new(
                        io::ErrorKind::NotADirectory,
                        "exists and is not a directory",
                    ),
                ));
            }
        }
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| IpamError::io("create directory", &dir, e))?;
        let store = Store { dir };
        // Fails early on a read-only or foreign-owned directory.
        store.open_lock_file()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reserves one address per range set for `who`; all or nothing.
    ///
    /// `requested` addresses (CNI_ARGS `IP=`, runtimeConfig `ips`) must each fall in a
    /// different range set and be free; sets without one get the next free address after
    /// that set's last reservation (round-robin, wrapping, skipping gateways).
    pub fn allocate(
        &self,
        sets: &[RangeSet],
        who: &Attachment,
        requested: &[IpAddr],
    ) -> Result<Vec<Allocation>> {
        self.allocate_inner(sets, who, requested, true)
    }

    /// Like [`Store::allocate`], but the fsyncs that make the reservations survive a power
    /// loss run on a background thread; [`PendingSync::wait`] joins it. The CNI plugin overlaps
    /// them with its netlink work and waits before it reports success, so "durable before ADD
    /// returns" still holds. Uniqueness does not depend on the fsyncs: the reservation's name
    /// is taken (link) before this returns, and a kill -9 loses nothing from the page cache.
    pub fn allocate_deferred_sync(
        &self,
        sets: &[RangeSet],
        who: &Attachment,
        requested: &[IpAddr],
    ) -> Result<(Vec<Allocation>, PendingSync)> {
        let made = self.allocate_inner(sets, who, requested, false)?;
        let files: Vec<PathBuf> = made
            .iter()
            .map(|a| self.ip_path(a.address.addr()))
            .collect();
        let dir = self.dir.clone();
        let thread = std::thread::spawn(move || -> Result<()> {
            for f in &files {
                File::open(f)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| IpamError::io("sync reservation", f, e))?;
            }
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| IpamError::io("sync directory", &dir, e))
        });
        Ok((made, PendingSync { thread }))
    }

    fn allocate_inner(
        &self,
        sets: &[RangeSet],
        who: &Attachment,
        requested: &[IpAddr],
        durable: bool,
    ) -> Result<Vec<Allocation>> {
        check_attachment(who)?;
        if sets.is_empty() {
            return Err(IpamError::request("no range sets to allocate from"));
        }
        if let Some(i) = sets.iter().position(|s| s.is_empty()) {
            return Err(IpamError::request(format!("range set {i} is empty")));
        }
        let wanted = match_requested(sets, requested)?;
        // A gateway of any set is never handed out.
        let gateways: HashMap<IpAddr, IpNet> = sets
            .iter()
            .flatten()
            .map(|r| (r.gateway(), r.subnet()))
            .collect();
        for ip in wanted.iter().flatten() {
            if let Some(subnet) = gateways.get(ip) {
                return Err(IpamError::RequestedUnavailable {
                    ip: *ip,
                    owner: format!("the gateway of {subnet}"),
                });
            }
        }

        let _lock = self.lock(FlockArg::LockExclusive)?;
        let listing = self.read_listing()?;
        self.remove_temps(&listing.temps);
        let held = listing.held_by(who);
        if !held.is_empty() {
            let mut ips: Vec<IpAddr> = held.iter().map(|r| r.ip).collect();
            ips.sort();
            return Err(IpamError::AlreadyExists {
                container_id: who.container_id.clone(),
                ifname: who.ifname.clone(),
                ips,
            });
        }
        let owners: HashMap<IpAddr, &Reservation> =
            listing.reservations.iter().map(|r| (r.ip, r)).collect();
        let mut taken: HashSet<IpAddr> = owners.keys().copied().collect();

        let mut made: Vec<Allocation> = Vec::with_capacity(sets.len());
        for (idx, set) in sets.iter().enumerate() {
            let picked = match wanted[idx] {
                Some(ip) => self.reserve_requested(set, ip, who, &owners, durable),
                None => self.reserve_next(idx, set, who, &mut taken, &gateways, durable),
            };
            match picked {
                Ok(alloc) => {
                    taken.insert(alloc.address.addr());
                    made.push(Allocation {
                        set_index: idx,
                        ..alloc
                    });
                }
                Err(e) => {
                    // All or nothing: undo this call's reservations. A failure here leaves
                    // a reservation owned by `who`, which the runtime's DEL or GC removes.
                    for a in &made {
                        let _ = fs::remove_file(self.ip_path(a.address.addr()));
                    }
                    let _ = self.sync_dir();
                    return Err(e);
                }
            }
        }
        for a in &made {
            self.write_last_reserved(a.set_index, a.address.addr());
        }
        // Makes the new names durable before we report success.
        if durable {
            self.sync_dir()?;
        }
        Ok(made)
    }

    /// Releases everything `who` holds. Returns the released addresses (empty if none).
    pub fn release(&self, who: &Attachment) -> Result<Vec<IpAddr>> {
        let _lock = self.lock(FlockArg::LockExclusive)?;
        let listing = self.read_listing()?;
        self.remove_temps(&listing.temps);
        let mut released = Vec::new();
        for r in listing.held_by(who) {
            remove_if_present(&r.path)?;
            released.push(r.ip);
        }
        if !released.is_empty() {
            self.sync_dir()?;
        }
        released.sort();
        Ok(released)
    }

    /// The addresses `who` holds, sorted (IPv4 first). Unreadable unrelated files are skipped.
    pub fn get(&self, who: &Attachment) -> Result<Vec<IpAddr>> {
        let _lock = self.lock(FlockArg::LockShared)?;
        let listing = self.read_listing()?;
        let mut ips: Vec<IpAddr> = listing.held_by(who).iter().map(|r| r.ip).collect();
        ips.sort();
        Ok(ips)
    }

    /// Every reservation, sorted by address. Fails on the first unreadable reservation file,
    /// naming it ([`Store::gc`] removes such files).
    pub fn list(&self) -> Result<Vec<(IpAddr, Attachment)>> {
        let _lock = self.lock(FlockArg::LockShared)?;
        let listing = self.read_listing()?;
        let mut out = Vec::with_capacity(listing.reservations.len());
        for r in listing.reservations {
            out.push((r.ip, r.owner?));
        }
        out.sort();
        Ok(out)
    }

    /// Releases every reservation whose owner is not in `valid`, and every reservation file
    /// that cannot be read or parsed. Goes on past individual errors, collecting them.
    pub fn gc(&self, valid: &[Attachment]) -> Result<GcReport> {
        let valid: HashSet<&Attachment> = valid.iter().collect();
        let _lock = self.lock(FlockArg::LockExclusive)?;
        let listing = self.read_listing()?;
        let mut report = GcReport::default();
        for tmp in &listing.temps {
            if let Err(e) = remove_if_present(tmp) {
                report.errors.push(e);
            }
        }
        for r in listing.reservations {
            match r.owner {
                Ok(owner) if valid.contains(&owner) => {}
                Ok(owner) => match remove_if_present(&r.path) {
                    Ok(()) => report.released.push((r.ip, owner)),
                    Err(e) => report.errors.push(e),
                },
                Err(_) => match remove_if_present(&r.path) {
                    Ok(()) => report.removed_unreadable.push((r.ip, r.path)),
                    Err(e) => report.errors.push(e),
                },
            }
        }
        if let Err(e) = self.sync_dir() {
            report.errors.push(e);
        }
        report.released.sort();
        Ok(report)
    }

    /// For the CNI STATUS verb: the directory exists, the lock can be taken (waiting at most
    /// a few seconds) and a file can be written and synced.
    pub fn check_usable(&self) -> Result<()> {
        let md = fs::metadata(&self.dir).map_err(|e| IpamError::io("stat", &self.dir, e))?;
        if !md.is_dir() {
            return Err(IpamError::io(
                "use as IPAM directory",
                &self.dir,
                io::Error::new(io::ErrorKind::NotADirectory, "is not a directory"),
            ));
        }
        let _lock = self.lock_with_timeout(CHECK_LOCK_TIMEOUT)?;
        let probe = self.temp_path();
        write_synced(&probe, b"probe")?;
        remove_if_present(&probe)
    }

    /// Used and allocatable addresses of every range of `sets`.
    pub fn usage(&self, sets: &[RangeSet]) -> Result<Vec<RangeUsage>> {
        let _lock = self.lock(FlockArg::LockShared)?;
        let ips = self.reserved_ips()?;
        let gateways: HashSet<IpAddr> = sets.iter().flatten().map(|r| r.gateway()).collect();
        let mut out = Vec::new();
        for (set_index, set) in sets.iter().enumerate() {
            for r in set {
                let used = ips.iter().filter(|ip| r.contains(**ip)).count() as u128;
                let gws = gateways.iter().filter(|g| r.contains(**g)).count() as u128;
                out.push(RangeUsage {
                    set_index,
                    subnet: r.subnet(),
                    range_start: r.range_start(),
                    range_end: r.range_end(),
                    used,
                    total: r.len() - gws,
                });
            }
        }
        Ok(out)
    }

    // ---- internals ----

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.dir.join(ip.to_string())
    }

    fn temp_path(&self) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
    }

    fn open_lock_file(&self) -> Result<File> {
        let path = self.dir.join(LOCK_FILE);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| IpamError::io("open lock file", &path, e))
    }

    /// Takes the network's flock. A fresh open file description each time, so threads of
    /// one process exclude each other too. Released when the guard drops.
    fn lock(&self, arg: FlockArg) -> Result<Flock<File>> {
        let mut file = self.open_lock_file()?;
        loop {
            match Flock::lock(file, arg) {
                Ok(guard) => return Ok(guard),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, errno)) => {
                    return Err(IpamError::io(
                        "lock",
                        self.dir.join(LOCK_FILE),
                        io::Error::from(errno),
                    ))
                }
            }
        }
    }

    fn lock_with_timeout(&self, timeout: Duration) -> Result<Flock<File>> {
        let deadline = Instant::now() + timeout;
        let mut file = self.open_lock_file()?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(guard) => return Ok(guard),
                Err((f, Errno::EWOULDBLOCK)) | Err((f, Errno::EINTR))
                    if Instant::now() < deadline =>
                {
                    file = f;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((_, errno)) => {
                    return Err(IpamError::io(
                        "lock",
                        self.dir.join(LOCK_FILE),
                        io::Error::from(errno),
                    ))
                }
            }
        }
    }

    /// Names of the directory that parse as addresses.
    fn reserved_ips(&self) -> Result<Vec<IpAddr>> {
        let mut ips = Vec::new();
        let entries =
            fs::read_dir(&self.dir).map_err(|e| IpamError::io("read directory", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| IpamError::io("read directory", &self.dir, e))?;
            if let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                ips.push(ip);
            }
        }
        Ok(ips)
    }

    /// All reservation files with their owners, and temp leftovers.
    fn read_listing(&self) -> Result<Listing> {
        let mut listing = Listing {
            reservations: Vec::new(),
            temps: Vec::new(),
        };
        let dir = File::open(&self.dir).map_err(|e| IpamError::io("open", &self.dir, e))?;
        let entries =
            fs::read_dir(&self.dir).map_err(|e| IpamError::io("read directory", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| IpamError::io("read directory", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMP_PREFIX) {
                listing.temps.push(entry.path());
            } else if let Ok(ip) = name.parse::<IpAddr>() {
                let path = entry.path();
                let owner = read_owner(&dir, name, &path);
                listing.reservations.push(Reservation { ip, path, owner });
            }
        }
        Ok(listing)
    }

    /// Temp files seen under the exclusive lock are leftovers of a crashed process (temps
    /// are only made under that lock). Best effort: they are harmless.
    fn remove_temps(&self, temps: &[PathBuf]) {
        for t in temps {
            let _ = fs::remove_file(t);
        }
    }

    /// Durably creates the reservation file for `ip`; false if the name is already taken.
    fn reserve(&self, ip: IpAddr, who: &Attachment, durable: bool) -> Result<bool> {
        let target = self.ip_path(ip);
        let tmp = self.temp_path();
        let content = format!("{}\r\n{}", who.container_id, who.ifname);
        write_file(&tmp, content.as_bytes(), durable)?;
        // link() never replaces an existing name: exclusive even without the lock.
        let linked = fs::hard_link(&tmp, &target);
        // A leftover temp is removed by the next locked operation.
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(IpamError::io("link reservation", target, e)),
        }
    }

    fn reserve_requested(
        &self,
        set: &RangeSet,
        ip: IpAddr,
        who: &Attachment,
        owners: &HashMap<IpAddr, &Reservation>,
        durable: bool,
    ) -> Result<Allocation> {
        let unavailable = |owner: String| IpamError::RequestedUnavailable { ip, owner };
        if let Some(r) = owners.get(&ip) {
            return Err(unavailable(match &r.owner {
                Ok(o) => format!("held by {o}"),
                Err(_) => format!("held by unreadable file {}", r.path.display()),
            }));
        }
        let Some(range) = set.iter().find(|r| r.contains(ip)) else {
            return Err(IpamError::RequestedOutOfRange { ip });
        };
        if !self.reserve(ip, who, durable)? {
            return Err(unavailable("held (file appeared)".to_string()));
        }
        Ok(allocation(range, ip))
    }

    fn reserve_next(
        &self,
        idx: usize,
        set: &RangeSet,
        who: &Attachment,
        taken: &mut HashSet<IpAddr>,
        gateways: &HashMap<IpAddr, IpNet>,
        durable: bool,
    ) -> Result<Allocation> {
        let last = self.read_last_reserved(idx);
        // The walk only passes over taken addresses and gateways before it finds a free one,
        // so it is short even for huge IPv6 ranges.
        for (ri, ip) in SetWalk::new(set, last) {
            if taken.contains(&ip) || gateways.contains_key(&ip) {
                continue;
            }
            if self.reserve(ip, who, durable)? {
                return Ok(allocation(&set[ri], ip));
            }
            taken.insert(ip);
        }
        let ranges: Vec<String> = set.iter().map(|r| r.to_string()).collect();
        Err(IpamError::Exhausted {
            set: idx,
            ranges: ranges.join(", "),
        })
    }

    /// The round-robin hint; anything unreadable just means "start at the beginning".
    fn read_last_reserved(&self, idx: usize) -> Option<IpAddr> {
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{idx}"));
        fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Best effort and not fsynced: it is only a hint, and a torn one is ignored.
    fn write_last_reserved(&self, idx: usize, ip: IpAddr) {
        let path = self.dir.join(format!("{LAST_RESERVED_PREFIX}{idx}"));
        let tmp = self.temp_path();
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(ip.to_string().as_bytes()));
        if written.is_err() || fs::rename(&tmp, &path).is_err() {
            let _ = fs::remove_file(&tmp);
        }
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| IpamError::io("sync directory", &self.dir, e))
    }
}

fn allocation(range: &ValidatedRange, ip: IpAddr) -> Allocation {
    Allocation {
        address: IpNet::new(ip, range.subnet().prefix_len()).expect("prefix of a valid subnet"),
        gateway: Some(range.gateway()),
        set_index: 0,
    }
}

/// Maps each requested IP to the range set holding it (None for sets without one).
fn match_requested(sets: &[RangeSet], requested: &[IpAddr]) -> Result<Vec<Option<IpAddr>>> {
    let mut wanted: Vec<Option<IpAddr>> = vec![None; sets.len()];
    for ip in requested {
        // host-local treats ::ffff:a.b.c.d as a.b.c.d.
        let ip = ip.to_canonical();
        let idx = sets
            .iter()
            .position(|s| s.iter().any(|r| r.contains(ip)))
            .ok_or(IpamError::RequestedOutOfRange { ip })?;
        match wanted[idx] {
            Some(prev) if prev != ip => {
                return Err(IpamError::request(format!(
                    "requested IPs {prev} and {ip} are both in range set {idx}: \
                     only one address per range set"
                )))
            }
            _ => wanted[idx] = Some(ip),
        }
    }
    Ok(wanted)
}

/// Walks every address of a range set once, starting right after `last` when it lies in
/// the set (host-local's round-robin: `last` itself comes out last), else at the first
/// range's start; wraps from a range's end to the next range's start.
struct SetWalk<'a> {
    set: &'a [ValidatedRange],
    idx: usize,
    cur: u128,
    advance_first: bool,
    remaining: u128,
}

impl<'a> SetWalk<'a> {
    fn new(set: &'a [ValidatedRange], last: Option<IpAddr>) -> Self {
        let remaining = set.iter().fold(0u128, |acc, r| acc.saturating_add(r.len()));
        let start = last.and_then(|ip| set.iter().position(|r| r.contains(ip)).map(|i| (i, ip)));
        match start {
            Some((idx, ip)) => SetWalk {
                set,
                idx,
                cur: to_u128(ip),
                advance_first: true,
                remaining,
            },
            None => SetWalk {
                set,
                idx: 0,
                cur: set[0].start_u128(),
                advance_first: false,
                remaining,
            },
        }
    }
}

impl Iterator for SetWalk<'_> {
    type Item = (usize, IpAddr);

    fn next(&mut self) -> Option<(usize, IpAddr)> {
        if self.remaining == 0 {
            return None;
        }
        if self.advance_first {
            if self.cur == self.set[self.idx].end_u128() {
                self.idx = (self.idx + 1) % self.set.len();
                self.cur = self.set[self.idx].start_u128();
            } else {
                self.cur += 1;
            }
        }
        self.advance_first = true;
        self.remaining -= 1;
        let v6 = self.set[self.idx].is_ipv6();
        Some((self.idx, from_u128(self.cur, v6)))
    }
}

fn check_network_name(name: &str) -> Result<()> {
    let bad = |why: &str| Err(IpamError::config("name", format!("{name:?} {why}")));
    if name.is_empty() {
        return bad("is empty");
    }
    if name == "." || name == ".." {
        return bad("is not a usable directory name");
    }
    if name.contains('/') || name.contains('\0') {
        return bad("contains '/' or NUL");
    }
    if name.len() > 255 {
        return bad("is longer than 255 bytes");
    }
    Ok(())
}

fn check_attachment(who: &Attachment) -> Result<()> {
    if who.container_id.is_empty() {
        return Err(IpamError::request("container ID is empty"));
    }
    // The file format separates the two with CR LF.
    let bad = |s: &str| s.contains(['\r', '\n', '\0']);
    if bad(&who.container_id) || bad(&who.ifname) {
        return Err(IpamError::request(format!(
            "container ID {:?} / ifname {:?} contains CR, LF or NUL",
            who.container_id, who.ifname
        )));
    }
    Ok(())
}

/// Reads a reservation with as few syscalls as possible (openat relative to the directory,
/// one read, close): every operation reads all of them.
fn read_owner(dir: &File, name: &str, path: &Path) -> Result<Attachment> {
    let io_err = |e: io::Error| IpamError::io("read reservation", path, e);
    let fd = openat(dir, name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| io_err(e.into()))?;
    let mut file = File::from(fd);
    let mut buf = [0u8; 512];
    let mut len = 0;
    // A regular file gives a short read only at its end.
    loop {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        }
        if len < buf.len() {
            break;
        }
        return Err(IpamError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("larger than {} bytes", buf.len()),
        });
    }
    parse_owner(path, &buf[..len])
}

/// Parses host-local's reservation content, `containerID\r\nifname`, into its owner. Pure
/// (no I/O) so that it can be fuzzed; the store wraps the error in [`IpamError::Corrupt`].
pub fn parse_reservation(bytes: &[u8]) -> std::result::Result<Attachment, String> {
    const SHAPE: &str = "expected \"containerID\\r\\nifname\"";
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let text = text.trim();
    if text.is_empty() {
        return Err("empty file".into());
    }
    let (id, ifname) = text.split_once("\r\n").ok_or(SHAPE)?;
    let (id, ifname) = (id.trim(), ifname.trim());
    // What check_attachment refuses to write is not a reservation either (fuzzing found
    // "1\n1\r\n\0" taken for an owner).
    let bad = |s: &str| s.contains(['\r', '\n', '\0']);
    if id.is_empty() || bad(id) || bad(ifname) {
        return Err(SHAPE.into());
    }
    Ok(Attachment::new(id, ifname))
}

fn parse_owner(path: &Path, bytes: &[u8]) -> Result<Attachment> {
    parse_reservation(bytes).map_err(|detail| IpamError::Corrupt {
        path: path.to_path_buf(),
        detail,
    })
}

fn write_synced(path: &Path, content: &[u8]) -> Result<()> {
    write_file(path, content, true)
}

fn write_file(path: &Path, content: &[u8], sync: bool) -> Result<()> {
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| {
            f.write_all(content)?;
            if sync {
                f.sync_all()?;
            }
            Ok(())
        });
    result.map_err(|e| {
        let _ = fs::remove_file(path);
        IpamError::io("write", path, e)
    })
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IpamError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reservation_reads_host_local_format() {
        assert_eq!(
            parse_reservation(b"abc\r\neth0"),
            Ok(Attachment::new("abc", "eth0"))
        );
        assert_eq!(
            parse_reservation(b" abc\r\neth0\n"),
            Ok(Attachment::new("abc", "eth0"))
        );
        for bad in [&b""[..], b"  ", b"abc", b"\r\neth0", b"\xff\r\neth0"] {
            assert!(parse_reservation(bad).is_err(), "{bad:?}");
        }
    }

    /// Fuzzing regression (ipam_state): owners that `check_attachment` would never write,
    /// with CR, LF or NUL inside, were accepted.
    #[test]
    fn parse_reservation_refuses_control_characters_in_owner() {
        for bad in [
            &b"1\n1\r\n\0"[..],
            b"a\nb\r\neth0",
            b"a\rb\r\neth0",
            b"a\0b\r\neth0",
            b"abc\r\neth\x000",
            b"abc\r\neth0\r\nextra",
        ] {
            assert!(parse_reservation(bad).is_err(), "{bad:?}");
        }
    }
}
