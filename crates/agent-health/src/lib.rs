//! agent-health
