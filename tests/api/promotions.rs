//! Promotions, the admin side: coupons and gift rules created, read, listed, updated and
//! deactivated through `/admin`; every invalid field a 422 that writes nothing; a code taken in
//! another case a 409; customers refused; and the cached lookups the cart and checkout use see an
//! admin edit at once (against the real Redis the harness configures).

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Session, TestApp, assert_problem};

const COUPONS: &str = "/api/v1/admin/coupons";
const GIFT_RULES: &str = "/api/v1/admin/gift-rules";

/// An admin with a category holding a product, to aim coupons and gifts at.
struct Shop {
    app: TestApp,
    admin: Session,
    category: String,
    product: String,
    variant: String,
}

impl Shop {
    async fn open() -> Self {
        let app = TestApp::spawn().await;
        let admin = app.login_as_admin().await;
        let category = app
            .created(
                &admin.access_token,
                "/api/v1/categories",
                &json!({"name": "Mugs"}),
            )
            .await;
        let category = category["id"].as_str().unwrap().to_owned();
        let product = app
            .created(
                &admin.access_token,
                "/api/v1/products",
                &json!({"name": "Mug", "sku": "MUG", "price": 1250, "stock": 10,
                        "status": "active", "category_id": category}),
            )
            .await;
        Self {
            variant: product["variants"][0]["id"].as_str().unwrap().to_owned(),
            product: product["id"].as_str().unwrap().to_owned(),
            category,
            admin,
            app,
        }
    }

    fn token(&self) -> &str {
        &self.admin.access_token
    }

    async fn create(&self, path: &str, body: &Value) -> Value {
        self.app.created(self.token(), path, body).await
    }

    async fn get(&self, path: &str) -> Value {
        let response = self.app.get_as(self.token(), path).await;
        ok_json(response, &format!("GET {path}")).await
    }

    async fn patch(&self, path: &str, body: &Value) -> Value {
        let response = self.app.patch_json_as(self.token(), path, body).await;
        ok_json(response, &format!("PATCH {path}")).await
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.app.db)
            .await
            .unwrap()
    }
}

/// The body of a 200, which `request` must have been answered with.
async fn ok_json(response: reqwest::Response, request: &str) -> Value {
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{request}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The path of what was created under `collection`.
fn path_of(collection: &str, created: &Value) -> String {
    format!("{collection}/{}", created["id"].as_str().unwrap())
}

fn spring10() -> Value {
    json!({"code": "SPRING10", "kind": "percent", "value": 10, "scope": "order", "active": true})
}

/// The fields a 422 names, in order.
async fn invalid_fields(response: reqwest::Response) -> Vec<String> {
    let body = assert_problem(response, 422).await;
    body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors in {body}"))
        .iter()
        .map(|error| error["field"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn admins_create_read_list_update_and_deactivate_coupons() {
    let shop = Shop::open().await;
    let order_wide = shop.create(COUPONS, &spring10()).await;
    assert_eq!(order_wide["code"], "SPRING10");
    assert_eq!(order_wide["kind"], "percent");
    assert_eq!(order_wide["value"], 10);
    assert_eq!(order_wide["scope"], "order");
    assert_eq!(order_wide["product_ids"], json!([]));
    assert_eq!(order_wide["usage_limit"], Value::Null);
    assert_eq!(order_wide["active"], true);

    let mugs_off = shop
        .create(
            COUPONS,
            &json!({"code": "mugs_5-off", "kind": "fixed", "value": 500, "scope": "product",
                    "product_ids": [shop.product, shop.product], "category_ids": [shop.category],
                    "min_order_total": 2000, "starts_at": "2026-01-01T00:00:00Z",
                    "expires_at": "2027-01-01T00:00:00Z", "usage_limit": 100,
                    "per_customer_limit": 1, "active": false}),
        )
        .await;
    // The case is kept as given; a repeated id counts once.
    assert_eq!(mugs_off["code"], "mugs_5-off");
    assert_eq!(mugs_off["product_ids"], json!([shop.product]));
    assert_eq!(mugs_off["category_ids"], json!([shop.category]));
    assert_eq!(mugs_off["min_order_total"], 2000);
    assert_eq!(mugs_off["starts_at"], "2026-01-01T00:00:00Z");
    assert_eq!(mugs_off["expires_at"], "2027-01-01T00:00:00Z");
    assert_eq!(
        (&mugs_off["usage_limit"], &mugs_off["per_customer_limit"]),
        (&json!(100), &json!(1))
    );
    assert_eq!(mugs_off["active"], false);

    let path = path_of(COUPONS, &mugs_off);
    assert_eq!(shop.get(&path).await, mugs_off);

    // Newest first, with the total; pages of one.
    let list = shop.get(COUPONS).await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"], json!([mugs_off, order_wide]));
    let second = shop.get(&format!("{COUPONS}?page=2&per_page=1")).await;
    assert_eq!(
        (&second["page"], &second["per_page"], &second["total"]),
        (&json!(2), &json!(1), &json!(2))
    );
    assert_eq!(second["items"], json!([order_wide]));

    // PATCH changes what it names and nothing else; `null` clears an optional field.
    let patched = shop
        .patch(
            &path,
            &json!({"value": 750, "usage_limit": null, "active": true}),
        )
        .await;
    assert_eq!(patched["value"], 750);
    assert_eq!(patched["usage_limit"], Value::Null);
    assert_eq!(patched["active"], true);
    for unchanged in [
        "code",
        "kind",
        "scope",
        "product_ids",
        "category_ids",
        "min_order_total",
        "starts_at",
        "expires_at",
        "per_customer_limit",
        "created_at",
    ] {
        assert_eq!(patched[unchanged], mugs_off[unchanged], "{unchanged}");
    }
    assert_eq!(shop.get(&path).await, patched);

    // An order-wide coupon becomes a product coupon when it names what it applies to.
    let order_path = path_of(COUPONS, &order_wide);
    let narrowed = shop
        .patch(
            &order_path,
            &json!({"scope": "product", "category_ids": [shop.category]}),
        )
        .await;
    assert_eq!(narrowed["scope"], "product");
    assert_eq!(narrowed["category_ids"], json!([shop.category]));

    // DELETE deactivates: the coupon is still there, inactive, and a repeat is harmless.
    let deleted = shop.app.delete_as(shop.token(), &path).await;
    assert_eq!(deleted.status(), 204);
    let deactivated = shop.get(&path).await;
    assert_eq!(deactivated["active"], false);
    assert_eq!(deactivated["value"], 750);
    assert_eq!(shop.app.delete_as(shop.token(), &path).await.status(), 204);
    assert_eq!(shop.count("coupons").await, 2);

    // Unknown ids are 404, malformed ones 400.
    let nobody = format!("{COUPONS}/{}", Uuid::now_v7());
    assert_problem(shop.app.get_as(shop.token(), &nobody).await, 404).await;
    assert_problem(
        shop.app
            .patch_json_as(shop.token(), &nobody, &json!({"value": 5}))
            .await,
        404,
    )
    .await;
    assert_problem(shop.app.delete_as(shop.token(), &nobody).await, 404).await;
    assert_problem(
        shop.app
            .get_as(shop.token(), &format!("{COUPONS}/not-a-uuid"))
            .await,
        404,
    )
    .await;
}

#[tokio::test]
async fn each_invalid_coupon_is_a_422_naming_the_field_and_writes_nothing() {
    let shop = Shop::open().await;
    let nowhere = Uuid::now_v7().to_string();
    let with = |changes: Value| {
        let mut body = spring10();
        for (key, value) in changes.as_object().unwrap() {
            if value == &json!("<absent>") {
                body.as_object_mut().unwrap().remove(key);
            } else {
                body[key] = value.clone();
            }
        }
        body
    };
    let cases = [
        (json!({"value": 0}), vec!["value"]),
        (json!({"value": 101}), vec!["value"]),
        (json!({"kind": "fixed", "value": 0}), vec!["value"]),
        (json!({"kind": "fixed", "value": -100}), vec!["value"]),
        (
            json!({"starts_at": "2026-06-01T00:00:00Z", "expires_at": "2026-05-01T00:00:00Z"}),
            vec!["expires_at"],
        ),
        (
            json!({"starts_at": "2026-06-01T00:00:00Z", "expires_at": "2026-06-01T00:00:00Z"}),
            vec!["expires_at"],
        ),
        (json!({"code": "AB"}), vec!["code"]),
        (json!({"code": "X".repeat(33)}), vec!["code"]),
        (json!({"code": "TEN OFF"}), vec!["code"]),
        (json!({"code": "10%OFF"}), vec!["code"]),
        (json!({"code": "ÉTÉ10"}), vec!["code"]),
        (json!({"scope": "product"}), vec!["product_ids"]),
        (
            json!({"scope": "product", "product_ids": [shop.product, nowhere]}),
            vec!["product_ids[1]"],
        ),
        (
            json!({"scope": "product", "category_ids": [nowhere]}),
            vec!["category_ids[0]"],
        ),
        (json!({"product_ids": [shop.product]}), vec!["product_ids"]),
        (json!({"usage_limit": 0}), vec!["usage_limit"]),
        (
            json!({"per_customer_limit": -1}),
            vec!["per_customer_limit"],
        ),
        (json!({"min_order_total": -1}), vec!["min_order_total"]),
        // Parsed, never defaulted: unknown strings, unknown fields and missing fields.
        (json!({"kind": "bogo"}), vec!["kind"]),
        (json!({"scope": "cart"}), vec!["scope"]),
        (json!({"discount": 5}), vec!["discount"]),
        (json!({"active": "<absent>"}), vec!["active"]),
        // Every failing field at once.
        (
            json!({"code": "x", "value": 500, "usage_limit": 0, "min_order_total": -5}),
            vec!["code", "value", "min_order_total", "usage_limit"],
        ),
    ];
    for (changes, fields) in cases {
        let body = with(changes.clone());
        let response = shop.app.post_json_as(shop.token(), COUPONS, &body).await;
        assert_eq!(invalid_fields(response).await, fields, "{changes}");
    }
    assert_eq!(
        shop.count("coupons").await,
        0,
        "an invalid coupon was written"
    );

    // The same rules hold for the result of a PATCH, which then changes nothing.
    let coupon = shop
        .create(COUPONS, &with(json!({"kind": "fixed", "value": 2500})))
        .await;
    let path = path_of(COUPONS, &coupon);
    let patches = [
        // A fixed 25.00 cannot become 2500 percent.
        (json!({"kind": "percent"}), vec!["value"]),
        (json!({"value": 0}), vec!["value"]),
        (json!({"code": "no"}), vec!["code"]),
        (json!({"scope": "product"}), vec!["product_ids"]),
        (
            json!({"scope": "product", "product_ids": [nowhere]}),
            vec!["product_ids[0]"],
        ),
        (
            json!({"starts_at": "2026-06-01T00:00:00Z", "expires_at": "2026-01-01T00:00:00Z"}),
            vec!["expires_at"],
        ),
        (json!({"per_customer_limit": 0}), vec!["per_customer_limit"]),
        (json!({"active": null}), vec!["active"]),
        (json!({"code": null}), vec!["code"]),
        (json!({"id": Uuid::now_v7()}), vec!["id"]),
    ];
    for (patch, fields) in patches {
        let response = shop.app.patch_json_as(shop.token(), &path, &patch).await;
        assert_eq!(invalid_fields(response).await, fields, "{patch}");
    }
    assert_eq!(
        shop.get(&path).await,
        coupon,
        "an invalid PATCH changed the coupon"
    );
}

#[tokio::test]
async fn a_code_taken_in_another_case_is_a_409() {
    let shop = Shop::open().await;
    shop.create(COUPONS, &spring10()).await;
    let mut again = spring10();
    again["code"] = json!("spring10");
    let refused = shop.app.post_json_as(shop.token(), COUPONS, &again).await;
    let problem = assert_problem(refused, 409).await;
    assert_eq!(problem["type"], "/problems/code-taken");
    assert_eq!(shop.count("coupons").await, 1);

    // Renaming another coupon onto it is refused too, and changes nothing.
    let mut other = spring10();
    other["code"] = json!("SUMMER");
    let summer = shop.create(COUPONS, &other).await;
    let path = path_of(COUPONS, &summer);
    let renamed = shop
        .app
        .patch_json_as(shop.token(), &path, &json!({"code": "Spring10"}))
        .await;
    assert_problem(renamed, 409).await;
    assert_eq!(shop.get(&path).await, summer);
    // Its own code in another case is no clash.
    let recased = shop.patch(&path, &json!({"code": "summer"})).await;
    assert_eq!(recased["code"], "summer");
}

#[tokio::test]
async fn admins_create_list_update_and_deactivate_gift_rules() {
    let shop = Shop::open().await;
    let tote = shop
        .app
        .created(
            shop.token(),
            "/api/v1/products",
            &json!({"name": "Tote", "sku": "TOTE", "price": 900, "stock": 5, "status": "active"}),
        )
        .await;
    let tote_variant = tote["variants"][0]["id"].as_str().unwrap().to_owned();

    let over_50 = shop
        .create(
            GIFT_RULES,
            &json!({"name": "Free tote over 50.00", "gift_variant_id": tote_variant,
                    "gift_quantity": 1, "min_order_total": 5000, "active": true}),
        )
        .await;
    assert_eq!(over_50["gift_variant_id"], tote_variant);
    assert_eq!(over_50["required_variant_ids"], json!([]));
    assert_eq!(over_50["starts_at"], Value::Null);
    let with_mug = shop
        .create(
            GIFT_RULES,
            &json!({"name": "Two totes with a mug", "gift_variant_id": tote_variant,
                    "gift_quantity": 2, "required_variant_ids": [shop.variant],
                    "starts_at": "2026-01-01T00:00:00Z", "expires_at": "2026-12-31T00:00:00Z",
                    "active": false}),
        )
        .await;
    assert_eq!(with_mug["required_variant_ids"], json!([shop.variant]));
    assert_eq!(with_mug["gift_quantity"], 2);
    assert_eq!(with_mug["active"], false);

    let list = shop.get(GIFT_RULES).await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"], json!([with_mug, over_50]));

    let path = path_of(GIFT_RULES, &over_50);
    let patched = shop
        .patch(&path, &json!({"gift_quantity": 3, "min_order_total": null}))
        .await;
    assert_eq!(patched["gift_quantity"], 3);
    assert_eq!(patched["min_order_total"], Value::Null);
    for unchanged in ["name", "gift_variant_id", "required_variant_ids", "active"] {
        assert_eq!(patched[unchanged], over_50[unchanged], "{unchanged}");
    }

    assert_eq!(shop.app.delete_as(shop.token(), &path).await.status(), 204);
    let list = shop.get(GIFT_RULES).await;
    assert_eq!(
        list["total"], 2,
        "a deleted rule is deactivated, not removed"
    );
    assert_eq!(list["items"][1]["active"], false);
    assert_eq!(list["items"][1]["gift_quantity"], 3);

    let nobody = format!("{GIFT_RULES}/{}", Uuid::now_v7());
    assert_problem(
        shop.app
            .patch_json_as(shop.token(), &nobody, &json!({"gift_quantity": 1}))
            .await,
        404,
    )
    .await;
    assert_problem(shop.app.delete_as(shop.token(), &nobody).await, 404).await;
}

#[tokio::test]
async fn each_invalid_gift_rule_is_a_422_naming_the_field_and_writes_nothing() {
    let shop = Shop::open().await;
    let nowhere = Uuid::now_v7().to_string();
    let valid = json!({"name": "Free mug", "gift_variant_id": shop.variant, "gift_quantity": 1,
                       "active": true});
    let with = |changes: Value| {
        let mut body = valid.clone();
        for (key, value) in changes.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let cases = [
        (json!({"gift_quantity": 0}), vec!["gift_quantity"]),
        (json!({"gift_quantity": 100}), vec!["gift_quantity"]),
        (json!({"gift_variant_id": nowhere}), vec!["gift_variant_id"]),
        (
            json!({"required_variant_ids": [shop.variant, nowhere]}),
            vec!["required_variant_ids[1]"],
        ),
        (json!({"name": "   "}), vec!["name"]),
        (json!({"name": "x".repeat(201)}), vec!["name"]),
        (json!({"min_order_total": -1}), vec!["min_order_total"]),
        (
            json!({"starts_at": "2026-06-01T00:00:00Z", "expires_at": "2026-06-01T00:00:00Z"}),
            vec!["expires_at"],
        ),
        (
            json!({"gift_product_id": shop.product}),
            vec!["gift_product_id"],
        ),
    ];
    for (changes, fields) in cases {
        let response = shop
            .app
            .post_json_as(shop.token(), GIFT_RULES, &with(changes.clone()))
            .await;
        assert_eq!(invalid_fields(response).await, fields, "{changes}");
    }
    assert_eq!(
        shop.count("gift_rules").await,
        0,
        "an invalid rule was written"
    );

    let rule = shop.create(GIFT_RULES, &valid).await;
    let path = path_of(GIFT_RULES, &rule);
    for (patch, fields) in [
        (json!({"gift_quantity": 0}), vec!["gift_quantity"]),
        (json!({"gift_variant_id": nowhere}), vec!["gift_variant_id"]),
        (
            json!({"required_variant_ids": [nowhere]}),
            vec!["required_variant_ids[0]"],
        ),
        (json!({"name": null}), vec!["name"]),
    ] {
        let response = shop.app.patch_json_as(shop.token(), &path, &patch).await;
        assert_eq!(invalid_fields(response).await, fields, "{patch}");
    }
    let list = shop.get(GIFT_RULES).await;
    assert_eq!(
        list["items"],
        json!([rule]),
        "an invalid PATCH changed the rule"
    );
}

#[tokio::test]
async fn customers_get_403_and_anonymous_callers_401_on_every_promotion_route() {
    let shop = Shop::open().await;
    let customer = shop.app.login_as_customer().await;
    let coupon = format!("{COUPONS}/{}", Uuid::now_v7());
    let rule = format!("{GIFT_RULES}/{}", Uuid::now_v7());
    let routes = [
        ("GET", COUPONS.to_owned()),
        ("POST", COUPONS.to_owned()),
        ("GET", coupon.clone()),
        ("PATCH", coupon.clone()),
        ("DELETE", coupon),
        ("GET", GIFT_RULES.to_owned()),
        ("POST", GIFT_RULES.to_owned()),
        ("PATCH", rule.clone()),
        ("DELETE", rule),
    ];
    for (method, path) in routes {
        let request = || {
            shop.app
                .client
                .request(method.parse().unwrap(), shop.app.url(&path))
                .json(&spring10())
        };
        let as_customer = request()
            .bearer_auth(&customer.access_token)
            .send()
            .await
            .unwrap();
        assert_problem(as_customer, 403).await;
        assert_problem(request().send().await.unwrap(), 401).await;
    }
    assert_eq!(shop.count("coupons").await, 0);
}

/// Changes a coupon behind the admin's back, so a lookup that still sees the old value proves it
/// was served from the cache.
async fn set_value_behind_the_cache(app: &TestApp, id: &str, value: i64) {
    sqlx::query("UPDATE coupons SET value = $2 WHERE id = $1")
        .bind(id.parse::<Uuid>().unwrap())
        .bind(value)
        .execute(&app.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn cached_coupon_lookups_see_every_admin_edit_at_once() {
    use shop::promotions::lookup::coupon_by_code;

    let shop = Shop::open().await;
    let state = &shop.app.state;
    assert_eq!(state.cache.backend_name(), "redis");

    // Not there yet, and that answer is cached: creating the coupon must invalidate it.
    assert_eq!(coupon_by_code(state, "SPRING10").await.unwrap(), None);
    let created = shop.create(COUPONS, &spring10()).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let found = coupon_by_code(state, "spring10").await.unwrap().unwrap();
    assert_eq!(found.id.to_string(), id);
    assert_eq!(found.value, 10);
    assert!(found.active);
    assert_eq!(
        coupon_by_code(state, "Spring10")
            .await
            .unwrap()
            .map(|c| c.id),
        Some(found.id),
        "codes are found in any case"
    );

    // Served from the cache: a change made around the admin routes is not seen...
    set_value_behind_the_cache(&shop.app, &id, 11).await;
    let cached = coupon_by_code(state, "SPRING10").await.unwrap().unwrap();
    assert_eq!(cached.value, 10, "the lookup is not cached");

    // ...but every admin edit is, at once.
    let path = format!("{COUPONS}/{id}");
    shop.patch(&path, &json!({"value": 20})).await;
    let edited = coupon_by_code(state, "SPRING10").await.unwrap().unwrap();
    assert_eq!(edited.value, 20);

    assert_eq!(shop.app.delete_as(shop.token(), &path).await.status(), 204);
    let deactivated = coupon_by_code(state, "SPRING10").await.unwrap().unwrap();
    assert!(!deactivated.active);

    shop.patch(&path, &json!({"code": "SUMMER20", "active": true}))
        .await;
    assert_eq!(coupon_by_code(state, "SPRING10").await.unwrap(), None);
    let renamed = coupon_by_code(state, "summer20").await.unwrap().unwrap();
    assert!(renamed.active);

    // A string that cannot be a code finds nothing (and reaches neither cache nor database).
    assert_eq!(coupon_by_code(state, "summer 20").await.unwrap(), None);
}

#[tokio::test]
async fn cached_gift_rule_lookups_see_every_admin_edit_at_once() {
    use shop::promotions::lookup::active_gift_rules;

    let shop = Shop::open().await;
    let state = &shop.app.state;
    assert_eq!(state.cache.backend_name(), "redis");

    assert!(active_gift_rules(state).await.unwrap().is_empty());
    let rule = shop
        .create(
            GIFT_RULES,
            &json!({"name": "Free mug", "gift_variant_id": shop.variant, "gift_quantity": 1,
                    "active": true}),
        )
        .await;
    let id: Uuid = rule["id"].as_str().unwrap().parse().unwrap();
    let active = active_gift_rules(state).await.unwrap();
    assert_eq!(active.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id]);

    // Served from the cache: a change made around the admin routes is not seen...
    sqlx::query("UPDATE gift_rules SET gift_quantity = 7 WHERE id = $1")
        .bind(id)
        .execute(&shop.app.db)
        .await
        .unwrap();
    assert_eq!(active_gift_rules(state).await.unwrap()[0].gift_quantity, 1);

    // ...but every admin edit is, at once.
    let path = format!("{GIFT_RULES}/{id}");
    shop.patch(&path, &json!({"gift_quantity": 2})).await;
    assert_eq!(active_gift_rules(state).await.unwrap()[0].gift_quantity, 2);
    assert_eq!(shop.app.delete_as(shop.token(), &path).await.status(), 204);
    assert!(active_gift_rules(state).await.unwrap().is_empty());

    // A coupon edit invalidates the gift rules too (one promotions version), and a catalog
    // edit leaves them cached.
    shop.patch(&path, &json!({"active": true})).await;
    assert_eq!(active_gift_rules(state).await.unwrap().len(), 1);
    sqlx::query("UPDATE gift_rules SET gift_quantity = 9 WHERE id = $1")
        .bind(id)
        .execute(&shop.app.db)
        .await
        .unwrap();
    shop.patch(
        &format!("/api/v1/products/{}", shop.product),
        &json!({"name": "Big mug"}),
    )
    .await;
    assert_eq!(
        active_gift_rules(state).await.unwrap()[0].gift_quantity,
        2,
        "a catalog edit invalidated the promotions"
    );
    shop.create(COUPONS, &spring10()).await;
    assert_eq!(active_gift_rules(state).await.unwrap()[0].gift_quantity, 9);
}
