//! `edgewise`, the operator's command line, as a library: the gateway client and its output
//! (`client`), certificates and tokens (`credentials`), `edgewise selfcheck` (`selfcheck`) and
//! the evaluation tool (`eval`: run item sets through the gateway, report, train the learned
//! estimator's heads, calibrate a policy). It talks to a gateway over gRPC; the daemon itself
//! is `edgewise-gateway`.

pub mod client;
pub mod credentials;
pub mod eval;
pub mod selfcheck;
