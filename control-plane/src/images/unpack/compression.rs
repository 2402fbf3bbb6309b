//! Layer compression: gzip, zstd or none, told apart by the first bytes.

use std::io::{BufRead, BufReader, Read};

use super::error::UnpackError;

/// The compression of a layer, found from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

/// Looks at the magic number at the start of a layer.
pub fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Wraps a layer stream in the decompressor its magic number asks for.
pub fn decompressed<'a>(reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>, UnpackError> {
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let kind = detect(reader.fill_buf().map_err(UnpackError::Read)?);
    Ok(match kind {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(UnpackError::Read)?)
        }
        Compression::None => Box::new(reader),
    })
}
