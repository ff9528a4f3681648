//! End-to-end tests of the HTTP API (the contract in API.md), one integration binary with a
//! module per area. Each test starts its own server on `127.0.0.1:0` with a temporary data
//! directory, so tests are independent and run in parallel.

mod durability;
mod elizaos;
mod errors;
mod events;
mod full_disk;
mod helpers;
mod lifecycle;
mod limits;
mod messages;
mod openapi;
mod operability;
mod sessions;
