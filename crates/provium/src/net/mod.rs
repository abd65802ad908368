//! The network: bridges between VMs, carried by a userspace Ethernet switch
//! per bridge, so no root, tap device or `tc` is needed.
//!
//! - [`switch`]: the switch thread — ports (one Unix datagram socket per VM
//!   NIC), MAC learning, flooding, delivery through the rules, captures;
//! - [`rules`]: partitions, isolation and impairments (latency, jitter,
//!   loss, bandwidth), whole-bridge and per direction, and the seeded RNG
//!   loss draws from;
//! - [`capture`], [`pcap`]: captures as pcap byte streams;
//! - [`bridge`]: the [`Bridge`] a lab declares — members, addresses, hosts
//!   entries, the graph a lab snapshot records — over its switch;
//! - [`uplink`]: a bridge's rootless route to the host (QEMU's user-mode
//!   network stack as one more switch port).
//!
//! What a capture records: a bridge capture, every frame the switch
//! receives from a connected member, once, as it arrives (before
//! partitions, loss and delay); a NIC capture, that member's wire as its
//! guest sees it — frames it sent, and frames delivered to it after the
//! rules and delays.

pub mod bridge;
pub mod capture;
pub mod pcap;
pub mod rules;
pub mod switch;
pub mod uplink;

pub use bridge::{Bridge, BridgeError, BridgeOpts, BridgeRecord, NetContext};
pub use capture::{Capture, CaptureScope};
pub use rules::{derive_seed, Impairment, Rules};
pub use switch::{NetError, PortCounters, Switch, SwitchStats};

#[cfg(test)]
mod tests;
