//! Core-pinned example nodes built on ringwire.
