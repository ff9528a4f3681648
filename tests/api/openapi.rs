//! The OpenAPI document (`GET /api/openapi.json`) against the router: the document lists
//! exactly `sessiond::api::openapi::ROUTES`, a real server answers every documented
//! operation and refuses every other method on those paths, and the document is a
//! well-formed OpenAPI 3.1 document whose references all resolve.

use std::collections::BTreeSet;

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::Value;
use sessiond::api::openapi::{document, PATH, ROUTES};

use crate::helpers::{new_id, spawn_app, Reply};

/// Every method probed on every documented path.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// The (METHOD, path template) pairs a document lists.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"]
        .as_object()
        .expect("the document has a paths object");
    paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("a path item is an object")
                .keys()
                .map(move |method| (method.to_ascii_uppercase(), path.clone()))
        })
        .collect()
}

/// The path template with every `{parameter}` replaced by a fresh UUID.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                new_id()
            } else {
                segment.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `path` is an instance of `template` (a parameter matches any one segment).
fn matches(template: &str, path: &str) -> bool {
    let (template, path): (Vec<&str>, Vec<&str>) =
        (template.split('/').collect(), path.split('/').collect());
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}')) || t == p)
}

/// The `error.code` of an envelope, if the reply is one.
fn error_code(reply: &Reply) -> Option<&str> {
    reply.body["error"]["code"].as_str()
}

/// The served document, parsed.
async fn served_document() -> Value {
    let app = spawn_app().await;
    let reply = app.send(app.request(Method::GET, PATH)).await;
    assert_eq!(reply.status.as_u16(), 200, "body: {}", reply.text);
    let content_type = reply
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type:?}"
    );
    assert_eq!(
        reply.text,
        document(),
        "the route serves the cached document"
    );
    reply.body
}

#[tokio::test]
async fn document_lists_exactly_the_routes() {
    let document = served_document().await;

    let documented = operations(&document);
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|&(method, path)| (method.to_owned(), path.to_owned()))
        .collect();

    assert_eq!(routes.len(), ROUTES.len(), "ROUTES has no duplicates");
    assert_eq!(
        documented.difference(&routes).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not in ROUTES"
    );
    assert_eq!(
        routes.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in ROUTES but not documented"
    );
}

#[tokio::test]
async fn router_answers_documented_operations_and_refuses_other_methods() {
    let app = spawn_app().await;
    let document: Value = serde_json::from_str(document()).expect("the document is JSON");
    let documented = operations(&document);
    let templates: BTreeSet<&str> = documented.iter().map(|(_, path)| path.as_str()).collect();
    assert!(!templates.is_empty());

    for template in templates {
        let path = concrete(template);
        // A concrete path can be an instance of more than one template
        // (`/sessions/health` is also `/sessions/{sessionId}`).
        let allowed: BTreeSet<&str> = documented
            .iter()
            .filter(|(_, t)| matches(t, &path))
            .map(|(method, _)| method.as_str())
            .collect();
        for method in METHODS {
            let reply = app.send(app.request(method.clone(), &path)).await;
            let status = reply.status.as_u16();
            if allowed.contains(method.as_str()) {
                assert!(
                    status != 405 && !(status == 404 && error_code(&reply) == Some("NOT_FOUND")),
                    "{method} {path} (documented as {template}) is not routed: {status} {}",
                    reply.text
                );
            } else {
                assert!(
                    status == 405 || (status == 404 && error_code(&reply) == Some("NOT_FOUND")),
                    "{method} {path} is not documented but answers {status} {}",
                    reply.text
                );
                assert!(
                    matches!(error_code(&reply), Some("METHOD_NOT_ALLOWED" | "NOT_FOUND")),
                    "{method} {path}: not the envelope: {}",
                    reply.text
                );
            }
        }
    }
}

/// The value a local reference (`#/a/b`) points at, if any.
fn resolve<'a>(document: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    document.pointer(pointer)
}

/// Every `$ref` value in `value`.
fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, member) in object {
                match (key.as_str(), member) {
                    ("$ref", Value::String(reference)) => found.push(reference.clone()),
                    _ => references(member, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

#[tokio::test]
async fn document_is_openapi_3_1_and_every_reference_resolves() {
    let document = served_document().await;

    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["info"]["title"].is_string());
    assert!(document["info"]["version"].is_string());
    let mut found = Vec::new();
    references(&document, &mut found);
    assert!(!found.is_empty(), "the document uses components");
    for reference in &found {
        assert!(
            resolve(&document, reference).is_some(),
            "{reference} does not resolve"
        );
    }
}

#[tokio::test]
async fn every_operation_but_health_needs_the_api_key() {
    let document: Value = serde_json::from_str(document()).expect("the document is JSON");

    let scheme = &document["components"]["securitySchemes"]["apiKey"];
    assert_eq!(scheme["type"], "apiKey");
    assert_eq!(scheme["in"], "header");
    assert_eq!(scheme["name"], "X-API-Key");
    assert_eq!(document["security"], serde_json::json!([{ "apiKey": [] }]));
    for (method, path) in operations(&document) {
        let operation = &document["paths"][&path][method.to_ascii_lowercase()];
        if path == "/api/messaging/sessions/health" {
            assert_eq!(
                operation["security"],
                serde_json::json!([]),
                "{method} {path}"
            );
        } else {
            assert!(
                operation.get("security").is_none(),
                "{method} {path} overrides security"
            );
            assert!(
                operation["responses"]["401"].is_object(),
                "{method} {path} documents 401"
            );
        }
    }
}

#[tokio::test]
async fn every_error_response_is_the_envelope_except_feathers_422() {
    let document: Value = serde_json::from_str(document()).expect("the document is JSON");

    for (method, path) in operations(&document) {
        let responses = document["paths"][&path][method.to_ascii_lowercase()]["responses"]
            .as_object()
            .expect("an operation has responses");
        for (status, response) in responses {
            if status.starts_with('2') {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"]["$ref"];
            let expected = if path.starts_with("/v1/ask-feather/") && status == "422" {
                "#/components/schemas/FeatherValidationError"
            } else {
                "#/components/schemas/ErrorEnvelope"
            };
            assert_eq!(schema, expected, "{method} {path} {status}");
        }
    }
}
