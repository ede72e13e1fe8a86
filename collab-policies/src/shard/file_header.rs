//! Reading and checking the safetensors header of a shard file, without reading its data.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Deserialize;

use collab_core::{Error, Result};

/// Largest header accepted (the header of MiniLM's file is about 60 kB).
const MAX_HEADER: u64 = 64 << 20;

/// Where one tensor lies in the file.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Entry {
    /// Absolute offset of its first byte.
    pub(super) offset: u64,
    /// Bytes.
    pub(super) len: u64,
    /// `U8` or `F32`.
    pub(super) dtype: String,
    /// Shape.
    pub(super) shape: Vec<usize>,
}

/// A tensor as the safetensors header describes it.
#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// The entries of the shard file `file` at `path` and its `__metadata__`, from its header
/// alone: every entry checked to be U8 or F32, to lie inside the file and to hold as many
/// bytes as its shape implies.
///
/// # Errors
/// [`Error::Io`] if a read fails; [`Error::BadFile`] naming what is wrong.
pub(super) fn read_index(
    path: &Path,
    file: &File,
) -> Result<(HashMap<String, Entry>, HashMap<String, String>)> {
    let bad = |message: String| Error::BadFile {
        path: path.to_path_buf(),
        message,
    };
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    if file_len < 8 {
        return Err(bad(format!(
            "{file_len} bytes is too short for safetensors"
        )));
    }
    file.read_exact_at(&mut n, 0)
        .map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || n > file_len - 8 {
        return Err(bad(format!(
            "not safetensors: a header of {n} bytes in a file of {file_len}"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| Error::io(path, e))?;
    let raw: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a safetensors header: {e}")))?;
    let (data_start, data_len) = (8 + n, file_len - 8 - n);
    let mut index = HashMap::new();
    let mut meta = HashMap::new();
    for (name, v) in raw {
        if name == "__metadata__" {
            meta = serde_json::from_value::<HashMap<String, String>>(v)
                .map_err(|e| bad(format!("bad __metadata__: {e}")))?;
            continue;
        }
        let r: RawEntry = serde_json::from_value(v)
            .map_err(|e| bad(format!("entry `{name}` is malformed: {e}")))?;
        let [begin, end] = r.data_offsets;
        if begin > end || end > data_len {
            return Err(bad(format!(
                "entry `{name}` spans bytes {begin}..{end} of a data section of {data_len}"
            )));
        }
        let size = match r.dtype.as_str() {
            "U8" => 1u64,
            "F32" => 4,
            other => {
                return Err(bad(format!(
                    "entry `{name}` has dtype {other}; shard files hold only U8 and F32"
                )));
            }
        };
        let count = r
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .and_then(|c| c.checked_mul(size));
        if count != Some(end - begin) {
            return Err(bad(format!(
                "entry `{name}` of shape {:?} {} holds {} bytes",
                r.shape,
                r.dtype,
                end - begin
            )));
        }
        let entry = Entry {
            offset: data_start + begin,
            len: end - begin,
            dtype: r.dtype,
            shape: r.shape,
        };
        index.insert(name, entry);
    }
    Ok((index, meta))
}
