//! Product images: checking and cleaning an upload ([`image`]) and keeping it where customers can
//! fetch it ([`store`]). The HTTP routes that accept uploads live in the http layer and call these.

pub mod image;
pub mod store;

pub use self::image::{ImageError, ImageFormat, ProcessedImage, process_image};
pub use self::store::{MEDIA_PATH, MediaError, MediaStore, media_routes};
