//! weft-netops: the data-plane operations of weft, synchronous (no async
//! runtime: the CNI plugin is a short-lived process and must start fast).
//!
//! * [`netns`]: network namespaces.
//!   - `NetNs::open(path)` opens and verifies a netns (`Error::NotFound` /
//!     `Error::NotANetns`), `NetNs::current()`.
//!   - `create_named(name) -> NetNs` (like `ip netns add`, brings `lo` up),
//!     `delete_named(name)` (Ok if absent), `list_named()`.
//!   - `run_in(&ns, || ...) -> Result<T>`: run a closure with the calling
//!     thread inside `ns`, restored afterwards even on panic. Never hold it
//!     across `.await`.
//! * [`netlink`]: `Netlink`, a NETLINK_ROUTE socket (`Netlink::new()` in the
//!   current netns, `Netlink::in_netns(&ns)` bound to another one).
//!   - links: `get_link_by_name/index -> Option<Link>`, `list_links`,
//!     `create_bridge`, `create_veth(&VethSpec)` (peer created directly in
//!     its netns), `create_vxlan(&VxlanSpec)`, `delete_link`,
//!     `delete_link_by_name -> bool`, `set_link_up/down`, `set_mtu`,
//!     `set_master`, `set_alias`, `set_mac`, `set_bridge_port_hairpin`.
//!   - addresses: `add_address`, `replace_address`, `del_address`,
//!     `list_addresses(Option<ifindex>) -> Vec<(ifindex, IpNet)>`.
//!   - routes: `add_route`, `replace_route`, `del_route`,
//!     `list_routes(Option<IpFamily>, Option<table>)`, `route_get(ip)`.
//!   - neighbours: `replace_neighbour`, `del_neighbour`, `list_neighbours`.
//!   - FDB (AF_BRIDGE, NTF_SELF, for vxlan): `append_fdb`, `replace_fdb`,
//!     `del_fdb`, `list_fdb(ifindex)`.
//!   - `batch(&[Request]) -> Vec<Result<()>>`: many route/neighbour/FDB/
//!     address operations pipelined (chunks of `BATCH_CHUNK` sent before
//!     reading the acks), for programming thousands of entries fast.
//! * [`sysctl`]: `read` / `write` under /proc/sys, in the calling thread's
//!   netns (combine with `netns::run_in`).
//!
//! Errors ([`Error`]) carry the operation and the object, e.g.
//! "add route 10.1.0.0/24 via 10.0.0.2: File exists (os error 17)", and
//! answer `is_exists()` / `is_not_found()`.

pub mod bridge;
pub mod error;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod sysctl;

pub use error::{Error, Result};
pub use netlink::{
    FdbEntry, IpFamily, Link, Neighbour, Netlink, Request, Route, VethPair, VethSpec, VxlanSpec,
};
pub use netns::{create_named, delete_named, list_named, run_in, NetNs};
