//! Bearer-token auth: when the node has a token, every RPC (health and reflection included) must
//! carry `authorization: Bearer <token>`; anything else is `UNAUTHENTICATED`.

use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::status::unauthenticated;

/// Checks the bearer token of every request. Without a token, admits every request.
#[derive(Clone)]
pub(crate) struct AuthInterceptor {
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for AuthInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("AuthInterceptor").field("enabled", &self.token.is_some()).finish()
    }
}

impl AuthInterceptor {
    /// Requires `token` when it is `Some`.
    pub(crate) fn new(token: Option<String>) -> Self {
        Self { token: token.map(Arc::from) }
    }
}

/// Compares in time that depends only on the lengths, so the token cannot be guessed byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credentials of `Bearer <token>`: the scheme is case-insensitive and followed by one or more
/// spaces (RFC 7235); `None` for any other scheme.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii_start())
}

impl Interceptor for AuthInterceptor {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let Some(value) = request.metadata().get("authorization") else {
            return Err(unauthenticated("missing authorization"));
        };
        if constant_time_eq(bearer_credentials(value.as_bytes()).unwrap_or_default(), token.as_bytes()) {
            Ok(request)
        } else {
            Err(unauthenticated("wrong token"))
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;
    use tonic::metadata::MetadataValue;

    use super::*;

    fn request_with(value: Option<&'static str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = value {
            request.metadata_mut().insert("authorization", MetadataValue::from_static(value));
        }
        request
    }

    #[test]
    fn without_a_token_everything_passes() {
        let mut auth = AuthInterceptor::new(None);
        assert!(auth.call(request_with(None)).is_ok());
        assert!(auth.call(request_with(Some("Bearer anything"))).is_ok());
    }

    #[test]
    fn with_a_token_only_the_right_bearer_passes() {
        let mut auth = AuthInterceptor::new(Some("s3cret".into()));
        for good in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "Bearer   s3cret"] {
            assert!(auth.call(request_with(Some(good))).is_ok(), "{good}: the scheme is case-insensitive");
        }
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("s3cret"),
            Some("Basic s3cret"),
            Some("Bearers3cret"),
            Some("Bearer"),
            Some("Bearer "),
        ] {
            let error = auth.call(request_with(bad)).expect_err("refused");
            assert_eq!(error.code(), Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let auth = AuthInterceptor::new(Some("s3cret".into()));
        assert!(!format!("{auth:?}").contains("s3cret"));
    }
}
