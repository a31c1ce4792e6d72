//! The media store against a real S3-compatible server (started by `scripts/test`, which sets
//! `SHOP_TEST_S3_*`), and the local folder served under `/media`. Each S3 test has a bucket of
//! its own.

use std::io::Cursor;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use image::{DynamicImage, Rgba, RgbaImage};
use shop::config::{Profile, S3Settings, Settings, StorageBackend};
use shop::media::{MediaError, MediaStore, ProcessedImage, media_routes, process_image};
use tokio::net::TcpListener;
use tower::ServiceExt;
use uuid::Uuid;

/// The S3-compatible server `scripts/test` started.
struct S3Server {
    endpoint: String,
    access_key_id: String,
    secret_access_key: String,
    /// Where objects can be read without a signature (`{public_url}/{bucket}/{key}`); unset
    /// when the endpoint itself serves anonymous reads.
    public_url: Option<String>,
}

fn s3_server() -> S3Server {
    let required = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: the media tests need a real S3-compatible server; \
                 run them with scripts/test, which starts one and sets SHOP_TEST_S3_*"
            )
        })
    };
    S3Server {
        endpoint: required("SHOP_TEST_S3_ENDPOINT"),
        access_key_id: required("SHOP_TEST_S3_ACCESS_KEY_ID"),
        secret_access_key: required("SHOP_TEST_S3_SECRET_ACCESS_KEY"),
        public_url: std::env::var("SHOP_TEST_S3_PUBLIC_URL").ok(),
    }
}

/// The `test` profile with `storage.backend = s3` on `endpoint`, in a fresh bucket.
fn s3_settings(server: &S3Server, endpoint: &str) -> Settings {
    let bucket = format!("shop-test-{}", Uuid::new_v4().simple());
    let mut settings = Settings::load_profile(Profile::Test).expect("the test profile loads");
    settings.storage.backend = StorageBackend::S3;
    settings.s3 = S3Settings {
        endpoint: Some(endpoint.to_owned()),
        public_url: server
            .public_url
            .as_ref()
            .map(|public| format!("{public}/{bucket}")),
        bucket: Some(bucket),
        region: Some("us-east-1".into()),
        access_key_id: Some(server.access_key_id.clone()),
        secret_access_key: Some(server.secret_access_key.clone().into()),
    };
    settings
}

/// Points `settings` at the test S3 server, in a fresh bucket (for API tests of uploads).
pub fn use_test_s3(settings: &mut Settings) {
    let server = s3_server();
    let s3 = s3_settings(&server, &server.endpoint);
    settings.storage = s3.storage;
    settings.s3 = s3.s3;
}

fn product_photo(width: u32, height: u32) -> ProcessedImage {
    let pixels = RgbaImage::from_fn(width, height, |x, y| {
        Rgba([(x * 9) as u8, (y * 4) as u8, 120, 255])
    });
    let mut png = Cursor::new(Vec::new());
    DynamicImage::ImageRgba8(pixels)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    process_image(png.get_ref()).unwrap()
}

fn image_key(image: &ProcessedImage) -> String {
    format!(
        "products/{}/{}.{}",
        Uuid::new_v4(),
        Uuid::new_v4(),
        image.extension()
    )
}

#[tokio::test]
async fn an_image_put_in_s3_is_served_at_its_url_until_deleted() {
    let server = s3_server();
    let settings = s3_settings(&server, &server.endpoint);
    let bucket = settings.s3.bucket.clone().unwrap();
    let store = MediaStore::from_settings(&settings).await.unwrap();
    let photo = product_photo(40, 30);
    let key = image_key(&photo);

    let url = store
        .put(&key, photo.bytes.clone(), photo.content_type())
        .await
        .unwrap();
    let public = server.public_url.as_deref().unwrap_or(&server.endpoint);
    assert_eq!(url, format!("{public}/{bucket}/{key}"));
    assert_eq!(url, store.public_url(&key));

    let client = reqwest::Client::new();
    let served = client.get(&url).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "image/png");
    let body = served.bytes().await.unwrap();
    assert_eq!(body.as_ref(), photo.bytes.as_slice());
    let decoded = image::load_from_memory(&body).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (40, 30));

    store.delete(&key).await.unwrap();
    assert_eq!(client.get(&url).send().await.unwrap().status(), 404);
    // Deleting what is already gone is not an error: a retried request must not fail.
    store.delete(&key).await.unwrap();
}

#[tokio::test]
async fn starting_twice_on_the_same_bucket_is_fine() {
    let server = s3_server();
    let settings = s3_settings(&server, &server.endpoint);
    let first = MediaStore::from_settings(&settings).await.unwrap();
    let photo = product_photo(8, 8);
    let key = image_key(&photo);
    first
        .put(&key, photo.bytes.clone(), photo.content_type())
        .await
        .unwrap();

    // A second instance (or a restart) finds the bucket and its objects in place.
    let second = MediaStore::from_settings(&settings).await.unwrap();
    let url = second.public_url(&key);
    let served = reqwest::get(&url).await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.bytes().await.unwrap().as_ref(),
        photo.bytes.as_slice()
    );
}

#[tokio::test]
async fn readiness_check_follows_the_s3_server() {
    let server = s3_server();
    // The store reaches S3 through a relay the test can take away, as an outage would.
    let relay = TcpRelay::start(&server.endpoint).await;
    let settings = s3_settings(&server, &relay.endpoint);
    let store = MediaStore::from_settings(&settings).await.unwrap();
    store.check().await.unwrap();

    relay.stop().await;
    let error = store.check().await.unwrap_err();
    assert!(matches!(error, MediaError::S3 { .. }), "{error:?}");
    let text = error.to_string();
    assert!(!text.contains(&server.secret_access_key), "{text}");
}

#[tokio::test]
async fn a_store_on_a_closed_port_does_not_start() {
    let server = s3_server();
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let settings = s3_settings(&server, &closed);
    let error = MediaStore::from_settings(&settings).await.unwrap_err();
    assert!(matches!(error, MediaError::S3 { .. }), "{error:?}");
    assert!(!error.to_string().contains(&server.secret_access_key));
}

#[tokio::test]
async fn wrong_credentials_are_refused_without_being_echoed() {
    let mut server = s3_server();
    server.secret_access_key = format!("wrong-{}", Uuid::new_v4().simple());
    let settings = s3_settings(&server, &server.endpoint);
    let error = MediaStore::from_settings(&settings).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, MediaError::S3 { .. }), "{text}");
    assert!(!text.contains(&server.secret_access_key), "{text}");
}

#[tokio::test]
async fn the_local_store_writes_files_that_media_routes_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::load_profile(Profile::Test).unwrap();
    settings.storage.backend = StorageBackend::Local;
    settings.storage.local_dir = dir.path().join("media");
    let store = MediaStore::from_settings(&settings).await.unwrap();
    store.check().await.unwrap();
    let routes = media_routes::<()>(&settings.storage.local_dir);
    let photo = product_photo(12, 7);
    let key = image_key(&photo);

    let url = store
        .put(&key, photo.bytes.clone(), photo.content_type())
        .await
        .unwrap();
    assert_eq!(url, format!("/media/{key}"));
    assert!(settings.storage.local_dir.join(&key).is_file());

    let served = routes
        .clone()
        .oneshot(Request::get(&url).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.headers()["x-content-type-options"], "nosniff");
    let body = axum::body::to_bytes(served.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(body.as_ref(), photo.bytes.as_slice());
    let decoded = image::load_from_memory(&body).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (12, 7));

    store.delete(&key).await.unwrap();
    let gone = routes
        .oneshot(Request::get(&url).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    store.delete(&key).await.unwrap();
}

#[tokio::test]
async fn keys_that_could_escape_the_folder_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::load_profile(Profile::Test).unwrap();
    settings.storage.local_dir = dir.path().join("media");
    let store = MediaStore::from_settings(&settings).await.unwrap();
    for key in [
        "../outside.png",
        "/etc/shop.png",
        "products/../../outside.png",
    ] {
        let refused = store.put(key, b"x".to_vec(), "image/png").await;
        assert!(matches!(refused, Err(MediaError::InvalidKey(_))), "{key}");
        assert!(matches!(
            store.delete(key).await,
            Err(MediaError::InvalidKey(_))
        ));
    }
    assert!(!dir.path().join("outside.png").exists());
}

/// Forwards TCP connections from a port of its own to `target` until stopped; stopping closes
/// the port and every connection through it.
struct TcpRelay {
    endpoint: String,
    task: tokio::task::JoinHandle<()>,
}

impl TcpRelay {
    async fn start(target: &str) -> Self {
        let target = target
            .strip_prefix("http://")
            .expect("an http:// endpoint")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            // Dropped with this task, which aborts every open connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { endpoint, task }
    }

    async fn stop(self) {
        self.task.abort();
        // Waiting for the aborted task means its listener and connections are closed.
        let _ = self.task.await;
    }
}
