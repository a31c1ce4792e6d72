//! Product image uploads through the API, stored in the real S3-compatible test server.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbaImage};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::{Session, TestApp, assert_problem};
use crate::media::use_test_s3;

fn png(width: u32, height: u32) -> Vec<u8> {
    let pixels = RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([x as u8, y as u8, 90, 255])
    });
    let mut out = Cursor::new(Vec::new());
    DynamicImage::ImageRgba8(pixels)
        .write_to(&mut out, ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// A PNG whose header claims `width` × `height` pixels, with almost no data behind it.
fn png_header_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = png(1, 1);
    // IHDR data starts at byte 16: width, then height, big-endian; its CRC follows the 13 bytes.
    bytes[16..20].copy_from_slice(&width.to_be_bytes());
    bytes[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

async fn upload(
    app: &TestApp,
    admin: &Session,
    product: &str,
    name: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    let form = Form::new().part(
        "file",
        Part::bytes(bytes)
            .file_name(name.to_owned())
            .mime_str("image/png")
            .unwrap(),
    );
    app.client
        .post(app.url(&format!("/api/v1/products/{product}/images")))
        .bearer_auth(&admin.access_token)
        .multipart(form)
        .send()
        .await
        .unwrap()
}

async fn shop_with_product() -> (TestApp, Session, String) {
    let app = TestApp::spawn_with(use_test_s3, |_| Vec::new()).await;
    let admin = app.login_as_admin().await;
    let product = app
        .created(
            &admin.access_token,
            "/api/v1/products",
            &json!({"name": "Poster", "sku": "POSTER", "price": 900, "status": "active"}),
        )
        .await;
    let id = product["id"].as_str().unwrap().to_owned();
    (app, admin, id)
}

#[tokio::test]
async fn an_uploaded_png_is_served_from_s3_with_the_same_dimensions_until_deleted() {
    let (app, admin, product) = shop_with_product().await;
    let response = upload(&app, &admin, &product, "poster.png", png(64, 48)).await;
    assert_eq!(response.status(), 201);
    let image: Value = response.json().await.unwrap();
    assert_eq!(
        (image["width"].as_i64(), image["height"].as_i64()),
        (Some(64), Some(48))
    );
    assert_eq!(image["position"], 0);
    let url = image["url"].as_str().unwrap().to_owned();
    assert!(url.contains(&format!("products/{product}/")), "{url}");
    assert!(
        !url.contains("poster.png"),
        "the client's file name is never a key"
    );

    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), 200);
    let decoded = image::load_from_memory(&fetched.bytes().await.unwrap()).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (64, 48));

    let detail: Value = app
        .get(&format!("/api/v1/products/{product}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["images"][0]["url"], url.as_str());

    let image_id = image["id"].as_str().unwrap();
    let deleted = app
        .delete_as(
            &admin.access_token,
            &format!("/api/v1/products/{product}/images/{image_id}"),
        )
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        reqwest::get(&url).await.unwrap().status(),
        404,
        "the object is gone too"
    );
    let detail: Value = app
        .get(&format!("/api/v1/products/{product}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(detail["images"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_text_file_named_png_is_415() {
    let (app, admin, product) = shop_with_product().await;
    let response = upload(
        &app,
        &admin,
        &product,
        "x.png",
        b"just some text, honestly".to_vec(),
    )
    .await;
    assert_problem(response, 415).await;
}

#[tokio::test]
async fn a_six_mebibyte_file_is_413() {
    let (app, admin, product) = shop_with_product().await;
    let mut big = png(8, 8);
    big.resize(6 * 1024 * 1024, 0);
    let response = upload(&app, &admin, &product, "big.png", big).await;
    assert_problem(response, 413).await;
}

#[tokio::test]
async fn a_20000_by_20000_header_is_refused_without_decoding() {
    let (app, admin, product) = shop_with_product().await;
    let response = upload(
        &app,
        &admin,
        &product,
        "huge.png",
        png_header_claiming(20_000, 20_000),
    )
    .await;
    let body = assert_problem(response, 422).await;
    assert_eq!(body["errors"][0]["field"], "file");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM product_images")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn readiness_reports_s3() {
    let (app, _admin, _product) = shop_with_product().await;
    let ready: Value = app.get("/health/ready").await.json().await.unwrap();
    assert_eq!(ready["checks"]["s3"], "ok");
}
