//! Uploaded product images: the type is read from the bytes, the size is checked from the header
//! before any pixel is decoded, and the image is decoded and re-encoded in its own format so that
//! nothing but pixels (and the colour profile) leaves: EXIF (camera, GPS), text chunks and any
//! trailing payload are dropped.
//!
//! [`process_image`] is CPU-bound and synchronous: call it inside `spawn_blocking`.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageReader, Limits};

/// The formats the shop accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    WebP,
}

impl ImageFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::WebP => "image/webp",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Jpeg => "jpg",
            Self::Png => "png",
            Self::WebP => "webp",
        }
    }

    fn from_image_format(format: image::ImageFormat) -> Option<Self> {
        match format {
            image::ImageFormat::Jpeg => Some(Self::Jpeg),
            image::ImageFormat::Png => Some(Self::Png),
            image::ImageFormat::WebP => Some(Self::WebP),
            _ => None,
        }
    }

    fn to_image_format(self) -> image::ImageFormat {
        match self {
            Self::Jpeg => image::ImageFormat::Jpeg,
            Self::Png => image::ImageFormat::Png,
            Self::WebP => image::ImageFormat::WebP,
        }
    }
}

/// An image ready to store: re-encoded, without metadata.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
}

impl ProcessedImage {
    pub fn content_type(&self) -> &'static str {
        self.format.content_type()
    }

    /// The file extension for the object key: `jpg`, `png` or `webp`.
    pub fn extension(&self) -> &'static str {
        self.format.extension()
    }
}

/// Why an upload is not a usable image. The texts are safe to show to the uploader.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a JPEG, PNG or WebP (judged by the bytes), or a variant of one the decoder cannot read.
    #[error("the file is not a JPEG, PNG or WebP image")]
    UnsupportedType,
    /// Larger than [`MAX_DIMENSION`] on a side, or too many pixels to decode within
    /// [`MAX_DECODE_BYTES`].
    #[error(
        "the image is {width} × {height} pixels; at most {MAX_DIMENSION} × {MAX_DIMENSION} is accepted"
    )]
    TooLarge { width: u32, height: u32 },
    #[error("the image data is corrupt")]
    Corrupt,
}

/// The largest width or height accepted.
pub const MAX_DIMENSION: u32 = 8000;
/// The most memory the decoder may allocate for one image (pixels and metadata).
pub const MAX_DECODE_BYTES: u64 = 64 * 1024 * 1024;
/// JPEG is lossy: re-encoding costs a generation; 90 keeps it invisible for product photos.
const JPEG_QUALITY: u8 = 90;

/// Checks, decodes and re-encodes an uploaded image.
pub fn process_image(bytes: &[u8]) -> Result<ProcessedImage, ImageError> {
    let format = image::guess_format(bytes)
        .ok()
        .and_then(ImageFormat::from_image_format)
        .ok_or(ImageError::UnsupportedType)?;

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.to_image_format());
    reader.limits(decoder_limits());
    // Reads the header (and metadata) only; the pixel buffer is allocated by `from_decoder`.
    let mut decoder = reader.into_decoder().map_err(header_error)?;
    let (width, height) = decoder.dimensions();
    if width > MAX_DIMENSION || height > MAX_DIMENSION {
        return Err(ImageError::TooLarge { width, height });
    }
    // `into_decoder` checks the limits but does not count the pixel buffer against them;
    // `ImageReader::decode` would, but it hides the decoder we need for orientation and profile.
    decoder_limits()
        .reserve(decoder.total_bytes())
        .map_err(|_| ImageError::TooLarge { width, height })?;

    // A profile that cannot be read is dropped with the rest of the metadata.
    let icc_profile = decoder.icc_profile().ok().flatten();
    // Phones store photos sideways and say so in EXIF; that tag goes, so the rotation is applied.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|error| match error {
        image::ImageError::Limits(_) => ImageError::TooLarge { width, height },
        image::ImageError::Unsupported(_) => ImageError::UnsupportedType,
        _ => ImageError::Corrupt,
    })?;
    image.apply_orientation(orientation);

    let bytes = encode(&image, format, icc_profile)?;
    Ok(ProcessedImage {
        bytes,
        format,
        width: image.width(),
        height: image.height(),
    })
}

fn decoder_limits() -> Limits {
    // Dimensions are checked by hand from the header so the error can name them.
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

fn header_error(error: image::ImageError) -> ImageError {
    match error {
        image::ImageError::Unsupported(_) => ImageError::UnsupportedType,
        // Only metadata is read at this point; more than the cap of it is not a real image.
        _ => ImageError::Corrupt,
    }
}

/// Writes `image` in `format` with nothing but the pixels and, where the format keeps one, the
/// colour profile (without it, wide-gamut photos would shift colour).
fn encode(
    image: &DynamicImage,
    format: ImageFormat,
    icc_profile: Option<Vec<u8>>,
) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let written = match format {
        ImageFormat::Jpeg => {
            let mut encoder = JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY);
            with_profile(&mut encoder, icc_profile);
            image.write_with_encoder(encoder)
        }
        ImageFormat::Png => {
            let mut encoder = PngEncoder::new_with_quality(
                &mut out,
                CompressionType::Default,
                FilterType::Adaptive,
            );
            with_profile(&mut encoder, icc_profile);
            image.write_with_encoder(encoder)
        }
        // The `image` crate encodes WebP losslessly only (and keeps no profile): larger files,
        // no generation loss.
        ImageFormat::WebP => image.write_with_encoder(WebPEncoder::new_lossless(&mut out)),
    };
    // Every decoded colour type can be written back (the encoder converts what it must), so a
    // failure here means the decoded data was unusable.
    written.map_err(|_| ImageError::Corrupt)?;
    Ok(out)
}

fn with_profile(encoder: &mut impl ImageEncoder, icc_profile: Option<Vec<u8>>) {
    if let Some(profile) = icc_profile {
        // Formats without profile support say so; the image is still right in sRGB viewers.
        let _ = encoder.set_icc_profile(profile);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use image::{Rgb, RgbImage, Rgba, RgbaImage};

    use super::*;

    const SECRET: &[u8] = b"GPS 48.8584 N 2.2945 E";

    fn gradient(width: u32, height: u32) -> RgbaImage {
        RgbaImage::from_fn(width, height, |x, y| {
            Rgba([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8, 255])
        })
    }

    fn encoded(format: image::ImageFormat, width: u32, height: u32) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        let image = DynamicImage::ImageRgba8(gradient(width, height));
        // JPEG has no alpha channel.
        let image = if format == image::ImageFormat::Jpeg {
            DynamicImage::ImageRgb8(image.to_rgb8())
        } else {
            image
        };
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    /// CRC-32 (ISO-HDLC), as PNG chunks carry it.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(kind);
        chunk.extend_from_slice(data);
        let crc = crc32(&chunk[4..]);
        chunk.extend_from_slice(&crc.to_be_bytes());
        chunk
    }

    /// A PNG with `chunk` inserted right after IHDR (8-byte signature + 25-byte IHDR chunk).
    fn png_with_chunk(png: &[u8], chunk: &[u8]) -> Vec<u8> {
        let mut out = png[..33].to_vec();
        out.extend_from_slice(chunk);
        out.extend_from_slice(&png[33..]);
        out
    }

    /// A big-endian TIFF/EXIF block with one Orientation entry and a maker note carrying `SECRET`.
    fn exif(orientation: u16) -> Vec<u8> {
        let mut exif = b"MM\0\x2a\0\0\0\x08".to_vec();
        exif.extend_from_slice(&2u16.to_be_bytes()); // entries
        // Orientation: SHORT, count 1, value in the first two bytes of the field.
        exif.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1]);
        exif.extend_from_slice(&orientation.to_be_bytes());
        exif.extend_from_slice(&[0, 0]);
        // ImageDescription: ASCII, stored after the IFD.
        let offset = 8 + 2 + 2 * 12 + 4;
        exif.extend_from_slice(&[0x01, 0x0e, 0, 2]);
        exif.extend_from_slice(&(SECRET.len() as u32).to_be_bytes());
        exif.extend_from_slice(&(offset as u32).to_be_bytes());
        exif.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        exif.extend_from_slice(SECRET);
        exif
    }

    #[test]
    fn each_format_round_trips_with_its_dimensions() {
        for (format, expected) in [
            (image::ImageFormat::Jpeg, ImageFormat::Jpeg),
            (image::ImageFormat::Png, ImageFormat::Png),
            (image::ImageFormat::WebP, ImageFormat::WebP),
        ] {
            let processed = process_image(&encoded(format, 64, 40)).unwrap();
            assert_eq!(processed.format, expected);
            assert_eq!((processed.width, processed.height), (64, 40), "{format:?}");
            let decoded = image::load_from_memory(&processed.bytes).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (64, 40), "{format:?}");
            assert_eq!(image::guess_format(&processed.bytes).unwrap(), format);
        }
    }

    #[test]
    fn content_type_and_extension_follow_the_format() {
        let processed = process_image(&encoded(image::ImageFormat::Jpeg, 8, 8)).unwrap();
        assert_eq!(processed.content_type(), "image/jpeg");
        assert_eq!(processed.extension(), "jpg");
        let processed = process_image(&encoded(image::ImageFormat::Png, 8, 8)).unwrap();
        assert_eq!(
            (processed.content_type(), processed.extension()),
            ("image/png", "png")
        );
        let processed = process_image(&encoded(image::ImageFormat::WebP, 8, 8)).unwrap();
        assert_eq!(
            (processed.content_type(), processed.extension()),
            ("image/webp", "webp")
        );
    }

    #[test]
    fn png_text_and_exif_chunks_are_stripped() {
        let plain = encoded(image::ImageFormat::Png, 16, 16);
        let mut text = b"Comment\0".to_vec();
        text.extend_from_slice(SECRET);
        let with_text = png_with_chunk(&plain, &png_chunk(b"tEXt", &text));
        let upload = png_with_chunk(&with_text, &png_chunk(b"eXIf", &exif(1)));
        // The chunks are well formed: the decoder reads past them.
        assert!(image::load_from_memory(&upload).is_ok());
        assert!(contains(&upload, b"tEXt") && contains(&upload, b"eXIf"));

        let processed = process_image(&upload).unwrap();
        assert!(!contains(&processed.bytes, b"tEXt"));
        assert!(!contains(&processed.bytes, b"eXIf"));
        assert!(!contains(&processed.bytes, SECRET));
        assert_eq!((processed.width, processed.height), (16, 16));
    }

    #[test]
    fn jpeg_exif_is_stripped_and_its_orientation_applied() {
        let image = RgbImage::from_pixel(30, 20, Rgb([200, 100, 50]));
        let mut upload = Vec::new();
        let mut encoder = JpegEncoder::new_with_quality(&mut upload, 90);
        // 6 = the camera was held rotated 90° clockwise.
        encoder.set_exif_metadata(exif(6)).unwrap();
        encoder
            .write_image(image.as_raw(), 30, 20, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert!(contains(&upload, b"Exif\0\0") && contains(&upload, SECRET));

        let processed = process_image(&upload).unwrap();
        assert!(!contains(&processed.bytes, b"Exif"));
        assert!(!contains(&processed.bytes, SECRET));
        assert_eq!((processed.width, processed.height), (20, 30));
    }

    #[test]
    fn trailing_bytes_after_the_image_are_dropped() {
        let mut upload = encoded(image::ImageFormat::Png, 8, 8);
        upload.extend_from_slice(SECRET);
        let processed = process_image(&upload).unwrap();
        assert!(!contains(&processed.bytes, SECRET));
    }

    #[test]
    fn text_named_png_is_not_an_image() {
        // The name plays no part: only bytes reach process_image.
        assert!(matches!(
            process_image(b"just some text, saved as x.png"),
            Err(ImageError::UnsupportedType)
        ));
        assert!(matches!(
            process_image(b""),
            Err(ImageError::UnsupportedType)
        ));
    }

    #[test]
    fn other_image_formats_are_unsupported() {
        // GIF is an image, but not one the shop accepts.
        assert!(matches!(
            process_image(b"GIF89a\x01\0\x01\0\0\0\0;"),
            Err(ImageError::UnsupportedType)
        ));
    }

    #[test]
    fn a_huge_header_is_rejected_before_decoding() {
        // A real 1 × 1 PNG whose IHDR claims 20000 × 20000: decoding would need 1.6 GB.
        let mut upload = encoded(image::ImageFormat::Png, 1, 1);
        upload[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        upload[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let crc = crc32(&upload[12..29]);
        upload[29..33].copy_from_slice(&crc.to_be_bytes());

        let started = Instant::now();
        let result = process_image(&upload);
        assert!(
            matches!(
                result,
                Err(ImageError::TooLarge {
                    width: 20_000,
                    height: 20_000
                })
            ),
            "{result:?}"
        );
        // The answer comes from the 33-byte header: no time to allocate or fill 1.6 GB.
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn within_dimensions_but_over_the_memory_cap_is_too_large() {
        // 5000 × 5000 RGBA needs 100 MB of pixels, more than the decoder may allocate.
        let mut upload = encoded(image::ImageFormat::Png, 1, 1);
        upload[16..20].copy_from_slice(&5_000u32.to_be_bytes());
        upload[20..24].copy_from_slice(&5_000u32.to_be_bytes());
        let crc = crc32(&upload[12..29]);
        upload[29..33].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            process_image(&upload),
            Err(ImageError::TooLarge {
                width: 5_000,
                height: 5_000
            })
        ));
    }

    #[test]
    fn corrupt_data_is_rejected() {
        for format in [
            image::ImageFormat::Jpeg,
            image::ImageFormat::Png,
            image::ImageFormat::WebP,
        ] {
            let whole = encoded(format, 64, 64);
            // The signature survives, so the type is recognised; the data is cut short. The
            // JPEG decoder pads a truncated scan with grey (as browsers do), so a JPEG is cut
            // inside its header instead.
            let cut = match format {
                image::ImageFormat::Jpeg => 100,
                _ => whole.len() / 2,
            };
            let truncated = &whole[..cut];
            assert!(
                matches!(process_image(truncated), Err(ImageError::Corrupt)),
                "{format:?}: {:?}",
                process_image(truncated)
            );
        }
        let mut garbage = b"\x89PNG\r\n\x1a\n".to_vec();
        garbage.extend_from_slice(&[0xAB; 64]);
        assert!(matches!(process_image(&garbage), Err(ImageError::Corrupt)));
    }
}
