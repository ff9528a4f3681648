//! Events: what happened to a session, in the order it happened.

use uuid::Uuid;

use super::message::Message;
use super::session::Session;
use super::time::Timestamp;

/// The kinds of event, with their wire names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EventKind {
    /// `session.created`.
    SessionCreated,
    /// `message`.
    Message,
    /// `session.renewed`: by a message, a heartbeat or a manual renewal.
    SessionRenewed,
    /// `session.timeout_updated`.
    SessionTimeoutUpdated,
    /// `session.expiring`: the session entered its warning window.
    SessionExpiring,
    /// `session.expired`.
    SessionExpired,
    /// `session.deleted`.
    SessionDeleted,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 7] = [
        EventKind::SessionCreated,
        EventKind::Message,
        EventKind::SessionRenewed,
        EventKind::SessionTimeoutUpdated,
        EventKind::SessionExpiring,
        EventKind::SessionExpired,
        EventKind::SessionDeleted,
    ];

    /// The SSE event name.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::SessionCreated => "session.created",
            EventKind::Message => "message",
            EventKind::SessionRenewed => "session.renewed",
            EventKind::SessionTimeoutUpdated => "session.timeout_updated",
            EventKind::SessionExpiring => "session.expiring",
            EventKind::SessionExpired => "session.expired",
            EventKind::SessionDeleted => "session.deleted",
        }
    }

    /// Whether a per-session stream ends after this event.
    pub const fn ends_session(self) -> bool {
        matches!(self, EventKind::SessionExpired | EventKind::SessionDeleted)
    }
}

/// What an event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventData {
    /// The session as it was right after the change.
    Session(Session),
    /// The message appended.
    Message {
        /// The message.
        message: Message,
        /// Its session's metadata (compact JSON text), which answers show with each message.
        session_metadata_json: String,
    },
}

/// One event of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Global, increasing id (the SSE `id:`).
    pub id: u64,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    pub kind: EventKind,
    /// The session it is about.
    pub session_id: Uuid,
    /// That session's agent.
    pub agent_id: Uuid,
    /// That session's user.
    pub user_id: Uuid,
    /// The payload.
    pub data: EventData,
}

/// Which events a reader wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventFilter {
    /// Every event of one session.
    Session(Uuid),
    /// Every event of one agent's sessions.
    Agent(Uuid),
    /// Every event of one user's sessions.
    User(Uuid),
    /// Only the agent's replies to one message.
    RepliesTo {
        /// The session.
        session_id: Uuid,
        /// The message replied to.
        message_id: Uuid,
    },
}

impl EventFilter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        match *self {
            EventFilter::Session(id) => event.session_id == id,
            EventFilter::Agent(id) => event.agent_id == id,
            EventFilter::User(id) => event.user_id == id,
            EventFilter::RepliesTo {
                session_id,
                message_id,
            } => {
                event.session_id == session_id
                    && matches!(&event.data, EventData::Message { message: m, .. } if m.is_agent && m.parent_id == Some(message_id))
            }
        }
    }
}

/// The lifecycle notices a session is due at `now` and has not had yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DueNotices {
    /// `session.expiring` is due.
    pub expiring: bool,
    /// `session.expired` is due.
    pub expired: bool,
}

impl Session {
    /// Which lifecycle notices are due at `now`: `session.expiring` once per warning window
    /// (a renewal or timeout update opens a new one), `session.expired` once.
    pub fn due_notices(&self, now: Timestamp) -> DueNotices {
        let expired = self.is_expired(now);
        DueNotices {
            expiring: !expired
                && self.timeout.warning_threshold_minutes > 0
                && now >= self.warns_at()
                && self.expiring_noticed_for != Some(self.warns_at()),
            expired: expired && !self.expired_noticed,
        }
    }

    /// Records that the notices in `due` were sent.
    pub fn mark_noticed(&mut self, due: DueNotices) {
        if due.expiring {
            self.expiring_noticed_for = Some(self.warns_at());
        }
        if due.expired {
            self.expired_noticed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::TimeoutConfig;

    const T0: Timestamp = Timestamp::from_millis(1_795_255_200_000);
    const MINUTE: Duration = Duration::from_secs(60);
    const MS: Duration = Duration::from_millis(1);

    fn session(timeout: u32, warning: u32) -> Session {
        let config = TimeoutConfig {
            timeout_minutes: timeout,
            auto_renew: true,
            max_duration_minutes: 720,
            warning_threshold_minutes: warning,
        };
        Session::new(
            Uuid::nil(),
            Uuid::nil(),
            Uuid::nil(),
            config,
            "{}".into(),
            T0,
        )
    }

    #[test]
    fn expiring_is_due_from_the_start_of_the_window_until_expiry() {
        let s = session(30, 5);
        assert_eq!(s.due_notices(T0 + 25 * MINUTE - MS), DueNotices::default());
        assert!(s.due_notices(T0 + 25 * MINUTE).expiring);
        assert!(s.due_notices(T0 + 30 * MINUTE - MS).expiring);
        let at_expiry = s.due_notices(T0 + 30 * MINUTE);
        assert_eq!(
            at_expiry,
            DueNotices {
                expiring: false,
                expired: true
            }
        );
    }

    #[test]
    fn each_notice_is_sent_once_per_window() {
        let mut s = session(30, 5);
        let due = s.due_notices(T0 + 26 * MINUTE);
        s.mark_noticed(due);
        assert_eq!(s.due_notices(T0 + 27 * MINUTE), DueNotices::default());
        // A renewal opens a new window.
        s.renew(T0 + 28 * MINUTE);
        assert_eq!(s.due_notices(T0 + 29 * MINUTE), DueNotices::default());
        assert!(s.due_notices(T0 + 53 * MINUTE).expiring);
        let due = s.due_notices(T0 + 57 * MINUTE);
        assert_eq!(
            due,
            DueNotices {
                expiring: true,
                expired: false
            }
        );
        s.mark_noticed(due);
        assert_eq!(s.due_notices(T0 + 58 * MINUTE - MS), DueNotices::default());
        let expired = s.due_notices(T0 + 58 * MINUTE);
        assert_eq!(
            expired,
            DueNotices {
                expiring: false,
                expired: true
            }
        );
        s.mark_noticed(expired);
        assert_eq!(s.due_notices(T0 + 90 * MINUTE), DueNotices::default());
    }

    #[test]
    fn a_zero_threshold_never_warns_and_a_zero_timeout_expires_at_once() {
        assert_eq!(
            session(30, 0).due_notices(T0 + 30 * MINUTE - MS),
            DueNotices::default()
        );
        assert_eq!(
            session(0, 0).due_notices(T0),
            DueNotices {
                expiring: false,
                expired: true
            }
        );
    }
}
