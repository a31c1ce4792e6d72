//! Where processed images are kept and how the public reaches them: a local folder served under
//! `/media` (the embedded default) or an S3-compatible bucket, chosen by `storage.backend`.
//!
//! The caller chooses object keys (`products/{product_id}/{uuid}.{ext}`); a client's file name
//! never becomes a key. Keys are checked here all the same, so a bad one can neither escape the
//! local folder nor need escaping in a URL.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use secrecy::ExposeSecret;
use tower_http::services::ServeDir;

use crate::config::{S3Settings, Settings, StorageBackend};

/// The path under which the local backend's files are served.
pub const MEDIA_PATH: &str = "/media";

/// Keys embed a fresh uuid, so an object never changes under its URL: caches may keep it.
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";
const MAX_KEY_BYTES: usize = 512;
/// The region assumed when `s3.region` is unset (S3-compatible servers mostly ignore it).
const DEFAULT_REGION: &str = "us-east-1";

/// Why storing, deleting or checking media failed. The texts never carry credentials.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error(
        "invalid media key {0:?}: keys are relative paths of letters, digits, '-', '_' and '.'"
    )]
    InvalidKey(String),
    #[error("media storage is misconfigured: {0}")]
    Config(String),
    #[error("local media storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("S3 {operation} failed: {reason}")]
    S3 {
        operation: &'static str,
        reason: String,
    },
}

/// The configured media backend. Cloning is cheap (an `Arc`).
#[derive(Clone)]
pub struct MediaStore {
    backend: Arc<Backend>,
}

enum Backend {
    Local { dir: PathBuf },
    S3(S3Store),
}

struct S3Store {
    client: Client,
    bucket: String,
    /// Object URLs are this followed by `/{key}`.
    public_base: String,
}

impl fmt::Debug for MediaStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.backend {
            Backend::Local { dir } => f
                .debug_struct("MediaStore::Local")
                .field("dir", dir)
                .finish(),
            Backend::S3(s3) => f
                .debug_struct("MediaStore::S3")
                .field("bucket", &s3.bucket)
                .field("public_base", &s3.public_base)
                .finish(),
        }
    }
}

impl MediaStore {
    /// Builds the backend `storage.backend` names. The local folder is created if missing; an S3
    /// bucket is created if missing, so this needs the S3 server to answer.
    pub async fn from_settings(settings: &Settings) -> Result<Self, MediaError> {
        let backend = match settings.storage.backend {
            StorageBackend::Local => {
                let dir = settings.storage.local_dir.clone();
                tokio::fs::create_dir_all(&dir).await?;
                Backend::Local { dir }
            }
            StorageBackend::S3 => {
                let s3 = S3Store::connect(&settings.s3)?;
                s3.ensure_bucket().await?;
                Backend::S3(s3)
            }
        };
        Ok(Self {
            backend: Arc::new(backend),
        })
    }

    pub fn backend(&self) -> StorageBackend {
        match &*self.backend {
            Backend::Local { .. } => StorageBackend::Local,
            Backend::S3(_) => StorageBackend::S3,
        }
    }

    /// Stores `bytes` under `key`, replacing any object there, and returns its public URL.
    pub async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<String, MediaError> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local { dir } => write_file_atomically(&dir.join(key), &bytes).await?,
            Backend::S3(s3) => {
                s3.client
                    .put_object()
                    .bucket(&s3.bucket)
                    .key(key)
                    .content_type(content_type)
                    .cache_control(CACHE_CONTROL)
                    .body(ByteStream::from(bytes))
                    .send()
                    .await
                    .map_err(|error| s3_failure("PutObject", error))?;
            }
        }
        Ok(self.public_url(key))
    }

    /// Removes the object under `key`; removing one that is not there succeeds.
    pub async fn delete(&self, key: &str) -> Result<(), MediaError> {
        check_key(key)?;
        match &*self.backend {
            Backend::Local { dir } => match tokio::fs::remove_file(dir.join(key)).await {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
                _ => Ok(()),
            },
            Backend::S3(s3) => {
                let deleted = s3
                    .client
                    .delete_object()
                    .bucket(&s3.bucket)
                    .key(key)
                    .send()
                    .await;
                match deleted {
                    // S3 answers 204 for a missing key; some compatible servers say NoSuchKey.
                    Err(error) if error.code() != Some("NoSuchKey") => {
                        Err(s3_failure("DeleteObject", error))
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// Whether the store can be used now: the folder exists, or the bucket answers. For
    /// `/health/ready`; an S3 check is tried once, without the SDK's retries.
    pub async fn check(&self) -> Result<(), MediaError> {
        match &*self.backend {
            Backend::Local { dir } => {
                if tokio::fs::metadata(dir).await?.is_dir() {
                    Ok(())
                } else {
                    Err(MediaError::Config(format!(
                        "{} is not a directory",
                        dir.display()
                    )))
                }
            }
            Backend::S3(s3) => s3
                .client
                .head_bucket()
                .bucket(&s3.bucket)
                .customize()
                .config_override(
                    aws_sdk_s3::Config::builder().retry_config(RetryConfig::disabled()),
                )
                .send()
                .await
                .map(drop)
                .map_err(|error| s3_failure("HeadBucket", error)),
        }
    }

    /// The URL at which the object under `key` is served (whether or not it exists).
    pub fn public_url(&self, key: &str) -> String {
        match &*self.backend {
            Backend::Local { .. } => format!("{MEDIA_PATH}/{key}"),
            Backend::S3(s3) => format!("{}/{key}", s3.public_base),
        }
    }
}

/// Serves the local backend's folder under [`MEDIA_PATH`]; merge it into the app's router when
/// `storage.backend` is `local`.
pub fn media_routes<S>(dir: impl AsRef<Path>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .nest_service(MEDIA_PATH, ServeDir::new(dir))
        .layer(axum::middleware::map_response(media_headers))
}

async fn media_headers(mut response: Response) -> Response {
    let success = response.status().is_success();
    let headers = response.headers_mut();
    // Uploaded content is never to be reinterpreted as HTML or script by a browser.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if success {
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        );
    }
    response
}

/// Accepts relative keys made of `[A-Za-z0-9._-]` segments separated by single `/`, none of
/// them `.` or `..`: nothing that could leave the folder or need URL encoding.
fn check_key(key: &str) -> Result<(), MediaError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && !key.contains("..")
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if valid {
        Ok(())
    } else {
        Err(MediaError::InvalidKey(key.to_owned()))
    }
}

/// Writes beside the target and renames, so the file server never hands out half an image.
async fn write_file_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await?;
    }
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".{}.partial", uuid::Uuid::new_v4().simple()));
    let partial = PathBuf::from(partial);
    if let Err(error) = tokio::fs::write(&partial, bytes).await {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(error);
    }
    tokio::fs::rename(&partial, path).await
}

impl S3Store {
    fn connect(settings: &S3Settings) -> Result<Self, MediaError> {
        let missing =
            |key: &str| MediaError::Config(format!("storage.backend is s3 but s3.{key} is unset"));
        let endpoint = settings
            .endpoint
            .as_deref()
            .ok_or_else(|| missing("endpoint"))?
            .trim_end_matches('/');
        let bucket = settings.bucket.clone().ok_or_else(|| missing("bucket"))?;
        let access_key_id = settings
            .access_key_id
            .as_deref()
            .ok_or_else(|| missing("access_key_id"))?;
        let secret_access_key = settings
            .secret_access_key
            .as_ref()
            .ok_or_else(|| missing("secret_access_key"))?;
        let region = settings
            .region
            .clone()
            .unwrap_or_else(|| DEFAULT_REGION.into());

        let credentials = Credentials::new(
            access_key_id,
            secret_access_key.expose_secret(),
            None,
            None,
            "shop-settings",
        );
        let config = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(endpoint)
            // Compatible servers (MinIO, s3s, moto) rarely resolve bucket subdomains.
            .force_path_style(true)
            .region(Region::new(region))
            .credentials_provider(credentials)
            // The SDK would otherwise add CRC32 trailers to every upload, which many
            // S3-compatible servers reject; TLS and SigV4 already protect the body in transit.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            )
            .build();
        let public_base = match settings.public_url.as_deref() {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("{endpoint}/{bucket}"),
        };
        Ok(Self {
            client: Client::from_conf(config),
            bucket,
            public_base,
        })
    }

    /// Creates the bucket unless it exists. Safe to run from several instances at once.
    async fn ensure_bucket(&self) -> Result<(), MediaError> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => return Ok(()),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => {}
            Err(error) => return Err(s3_failure("HeadBucket", error)),
        }
        let mut create = self.client.create_bucket().bucket(&self.bucket);
        let region = self.client.config().region().map(|r| r.as_ref().to_owned());
        // AWS wants the region spelled out everywhere but in us-east-1.
        if let Some(region) = region.filter(|region| region != DEFAULT_REGION) {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => Ok(()),
            // Another instance created it between our two calls.
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_bucket_already_owned_by_you()) =>
            {
                Ok(())
            }
            Err(error) => Err(s3_failure("CreateBucket", error)),
        }
    }
}

/// A credential-free description of an SDK failure: the service's error code and HTTP status,
/// or what went wrong on the way there. Server messages are left out (some echo request details).
fn s3_failure<E>(operation: &'static str, error: SdkError<E, HttpResponse>) -> MediaError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let reason = match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            match error.code() {
                Some(code) => format!("{code} (HTTP {status})"),
                // Answers to HEAD requests have no body to carry a code.
                None => format!("HTTP {status}"),
            }
        }
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        // Connection-level causes (refused, DNS, TLS) carry no request content.
        SdkError::DispatchFailure(failure) => match failure.as_connector_error() {
            Some(cause) => causes(cause),
            None => "the request could not be sent".to_owned(),
        },
        SdkError::ResponseError(_) => "the response could not be read".to_owned(),
        SdkError::ConstructionFailure(_) => "the request could not be built".to_owned(),
        _ => "unknown failure".to_owned(),
    };
    MediaError::S3 { operation, reason }
}

/// `error` and its sources, outermost first: "io error: client error (Connect): tcp connect
/// error: Connection refused (os error 111)".
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers often repeat their source's text; say each thing once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_relative_and_plain() {
        for key in ["products/0b6f/1c2d.png", "a.jpg", "products/x_y-z/A.B.webp"] {
            assert!(check_key(key).is_ok(), "{key}");
        }
        for key in [
            "",
            "/etc/passwd",
            "../secret",
            "products/../../x",
            "products/..",
            "a//b",
            "a/./b",
            "a/",
            "a\\b",
            "a b.png",
            "a%2e%2e/b",
            "a?b",
            "ünïcode.png",
        ] {
            assert!(
                matches!(check_key(key), Err(MediaError::InvalidKey(_))),
                "{key:?} accepted"
            );
        }
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn misconfigured_s3_names_the_missing_key_and_no_secret() {
        let settings = S3Settings {
            endpoint: Some("http://127.0.0.1:1".into()),
            bucket: Some("media".into()),
            region: None,
            access_key_id: None,
            secret_access_key: Some("super-secret-value".to_owned().into()),
            public_url: None,
        };
        let error = S3Store::connect(&settings).err().unwrap().to_string();
        assert!(error.contains("s3.access_key_id"), "{error}");
        assert!(!error.contains("super-secret-value"));
    }

    #[test]
    fn public_url_defaults_to_the_bucket_on_the_endpoint() {
        let mut settings = S3Settings {
            endpoint: Some("http://127.0.0.1:9000/".into()),
            bucket: Some("media".into()),
            region: None,
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".to_owned().into()),
            public_url: None,
        };
        let store = S3Store::connect(&settings).unwrap();
        assert_eq!(store.public_base, "http://127.0.0.1:9000/media");
        settings.public_url = Some("https://cdn.example.com/".into());
        let store = S3Store::connect(&settings).unwrap();
        assert_eq!(store.public_base, "https://cdn.example.com");
    }
}
