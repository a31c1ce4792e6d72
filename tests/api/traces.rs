//! OpenTelemetry traces from the real binary to a real OTLP/HTTP receiver: this file's, which
//! decodes what the shop exports with the official protobuf definitions (`opentelemetry-proto`).
//! One checkout and its payment, through the real Stripe client and the Stripe test server, the
//! signed webhook, RabbitMQ and the SMTP sink, are one trace: the client's `traceparent` is the
//! root, and every span the shop sends in it has a parent that was sent too, from the HTTP
//! routes through the cart actor, the saga's steps and the provider calls to the email.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{Value, json};
use shop_stripe_testserver::{ServerOptions, StripeTestServer, WebhookTarget};

use crate::helpers::{
    MailSink, ShopProcess, TestDatabase, amqp_server, amqp_url_via, eventually, free_port,
};

const SECRET_KEY: &str = "sk_test_shop_traces";
const WEBHOOK_SECRET: &str = "whsec_shop_traces";
const ADMIN_EMAIL: &str = "traces-admin@example.com";
const ADMIN_PASSWORD: &str = "traces-admin-password-1";
const PASSWORD: &str = "traces-customer-password-1";
/// The client's trace, and its span that the shop's request spans are children of.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[derive(Debug, Clone)]
struct ExportedSpan {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// OTLP's SpanKind: 2 server, 3 client.
    kind: i32,
    attributes: HashMap<String, String>,
    service: String,
}

/// An OTLP/HTTP receiver on localhost: what it was sent, decoded.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Self::default();
        let spans = receiver.spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let spans = spans.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("an OTLP/HTTP protobuf export");
                    let mut spans = spans.lock().unwrap();
                    for resource in request.resource_spans {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                            .unwrap_or_default();
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                spans.push(ExportedSpan {
                                    trace_id: hex::encode(&span.trace_id),
                                    span_id: hex::encode(&span.span_id),
                                    parent: hex::encode(&span.parent_span_id),
                                    name: span.name,
                                    kind: span.kind,
                                    attributes: span
                                        .attributes
                                        .iter()
                                        .filter_map(|kv| {
                                            let value = text(kv.value.as_ref()?.value.as_ref()?)?;
                                            Some((kv.key.clone(), value))
                                        })
                                        .collect(),
                                    service: service.clone(),
                                });
                            }
                        }
                    }
                    // An empty ExportTraceServiceResponse: everything accepted.
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, format!("http://{address}"))
    }

    fn in_trace(&self, trace_id: &str) -> Vec<ExportedSpan> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|span| span.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn text(value: &AnyValue) -> Option<String> {
    match value {
        AnyValue::StringValue(text) => Some(text.clone()),
        AnyValue::IntValue(number) => Some(number.to_string()),
        AnyValue::BoolValue(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// The names from `span` up to the root of its trace, following parent links; panics on a parent
/// that was never exported (a broken link), the client's span ending the walk.
fn ancestry(spans: &[ExportedSpan], span: &ExportedSpan) -> Vec<String> {
    let by_id: HashMap<&str, &ExportedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut names = vec![span.name.clone()];
    let mut parent = span.parent.clone();
    while parent != CLIENT_SPAN {
        let next = by_id.get(parent.as_str()).unwrap_or_else(|| {
            panic!(
                "{names:?}: parent {parent} was not exported; spans: {:#?}",
                spans
                    .iter()
                    .map(|s| (&s.name, &s.span_id, &s.parent))
                    .collect::<Vec<_>>()
            )
        });
        names.push(next.name.clone());
        parent = next.parent.clone();
        assert!(names.len() < 64, "a cycle of parents: {names:?}");
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_and_its_payment_are_one_trace_from_the_request_to_the_email() {
    let database = TestDatabase::new();
    let (receiver, otlp) = Receiver::start().await;
    let port = free_port();
    let stripe = StripeTestServer::start_with(ServerOptions {
        webhook: Some(WebhookTarget {
            url: format!("http://127.0.0.1:{port}/api/v1/webhooks/stripe"),
            secret: WEBHOOK_SECRET.to_owned(),
        }),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let sink = MailSink::from_env();
    let names = format!("traces-{}", database.name);
    let logs = tempfile::tempdir().unwrap();
    let env = [
        ("SHOP__SERVER__PORT", port.to_string()),
        ("SHOP__TRACES__ENABLED", "true".to_owned()),
        ("SHOP__TRACES__ENDPOINT", otlp.clone()),
        ("SHOP__TRACES__SERVICE_NAME", "shop-under-test".to_owned()),
        // The batch exporter's delay (OpenTelemetry's own variable), so spans arrive in time.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("SHOP__PAYMENTS__PROVIDER", "stripe".to_owned()),
        ("SHOP__STRIPE__SECRET_KEY", SECRET_KEY.to_owned()),
        ("SHOP__STRIPE__WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("SHOP__STRIPE__API_BASE", stripe.base_url()),
        ("SHOP__JOBS__BACKEND", "rabbitmq".to_owned()),
        ("SHOP__AMQP__URL", amqp_url_via(&amqp_server())),
        ("SHOP__AMQP__EXCHANGE", format!("{names}.events")),
        ("SHOP__AMQP__EMAIL_QUEUE", format!("{names}.emails")),
        (
            "SHOP__AMQP__DEAD_LETTER_EXCHANGE",
            format!("{names}.dead-letter"),
        ),
        (
            "SHOP__AMQP__DEAD_LETTER_QUEUE",
            format!("{names}.emails.dead-letter"),
        ),
        ("SHOP__EMAIL__BACKEND", "smtp".to_owned()),
        ("SHOP__SMTP__URL", sink.smtp_url.clone()),
        ("SHOP__BOOTSTRAP__ADMIN_EMAIL", ADMIN_EMAIL.to_owned()),
        ("SHOP__BOOTSTRAP__ADMIN_PASSWORD", ADMIN_PASSWORD.to_owned()),
    ];
    let log = logs.path().join("shop.log");
    let shop = ShopProcess::start(&database, &env, &log);
    let client = reqwest::Client::new();
    let base = shop.base.clone();
    let post = |path: &str, token: Option<&str>, body: Value, traceparent: Option<String>| {
        let mut request = client.post(format!("{base}{path}")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        async move {
            let response = request.send().await.expect("the shop answers");
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let login = |email: &'static str, password: &'static str| {
        let post = &post;
        async move {
            let (status, body) = post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": password}),
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body["access_token"].as_str().unwrap().to_owned()
        }
    };
    let admin = login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (status, product) = post(
        "/api/v1/products",
        Some(&admin),
        json!({"name": "Traced mug", "sku": "TRACED-MUG", "price": 1500, "stock": 3,
               "status": "active"}),
        None,
    )
    .await;
    assert_eq!(status, 201, "{product}");
    let variant = product["variants"][0]["id"].as_str().unwrap().to_owned();
    let customer_email = "traced-customer@example.com";
    let (status, body) = post(
        "/api/v1/auth/register",
        None,
        json!({"email": customer_email, "password": PASSWORD, "name": "Traced Customer"}),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let customer = login(customer_email, PASSWORD).await;

    // One client trace: its span is the parent of the shop's spans for these three requests.
    let traceparent = || Some(format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"));
    let (status, cart) = post(
        "/api/v1/cart/items",
        Some(&customer),
        json!({"variant_id": variant, "quantity": 1}),
        traceparent(),
    )
    .await;
    assert_eq!(status, 200, "{cart}");
    let (status, order) = post(
        "/api/v1/orders",
        Some(&customer),
        json!({"shipping_address": {"name": "Ada Lovelace", "line1": "12 St James's Square",
            "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"}}),
        traceparent(),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    let id = order["id"].as_str().unwrap().to_owned();
    let (status, paid) = post(
        &format!("/api/v1/orders/{id}/pay"),
        Some(&customer),
        json!({"payment_method": "pm_card_visa"}),
        traceparent(),
    )
    .await;
    assert_eq!(status, 200, "{paid}");
    // The webhook makes it paid, and the paid email goes out through RabbitMQ.
    eventually(Duration::from_secs(30), "the paid email", || async {
        let emails = sink.messages_to(customer_email).await;
        emails
            .iter()
            .any(|email| {
                email["subject"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("is confirmed"))
            })
            .then_some(())
    })
    .await;

    // Everything the shop did for them, in the client's trace, once exported.
    let wanted = |spans: &[ExportedSpan]| {
        let has = |name: &str| spans.iter().any(|span| span.name == name);
        has("POST /api/v1/cart/items")
            && has("POST /api/v1/orders")
            && has("POST /api/v1/orders/{id}/pay")
            && has("saga checkout")
            && has("saga pay")
            && has("saga payment event")
            && has("payment provider create_intent")
            && has("payment provider confirm")
            && spans
                .iter()
                .any(|span| span.name == "email send" && span.attributes["topic"] == "order.paid")
    };
    let spans = eventually(Duration::from_secs(30), "the trace's spans", || async {
        let spans = receiver.in_trace(TRACE_ID);
        wanted(&spans).then_some(spans)
    })
    .await;
    assert!(spans.iter().all(|span| span.service == "shop-under-test"));
    let span = |name: &str| {
        spans
            .iter()
            .find(|span| span.name == name)
            .unwrap_or_else(|| panic!("no span {name}"))
    };
    // Each request's span is the client span's child, with the route in its name.
    for route in [
        "POST /api/v1/cart/items",
        "POST /api/v1/orders",
        "POST /api/v1/orders/{id}/pay",
    ] {
        assert_eq!(span(route).parent, CLIENT_SPAN, "{route}");
    }
    assert_eq!(span("POST /api/v1/orders").kind, 2, "a server span");
    assert_eq!(span("payment provider confirm").kind, 3, "a client span");
    // The checkout: request → cart actor → order supervisor → saga → the provider's intent.
    let create = ancestry(&spans, span("payment provider create_intent"));
    assert_eq!(create.first().unwrap(), "payment provider create_intent");
    assert!(
        create.contains(&"saga create order".to_owned()),
        "{create:?}"
    );
    assert!(create.contains(&"saga checkout".to_owned()), "{create:?}");
    assert!(create.contains(&"cart".to_owned()), "{create:?}");
    assert_eq!(create.last().unwrap(), "POST /api/v1/orders", "{create:?}");
    // The stock, on an inventory shard, inside the saga's step.
    let reserve = spans
        .iter()
        .filter(|span| span.name == "inventory_shard")
        .map(|span| ancestry(&spans, span))
        .find(|path| path.contains(&"saga reserve stock".to_owned()))
        .expect("an inventory shard's span under the saga's reserve step");
    assert_eq!(
        reserve.last().unwrap(),
        "POST /api/v1/orders",
        "{reserve:?}"
    );
    // The payment: its request → the saga's pay step → the provider's confirm.
    let confirm = ancestry(&spans, span("payment provider confirm"));
    assert_eq!(confirm[1], "saga pay", "{confirm:?}");
    assert_eq!(confirm.last().unwrap(), "POST /api/v1/orders/{id}/pay");
    // The webhook's event joins the order's trace through the saga, and the email the event
    // wrote to the outbox joins it through RabbitMQ's `traceparent` header.
    let email = spans
        .iter()
        .find(|span| span.name == "email send" && span.attributes["topic"] == "order.paid")
        .unwrap();
    let email = ancestry(&spans, email);
    assert!(
        email.contains(&"saga payment event".to_owned()),
        "{email:?}"
    );
    assert!(email.contains(&"order saga".to_owned()), "{email:?}");
    assert_eq!(email.last().unwrap(), "POST /api/v1/orders", "{email:?}");
    drop(shop);
    drop(stripe);
}
