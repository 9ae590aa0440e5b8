//! agent-rollout
