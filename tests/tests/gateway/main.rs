//! The gateway: routing, hosted providers, reloads, hostile input, the HTTP front, secrets, metrics, telemetry and mTLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod default_policy;
mod external;
mod hostile_input;
mod metrics;
mod mislabel_canary;
mod mtls;
mod openai_api;
mod openai_tools;
mod reload;
mod routing;
mod secrets;
mod telemetry;
