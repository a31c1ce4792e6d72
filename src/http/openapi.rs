//! What every operation of the document shares, written once instead of on each handler: the
//! error responses any request can meet on its way through the middleware (a malformed request,
//! a missing token, a body too large or of the wrong type, the rate limit, a timeout, an internal
//! error), every error body declared as `application/problem+json`, and the links the stateful
//! fuzzer (and a client) follows from a created resource to the operations on it, and the rule
//! that no string may hold a NUL character, stated on every free string (see [`NO_NUL`]).
//!
//! `scripts/api-fuzz` holds the document to this: schemathesis fails on any status, content type
//! or header the server sends without declaring it.

use std::collections::BTreeMap;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayItems, KnownFormat, SchemaFormat, SchemaType,
};
use utoipa::openapi::{
    ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder, Schema, Type,
};

use crate::error::PROBLEM_JSON;

/// The pattern of a string with no other rule: the server refuses a NUL character in any string
/// (a path, a query, a header, a JSON key or value) with 400 before a handler runs, so a client
/// or a fuzzer reading the document must not take such a string for a valid one. A string whose
/// pattern, enum or format already rules NUL out keeps its own rule.
pub const NO_NUL: &str = r"^[^\u0000]*$";

/// Applies the shared responses, the links and the NUL rule to the whole document.
pub fn finish(doc: &mut OpenApi) {
    let operation_ids = operation_ids(doc);
    if let Some(components) = doc.components.as_mut() {
        components.schemas.values_mut().for_each(forbid_nul_in);
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, operation) in operations_mut(item) {
            forbid_nul_in_operation(operation);
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

/// The NUL rule on an operation's parameters and request body (responses share the components).
fn forbid_nul_in_operation(operation: &mut Operation) {
    for parameter in operation.parameters.iter_mut().flatten() {
        if let RefOr::T(parameter) = parameter {
            parameter.schema.iter_mut().for_each(forbid_nul_in);
        }
    }
    if let Some(RefOr::T(body)) = operation.request_body.as_mut() {
        for content in body.content.values_mut() {
            if let RefOr::T(content) = content {
                content.schema.iter_mut().for_each(forbid_nul_in);
            }
        }
    }
}

fn forbid_nul_in(schema: &mut RefOr<Schema>) {
    if let RefOr::T(schema) = schema {
        forbid_nul(schema);
    }
}

/// Gives every free string under `schema` the [`NO_NUL`] pattern.
fn forbid_nul(schema: &mut Schema) {
    match schema {
        Schema::Object(object) => {
            let string = match &object.schema_type {
                SchemaType::Type(kind) => *kind == Type::String,
                SchemaType::Array(kinds) => kinds.contains(&Type::String),
                SchemaType::AnyValue => false,
            };
            let free_string = string
                && object.pattern.is_none()
                && object.enum_values.is_none()
                // A format rules NUL out (uuid, date-time, email, ...), except a password's,
                // and a binary (a file's bytes) may hold one.
                && object.format.as_ref().is_none_or(|format| {
                    matches!(format, SchemaFormat::KnownFormat(KnownFormat::Password))
                });
            if free_string {
                object.pattern = Some(NO_NUL.to_owned());
            }
            object.properties.values_mut().for_each(forbid_nul_in);
            if let Some(names) = object.property_names.as_mut() {
                forbid_nul(names);
            }
            if let Some(AdditionalProperties::RefOr(values)) =
                object.additional_properties.as_deref_mut()
            {
                forbid_nul_in(values);
            }
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                forbid_nul_in(items);
            }
            array.prefix_items.iter_mut().for_each(forbid_nul);
        }
        Schema::OneOf(one_of) => one_of.items.iter_mut().for_each(forbid_nul_in),
        Schema::AllOf(all_of) => all_of.items.iter_mut().for_each(forbid_nul_in),
        Schema::AnyOf(any_of) => any_of.items.iter_mut().for_each(forbid_nul_in),
        _ => {}
    }
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

    /// Every string a request or response can carry says it holds no NUL: a free string has the
    /// [`NO_NUL`] pattern, and a string with a pattern of its own refuses its own example (or a
    /// plain sample) with a NUL put anywhere in it. Only an enum, a format or a file's bytes are
    /// left as they are.
    #[test]
    fn every_string_of_the_document_says_it_holds_no_nul() {
        fn strings<'a>(
            at: String,
            value: &'a serde_json::Value,
            out: &mut Vec<(String, &'a serde_json::Value)>,
        ) {
            match value {
                serde_json::Value::Object(map) => {
                    let kind = &map.get("type");
                    let is_string = kind.is_some_and(|kind| {
                        kind == "string"
                            || kind
                                .as_array()
                                .is_some_and(|kinds| kinds.iter().any(|k| k == "string"))
                    });
                    if is_string {
                        out.push((at.clone(), value));
                    }
                    for (key, child) in map {
                        // Examples are data, not schemas.
                        if key != "example" && key != "examples" && key != "default" {
                            strings(format!("{at}/{key}"), child, out);
                        }
                    }
                }
                serde_json::Value::Array(items) => {
                    for (index, child) in items.iter().enumerate() {
                        strings(format!("{at}/{index}"), child, out);
                    }
                }
                _ => {}
            }
        }
        let json = serde_json::to_value(crate::http::openapi()).expect("the document serializes");
        let mut found = Vec::new();
        strings(String::new(), &json, &mut found);
        let mut free = 0;
        for (at, schema) in &found {
            if schema.get("enum").is_some() || schema.get("const").is_some() {
                continue;
            }
            match schema["format"].as_str() {
                Some("password") | None => {}
                Some(_) => continue,
            }
            let pattern = schema["pattern"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: a string without a pattern allows NUL"));
            if pattern == NO_NUL {
                free += 1;
            }
            let regex =
                regex::Regex::new(pattern).unwrap_or_else(|e| panic!("{at}: {pattern}: {e}"));
            let example = schema["example"].as_str().unwrap_or("a");
            let mut with_nul: Vec<String> = ["\0", "a\0", "\0a", "a\0b", " \0 "]
                .map(str::to_owned)
                .to_vec();
            for (index, _) in example.char_indices().chain([(example.len(), ' ')]) {
                with_nul.push(format!("{}\0{}", &example[..index], &example[index..]));
            }
            for sample in with_nul {
                assert!(
                    !regex.is_match(&sample),
                    "{at}: {pattern} accepts {sample:?}"
                );
            }
        }
        // The strings the issue named, among others.
        for schema in ["LoginRequest", "RefreshRequest"] {
            let properties = &json["components"]["schemas"][schema]["properties"];
            assert!(
                properties
                    .as_object()
                    .is_some_and(|p| p.values().any(|p| p["pattern"] == NO_NUL)),
                "{schema}: {properties}"
            );
        }
        assert!(free > 20, "only {free} free strings");
    }
}
