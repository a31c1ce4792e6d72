//! What every operation of the document shares, written once instead of on each handler: the
//! error responses any request can meet on its way through the middleware (a malformed request,
//! a missing token, a body too large or of the wrong type, the rate limit, a timeout, an internal
//! error), every error body declared as `application/problem+json`, and the links the stateful
//! fuzzer (and a client) follows from a created resource to the operations on it.
//!
//! `scripts/api-fuzz` holds the document to this: schemathesis fails on any status, content type
//! or header the server sends without declaring it.

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::{
    ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder, Schema, Type,
};

use crate::error::PROBLEM_JSON;

/// Applies the shared responses and the links to the whole document.
pub fn finish(doc: &mut OpenApi) {
    let operation_ids = operation_ids(doc);
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in operations_mut(item) {
            declare_problems(operation);
            declare_common_errors(path, operation);
            for link in LINKS
                .iter()
                .filter(|link| link.from == (method, path.as_str()))
            {
                add_link(operation, link, &operation_ids);
            }
        }
    }
}

/// The operations of a path item with their lower-case method.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("post", item.post.as_mut()),
        ("put", item.put.as_mut()),
        ("patch", item.patch.as_mut()),
        ("delete", item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.map(|operation| (method, operation)))
}

/// Error responses that carry a `Problem` are `application/problem+json`, as sent.
fn declare_problems(operation: &mut Operation) {
    for (status, response) in operation.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if !(status.starts_with('4') || status.starts_with('5')) {
            continue;
        }
        if let Some(content) = response.content.shift_remove("application/json") {
            let is_problem = matches!(&content, RefOr::T(content)
                if matches!(&content.schema, Some(RefOr::Ref(schema)) if schema.ref_location.ends_with("/Problem")));
            let key = if is_problem {
                PROBLEM_JSON
            } else {
                "application/json"
            };
            response.content.insert(key.to_owned(), content);
        }
    }
}

/// The errors the middleware and the extractors can answer on any operation of their kind.
fn declare_common_errors(path: &str, operation: &mut Operation) {
    let has_body = operation.request_body.is_some();
    let has_query = operation.parameters.iter().flatten().any(|parameter| {
        matches!(parameter, RefOr::T(parameter)
            if parameter.parameter_in == utoipa::openapi::path::ParameterIn::Query)
    });
    let has_path_params = path.contains('{');
    let secured = operation
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty());
    let mut add = |status: &str, response: Response| {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert(RefOr::T(response));
    };
    add(
        "400",
        problem("The request is malformed: its syntax, a value of the wrong type, or a NUL byte"),
    );
    if secured {
        add(
            "401",
            problem("The bearer token is missing, invalid or expired"),
        );
    }
    if has_path_params {
        add(
            "404",
            problem("No such resource (or it is not the caller's)"),
        );
    }
    if has_body && !is_multipart(operation.request_body.as_ref()) {
        add("413", problem("The request body is larger than 1 MiB"));
        add("415", problem("The request body is not `application/json`"));
    }
    if has_body || has_query {
        add(
            "422",
            problem("The request has invalid fields; `errors` names each one"),
        );
    }
    add("429", rate_limited());
    add("500", problem("An internal error"));
    add(
        "503",
        problem("The request could not be completed in time; nothing was changed"),
    );
}

fn is_multipart(body: Option<&RefOr<RequestBody>>) -> bool {
    matches!(body, Some(RefOr::T(body)) if body.content.keys().any(|key| key.starts_with("multipart/")))
}

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

fn rate_limited() -> Response {
    let mut response = problem("Too many requests; retry after `Retry-After` seconds");
    response.headers.insert(
        "Retry-After".to_owned(),
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(Schema::Object(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .build(),
                )))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        ),
    );
    response
}

/// A link from a response of one operation to another operation.
struct Link {
    /// The operation whose response links: (method, path).
    from: (&'static str, &'static str),
    /// The response status that carries the link.
    status: &'static str,
    name: &'static str,
    /// The operation linked to: (method, path).
    to: (&'static str, &'static str),
    /// Parameters of the target: name and runtime expression.
    parameters: &'static [(&'static str, &'static str)],
    /// The target's request body (JSON, runtime expressions as string values), if it takes one.
    body: Option<&'static str>,
}

const fn link(
    from: (&'static str, &'static str),
    status: &'static str,
    name: &'static str,
    to: (&'static str, &'static str),
    parameters: &'static [(&'static str, &'static str)],
) -> Link {
    Link {
        from,
        status,
        name,
        to,
        parameters,
        body: None,
    }
}

/// A link whose target takes a request body.
const fn link_with_body(
    from: (&'static str, &'static str),
    status: &'static str,
    name: &'static str,
    to: (&'static str, &'static str),
    body: &'static str,
) -> Link {
    Link {
        from,
        status,
        name,
        to,
        parameters: &[],
        body: Some(body),
    }
}

const ADDRESS: &str = r#"{"shipping_address": {"name": "Ada Lovelace", "line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}}"#;

const ID: &[(&str, &str)] = &[("id", "$response.body#/id")];

/// From each create to the reads, updates and deletes of what it created, and along a customer's
/// way: from the listing to a product and into the cart, from the cart to its lines and to
/// checkout, from the order to its payment.
const LINKS: &[Link] = &[
    link(
        ("get", "/api/v1/products"),
        "200",
        "GetListedProduct",
        ("get", "/api/v1/products/{id}"),
        &[("id", "$response.body#/items/0/id")],
    ),
    link_with_body(
        ("get", "/api/v1/products"),
        "200",
        "AddListedProduct",
        ("post", "/api/v1/cart/items"),
        r#"{"variant_id": "$response.body#/items/0/variants/0/id", "quantity": 1}"#,
    ),
    link_with_body(
        ("get", "/api/v1/products/{id}"),
        "200",
        "AddProduct",
        ("post", "/api/v1/cart/items"),
        r#"{"variant_id": "$response.body#/variants/0/id", "quantity": 1}"#,
    ),
    link_with_body(
        ("post", "/api/v1/cart/items"),
        "200",
        "CheckOut",
        ("post", "/api/v1/orders"),
        ADDRESS,
    ),
    link(
        ("get", "/api/v1/cart"),
        "200",
        "UpdateCartLine",
        ("patch", "/api/v1/cart/items/{item_id}"),
        &[("item_id", "$response.body#/items/0/id")],
    ),
    link(
        ("get", "/api/v1/cart"),
        "200",
        "RemoveCartLine",
        ("delete", "/api/v1/cart/items/{item_id}"),
        &[("item_id", "$response.body#/items/0/id")],
    ),
    link(
        ("get", "/api/v1/orders"),
        "200",
        "GetListedOrder",
        ("get", "/api/v1/orders/{id}"),
        &[("id", "$response.body#/items/0/id")],
    ),
    link(
        ("post", "/api/v1/categories"),
        "201",
        "GetCategory",
        ("get", "/api/v1/categories/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/categories"),
        "201",
        "UpdateCategory",
        ("patch", "/api/v1/categories/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/categories"),
        "201",
        "DeleteCategory",
        ("delete", "/api/v1/categories/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/products"),
        "201",
        "GetProduct",
        ("get", "/api/v1/products/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/products"),
        "201",
        "UpdateProduct",
        ("patch", "/api/v1/products/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/products"),
        "201",
        "DeleteProduct",
        ("delete", "/api/v1/products/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/products"),
        "201",
        "AddVariant",
        ("post", "/api/v1/products/{id}/variants"),
        ID,
    ),
    link(
        ("post", "/api/v1/products/{id}/variants"),
        "201",
        "UpdateVariant",
        ("patch", "/api/v1/products/{id}/variants/{variant_id}"),
        &[
            ("id", "$request.path.id"),
            ("variant_id", "$response.body#/id"),
        ],
    ),
    link(
        ("post", "/api/v1/products/{id}/variants"),
        "201",
        "DeleteVariant",
        ("delete", "/api/v1/products/{id}/variants/{variant_id}"),
        &[
            ("id", "$request.path.id"),
            ("variant_id", "$response.body#/id"),
        ],
    ),
    link(
        ("post", "/api/v1/admin/coupons"),
        "201",
        "GetCoupon",
        ("get", "/api/v1/admin/coupons/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/admin/coupons"),
        "201",
        "UpdateCoupon",
        ("patch", "/api/v1/admin/coupons/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/admin/coupons"),
        "201",
        "DeleteCoupon",
        ("delete", "/api/v1/admin/coupons/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/admin/gift-rules"),
        "201",
        "UpdateGiftRule",
        ("patch", "/api/v1/admin/gift-rules/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/admin/gift-rules"),
        "201",
        "DeleteGiftRule",
        ("delete", "/api/v1/admin/gift-rules/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/orders"),
        "201",
        "GetOrder",
        ("get", "/api/v1/orders/{id}"),
        ID,
    ),
    link(
        ("post", "/api/v1/orders"),
        "201",
        "PayOrder",
        ("post", "/api/v1/orders/{id}/pay"),
        ID,
    ),
    link(
        ("post", "/api/v1/orders"),
        "201",
        "CancelOrder",
        ("post", "/api/v1/orders/{id}/cancel"),
        ID,
    ),
    link(
        ("post", "/api/v1/cart/items"),
        "200",
        "UpdateItem",
        ("patch", "/api/v1/cart/items/{item_id}"),
        &[("item_id", "$response.body#/items/0/id")],
    ),
    link(
        ("post", "/api/v1/cart/items"),
        "200",
        "RemoveItem",
        ("delete", "/api/v1/cart/items/{item_id}"),
        &[("item_id", "$response.body#/items/0/id")],
    ),
];

/// operationId by (method, path).
fn operation_ids(doc: &mut OpenApi) -> BTreeMap<(&'static str, String), String> {
    let mut ids = BTreeMap::new();
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in operations_mut(item) {
            if let Some(id) = &operation.operation_id {
                ids.insert((method, path.clone()), id.clone());
            }
        }
    }
    ids
}

fn add_link(
    operation: &mut Operation,
    link: &Link,
    operation_ids: &BTreeMap<(&'static str, String), String>,
) {
    let Some(target) = operation_ids.get(&(link.to.0, link.to.1.to_owned())) else {
        // A link to an operation that does not exist is a bug in the table above; the
        // document test (`links_point_at_operations_that_exist`) catches it.
        return;
    };
    let Some(RefOr::T(response)) = operation.responses.responses.get_mut(link.status) else {
        return;
    };
    let mut builder = LinkBuilder::new().operation_id(target);
    for (name, expression) in link.parameters {
        builder = builder.parameter(*name, *expression);
    }
    if let Some(body) = link.body {
        match serde_json::from_str::<serde_json::Value>(body) {
            Ok(body) => builder = builder.request_body(Some(body)),
            // A body that is not JSON is a bug in the table; the document test catches it.
            Err(_) => return,
        }
    }
    response
        .links
        .insert(link.name.to_owned(), RefOr::T(builder.build()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_point_at_operations_that_exist() {
        let doc = crate::http::openapi();
        let json = serde_json::to_value(&doc).expect("the document serializes");
        for link in LINKS {
            let from = &json["paths"][link.from.1][link.from.0];
            assert!(from.is_object(), "no operation {:?}", link.from);
            let declared = &from["responses"][link.status]["links"][link.name];
            assert!(declared.is_object(), "link {} was not added", link.name);
            let target = &json["paths"][link.to.1][link.to.0];
            assert_eq!(
                declared["operationId"], target["operationId"],
                "link {} points at {:?}",
                link.name, link.to
            );
        }
    }

    #[test]
    fn every_error_response_is_problem_json_except_readiness() {
        let json = serde_json::to_value(crate::http::openapi()).expect("the document serializes");
        for (path, item) in json["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                for (status, response) in operation["responses"].as_object().expect("responses") {
                    if !(status.starts_with('4') || status.starts_with('5')) {
                        continue;
                    }
                    let Some(content) = response["content"].as_object() else {
                        continue;
                    };
                    if path == "/health/ready" && status == "503" {
                        continue;
                    }
                    assert!(
                        content.keys().all(|key| key == PROBLEM_JSON),
                        "{method} {path} {status} declares {:?}",
                        content.keys().collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}
