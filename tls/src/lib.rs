//! Mutual TLS between Edgewise nodes, with rustls (ring).
//!
//! - [`issue`]: the fleet CA and the certificates it issues (`edgewise certs init`).
//! - [`Identity`]: who a certificate speaks for — a node, a gateway or a tenant — from its one
//!   `spiffe://edgewise/<kind>/<name>` URI name.
//! - [`Tls`]: a daemon's files loaded into server and client configs, replaceable on SIGHUP
//!   without dropping connections.
//! - [`TlsMode`]: the `[tls]` section of both daemons' config files.
//! - [`net`]: TLS connections for tonic servers ([`net::incoming`]) and channels
//!   ([`net::channel`]).

mod config;
mod identity;
pub mod issue;
pub mod net;
mod public;
mod settings;

pub use config::{ClientAuth, Tls, TlsError, TlsFiles, client_config, load_roots};
pub use identity::{Identity, valid_name};
pub use public::{client_config_with_identity, public_client_config};
pub use settings::{RawTls, TlsMode, validate};
