//! Microbenchmarks of agentctl. The benchmarks are in `benches/`; run them with `cargo bench -p agentctl-benches`.
