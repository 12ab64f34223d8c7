//! weft-ipam: weft's built-in IPAM store, a host-local-like allocator that is safe against
//! concurrent CNI processes and against a crash (kill -9, power loss) at any moment.
//!
//! # Config
//!
//! The ipam section takes host-local's keys ([`IpamConfig`]): `ranges` (a list of range
//! sets, each a list of `{subnet, rangeStart, rangeEnd, gateway}`), `routes`, `dataDir`
//! (default `/var/lib/cni/weft`), and host-local's legacy top-level
//! `subnet`/`rangeStart`/`rangeEnd`/`gateway`. [`IpamConfig::validate`] fills in defaults
//! exactly like host-local: rangeStart and gateway default to network+1, rangeEnd to the
//! last address (IPv6) or the one before the broadcast (IPv4). One address is allocated per
//! range set; the gateway is never allocated.
//!
//! # On-disk layout
//!
//! Like host-local, one directory per network, `<dataDir>/<network name>/` (mode 0700),
//! holding (all files mode 0600):
//!
//! - one file per reserved address, named by the address in its standard text form
//!   (`10.1.0.5`, `fd00::5`; `:` is fine in Linux file names, so this is host-local's naming),
//!   whose content is host-local's: `<containerID>\r\n<ifname>`;
//! - `last_reserved_ip.<N>`: the last address handed out from range set N, where the next
//!   round-robin search starts (only a hint: unreadable means "start at rangeStart");
//! - `lock`: every change holds `flock(LOCK_EX)` on it for the whole operation; reads hold
//!   `LOCK_SH`;
//! - `.tmp-<pid>-<n>`: temp files while writing; never taken for reservations.
//!
//! # Crash safety
//!
//! A reservation is written to a temp file which is fsynced, then `link()`ed to the
//! address's name (which fails if the name exists, so it never replaces a reservation),
//! then the directory is fsynced before `allocate` returns. A crash thus leaves either no
//! file for the address or a complete one. Temp files seen under the exclusive lock can
//! only be leftovers of a dead process (temps are only created under that lock); the next
//! locked operation removes them. Within one call `allocate` is all or nothing on errors;
//! a crash between the sets of a dual-stack allocation can leave the first set's
//! reservation, owned by the attachment, for the runtime's DEL or GC to release. Likewise a
//! crash in the middle of `release` can leave some of the attachment's files; `release` is
//! idempotent, so the runtime's retried DEL finishes the job.
//!
//! A reservation file that cannot be parsed gives [`IpamError::Corrupt`] naming it from
//! [`Store::list`]; [`Store::get`], [`Store::release`] and [`Store::allocate`] skip it (its
//! address stays taken) and [`Store::gc`] removes it.

mod config;
mod error;
mod store;

pub use config::{
    default_gateway, validate_range, validate_range_sets, IpamConfig, RangeConfig, RangeSet,
    RouteConfig, ValidatedRange, DEFAULT_DATA_DIR,
};
pub use error::{ErrorKind, IpamError, Result};
pub use store::{
    parse_reservation, Allocation, Attachment, GcReport, PendingSync, RangeUsage, Store,
    LAST_RESERVED_PREFIX, LOCK_FILE, TEMP_PREFIX,
};
