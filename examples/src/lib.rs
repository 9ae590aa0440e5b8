//! Examples of the agentctl SDK.
