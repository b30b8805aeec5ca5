//! Shared pieces of ringwire's load generator, peer servers and benchmarks.
