//! Order emails from the outbox to the customer's inbox, exactly once: outbox rows are written
//! with `shop::messaging::enqueue` inside a transaction (as the order saga does), the relay
//! publishes them to real RabbitMQ, the dispatcher sends them to a real SMTP sink
//! (`scripts/smtp_sink.py`). Every test has exchanges and queues of its own.

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{Value, json};
use shop::config::Settings;
use shop::messaging::{OrderEmail, OrderEmailKind, OrderEmailLine, ShippingAddress};
use uuid::Uuid;

use crate::helpers::{
    MailSink, TcpRelay, TestApp, amqp_server, amqp_url_via, eventually, metric_value,
    quick_retries, use_rabbitmq, use_rabbitmq_and_smtp,
};

const DEADLINE: Duration = Duration::from_secs(20);

/// A paid order of two lines: $25.00 + $1,200.00 - $10.00 = $1,215.00.
fn order_email(kind: OrderEmailKind, customer_email: &str) -> OrderEmail {
    let order_id = Uuid::new_v4();
    OrderEmail {
        order_id,
        order_number: format!("SO-{}", &order_id.simple().to_string()[..8].to_uppercase()),
        kind,
        customer_email: customer_email.to_owned(),
        customer_name: "Casey Customer".into(),
        lines: vec![
            OrderEmailLine {
                name: "Enamel mug".into(),
                sku: "MUG-ENAMEL-BLUE".into(),
                options: "Colour: blue".into(),
                quantity: 2,
                unit_price: 1250,
                line_total: 2500,
            },
            OrderEmailLine {
                name: "Framed print <A2>".into(),
                sku: "PRINT-A2".into(),
                options: String::new(),
                quantity: 1,
                unit_price: 120_000,
                line_total: 120_000,
            },
        ],
        subtotal: 122_500,
        discount_total: 1_000,
        total: 121_500,
        currency: "usd".into(),
        shipping_address: ShippingAddress {
            name: "Casey Customer".into(),
            line1: "1 Harbour Street".into(),
            line2: Some("Flat 2".into()),
            city: "Portsmouth".into(),
            postal_code: "PO1 2AB".into(),
            country: "GB".into(),
        },
    }
}

fn customer(tag: &str) -> String {
    format!("{tag}-{}@example.com", Uuid::new_v4().simple())
}

async fn spawn_with_broker(sink: &MailSink, amqp_address: &str) -> TestApp {
    let (sink, amqp_address) = (sink.clone(), amqp_address.to_owned());
    TestApp::spawn_with(
        move |settings| use_rabbitmq_and_smtp(settings, &amqp_address, &sink),
        |_| Vec::new(),
    )
    .await
}

/// A channel of the test's own on the shared broker.
async fn broker_channel() -> (Connection, Channel) {
    let connection = Connection::connect(
        &amqp_url_via(&amqp_server()),
        ConnectionProperties::default(),
    )
    .await
    .expect("the test connects to RabbitMQ");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// Deletes the test's exchanges and queues (they are durable, so nothing else would).
pub(crate) async fn delete_topology(settings: &Settings) {
    let (connection, channel) = broker_channel().await;
    let amqp = &settings.amqp;
    for queue in [&amqp.email_queue, &amqp.dead_letter_queue] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [&amqp.exchange, &amqp.dead_letter_exchange] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
}

async fn published_at_is_set(app: &TestApp, id: Uuid) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT published_at IS NOT NULL FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn deliveries(app: &TestApp, order_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM email_deliveries WHERE order_id = $1")
        .bind(order_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

fn counter(metrics: &str, series: &str) -> f64 {
    metric_value(metrics, series).unwrap_or(0.0)
}

#[tokio::test]
async fn an_order_paid_row_sends_exactly_one_email_to_the_customer() {
    let sink = MailSink::from_env();
    let app = spawn_with_broker(&sink, &amqp_server()).await;
    let to = customer("paid");
    let email = order_email(OrderEmailKind::Paid, &to);

    let id = app.enqueue(email.topic(), &email).await;

    let received = sink.wait_for(&to, 1).await;
    let message = &received[0];
    assert_eq!(message["to"], json!([to]));
    let subject = message["subject"].as_str().unwrap();
    assert!(subject.contains(&email.order_number), "subject: {subject}");
    let text = message["text"].as_str().unwrap();
    let html = message["html"].as_str().unwrap();
    for body in [text, html] {
        assert!(body.contains(&email.order_number), "{body}");
        assert!(body.contains("$1,215.00"), "total missing: {body}");
        assert!(body.contains("$1,200.00"), "line total missing: {body}");
        assert!(body.contains("PO1 2AB"), "address missing: {body}");
    }
    // The product name a merchant typed is escaped in HTML, verbatim in text.
    assert!(html.contains("Framed print &lt;A2&gt;"), "{html}");
    assert!(text.contains("Framed print <A2>"));
    assert!(
        message["message_id"]
            .as_str()
            .unwrap()
            .contains(&id.to_string())
    );

    eventually(DEADLINE, "the row to be marked published", || async {
        published_at_is_set(&app, id).await.then_some(())
    })
    .await;
    assert_eq!(deliveries(&app, email.order_id).await, 1);
    assert_eq!(sink.messages_to(&to).await.len(), 1, "exactly one email");
    delete_topology(&app.state.settings).await;
}

#[tokio::test]
async fn a_message_delivered_twice_sends_one_email() {
    let sink = MailSink::from_env();
    let app = spawn_with_broker(&sink, &amqp_server()).await;
    let before = counter(&app.metrics().await, "email_duplicates_total");
    let to = customer("twice");
    let email = order_email(OrderEmailKind::Paid, &to);
    let id = app.enqueue(email.topic(), &email).await;
    sink.wait_for(&to, 1).await;

    // The same message again, as a broker redelivery or a relay crash before its commit would
    // produce it: same message id, same payload, straight into the test's exchange.
    let (connection, channel) = broker_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirmation = channel
        .basic_publish(
            app.state.settings.amqp.exchange.as_str().into(),
            email.topic().into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(&email).unwrap(),
            BasicProperties::default()
                .with_message_id(id.to_string().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirmation.is_ack());
    let _ = connection.close(200, "done".into()).await;

    // A later message is a fence: the queue is FIFO and the dispatcher handles one message at a
    // time, so once the fence's email is in, the duplicate has been handled.
    let fence_to = customer("fence");
    let fence = order_email(OrderEmailKind::Paid, &fence_to);
    app.enqueue(fence.topic(), &fence).await;
    sink.wait_for(&fence_to, 1).await;

    assert_eq!(
        sink.messages_to(&to).await.len(),
        1,
        "the duplicate was sent"
    );
    assert_eq!(deliveries(&app, email.order_id).await, 1);
    let after = counter(&app.metrics().await, "email_duplicates_total");
    assert!(after >= before + 1.0, "duplicate not counted");
    delete_topology(&app.state.settings).await;
}

#[tokio::test]
async fn emails_enqueued_while_the_broker_is_unreachable_arrive_once_it_is_back() {
    let sink = MailSink::from_env();
    let relay = TcpRelay::start(amqp_server()).await;
    let app = spawn_with_broker(&sink, &relay.address).await;

    let first_to = customer("before-outage");
    let first = order_email(OrderEmailKind::Paid, &first_to);
    app.enqueue(first.topic(), &first).await;
    sink.wait_for(&first_to, 1).await;

    relay.cut();
    let refused_before = relay.refused();
    let mut during = Vec::new();
    for kind in [
        OrderEmailKind::Paid,
        OrderEmailKind::Cancelled,
        OrderEmailKind::Refunded,
    ] {
        let to = customer("during-outage");
        let email = order_email(kind, &to);
        let id = app.enqueue(email.topic(), &email).await;
        during.push((id, to));
    }
    // The relay and the consumer keep trying to reconnect, and are refused.
    eventually(DEADLINE, "reconnection attempts", || async {
        (relay.refused() >= refused_before + 2).then_some(())
    })
    .await;
    for (id, to) in &during {
        assert!(
            !published_at_is_set(&app, *id).await,
            "a row was marked published without a broker confirm"
        );
        assert!(sink.messages_to(to).await.is_empty());
    }

    relay.restore();
    for (_, to) in &during {
        sink.wait_for(to, 1).await;
    }
    app.wait_for_outbox_drained().await;
    for (_, to) in &during {
        assert_eq!(sink.messages_to(to).await.len(), 1);
    }
    assert_eq!(sink.messages_to(&first_to).await.len(), 1);
    delete_topology(&app.state.settings).await;
}

#[tokio::test]
async fn a_refused_email_is_retried_then_dead_lettered_while_others_go_through() {
    let sink = MailSink::from_env();
    let app = spawn_with_broker(&sink, &amqp_server()).await;
    let max_attempts = app.state.settings.email.max_attempts;
    let before = counter(&app.metrics().await, "email_dead_lettered_total");

    // The sink answers 451 (try again later) to refuse-* recipients, every time.
    let refused_to = customer("refuse");
    let refused = order_email(OrderEmailKind::Paid, &refused_to);
    let refused_id = app.enqueue(refused.topic(), &refused).await;
    // A payload that is not an order email at all: dead-lettered without retries.
    let garbled_id = app
        .enqueue("order.paid", &json!({"not": "an order email"}))
        .await;
    let fine_to = customer("fine");
    let fine = order_email(OrderEmailKind::Paid, &fine_to);
    app.enqueue(fine.topic(), &fine).await;

    sink.wait_for(&fine_to, 1).await;

    let (connection, channel) = broker_channel().await;
    let dead_letter_queue = app.state.settings.amqp.dead_letter_queue.clone();
    let mut dead = Vec::new();
    let started = tokio::time::Instant::now();
    while dead.len() < 2 {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for two dead letters; got {dead:?}"
        );
        let got = channel
            .basic_get(
                dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        match got {
            Some(message) => dead.push(
                message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            ),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    dead.sort();
    let mut expected = vec![refused_id.to_string(), garbled_id.to_string()];
    expected.sort();
    assert_eq!(dead, expected);
    let _ = connection.close(200, "done".into()).await;

    assert_eq!(
        sink.refusals(&refused_to).await,
        u64::from(max_attempts),
        "one RCPT per attempt"
    );
    assert!(sink.messages_to(&refused_to).await.is_empty());
    assert_eq!(deliveries(&app, refused.order_id).await, 0);
    let after = counter(&app.metrics().await, "email_dead_lettered_total");
    assert!(
        after >= before + 2.0,
        "dead letters not counted: {before} -> {after}"
    );
    delete_topology(&app.state.settings).await;
}

#[tokio::test]
async fn metrics_and_readiness_cover_the_messaging_actors() {
    let sink = MailSink::from_env();
    let app = spawn_with_broker(&sink, &amqp_server()).await;
    let to = customer("metrics");
    let email = order_email(OrderEmailKind::Paid, &to);
    app.enqueue(email.topic(), &email).await;
    sink.wait_for(&to, 1).await;

    let metrics = app.metrics().await;
    for kind in ["outbox_relay", "email_dispatcher"] {
        for series in [
            format!("actor_messages_total{{kind=\"{kind}\"}}"),
            format!("actor_alive{{kind=\"{kind}\"}}"),
        ] {
            assert!(
                metric_value(&metrics, &series).is_some_and(|value| value >= 1.0),
                "{series} missing:\n{metrics}"
            );
        }
        assert!(metrics.contains(&format!(
            "actor_message_duration_seconds_count{{kind=\"{kind}\"}}"
        )));
    }
    assert!(counter(&metrics, "emails_sent_total{kind=\"paid\"}") >= 1.0);
    assert!(counter(&metrics, "outbox_published_total") >= 1.0);

    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["rabbitmq"], "ok", "{body}");
    assert_eq!(body["checks"]["smtp"], "ok", "{body}");
    delete_topology(&app.state.settings).await;
}

#[tokio::test]
async fn readiness_reports_an_unreachable_broker() {
    let sink = MailSink::from_env();
    let relay = TcpRelay::start(amqp_server()).await;
    let app = spawn_with_broker(&sink, &relay.address).await;
    relay.cut();
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_ne!(body["checks"]["rabbitmq"], "ok", "{body}");
    relay.restore();
    delete_topology(&app.state.settings).await;
}

/// (attempts, last error) of an outbox row.
async fn attempts(app: &TestApp, id: Uuid) -> (i32, Option<String>) {
    sqlx::query_as("SELECT attempts, last_error FROM outbox WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_unroutable_message_stays_unpublished_until_a_queue_is_bound_then_goes_out_once() {
    let app = TestApp::spawn_with(
        |settings| {
            use_rabbitmq(settings, &amqp_server());
            quick_retries(settings);
        },
        |_| Vec::new(),
    )
    .await;
    let before = counter(&app.metrics().await, "outbox_returned_total");
    // The email queue takes `order.*` only: nothing is bound for this topic.
    let topic = "audit.recorded";
    let id = app
        .enqueue(topic, &json!({"note": "nobody listens yet"}))
        .await;

    // The broker returns it, and the relay keeps it and tries again.
    eventually(DEADLINE, "the row to be returned twice", || async {
        (attempts(&app, id).await.0 >= 2).then_some(())
    })
    .await;
    assert!(
        !published_at_is_set(&app, id).await,
        "an unroutable message was marked published"
    );
    let (_, error) = attempts(&app, id).await;
    let error = error.expect("the return is recorded on the row");
    assert!(error.contains("returned by the broker"), "{error}");
    assert!(error.contains("NO_ROUTE"), "{error}");
    let returned = counter(&app.metrics().await, "outbox_returned_total");
    assert!(returned >= before + 2.0, "returns not counted: {returned}");

    // Once a queue is bound for the topic, the row goes out, once.
    let (connection, channel) = broker_channel().await;
    let queue = format!("{}.audit", app.state.settings.amqp.exchange);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            app.state.settings.amqp.exchange.as_str().into(),
            topic.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    eventually(DEADLINE, "the row to be published", || async {
        published_at_is_set(&app, id).await.then_some(())
    })
    .await;
    let delivered = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the message is in the bound queue");
    assert_eq!(
        delivered
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some(id.to_string().as_str())
    );
    let again = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(again.is_none(), "the message went out twice");
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    delete_topology(&app.state.settings).await;
}

#[tokio::test]
async fn the_default_backends_write_one_eml_file_per_email() {
    let dir = tempfile::tempdir().unwrap();
    let file_dir = dir.path().to_path_buf();
    let app = TestApp::spawn_with(
        move |settings| {
            // The defaults: jobs in process, emails as files.
            assert_eq!(settings.jobs.backend, shop::config::JobsBackend::Memory);
            assert_eq!(settings.email.backend, shop::config::EmailBackend::File);
            settings.email.file_dir = file_dir;
            quick_retries(settings);
        },
        |_| Vec::new(),
    )
    .await;
    let to = customer("file");
    let paid = order_email(OrderEmailKind::Paid, &to);
    let cancelled = OrderEmail {
        kind: OrderEmailKind::Cancelled,
        ..paid.clone()
    };
    let paid_id = app.enqueue(paid.topic(), &paid).await;
    let cancelled_id = app.enqueue(cancelled.topic(), &cancelled).await;
    // The same email enqueued twice (two rows, two message ids): still one email.
    app.enqueue(paid.topic(), &paid).await;

    app.wait_for_outbox_drained().await;
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".eml"))
        .collect();
    files.sort();
    let mut expected = vec![format!("{paid_id}.eml"), format!("{cancelled_id}.eml")];
    expected.sort();
    assert_eq!(files, expected);
    let paid_eml = std::fs::read_to_string(dir.path().join(format!("{paid_id}.eml"))).unwrap();
    assert!(
        paid_eml.contains("To: ") && paid_eml.contains(&to),
        "{paid_eml}"
    );
    assert!(paid_eml.contains(&paid.order_number));
    assert_eq!(deliveries(&app, paid.order_id).await, 2, "paid + cancelled");
}

#[tokio::test]
async fn paying_an_order_sends_one_confirmation_and_cancelling_one_notice() {
    let sink = MailSink::from_env();
    let app = spawn_with_broker(&sink, &amqp_server()).await;
    let admin = app.login_as_admin().await;
    let product = app
        .created(&admin.access_token, "/api/v1/products",
            &json!({"name": "Teapot", "sku": "TEAPOT", "price": 2450, "stock": 5, "status": "active"}))
        .await;
    let variant = product["variants"][0]["id"].as_str().unwrap();
    let customer = app.login_as_customer().await;
    let address = json!({"shipping_address": {"name": "Casey", "line1": "1 Tea Lane", "city": "Leeds",
        "postal_code": "LS1 1AA", "country": "GB"}});
    let mut orders = Vec::new();
    for _ in 0..2 {
        app.post_json_as(
            &customer.access_token,
            "/api/v1/cart/items",
            &json!({"variant_id": variant, "quantity": 2}),
        )
        .await;
        let order: serde_json::Value = app
            .post_json_as(&customer.access_token, "/api/v1/orders", &address)
            .await
            .json()
            .await
            .unwrap();
        orders.push(order);
    }
    let (paid, cancelled) = (&orders[0], &orders[1]);
    let paid_id = paid["id"].as_str().unwrap();
    app.post_json_as(
        &customer.access_token,
        &format!("/api/v1/orders/{paid_id}/pay"),
        &json!({"payment_method": "pm_card_visa"}),
    )
    .await;
    let cancelled_id = cancelled["id"].as_str().unwrap();
    let response = app
        .post_json_as(
            &customer.access_token,
            &format!("/api/v1/orders/{cancelled_id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), 200);

    // The verification email of the registration, the confirmation and the notice.
    let received = sink.wait_for(&customer.email, 3).await;
    let about = |order: &serde_json::Value| {
        let number = order["number"].as_str().unwrap().to_owned();
        received
            .iter()
            .filter(|m| m["subject"].as_str().unwrap().contains(&number))
            .cloned()
            .collect::<Vec<_>>()
    };
    let confirmation = about(paid);
    assert_eq!(confirmation.len(), 1, "exactly one confirmation");
    let text = confirmation[0]["text"].as_str().unwrap();
    assert!(text.contains("$49.00"), "the total is in the email: {text}");
    assert!(text.contains("Teapot"));
    assert_eq!(confirmation[0]["to"], json!([customer.email]));
    assert_eq!(about(cancelled).len(), 1, "one cancellation notice");
    // Nothing more arrives for these orders (each email once).
    let paid_uuid: Uuid = paid_id.parse().unwrap();
    // The delivery is recorded once the send has returned: the email can reach the sink first.
    eventually(DEADLINE, "the delivery to be recorded", || async {
        (deliveries(&app, paid_uuid).await >= 1).then_some(())
    })
    .await;
    assert_eq!(deliveries(&app, paid_uuid).await, 1);
    assert_eq!(sink.messages_to(&customer.email).await.len(), 3);
    delete_topology(&app.state.settings).await;
}
