//! The catalog: categories, simple/variable/bundle products, search and filters, visibility,
//! bundle stock, and the listing cache (real Redis).

use serde_json::{Value, json};

use shop::catalog::{ProductStatus, ProductType};

use crate::helpers::{Session, TestApp, assert_problem, metric_value};

struct Shop {
    app: TestApp,
    admin: Session,
}

impl Shop {
    async fn open() -> Self {
        let app = TestApp::spawn().await;
        let admin = app.login_as_admin().await;
        Self { app, admin }
    }

    async fn category(&self, name: &str, parent: Option<&Value>) -> Value {
        let mut body = json!({"name": name});
        if let Some(parent) = parent {
            body["parent_id"] = parent["id"].clone();
        }
        self.app
            .created(&self.admin.access_token, "/api/v1/categories", &body)
            .await
    }

    async fn product(&self, body: Value) -> Value {
        self.app
            .created(&self.admin.access_token, "/api/v1/products", &body)
            .await
    }

    async fn simple(&self, name: &str, sku: &str, price: i64, stock: i64, extra: Value) -> Value {
        let mut body =
            json!({"name": name, "sku": sku, "price": price, "stock": stock, "status": "active"});
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        self.product(body).await
    }

    async fn patch(&self, path: &str, body: Value) -> reqwest::Response {
        self.app
            .patch_json_as(&self.admin.access_token, path, &body)
            .await
    }

    async fn list(&self, query: &str) -> Value {
        let response = self.app.get(&format!("/api/v1/products?{query}")).await;
        assert_eq!(response.status(), 200, "{query}");
        response.json().await.unwrap()
    }

    async fn names(&self, query: &str) -> Vec<String> {
        self.list(query).await["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

#[tokio::test]
async fn admins_build_the_catalog_and_customers_read_it() {
    let shop = Shop::open().await;
    let apparel = shop.category("Apparel", None).await;
    assert_eq!(apparel["slug"], "apparel");
    let shirts = shop.category("T-Shirts", Some(&apparel)).await;
    assert_eq!(shirts["parent_id"], apparel["id"]);

    let mug = shop
        .simple(
            "Coffee Mug",
            "MUG-1",
            1299,
            40,
            json!({"category_id": apparel["id"], "barcode": "4006381333931",
            "weight_grams": 350, "dimensions": {"length_mm": 120, "width_mm": 90, "height_mm": 100},
            "tags": ["Kitchen", "gift"], "brand": "Acme", "compare_at_price": 1599}),
        )
        .await;
    assert_eq!(mug["type"], "simple");
    assert_eq!(mug["sku"], "MUG-1");
    assert_eq!(mug["price"], 1299);
    assert_eq!(mug["stock"], 40);
    assert_eq!(mug["stock_on_hand"], 40, "admins see stock on hand");
    assert_eq!(mug["tags"], json!(["kitchen", "gift"]));
    assert_eq!(mug["dimensions"]["height_mm"], 100);
    assert_eq!(mug["rating"], json!({"average": 0.0, "count": 0}));

    let shirt = shop
        .product(
            json!({"type": "variable", "name": "Logo Tee", "price": 2500, "status": "active",
                        "category_id": shirts["id"]}),
        )
        .await;
    let shirt_id = shirt["id"].as_str().unwrap();
    let token = &shop.admin.access_token;
    let small = shop
        .app
        .created(
            token,
            &format!("/api/v1/products/{shirt_id}/variants"),
            &json!({"sku": "TEE-S-RED", "options": {"size": "S", "color": "red"}, "stock": 5}),
        )
        .await;
    assert_eq!(
        small["price"], 2500,
        "a variant without a price sells at the product's"
    );
    shop.app.created(token, &format!("/api/v1/products/{shirt_id}/variants"),
        &json!({"sku": "TEE-L-RED", "options": {"color": "red", "size": "L"}, "stock": 3, "price": 2800})).await;
    // The same combination, keys in another order, is a duplicate.
    let duplicate = shop
        .app
        .post_json_as(
            token,
            &format!("/api/v1/products/{shirt_id}/variants"),
            &json!({"sku": "TEE-S-RED-2", "options": {"color": "red", "size": "S"}}),
        )
        .await;
    assert_problem(duplicate, 409).await;

    let bundle = shop
        .product(json!({"type": "bundle", "name": "Gift Set", "sku": "GIFT-1", "price": 3500, "status": "active",
            "components": [{"variant_id": mug["variants"][0]["id"], "quantity": 2},
                           {"variant_id": small["id"], "quantity": 1}]}))
        .await;
    assert_eq!(bundle["components"].as_array().unwrap().len(), 2);
    assert_eq!(bundle["stock"], 5, "min(40 / 2, 5 / 1)");

    // A customer reads all of it.
    let customer = shop.app.login_as_customer().await;
    let tee = shop
        .app
        .get_as(&customer.access_token, "/api/v1/products/logo-tee")
        .await;
    assert_eq!(tee.status(), 200);
    let tee: Value = tee.json().await.unwrap();
    assert_eq!(tee["variants"].as_array().unwrap().len(), 2);
    assert_eq!(tee["price_min"], 2500);
    assert_eq!(tee["price_max"], 2800);
    assert_eq!(tee["stock"], 8);
    assert!(
        tee.get("stock_on_hand").is_none(),
        "customers do not see stock on hand"
    );
    let category: Value = shop
        .app
        .get("/api/v1/categories/apparel")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(category["children"][0]["slug"], "t-shirts");
    let all: Value = shop
        .app
        .get("/api/v1/categories")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 2);

    // Clashes are 409.
    let again = shop
        .app
        .post_json_as(token, "/api/v1/categories", &json!({"name": "Apparel"}))
        .await;
    assert_problem(again, 409).await;
    let sku_taken = shop
        .app
        .post_json_as(
            token,
            "/api/v1/products",
            &json!({"name": "Another Mug", "sku": "mug-1", "price": 1}),
        )
        .await;
    assert_problem(sku_taken, 409).await;
    let slug_taken = shop
        .app
        .post_json_as(
            token,
            "/api/v1/products",
            &json!({"name": "Coffee Mug", "sku": "MUG-2", "price": 1}),
        )
        .await;
    assert_problem(slug_taken, 409).await;

    // Writes by a customer are refused and change nothing.
    let refused = shop
        .app
        .post_json_as(
            &customer.access_token,
            "/api/v1/products",
            &json!({"name": "Sneaky", "sku": "SNEAK", "price": 1}),
        )
        .await;
    assert_problem(refused, 403).await;
    let refused = shop
        .app
        .patch_json_as(
            &customer.access_token,
            &format!("/api/v1/products/{}", mug["id"].as_str().unwrap()),
            &json!({"price": 1}),
        )
        .await;
    assert_problem(refused, 403).await;
    let mug_now: Value = shop
        .app
        .get("/api/v1/products/coffee-mug")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mug_now["price"], 1299);
}

#[tokio::test]
async fn invalid_products_are_422_and_nothing_is_created() {
    let shop = Shop::open().await;
    let response = shop
        .app
        .post_json_as(
            &shop.admin.access_token,
            "/api/v1/products",
            &json!({"name": "", "price": -5, "stock": -1, "type": "variable", "sku": "X"}),
        )
        .await;
    let body = assert_problem(response, 422).await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for field in ["name", "price", "sku", "stock"] {
        assert!(fields.contains(&field), "{field} not named in {fields:?}");
    }
    let bundle_of_bundle = shop
        .app
        .post_json_as(
            &shop.admin.access_token,
            "/api/v1/products",
            &json!({"type": "bundle", "name": "Empty", "sku": "B-0", "price": 1, "components": []}),
        )
        .await;
    assert_problem(bundle_of_bundle, 422).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM products")
        .fetch_one(&shop.app.db)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_bundle_cannot_contain_a_bundle() {
    let shop = Shop::open().await;
    let mug = shop.simple("Mug", "MUG", 100, 10, json!({})).await;
    let set = shop
        .product(
            json!({"type": "bundle", "name": "Set", "sku": "SET", "price": 150,
        "components": [{"variant_id": mug["variants"][0]["id"], "quantity": 1}]}),
        )
        .await;
    let nested = shop
        .app
        .post_json_as(
            &shop.admin.access_token,
            "/api/v1/products",
            &json!({"type": "bundle", "name": "Set of sets", "sku": "SETS", "price": 300,
                "components": [{"variant_id": set["variants"][0]["id"], "quantity": 2}]}),
        )
        .await;
    let body = assert_problem(nested, 422).await;
    assert_eq!(body["errors"][0]["field"], "components[0].variant_id");
}

#[tokio::test]
async fn search_filters_sorts_and_pages_agree_with_the_data() {
    let shop = Shop::open().await;
    let audio = shop.category("Audio", None).await;
    let headphones = shop.category("Headphones", Some(&audio)).await;
    let kitchen = shop.category("Kitchen", None).await;
    shop.simple(
        "Wireless Headphones",
        "HP-100",
        9900,
        5,
        json!({"category_id": headphones["id"],
        "brand": "Sonic", "tags": ["wireless", "bluetooth"],
        "description": "Noise cancelling over-ear cans with a thirty hour battery."}),
    )
    .await;
    shop.simple(
        "Studio Speaker",
        "SPK-200",
        19900,
        0,
        json!({"category_id": audio["id"],
        "brand": "Sonic", "tags": ["wired"], "description": "Loud and clear."}),
    )
    .await;
    shop.simple(
        "Chef Knife",
        "KNF-300",
        4900,
        12,
        json!({"category_id": kitchen["id"],
        "brand": "Blade", "tags": ["steel"], "description": "Forged carbon steel."}),
    )
    .await;
    shop.simple(
        "Cutting Board",
        "BRD-400",
        2900,
        7,
        json!({"category_id": kitchen["id"],
        "brand": "Blade", "tags": ["wood", "steel"], "description": "End grain walnut."}),
    )
    .await;

    // Full text: a word of the description, a SKU, and a name with one typo.
    assert_eq!(shop.names("q=battery").await, ["Wireless Headphones"]);
    assert_eq!(shop.names("q=KNF-300").await, ["Chef Knife"]);
    assert_eq!(shop.names("q=headphnes").await, ["Wireless Headphones"]);
    assert!(shop.names("q=zzzqqq").await.is_empty());

    // A category includes its descendants.
    let mut in_audio = shop.names("category=audio").await;
    in_audio.sort();
    assert_eq!(in_audio, ["Studio Speaker", "Wireless Headphones"]);
    let by_id = shop
        .names(&format!("category={}", headphones["id"].as_str().unwrap()))
        .await;
    assert_eq!(by_id, ["Wireless Headphones"]);

    assert_eq!(
        shop.names("min_price=4000&max_price=10000&sort=price_asc")
            .await,
        ["Chef Knife", "Wireless Headphones"]
    );
    assert_eq!(shop.names("tags=steel,wood").await, ["Cutting Board"]);
    assert_eq!(
        shop.names("brand=sonic&sort=name").await,
        ["Studio Speaker", "Wireless Headphones"]
    );
    let in_stock = shop.names("in_stock=true&sort=name").await;
    assert_eq!(
        in_stock,
        ["Chef Knife", "Cutting Board", "Wireless Headphones"]
    );

    let sorted = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        shop.names("sort=price_asc").await,
        sorted(&[
            "Cutting Board",
            "Chef Knife",
            "Wireless Headphones",
            "Studio Speaker"
        ])
    );
    assert_eq!(
        shop.names("sort=price_desc").await,
        sorted(&[
            "Studio Speaker",
            "Wireless Headphones",
            "Chef Knife",
            "Cutting Board"
        ])
    );
    assert_eq!(
        shop.names("sort=name").await,
        sorted(&[
            "Chef Knife",
            "Cutting Board",
            "Studio Speaker",
            "Wireless Headphones"
        ])
    );
    assert_eq!(
        shop.names("sort=newest").await,
        sorted(&[
            "Cutting Board",
            "Chef Knife",
            "Studio Speaker",
            "Wireless Headphones"
        ])
    );
    // Ratings: give one product the best, it comes first.
    sqlx::query(
        "UPDATE products SET rating_average = 4.5, rating_count = 10 WHERE name = 'Chef Knife'",
    )
    .execute(&shop.app.db)
    .await
    .unwrap();
    assert_eq!(shop.names("sort=rating").await[0], "Chef Knife");

    // Pages and totals agree.
    let first = shop.list("per_page=3&page=1&sort=name").await;
    let second = shop.list("per_page=3&page=2&sort=name").await;
    assert_eq!(first["total"], 4);
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["items"][0]["name"], "Wireless Headphones");
    let clamped = shop.list("per_page=1000").await;
    assert_eq!(clamped["per_page"], 100);
    let bad = shop.app.get("/api/v1/products?min_price=cheap").await;
    assert_problem(bad, 400).await;
}

#[tokio::test]
async fn draft_and_archived_products_are_for_admins_only() {
    let shop = Shop::open().await;
    shop.product(json!({"name": "Secret Draft", "sku": "DRAFT-1", "price": 100}))
        .await;
    let live = shop.simple("Live One", "LIVE-1", 100, 1, json!({})).await;
    let gone = shop.simple("Gone One", "GONE-1", 100, 1, json!({})).await;
    let token = &shop.admin.access_token;
    let archived = shop
        .app
        .delete_as(
            token,
            &format!("/api/v1/products/{}", gone["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(archived.status(), 204);

    assert_eq!(shop.names("").await, ["Live One"]);
    assert_problem(shop.app.get("/api/v1/products/secret-draft").await, 404).await;
    assert_problem(shop.app.get("/api/v1/products/gone-one").await, 404).await;
    // Customers cannot ask for other statuses.
    assert_eq!(shop.names("status=draft").await, ["Live One"]);

    let admin_view: Value = shop
        .app
        .get_as(token, "/api/v1/products?sort=name")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(admin_view["total"], 3);
    let drafts: Value = shop
        .app
        .get_as(token, "/api/v1/products?status=draft")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(drafts["items"][0]["name"], "Secret Draft");
    assert_eq!(
        shop.app
            .get_as(token, "/api/v1/products/gone-one")
            .await
            .status(),
        200
    );
    let _ = live;
}

#[tokio::test]
async fn a_bundle_follows_its_scarcest_component() {
    let shop = Shop::open().await;
    let cup = shop.simple("Cup", "CUP", 500, 10, json!({})).await;
    let saucer = shop.simple("Saucer", "SAUCER", 300, 9, json!({})).await;
    let set = shop.product(json!({"type": "bundle", "name": "Cup and Saucer", "sku": "CS", "price": 700,
        "status": "active", "components": [{"variant_id": cup["variants"][0]["id"], "quantity": 1},
                                           {"variant_id": saucer["variants"][0]["id"], "quantity": 2}]})).await;
    let stock = || async {
        shop.app
            .get("/api/v1/products/cup-and-saucer")
            .await
            .json::<Value>()
            .await
            .unwrap()["stock"]
            .clone()
    };
    assert_eq!(stock().await, 4, "min(10 / 1, 9 / 2)");
    let saucer_id = saucer["id"].as_str().unwrap();
    assert_eq!(
        shop.patch(
            &format!("/api/v1/products/{saucer_id}"),
            json!({"stock": 30})
        )
        .await
        .status(),
        200
    );
    assert_eq!(stock().await, 10, "now the cup is the scarcest");
    let cup_id = cup["id"].as_str().unwrap();
    assert_eq!(
        shop.patch(&format!("/api/v1/products/{cup_id}"), json!({"stock": 3}))
            .await
            .status(),
        200
    );
    assert_eq!(stock().await, 3);
    // Archiving a component makes the bundle unavailable.
    shop.app
        .delete_as(
            &shop.admin.access_token,
            &format!("/api/v1/products/{cup_id}"),
        )
        .await;
    assert_eq!(stock().await, 0);
    let _ = set;
}

#[tokio::test]
async fn a_product_update_shows_in_the_next_listing() {
    let shop = Shop::open().await;
    let lamp = shop.simple("Desk Lamp", "LAMP-1", 3000, 4, json!({})).await;
    let before = shop.list("q=lamp").await;
    assert_eq!(before["items"][0]["price"], 3000);
    let again = shop.list("q=lamp").await;
    assert_eq!(before, again, "served from the cache");
    let text = shop.app.metrics().await;
    assert!(
        metric_value(
            &text,
            "cache_requests_total{cache=\"listing\",result=\"hit\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "no cache hit recorded:\n{text}"
    );

    let id = lamp["id"].as_str().unwrap();
    assert_eq!(
        shop.patch(
            &format!("/api/v1/products/{id}"),
            json!({"price": 2500, "name": "Desk Lamp Pro"})
        )
        .await
        .status(),
        200
    );
    let after = shop.list("q=lamp").await;
    assert_eq!(
        after["items"][0]["price"], 2500,
        "stale listing served after an update"
    );
    assert_eq!(after["items"][0]["name"], "Desk Lamp Pro");
    let detail: Value = shop
        .app
        .get("/api/v1/products/desk-lamp")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["price"], 2500);
}

#[tokio::test]
async fn with_redis_down_listings_still_answer_and_readiness_says_so() {
    // A Redis nobody listens on: as if it had been stopped.
    let app = TestApp::spawn_with(
        |s| s.redis.url = "redis://127.0.0.1:1/".to_owned().into(),
        |_| Vec::new(),
    )
    .await;
    let admin = app.login_as_admin().await;
    app.created(
        &admin.access_token,
        "/api/v1/products",
        &json!({"name": "Kettle", "sku": "KET", "price": 100, "status": "active"}),
    )
    .await;
    for _ in 0..3 {
        let response = app.get("/api/v1/products").await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["items"][0]["name"], "Kettle");
    }
    assert_eq!(app.get("/api/v1/products/kettle").await.status(), 200);
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_ne!(ready["checks"]["redis"], "ok");
    assert_eq!(ready["checks"]["postgres"], "ok");
    let text = app.metrics().await;
    assert!(metric_value(&text, "cache_errors_total{backend=\"redis\"}").is_some_and(|n| n >= 1.0));
}

#[tokio::test]
async fn categories_in_use_cannot_be_deleted() {
    let shop = Shop::open().await;
    let parent = shop.category("Garden", None).await;
    let child = shop.category("Tools", Some(&parent)).await;
    let token = &shop.admin.access_token;
    let parent_id = parent["id"].as_str().unwrap();
    let child_id = child["id"].as_str().unwrap();
    assert_problem(
        shop.app
            .delete_as(token, &format!("/api/v1/categories/{parent_id}"))
            .await,
        409,
    )
    .await;
    shop.simple("Rake", "RAKE", 100, 1, json!({"category_id": child_id}))
        .await;
    assert_problem(
        shop.app
            .delete_as(token, &format!("/api/v1/categories/{child_id}"))
            .await,
        409,
    )
    .await;
    // A category cannot become its own ancestor.
    let cycle = shop
        .patch(
            &format!("/api/v1/categories/{parent_id}"),
            json!({"parent_id": child_id}),
        )
        .await;
    assert_problem(cycle, 422).await;
    let empty = shop.category("Empty", None).await;
    let empty_id = empty["id"].as_str().unwrap();
    assert_eq!(
        shop.app
            .delete_as(token, &format!("/api/v1/categories/{empty_id}"))
            .await
            .status(),
        204
    );
}

/// Finding 12: a kind or status outside the enum, read from the database, is an error (a logged
/// 500), never a default (it used to read as a simple product, or a draft).
#[tokio::test]
async fn an_unknown_kind_or_status_in_the_database_is_an_error_not_a_default() {
    let shop = Shop::open().await;
    let db = &shop.app.db;
    for (sql, expected) in [
        ("SELECT 'bundle'::text", Ok(ProductType::Bundle)),
        ("SELECT 'gadget'::text", Err(())),
        ("SELECT 'Simple'::text", Err(())),
    ] {
        let decoded = sqlx::query_scalar::<_, ProductType>(sql)
            .fetch_one(db)
            .await;
        assert_eq!(decoded.map_err(|_| ()), expected, "{sql}");
    }
    for (sql, expected) in [
        ("SELECT 'archived'::text", Ok(ProductStatus::Archived)),
        ("SELECT 'hidden'::text", Err(())),
        ("SELECT ''::text", Err(())),
    ] {
        let decoded = sqlx::query_scalar::<_, ProductStatus>(sql)
            .fetch_one(db)
            .await;
        assert_eq!(decoded.map_err(|_| ()), expected, "{sql}");
    }

    let lamp = shop.simple("Lamp", "LAMP", 100, 5, json!({})).await;
    let desk = shop.simple("Desk", "DESK", 100, 5, json!({})).await;
    sqlx::query("ALTER TABLE products DROP CONSTRAINT products_type_check")
        .execute(db)
        .await
        .unwrap();
    sqlx::query("ALTER TABLE products DROP CONSTRAINT products_status_check")
        .execute(db)
        .await
        .unwrap();
    sqlx::query("UPDATE products SET type = 'gadget' WHERE id = $1::uuid")
        .bind(lamp["id"].as_str().unwrap())
        .execute(db)
        .await
        .unwrap();
    sqlx::query("UPDATE products SET status = 'hidden' WHERE id = $1::uuid")
        .bind(desk["id"].as_str().unwrap())
        .execute(db)
        .await
        .unwrap();
    for product in [&lamp, &desk] {
        let read = shop
            .app
            .get_as(
                &shop.admin.access_token,
                &format!("/api/v1/products/{}", product["id"].as_str().unwrap()),
            )
            .await;
        assert_problem(read, 500).await;
    }
    let listing = shop
        .app
        .get_as(&shop.admin.access_token, "/api/v1/products?status=active")
        .await;
    assert_problem(listing, 500).await;
}

/// `(name or value or min, count)` of one facet's entries, in the order served.
fn facet_counts(page: &Value, facet: &str, key: &str) -> Vec<(Value, i64)> {
    page["facets"][facet]
        .as_array()
        .unwrap_or_else(|| panic!("no {facet} facet in {page}"))
        .iter()
        .map(|entry| (entry[key].clone(), entry["count"].as_i64().unwrap()))
        .collect()
}

#[tokio::test]
async fn facets_count_each_filter_over_what_the_other_filters_select() {
    let shop = Shop::open().await;
    let audio = shop.category("Audio", None).await;
    let headphones = shop.category("Headphones", Some(&audio)).await;
    let kitchen = shop.category("Kitchen", None).await;
    shop.category("Empty", None).await;
    let products = [
        // name, price, stock, category, brand
        ("Wireless Headphones", 9_900, 5, &headphones, "Sonic"),
        ("Wired Headphones", 2_900, 0, &headphones, "sonic"),
        ("Studio Speaker", 19_900, 0, &audio, "Sonic"),
        ("Chef Knife", 4_900, 12, &kitchen, "Blade"),
        ("Cutting Board", 2_900, 7, &kitchen, "Blade"),
        ("Tea Towel", 900, 3, &kitchen, "Linen & Co"),
    ];
    for (i, (name, price, stock, category, brand)) in products.into_iter().enumerate() {
        shop.simple(
            name,
            &format!("FCT-{i}"),
            price,
            stock,
            json!({"category_id": category["id"], "brand": brand}),
        )
        .await;
    }
    // Not for customers, so never counted.
    shop.product(
        json!({"name": "Draft Kettle", "sku": "FCT-D", "price": 3_000, "stock": 1,
        "category_id": kitchen["id"], "brand": "Blade", "status": "draft"}),
    )
    .await;

    let all = shop
        .list("facets=category,brand,price,in_stock&per_page=1")
        .await;
    assert_eq!(all["total"], 6);
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        1,
        "the page is still a page"
    );
    // Audio counts its subcategory's products: 2 headphones + the speaker.
    assert_eq!(
        facet_counts(&all, "category", "name"),
        [
            (json!("Audio"), 3),
            (json!("Kitchen"), 3),
            (json!("Headphones"), 2)
        ]
    );
    assert_eq!(
        all["facets"]["category"][0]["slug"], "audio",
        "with the slug to filter by"
    );
    assert_eq!(
        all["facets"]["category"][2]["parent_id"], audio["id"],
        "and the parent to place it"
    );
    // Brands in any case, under the spelling most products use.
    assert_eq!(
        facet_counts(&all, "brand", "value"),
        [
            (json!("Sonic"), 3),
            (json!("Blade"), 2),
            (json!("Linen & Co"), 1)
        ]
    );
    // By the cheapest variant, in buckets whose bounds are inclusive filter values.
    assert_eq!(
        facet_counts(&all, "price", "min"),
        [
            (json!(0), 1),
            (json!(1_000), 0),
            (json!(2_500), 3),
            (json!(5_000), 1),
            (json!(10_000), 1),
            (json!(25_000), 0),
            (json!(50_000), 0),
            (json!(100_000), 0)
        ]
    );
    assert_eq!(all["facets"]["price"][2]["max"], 4_999);
    assert!(all["facets"]["price"][7].get("max").is_none());
    assert_eq!(all["facets"]["in_stock"]["count"], 4);

    // A brand picked: the brand facet still shows every brand; the others count only Sonic.
    let sonic = shop
        .list("brand=sonic&facets=category,brand,price,in_stock")
        .await;
    assert_eq!(sonic["total"], 3);
    assert_eq!(
        facet_counts(&sonic, "brand", "value"),
        facet_counts(&all, "brand", "value")
    );
    assert_eq!(
        facet_counts(&sonic, "category", "name"),
        [(json!("Audio"), 3), (json!("Headphones"), 2)]
    );
    assert_eq!(sonic["facets"]["in_stock"]["count"], 1);
    let sonic_prices: Vec<i64> = facet_counts(&sonic, "price", "min")
        .into_iter()
        .map(|(_, count)| count)
        .collect();
    assert_eq!(sonic_prices, [0, 0, 1, 1, 1, 0, 0, 0]);

    // A category and in_stock picked: categories counted over what is in stock, in_stock over
    // the category.
    let in_audio = shop
        .list("category=audio&in_stock=true&facets=in_stock,category,brand")
        .await;
    assert_eq!(in_audio["total"], 1);
    assert_eq!(
        facet_counts(&in_audio, "category", "name"),
        [
            (json!("Kitchen"), 3),
            (json!("Audio"), 1),
            (json!("Headphones"), 1)
        ]
    );
    assert_eq!(in_audio["facets"]["in_stock"]["count"], 1);
    assert_eq!(
        facet_counts(&in_audio, "brand", "value"),
        [(json!("Sonic"), 1)]
    );
    assert!(in_audio["facets"].get("price").is_none(), "not asked for");

    // A price range picked: the price facet ignores it.
    let mid = shop
        .list("min_price=2500&max_price=4999&facets=price,brand")
        .await;
    assert_eq!(mid["total"], 3);
    assert_eq!(
        facet_counts(&mid, "price", "min"),
        facet_counts(&all, "price", "min")
    );
    assert_eq!(
        facet_counts(&mid, "brand", "value"),
        [(json!("Blade"), 2), (json!("sonic"), 1)]
    );

    // An unknown category selects nothing, but its own facet still counts the rest.
    let unknown = shop.list("category=nope&facets=category,brand").await;
    assert_eq!(unknown["total"], 0);
    assert_eq!(
        facet_counts(&unknown, "category", "name"),
        facet_counts(&all, "category", "name")
    );
    assert_eq!(facet_counts(&unknown, "brand", "value"), []);

    // No facets asked for: no `facets` at all.
    assert!(shop.list("brand=sonic").await.get("facets").is_none());
    let refused = shop.app.get("/api/v1/products?facets=brand,colour").await;
    let problem = assert_problem(refused, 422).await;
    assert_eq!(problem["errors"][0]["field"], "facets");

    // Counts are cached with the listing and follow a catalog edit.
    let towel = shop.list("q=towel").await["items"][0]["id"].clone();
    let patched = shop
        .patch(
            &format!("/api/v1/products/{}", towel.as_str().unwrap()),
            json!({"brand": "Blade"}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let edited = shop
        .list("facets=category,brand,price,in_stock&per_page=1")
        .await;
    assert_eq!(
        facet_counts(&edited, "brand", "value"),
        [(json!("Blade"), 3), (json!("Sonic"), 3)]
    );
}

#[tokio::test]
async fn in_stock_means_sellable_now_net_of_holds_and_for_a_bundle_by_its_components() {
    let shop = Shop::open().await;
    let last = shop
        .simple("Last Lamp", "LAMP-1", 4_000, 1, json!({}))
        .await;
    shop.simple("Plenty Lamp", "LAMP-9", 4_000, 9, json!({}))
        .await;
    let none = shop
        .simple("Gone Lamp", "LAMP-0", 4_000, 0, json!({}))
        .await;
    shop.product(json!({"type": "bundle", "name": "Lamp Pair", "sku": "PAIR", "price": 7_000,
        "status": "active", "components": [{"variant_id": last["variants"][0]["id"], "quantity": 1}]}))
        .await;
    shop.product(json!({"type": "bundle", "name": "Empty Pair", "sku": "EMPTY", "price": 7_000,
        "status": "active", "components": [{"variant_id": none["variants"][0]["id"], "quantity": 1}]}))
        .await;
    // Admin listings are never cached: stock movements show at once.
    let in_stock = async || {
        let response = shop
            .app
            .get_as(
                &shop.admin.access_token,
                "/api/v1/products?status=active&in_stock=true&sort=name&facets=in_stock",
            )
            .await;
        assert_eq!(response.status(), 200);
        let page: Value = response.json().await.unwrap();
        let names: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(page["facets"]["in_stock"]["count"], names.len());
        names
    };
    assert_eq!(in_stock().await, ["Lamp Pair", "Last Lamp", "Plenty Lamp"]);

    // The last lamp held by a pending order: neither it nor the bundle made of it can be sold.
    let customer = shop.app.login_as_customer().await;
    let added = shop
        .app
        .post_json_as(
            &customer.access_token,
            "/api/v1/cart/items",
            &json!({"variant_id": last["variants"][0]["id"], "quantity": 1}),
        )
        .await;
    assert_eq!(added.status(), 200);
    let order = shop
        .app
        .post_json_as(
            &customer.access_token,
            "/api/v1/orders",
            &crate::orders::address(),
        )
        .await;
    assert_eq!(order.status(), 201);
    assert_eq!(in_stock().await, ["Plenty Lamp"]);
}
