//! Reading archived messages in place.
//!
//! Two paths:
//!
//! - [`access`]: checked. Verifies alignment and runs bytecheck. This is what
//!   bytes from a peer go through (normally via [`Schema::validate`] at
//!   ingress, so that it happens exactly once).
//! - [`access_trusted`]: unchecked, for bytes this process wrote itself
//!   (in-process transports, or a payload already validated at ingress).
//!   Debug builds still check size and alignment.
//!
//! [`Schema::validate`]: crate::Schema::validate

use rkyv::rancor;

use crate::error::ProtoError;
use crate::header::FRAME_ALIGN;
use crate::message::Message;

/// Alignment a payload must have to be read in place.
pub const PAYLOAD_ALIGN: usize = FRAME_ALIGN;

/// Checks that `payload` starts on a [`PAYLOAD_ALIGN`] boundary.
pub fn check_alignment(payload: &[u8]) -> Result<(), ProtoError> {
    let addr = payload.as_ptr() as usize;
    if addr % PAYLOAD_ALIGN == 0 {
        Ok(())
    } else {
        Err(ProtoError::Misaligned {
            addr,
            align: PAYLOAD_ALIGN,
        })
    }
}

/// Validates `payload` as an archived `T` and returns a reference into it.
///
/// Use this for bytes from an untrusted source when no [`Schema`] is at hand.
///
/// [`Schema`]: crate::Schema
pub fn access<T: Message>(payload: &[u8]) -> Result<&T::Archived, ProtoError> {
    check_alignment(payload)?;
    rkyv::access::<T::Archived, rancor::Error>(payload).map_err(|source| ProtoError::Validation {
        type_id: T::TYPE_ID,
        source,
    })
}

/// Returns a reference to the archived `T` in `payload` without validation.
///
/// Debug builds assert that the payload is aligned and large enough for the
/// root object; release builds check nothing.
///
/// # Safety
///
/// `payload` must hold a valid archive of `T` produced by this binary's rkyv
/// (for example by [`encode_message`](crate::encode_message) in this
/// process), or bytes that already passed [`access`] or
/// [`Schema::validate`](crate::Schema::validate) as `T`, and must start on a
/// [`PAYLOAD_ALIGN`] boundary.
pub unsafe fn access_trusted<T: Message>(payload: &[u8]) -> &T::Archived {
    debug_assert!(
        check_alignment(payload).is_ok(),
        "trusted payload is not {PAYLOAD_ALIGN}-byte aligned"
    );
    debug_assert!(
        payload.len() >= core::mem::size_of::<T::Archived>(),
        "trusted payload ({} bytes) is smaller than the archived root ({} bytes)",
        payload.len(),
        core::mem::size_of::<T::Archived>()
    );
    // SAFETY: the caller guarantees `payload` is a valid, aligned archive of
    // `T` (this function's contract), which is what `access_unchecked` needs.
    unsafe { rkyv::access_unchecked::<T::Archived>(payload) }
}
