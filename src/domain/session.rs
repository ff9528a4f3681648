//! Sessions and their lifecycle rules, as pure functions of `now`.

use super::EventKind;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::time::{minutes, Timestamp};

/// A session's timeout settings, fully resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutConfig {
    /// Inactivity timeout: how long after its last renewal a session lives.
    pub timeout_minutes: u32,
    /// Whether activity (messages, heartbeats) renews the session.
    pub auto_renew: bool,
    /// The cap on a session's life, counted from its creation.
    pub max_duration_minutes: u32,
    /// How long before expiry the session counts as near expiration; 0 never warns.
    pub warning_threshold_minutes: u32,
}

/// A minutes field as a client sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Minutes {
    /// An integer, kept wide so that an out-of-range value is reported, never wrapped.
    Integer(i64),
    /// Something else (`30.0`, `"30"`): refused like an integer out of range, with the
    /// field's range.
    NotAnInteger,
}

impl From<i64> for Minutes {
    fn from(minutes: i64) -> Self {
        Minutes::Integer(minutes)
    }
}

impl Minutes {
    /// The integer, or `fallback` for a value that is not one (which is refused anyway).
    fn or(self, fallback: i64) -> i64 {
        match self {
            Minutes::Integer(minutes) => minutes,
            Minutes::NotAnInteger => fallback,
        }
    }
}

/// A partial timeout config as a client sent it: `None` means "not given".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeoutConfigPatch {
    /// `timeoutMinutes`, if given.
    pub timeout_minutes: Option<Minutes>,
    /// `autoRenew`, if given.
    pub auto_renew: Option<bool>,
    /// `maxDurationMinutes`, if given.
    pub max_duration_minutes: Option<Minutes>,
    /// `warningThresholdMinutes`, if given.
    pub warning_threshold_minutes: Option<Minutes>,
}

impl TimeoutConfigPatch {
    fn has_non_integer(&self) -> bool {
        [
            self.timeout_minutes,
            self.max_duration_minutes,
            self.warning_threshold_minutes,
        ]
        .contains(&Some(Minutes::NotAnInteger))
    }
}

/// The server's defaults and bounds for timeout configs (from the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutPolicy {
    /// `timeoutMinutes` when the client gives none.
    pub default_timeout_minutes: u32,
    /// Smallest accepted `timeoutMinutes`.
    pub min_timeout_minutes: u32,
    /// Largest accepted `timeoutMinutes`.
    pub max_timeout_minutes: u32,
    /// `maxDurationMinutes` when the client gives none (raised to the timeout if lower).
    pub default_max_duration_minutes: u32,
    /// Largest accepted `maxDurationMinutes`.
    pub max_duration_limit_minutes: u32,
    /// `warningThresholdMinutes` when the client gives none (lowered to the timeout if higher).
    pub default_warning_threshold_minutes: u32,
}

/// A timeout config the policy does not accept; names the field and its range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be an integer between {min} and {max}")]
pub struct TimeoutConfigError {
    /// The JSON field name.
    pub field: &'static str,
    /// Smallest allowed value.
    pub min: u32,
    /// Largest allowed value.
    pub max: u32,
}

/// A config before its bounds are checked.
struct Candidate {
    timeout_minutes: Minutes,
    auto_renew: bool,
    max_duration_minutes: Minutes,
    warning_threshold_minutes: Minutes,
}

impl TimeoutPolicy {
    /// Resolves a new session's config: fields not given take defaults derived from
    /// the fields that were given, then everything is checked against the bounds.
    ///
    /// # Errors
    /// The first field out of its range.
    pub fn resolve_new(
        &self,
        patch: TimeoutConfigPatch,
    ) -> Result<TimeoutConfig, TimeoutConfigError> {
        let default_timeout = i64::from(self.default_timeout_minutes);
        let timeout_minutes = patch.timeout_minutes.unwrap_or(default_timeout.into());
        // Defaults follow the timeout given; a timeout that is not an integer is refused
        // before they are looked at.
        let timeout = timeout_minutes.or(default_timeout);
        self.check(Candidate {
            timeout_minutes,
            auto_renew: patch.auto_renew.unwrap_or(true),
            max_duration_minutes: patch.max_duration_minutes.unwrap_or_else(|| {
                i64::from(self.default_max_duration_minutes)
                    .max(timeout)
                    .into()
            }),
            warning_threshold_minutes: patch.warning_threshold_minutes.unwrap_or_else(|| {
                i64::from(self.default_warning_threshold_minutes)
                    .min(timeout)
                    .into()
            }),
        })
    }

    /// Refuses a patch with a field that is not an integer, as creation would refuse it:
    /// naming the first field, in the order they are checked, that cannot be accepted,
    /// with its range. A patch of integers passes (its ranges are checked on resolving).
    ///
    /// # Errors
    /// The first field out of its range, when a field is not an integer.
    pub fn check_integers(&self, patch: TimeoutConfigPatch) -> Result<(), TimeoutConfigError> {
        if patch.has_non_integer() {
            self.resolve_new(patch).map(drop)
        } else {
            Ok(())
        }
    }

    /// Applies a partial update to an existing config: fields not given keep their
    /// current values; the result is checked as at creation.
    ///
    /// # Errors
    /// The first field out of its range.
    pub fn resolve_update(
        &self,
        current: TimeoutConfig,
        patch: TimeoutConfigPatch,
    ) -> Result<TimeoutConfig, TimeoutConfigError> {
        self.check(Candidate {
            timeout_minutes: patch
                .timeout_minutes
                .unwrap_or(i64::from(current.timeout_minutes).into()),
            auto_renew: patch.auto_renew.unwrap_or(current.auto_renew),
            max_duration_minutes: patch
                .max_duration_minutes
                .unwrap_or(i64::from(current.max_duration_minutes).into()),
            warning_threshold_minutes: patch
                .warning_threshold_minutes
                .unwrap_or(i64::from(current.warning_threshold_minutes).into()),
        })
    }

    fn check(&self, candidate: Candidate) -> Result<TimeoutConfig, TimeoutConfigError> {
        let in_range = |field, value: Minutes, min: u32, max: u32| {
            let Minutes::Integer(value) = value else {
                return Err(TimeoutConfigError { field, min, max });
            };
            u32::try_from(value)
                .ok()
                .filter(|v| (min..=max).contains(v))
                .ok_or(TimeoutConfigError { field, min, max })
        };
        let timeout_minutes = in_range(
            "timeoutMinutes",
            candidate.timeout_minutes,
            self.min_timeout_minutes,
            self.max_timeout_minutes,
        )?;
        let max_duration_minutes = in_range(
            "maxDurationMinutes",
            candidate.max_duration_minutes,
            timeout_minutes,
            self.max_duration_limit_minutes,
        )?;
        let warning_threshold_minutes = in_range(
            "warningThresholdMinutes",
            candidate.warning_threshold_minutes,
            0,
            timeout_minutes,
        )?;
        Ok(TimeoutConfig {
            timeout_minutes,
            auto_renew: candidate.auto_renew,
            max_duration_minutes,
            warning_threshold_minutes,
        })
    }
}

/// Why a request on a session cannot proceed. Callers branch on these.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// No such session (never existed, deleted, or swept).
    #[error("session {0} does not exist")]
    NotFound(Uuid),
    /// The session exists but has expired.
    #[error("session {id} expired at {expires_at}")]
    Expired {
        /// The session id.
        id: Uuid,
        /// When it expired.
        expires_at: Timestamp,
    },
    /// A manual renewal could not move `expiresAt` later by a millisecond.
    #[error(
        "session {id} {}",
        if *at_max_duration {
            format!("already expires at its maximum duration ({expires_at})")
        } else {
            format!("was renewed within this millisecond and expires at {expires_at}; renew again later")
        }
    )]
    MaxDurationReached {
        /// The session id.
        id: Uuid,
        /// Its unchanged expiry.
        expires_at: Timestamp,
        /// Whether that expiry is the max-duration cap (else a renewal in the same
        /// millisecond came first).
        at_max_duration: bool,
    },
    /// The message named as parent is not a message of this session.
    #[error("message {parent_id} is not a message of session {session_id}")]
    InvalidParent {
        /// The session id.
        session_id: Uuid,
        /// The parent id the client gave.
        parent_id: Uuid,
    },
    /// The author is neither the session's user nor its agent.
    #[error("author {author_id} is neither the user nor the agent of session {session_id}")]
    ForbiddenAuthor {
        /// The session id.
        session_id: Uuid,
        /// The author id the client gave.
        author_id: Uuid,
    },
    /// A timeout update the policy does not accept.
    #[error("{0}")]
    InvalidTimeout(#[from] TimeoutConfigError),
    /// A session with this id is stored already (or is still being deleted).
    #[error("session {0} already exists")]
    AlreadyExists(Uuid),
    /// A message with this id is stored already, in any session.
    #[error("message {0} already exists")]
    MessageExists(Uuid),
    /// A session and messages given to be stored as they are do not make a whole history.
    #[error("session {session_id} cannot be restored: {reason}")]
    Unrestorable {
        /// The session id.
        session_id: Uuid,
        /// What is wrong.
        reason: String,
    },
    /// No such message in this session.
    #[error("message {message_id} does not exist in session {session_id}")]
    MessageNotFound {
        /// The session id.
        session_id: Uuid,
        /// The message id the client gave.
        message_id: Uuid,
    },
}

impl SessionError {
    /// The error code the contract answers it with, also the reason metrics count it by.
    pub const fn code(&self) -> &'static str {
        match self {
            SessionError::NotFound(_) => "SESSION_NOT_FOUND",
            SessionError::Expired { .. } => "SESSION_EXPIRED",
            SessionError::MaxDurationReached { .. } => "MAX_DURATION_REACHED",
            SessionError::InvalidParent { .. } => "INVALID_PARENT",
            SessionError::ForbiddenAuthor { .. } => "FORBIDDEN_AUTHOR",
            SessionError::InvalidTimeout(_) => "INVALID_TIMEOUT_CONFIG",
            SessionError::AlreadyExists(_) => "SESSION_EXISTS",
            SessionError::MessageExists(_) => "MESSAGE_EXISTS",
            SessionError::Unrestorable { .. } => "UNRESTORABLE",
            SessionError::MessageNotFound { .. } => "MESSAGE_NOT_FOUND",
        }
    }
}

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session id (UUID v7, so ids sort by creation time).
    pub id: Uuid,
    /// The agent taking part.
    pub agent_id: Uuid,
    /// The user taking part.
    pub user_id: Uuid,
    /// When it was created; the max-duration cap counts from here.
    pub created_at: Timestamp,
    /// The last message or heartbeat (creation counts).
    pub last_activity: Timestamp,
    /// The last renewal (creation counts as the first); the timeout counts from here.
    pub renewed_at: Timestamp,
    /// Renewals so far (creation not counted).
    pub renewal_count: u64,
    /// The resolved timeout settings.
    pub timeout: TimeoutConfig,
    /// Client metadata as compact JSON text (the codec cannot encode JSON values).
    pub metadata_json: String,
    /// Messages appended so far; also the seq of the newest message.
    pub message_count: u64,
    /// The newest message, the default parent of the next one.
    pub last_message_id: Option<Uuid>,
    /// When the newest message was stored; message times never go backwards.
    pub last_message_at: Timestamp,
    /// The `warnsAt` a `session.expiring` event was sent for, if any.
    pub expiring_noticed_for: Option<Timestamp>,
    /// Whether `session.expired` was sent.
    pub expired_noticed: bool,
}

/// What a renewal attempt did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// `expiresAt` moved later; `renewedAt` and `renewalCount` were updated.
    Renewed,
    /// Renewing would not move `expiresAt` later, so nothing changed.
    Unchanged,
}

/// A change a client asks of an active session, applied inside the write that stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionChange {
    /// A manual renewal: refused when it cannot move `expiresAt` later.
    Renew,
    /// Activity without a message: renews when the session auto-renews.
    Heartbeat,
    /// A new timeout configuration: `patch` over the current one, under `policy`.
    Timeout {
        /// The fields given.
        patch: TimeoutConfigPatch,
        /// The server's bounds.
        policy: TimeoutPolicy,
    },
}

impl SessionChange {
    /// Applies the change to `session` at `now`. Returns the event that announces it
    /// (none for a heartbeat that renews nothing).
    ///
    /// # Errors
    /// A renewal that cannot extend the session, or a timeout configuration out of range.
    pub fn apply(
        self,
        session: &mut Session,
        now: Timestamp,
    ) -> Result<Option<EventKind>, SessionError> {
        match self {
            SessionChange::Renew => match session.renew(now) {
                Renewal::Renewed => Ok(Some(EventKind::SessionRenewed)),
                Renewal::Unchanged => Err(SessionError::MaxDurationReached {
                    id: session.id,
                    expires_at: session.expires_at(),
                    at_max_duration: session.expires_at() == session.hard_deadline(),
                }),
            },
            SessionChange::Heartbeat => match session.record_activity(now) {
                Renewal::Renewed => Ok(Some(EventKind::SessionRenewed)),
                Renewal::Unchanged => Ok(None),
            },
            SessionChange::Timeout { patch, policy } => {
                session.timeout = policy.resolve_update(session.timeout, patch)?;
                Ok(Some(EventKind::SessionTimeoutUpdated))
            }
        }
    }
}

impl Session {
    /// A new session created at `now`.
    pub fn new(
        id: Uuid,
        agent_id: Uuid,
        user_id: Uuid,
        timeout: TimeoutConfig,
        metadata_json: String,
        now: Timestamp,
    ) -> Self {
        Session {
            id,
            agent_id,
            user_id,
            created_at: now,
            last_activity: now,
            renewed_at: now,
            renewal_count: 0,
            timeout,
            metadata_json,
            message_count: 0,
            last_message_id: None,
            last_message_at: now,
            expiring_noticed_for: None,
            expired_noticed: false,
        }
    }

    /// The instant the max-duration cap is reached.
    pub fn hard_deadline(&self) -> Timestamp {
        self.created_at + minutes(self.timeout.max_duration_minutes)
    }

    /// `min(renewedAt + timeout, createdAt + maxDuration)`.
    pub fn expires_at(&self) -> Timestamp {
        (self.renewed_at + minutes(self.timeout.timeout_minutes)).min(self.hard_deadline())
    }

    /// The instant the session enters its warning window (`expiresAt` when it never warns).
    pub fn warns_at(&self) -> Timestamp {
        self.expires_at() - minutes(self.timeout.warning_threshold_minutes)
    }

    /// Expired when `now >= expiresAt`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at()
    }

    /// `max(0, expiresAt - now)`.
    pub fn time_remaining(&self, now: Timestamp) -> Duration {
        self.expires_at().saturating_since(now)
    }

    /// `0 < timeRemaining <= warningThreshold`.
    pub fn is_near_expiration(&self, now: Timestamp) -> bool {
        let remaining = self.time_remaining(now);
        !remaining.is_zero() && remaining <= minutes(self.timeout.warning_threshold_minutes)
    }

    /// Passes when the session may be used at `now`.
    ///
    /// # Errors
    /// [`SessionError::Expired`] once `now >= expiresAt`.
    pub fn check_active(&self, now: Timestamp) -> Result<(), SessionError> {
        if self.is_expired(now) {
            Err(SessionError::Expired {
                id: self.id,
                expires_at: self.expires_at(),
            })
        } else {
            Ok(())
        }
    }

    /// Who writes `new`: the author it names, or the session's user if none.
    ///
    /// # Errors
    /// [`SessionError::ForbiddenAuthor`] for an author who is neither the session's user nor
    /// its agent.
    pub fn author_of(&self, new: &super::NewMessage) -> Result<Uuid, SessionError> {
        let author_id = new.author_id.unwrap_or(self.user_id);
        if author_id == self.user_id || author_id == self.agent_id {
            Ok(author_id)
        } else {
            Err(SessionError::ForbiddenAuthor {
                session_id: self.id,
                author_id,
            })
        }
    }

    /// Checks that `messages` are this session's whole history, as a restore stores them:
    /// seqs 1 to `message_count` in order, ids unique, each parent an earlier message,
    /// each author its user or its agent (and marked as the agent exactly when it is),
    /// times never going backwards, and the newest message the one the session names.
    ///
    /// # Errors
    /// [`SessionError::Unrestorable`], saying what is wrong.
    pub fn check_history(&self, messages: &[super::Message]) -> Result<(), SessionError> {
        let refuse = |reason: String| SessionError::Unrestorable {
            session_id: self.id,
            reason,
        };
        if messages.len() as u64 != self.message_count {
            return Err(refuse(format!(
                "it counts {} messages and {} were given",
                self.message_count,
                messages.len()
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(messages.len());
        let mut previous_at = None;
        for (message, seq) in messages.iter().zip(1u64..) {
            let reason = if message.session_id != self.id {
                Some(format!(
                    "message {} is of session {}",
                    message.id, message.session_id
                ))
            } else if message.seq != seq {
                Some(format!(
                    "message {} has seq {}, not {seq}",
                    message.id, message.seq
                ))
            } else if message
                .parent_id
                .is_some_and(|parent| !seen.contains(&parent))
            {
                Some(format!(
                    "message {} replies to no earlier message",
                    message.id
                ))
            } else if !seen.insert(message.id) {
                Some(format!("message id {} is given twice", message.id))
            } else if message.author_id != self.user_id && message.author_id != self.agent_id {
                Some(format!("message {} has a stranger as author", message.id))
            } else if message.is_agent != (message.author_id == self.agent_id) {
                Some(format!(
                    "message {} is marked as the agent's wrongly",
                    message.id
                ))
            } else if previous_at.is_some_and(|previous| message.created_at < previous) {
                Some(format!(
                    "message {} is older than the one before it",
                    message.id
                ))
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(refuse(reason));
            }
            previous_at = Some(message.created_at);
        }
        if messages.last().map(|message| message.id) != self.last_message_id {
            return Err(refuse(
                "its last message id is not its newest message's".into(),
            ));
        }
        Ok(())
    }

    /// Renews at `now` if that moves `expiresAt` later by at least a millisecond, the unit
    /// clients see it in; otherwise changes nothing. So every renewal a client is told of
    /// shows a later `expiresAt` than the one before.
    pub fn renew(&mut self, now: Timestamp) -> Renewal {
        let candidate = (now + minutes(self.timeout.timeout_minutes)).min(self.hard_deadline());
        if candidate.as_millis() > self.expires_at().as_millis() {
            self.renewed_at = now;
            self.renewal_count += 1;
            Renewal::Renewed
        } else {
            Renewal::Unchanged
        }
    }

    /// Records activity (a message or heartbeat) at `now`: always sets `lastActivity`,
    /// and renews only when `autoRenew` is on.
    pub fn record_activity(&mut self, now: Timestamp) -> Renewal {
        self.last_activity = self.last_activity.max(now);
        if self.timeout.auto_renew {
            self.renew(now)
        } else {
            Renewal::Unchanged
        }
    }
}

/// The server's default policy, for the tests of what reads and applies it.
#[cfg(test)]
pub(crate) mod test_support {
    use super::TimeoutPolicy;

    /// The defaults and bounds `serve` starts with.
    pub(crate) fn policy() -> TimeoutPolicy {
        TimeoutPolicy {
            default_timeout_minutes: 30,
            min_timeout_minutes: 5,
            max_timeout_minutes: 1440,
            default_max_duration_minutes: 720,
            max_duration_limit_minutes: 2880,
            default_warning_threshold_minutes: 5,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);
    const MS: Duration = Duration::from_millis(1);

    use super::test_support::policy;

    fn config(timeout: u32, max: u32, warning: u32, auto_renew: bool) -> TimeoutConfig {
        TimeoutConfig {
            timeout_minutes: timeout,
            auto_renew,
            max_duration_minutes: max,
            warning_threshold_minutes: warning,
        }
    }

    fn session_at(created: Timestamp, timeout: TimeoutConfig) -> Session {
        Session::new(
            Uuid::nil(),
            Uuid::nil(),
            Uuid::nil(),
            timeout,
            "{}".into(),
            created,
        )
    }

    const T0: Timestamp = Timestamp::from_millis(1_795_255_200_000);

    #[test]
    fn the_author_is_the_user_the_agent_or_by_default_the_user() {
        let (user, agent, stranger) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut session = session_at(T0, config(30, 720, 5, true));
        (session.user_id, session.agent_id) = (user, agent);
        let by = |author_id| crate::domain::NewMessage {
            content: "m".into(),
            parent_id: None,
            author_id,
            metadata_json: "{}".into(),
            attachments: Vec::new(),
        };
        assert_eq!(session.author_of(&by(None)), Ok(user));
        assert_eq!(session.author_of(&by(Some(user))), Ok(user));
        assert_eq!(session.author_of(&by(Some(agent))), Ok(agent));
        assert_eq!(
            session.author_of(&by(Some(stranger))),
            Err(SessionError::ForbiddenAuthor {
                session_id: session.id,
                author_id: stranger
            })
        );
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let resolved = policy().resolve_new(TimeoutConfigPatch::default()).unwrap();
        assert_eq!(resolved, config(30, 720, 5, true));
    }

    #[test]
    fn defaults_follow_a_given_timeout() {
        let resolved = policy()
            .resolve_new(TimeoutConfigPatch {
                timeout_minutes: Some(Minutes::Integer(1000)),
                warning_threshold_minutes: Some(Minutes::Integer(10)),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(resolved, config(1000, 1000, 10, true));

        let short = policy()
            .resolve_new(TimeoutConfigPatch {
                timeout_minutes: Some(Minutes::Integer(5)),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(short, config(5, 720, 5, true));
    }

    #[test]
    fn zero_timeout_gets_zero_warning_when_the_minimum_allows_it() {
        let policy = TimeoutPolicy {
            min_timeout_minutes: 0,
            ..policy()
        };
        let resolved = policy
            .resolve_new(TimeoutConfigPatch {
                timeout_minutes: Some(Minutes::Integer(0)),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(resolved, config(0, 720, 0, true));
    }

    #[test]
    fn out_of_range_fields_are_rejected_not_clamped() {
        let err = policy()
            .resolve_new(TimeoutConfigPatch {
                timeout_minutes: Some(Minutes::Integer(4)),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(
            err,
            TimeoutConfigError {
                field: "timeoutMinutes",
                min: 5,
                max: 1440
            }
        );
        assert_eq!(
            err.to_string(),
            "timeoutMinutes must be an integer between 5 and 1440"
        );

        let err = policy()
            .resolve_new(TimeoutConfigPatch {
                max_duration_minutes: Some(Minutes::Integer(20)),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(
            err,
            TimeoutConfigError {
                field: "maxDurationMinutes",
                min: 30,
                max: 2880
            }
        );

        let err = policy()
            .resolve_new(TimeoutConfigPatch {
                warning_threshold_minutes: Some(Minutes::Integer(31)),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(
            err,
            TimeoutConfigError {
                field: "warningThresholdMinutes",
                min: 0,
                max: 30
            }
        );
    }

    #[test]
    fn update_keeps_fields_not_given() {
        let current = config(60, 600, 10, false);
        let updated = policy()
            .resolve_update(
                current,
                TimeoutConfigPatch {
                    timeout_minutes: Some(Minutes::Integer(90)),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(updated, config(90, 600, 10, false));
    }

    #[test]
    fn update_that_conflicts_with_kept_fields_is_rejected() {
        let current = config(60, 100, 10, true);
        let err = policy()
            .resolve_update(
                current,
                TimeoutConfigPatch {
                    timeout_minutes: Some(Minutes::Integer(200)),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert_eq!(err.field, "maxDurationMinutes");
    }

    #[test]
    fn expires_exactly_at_timeout_and_not_one_ms_before() {
        let session = session_at(T0, config(30, 720, 5, true));
        let expiry = T0 + 30 * MINUTE;
        assert_eq!(session.expires_at(), expiry);
        assert!(!session.is_expired(expiry - MS));
        assert!(session.is_expired(expiry));
        assert_eq!(session.time_remaining(expiry - MS), MS);
        assert_eq!(session.time_remaining(expiry), Duration::ZERO);
        assert_eq!(
            session.check_active(expiry),
            Err(SessionError::Expired {
                id: Uuid::nil(),
                expires_at: expiry
            })
        );
    }

    #[test]
    fn near_expiration_window_is_open_below_and_closed_above() {
        let session = session_at(T0, config(30, 720, 5, true));
        let expiry = session.expires_at();
        assert!(!session.is_near_expiration(expiry - 5 * MINUTE - MS));
        assert!(session.is_near_expiration(expiry - 5 * MINUTE));
        assert!(session.is_near_expiration(expiry - MS));
        assert!(!session.is_near_expiration(expiry));
        assert_eq!(session.warns_at(), expiry - 5 * MINUTE);
    }

    #[test]
    fn zero_warning_threshold_never_warns() {
        let session = session_at(T0, config(30, 720, 0, true));
        assert!(!session.is_near_expiration(session.expires_at() - MS));
        assert_eq!(session.warns_at(), session.expires_at());
    }

    #[test]
    fn renewal_moves_expiry_and_counts() {
        let mut session = session_at(T0, config(30, 720, 5, true));
        let later = T0 + 10 * MINUTE;
        assert_eq!(session.renew(later), Renewal::Renewed);
        assert_eq!(session.renewal_count, 1);
        assert_eq!(session.renewed_at, later);
        assert_eq!(session.expires_at(), later + 30 * MINUTE);
    }

    #[test]
    fn renewal_in_the_same_instant_changes_nothing() {
        let mut session = session_at(T0, config(30, 720, 5, true));
        let before = session.clone();
        assert_eq!(session.renew(T0), Renewal::Unchanged);
        assert_eq!(session, before);
    }

    #[test]
    fn a_renewal_must_move_the_shown_expiry_by_a_millisecond() {
        let us = Duration::from_micros(1);
        let mut session = session_at(T0, config(30, 720, 5, true));
        // Later by microseconds, inside the same shown millisecond: not a renewal.
        let before = session.clone();
        assert_eq!(session.renew(T0 + 999 * us), Renewal::Unchanged);
        assert_eq!(session, before);
        // The first instant whose expiry shows one millisecond later renews.
        assert_eq!(session.renew(T0 + MS), Renewal::Renewed);
        assert_eq!(
            session.expires_at().as_millis(),
            (T0 + MS + 30 * MINUTE).as_millis()
        );
        // From mid-millisecond, the next shown millisecond is what counts.
        let mut session = session_at(T0 + 500 * us, config(30, 720, 5, true));
        assert_eq!(session.renew(T0 + 999 * us), Renewal::Unchanged);
        assert_eq!(session.renew(T0 + MS), Renewal::Renewed);
        assert_eq!(session.renewal_count, 1);
    }

    #[test]
    fn expiry_is_capped_at_max_duration() {
        let mut session = session_at(T0, config(30, 60, 5, true));
        let cap = T0 + 60 * MINUTE;
        assert_eq!(session.renew(T0 + 40 * MINUTE), Renewal::Renewed);
        assert_eq!(session.expires_at(), cap);
        // Already at the cap: a later renewal cannot extend.
        let before = session.clone();
        assert_eq!(session.renew(T0 + 50 * MINUTE), Renewal::Unchanged);
        assert_eq!(session, before);
        assert!(!session.is_expired(cap - MS));
        assert!(session.is_expired(cap));
    }

    #[test]
    fn renewal_near_the_cap_extends_exactly_to_the_cap() {
        let mut session = session_at(T0, config(30, 60, 5, true));
        // One ms short of reaching the cap: the full timeout still fits.
        assert_eq!(session.renew(T0 + 30 * MINUTE - MS), Renewal::Renewed);
        assert_eq!(session.expires_at(), T0 + 60 * MINUTE - MS);
        // Past that point the cap wins.
        assert_eq!(session.renew(T0 + 30 * MINUTE + MS), Renewal::Renewed);
        assert_eq!(session.expires_at(), T0 + 60 * MINUTE);
        assert_eq!(session.renewal_count, 2);
    }

    #[test]
    fn timeout_equal_to_max_duration_can_never_renew() {
        let mut session = session_at(T0, config(30, 30, 5, true));
        assert_eq!(session.renew(T0 + MINUTE), Renewal::Unchanged);
        assert_eq!(session.renewal_count, 0);
    }

    #[test]
    fn activity_without_auto_renew_only_touches_last_activity() {
        let mut session = session_at(T0, config(30, 720, 5, false));
        let later = T0 + 10 * MINUTE;
        assert_eq!(session.record_activity(later), Renewal::Unchanged);
        assert_eq!(session.last_activity, later);
        assert_eq!(session.renewal_count, 0);
        assert_eq!(session.expires_at(), T0 + 30 * MINUTE);
    }

    #[test]
    fn activity_with_auto_renew_renews() {
        let mut session = session_at(T0, config(30, 720, 5, true));
        let later = T0 + 10 * MINUTE;
        assert_eq!(session.record_activity(later), Renewal::Renewed);
        assert_eq!(session.last_activity, later);
        assert_eq!(session.expires_at(), later + 30 * MINUTE);
    }

    /// A session of a user and an agent with `count` messages, each replying to the one
    /// before, a millisecond apart; the even ones the user's.
    fn with_history(count: u64) -> (Session, Vec<crate::domain::Message>) {
        let t0 = Timestamp::from_millis(1_000_000);
        let mut session = Session::new(
            Uuid::now_v7(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            config(30, 720, 5, true),
            "{}".into(),
            t0,
        );
        let mut messages: Vec<crate::domain::Message> = Vec::new();
        for seq in 1..=count {
            let author_id = if seq % 2 == 0 {
                session.agent_id
            } else {
                session.user_id
            };
            messages.push(crate::domain::Message {
                id: Uuid::now_v7(),
                session_id: session.id,
                seq,
                parent_id: messages.last().map(|m| m.id),
                content: format!("m{seq}"),
                author_id,
                is_agent: author_id == session.agent_id,
                created_at: t0 + MS * seq as u32,
                metadata_json: "{}".into(),
                attachments: Vec::new(),
            });
        }
        session.message_count = count;
        session.last_message_id = messages.last().map(|m| m.id);
        (session, messages)
    }

    #[test]
    fn a_whole_history_passes_and_each_kind_of_break_is_named() {
        let (session, messages) = with_history(3);
        assert_eq!(session.check_history(&messages), Ok(()));
        assert_eq!(with_history(0).0.check_history(&[]), Ok(()));
        type Break = fn(&mut Session, &mut Vec<crate::domain::Message>);
        let breaks: [(Break, &str); 9] = [
            (
                |_, m| {
                    m.pop();
                },
                "counts 3 messages and 2",
            ),
            (|_, m| m[1].seq = 5, "has seq 5, not 2"),
            (|_, m| m[1].session_id = Uuid::nil(), "is of session"),
            (
                |_, m| m[0].parent_id = Some(m[2].id),
                "replies to no earlier message",
            ),
            (|_, m| m[2].id = m[0].id, "given twice"),
            (|_, m| m[0].author_id = Uuid::nil(), "stranger"),
            (|_, m| m[0].is_agent = true, "marked as the agent's wrongly"),
            (
                |_, m| m[2].created_at = m[0].created_at - MS,
                "older than the one before",
            ),
            (|s, _| s.last_message_id = None, "last message id"),
        ];
        for (break_it, expected) in breaks {
            let (mut session, mut messages) = with_history(3);
            break_it(&mut session, &mut messages);
            match session.check_history(&messages) {
                Err(SessionError::Unrestorable { reason, .. }) => {
                    assert!(reason.contains(expected), "{expected}: {reason}");
                }
                other => panic!("{expected}: {other:?}"),
            }
        }
    }
}
