//! Property tests of what the http layer parses from a client: every request DTO (through
//! [`parse_json`], as the `Json` extractor does), the paging and listing query strings, money
//! amounts, and the pure parsers requests go through after that. Whatever arrives, the answer is a
//! value or a 4xx problem: never a panic, never a 5xx.

use axum::http::Uri;
use axum::response::IntoResponse;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::extract::parse_json;
use super::pagination::{MAX_PER_PAGE, PageParams};
use crate::catalog::listing::ProductQuery;
use crate::catalog::parse_money;
use crate::catalog::products::NewProduct;
use crate::error::AppError;

/// The status a client would see for `error`.
fn status_of(error: AppError) -> u16 {
    error.into_response().status().as_u16()
}

fn assert_client_error(what: &str, error: AppError) -> Result<(), TestCaseError> {
    let status = status_of(error);
    prop_assert!(
        (400..500).contains(&status),
        "{what}: a client's input answered {status}"
    );
    Ok(())
}

/// `body` through the `Json` extractor's parser as `T`: a value or a 4xx.
fn parses_or_4xx<T: DeserializeOwned>(body: &[u8]) -> Result<Option<T>, TestCaseError> {
    match parse_json::<T>(body) {
        Ok(value) => Ok(Some(value)),
        Err(error) => {
            assert_client_error(std::any::type_name::<T>(), error)?;
            Ok(None)
        }
    }
}

/// Every request body the API accepts as JSON.
fn every_dto(body: &[u8]) -> Result<(), TestCaseError> {
    use super::{cart, identity, orders};
    use crate::catalog::{categories, products};
    use crate::promotions::admin;

    parses_or_4xx::<identity::RegisterRequest>(body)?;
    parses_or_4xx::<identity::LoginRequest>(body)?;
    parses_or_4xx::<identity::RefreshRequest>(body)?;
    parses_or_4xx::<identity::ChangeRoleRequest>(body)?;
    parses_or_4xx::<cart::ApplyCoupon>(body)?;
    parses_or_4xx::<cart::AddItem>(body)?;
    parses_or_4xx::<cart::UpdateItem>(body)?;
    parses_or_4xx::<orders::CheckoutRequest>(body)?;
    parses_or_4xx::<orders::PayRequest>(body)?;
    parses_or_4xx::<orders::StatusRequest>(body)?;
    parses_or_4xx::<orders::RefundRequest>(body)?;
    parses_or_4xx::<products::NewProduct>(body)?;
    parses_or_4xx::<products::ProductChanges>(body)?;
    parses_or_4xx::<products::NewVariant>(body)?;
    parses_or_4xx::<products::VariantChanges>(body)?;
    parses_or_4xx::<categories::NewCategory>(body)?;
    parses_or_4xx::<categories::CategoryChanges>(body)?;
    parses_or_4xx::<admin::NewCoupon>(body)?;
    parses_or_4xx::<admin::CouponChanges>(body)?;
    parses_or_4xx::<admin::NewGiftRule>(body)?;
    parses_or_4xx::<admin::GiftRuleChanges>(body)?;
    // A shipping address that deserializes goes on through its own parser.
    if let Some(address) = parses_or_4xx::<crate::orders::ShippingAddress>(body)?
        && let Err(error) = crate::orders::ShippingAddress::parse(address)
    {
        assert_client_error("ShippingAddress::parse", error)?;
    }
    Ok(())
}

/// Field names the DTOs use, so generated objects reach past "unknown field" into the values.
const FIELD_NAMES: &[&str] = &[
    "email",
    "password",
    "name",
    "role",
    "refresh_token",
    "code",
    "variant_id",
    "product_id",
    "quantity",
    "shipping_address",
    "line1",
    "line2",
    "city",
    "postal_code",
    "country",
    "payment_method",
    "status",
    "reason",
    "amount",
    "type",
    "slug",
    "description",
    "category_id",
    "parent_id",
    "brand",
    "sku",
    "barcode",
    "price",
    "compare_at_price",
    "stock",
    "weight_grams",
    "dimensions",
    "length_mm",
    "tags",
    "components",
    "options",
    "kind",
    "value",
    "scope",
    "product_ids",
    "category_ids",
    "min_order_total",
    "starts_at",
    "expires_at",
    "usage_limit",
    "per_customer_limit",
    "active",
    "gift_variant_id",
    "gift_quantity",
    "required_variant_ids",
    "position",
];

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(FIELD_NAMES).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        json_number(),
        any::<String>().prop_map(Value::from),
        // Strings that are nearly something: ids, emails, dates, enum names.
        proptest::sample::select(vec![
            "00000000-0000-0000-0000-000000000000",
            "01900000-0000-7000-8000-000000000000",
            "a@b.co",
            "2026-01-01T00:00:00Z",
            "percent",
            "fixed",
            "order",
            "product",
            "admin",
            "customer",
            "active",
            "simple",
            "bundle",
            "pm_card_visa",
            "",
            " ",
        ])
        .prop_map(Value::from),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(field_name(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_answer_5xx(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        every_dto(&body)?;
    }

    #[test]
    fn arbitrary_json_never_answers_5xx(value in json_value()) {
        every_dto(&serde_json::to_vec(&value).expect("a Value serializes"))?;
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack(
        depth in 0usize..5000,
        object in any::<bool>(),
    ) {
        let (open, close) = if object { ("{\"name\":", "}") } else { ("[", "]") };
        let body = format!("{}1{}", open.repeat(depth), close.repeat(depth));
        every_dto(body.as_bytes())?;
    }

    /// Money is an integer of minor units: an integer literal is that many, in range or refused
    /// with 422; a fraction or an exponent is refused as the wrong type (400), never rounded.
    #[test]
    fn a_price_is_an_exact_integer_or_refused(amount in any::<i64>()) {
        let product: NewProduct = parse_json(json!({"name": "Mug", "price": amount}).to_string().as_bytes())
            .map_err(|error| TestCaseError::fail(format!("{amount}: {error}")))?;
        prop_assert_eq!(product.price, amount);
        match parse_money("price", product.price) {
            Ok(parsed) => prop_assert_eq!(parsed, amount),
            Err(error) => {
                prop_assert!(!(0..=1_000_000_000_000).contains(&amount));
                prop_assert_eq!(error.field, "price");
            }
        }
    }

    /// A number is its value, whatever its spelling (JSON Schema's `integer` is any number with no
    /// fractional part): `1250.0` and `125e1` are 1250. A fraction is refused as the wrong type
    /// (400), never rounded.
    #[test]
    fn a_price_spelled_as_a_float_is_its_whole_value_or_a_400_naming_it(
        whole in any::<i32>(),
        fraction in "[0-9]{1,6}",
        exponent in proptest::option::of(-30i32..30),
    ) {
        let literal = match exponent {
            Some(exponent) => format!("{whole}e{exponent}"),
            None => format!("{whole}.{fraction}"),
        };
        let value: f64 = literal.parse().expect("a float literal");
        let body = format!(r#"{{"price": {literal}, "name": "Mug"}}"#);
        match parse_json::<NewProduct>(body.as_bytes()) {
            Ok(product) => {
                prop_assert!(value.fract() == 0.0, "{literal} accepted as {}", product.price);
                prop_assert_eq!(product.price as f64, value);
            }
            Err(AppError::BadRequest { errors, .. }) => {
                prop_assert!(value.fract() != 0.0 || value.abs() >= 9.007_199_254_740_992e15, "{literal} refused");
                prop_assert_eq!(errors.len(), 1);
                prop_assert_eq!(&errors[0].field, "price");
            }
            Err(other) => prop_assert!(false, "{literal}: {other:?}"),
        }
    }

    #[test]
    fn integers_beyond_64_bits_are_refused_with_4xx(digits in "[1-9][0-9]{19,40}", negative in any::<bool>()) {
        let literal = if negative { format!("-{digits}") } else { digits };
        let body = format!(r#"{{"name": "Mug", "price": {literal}}}"#);
        match parse_json::<NewProduct>(body.as_bytes()) {
            Ok(product) => prop_assert!(false, "{literal} accepted as {}", product.price),
            Err(error) => assert_client_error(&literal, error)?,
        }
    }

    #[test]
    fn any_amount_parses_exactly_when_in_range(amount in any::<i64>()) {
        let in_range = (0..=1_000_000_000_000).contains(&amount);
        prop_assert_eq!(parse_money("price", amount).ok(), in_range.then_some(amount));
    }
}

/// A query string of `pairs`, each key and value percent-encoded.
fn query_of(pairs: &[(String, String)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        query.append_pair(key, value);
    }
    query.finish()
}

fn query_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let key = prop_oneof![
        4 => proptest::sample::select(vec![
            "page", "per_page", "q", "category", "brand", "tags", "min_price", "max_price",
            "in_stock", "status", "sort",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    let value = prop_oneof![
        any::<u32>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "-?[0-9]{0,25}",
        any::<String>(),
    ];
    proptest::collection::vec((key, value), 0..6)
}

/// `query` through the `Query` extractor as `T`: a value or a 400.
fn query_parses_or_400<T: DeserializeOwned>(query: &str) -> Result<Option<T>, TestCaseError> {
    let uri: Uri = format!("/api/v1/products?{query}")
        .parse()
        .map_err(|error| TestCaseError::fail(format!("{query:?} is not a URI: {error}")))?;
    match axum::extract::Query::<T>::try_from_uri(&uri) {
        Ok(axum::extract::Query(value)) => Ok(Some(value)),
        Err(rejection) => {
            prop_assert_eq!(status_of(AppError::from(rejection)), 400, "{}", query);
            Ok(None)
        }
    }
}

fn assert_page_in_bounds(page: &PageParams) -> Result<(), TestCaseError> {
    prop_assert!(page.page() >= 1);
    prop_assert!((1..=MAX_PER_PAGE).contains(&page.per_page()));
    prop_assert!(page.offset() >= 0);
    prop_assert_eq!(
        page.offset(),
        i64::from(page.page() - 1) * i64::from(page.per_page())
    );
    Ok(())
}

proptest! {
    #[test]
    fn any_page_query_parses_into_bounds_or_is_a_400(pairs in query_pairs()) {
        let query = query_of(&pairs);
        if let Some(page) = query_parses_or_400::<PageParams>(&query)? {
            assert_page_in_bounds(&page)?;
        }
        if let Some(listing) = query_parses_or_400::<ProductQuery>(&query)? {
            let normalized = listing.normalized();
            assert_page_in_bounds(&normalized.page_params())?;
        }
    }

    #[test]
    fn raw_query_strings_with_stray_escapes_never_answer_5xx(query in "[a-z_=&%+.0-9A-F-]{0,64}") {
        if let Some(page) = query_parses_or_400::<PageParams>(&query)? {
            assert_page_in_bounds(&page)?;
        }
        query_parses_or_400::<ProductQuery>(&query)?;
    }

    #[test]
    fn any_page_numbers_are_clamped_never_refused(page in proptest::option::of(any::<u32>()), per_page in proptest::option::of(any::<u32>())) {
        let params = PageParams { page, per_page };
        assert_page_in_bounds(&params)?;
        prop_assert_eq!(params.per_page(), per_page.map_or(20, |n| n.clamp(1, MAX_PER_PAGE)));
    }
}
