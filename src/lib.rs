//! casewarden: keeps Stellar Cyber cases clean by running Rhai rules against the Cases API
//! and recording every planned and applied change in a hash-chained SQLite audit log.

pub mod app;
pub mod audit;
pub mod calendar;
pub mod cli;
pub mod config;
pub mod cron;
pub mod daemon;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod pass;
pub mod plan;
pub mod report;
pub mod review;
pub mod rules;
pub mod secret;
pub mod sim;
pub mod stellar;
pub mod text;
pub mod time;

pub use time::now_ms;
