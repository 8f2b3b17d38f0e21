//! Access declared beside the route. Each resource's `router()` adds its handlers with the
//! access they need — `.public(routes!(…))`, `.member(routes!(…))`, `.admin(routes!(…))` —
//! and [`ApiRouter`] has no way to add a route without saying which. The declaration goes
//! into the OpenAPI document (`x-access` on every operation, and a `security` requirement
//! on the ones that need credentials), and the gate enforces it from an [`AccessTable`]
//! built from that same document: what the document says is what the server does.
//!
//! The table is also how the request pipeline finds a request's route, so anything without
//! a declaration — a route added to the router some other way — is never reached: its
//! requests get the JSON 404, like a request that matches no route at all, whoever asks. A
//! declared route whose method has no declaration is refused to every caller
//! ([`Access::Deny`]), never public.

use std::sync::Arc;

use axum::Router;
use axum::http::Method;
use axum::routing::MethodRouter;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::SecurityRequirement;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use crate::app::AppState;
use crate::auth::Access;

/// The OpenAPI extension that carries an operation's declared access.
pub const EXTENSION: &str = "x-access";

/// Routes of the API with their declared access. Wraps `OpenApiRouter`: documented routes
/// come with `routes!`; the few undocumented ones (the WebSocket, the console, the
/// well-known key) are declared with [`ApiRouter::route`] and [`ApiRouter::merge_under`].
pub struct ApiRouter<S = AppState> {
    /// Routes in the order they were added, registered with axum only when the router is
    /// finished: a prefix given by [`ApiRouter::nest`] goes into each route's own path, so
    /// nested routes are served as flat routes (axum's `nest` would strip the prefix from
    /// every request's URI and insert the nest path, on every request).
    entries: Vec<Entry<S>>,
}

enum Entry<S> {
    /// Documented routes (`routes!`), their operations already marked with their access.
    Documented(UtoipaMethodRouter<S>),
    /// A route outside the OpenAPI document.
    Route {
        path: String,
        access: Access,
        methods: MethodRouter<S>,
    },
    /// A router from elsewhere whose routes all lie under `prefix`.
    Under {
        prefix: String,
        access: Access,
        router: Router<S>,
    },
}

/// `path` below `prefix`, as axum's `nest` composes them (`/api` + `/` is `/api`).
fn nested_path(prefix: &str, path: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    match path {
        "" | "/" if !prefix.is_empty() => prefix.to_owned(),
        "" => "/".to_owned(),
        _ => format!("{prefix}{path}"),
    }
}

impl<S: Clone + Send + Sync + 'static> Default for ApiRouter<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> ApiRouter<S> {
    pub fn new() -> Self {
        ApiRouter {
            entries: Vec::new(),
        }
    }

    /// Routes anyone may call.
    pub fn public(self, routes: UtoipaMethodRouter<S>) -> Self {
        self.declare(Access::Public, routes)
    }

    /// Routes for authenticated callers with a role (member, admin, owner): 401 without
    /// credentials.
    pub fn member(self, routes: UtoipaMethodRouter<S>) -> Self {
        self.declare(Access::Member, routes)
    }

    /// Routes for admins and owners: 401 without credentials, 403 for members.
    pub fn admin(self, routes: UtoipaMethodRouter<S>) -> Self {
        self.declare(Access::Admin, routes)
    }

    fn declare(
        mut self,
        access: Access,
        (schemas, mut paths, methods): UtoipaMethodRouter<S>,
    ) -> Self {
        for item in paths.paths.values_mut() {
            for (_, operation) in operations_mut(item) {
                mark(operation, access);
            }
        }
        self.entries
            .push(Entry::Documented((schemas, paths, methods)));
        self
    }

    /// A route outside the OpenAPI document, with its access.
    pub fn route(mut self, access: Access, path: &str, methods: MethodRouter<S>) -> Self {
        self.entries.push(Entry::Route {
            path: path.to_owned(),
            access,
            methods,
        });
        self
    }

    /// Merge a router whose routes all lie under `prefix` (itself included), with one access
    /// for all of them.
    pub fn merge_under(mut self, access: Access, prefix: &str, router: Router<S>) -> Self {
        self.entries.push(Entry::Under {
            prefix: prefix.trim_end_matches('/').to_owned(),
            access,
            router,
        });
        self
    }

    pub fn merge(mut self, other: ApiRouter<S>) -> Self {
        self.entries.extend(other.entries);
        self
    }

    /// `other`'s routes below `prefix`: each route is registered at its full path.
    pub fn nest(mut self, prefix: &str, other: ApiRouter<S>) -> Self {
        for entry in other.entries {
            self.entries.push(match entry {
                Entry::Documented((schemas, paths, methods)) => {
                    let mut moved = paths.clone();
                    moved.paths.clear();
                    for (path, item) in paths.paths {
                        moved.paths.insert(nested_path(prefix, &path), item);
                    }
                    Entry::Documented((schemas, moved, methods))
                }
                Entry::Route {
                    path,
                    access,
                    methods,
                } => Entry::Route {
                    path: nested_path(prefix, &path),
                    access,
                    methods,
                },
                // A router from elsewhere keeps axum's own nesting.
                Entry::Under {
                    prefix: inner,
                    access,
                    router,
                } => Entry::Under {
                    prefix: nested_path(prefix, &inner),
                    access,
                    router: Router::new().nest(prefix, router),
                },
            });
        }
        self
    }

    /// Every route registered, and the declarations of the undocumented ones: (path, is a
    /// prefix, access).
    fn build(self) -> (OpenApiRouter<S>, Vec<(String, bool, Access)>) {
        let mut router = OpenApiRouter::new();
        let mut undocumented = Vec::new();
        for entry in self.entries {
            match entry {
                Entry::Documented(routes) => router = router.routes(routes),
                Entry::Route {
                    path,
                    access,
                    methods,
                } => {
                    router = router.route(&path, methods);
                    undocumented.push((path, false, access));
                }
                Entry::Under {
                    prefix,
                    access,
                    router: under,
                } => {
                    router = router.merge(OpenApiRouter::from(under));
                    undocumented.push((prefix, true, access));
                }
            }
        }
        (router, undocumented)
    }

    /// The documented routes and their document (undocumented routes are in the router but
    /// not in the document).
    pub fn into_openapi_router(self) -> OpenApiRouter<S> {
        self.build().0
    }

    /// The router and the table the gate enforces.
    pub fn finish(self) -> (Router<S>, AccessTable) {
        let (router, undocumented) = self.build();
        let (router, document) = router.split_for_parts();
        let mut table = AccessTable::from_document(&document);
        // Exact routes first: a prefix's catch-all never shadows one.
        for (path, _, access) in undocumented.iter().filter(|(_, under, _)| !under) {
            table.insert(path, RouteAccess::all(*access));
        }
        for (path, _, access) in undocumented.iter().filter(|(_, under, _)| *under) {
            table.insert_under(path, *access);
        }
        (router, table)
    }
}

/// Record `access` on an operation: `x-access`, and the credentials it takes.
fn mark(operation: &mut Operation, access: Access) {
    operation
        .extensions
        .get_or_insert_with(Default::default)
        .insert(EXTENSION.to_owned(), access.as_str().into());
    if access != Access::Public {
        let empty: [&str; 0] = [];
        operation.security = Some(vec![
            SecurityRequirement::new("bearer", empty),
            SecurityRequirement::new("api_key", empty),
        ]);
    }
}

/// The declared access of an operation (`None`: undeclared).
pub fn declared(operation: &Operation) -> Option<Access> {
    operation
        .extensions
        .as_ref()?
        .get(EXTENSION)?
        .as_str()
        .and_then(Access::parse)
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (Method, &mut Operation)> {
    [
        (Method::GET, item.get.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::OPTIONS, item.options.as_mut()),
        (Method::HEAD, item.head.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
        (Method::TRACE, item.trace.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation?)))
}

fn operations(item: &PathItem) -> impl Iterator<Item = (Method, &Operation)> {
    [
        (Method::GET, item.get.as_ref()),
        (Method::PUT, item.put.as_ref()),
        (Method::POST, item.post.as_ref()),
        (Method::DELETE, item.delete.as_ref()),
        (Method::OPTIONS, item.options.as_ref()),
        (Method::HEAD, item.head.as_ref()),
        (Method::PATCH, item.patch.as_ref()),
        (Method::TRACE, item.trace.as_ref()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| Some((method, operation?)))
}

/// The access of one route pattern, by method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RouteAccess {
    get: Option<Access>,
    post: Option<Access>,
    put: Option<Access>,
    delete: Option<Access>,
    patch: Option<Access>,
    /// Any other method (axum answers 405, HEAD is a GET): the strictest declared here, so
    /// a wrong method on a protected route is refused before anything is revealed.
    other: Access,
}

impl RouteAccess {
    fn all(access: Access) -> Self {
        RouteAccess {
            get: Some(access),
            post: Some(access),
            put: Some(access),
            delete: Some(access),
            patch: Some(access),
            other: access,
        }
    }

    fn none() -> Self {
        RouteAccess {
            get: None,
            post: None,
            put: None,
            delete: None,
            patch: None,
            other: Access::Public,
        }
    }

    fn set(&mut self, method: &Method, access: Access) {
        let slot = match *method {
            Method::GET => &mut self.get,
            Method::POST => &mut self.post,
            Method::PUT => &mut self.put,
            Method::DELETE => &mut self.delete,
            Method::PATCH => &mut self.patch,
            _ => {
                self.other = self.other.max(access);
                return;
            }
        };
        *slot = Some(access);
        self.other = self.other.max(access);
    }

    fn of(&self, method: &Method) -> Access {
        let declared = match *method {
            Method::GET | Method::HEAD => self.get,
            Method::POST => self.post,
            Method::PUT => self.put,
            Method::DELETE => self.delete,
            Method::PATCH => self.patch,
            _ => None,
        };
        declared.unwrap_or(self.other)
    }
}

/// Declared access by route pattern, built once with the router. It also finds the route a
/// request is for ([`AccessTable::resolve`]), with the same matcher and the same patterns as
/// axum's router, so the request pipeline knows the route (for its log line, its metrics and
/// the gate) before the router runs, and the middleware wraps the router once instead of
/// every route.
pub struct AccessTable {
    matcher: matchit::Router<usize>,
    entries: Vec<(Arc<str>, RouteAccess)>,
}

/// The route a request is for: its pattern (the log and metrics label) and the access it
/// needs. No pattern: no route has that path (the JSON 404 answers whoever asks).
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub pattern: Option<Arc<str>>,
    pub access: Access,
}

impl RouteMatch {
    /// The label of logs and metrics: the pattern, never the raw path.
    pub fn label(&self) -> &str {
        self.pattern.as_deref().unwrap_or("unmatched")
    }
}

impl AccessTable {
    /// The table of a document whose operations carry `x-access` (an operation without it
    /// is denied).
    pub fn from_document(document: &OpenApi) -> Self {
        let mut table = AccessTable {
            matcher: matchit::Router::new(),
            entries: Vec::new(),
        };
        for (path, item) in &document.paths.paths {
            let mut access = RouteAccess::none();
            for (method, operation) in operations(item) {
                access.set(&method, declared(operation).unwrap_or(Access::Deny));
            }
            table.insert(path, access);
        }
        table
    }

    /// Adds a pattern; a pattern already present keeps its first declaration.
    fn insert(&mut self, pattern: &str, access: RouteAccess) {
        if self.matcher.insert(pattern, self.entries.len()).is_ok() {
            self.entries.push((pattern.into(), access));
        }
    }

    /// Every path under `prefix` (the prefix itself, with a slash, and anything below).
    fn insert_under(&mut self, prefix: &str, access: Access) {
        for pattern in [
            prefix.to_owned(),
            format!("{prefix}/"),
            format!("{prefix}/{{*rest}}"),
        ] {
            self.insert(&pattern, RouteAccess::all(access));
        }
    }

    /// The route of a request for `path` with `method`, and the access it needs.
    pub fn resolve(&self, path: &str, method: &Method) -> RouteMatch {
        match self.matcher.at(path) {
            Ok(found) => {
                let (pattern, access) = &self.entries[*found.value];
                RouteMatch {
                    pattern: Some(pattern.clone()),
                    access: access.of(method),
                }
            }
            Err(_) => RouteMatch {
                pattern: None,
                access: Access::Public,
            },
        }
    }

    /// What a request for `route` (a route pattern) with `method` needs;
    /// [`Access::Deny`] for a route nobody declared.
    pub fn lookup(&self, route: &str, method: &Method) -> Access {
        match self.resolve(route, method) {
            RouteMatch {
                pattern: Some(_),
                access,
            } => access,
            RouteMatch { pattern: None, .. } => Access::Deny,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[utoipa::path(get, path = "/open")]
    async fn open() {}

    #[utoipa::path(get, path = "/things")]
    async fn list_things() {}

    #[utoipa::path(post, path = "/things")]
    async fn make_thing() {}

    #[utoipa::path(post, path = "/things/{id}/reset")]
    async fn reset_thing() {}

    fn api() -> ApiRouter<()> {
        ApiRouter::new()
            .public(utoipa_axum::routes!(open))
            .public(utoipa_axum::routes!(list_things))
            .member(utoipa_axum::routes!(make_thing))
            .admin(utoipa_axum::routes!(reset_thing))
            .route(Access::Public, "/ws", axum::routing::get(|| async {}))
            .merge_under(Access::Public, "/console/", Router::new())
    }

    fn table() -> (AccessTable, OpenApi) {
        let document = ApiRouter::<()>::new()
            .nest("/api", api())
            .into_openapi_router()
            .into_openapi();
        let (_, table) = ApiRouter::<()>::new().nest("/api", api()).finish();
        (table, document)
    }

    #[test]
    fn declarations_reach_the_document() {
        let (_, document) = table();
        let op = |path: &str, method: &str| {
            let item = &document.paths.paths[path];
            let op = match method {
                "get" => item.get.as_ref(),
                _ => item.post.as_ref(),
            };
            op.unwrap().clone()
        };
        assert_eq!(declared(&op("/api/open", "get")), Some(Access::Public));
        assert!(op("/api/open", "get").security.is_none());
        assert_eq!(declared(&op("/api/things", "get")), Some(Access::Public));
        assert_eq!(declared(&op("/api/things", "post")), Some(Access::Member));
        assert_eq!(
            declared(&op("/api/things/{id}/reset", "post")),
            Some(Access::Admin)
        );
        assert_eq!(op("/api/things", "post").security.unwrap().len(), 2);
        let json = serde_json::to_value(&document).unwrap();
        assert_eq!(json["paths"]["/api/things"]["post"]["x-access"], "member");
    }

    #[test]
    fn requests_resolve_to_their_route_pattern_and_access() {
        let (table, _) = table();
        let resolve = |path: &str, method: Method| {
            let found = table.resolve(path, &method);
            (found.label().to_owned(), found.access)
        };
        assert_eq!(
            resolve("/api/things/42/reset", Method::POST),
            ("/api/things/{id}/reset".to_owned(), Access::Admin)
        );
        assert_eq!(
            resolve("/api/things", Method::POST),
            ("/api/things".to_owned(), Access::Member)
        );
        // No route: labelled `unmatched`, answered with the 404 whoever asks.
        for path in [
            "/api/things/42/reset/",
            "/api/things/42",
            "/api/consolex",
            "/",
        ] {
            assert_eq!(
                resolve(path, Method::GET),
                ("unmatched".to_owned(), Access::Public),
                "{path}"
            );
        }
        // Everything under a merged prefix is that prefix's.
        for (path, pattern) in [
            ("/api/console", "/api/console"),
            ("/api/console/", "/api/console/"),
            ("/api/console/app.js", "/api/console/{*rest}"),
            ("/api/console/a/b", "/api/console/{*rest}"),
        ] {
            assert_eq!(
                resolve(path, Method::GET),
                (pattern.to_owned(), Access::Public),
                "{path}"
            );
        }
        assert_eq!(
            resolve("/api/ws", Method::GET),
            ("/api/ws".to_owned(), Access::Public)
        );
    }

    #[test]
    fn the_table_follows_the_declarations_and_denies_the_rest() {
        let (table, _) = table();
        assert_eq!(table.lookup("/api/open", &Method::GET), Access::Public);
        assert_eq!(table.lookup("/api/open", &Method::HEAD), Access::Public);
        assert_eq!(table.lookup("/api/things", &Method::GET), Access::Public);
        assert_eq!(table.lookup("/api/things", &Method::POST), Access::Member);
        // A method nobody routed (405) needs what the strictest method there needs.
        assert_eq!(table.lookup("/api/things", &Method::DELETE), Access::Member);
        assert_eq!(
            table.lookup("/api/things/{id}/reset", &Method::POST),
            Access::Admin
        );
        assert_eq!(
            table.lookup("/api/things/{id}/reset", &Method::GET),
            Access::Admin
        );
        assert_eq!(table.lookup("/api/open", &Method::POST), Access::Public);
        assert_eq!(table.lookup("/api/ws", &Method::GET), Access::Public);
        assert_eq!(table.lookup("/api/console", &Method::GET), Access::Public);
        assert_eq!(
            table.lookup("/api/console/app.js", &Method::GET),
            Access::Public
        );
        assert_eq!(table.lookup("/api/consolex", &Method::GET), Access::Deny);
        // A route nobody declared is refused, not public.
        assert_eq!(table.lookup("/api/undeclared", &Method::GET), Access::Deny);
        assert_eq!(table.lookup("/ws", &Method::GET), Access::Deny);
    }
}
