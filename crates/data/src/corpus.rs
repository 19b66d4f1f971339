//! Image corpora beyond IDX: folders of JPEG/PNG files (class subfolders or
//! flat), WebDataset-style tar shards, and Parquet tables with an image-bytes
//! column. Listing a corpus reads names, labels and byte ranges, not pixels;
//! the result is an [`EncodedCorpus`] whose images the loader decodes on its
//! worker threads (converted to the spec's channel count, cropped and
//! resized, see [`crate::samples`]). A sample that cannot be used is skipped
//! with a record of its id, location and the reason; it never stops the job.
//!
//! Ids are derived from where an image is stored: the path relative to the
//! split folder, `<shard stem>/<sample key>` in a tar, the id column or
//! `<file stem>/<row>` in Parquet. Selection by id (`keep`) happens before
//! decoding, so sharding a corpus reads only listings, not pixels.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use std::sync::Arc;

use arrow_schema::DataType;
use serde::Serialize;

use crate::error::DataError;
use crate::images::ImageSet;
use crate::samples::{Crop, EncodedCorpus, Source};
use crate::spec::{DataSpec, Format, SplitFiles};

/// An image that was left out, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub id: String,
    pub location: String,
    pub reason: String,
}

/// A listed sample: where its bytes are and its label, not yet decoded.
struct Listed {
    id: String,
    location: String,
    label: Option<i64>,
    bytes: Result<Source, String>,
}

/// The folder a class's images sit in: the class name, with `/` (which a
/// folder name cannot hold) written as `_`.
pub fn folder_name(class: &str) -> String {
    class.replace('/', "_")
}

fn class_index(spec: &DataSpec) -> BTreeMap<String, i64> {
    spec.classes.iter().enumerate().map(|(i, c)| (folder_name(c), i as i64)).collect()
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))? {
            let entry = entry.map_err(|e| DataError::io(&d, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn relative_id(root: &Path, path: &Path) -> String {
    path.strip_prefix(root).unwrap_or(path).to_string_lossy().replace('\\', "/")
}

fn list_folder(spec: &DataSpec, root: &Path, labelled: bool) -> Result<Vec<Listed>, DataError> {
    if !labelled {
        return Ok(sorted_files(root)?
            .into_iter()
            .map(|p| Listed {
                id: relative_id(root, &p),
                location: p.display().to_string(),
                label: None,
                bytes: Ok(Source::File(p)),
            })
            .collect());
    }
    let classes = class_index(spec);
    let mut folders: Vec<String> = std::fs::read_dir(root)
        .map_err(|e| DataError::io(root, e))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let unknown: Vec<&String> = folders.iter().filter(|f| !classes.contains_key(f.as_str())).collect();
    let absent: Vec<String> = spec.classes.iter().map(|c| folder_name(c)).filter(|c| !folders.contains(c)).collect();
    if !unknown.is_empty() || !absent.is_empty() {
        return Err(DataError::Spec {
            path: spec.source.clone(),
            message: format!(
                "class folders in {} disagree with the class list: folders not in `classes`: {unknown:?}; classes without a folder: {absent:?}",
                root.display()
            ),
        });
    }
    let mut out = Vec::new();
    for folder in folders {
        let label = classes[folder.as_str()];
        for p in sorted_files(&root.join(&folder))? {
            out.push(Listed {
                id: relative_id(root, &p),
                location: p.display().to_string(),
                label: Some(label),
                bytes: Ok(Source::File(p)),
            });
        }
    }
    Ok(out)
}

fn files_with_extension(path: &Path, extension: &str) -> Result<Vec<PathBuf>, DataError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    Ok(sorted_files(path)?.into_iter().filter(|p| p.extension().is_some_and(|e| e == extension)).collect())
}

fn label_from_member(ext: &str, bytes: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    match ext {
        "cls" => text.parse().ok(),
        "json" => {
            let v: serde_json::Value = serde_json::from_str(text).ok()?;
            v.as_i64().or_else(|| ["label", "cls", "class"].iter().find_map(|k| v.get(*k).and_then(|x| x.as_i64())))
        }
        _ => None,
    }
}

fn list_tar(
    path: &Path,
    labelled: bool,
    keep: &dyn Fn(&str) -> bool,
    skipped: &mut Vec<Skipped>,
) -> Result<Vec<Listed>, DataError> {
    let mut out = Vec::new();
    for shard in files_with_extension(path, "tar")? {
        let stem = shard.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let shard_path = Arc::new(shard.clone());
        let file = std::fs::File::open(&shard).map_err(|e| DataError::io(&shard, e))?;
        let file_len = file.metadata().map_err(|e| DataError::io(&shard, e))?.len();
        let mut archive = tar::Archive::new(file);
        // key -> (image member location, where its bytes are, label)
        let mut samples: BTreeMap<String, (String, Result<Source, String>, Option<i64>)> = BTreeMap::new();
        // Seeking past member data: listing reads headers and labels only.
        let entries = archive.entries_with_seek().map_err(|e| DataError::io(&shard, e))?;
        for (n, entry) in entries.enumerate() {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    skipped.push(Skipped {
                        id: format!("{stem}/*"),
                        location: format!("{}: after member {n}", shard.display()),
                        reason: format!("archive unreadable from here on (truncated or damaged header): {e}"),
                    });
                    break;
                }
            };
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let member = entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            let (dir, name) = member.rsplit_once('/').map_or(("", member.as_str()), |(d, n)| (d, n));
            // WebDataset: the key is everything before the first dot of the
            // file name; the rest is the member's extension.
            let Some((base, ext)) = name.split_once('.') else { continue };
            let key = if dir.is_empty() { base.to_string() } else { format!("{dir}/{base}") };
            let id = format!("{stem}/{key}");
            if !keep(&id) {
                continue;
            }
            let ext = ext.to_ascii_lowercase();
            let slot = samples
                .entry(key)
                .or_insert_with(|| (String::new(), Err("no image member (.jpg, .jpeg, .png)".into()), None));
            match ext.as_str() {
                "cls" | "json" if labelled => {
                    let mut bytes = Vec::new();
                    slot.2 = entry.read_to_end(&mut bytes).ok().and_then(|_| label_from_member(&ext, &bytes));
                }
                "jpg" | "jpeg" | "png" => {
                    slot.0 = format!("{}:{member}", shard.display());
                    let (offset, size) = (entry.raw_file_position(), entry.size());
                    slot.1 = if offset + size > file_len {
                        Err(format!(
                            "tar member truncated: header says {size} bytes, the file ends {} bytes early",
                            offset + size - file_len
                        ))
                    } else {
                        Ok(Source::Range { file: shard_path.clone(), offset, size })
                    };
                }
                _ => {}
            }
        }
        for (key, (location, bytes, label)) in samples {
            let location = if location.is_empty() { format!("{}:{key}", shard.display()) } else { location };
            out.push(Listed { id: format!("{stem}/{key}"), location, label, bytes });
        }
    }
    Ok(out)
}

fn image_bytes(column: &ArrayRef, row: usize) -> Option<Vec<u8>> {
    if column.is_null(row) {
        return None;
    }
    match column.data_type() {
        DataType::Binary => Some(column.as_binary::<i32>().value(row).to_vec()),
        DataType::LargeBinary => Some(column.as_binary::<i64>().value(row).to_vec()),
        DataType::BinaryView => Some(column.as_binary_view().value(row).to_vec()),
        DataType::Struct(_) => {
            let s = column.as_struct();
            let bytes = s.column_by_name("bytes")?;
            image_bytes(bytes, row)
        }
        _ => None,
    }
}

fn list_parquet(
    spec: &DataSpec,
    path: &Path,
    labelled: bool,
    keep: &dyn Fn(&str) -> bool,
    skipped: &mut Vec<Skipped>,
) -> Result<Vec<Listed>, DataError> {
    let cols = &spec.columns;
    let mut out = Vec::new();
    for file_path in files_with_extension(path, "parquet")? {
        let bad = |m: String| DataError::Invalid(format!("{}: {m}", file_path.display()));
        let stem = file_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let file = std::fs::File::open(&file_path).map_err(|e| DataError::io(&file_path, e))?;
        // A damaged file is recorded and passed over: one bad file among
        // thousands must not stop a long job. Wrong columns are spec errors.
        let reader = match parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .and_then(|b| b.build())
        {
            Ok(r) => r,
            Err(e) => {
                skipped.push(Skipped {
                    id: format!("{stem}/*"),
                    location: file_path.display().to_string(),
                    reason: format!("not a readable Parquet file: {e}"),
                });
                continue;
            }
        };
        let mut row_base = 0;
        for batch in reader {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    skipped.push(Skipped {
                        id: format!("{stem}/*"),
                        location: format!("{} from row {row_base}", file_path.display()),
                        reason: format!("damaged Parquet data from here on: {e}"),
                    });
                    break;
                }
            };
            let images = batch
                .column_by_name(&cols.image)
                .ok_or_else(|| bad(format!("no image column {:?} (spec key `columns.image`)", cols.image)))?
                .clone();
            if !matches!(
                images.data_type(),
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::Struct(_)
            ) {
                return Err(bad(format!("column {:?} holds {}, expected image bytes", cols.image, images.data_type())));
            }
            let labels = match (&cols.label, labelled) {
                (Some(name), true) => Some(
                    arrow_cast_i64(batch.column_by_name(name).ok_or_else(|| bad(format!("no label column {name:?}")))?)
                        .ok_or_else(|| bad(format!("label column {name:?} is not an integer column")))?,
                ),
                _ => None,
            };
            let ids = match &cols.id {
                Some(name) => {
                    Some(batch.column_by_name(name).ok_or_else(|| bad(format!("no id column {name:?}")))?.clone())
                }
                None => None,
            };
            for row in 0..batch.num_rows() {
                let id = match &ids {
                    Some(col) if !col.is_null(row) => match col.data_type() {
                        DataType::Utf8 => col.as_string::<i32>().value(row).to_string(),
                        DataType::LargeUtf8 => col.as_string::<i64>().value(row).to_string(),
                        DataType::Utf8View => col.as_string_view().value(row).to_string(),
                        _ => arrow_cast_i64(col)
                            .and_then(|v| v.get(row).copied().flatten())
                            .map_or_else(|| format!("{stem}/{}", row_base + row), |v| v.to_string()),
                    },
                    _ => format!("{stem}/{}", row_base + row),
                };
                if !keep(&id) {
                    continue;
                }
                let location = format!("{} row {}", file_path.display(), row_base + row);
                let bytes = match image_bytes(&images, row) {
                    Some(b) => Ok(Source::Bytes(Arc::new(b))),
                    None => Err(format!("null image bytes in column {:?}", cols.image)),
                };
                out.push(Listed { id, location, label: labels.as_ref().and_then(|l| l[row]), bytes });
            }
            row_base += batch.num_rows();
        }
    }
    Ok(out)
}

fn arrow_cast_i64(col: &ArrayRef) -> Option<Vec<Option<i64>>> {
    use arrow_array::types::*;
    macro_rules! ints {
        ($t:ty) => {
            col.as_primitive_opt::<$t>().map(|a| a.iter().map(|v| v.map(|x| x as i64)).collect())
        };
    }
    ints!(Int64Type)
        .or_else(|| ints!(Int32Type))
        .or_else(|| ints!(Int16Type))
        .or_else(|| ints!(UInt8Type))
        .or_else(|| ints!(UInt32Type))
}

/// Lists a corpus split, keeping the samples whose id `keep` accepts.
/// Samples that cannot be used whatever their pixels (no image bytes, no or
/// a bad label in a labelled split, a damaged archive) are returned as
/// skipped; decoding problems surface later, row by row.
pub fn list(
    spec: &DataSpec,
    split: &str,
    files: &SplitFiles,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(EncodedCorpus, Vec<Skipped>), DataError> {
    let root = spec.file_or_dir(&files.images)?;
    let mut skipped = Vec::new();
    let wants_labels = files.labelled.unwrap_or(true);
    let (listed, stored): (Vec<Listed>, usize) = match spec.format {
        Format::Folder => {
            let all = list_folder(spec, &root, wants_labels)?;
            let n = all.len();
            (all.into_iter().filter(|l| keep(&l.id)).collect(), n)
        }
        Format::Tar => (list_tar(&root, wants_labels, keep, &mut skipped)?, files_with_extension(&root, "tar")?.len()),
        Format::Parquet => (
            list_parquet(spec, &root, wants_labels, keep, &mut skipped)?,
            files_with_extension(&root, "parquet")?.len(),
        ),
        Format::Idx => unreachable!("IDX is read by ImageSet::load_split"),
    };
    if stored == 0 {
        let what = match spec.format {
            Format::Tar => "no .tar files",
            Format::Parquet => "no .parquet files",
            _ => "no image files",
        };
        return Err(DataError::Spec {
            path: spec.source.clone(),
            message: format!("split {split:?}: {} holds {what}", root.display()),
        });
    }
    // Folders in class layout always carry labels; tar and Parquet splits
    // are labelled when their samples carry labels at all.
    let any_label = listed.iter().any(|l| l.label.is_some());
    let labelled = wants_labels && (spec.format == Format::Folder || any_label);
    if files.labelled == Some(true) && !labelled && !listed.is_empty() {
        return Err(DataError::Spec {
            path: spec.source.clone(),
            message: format!(
                "split {split:?} is marked `labelled = true` but no sample in {} carries a label (.cls/.json member, or the `columns.label` column)",
                root.display()
            ),
        });
    }
    let mut corpus = EncodedCorpus {
        ids: Vec::new(),
        locations: Vec::new(),
        labels: labelled.then(Vec::new),
        sources: Vec::new(),
        channels: spec.channels,
        height: spec.height,
        width: spec.width,
        crop: Crop::Centre { fraction: spec.crop_fraction },
    };
    let classes = spec.num_classes() as i64;
    for l in listed {
        let source = match l.bytes {
            Ok(s) => s,
            Err(reason) => {
                skipped.push(Skipped { id: l.id, location: l.location, reason });
                continue;
            }
        };
        if let Some(labels) = &mut corpus.labels {
            match l.label {
                Some(label) if (0..classes).contains(&label) => labels.push(label),
                Some(label) => {
                    skipped.push(Skipped {
                        id: l.id,
                        location: l.location,
                        reason: format!("label {label} outside the spec's {classes} classes"),
                    });
                    continue;
                }
                None => {
                    skipped.push(Skipped { id: l.id, location: l.location, reason: "no label".into() });
                    continue;
                }
            }
        }
        corpus.ids.push(l.id);
        corpus.locations.push(l.location);
        corpus.sources.push(source);
    }
    Ok((corpus, skipped))
}

/// Lists, selects (by id) and decodes a corpus split into memory at the
/// spec's size (centre crop). Unusable images are returned in the skipped
/// list, not as errors.
pub fn load(
    spec: &DataSpec,
    split: &str,
    files: &SplitFiles,
    keep: &dyn Fn(&str) -> bool,
) -> Result<(ImageSet, Vec<Skipped>), DataError> {
    let (corpus, mut skipped) = list(spec, split, files, keep)?;
    let (set, bad) = corpus.decode_all();
    skipped.extend(bad);
    Ok((set, skipped))
}
