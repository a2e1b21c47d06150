//! Integration tests: the library and the real binary against the simulator over real
//! HTTP on loopback. One test binary keeps link time down.

mod audit_log;
mod bad_input;
mod bounds;
mod change_control;
mod client;
mod common;
mod daemon;
mod exactly_once;
mod faults;
mod fuzz;
mod mirror;
mod pass;
mod real_api;
mod remembered;
mod replicas;
mod review;
mod rules_cli;
mod tenants;
