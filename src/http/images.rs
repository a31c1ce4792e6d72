//! Product image uploads: `multipart/form-data` with one `file` field, type sniffed from the bytes,
//! re-encoded without metadata, stored under a key the server chooses.

use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::StatusCode;
use tokio::sync::Semaphore;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::catalog::products::ProductImage;
use crate::error::{AppError, Problem};
use crate::http::auth::AdminUser;
use crate::http::extract::Path;
use crate::media::{ImageError, process_image};
use crate::state::AppState;

/// The largest image accepted.
pub const MAX_IMAGE_BYTES: usize = 5 * 1024 * 1024;
/// Room for the multipart framing around the file.
const MULTIPART_OVERHEAD: usize = 64 * 1024;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_image))
        .routes(routes!(delete_image))
        .layer(DefaultBodyLimit::max(MAX_IMAGE_BYTES + MULTIPART_OVERHEAD))
}

/// Decoding may take up to 64 MiB each: at most this many at once.
pub fn decode_permits() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(2))
}

/// The document's view of the multipart body: `file` and nothing else.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ImageUpload {
    /// A JPEG, PNG or WebP image of at most 5 MiB and 8000 × 8000 pixels.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

async fn read_file(multipart: Result<Multipart, MultipartRejection>) -> Result<Vec<u8>, AppError> {
    let mut multipart = multipart.map_err(|_| {
        AppError::UnsupportedMediaType("Expected multipart/form-data with a `file` field.".into())
    })?;
    let too_large = || AppError::PayloadTooLarge("Images are limited to 5 MiB.".into());
    let unreadable = |error: axum::extract::multipart::MultipartError| {
        if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            AppError::bad_request(error.body_text())
        }
    };
    // Exactly one field, `file`: anything else in the form is refused, not ignored.
    let Some(field) = multipart.next_field().await.map_err(unreadable)? else {
        return Err(AppError::invalid("file", "is required"));
    };
    let name = field.name().unwrap_or_default().to_owned();
    if name != "file" {
        return Err(AppError::invalid(name, "is not a known field"));
    }
    let bytes = field.bytes().await.map_err(unreadable)?;
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(too_large());
    }
    if let Some(extra) = multipart.next_field().await.map_err(unreadable)? {
        let name = extra.name().unwrap_or_default().to_owned();
        return Err(AppError::invalid(name, "is not a known field"));
    }
    Ok(bytes.to_vec())
}

/// Upload an image for a product (admin). The type comes from the bytes (JPEG, PNG or WebP, else
/// 415), never from the file name; the image is re-encoded, which strips its metadata.
#[utoipa::path(post, path = "/products/{id}/images", tags = ["catalog", "admin"],
    params(("id" = Uuid, Path)),
    request_body(content = ImageUpload, content_type = "multipart/form-data"),
    security(("bearer" = [])),
    responses((status = 201, body = ProductImage), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 413, body = Problem),
              (status = 415, body = Problem), (status = 422, body = Problem)))]
async fn upload_image(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(product): Path<Uuid>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, axum::Json<ProductImage>), AppError> {
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM products WHERE id = $1)")
        .bind(product)
        .fetch_one(&state.db)
        .await?;
    if !exists {
        return Err(AppError::NotFound);
    }
    let bytes = read_file(multipart).await?;
    let processed = {
        let _permit = state
            .image_decodes
            .acquire()
            .await
            .map_err(|e| AppError::Internal(e.into()))?;
        tokio::task::spawn_blocking(move || process_image(&bytes))
            .await
            .map_err(|e| AppError::Internal(e.into()))?
    }
    .map_err(|error| match error {
        ImageError::UnsupportedType => {
            AppError::UnsupportedMediaType("Only JPEG, PNG and WebP images are accepted.".into())
        }
        ImageError::TooLarge { .. } => AppError::invalid("file", error.to_string()),
        ImageError::Corrupt => AppError::invalid("file", "is not a readable image"),
    })?;

    let id = Uuid::now_v7();
    let key = format!(
        "products/{product}/{}.{}",
        Uuid::new_v4(),
        processed.extension()
    );
    let (width, height, content_type) = (
        processed.width as i32,
        processed.height as i32,
        processed.content_type(),
    );
    let url = state
        .media
        .put(&key, processed.bytes, content_type)
        .await
        .map_err(|e| AppError::Unavailable(format!("storing an image: {e}")))?;
    let image = sqlx::query_as::<_, ProductImage>(
        "INSERT INTO product_images (id, product_id, object_key, url, content_type, width, height, position)
         VALUES ($1, $2, $3, $4, $5, $6, $7,
                 (SELECT coalesce(max(position) + 1, 0) FROM product_images WHERE product_id = $2))
         RETURNING id, product_id, url, position, width, height",
    )
    .bind(id)
    .bind(product)
    .bind(&key)
    .bind(&url)
    .bind(content_type)
    .bind(width)
    .bind(height)
    .fetch_one(&state.db)
    .await;
    let image = match image {
        Ok(image) => image,
        Err(error) => {
            // Do not leave an object nobody points at.
            let _ = state.media.delete(&key).await;
            return Err(error.into());
        }
    };
    state.catalog_changed().await;
    Ok((StatusCode::CREATED, axum::Json(image)))
}

/// Delete a product image (admin), and its stored object.
#[utoipa::path(delete, path = "/products/{id}/images/{image_id}", tags = ["catalog", "admin"],
    params(("id" = Uuid, Path), ("image_id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn delete_image(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path((product, image)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, AppError> {
    let key: Option<String> = sqlx::query_scalar(
        "DELETE FROM product_images WHERE id = $1 AND product_id = $2 RETURNING object_key",
    )
    .bind(image)
    .bind(product)
    .fetch_optional(&state.db)
    .await?;
    let key = key.ok_or(AppError::NotFound)?;
    // The row is gone first: a leftover object is harmless, a row pointing at nothing is not.
    if let Err(error) = state.media.delete(&key).await {
        tracing::warn!(%error, %key, "image row deleted but its object was not");
    }
    state.catalog_changed().await;
    Ok(StatusCode::NO_CONTENT)
}
