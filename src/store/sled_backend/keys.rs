//! Every key layout of the store, built and parsed here and nowhere else.
//!
//! Ids are fixed-width (16 bytes) and numbers big-endian, so byte order is value order and
//! a range scan over a prefix walks the values in order.

use uuid::Uuid;

use crate::domain::Timestamp;
use crate::error::{Error, Result};

/// Width of an encoded id.
pub(crate) const ID_LEN: usize = 16;
/// Width of an encoded u64 (seq or timestamp).
const U64_LEN: usize = 8;

fn id_at(bytes: &[u8], at: usize) -> Result<Uuid> {
    bytes
        .get(at..at + ID_LEN)
        .and_then(|b| Uuid::from_slice(b).ok())
        .ok_or_else(|| {
            Error::corrupt(format!(
                "key too short for an id at {at}: {} bytes",
                bytes.len()
            ))
        })
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64> {
    bytes
        .get(at..at + U64_LEN)
        .and_then(|b| <[u8; U64_LEN]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| {
            Error::corrupt(format!(
                "key too short for a number at {at}: {} bytes",
                bytes.len()
            ))
        })
}

/// `sessionid_session` key; also the prefix of a session's messages.
pub(crate) fn session(id: Uuid) -> [u8; ID_LEN] {
    *id.as_bytes()
}

/// Parses a `sessionid_session` key.
pub(crate) fn parse_session(key: &[u8]) -> Result<Uuid> {
    id_at(key, 0)
}

/// `sessionidseq_message` key: session id ++ seq (BE).
pub(crate) fn message(session_id: Uuid, seq: u64) -> [u8; ID_LEN + U64_LEN] {
    let mut key = [0; ID_LEN + U64_LEN];
    key[..ID_LEN].copy_from_slice(session_id.as_bytes());
    key[ID_LEN..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Parses a `sessionidseq_message` key (or a `messageid_sessionidseq` value, same layout).
pub(crate) fn parse_message(key: &[u8]) -> Result<(Uuid, u64)> {
    Ok((id_at(key, 0)?, u64_at(key, ID_LEN)?))
}

/// `parentidseq` key: parent message id ++ the child's seq (BE), so a message's replies
/// list in append order.
pub(crate) fn child(parent_id: Uuid, seq: u64) -> [u8; ID_LEN + U64_LEN] {
    message(parent_id, seq)
}

/// Parses a `parentidseq` key into (parent id, child seq).
pub(crate) fn parse_child(key: &[u8]) -> Result<(Uuid, u64)> {
    parse_message(key)
}

/// `useridsessionid` / `agentidsessionid` key: owner id ++ session id. Session ids are v7,
/// so one owner's sessions list in creation order.
pub(crate) fn owned_session(owner_id: Uuid, session_id: Uuid) -> [u8; 2 * ID_LEN] {
    let mut key = [0; 2 * ID_LEN];
    key[..ID_LEN].copy_from_slice(owner_id.as_bytes());
    key[ID_LEN..].copy_from_slice(session_id.as_bytes());
    key
}

/// Parses an owner index key into the session id.
pub(crate) fn parse_owned_session(key: &[u8]) -> Result<Uuid> {
    id_at(key, ID_LEN)
}

/// How finely deadlines are indexed: by the whole second that ends at or after them.
const DEADLINE_BUCKET_MICROS: u64 = 1_000_000;

/// The end of the indexing second a deadline falls in: the deadline rounded up to a whole
/// second. A session renewed again and again within one second keeps its index entries
/// (a renewal by every append would otherwise move two entries); readers that need the
/// exact instant read the sessions of the one second that leaves it open.
pub(crate) fn deadline_bucket(at: Timestamp) -> Timestamp {
    let micros = at.as_micros();
    Timestamp::from_micros(
        micros
            .div_ceil(DEADLINE_BUCKET_MICROS)
            .saturating_mul(DEADLINE_BUCKET_MICROS),
    )
}

/// `expiresatsessionid` / `warnatsessionid` key: the deadline's [`deadline_bucket`] (BE
/// micros) ++ session id, so a range up to `now` finds sessions surely due.
pub(crate) fn deadline(at: Timestamp, session_id: Uuid) -> [u8; U64_LEN + ID_LEN] {
    let mut key = [0; U64_LEN + ID_LEN];
    key[..U64_LEN].copy_from_slice(&deadline_bucket(at).as_micros().to_be_bytes());
    key[U64_LEN..].copy_from_slice(session_id.as_bytes());
    key
}

/// The first key after every entry whose bucket ends at or before `at`: the deadlines
/// surely at or before `at`.
pub(crate) fn deadline_upper_bound(at: Timestamp) -> [u8; U64_LEN] {
    at.as_micros().saturating_add(1).to_be_bytes()
}

/// Parses a deadline key: the deadline's bucket and the session.
pub(crate) fn parse_deadline(key: &[u8]) -> Result<(Timestamp, Uuid)> {
    Ok((
        Timestamp::from_micros(u64_at(key, 0)?),
        id_at(key, U64_LEN)?,
    ))
}

/// Which count a `counters` key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Every stored session.
    Sessions,
    /// Sessions of one agent.
    Agent(Uuid),
    /// Sessions of one user.
    User(Uuid),
    /// Sessions of one agent with one user.
    Pair(Uuid, Uuid),
}

/// `counters` key.
pub(crate) fn counter(counter: Counter) -> Vec<u8> {
    match counter {
        Counter::Sessions => vec![b's'],
        Counter::Agent(id) => [&[b'a'][..], id.as_bytes()].concat(),
        Counter::User(id) => [&[b'u'][..], id.as_bytes()].concat(),
        Counter::Pair(agent, user) => [&[b'p'][..], agent.as_bytes(), user.as_bytes()].concat(),
    }
}

/// Encodes a counter value.
pub(crate) fn count_value(n: u64) -> [u8; U64_LEN] {
    n.to_be_bytes()
}

/// Decodes a counter value.
pub(crate) fn parse_count(value: &[u8]) -> Result<u64> {
    u64_at(value, 0)
}

/// Event record key: the first event id, big-endian, so the log iterates in id order.
pub(crate) fn event(id: u64) -> [u8; U64_LEN] {
    id.to_be_bytes()
}

/// Parses an event record key.
pub(crate) fn parse_event(key: &[u8]) -> Result<u64> {
    u64_at(key, 0)
}

/// Whose events an `ownerideventid` entry lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EventOwner {
    /// One session.
    Session(Uuid),
    /// One agent.
    Agent(Uuid),
    /// One user.
    User(Uuid),
}

/// Length of an `ownerideventid` key.
pub(crate) const OWNER_EVENT_LEN: usize = 1 + ID_LEN + U64_LEN;

/// `ownerideventid` key: owner kind byte ++ owner id ++ event id (BE). One tree indexes the
/// log three ways (by session, agent and user).
pub(crate) fn owner_event(owner: EventOwner, id: u64) -> [u8; OWNER_EVENT_LEN] {
    let (tag, owner_id) = match owner {
        EventOwner::Session(id) => (b's', id),
        EventOwner::Agent(id) => (b'a', id),
        EventOwner::User(id) => (b'u', id),
    };
    let mut key = [0; OWNER_EVENT_LEN];
    key[0] = tag;
    key[1..=ID_LEN].copy_from_slice(owner_id.as_bytes());
    key[1 + ID_LEN..].copy_from_slice(&id.to_be_bytes());
    key
}

/// Parses the owner of an `ownerideventid` key.
pub(crate) fn parse_owner(key: &[u8]) -> Result<EventOwner> {
    let owner_id = key
        .get(1..=ID_LEN)
        .and_then(|bytes| Uuid::from_slice(bytes).ok())
        .ok_or_else(|| Error::corrupt("an event index key is too short"))?;
    match key.first() {
        Some(b's') => Ok(EventOwner::Session(owner_id)),
        Some(b'a') => Ok(EventOwner::Agent(owner_id)),
        Some(b'u') => Ok(EventOwner::User(owner_id)),
        _ => Err(Error::corrupt("an event index key of no known owner kind")),
    }
}

/// Parses the event id of an `ownerideventid` key.
pub(crate) fn parse_owner_event(key: &[u8]) -> Result<u64> {
    u64_at(key, 1 + ID_LEN)
}

/// `meta` key of the store format version.
pub(crate) const FORMAT_VERSION: &[u8] = b"format_version";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn uuid() -> impl Strategy<Value = Uuid> {
        any::<u128>().prop_map(Uuid::from_u128)
    }

    proptest! {
        #[test]
        fn message_key_order_is_session_then_seq_order(a in uuid(), b in uuid(), x: u64, y: u64) {
            let (ka, kb) = (message(a, x), message(b, y));
            prop_assert_eq!(ka.cmp(&kb), (a, x).cmp(&(b, y)));
            prop_assert_eq!(parse_message(&ka).unwrap(), (a, x));
        }

        #[test]
        fn deadline_key_order_is_second_then_id_order(
            a in uuid(), b in uuid(), x in 0..u64::MAX / 2, y in 0..u64::MAX / 2,
        ) {
            let (ta, tb) = (Timestamp::from_micros(x), Timestamp::from_micros(y));
            let (ka, kb) = (deadline(ta, a), deadline(tb, b));
            let (ba, bb) = (deadline_bucket(ta), deadline_bucket(tb));
            prop_assert_eq!(ka.cmp(&kb), (ba, a).cmp(&(bb, b)));
            prop_assert_eq!(parse_deadline(&ka).unwrap(), (ba, a));
            // The bucket is the deadline rounded up to a whole second.
            prop_assert!(ba >= ta && ba.as_micros() - x < 1_000_000);
            prop_assert_eq!(ba.as_micros() % 1_000_000, 0);
            if x <= y {
                prop_assert!(ba <= bb);
            }
        }

        #[test]
        fn deadline_upper_bound_finds_the_surely_due(x in 0..u64::MAX / 2, y in 0..u64::MAX / 2, id in uuid()) {
            let key = deadline(Timestamp::from_micros(y), id);
            let due = key.as_slice() < deadline_upper_bound(Timestamp::from_micros(x)).as_slice();
            prop_assert_eq!(due, deadline_bucket(Timestamp::from_micros(y)).as_micros() <= x);
            if due {
                prop_assert!(y <= x);
            }
        }

        #[test]
        fn owned_session_key_order_is_owner_then_session_order(o1 in uuid(), o2 in uuid(), s1 in uuid(), s2 in uuid()) {
            let (k1, k2) = (owned_session(o1, s1), owned_session(o2, s2));
            prop_assert_eq!(k1.cmp(&k2), (o1, s1).cmp(&(o2, s2)));
            prop_assert_eq!(parse_owned_session(&k1).unwrap(), s1);
        }

        #[test]
        fn owner_event_key_order_is_owner_then_event_order(a in uuid(), b in uuid(), x: u64, y: u64) {
            let (ka, kb) = (owner_event(EventOwner::Agent(a), x), owner_event(EventOwner::Agent(b), y));
            prop_assert_eq!(ka.cmp(&kb), (a, x).cmp(&(b, y)));
            prop_assert_eq!(parse_owner_event(&ka).unwrap(), x);
            prop_assert_eq!(event(x).cmp(&event(y)), x.cmp(&y));
        }

        #[test]
        fn count_round_trips(n: u64) {
            prop_assert_eq!(parse_count(&count_value(n)).unwrap(), n);
        }
    }

    #[test]
    fn short_keys_are_corruption_not_panics() {
        assert!(parse_message(&[0; 5]).is_err());
        assert!(parse_deadline(&[]).is_err());
        assert!(parse_count(&[1, 2]).is_err());
    }

    #[test]
    fn uuid_byte_order_is_uuid_order() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(1 << 120);
        assert!(a < b);
        assert!(session(a) < session(b));
    }
}
