//! [`SliceWriter`]: rkyv writes straight into a caller's buffer.
//!
//! rkyv's own `Buffer` writer reports an overflow only as an opaque error;
//! this one, together with [`EncodeError`], reports how many bytes the
//! archive had reached, so the encoder can tell the runtime how large a send
//! buffer to fetch instead.

use core::any::Any;
use core::fmt;

use rkyv::rancor::{Source, Trace};
use rkyv::ser::{Positional, Writer};

/// A `rkyv` writer over a borrowed byte slice.
#[derive(Debug)]
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

/// The error a [`SliceWriter`] raises when the slice is full.
#[derive(Debug, thiserror::Error)]
#[error("archive needs at least {needed} bytes")]
struct SliceFull {
    needed: usize,
}

/// Error type of message serialization (the `E` of rkyv's serializer).
#[derive(Debug)]
pub enum EncodeError {
    /// The caller's buffer was too small; the archive needed at least this
    /// many bytes.
    Full {
        /// Lower bound of the archive's length.
        needed: usize,
    },
    /// A type's serializer failed for another reason.
    Failed(String),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::Full { needed } => {
                write!(f, "archive does not fit: needs at least {needed} bytes")
            }
            EncodeError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for EncodeError {}

impl Trace for EncodeError {
    fn trace<R>(self, _trace: R) -> Self
    where
        R: fmt::Debug + fmt::Display + Send + Sync + 'static,
    {
        self
    }
}

impl Source for EncodeError {
    fn new<T: std::error::Error + Send + Sync + 'static>(source: T) -> Self {
        match (&source as &dyn Any).downcast_ref::<SliceFull>() {
            Some(full) => EncodeError::Full {
                needed: full.needed,
            },
            None => EncodeError::Failed(source.to_string()),
        }
    }
}

impl<'a> SliceWriter<'a> {
    /// A writer that starts at the beginning of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
}

impl Positional for SliceWriter<'_> {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E: Source> Writer<E> for SliceWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.pos.saturating_add(bytes.len());
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
                Ok(())
            }
            None => Err(E::new(SliceFull { needed: end })),
        }
    }
}
