//! The libibverbs implementation on this machine. Where there is no RDMA
//! device (no adapter, no Soft-RoCE, or a kernel without RDMA support), it
//! must fail at once with an error that says so and how to get one; where
//! there is one, it must open and describe its port.
#![cfg(feature = "rdma")]

use ringwire_transports::rdma::completion::{CompletionConfig, CompletionCore, RdmaError};
use ringwire_transports::rdma::ibv::{device_names, IbvDevice};
use ringwire_transports::rdma::verbs::{Verbs, VerbsError};

fn assert_no_device_message(e: &VerbsError) {
    let text = e.to_string();
    assert!(text.starts_with("no RDMA device: "), "{text}");
    assert!(
        text.contains("rdma link add rxe0 type rxe netdev"),
        "{text}"
    );
}

#[test]
fn opening_says_what_is_missing_or_describes_the_device() {
    match IbvDevice::open(None) {
        Err(e @ VerbsError::NoDevice { .. }) => {
            eprintln!("as expected without a device: {e}");
            assert_no_device_message(&e);
            assert!(matches!(
                device_names(),
                Err(VerbsError::NoDevice { .. }) | Ok(_)
            ));
        }
        Err(other) => panic!("expected NoDevice or a device, got: {other}"),
        Ok(dev) => {
            assert!(!dev.device_name().is_empty());
            assert!(dev.port().port_num >= 1);
            assert!(device_names()
                .unwrap()
                .contains(&dev.device_name().to_string()));
        }
    }
}

#[test]
fn an_unknown_device_name_is_refused() {
    match IbvDevice::open(Some("no-such-hca-0")) {
        Err(VerbsError::NoDevice { .. }) => {}
        Err(VerbsError::DeviceNotFound { name, .. }) => assert_eq!(name, "no-such-hca-0"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn the_completion_core_fails_at_once_without_a_device() {
    if IbvDevice::open(None).is_ok() {
        // A machine with a device: the error path cannot be reached here.
        return;
    }
    let started = CompletionCore::start(
        CompletionConfig::new(1),
        || IbvDevice::open(None),
        Vec::new(),
    );
    match started {
        Err(RdmaError::Verbs(e @ VerbsError::NoDevice { .. })) => assert_no_device_message(&e),
        Err(other) => panic!("expected NoDevice, got: {other}"),
        Ok(_) => panic!("a completion core started without a device"),
    }
}
