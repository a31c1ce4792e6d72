//! The OpenAPI document: served, structurally valid, and snapshotted so a contract change shows in
//! review (`cargo insta review`, or `INSTA_UPDATE=always` to accept).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::TestApp;

fn collect_refs(value: &Value, refs: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                if key == "$ref" {
                    if let Some(target) = value.as_str() {
                        refs.insert(target.to_owned());
                    }
                } else {
                    collect_refs(value, refs);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, refs)),
        _ => {}
    }
}

#[tokio::test]
async fn the_served_document_is_openapi_3_with_every_reference_resolving() {
    let app = TestApp::spawn().await;
    let response = app.get("/api-docs/openapi.json").await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["info"]["title"].is_string());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let paths = doc["paths"].as_object().unwrap();
    for path in ["/health/live", "/health/ready", "/metrics"] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    let mut refs = BTreeSet::new();
    collect_refs(&doc, &mut refs);
    for reference in refs {
        let pointer = reference.strip_prefix('#').expect("local reference");
        assert!(
            doc.pointer(pointer).is_some(),
            "{reference} does not resolve"
        );
    }
    // Every operation has an id and at least one response.
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            assert!(operation["operationId"].is_string(), "{method} {path}");
            assert!(
                !operation["responses"].as_object().unwrap().is_empty(),
                "{method} {path}"
            );
        }
    }
}

#[test]
fn the_contract_matches_the_snapshot() {
    let doc = serde_json::to_value(shop::http::openapi()).unwrap();
    insta::assert_json_snapshot!("openapi", doc);
}
