//! Finding, checking and reading the shards of one labelling run.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use selftrain_data::schema::{self, ShardMeta};

use crate::error::FilterError;

/// All shards of a labelling run, read into one frame.
pub struct Shards {
    pub files: Vec<PathBuf>,
    /// Metadata of shard 0 (the fields all shards share were checked equal).
    pub meta: ShardMeta,
    pub frame: DataFrame,
}

fn file_error(path: &Path, message: impl Into<String>) -> FilterError {
    FilterError::File { path: path.to_path_buf(), message: message.into() }
}

/// Reads the metadata and rows of one shard.
fn read_one(path: &Path) -> Result<(ShardMeta, DataFrame), FilterError> {
    let file = File::open(path).map_err(|e| file_error(path, format!("cannot open: {e}")))?;
    let mut reader = ParquetReader::new(file);
    let metadata = reader.get_metadata().map_err(|e| file_error(path, format!("not a readable Parquet file: {e}")))?;
    let pairs: BTreeMap<String, String> = metadata
        .key_value_metadata()
        .iter()
        .flatten()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
        .collect();
    let meta = ShardMeta::from_pairs(&path.display().to_string(), &pairs)?;
    let frame = reader.finish().map_err(|e| file_error(path, format!("damaged data: {e}")))?;
    for column in [
        schema::COL_IMAGE_ID,
        schema::COL_LABEL,
        schema::COL_CONFIDENCE,
        schema::COL_TOPK_CLASSES,
        schema::COL_TOPK_PROBS,
        schema::COL_TEACHER,
    ] {
        if frame.column(column).is_err() {
            return Err(file_error(path, format!("missing column {column:?} (see data-specs/shard-schema.md)")));
        }
    }
    if frame.height() != meta.num_rows {
        return Err(file_error(path, format!("has {} rows, its metadata says {}", frame.height(), meta.num_rows)));
    }
    Ok((meta, frame))
}

/// Reads every `part-XXXXX-of-YYYYY.parquet` in `dir`, checking that all
/// shards of the run are present and come from the same teacher and corpus.
pub fn read_shards(dir: &Path) -> Result<Shards, FilterError> {
    let entries = std::fs::read_dir(dir).map_err(|e| file_error(dir, format!("cannot list shard folder: {e}")))?;
    let mut found: BTreeMap<usize, (usize, PathBuf)> = BTreeMap::new();
    let mut totals = std::collections::BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| file_error(dir, e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((index, total)) = schema::parse_shard_file_name(&name) {
            totals.insert(total);
            found.insert(index, (total, entry.path()));
        }
    }
    let total = match totals.len() {
        0 => return Err(file_error(dir, "no shard files (part-XXXXX-of-YYYYY.parquet) found")),
        1 => *totals.iter().next().expect("one element"),
        _ => return Err(file_error(dir, format!("shards of different runs mixed: totals {totals:?}"))),
    };
    let missing: Vec<String> =
        (0..total).filter(|i| !found.contains_key(i)).map(|i| schema::shard_file_name(i, total)).collect();
    if !missing.is_empty() {
        return Err(file_error(
            dir,
            format!(
                "{} of {total} shards missing (unfinished labelling tasks?): {}",
                missing.len(),
                missing.join(", ")
            ),
        ));
    }
    let mut files = Vec::new();
    let mut first: Option<ShardMeta> = None;
    let mut frame: Option<DataFrame> = None;
    for (index, (_, path)) in found {
        let (meta, df) = read_one(&path)?;
        if meta.shard_index != index || meta.num_shards != total {
            return Err(file_error(
                &path,
                format!(
                    "metadata says shard {} of {}, the name says {index} of {total}",
                    meta.shard_index, meta.num_shards
                ),
            ));
        }
        if let Some(f) = &first {
            if (f.teacher_sha256.as_str(), f.corpus.as_str(), &f.class_names)
                != (meta.teacher_sha256.as_str(), meta.corpus.as_str(), &meta.class_names)
            {
                return Err(file_error(
                    &path,
                    format!(
                        "comes from teacher {} on corpus {}, shard 0 from teacher {} on corpus {}",
                        meta.teacher, meta.corpus, f.teacher, f.corpus
                    ),
                ));
            }
        } else {
            first = Some(meta);
        }
        match &mut frame {
            None => frame = Some(df),
            Some(all) => {
                all.vstack_mut(&df).map_err(|e| file_error(&path, format!("columns differ from shard 0: {e}")))?;
            }
        }
        files.push(path);
    }
    let mut frame = frame.expect("at least one shard");
    frame.rechunk_mut();
    Ok(Shards { files, meta: first.expect("at least one shard"), frame })
}
