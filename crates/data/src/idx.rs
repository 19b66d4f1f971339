//! Reader for IDX files (the MNIST family's format), raw or gzip'd.
//!
//! Layout: two zero bytes, a type byte (0x08 = u8), the number of dimensions,
//! then each dimension as a big-endian u32, then the data.

use std::io::Read;
use std::path::Path;

use crate::error::DataError;

/// A decoded IDX array of bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

fn idx_error(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Idx { path: path.to_path_buf(), message: message.into() }
}

/// Reads a whole IDX file; `.gz` files are decompressed on the fly.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| idx_error(path, format!("gzip stream is damaged or truncated: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(path, &bytes)
}

/// Parses IDX bytes; `path` only names the source in errors.
pub fn parse_idx(path: &Path, bytes: &[u8]) -> Result<IdxArray, DataError> {
    if bytes.len() < 4 {
        return Err(idx_error(path, format!("expected a 4-byte header, found {} bytes", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(idx_error(path, "expected the magic number to start with two zero bytes"));
    }
    if bytes[2] != 0x08 {
        return Err(idx_error(path, format!("expected data type 0x08 (unsigned byte), found 0x{:02x}", bytes[2])));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err(idx_error(path, "expected at least one dimension"));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(idx_error(path, format!("header of {ndim} dimensions is truncated")));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let b = &bytes[4 + 4 * i..8 + 4 * i];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let expected = dims.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d));
    let Some(expected) = expected else {
        return Err(idx_error(path, format!("dimensions {dims:?} overflow")));
    };
    let found = bytes.len() - header;
    if found != expected {
        return Err(idx_error(
            path,
            format!("dimensions {dims:?} need {expected} data bytes, found {found} (truncated or padded file)"),
        ));
    }
    Ok(IdxArray { dims, data: bytes[header..].to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn parses_a_small_array() {
        let bytes = encode(&[2, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let a = parse_idx(Path::new("x"), &bytes).unwrap();
        assert_eq!(a.dims, vec![2, 2, 3]);
        assert_eq!(a.data[11], 12);
    }

    #[test]
    fn truncated_data_is_an_error_naming_the_file() {
        let bytes = encode(&[2, 2, 3], &[1, 2, 3]);
        let err = parse_idx(Path::new("images.idx"), &bytes).unwrap_err().to_string();
        assert!(err.contains("images.idx"), "{err}");
        assert!(err.contains("need 12 data bytes, found 3"), "{err}");
    }

    #[test]
    fn wrong_type_byte_is_rejected() {
        let mut bytes = encode(&[1], &[1]);
        bytes[2] = 0x0d;
        let err = parse_idx(Path::new("f"), &bytes).unwrap_err().to_string();
        assert!(err.contains("0x0d"), "{err}");
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        use std::io::Write;
        let dir = tempfile_dir();
        let path = dir.join("t.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&encode(&[100], &[7u8; 100])).unwrap();
        let full = gz.finish().unwrap();
        std::fs::write(&path, &full[..full.len() / 2]).unwrap();
        let err = read_idx(&path).unwrap_err().to_string();
        assert!(err.contains("t.gz") && err.contains("gzip"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("selftrain-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
