//! Reading filtered pseudo-labels (written by the filter stage with polars)
//! through arrow-rs: the two implementations meet only in the Parquet file.

use std::collections::BTreeMap;
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use selftrain_data::schema;

use crate::error::TrainError;

/// Pseudo-labels, one entry per row of the filtered file (an image that was
/// duplicated to fill its class appears once per copy).
#[derive(Debug, Clone, Default)]
pub struct PseudoLabels {
    pub ids: Vec<String>,
    pub labels: Vec<i32>,
    pub topk_classes: Vec<Vec<i32>>,
    pub topk_probs: Vec<Vec<f32>>,
    pub class_names: Vec<String>,
}

fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a dyn Array, TrainError> {
    batch.column_by_name(name).map(|c| c.as_ref()).ok_or_else(|| TrainError::Pseudo {
        path: path.to_path_buf(),
        message: format!("missing column {name:?} (see data-specs/shard-schema.md)"),
    })
}

/// Reads a filtered pseudo-label file.
pub fn read_pseudo_labels(path: &Path) -> Result<PseudoLabels, TrainError> {
    let fail = |message: String| TrainError::Pseudo { path: path.to_path_buf(), message };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    // Ignore the writer's embedded Arrow schema (polars writes its own string
    // and list flavours) and read plain Parquet types.
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(file, options)
        .map_err(|e| fail(format!("not a readable Parquet file: {e}")))?;
    let pairs: BTreeMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| kv.iter().filter_map(|e| Some((e.key.clone(), e.value.clone()?))).collect())
        .unwrap_or_default();
    let names = pairs.get(schema::META_CLASS_NAMES).ok_or_else(|| {
        fail(format!("missing metadata key {:?}; not a selftrain filter output?", schema::META_CLASS_NAMES))
    })?;
    let class_names: Vec<String> =
        serde_json::from_str(names).map_err(|e| fail(format!("metadata {:?}: {e}", schema::META_CLASS_NAMES)))?;
    let reader = builder.build().map_err(|e| fail(e.to_string()))?;
    let mut out = PseudoLabels { class_names, ..Default::default() };
    for batch in reader {
        let batch = batch.map_err(|e| fail(format!("damaged data: {e}")))?;
        let ids = column(&batch, schema::COL_IMAGE_ID, path)?
            .as_string_opt::<i32>()
            .ok_or_else(|| fail(format!("column {:?}: expected strings", schema::COL_IMAGE_ID)))?;
        let labels = column(&batch, schema::COL_LABEL, path)?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| fail(format!("column {:?}: expected int32", schema::COL_LABEL)))?;
        let classes = column(&batch, schema::COL_TOPK_CLASSES, path)?
            .as_list_opt::<i32>()
            .ok_or_else(|| fail(format!("column {:?}: expected a list", schema::COL_TOPK_CLASSES)))?;
        let probs = column(&batch, schema::COL_TOPK_PROBS, path)?
            .as_list_opt::<i32>()
            .ok_or_else(|| fail(format!("column {:?}: expected a list", schema::COL_TOPK_PROBS)))?;
        for row in 0..batch.num_rows() {
            if ids.is_null(row) || labels.is_null(row) {
                return Err(fail(format!("row {}: null image id or label", out.ids.len())));
            }
            out.ids.push(ids.value(row).to_string());
            out.labels.push(labels.value(row));
            let c = classes.value(row);
            let p = probs.value(row);
            let c =
                c.as_primitive_opt::<Int32Type>().ok_or_else(|| fail("topk_classes items: expected int32".into()))?;
            let p =
                p.as_primitive_opt::<Float32Type>().ok_or_else(|| fail("topk_probs items: expected float32".into()))?;
            if c.len() != p.len() || c.is_empty() {
                return Err(fail(format!("row {}: top-k classes and probabilities differ in length", out.ids.len())));
            }
            out.topk_classes.push(c.values().to_vec());
            out.topk_probs.push(p.values().to_vec());
        }
    }
    let k = out.class_names.len() as i32;
    if let Some(bad) = out.topk_classes.iter().flatten().find(|c| **c < 0 || **c >= k) {
        return Err(fail(format!("class index {bad} is outside the {k} classes named in the metadata")));
    }
    Ok(out)
}
