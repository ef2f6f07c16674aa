//! The network below every session and the portal: sockets, the one
//! upgradeable stream of both legs and its on-demand buffer, listeners'
//! certificates, the PROXY protocol header, and tunnels through outbound
//! proxies. Nothing here knows a mail protocol or an account.

pub mod buffer;
pub mod per_address;
pub mod proxy_header;
pub mod socket;
pub mod stream;
pub mod tls;
pub mod tunnel;
