//! Inventory shards against real PostgreSQL: no oversell under a flash sale, all-or-nothing
//! multi-line reservations, expiry, commits, bundles, and a shard rebuilt after a crash.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use shop_actors::inventory::{Demand, Inventory, InventoryError, shard_index};
use uuid::Uuid;

use crate::helpers::{Session, TestApp, assert_problem, eventually, metric_value};
use crate::orders::DEADLINE;

async fn variant(app: &TestApp, admin: &Session, sku: &str, stock: i64) -> Uuid {
    let product = app
        .created(
            &admin.access_token,
            "/api/v1/products",
            &json!({"name": sku, "sku": sku, "price": 100, "stock": stock, "status": "active"}),
        )
        .await;
    product["variants"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn one(variant: Uuid, quantity: i32) -> Vec<Demand> {
    vec![Demand {
        variant_id: variant,
        quantity,
    }]
}

const TTL: Duration = Duration::from_secs(900);

/// (on hand, held, sold) of a variant, from PostgreSQL.
async fn ledger(app: &TestApp, variant: Uuid) -> (i32, i32, i32) {
    app.stock_ledger(variant).await
}

fn inventory(app: &TestApp) -> &Inventory {
    &app.state.actors.inventory
}

#[tokio::test]
async fn a_flash_sale_of_500_buyers_for_50_units_sells_exactly_50() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let hot = variant(&app, &admin, "HOT", 50).await;
    let attempts = (0..500).map(|_| {
        let inventory = inventory(&app).clone();
        async move { inventory.reserve(Uuid::new_v4(), &one(hot, 1), TTL).await }
    });
    let results = join_all(attempts.map(tokio::spawn)).await;
    let granted = results.iter().filter(|r| matches!(r, Ok(Ok(1)))).count();
    let refused = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(InventoryError::Short(_)))))
        .count();
    assert_eq!((granted, refused), (50, 450));
    let (on_hand, held, sold) = ledger(&app, hot).await;
    assert_eq!((on_hand, held, sold), (50, 50, 0));
    assert_eq!(inventory(&app).available(&[hot]).await.unwrap()[&hot], 0);
    assert_eq!(inventory(&app).reconcile().await.unwrap(), 0);
    let text = app.metrics().await;
    assert!(
        text.contains("actor_messages_total{kind=\"inventory_shard\"}"),
        "{text}"
    );
    assert!(text.contains("inventory_reserved_units{shard="));
    assert!(
        metric_value(&text, "inventory_reconciliation_mismatches{shard=\"0\"}")
            .is_some_and(|n| n == 0.0)
    );
}

#[tokio::test]
async fn multi_line_orders_are_all_or_nothing_and_refused_ones_hold_nothing() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let plenty_a = variant(&app, &admin, "A", 1000).await;
    let plenty_b = variant(&app, &admin, "B", 1000).await;
    let scarce = variant(&app, &admin, "SCARCE", 10).await;
    let owners: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
    let attempts = owners.iter().map(|owner| {
        let inventory = inventory(&app).clone();
        let owner = *owner;
        tokio::spawn(async move {
            let lines = vec![
                Demand {
                    variant_id: plenty_a,
                    quantity: 2,
                },
                Demand {
                    variant_id: scarce,
                    quantity: 1,
                },
                Demand {
                    variant_id: plenty_b,
                    quantity: 3,
                },
            ];
            (owner, inventory.reserve(owner, &lines, TTL).await)
        })
    });
    let results: Vec<(Uuid, Result<i32, InventoryError>)> = join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let granted: Vec<Uuid> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(granted.len(), 10);
    for (_, result) in results.iter().filter(|(_, r)| r.is_err()) {
        let Err(InventoryError::Short(short)) = result else {
            panic!("{result:?}")
        };
        assert!(
            short
                .iter()
                .any(|s| s.variant_id == scarce && s.available == 0)
        );
    }
    // Refused owners hold nothing anywhere.
    let held_by_refused: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(quantity), 0) FROM stock_reservations WHERE status = 'held' AND NOT (owner_id = ANY($1))",
    )
    .bind(&granted)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(held_by_refused, 0);
    assert_eq!(ledger(&app, plenty_a).await.1, 20);
    assert_eq!(ledger(&app, plenty_b).await.1, 30);
    assert_eq!(ledger(&app, scarce).await.1, 10);
    let available = inventory(&app)
        .available(&[plenty_a, plenty_b])
        .await
        .unwrap();
    assert_eq!((available[&plenty_a], available[&plenty_b]), (980, 970));
    assert_eq!(inventory(&app).reconcile().await.unwrap(), 0);
}

#[tokio::test]
async fn a_hold_expires_after_its_ttl_and_the_stock_returns() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let item = variant(&app, &admin, "EXP", 3).await;
    let owner = Uuid::new_v4();
    inventory(&app)
        .reserve(owner, &one(item, 3), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(inventory(&app).available(&[item]).await.unwrap()[&item], 0);
    eventually(Duration::from_secs(10), "the hold to expire", || async {
        (inventory(&app).available(&[item]).await.ok()?[&item] == 3).then_some(())
    })
    .await;
    let status: String =
        sqlx::query_scalar("SELECT status FROM stock_reservations WHERE owner_id = $1")
            .bind(owner)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(status, "released");
    // Committing an expired hold sells nothing.
    assert_eq!(inventory(&app).commit(owner).await.unwrap(), 0);
    assert_eq!(ledger(&app, item).await, (3, 0, 0));
}

#[tokio::test]
async fn commit_sells_release_returns_and_everything_is_conserved() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let item = variant(&app, &admin, "CONS", 20).await;
    let (buyer, canceller, idler) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    inventory(&app)
        .reserve(buyer, &one(item, 5), TTL)
        .await
        .unwrap();
    inventory(&app)
        .reserve(canceller, &one(item, 4), TTL)
        .await
        .unwrap();
    inventory(&app)
        .reserve(idler, &one(item, 3), TTL)
        .await
        .unwrap();
    assert_eq!(inventory(&app).commit(buyer).await.unwrap(), 5);
    assert_eq!(
        inventory(&app).commit(buyer).await.unwrap(),
        5,
        "a repeated commit sells nothing more and answers what the buyer has sold"
    );
    assert_eq!(inventory(&app).release(canceller).await.unwrap(), 4);
    assert_eq!(
        inventory(&app).release(canceller).await.unwrap(),
        0,
        "release is idempotent"
    );
    let (on_hand, held, sold) = ledger(&app, item).await;
    assert_eq!((on_hand, held, sold), (15, 3, 5));
    let available = inventory(&app).available(&[item]).await.unwrap()[&item];
    // Conservation: what was received = available + held + sold.
    assert_eq!(available + held + sold, 20);
    assert_eq!(inventory(&app).reconcile().await.unwrap(), 0);

    // A sale undone (an order cancelled after its commit) returns to the shelf, once.
    assert_eq!(inventory(&app).restock(buyer).await.unwrap(), 5);
    assert_eq!(inventory(&app).restock(buyer).await.unwrap(), 0);
    assert_eq!(inventory(&app).commit(buyer).await.unwrap(), 0);
    assert_eq!(ledger(&app, item).await, (20, 3, 0));
    assert_eq!(inventory(&app).available(&[item]).await.unwrap()[&item], 17);
    assert_eq!(inventory(&app).reconcile().await.unwrap(), 0);
}

#[tokio::test]
async fn a_killed_shard_restarts_rebuilds_and_still_reconciles() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let item = variant(&app, &admin, "CRASH", 30).await;
    let inventory = inventory(&app);
    for _ in 0..4 {
        inventory
            .reserve(Uuid::new_v4(), &one(item, 2), TTL)
            .await
            .unwrap();
    }
    let shard = inventory.shard_of(item);
    let before = inventory.shard_cell(shard).expect("running");
    before.kill();
    eventually(
        Duration::from_secs(5),
        "the shard to be restarted",
        || async {
            inventory
                .shard_cell(shard)
                .filter(|cell| cell.get_id() != before.get_id())
        },
    )
    .await;
    // The rebuilt shard knows the 8 held units: it grants exactly the 22 left.
    let demand = one(item, 1);
    let results = join_all((0..30).map(|_| inventory.reserve(Uuid::new_v4(), &demand, TTL))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 22);
    assert_eq!(ledger(&app, item).await, (30, 30, 0));
    assert_eq!(inventory.reconcile().await.unwrap(), 0);
    let text = app.metrics().await;
    assert!(
        metric_value(&text, "actor_restarts_total{kind=\"inventory_shard\"}")
            .is_some_and(|n| n >= 1.0)
    );
}

#[tokio::test]
async fn bundles_reserve_their_components_and_demand_is_summed() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let cup = variant(&app, &admin, "CUP", 5).await;
    let saucer = variant(&app, &admin, "SAUCER", 10).await;
    let set: Value = app
        .created(&admin.access_token, "/api/v1/products",
            &json!({"type": "bundle", "name": "Set", "sku": "SET", "price": 100, "status": "active",
                    "components": [{"variant_id": cup, "quantity": 2}, {"variant_id": saucer, "quantity": 1}]}))
        .await;
    let set_variant: Uuid = set["variants"][0]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(inventory(&app).available_for(set_variant).await.unwrap(), 2);
    // Two sets need 4 cups; 2 more cups on another line make 6 > 5: refused as a whole.
    let order = vec![
        Demand {
            variant_id: set_variant,
            quantity: 2,
        },
        Demand {
            variant_id: cup,
            quantity: 2,
        },
    ];
    let refused = inventory(&app).reserve(Uuid::new_v4(), &order, TTL).await;
    let Err(InventoryError::Short(short)) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(
        short,
        vec![shop_actors::inventory::Shortage {
            variant_id: cup,
            requested: 6,
            available: 5
        }]
    );
    assert_eq!(ledger(&app, cup).await.1, 0);
    // One set and one cup fit: 3 cups and a saucer are held.
    let owner = Uuid::new_v4();
    let order = vec![
        Demand {
            variant_id: set_variant,
            quantity: 1,
        },
        Demand {
            variant_id: cup,
            quantity: 1,
        },
    ];
    inventory(&app).reserve(owner, &order, TTL).await.unwrap();
    assert_eq!(ledger(&app, cup).await.1, 3);
    assert_eq!(ledger(&app, saucer).await.1, 1);
    let detail: Value = app.get("/api/v1/products/set").await.json().await.unwrap();
    assert_eq!(detail["stock"], 1, "2 cups left make one set");
}

#[tokio::test]
async fn admin_stock_edits_go_through_the_shard_and_cannot_undercut_holds() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let product = app
        .created(
            &admin.access_token,
            "/api/v1/products",
            &json!({"name": "Lamp", "sku": "LAMP", "price": 100, "stock": 10, "status": "active"}),
        )
        .await;
    let id = product["id"].as_str().unwrap();
    let item: Uuid = product["variants"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    inventory(&app)
        .reserve(Uuid::new_v4(), &one(item, 6), TTL)
        .await
        .unwrap();
    let below = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/products/{id}"),
            &json!({"stock": 5}),
        )
        .await;
    assert_problem(below, 409).await;
    let raised: Value = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/products/{id}"),
            &json!({"stock": 25}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(raised["stock_on_hand"], 25);
    assert_eq!(raised["stock_held"], 6);
    assert_eq!(raised["stock"], 19);
    assert_eq!(inventory(&app).available(&[item]).await.unwrap()[&item], 19);
    assert_eq!(inventory(&app).reconcile().await.unwrap(), 0);
}

/// Finding 13: the stock change and the rest of an admin update apply together or not at all.
/// A clash on the SKU (409) used to leave the new stock behind, in PostgreSQL and in the shard.
#[tokio::test]
async fn an_admin_update_refused_for_its_sku_leaves_the_stock_unchanged() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let lamp = app
        .created(
            &admin.access_token,
            "/api/v1/products",
            &json!({"name": "Lamp", "sku": "LAMP", "price": 100, "stock": 10, "status": "active"}),
        )
        .await;
    variant(&app, &admin, "DESK", 1).await;
    let lamp_id = lamp["id"].as_str().unwrap();
    let lamp_item: Uuid = lamp["variants"][0]["id"].as_str().unwrap().parse().unwrap();
    // The shard has the variant in memory, so a stray change there would show.
    assert_eq!(
        inventory(&app).available(&[lamp_item]).await.unwrap()[&lamp_item],
        10
    );

    let clash = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/products/{lamp_id}"),
            &json!({"sku": "DESK", "stock": 3, "name": "Renamed lamp"}),
        )
        .await;
    let problem = assert_problem(clash, 409).await;
    assert!(
        problem["type"].as_str().unwrap().ends_with("sku-taken"),
        "{problem}"
    );
    assert_eq!(ledger(&app, lamp_item).await, (10, 0, 0));
    assert_eq!(
        inventory(&app).available(&[lamp_item]).await.unwrap()[&lamp_item],
        10
    );
    assert_eq!(inventory(&app).reconcile().await.unwrap(), 0);
    let detail: Value = app
        .get(&format!("/api/v1/products/{lamp_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["stock"], 10);
    assert_eq!(detail["name"], "Lamp");
    assert_eq!(detail["sku"], "LAMP");

    // The same for a variant of a variable product, whose SKU clashes with its sibling's.
    let shirt = app
        .created(
            &admin.access_token,
            "/api/v1/products",
            &json!({"name": "Shirt", "type": "variable", "price": 2_000, "status": "active"}),
        )
        .await;
    let shirt_id = shirt["id"].as_str().unwrap();
    let small = app
        .created(
            &admin.access_token,
            &format!("/api/v1/products/{shirt_id}/variants"),
            &json!({"sku": "SHIRT-S", "options": {"size": "S"}, "stock": 8}),
        )
        .await;
    app.created(
        &admin.access_token,
        &format!("/api/v1/products/{shirt_id}/variants"),
        &json!({"sku": "SHIRT-M", "options": {"size": "M"}, "stock": 4}),
    )
    .await;
    let small_id: Uuid = small["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        inventory(&app).available(&[small_id]).await.unwrap()[&small_id],
        8
    );
    let clash = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/products/{shirt_id}/variants/{small_id}"),
            &json!({"sku": "SHIRT-M", "stock": 30, "price": 2_500}),
        )
        .await;
    let problem = assert_problem(clash, 409).await;
    assert!(
        problem["type"].as_str().unwrap().ends_with("sku-taken"),
        "{problem}"
    );
    assert_eq!(ledger(&app, small_id).await, (8, 0, 0));
    assert_eq!(
        inventory(&app).available(&[small_id]).await.unwrap()[&small_id],
        8
    );
    assert_eq!(inventory(&app).reconcile().await.unwrap(), 0);
    let detail: Value = app
        .get(&format!("/api/v1/products/{shirt_id}"))
        .await
        .json()
        .await
        .unwrap();
    let variants = detail["variants"].as_array().unwrap();
    let small = variants.iter().find(|v| v["id"] == small["id"]).unwrap();
    assert_eq!(
        (small["stock"].clone(), small["price"].clone()),
        (json!(8), json!(2_000))
    );
    assert_eq!(small["sku"], "SHIRT-S");
    assert_eq!(detail["stock"], 12);
}

/// Finding 13, the other way round: a stock change the shard refuses (below what pending orders
/// hold) leaves the other fields of the request unapplied; an allowed one applies everything.
#[tokio::test]
async fn an_admin_update_refused_for_its_stock_leaves_the_other_fields_unchanged() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let lamp = app
        .created(
            &admin.access_token,
            "/api/v1/products",
            &json!({"name": "Lamp", "sku": "LAMP", "price": 100, "stock": 10, "status": "active"}),
        )
        .await;
    let id = lamp["id"].as_str().unwrap();
    let item: Uuid = lamp["variants"][0]["id"].as_str().unwrap().parse().unwrap();
    inventory(&app)
        .reserve(Uuid::new_v4(), &one(item, 6), TTL)
        .await
        .unwrap();

    let below = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/products/{id}"),
            &json!({"stock": 5, "name": "Renamed lamp", "sku": "LAMP-2", "price": 150}),
        )
        .await;
    let problem = assert_problem(below, 409).await;
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("stock-below-held"),
        "{problem}"
    );
    let below = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/products/{id}/variants/{item}"),
            &json!({"stock": 2, "sku": "LAMP-3", "price": 175}),
        )
        .await;
    assert_problem(below, 409).await;
    let detail: Value = app
        .get(&format!("/api/v1/products/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["name"], "Lamp");
    assert_eq!(detail["sku"], "LAMP");
    assert_eq!(detail["price"], 100);
    assert_eq!(detail["variants"][0]["price"], 100);
    assert_eq!(detail["stock"], 4);
    assert_eq!(ledger(&app, item).await, (10, 6, 0));

    // Allowed: every field and the stock, in PostgreSQL and in the shard.
    let updated = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/products/{id}"),
            &json!({"stock": 20, "name": "Renamed lamp", "sku": "LAMP-2"}),
        )
        .await;
    assert_eq!(updated.status().as_u16(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(
        (
            updated["name"].clone(),
            updated["sku"].clone(),
            updated["stock"].clone()
        ),
        (json!("Renamed lamp"), json!("LAMP-2"), json!(14))
    );
    let updated = app
        .patch_json_as(
            &admin.access_token,
            &format!("/api/v1/products/{id}/variants/{item}"),
            &json!({"stock": 7, "price": 175}),
        )
        .await;
    assert_eq!(updated.status().as_u16(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(
        (updated["stock"].clone(), updated["price"].clone()),
        (json!(1), json!(175))
    );
    assert_eq!(ledger(&app, item).await, (7, 6, 0));
    assert_eq!(inventory(&app).available(&[item]).await.unwrap()[&item], 1);
    assert_eq!(inventory(&app).reconcile().await.unwrap(), 0);
}

/// A batch of holds whose write PostgreSQL refuses is undone in memory and its callers are told;
/// the other batches, written at the same time, stand, and the shard goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_write_of_holds_is_undone_and_the_shard_goes_on() {
    let app = TestApp::spawn().await;
    let admin = app.login_as_admin().await;
    let shards = app.state.settings.inventory.shard_count();
    let doomed = variant(&app, &admin, "DOOMED", 10).await;
    // A variant of the same shard, so that its holds are decided and written beside the doomed.
    let mut fine = variant(&app, &admin, "FINE-0", 1000).await;
    for i in 1.. {
        if shard_index(fine, shards) == shard_index(doomed, shards) {
            break;
        }
        fine = variant(&app, &admin, &format!("FINE-{i}"), 1000).await;
    }
    // The doomed variant is loaded into its shard and known to be no bundle; then its row goes
    // behind the shard's back, so the foreign key of a hold on it fails its whole batch.
    assert_eq!(
        inventory(&app).available(&[doomed]).await.unwrap()[&doomed],
        10
    );
    sqlx::query("DELETE FROM product_variants WHERE id = $1")
        .bind(doomed)
        .execute(&app.db)
        .await
        .unwrap();

    let calls = (0..300).map(|i| {
        let inventory = inventory(&app).clone();
        let variant = if i % 60 == 0 { doomed } else { fine };
        tokio::spawn(async move {
            let answer = inventory
                .reserve(Uuid::new_v4(), &one(variant, 1), TTL)
                .await;
            (variant, answer)
        })
    });
    let (mut granted, mut refused) = (0, 0);
    for (variant, answer) in join_all(calls).await.into_iter().map(Result::unwrap) {
        match answer {
            Ok(1) if variant == fine => granted += 1,
            Err(InventoryError::Storage(_)) => refused += 1,
            other => panic!("a hold on {variant} answered {other:?}"),
        }
    }
    assert_eq!(granted + refused, 300);
    assert!(
        refused >= 5,
        "every hold on the deleted variant failed: {refused}"
    );
    // The shard goes on: the next hold is made.
    assert_eq!(
        inventory(&app)
            .reserve(Uuid::new_v4(), &one(fine, 1), TTL)
            .await
            .unwrap(),
        1
    );
    granted += 1;
    // What was granted is held, in PostgreSQL and in memory; the undone holds hold nothing.
    assert_eq!(ledger(&app, fine).await, (1000, granted, 0));
    let available = inventory(&app).available(&[fine, doomed]).await.unwrap();
    assert_eq!(available[&fine], 1000 - granted);
    assert_eq!(available[&doomed], 10);
}

/// A batch of holds is being written (its variant's row is locked) when its shard is killed. The
/// next incarnation waits for that write before it reads the live holds, so it counts the units
/// the write holds: nothing is granted beyond the stock, memory and PostgreSQL agree, and the
/// caller whose write landed is told `Ok`.
#[tokio::test]
async fn a_restarted_shard_counts_the_holds_its_predecessor_was_still_writing() {
    let app = TestApp::spawn_with(
        // The blocked insert is not cut short by the statement timeout while the test runs.
        |settings| settings.database.statement_timeout_ms = 20_000,
        |_| Vec::new(),
    )
    .await;
    let admin = app.login_as_admin().await;
    let item = variant(&app, &admin, "HANDOVER", 10).await;
    let inventory = inventory(&app).clone();
    let shard = inventory.shard_of(item);
    let before = inventory.shard_cell(shard).expect("running");
    // A hold already written: the next incarnation loads this variant as it starts.
    inventory
        .reserve(Uuid::new_v4(), &one(item, 1), TTL)
        .await
        .unwrap();

    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM product_variants WHERE id = $1 FOR UPDATE")
        .bind(item)
        .execute(&mut *lock)
        .await
        .unwrap();
    let owner = Uuid::new_v4();
    let in_flight = tokio::spawn({
        let inventory = inventory.clone();
        async move { inventory.reserve(owner, &one(item, 6), TTL).await }
    });
    app.wait_for_one_waiting("INSERT INTO stock_reservations")
        .await;
    before.kill();
    // The next incarnation has started reading, or is waiting for the write to land.
    eventually(DEADLINE, "the shard to be restarting", || async {
        let restarted = inventory
            .shard_cell(shard)
            .is_some_and(|cell| cell.get_id() != before.get_id());
        (restarted || inventory.successor_waiting(shard)).then_some(())
    })
    .await;
    lock.commit().await.unwrap();

    let told = in_flight.await.unwrap();
    assert!(
        told.is_ok(),
        "the write landed, so its caller is told so: {told:?}"
    );
    eventually(DEADLINE, "the shard to be restarted", || async {
        inventory
            .shard_cell(shard)
            .filter(|cell| cell.get_id() != before.get_id())
    })
    .await;
    // 1 + 6 of 10 are held: 3 are left, and no more.
    let demand = one(item, 1);
    let results = join_all((0..10).map(|_| inventory.reserve(Uuid::new_v4(), &demand, TTL))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    assert_eq!(ledger(&app, item).await, (10, 10, 0));
    assert_eq!(inventory.reconcile().await.unwrap(), 0);
}
