//! Types and pure rules: no I/O, no warp, no sled, no tokio.

pub mod event;
pub mod message;
pub mod session;
pub mod time;

pub use event::{DueNotices, Event, EventData, EventFilter, EventKind};
pub use message::{Attachment, Message, NewMessage};
pub use session::{
    Minutes, Renewal, Session, SessionChange, SessionError, TimeoutConfig, TimeoutConfigError,
    TimeoutConfigPatch, TimeoutPolicy,
};
pub use time::{Clock, ClockVerdict, ClockWatch, ManualClock, SystemClock, Timestamp};
