//! Account recovery and email verification, through the real SMTP sink: the token a user gets is
//! the one in the email they receive, read back from the sink.

use serde_json::{Value, json};
use shop::config::{EmailBackend, Settings};
use shop::messaging::{AccountEmail, AccountEmailKind};
use uuid::Uuid;

use crate::helpers::{
    CUSTOMER_PASSWORD, MailSink, TestApp, assert_problem, metric_value, quick_retries,
    use_rabbitmq_and_smtp,
};

const NEW_PASSWORD: &str = "a-brand-new-password";

/// The app with emails going to the SMTP sink (the outbox handed over in process).
async fn spawn(sink: &MailSink, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let smtp_url = sink.smtp_url.clone();
    TestApp::spawn_with(
        move |settings| {
            settings.email.backend = EmailBackend::Smtp;
            settings.smtp.url = smtp_url.into();
            settings.smtp.timeout_secs = 5;
            quick_retries(settings);
            configure(settings);
        },
        |_| Vec::new(),
    )
    .await
}

fn address(tag: &str) -> String {
    format!("{tag}-{}@example.com", Uuid::new_v4().simple())
}

/// Registers `email` and returns its id.
async fn register(app: &TestApp, email: &str) -> Uuid {
    let response = app
        .register(email, CUSTOMER_PASSWORD, "Robin Recover")
        .await;
    assert_eq!(response.status(), 201, "register");
    response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// The token in an email: what follows `token=` in its link, up to the end of the line.
fn token_in(message: &Value) -> String {
    let text = message["text"].as_str().expect("a text part");
    let start = text.find("token=").expect("a link with a token") + "token=".len();
    text[start..]
        .split_whitespace()
        .next()
        .expect("the token")
        .to_owned()
}

/// The messages to `to` whose subject is `subject`, after waiting for `count` messages in all.
async fn emails(sink: &MailSink, to: &str, count: usize, subject: &str) -> Vec<Value> {
    sink.wait_for(to, count)
        .await
        .into_iter()
        .filter(|message| message["subject"] == subject)
        .collect()
}

async fn ask_for_reset(app: &TestApp, email: &str) -> reqwest::Response {
    app.post_json("/api/v1/auth/password-reset", &json!({ "email": email }))
        .await
}

async fn confirm(app: &TestApp, token: &str, password: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/password-reset/confirm",
        &json!({ "token": token, "password": password }),
    )
    .await
}

async fn verify(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json("/api/v1/auth/verify-email", &json!({ "token": token }))
        .await
}

async fn refresh(app: &TestApp, refresh_token: &str) -> u16 {
    app.post_json(
        "/api/v1/auth/refresh",
        &json!({ "refresh_token": refresh_token }),
    )
    .await
    .status()
    .as_u16()
}

#[tokio::test]
async fn a_password_reset_email_carries_a_single_use_token_that_sets_the_password_and_ends_every_session()
 {
    let sink = MailSink::from_env();
    let app = spawn(&sink, |_| {}).await;
    let email = address("reset");
    let user = register(&app, &email).await;
    let sessions = [
        app.login(&email, CUSTOMER_PASSWORD).await,
        app.login(&email, CUSTOMER_PASSWORD).await,
    ];
    let mut refresh_tokens = Vec::new();
    for session in sessions {
        assert_eq!(session.status(), 200);
        let pair: Value = session.json().await.unwrap();
        refresh_tokens.push(pair["refresh_token"].as_str().unwrap().to_owned());
    }

    let asked = ask_for_reset(&app, &email.to_uppercase()).await;
    assert_eq!(asked.status(), 202);
    // Registration's verification email, then the reset.
    let resets = emails(&sink, &email, 2, "Reset your password").await;
    assert_eq!(resets.len(), 1, "exactly one reset email");
    let token = token_in(&resets[0]);
    assert!(
        resets[0]["text"].as_str().unwrap().contains(&format!(
            "http://localhost:3000/reset-password?token={token}"
        )),
        "the link goes to the storefront's page"
    );
    // Only the email holds the value: the database has its hash, and no outbox row has it.
    let stored: Vec<u8> = sqlx::query_scalar(
        "SELECT token_hash FROM account_tokens WHERE user_id = $1 AND purpose = 'password_reset'",
    )
    .bind(user)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(stored, shop::opaque_token::hash_opaque_token(&token));
    let leaked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE payload::text LIKE '%' || $1 || '%'")
            .bind(&token)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(leaked, 0, "the token is in an outbox row");

    assert_eq!(confirm(&app, &token, NEW_PASSWORD).await.status(), 204);

    assert_eq!(app.login(&email, CUSTOMER_PASSWORD).await.status(), 401);
    assert_eq!(app.login(&email, NEW_PASSWORD).await.status(), 200);
    for refresh_token in &refresh_tokens {
        assert_eq!(
            refresh(&app, refresh_token).await,
            401,
            "a session lives on"
        );
    }
    // Spent: the same token again is the one 400, and changes nothing.
    let again = assert_problem(confirm(&app, &token, "yet-another-password").await, 400).await;
    assert_eq!(again["detail"], "The token is invalid, spent or expired.");
    assert_eq!(app.login(&email, NEW_PASSWORD).await.status(), 200);
    // The reset came through the email, so the address is verified.
    let session = app.login(&email, NEW_PASSWORD).await;
    let access: Value = session.json().await.unwrap();
    let me: Value = app
        .get_as(access["access_token"].as_str().unwrap(), "/api/v1/users/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email_verified"], true);
}

#[tokio::test]
async fn a_reset_for_an_email_without_an_account_is_answered_the_same_and_sends_nothing() {
    let sink = MailSink::from_env();
    let app = spawn(&sink, |_| {}).await;
    let known = address("known");
    register(&app, &known).await;
    let unknown = address("unknown");

    let for_known = ask_for_reset(&app, &known).await;
    let for_unknown = ask_for_reset(&app, &unknown).await;
    assert_eq!(for_known.status(), 202);
    assert_eq!(for_unknown.status(), 202);
    let (known_body, unknown_body) = (
        for_known.text().await.unwrap(),
        for_unknown.text().await.unwrap(),
    );
    assert_eq!(known_body, unknown_body, "the answers differ");

    assert_eq!(
        emails(&sink, &known, 2, "Reset your password").await.len(),
        1
    );
    app.wait_for_outbox_drained().await;
    assert!(sink.messages_to(&unknown).await.is_empty());
    let tokens: i64 =
        sqlx::query_scalar("SELECT count(*) FROM account_tokens WHERE purpose = 'password_reset'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(tokens, 1, "one reset token, for the account that exists");
    // Not an address at all is a 422, which says nothing about accounts.
    assert_problem(ask_for_reset(&app, "not-an-email").await, 422).await;
}

#[tokio::test]
async fn an_expired_a_foreign_and_an_unknown_token_get_one_400_and_change_nothing() {
    let sink = MailSink::from_env();
    let app = spawn(&sink, |_| {}).await;
    let email = address("expired");
    let user = register(&app, &email).await;
    assert_eq!(ask_for_reset(&app, &email).await.status(), 202);
    let reset = token_in(&emails(&sink, &email, 2, "Reset your password").await[0]);
    let verification = token_in(&emails(&sink, &email, 2, "Confirm your email address").await[0]);
    sqlx::query(
        "UPDATE account_tokens SET expires_at = now() - interval '1 second' WHERE user_id = $1 AND purpose = 'password_reset'",
    )
    .bind(user)
    .execute(&app.db)
    .await
    .unwrap();

    let expired = assert_problem(confirm(&app, &reset, NEW_PASSWORD).await, 400).await;
    // A verification token does not reset a password, nor a reset token verify an email.
    let foreign = assert_problem(confirm(&app, &verification, NEW_PASSWORD).await, 400).await;
    let unknown = assert_problem(confirm(&app, "no-such-token", NEW_PASSWORD).await, 400).await;
    assert_eq!(expired, unknown);
    assert_eq!(foreign, unknown);
    assert_problem(verify(&app, &reset).await, 400).await;
    // A weak password is refused before the token is looked at.
    assert_problem(confirm(&app, &reset, "short").await, 422).await;

    assert_eq!(app.login(&email, CUSTOMER_PASSWORD).await.status(), 200);
    let spent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM account_tokens WHERE spent_at IS NOT NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(spent, 0);
}

#[tokio::test]
async fn registration_sends_a_verification_email_whose_token_verifies_the_address_once() {
    let sink = MailSink::from_env();
    let app = spawn(&sink, |_| {}).await;
    let session = app.login_as_customer().await;
    let me = async || -> Value {
        let me: Value = app
            .get_as(&session.access_token, "/api/v1/users/me")
            .await
            .json()
            .await
            .unwrap();
        me["email_verified"].clone()
    };
    assert_eq!(me().await, false);

    let messages = emails(&sink, &session.email, 1, "Confirm your email address").await;
    assert_eq!(messages.len(), 1);
    let token = token_in(&messages[0]);
    assert!(
        messages[0]["html"]
            .as_str()
            .unwrap()
            .contains(&format!("/verify-email?token={token}"))
    );

    assert_eq!(verify(&app, &token).await.status(), 204);
    assert_eq!(me().await, true);
    assert_problem(verify(&app, &token).await, 400).await;
    assert_eq!(me().await, true);
}

#[tokio::test]
async fn reset_requests_are_limited_per_email_whether_or_not_it_has_an_account_and_bad_tokens_per_address()
 {
    let sink = MailSink::from_env();
    let app = spawn(&sink, |settings| {
        settings.rate_limit.recovery_requests_per_email = 2;
        settings.rate_limit.recovery_requests_per_ip = 5;
        settings.rate_limit.bad_recovery_tokens_per_ip = 3;
    })
    .await;
    let counter = |metrics: &str, series: &str| metric_value(metrics, series).unwrap_or(0.0);
    let (ip_series, email_series) = (
        r#"rate_limited_total{scope="recovery_ip"}"#,
        r#"rate_limited_total{scope="recovery_email"}"#,
    );
    let before = app.metrics().await;
    let known = address("limited");
    register(&app, &known).await;
    let unknown = address("nobody");
    for email in [&known, &unknown] {
        for _ in 0..2 {
            assert_eq!(ask_for_reset(&app, email).await.status(), 202);
        }
        let limited = ask_for_reset(&app, email).await;
        let retry_after: u64 = limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (1..=3600).contains(&retry_after),
            "Retry-After {retry_after}"
        );
        assert_problem(limited, 429).await;
    }
    // Five requests from this address so far, two of them refused: one more is allowed.
    assert_eq!(ask_for_reset(&app, &address("other")).await.status(), 202);
    assert_problem(ask_for_reset(&app, &address("another")).await, 429).await;
    // The refused requests sent nothing: two resets and the verification email.
    assert_eq!(
        emails(&sink, &known, 3, "Reset your password").await.len(),
        2
    );

    for _ in 0..3 {
        assert_problem(verify(&app, "guess").await, 400).await;
    }
    assert_problem(verify(&app, "guess").await, 429).await;
    assert_problem(confirm(&app, "guess", NEW_PASSWORD).await, 429).await;
    // Only this test reaches these limits, so the counters move by exactly its refusals.
    let after = app.metrics().await;
    assert_eq!(
        counter(&after, ip_series) - counter(&before, ip_series),
        3.0
    );
    assert_eq!(
        counter(&after, email_series) - counter(&before, email_series),
        2.0
    );
}

#[tokio::test]
async fn concurrent_reset_requests_for_one_email_get_exactly_its_limit_through() {
    let sink = MailSink::from_env();
    let app = spawn(&sink, |settings| {
        settings.rate_limit.recovery_requests_per_email = 3;
        settings.rate_limit.recovery_requests_per_ip = 1_000;
    })
    .await;
    let email = address("burst");
    register(&app, &email).await;
    // In different cases: the limit is per address, whatever its spelling.
    let spellings = [email.clone(), email.to_uppercase()];
    let answers = futures::future::join_all((0..24).map(|i| {
        let (app, email) = (&app, &spellings[i % 2]);
        async move { ask_for_reset(app, email).await.status().as_u16() }
    }))
    .await;
    let accepted = answers.iter().filter(|&&status| status == 202).count();
    let limited = answers.iter().filter(|&&status| status == 429).count();
    assert_eq!((accepted, limited), (3, 21), "answers {answers:?}");
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recovery_attempts WHERE kind = 'reset_requested' AND email = $1::citext",
    )
    .bind(&email)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(recorded, 3, "one attempt recorded per accepted request");
}

#[tokio::test]
async fn an_account_email_delivered_twice_is_sent_once_and_none_is_sent_for_an_expired_token_or_an_unknown_email()
 {
    let sink = MailSink::from_env();
    let app = spawn(&sink, |_| {}).await;
    let counter = |metrics: &str, series: &str| metric_value(metrics, series).unwrap_or(0.0);
    let moot = r#"account_emails_moot_total{kind="password_reset"}"#;
    let email = address("twice");
    let user = register(&app, &email).await;
    emails(&sink, &email, 1, "Confirm your email address").await;
    let token: Uuid = sqlx::query_scalar("SELECT id FROM account_tokens WHERE user_id = $1")
        .bind(user)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let before = app.metrics().await;
    // The same message again, as a redelivery would bring it.
    app.enqueue(
        AccountEmailKind::VerifyEmail.topic(),
        &AccountEmail { token_id: token },
    )
    .await;
    app.wait_for_outbox_drained().await;
    assert_eq!(sink.messages_to(&email).await.len(), 1);
    // Other tests count duplicates too: at least this one.
    assert!(
        counter(&app.metrics().await, "email_duplicates_total")
            >= counter(&before, "email_duplicates_total") + 1.0
    );

    // A verification token spent or expired before its email went out is not sent, nor is a
    // reset asked for an email without an account.
    let verify_moot = r#"account_emails_moot_total{kind="verify_email"}"#;
    let mut tx = app.db.begin().await.unwrap();
    let expired = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO account_tokens (id, user_id, purpose, expires_at) VALUES ($1, $2, 'verify_email', now())",
    )
    .bind(expired)
    .bind(user)
    .execute(&mut *tx)
    .await
    .unwrap();
    shop::messaging::enqueue(
        &mut tx,
        AccountEmailKind::VerifyEmail.topic(),
        &AccountEmail { token_id: expired },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let nobody = address("nobody");
    assert_eq!(ask_for_reset(&app, &nobody).await.status(), 202);
    app.wait_for_outbox_drained().await;
    assert_eq!(sink.messages_to(&email).await.len(), 1);
    assert!(sink.messages_to(&nobody).await.is_empty());
    let after = app.metrics().await;
    assert_eq!(
        counter(&after, verify_moot) - counter(&before, verify_moot),
        1.0
    );
    assert!(counter(&after, moot) - counter(&before, moot) >= 1.0);
}

#[tokio::test]
async fn account_emails_go_through_rabbitmq_like_order_emails() {
    let sink = MailSink::from_env();
    let amqp = crate::helpers::amqp_server();
    let (sink_for_app, amqp_for_app) = (sink.clone(), amqp.clone());
    let app = TestApp::spawn_with(
        move |settings| use_rabbitmq_and_smtp(settings, &amqp_for_app, &sink_for_app),
        |_| Vec::new(),
    )
    .await;
    let email = address("broker");
    register(&app, &email).await;
    assert_eq!(ask_for_reset(&app, &email).await.status(), 202);
    let token = token_in(&emails(&sink, &email, 2, "Reset your password").await[0]);
    assert_eq!(confirm(&app, &token, NEW_PASSWORD).await.status(), 204);
    assert_eq!(app.login(&email, NEW_PASSWORD).await.status(), 200);
    app.wait_for_outbox_drained().await;
    crate::emails::delete_topology(&app.settings).await;
}
