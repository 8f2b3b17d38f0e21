//! What a request presents and what a route asks of it: the credential of a request
//! ([`presented`]), the access a route declares ([`Access`]) and the role check that turns
//! a [`Principal`] and a required role into 401 or 403 ([`require`]).
//!
//! Routes declare their access where they are routed (`http::ApiRouter::public`, `member`,
//! `admin`); the HTTP gate (`http::middleware`) resolves the principal once per request,
//! checks it against the route's declaration and stores it as a request extension, which
//! handlers take as `Extension<Principal>`.

use axum::http::HeaderMap;

use super::{Principal, Role};
use crate::error::ApiError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// Anyone; a bad or uncheckable credential is ignored (the caller is anonymous).
    Public,
    /// Any authenticated caller with a role (members and up).
    Member,
    /// Admins and owners.
    Admin,
    /// Nobody: what a route that declares no access gets, so forgetting to declare one
    /// refuses the route instead of publishing it.
    Deny,
}

impl Access {
    /// The name in the OpenAPI document (`x-access`).
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Member => "member",
            Access::Admin => "admin",
            Access::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "public" => Some(Access::Public),
            "member" => Some(Access::Member),
            "admin" => Some(Access::Admin),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }

    /// 401 for a caller without credentials, 403 for one whose role is too low (or for
    /// everyone on a route that declares no access).
    pub fn check(self, principal: &Principal) -> Result<(), ApiError> {
        match self {
            Access::Public => Ok(()),
            Access::Member => require(principal, Role::Member),
            Access::Admin => require(principal, Role::Admin),
            Access::Deny if is_unauthenticated(principal) => Err(authentication_required()),
            Access::Deny => Err(ApiError::Forbidden(
                "this route declares no access policy, so it is refused to every caller".into(),
            )),
        }
    }
}

/// Credentials presented: the bearer string, if any.
pub fn presented(headers: &HeaderMap) -> Option<String> {
    use crate::http::headers::first;
    if let Some(value) = first(headers, &axum::http::header::AUTHORIZATION)
        && let Ok(text) = value.to_str()
    {
        let text = text.trim();
        if let Some((scheme, rest)) = text.split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
            && !rest.trim().is_empty()
        {
            return Some(rest.trim().to_owned());
        }
        // A malformed Authorization header counts as a wrong credential.
        return Some(String::new());
    }
    // Built once: looking a header up by `&str` parses the name on every request.
    static X_API_KEY: axum::http::HeaderName = axum::http::HeaderName::from_static("x-api-key");
    first(headers, &X_API_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

fn is_unauthenticated(principal: &Principal) -> bool {
    !principal.authenticated() && principal.role.is_none()
}

fn authentication_required() -> ApiError {
    ApiError::Unauthorized(
        "authentication required: send `Authorization: Bearer <token>` or `X-API-Key`".into(),
    )
}

/// 401 for a missing/invalid credential, 403 when the role is too low.
pub fn require(principal: &Principal, role: Role) -> Result<(), ApiError> {
    if principal.has(role) {
        return Ok(());
    }
    if is_unauthenticated(principal) {
        return Err(authentication_required());
    }
    Err(ApiError::Forbidden(format!(
        "this needs the {} role or higher; the caller is {}",
        role.as_str(),
        principal.role.map_or("without a role", Role::as_str)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PrincipalKind;

    fn member() -> Principal {
        Principal {
            id: "u".into(),
            email: None,
            role: Some(Role::Member),
            kind: PrincipalKind::User,
        }
    }

    #[test]
    fn roles_are_ordered_and_required() {
        assert!(Role::Member < Role::Admin && Role::Admin < Role::Owner);
        let member = member();
        assert!(require(&member, Role::Member).is_ok());
        assert!(matches!(
            require(&member, Role::Admin),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            require(&Principal::anonymous(), Role::Member),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(require(&Principal::local_owner(), Role::Owner).is_ok());
        assert!(require(&Principal::service(), Role::Admin).is_ok());
    }

    #[test]
    fn access_checks_the_declared_role() {
        let anonymous = Principal::anonymous();
        assert!(Access::Public.check(&anonymous).is_ok());
        assert!(matches!(
            Access::Member.check(&anonymous),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(Access::Member.check(&member()).is_ok());
        assert!(matches!(
            Access::Admin.check(&member()),
            Err(ApiError::Forbidden(_))
        ));
        assert!(Access::Admin.check(&Principal::service()).is_ok());
        // Undeclared routes: refused to everyone, the owner included.
        assert!(matches!(
            Access::Deny.check(&anonymous),
            Err(ApiError::Unauthorized(_))
        ));
        for caller in [member(), Principal::service(), Principal::local_owner()] {
            assert!(matches!(
                Access::Deny.check(&caller),
                Err(ApiError::Forbidden(_))
            ));
        }
        for access in [Access::Public, Access::Member, Access::Admin, Access::Deny] {
            assert_eq!(Access::parse(access.as_str()), Some(access));
        }
        assert!(Access::Public < Access::Member && Access::Admin < Access::Deny);
    }
}
