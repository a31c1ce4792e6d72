//! Operations: every metric the Grafana dashboard and the Prometheus alert rules read is one the
//! app exports, so renaming a metric without its panel or alert breaks the build; and the gauges
//! added for the alerts (outbox lag, pending orders, readiness) say what they claim.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, metric_value};
use crate::orders::{DEADLINE, checkout, fill_cart, variant, wait_status};

const DASHBOARD: &str = "deploy/grafana/dashboards/shop.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";

/// Series Prometheus makes itself for every target, which no app exports.
const SCRAPE_SERIES: &[&str] = &["up"];

/// PromQL aggregation operators: names followed by `by (...)` or `(`, never metrics.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords between operands: binary set operators, modifiers and literals.
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end",
];

/// Keywords whose parenthesised list names labels, not metrics.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: identifiers outside label matchers (`{...}`),
/// ranges (`[...]`), strings and label lists, that are not functions (followed by `(`),
/// aggregations or keywords. Grafana variables (`$__rate_interval`) are skipped.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_group(&chars, i, '{', '}'),
            '[' => i = skip_group(&chars, i, '[', ']'),
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_group(&chars, i, '{', '}');
                } else {
                    while i < chars.len() && ident_char(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // A number or a duration (`1e3`, `0.99`, `5m`): never a name.
                while i < chars.len() && (ident_char(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
            }
            c if ident_start(c) => {
                let start = i;
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let followed_by_paren = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if followed_by_paren {
                        i = skip_group(&chars, next, '(', ')');
                    }
                } else if followed_by_paren
                    || AGGREGATIONS.contains(&word.as_str())
                    || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                {
                    // A function, an aggregation or a keyword.
                } else {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The index just past the string opening at `start`.
fn skip_string(chars: &[char], start: usize) -> usize {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The index just past the group opening at `start`, strings inside included.
fn skip_group(chars: &[char], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    let mut i = start;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = skip_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// The `kind="..."` actor kinds an expression selects.
fn kinds_selected(expr: &str) -> BTreeSet<String> {
    expr.match_indices("kind=\"")
        .filter_map(|(at, needle)| {
            let rest = &expr[at + needle.len()..];
            rest.find('"').map(|end| rest[..end].to_owned())
        })
        .collect()
}

fn repo_file(path: &str) -> String {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Every PromQL expression of the dashboard's panels (rows included, should one be collapsed).
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&repo_file(DASHBOARD)).expect("dashboard JSON");
    fn collect(panels: &Value, into: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("a target has an expr");
                into.push(expr.to_owned());
            }
            collect(&panel["panels"], into);
        }
    }
    let mut queries = Vec::new();
    collect(&dashboard["panels"], &mut queries);
    queries
}

/// Every alert rule's expression.
fn alert_queries() -> Vec<String> {
    let rules: serde_yaml::Value = serde_yaml::from_str(&repo_file(ALERTS)).expect("alerts YAML");
    rules["groups"]
        .as_sequence()
        .expect("alert groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").iter())
        .map(|rule| {
            rule["expr"]
                .as_str()
                .expect("a rule has an expr")
                .to_owned()
        })
        .collect()
}

/// The metric name of every sample line of a Prometheus text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_tokenizer_finds_metrics_and_nothing_else() {
    let expr = r#"histogram_quantile(0.99, sum by (route, le) (rate(http_request_duration_seconds_bucket{status=~"5..", route!="/x"}[$__rate_interval])))
        / on (instance) group_left (kind) max without (shard) (inventory_reserved_units offset 5m)
        > bool 1e3 and sum(actor_alive{kind="order_saga"}) > sum by (instance) (orders_pending) + 5"#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from([
            "actor_alive".to_owned(),
            "http_request_duration_seconds_bucket".to_owned(),
            "inventory_reserved_units".to_owned(),
            "orders_pending".to_owned(),
        ])
    );
    assert_eq!(
        kinds_selected(r#"actor_alive{kind="order_saga"} + actor_alive{kind="cart"}"#),
        BTreeSet::from(["cart".to_owned(), "order_saga".to_owned()])
    );
}

#[test]
fn every_alert_has_a_summary_and_a_runbook_section() {
    let rules: serde_yaml::Value = serde_yaml::from_str(&repo_file(ALERTS)).unwrap();
    let operations = repo_file("docs/operations.md").to_lowercase();
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            alerts += 1;
            let summary = rule["annotations"]["summary"].as_str().unwrap_or_default();
            assert!(summary.len() > 20, "{name} has no summary");
            let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
            let anchor = name.to_lowercase();
            assert_eq!(runbook, format!("docs/operations.md#{anchor}"), "{name}");
            assert!(
                operations.contains(&format!("### {anchor}")),
                "docs/operations.md has no runbook section for {name}"
            );
        }
    }
    assert!(alerts >= 8, "{alerts} alerts");
    // Each panel is described too, by its title.
    let dashboard: Value = serde_json::from_str(&repo_file(DASHBOARD)).unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().to_lowercase();
        assert!(
            operations.contains(&title),
            "docs/operations.md does not describe the panel {title:?}"
        );
    }
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_read_is_exported() {
    let app = TestApp::spawn().await;
    // A checkout paid through the simulated provider: orders, payments, stock and the outbox
    // all move, so their metrics are recorded.
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "OPS-MUG", 1250, 10).await;
    let customer = app.login_as_customer().await;
    fill_cart(&app, &customer, &mug, 2).await;
    let created = checkout(&app, &customer).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().unwrap();
    let paid = app
        .post_json_as(
            &customer.access_token,
            &format!("/api/v1/orders/{id}/pay"),
            &json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(paid.status(), 200, "{}", paid.text().await.unwrap());
    wait_status(&app, &customer, id, "paid").await;
    // A readiness probe records app_ready, as the orchestrator's probes do.
    assert_eq!(app.get("/health/ready").await.status(), 200);

    let queries: Vec<String> = dashboard_queries()
        .into_iter()
        .chain(alert_queries())
        .collect();
    let wanted: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| metric_names(q))
        .filter(|name| !SCRAPE_SERIES.contains(&name.as_str()))
        .collect();
    // A tokenizer that found nothing would make this test pass vacuously.
    for name in [
        "actor_messages_total",
        "actor_message_duration_seconds_bucket",
        "http_requests_total",
        "inventory_reconciliation_mismatches",
        "outbox_oldest_unpublished_seconds",
        "orders_pending",
        "coupon_uses_held",
    ] {
        assert!(wanted.contains(name), "{name} not found in {wanted:?}");
    }
    let kinds: BTreeSet<String> = queries.iter().flat_map(|q| kinds_selected(q)).collect();
    assert!(kinds.contains("coupon_limiter_shard"), "{kinds:?}");

    // Periodic gauges (reconciliation, refunds, sweeps) appear within their first interval.
    let started = tokio::time::Instant::now();
    loop {
        let text = app.metrics().await;
        let exported = exported_names(&text);
        let missing: Vec<&String> = wanted.difference(&exported).collect();
        let missing_kinds: Vec<&String> = kinds
            .iter()
            .filter(|kind| !text.contains(&format!("kind=\"{kind}\"")))
            .collect();
        if missing.is_empty() && missing_kinds.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "read by the dashboard or the alerts but not exported: {missing:?}; \
             actor kinds selected but never seen: {missing_kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_outbox_lag_gauge_shows_the_oldest_unpublished_row() {
    let app = TestApp::spawn().await;
    assert_eq!(
        shop::messaging::outbox::oldest_unpublished_age(&app.db)
            .await
            .unwrap(),
        0.0,
        "nothing waits in a fresh outbox"
    );
    // A row committed an hour ago and postponed (a failed attempt): still owed to its consumer.
    let stale = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO outbox (id, topic, payload, created_at, available_at, attempts)
         VALUES ($1, 'order.paid', '{}', now() - interval '1 hour', now() + interval '1 day', 1)",
    )
    .bind(stale)
    .execute(&app.db)
    .await
    .unwrap();
    let age = shop::messaging::outbox::oldest_unpublished_age(&app.db)
        .await
        .unwrap();
    assert!((3600.0..3660.0).contains(&age), "{age}");
    // The relay sets the gauge on its next pass. The recorder is shared by the apps of tests
    // running at the same time, whose relays set it too: wait for this relay's value.
    eventually(DEADLINE, "the relay to report the stale row", || async {
        metric_value(&app.metrics().await, "outbox_oldest_unpublished_seconds")
            .filter(|age| *age >= 3600.0)
    })
    .await;

    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = $1")
        .bind(stale)
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(
        shop::messaging::outbox::oldest_unpublished_age(&app.db)
            .await
            .unwrap(),
        0.0
    );
}

#[tokio::test]
async fn orders_pending_counts_the_orders_awaiting_payment() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let mug = variant(&app, &admin, "OPS-PENDING", 900, 5).await;
    let customer = app.login_as_customer().await;
    for _ in 0..3 {
        fill_cart(&app, &customer, &mug, 1).await;
        assert_eq!(checkout(&app, &customer).await.status(), 201);
    }
    // The supervisor's sweep (every second in tests) sets it; other tests' apps share the
    // recorder, so this app's figure is waited for rather than read once.
    eventually(DEADLINE, "orders_pending to count 3 orders", || async {
        metric_value(&app.metrics().await, "orders_pending").filter(|n| *n >= 3.0)
    })
    .await;
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(
        metric_value(&app.metrics().await, "app_ready"),
        Some(1.0),
        "a passing probe records app_ready 1"
    );
}

/// An alert on a gauge that is absent until its first measurement cannot tell "no data" from 0:
/// a fresh process, scraped right after it is ready, exports every series the alert rules read
/// (the per-shard ones for every shard, every actor kind they select).
#[tokio::test]
async fn a_fresh_process_exports_every_alerting_series_as_soon_as_it_is_ready() {
    let database = crate::helpers::TestDatabase::new();
    let (mut child, address) = crate::lifecycle::spawn_binary(&database, &[]).await;
    let client = reqwest::Client::new();
    eventually(DEADLINE, "the process to be ready", || {
        let (client, url) = (client.clone(), format!("{address}/health/ready"));
        async move {
            let status = client.get(url).send().await.ok()?.status();
            (status == 200).then_some(())
        }
    })
    .await;
    let text = client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    child.kill().expect("the child is killed");
    child.wait().expect("the child exits");

    let alerts = alert_queries();
    let wanted: BTreeSet<String> = alerts
        .iter()
        .flat_map(|q| metric_names(q))
        .filter(|name| !SCRAPE_SERIES.contains(&name.as_str()))
        .collect();
    assert!(wanted.len() >= 7, "{wanted:?}");
    let exported = exported_names(&text);
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "alerting series missing at start: {missing:?}"
    );
    for kind in alerts.iter().flat_map(|q| kinds_selected(q)) {
        assert!(
            text.contains(&format!("kind=\"{kind}\"")),
            "no series of actor kind {kind} at start"
        );
    }
    // The test profile runs 4 inventory shards: each one's mismatch gauge is there, at 0.
    for shard in 0..4 {
        let series = format!("inventory_reconciliation_mismatches{{shard=\"{shard}\"}}");
        assert_eq!(metric_value(&text, &series), Some(0.0), "{series}");
    }
    assert_eq!(metric_value(&text, "refunds_owed"), Some(0.0));
}
