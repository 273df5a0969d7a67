//! berth's end-to-end suite: one test binary, real processes (`berth dev`, `berth-agent`,
//! `berth-webhook`, the `berth` CLI), real TLS, real SQLite files, the real Docker Engine and
//! a real private registry. Build the binaries first (`cargo build --workspace --bins`); the
//! README's test command does.
//!
//! `fixture` starts and reaches all of it; each other module is a suite named after the
//! behaviour it checks.

// A test may say on stderr what it measured (the webhook shim's rate limit).
#![allow(clippy::print_stderr)]

mod fixture;

mod acme_certificates;
mod admin_api;
mod agent_certificates;
mod agent_deploys;
mod audit_trail;
mod crash_campaign;
mod data_lifecycle;
mod docker_executor;
mod effective_environment;
mod executor_contract;
mod operator_experience;
mod outgoing_notifications;
mod proxy_deploys;
mod readme_tour;
mod secret_providers;
mod v1_import;
mod webhook_shim;
