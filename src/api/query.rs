//! The query string: parsed once, then read parameter by parameter. Each reader returns the
//! [`ApiError`] the contract names for its input.

use uuid::Uuid;
use warp::Filter;

use super::error::ApiError;
use super::fields::parse_uuid;

/// The query string, parsed (empty when there is none).
pub(super) fn query() -> impl Filter<Extract = (Query,), Error = std::convert::Infallible> + Clone {
    warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .map(|raw: String| Query::parse(&raw))
}

/// Parsed query parameters (the last value of a repeated name wins).
#[derive(Debug, Default)]
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    /// Parses a raw query string (`+` and percent escapes decoded).
    pub(super) fn parse(raw: &str) -> Self {
        Query(
            form_urlencoded::parse(raw.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The value of `name`, if present.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// An optional UUID parameter.
    ///
    /// # Errors
    /// 400 INVALID_UUID.
    pub(super) fn uuid(&self, name: &str) -> Result<Option<Uuid>, ApiError> {
        self.get(name)
            .map(|text| parse_uuid(name, text))
            .transpose()
    }

    /// An optional integer parameter: a plain decimal integer (optional `-`, digits) that
    /// fits in i64. `+5`, `1e3` and the empty string are refused.
    ///
    /// # Errors
    /// 400 INVALID_PAGINATION.
    pub(super) fn integer(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(text) = self.get(name) else {
            return Ok(None);
        };
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::invalid_pagination(name, text));
        }
        text.parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::invalid_pagination(name, text))
    }

    /// A page size: `default` when absent, else clamped into `1..=max`.
    ///
    /// # Errors
    /// 400 INVALID_PAGINATION.
    pub(super) fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        Ok(match self.integer("limit")? {
            None => default,
            Some(n) => usize::try_from(n.clamp(1, max as i64)).unwrap_or(default),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A query string carrying `text` as the value of `n`, whatever it holds.
    fn query_with(text: &str) -> Query {
        let raw = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", text)
            .finish();
        Query::parse(&raw)
    }

    proptest! {
        #[test]
        fn integer_accepts_exactly_plain_decimals_that_fit_i64(
            text in prop_oneof![
                "-?[0-9]{1,20}",
                "[-+]?[0-9]{0,3}[.eE_ +-]?[0-9]{0,3}",
                ".{0,8}",
            ]
        ) {
            // i64's own parser accepts `-?[0-9]+` and a leading `+`; the contract refuses `+`.
            let expected = if text.starts_with('+') { None } else { text.parse::<i64>().ok() };
            match query_with(&text).integer("n") {
                Ok(value) => prop_assert_eq!(value, expected),
                Err(error) => {
                    prop_assert_eq!(expected, None);
                    prop_assert_eq!(error.code, "INVALID_PAGINATION");
                }
            }
        }

        #[test]
        fn integer_round_trips_every_i64(n: i64) {
            prop_assert_eq!(query_with(&n.to_string()).integer("n").unwrap(), Some(n));
        }

    }

    #[test]
    fn integers_must_be_plain_decimal() {
        for bad in ["+5", "1e3", "", "abc", "5.0", "-", "99999999999999999999"] {
            let query = Query::parse(&format!("limit={}", bad.replace('+', "%2B")));
            assert_eq!(
                query.integer("limit").unwrap_err().code,
                "INVALID_PAGINATION",
                "{bad:?}"
            );
        }
        assert_eq!(Query::parse("limit=-5").integer("limit").unwrap(), Some(-5));
        assert_eq!(Query::parse("limit=0").limit(100, 1000).unwrap(), 1);
        assert_eq!(Query::parse("limit=5000").limit(100, 1000).unwrap(), 1000);
        assert_eq!(Query::parse("").limit(100, 1000).unwrap(), 100);
    }
}
