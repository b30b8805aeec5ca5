//! ringwire-transports: endpoints joining the runtime and the wire format.
