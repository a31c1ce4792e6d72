//! The coupon limiter against real PostgreSQL: a usage limit of 10 under 200 concurrent
//! checkouts gives exactly 10 uses, also when a limiter shard is killed mid-burst; per-customer
//! limits hold under one customer's concurrent attempts; release frees a use, commit keeps it, and
//! every call is idempotent per (coupon, order).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::join_all;
use shop_actors::coupons::{CouponError, CouponLimiter, Limits};
use uuid::Uuid;

use crate::helpers::{TestApp, eventually, metric_value};

fn limiter(app: &TestApp) -> &CouponLimiter {
    &app.state.actors.coupons
}

/// A 10 % order coupon with these limits.
async fn coupon(app: &TestApp, limits: Limits) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO coupons (id, code, kind, value, scope, usage_limit, per_customer_limit)
         VALUES ($1, $2, 'percent', 10, 'order', $3, $4)",
    )
    .bind(id)
    .bind(format!("C{}", &id.simple().to_string()[..12]))
    .bind(limits.usage_limit)
    .bind(limits.per_customer_limit)
    .execute(&app.db)
    .await
    .unwrap();
    id
}

/// `count` customers straight into `users` (they only need to exist: uses reference them).
async fn customers(app: &TestApp, count: i32) -> Vec<Uuid> {
    sqlx::query_scalar(
        "INSERT INTO users (id, email, name, password_hash)
         SELECT gen_random_uuid(), 'buyer-' || g || '-' || gen_random_uuid() || '@example.com',
                'Buyer', 'never-logs-in'
         FROM generate_series(1, $1) AS g
         RETURNING id",
    )
    .bind(count)
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// (held, committed, released) rows of a coupon, from PostgreSQL.
async fn rows(app: &TestApp, coupon: Uuid) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'held'),
                count(*) FILTER (WHERE status = 'committed'),
                count(*) FILTER (WHERE status = 'released')
         FROM coupon_redemptions WHERE coupon_id = $1",
    )
    .bind(coupon)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Reserves until the limiter decides: an actor or storage error (a killed shard) leaves the
/// outcome open, and the same order asks again, which is idempotent. `answered` runs once the
/// first answer, whatever it is, is in. Also answers how many times it asked again.
async fn reserve_until_decided(
    limiter: CouponLimiter,
    coupon: Uuid,
    order: Uuid,
    user: Uuid,
    limits: Limits,
    answered: impl FnOnce(),
) -> (Result<(), CouponError>, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut answered = Some(answered);
    let mut retries = 0;
    loop {
        let answer = limiter.reserve(coupon, order, user, limits).await;
        if let Some(answered) = answered.take() {
            answered();
        }
        match answer {
            Err(CouponError::Actor(_) | CouponError::Storage(_))
                if tokio::time::Instant::now() < deadline =>
            {
                retries += 1;
                // Back off while the supervisor restarts the shard.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            decided => return (decided, retries),
        }
    }
}

const TEN: Limits = Limits {
    usage_limit: Some(10),
    per_customer_limit: None,
};

#[tokio::test]
async fn two_hundred_customers_racing_for_ten_uses_get_exactly_ten() {
    let app = TestApp::spawn().await;
    let coupon = coupon(&app, TEN).await;
    let users = customers(&app, 200).await;
    let attempts = users.iter().map(|user| {
        let (limiter, user) = (limiter(&app).clone(), *user);
        tokio::spawn(async move { limiter.reserve(coupon, Uuid::new_v4(), user, TEN).await })
    });
    let results: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let granted = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(CouponError::LimitReached)))
        .count();
    assert_eq!((granted, refused), (10, 190), "{results:?}");
    assert_eq!(rows(&app, coupon).await, (10, 0, 0));
    assert_eq!(limiter(&app).used(coupon).await.unwrap(), 10);
    let text = app.metrics().await;
    assert!(
        text.contains("actor_messages_total{kind=\"coupon_limiter_shard\"}"),
        "{text}"
    );
    let shard = limiter(&app).shard_of(coupon);
    assert_eq!(
        metric_value(&text, &format!("coupon_uses_held{{shard=\"{shard}\"}}")),
        Some(10.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_killed_mid_burst_still_grants_exactly_ten_and_rebuilds_its_count() {
    let app = TestApp::spawn().await;
    let coupon = coupon(&app, TEN).await;
    let users = customers(&app, 202).await;
    let (burst, later) = users.split_at(200);
    let limiter = limiter(&app);
    let shard = limiter.shard_of(coupon);
    // A few uses persisted before the burst: the restarted shard must know them.
    let mut orders = Vec::new();
    for user in &burst[..3] {
        let order = Uuid::new_v4();
        limiter.reserve(coupon, order, *user, TEN).await.unwrap();
        orders.push((order, *user));
    }
    // Mid-burst: the first answer any of the burst gets kills the shard, while the others are
    // still in its mailbox or its next batch.
    let before = limiter.shard_cell(shard).expect("running");
    let killed = Arc::new(AtomicBool::new(false));
    let attempts: Vec<_> = burst[3..]
        .iter()
        .map(|user| {
            let (limiter, user, order) = (limiter.clone(), *user, Uuid::new_v4());
            let (killed, cell) = (killed.clone(), before.clone());
            tokio::spawn(async move {
                let kill_once = move || {
                    if !killed.swap(true, Ordering::SeqCst) {
                        cell.kill();
                    }
                };
                let (answer, retries) =
                    reserve_until_decided(limiter, coupon, order, user, TEN, kill_once).await;
                (order, answer, retries)
            })
        })
        .collect();
    let results: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let retries: usize = results.iter().map(|(_, _, retries)| retries).sum();
    assert!(
        retries > 0,
        "the kill came after the whole burst was decided"
    );
    eventually(
        Duration::from_secs(5),
        "the shard to be restarted",
        || async {
            limiter
                .shard_cell(shard)
                .filter(|cell| cell.get_id() != before.get_id())
        },
    )
    .await;
    let granted: Vec<Uuid> = results
        .iter()
        .filter(|(_, r, _)| r.is_ok())
        .map(|(order, _, _)| *order)
        .collect();
    let refused = results
        .iter()
        .filter(|(_, r, _)| matches!(r, Err(CouponError::LimitReached)))
        .count();
    assert_eq!((granted.len(), refused), (7, 190), "{results:?}");
    assert_eq!(rows(&app, coupon).await, (10, 0, 0));
    assert_eq!(limiter.used(coupon).await.unwrap(), 10);
    // The rebuilt count is exact: one release frees one use, which one more customer takes.
    limiter.release(coupon, granted[0]).await.unwrap();
    assert_eq!(limiter.used(coupon).await.unwrap(), 9);
    limiter
        .reserve(coupon, Uuid::new_v4(), later[0], TEN)
        .await
        .unwrap();
    assert_eq!(
        limiter.reserve(coupon, Uuid::new_v4(), later[1], TEN).await,
        Err(CouponError::LimitReached)
    );
    assert_eq!(rows(&app, coupon).await, (10, 0, 1));
    let text = app.metrics().await;
    assert!(
        metric_value(&text, "actor_restarts_total{kind=\"coupon_limiter_shard\"}")
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

#[tokio::test]
async fn one_customer_racing_twenty_checkouts_gets_one_use() {
    let app = TestApp::spawn().await;
    let limits = Limits {
        usage_limit: Some(100),
        per_customer_limit: Some(1),
    };
    let coupon = coupon(&app, limits).await;
    let customer = app.login_as_customer().await.id;
    let attempts = (0..20).map(|_| {
        let limiter = limiter(&app).clone();
        tokio::spawn(async move {
            limiter
                .reserve(coupon, Uuid::new_v4(), customer, limits)
                .await
        })
    });
    let results: Vec<_> = join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let granted = results.iter().filter(|r| r.is_ok()).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(CouponError::CustomerLimitReached)))
        .count();
    assert_eq!((granted, refused), (1, 19), "{results:?}");
    assert_eq!(rows(&app, coupon).await, (1, 0, 0));
    // Another customer is not held back by the first one's limit.
    let other = app.login_as_customer().await.id;
    limiter(&app)
        .reserve(coupon, Uuid::new_v4(), other, limits)
        .await
        .unwrap();
    assert_eq!(limiter(&app).used(coupon).await.unwrap(), 2);
}

#[tokio::test]
async fn release_frees_a_use_commit_keeps_it_and_every_call_is_idempotent() {
    let app = TestApp::spawn().await;
    let one = Limits {
        usage_limit: Some(1),
        per_customer_limit: None,
    };
    let [first, second, third]: [Uuid; 3] = customers(&app, 3).await.try_into().unwrap();
    let limiter = limiter(&app);

    // Released: the use goes to someone else.
    let freed = coupon(&app, one).await;
    let order = Uuid::new_v4();
    limiter.reserve(freed, order, first, one).await.unwrap();
    assert_eq!(
        limiter.reserve(freed, Uuid::new_v4(), second, one).await,
        Err(CouponError::LimitReached)
    );
    limiter.release(freed, order).await.unwrap();
    limiter.release(freed, order).await.unwrap();
    assert_eq!(limiter.used(freed).await.unwrap(), 0);
    assert_eq!(
        limiter.commit(freed, order).await,
        Err(CouponError::NotHeld)
    );
    limiter
        .reserve(freed, Uuid::new_v4(), second, one)
        .await
        .unwrap();
    assert_eq!(rows(&app, freed).await, (1, 0, 1));

    // Committed: the use stays taken, a release does not free it.
    let kept = coupon(&app, one).await;
    let order = Uuid::new_v4();
    let twice = join_all([
        limiter.reserve(kept, order, first, one),
        limiter.reserve(kept, order, first, one),
    ])
    .await;
    assert_eq!(twice, vec![Ok(()), Ok(())]);
    limiter.reserve(kept, order, first, one).await.unwrap();
    assert_eq!(limiter.used(kept).await.unwrap(), 1);
    limiter.commit(kept, order).await.unwrap();
    limiter.commit(kept, order).await.unwrap();
    limiter.release(kept, order).await.unwrap();
    // Reserving again for a paid order does not take a second use either.
    limiter.reserve(kept, order, first, one).await.unwrap();
    assert_eq!(limiter.used(kept).await.unwrap(), 1);
    assert_eq!(rows(&app, kept).await, (0, 1, 0));
    assert_eq!(
        limiter.reserve(kept, Uuid::new_v4(), third, one).await,
        Err(CouponError::LimitReached)
    );
}

#[tokio::test]
async fn uses_survive_a_restart_of_the_app() {
    let app = TestApp::spawn().await;
    let three = Limits {
        usage_limit: Some(3),
        per_customer_limit: Some(2),
    };
    let coupon = coupon(&app, three).await;
    let [first, second]: [Uuid; 2] = customers(&app, 2).await.try_into().unwrap();
    let paid = Uuid::new_v4();
    limiter(&app)
        .reserve(coupon, paid, first, three)
        .await
        .unwrap();
    limiter(&app).commit(coupon, paid).await.unwrap();
    limiter(&app)
        .reserve(coupon, Uuid::new_v4(), first, three)
        .await
        .unwrap();
    let app = app.restart().await;
    // Rebuilt from PostgreSQL: 2 of 3 uses taken, both by `first`.
    assert_eq!(limiter(&app).used(coupon).await.unwrap(), 2);
    assert_eq!(
        limiter(&app)
            .reserve(coupon, Uuid::new_v4(), first, three)
            .await,
        Err(CouponError::CustomerLimitReached)
    );
    limiter(&app)
        .reserve(coupon, Uuid::new_v4(), second, three)
        .await
        .unwrap();
    assert_eq!(
        limiter(&app)
            .reserve(coupon, Uuid::new_v4(), second, three)
            .await,
        Err(CouponError::LimitReached)
    );
    assert_eq!(rows(&app, coupon).await, (2, 1, 0));
}
