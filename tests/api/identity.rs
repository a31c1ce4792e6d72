//! Identity: registration, login, rotating refresh tokens with reuse detection, guards, throttling.

use std::collections::BTreeSet;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{CUSTOMER_PASSWORD, TestApp, assert_problem};

#[tokio::test]
async fn register_login_and_read_my_account() {
    let app = TestApp::spawn().await;
    let response = app
        .register("Ada@Example.com", "correct horse battery", "Ada Lovelace")
        .await;
    assert_eq!(response.status(), 201);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "Ada@Example.com");
    assert_eq!(user["name"], "Ada Lovelace");
    assert_eq!(user["role"], "customer");
    assert!(user["created_at"].is_string());
    assert!(user.get("password_hash").is_none() && user.get("password").is_none());

    // Emails compare without regard to case.
    let response = app.login("ada@example.COM", "correct horse battery").await;
    assert_eq!(response.status(), 200);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);

    let me = app
        .get_as(tokens["access_token"].as_str().unwrap(), "/api/v1/users/me")
        .await;
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["email"], "Ada@Example.com");
}

#[tokio::test]
async fn the_same_email_in_another_case_is_a_conflict() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.register("bob@example.com", "password-1", "Bob")
            .await
            .status(),
        201
    );
    let response = app
        .register("BOB@EXAMPLE.COM", "password-2", "Bob Again")
        .await;
    assert_problem(response, 409).await;
}

#[tokio::test]
async fn invalid_fields_are_422_naming_each_field() {
    let app = TestApp::spawn().await;
    let body = assert_problem(app.register("not-an-email", "short", "").await, 422).await;
    let fields: BTreeSet<String> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        fields,
        BTreeSet::from(["email".into(), "password".into(), "name".into()])
    );

    let too_long = "x".repeat(1025);
    let body = assert_problem(
        app.register("long@example.com", &too_long, "Long").await,
        422,
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "password");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing was created");
}

#[tokio::test]
async fn a_customer_cannot_register_as_admin() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            &json!({"email": "eve@example.com", "password": "password-1", "name": "Eve", "role": "admin"}),
        )
        .await;
    let body = assert_problem(response, 422).await;
    assert_eq!(body["errors"][0]["field"], "role");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_401() {
    let app = TestApp::spawn().await;
    let customer = app.login_as_customer().await;
    let wrong_password = app.login(&customer.email, "not the password").await;
    let unknown_email = app.login("nobody@example.com", CUSTOMER_PASSWORD).await;
    let a = assert_problem(wrong_password, 401).await;
    let b = assert_problem(unknown_email, 401).await;
    assert_eq!(a, b);
}

async fn refresh(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json("/api/v1/auth/refresh", &json!({"refresh_token": token}))
        .await
}

#[tokio::test]
async fn refresh_rotates_and_a_replayed_token_revokes_the_whole_family() {
    let app = TestApp::spawn().await;
    let customer = app.login_as_customer().await;

    let response = refresh(&app, &customer.refresh_token).await;
    assert_eq!(response.status(), 200);
    let pair: Value = response.json().await.unwrap();
    let newer = pair["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(newer, customer.refresh_token);
    let access = pair["access_token"].as_str().unwrap();
    assert_eq!(app.get_as(access, "/api/v1/users/me").await.status(), 200);

    // The spent token comes back (stolen?): 401, and the newer token dies with it.
    assert_problem(refresh(&app, &customer.refresh_token).await, 401).await;
    assert_problem(refresh(&app, &newer).await, 401).await;

    // A fresh login starts a new family that works.
    let again = app.login(&customer.email, CUSTOMER_PASSWORD).await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        refresh(&app, again["refresh_token"].as_str().unwrap())
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_mint_at_most_one_pair() {
    let app = TestApp::spawn().await;
    let customer = app.login_as_customer().await;
    let attempts = (0..8).map(|_| refresh(&app, &customer.refresh_token));
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 1,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn logout_revokes_the_family() {
    let app = TestApp::spawn().await;
    let customer = app.login_as_customer().await;
    let response = app
        .post_json_as(
            &customer.access_token,
            "/api/v1/auth/logout",
            &json!({"refresh_token": customer.refresh_token}),
        )
        .await;
    assert_eq!(response.status(), 204);
    assert_problem(refresh(&app, &customer.refresh_token).await, 401).await;
    // Logout needs a token of its own.
    let anonymous = app
        .post_json("/api/v1/auth/logout", &json!({"refresh_token": "x"}))
        .await;
    assert_problem(anonymous, 401).await;
}

fn sign(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_401() {
    let app = TestApp::spawn().await;
    let customer = app.login_as_customer().await;
    let secret = app
        .state
        .settings
        .auth
        .jwt_secret
        .expose_secret()
        .as_bytes()
        .to_vec();
    let now = chrono::Utc::now().timestamp();
    let claims = |exp: i64, typ: &str| {
        json!({"sub": customer.id, "role": "customer", "iat": now - 10, "exp": exp,
               "iss": "shop", "aud": "shop-api", "jti": Uuid::new_v4(), "typ": typ})
    };
    // Control: a token we forge with the right key and claims is accepted, so the 401s below are
    // for the reason each one names.
    let good = sign(&claims(now + 300, "access"), &secret);
    assert_eq!(app.get_as(&good, "/api/v1/users/me").await.status(), 200);

    let expired = sign(&claims(now - 5, "access"), &secret);
    let other_key = sign(
        &claims(now + 300, "access"),
        b"another-key-another-key-another-key",
    );
    let wrong_typ = sign(&claims(now + 300, "refresh"), &secret);
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(now + 300, "access"))
    );
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut admin_claims = claims(now + 300, "access");
    admin_claims["role"] = json!("admin");
    parts[1] = b64(&admin_claims);
    let tampered = parts.join(".");
    let mut missing_aud = claims(now + 300, "access");
    missing_aud.as_object_mut().unwrap().remove("aud");
    let missing_aud = sign(&missing_aud, &secret);

    for (what, token) in [
        ("expired", expired),
        ("signed with another key", other_key),
        ("of the wrong typ", wrong_typ),
        ("with alg none", alg_none),
        ("with a changed payload", tampered),
        ("without aud", missing_aud),
        ("not a JWT at all", "garbage".to_owned()),
    ] {
        let response = app.get_as(&token, "/api/v1/users/me").await;
        assert_eq!(response.status(), 401, "a token {what}");
    }
    let no_scheme = app
        .client
        .get(app.url("/api/v1/users/me"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    assert_problem(no_scheme, 401).await;
    assert_problem(app.get("/api/v1/users/me").await, 401).await;
}

/// Writes that customers (or anyone) may make; every other write is admin-only. The Stripe
/// webhook is authenticated by its signature, not a token; orders check ownership themselves.
const CUSTOMER_WRITES: &[&str] = &[
    "/api/v1/auth/",
    "/api/v1/cart",
    "/api/v1/webhooks/",
    "/api/v1/orders",
];

/// Every admin operation in the OpenAPI document, with path parameters filled: everything under
/// `/api/v1/admin`, and every write not explicitly open to customers (deny by default: a new
/// route is covered without touching this test).
fn admin_operations(doc: &Value) -> Vec<(reqwest::Method, String)> {
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        let concrete: String = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    Uuid::new_v4().to_string()
                } else {
                    segment.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().unwrap().keys() {
            let is_admin_tree = path.starts_with("/api/v1/admin");
            let customer_write = CUSTOMER_WRITES.iter().any(|open| path.starts_with(open));
            if is_admin_tree || (method != "get" && !customer_write) {
                operations.push((method.to_uppercase().parse().unwrap(), concrete.clone()));
            }
        }
    }
    operations
}

#[tokio::test]
async fn every_admin_route_is_403_for_customers_and_401_for_anonymous() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .get("/api-docs/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let operations = admin_operations(&doc);
    assert!(operations.len() >= 10, "{operations:?}");
    let customer = app.login_as_customer().await;
    for (method, path) in operations {
        let request = || {
            app.client
                .request(method.clone(), app.url(&path))
                .json(&json!({}))
        };
        let as_customer = request()
            .bearer_auth(&customer.access_token)
            .send()
            .await
            .unwrap();
        assert_eq!(as_customer.status(), 403, "{method} {path} as a customer");
        let anonymous = request().send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{method} {path} without a token");
    }
}

#[tokio::test]
async fn admins_list_users_and_change_roles_which_apply_on_refresh() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let customer = app.login_as_customer().await;

    let list = app
        .get_as(&admin.access_token, "/api/v1/admin/users?per_page=1000")
        .await;
    assert_eq!(list.status(), 200);
    let list: Value = list.json().await.unwrap();
    assert_eq!(list["per_page"], 100);
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains("argon2"));

    let promoted = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/admin/users/{}", customer.id),
            &json!({"role": "admin"}),
        )
        .await;
    assert_eq!(promoted.status(), 200);
    assert_eq!(promoted.json::<Value>().await.unwrap()["role"], "admin");
    // The old access token still says customer; the next refresh carries the new role.
    let old = app
        .get_as(&customer.access_token, "/api/v1/admin/users")
        .await;
    assert_eq!(old.status(), 403);
    let pair: Value = refresh(&app, &customer.refresh_token)
        .await
        .json()
        .await
        .unwrap();
    let new_access = pair["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_as(new_access, "/api/v1/admin/users").await.status(),
        200
    );

    // A demotion applies to admin routes at once, even with an admin token in hand.
    let demoted = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/admin/users/{}", customer.id),
            &json!({"role": "customer"}),
        )
        .await;
    assert_eq!(demoted.status(), 200);
    assert_eq!(
        app.get_as(new_access, "/api/v1/admin/users").await.status(),
        403
    );

    // The last admin cannot be demoted; an unknown user is 404; a bad role is 422.
    let last = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/admin/users/{}", admin.id),
            &json!({"role": "customer"}),
        )
        .await;
    assert_problem(last, 409).await;
    let missing = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/admin/users/{}", Uuid::new_v4()),
            &json!({"role": "admin"}),
        )
        .await;
    assert_problem(missing, 404).await;
    let bad_role = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/admin/users/{}", customer.id),
            &json!({"role": "owner"}),
        )
        .await;
    assert!(bad_role.status().is_client_error());
}

#[tokio::test]
async fn twenty_rapid_failed_logins_are_throttled_with_retry_after() {
    let app = TestApp::spawn().await;
    let customer = app.login_as_customer().await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for attempt in 0..20 {
        // The count is per account, whatever the case of the email.
        let email = if attempt % 2 == 0 {
            customer.email.to_uppercase()
        } else {
            customer.email.clone()
        };
        let response = app.login(&email, "wrong password!").await;
        if response.status() == 429 {
            retry_after = response.headers().get("retry-after").cloned();
        }
        statuses.push(response.status().as_u16());
    }
    assert_eq!(&statuses[..10], &[401; 10], "{statuses:?}");
    assert_eq!(&statuses[10..], &[429; 10], "{statuses:?}");
    let seconds: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&seconds), "{seconds}");
    // While throttled, even the right password is refused: guessing gains nothing.
    let right = app.login(&customer.email, CUSTOMER_PASSWORD).await;
    assert_problem(right, 429).await;
    // Other accounts are unaffected.
    let other = app.login_as_customer().await;
    assert!(!other.access_token.is_empty());
}

#[tokio::test]
async fn the_per_ip_limit_answers_429_with_retry_after() {
    let app = TestApp::spawn_with(
        |s| {
            s.rate_limit.per_ip_per_second = 1;
            s.rate_limit.per_ip_burst = 3;
        },
        |_| Vec::new(),
    )
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(app.get("/health/live").await);
    }
    let last = statuses.pop().unwrap();
    assert!(last.headers().get("retry-after").is_some());
    assert_problem(last, 429).await;
    assert_eq!(statuses[0].status(), 200);
}

#[tokio::test]
async fn passwords_are_stored_as_argon2id_with_the_configured_params_and_rehashed_on_login() {
    let app = TestApp::spawn_with(|s| s.auth.argon2_iterations = 3, |_| Vec::new()).await;
    let customer = app.login_as_customer().await;
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(customer.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=3,p=1$"),
        "{stored}"
    );

    // A hash made with weaker (older) parameters is upgraded at the next successful login.
    let mut weaker = app.state.settings.auth.clone();
    weaker.argon2_iterations = 2;
    let old = shop::identity::password::Passwords::new(&weaker)
        .await
        .unwrap();
    let old_hash = old.hash(CUSTOMER_PASSWORD.to_owned().into()).await.unwrap();
    sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(customer.id)
        .bind(&old_hash)
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(
        app.login(&customer.email, CUSTOMER_PASSWORD).await.status(),
        200
    );
    let upgraded: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
        .bind(customer.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(upgraded.contains("m=19456,t=3,p=1"), "{upgraded}");
}

#[tokio::test]
async fn a_bootstrap_admin_is_created_on_first_start() {
    let app = TestApp::spawn_with(
        |s| {
            s.bootstrap.admin_email = Some("root@example.com".into());
            s.bootstrap.admin_password = Some("bootstrap-password".to_owned().into());
        },
        |_| Vec::new(),
    )
    .await;
    let tokens: Value = app
        .login("root@example.com", "bootstrap-password")
        .await
        .json()
        .await
        .unwrap();
    let token = tokens["access_token"].as_str().unwrap();
    assert_eq!(app.get_as(token, "/api/v1/admin/users").await.status(), 200);
}

/// Finding 12: a role outside the enum, read from the database, is an error (a logged 500), not
/// a customer (it used to read as one, silently).
#[tokio::test]
async fn an_unknown_role_in_the_database_is_an_error_not_a_customer() {
    use shop::identity::Role;
    let app = TestApp::spawn().await;
    for (sql, expected) in [
        ("SELECT 'admin'::text", Ok(Role::Admin)),
        ("SELECT 'superuser'::text", Err(())),
        ("SELECT 'Admin'::text", Err(())),
    ] {
        let decoded = sqlx::query_scalar::<_, Role>(sql).fetch_one(&app.db).await;
        assert_eq!(decoded.map_err(|_| ()), expected, "{sql}");
    }
    let customer = app.login_as_customer().await;
    sqlx::query("ALTER TABLE users DROP CONSTRAINT users_role_check")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE users SET role = 'superuser' WHERE id = $1")
        .bind(customer.id)
        .execute(&app.db)
        .await
        .unwrap();
    assert_problem(app.login(&customer.email, CUSTOMER_PASSWORD).await, 500).await;
}
