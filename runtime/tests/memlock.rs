//! Start-up with too little locked memory for the registered send pool must
//! fail with an error that names the limit, not panic or hang.
//!
//! This file is its own test process: it lowers RLIMIT_MEMLOCK for the whole
//! process and drops CAP_IPC_LOCK (which would lift the limit) from the test
//! thread, whose core threads inherit it.

use ringwire_runtime::{BuildError, Placement, Runtime, StartError};

const CAP_IPC_LOCK: u32 = 14;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn drop_ipc_lock_capability() {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a v3 header writes two CapData structs.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget failed: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_IPC_LOCK);
    // SAFETY: capset reads the header and two CapData structs; clearing an
    // effective bit is always permitted.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset failed: {}", std::io::Error::last_os_error());
}

#[test]
fn too_little_locked_memory_is_a_clear_error() {
    let limit = libc::rlimit {
        rlim_cur: 64 * 1024,
        rlim_max: 64 * 1024,
    };
    // SAFETY: `limit` is a valid rlimit; lowering a limit is always allowed.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) }, 0);
    drop_ipc_lock_capability();

    // A tiny ring fits the limit; 64 x 64 KiB = 4 MiB of registered send
    // buffers do not.
    let err = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .ring_entries(8)
        .recv_buffers(16)
        .send_buffers(64)
        .send_buffer_size(64 * 1024)
        .build()
        .err()
        .expect("registering 4 MiB under a 64 KiB memlock limit must fail");
    assert!(
        matches!(
            err,
            BuildError::Core {
                core: 0,
                error: StartError::RegisterSendBuffers {
                    count: 64,
                    size: 65_536,
                    memlock: Some(65_536),
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );

    // Without CAP_IPC_LOCK the rings count against the limit too: a large
    // ring is refused at set-up, with the same explanation.
    let err = Runtime::builder()
        .placement(Placement::Unpinned(1))
        .ring_entries(4096)
        .send_buffers(0)
        .build()
        .err()
        .expect("a 4096-entry ring under a 64 KiB memlock limit must fail");
    assert!(
        matches!(
            err,
            BuildError::Core {
                core: 0,
                error: StartError::RingMemory {
                    entries: 4096,
                    memlock: Some(65_536),
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
}
