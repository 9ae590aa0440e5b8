//! Examples of the agentctl SDK. The code is in the `*.rs` files beside this crate; see `README.md`.
