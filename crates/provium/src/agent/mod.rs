//! The host side of the agent connection.
//!
//! [`client`] owns the socket, the handshake and the routing of frames to
//! channels; [`ops`] gives each request a typed method; [`stream`] is a
//! credit-paced stream of bytes from the guest; [`output`] bounds and
//! collects command output.

mod client;
mod ops;
pub mod output;
mod stream;

pub use client::{AgentClient, AgentError};
pub use ops::PendingSyscall;
pub use stream::{AgentStream, Chunk, DEFAULT_WINDOW};
