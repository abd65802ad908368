//! The versioned handshake that opens every connection.
//!
//! The host sends [`Hello`] as soon as it connects to the port; the agent
//! drops every channel of an earlier session and answers [`HelloOk`], or
//! [`HelloErr`] when the versions differ. A host that stays connected (for
//! example through a snapshot) never says Hello again and the session simply
//! continues.

use serde::{Deserialize, Serialize};

/// Bumped whenever a frame kind, message, field or their encoding changes.
/// Host and agent ship together; there is no backwards compatibility.
pub const PROTOCOL_VERSION: u32 = 7;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloOk {
    pub protocol_version: u32,
    /// The agent's crate version.
    pub agent_version: String,
    /// `uname -r` of the guest kernel.
    pub kernel: String,
    /// Guest uptime (CLOCK_BOOTTIME) when the agent process started, in ms:
    /// the kernel's own boot time, the floor of any cold boot.
    pub agent_start_uptime_ms: u64,
    /// Whether the agent runs as PID 1 (no `/init` in the image).
    pub standalone: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloErr {
    pub host_version: u32,
    pub agent_version: u32,
}
