//! agent-docker
