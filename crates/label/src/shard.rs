//! Labelling one shard of a corpus into a Parquet file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{Float32Builder, Int32Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use selftrain_data::atomic::AtomicFile;
use selftrain_data::corpus::Skipped;
use selftrain_data::loader::{Loader, LoaderConfig, Normalize};
use selftrain_data::schema::{self, ShardMeta};
use selftrain_data::subset::shard_of;
use selftrain_data::{Progress, Samples};

use crate::error::LabelError;
use crate::teacher::Teacher;

/// Settings of one labelling task.
#[derive(Debug, Clone)]
pub struct LabelConfig {
    pub shard_index: usize,
    pub num_shards: usize,
    pub batch_size: usize,
    /// Classes kept per image, most probable first.
    pub topk: usize,
    /// Rewrite a shard that is already complete.
    pub force: bool,
    /// Threads preparing batches ahead of inference.
    pub workers: usize,
}

/// What labelling a shard did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShardOutcome {
    pub path: PathBuf,
    pub rows: usize,
    /// The shard was already complete and was left as it was.
    pub reused: bool,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Seconds inference waited for prepared batches.
    pub input_wait_seconds: f64,
    /// Images of this shard that could not be used, listed in
    /// [`skipped_file_name`] beside the shard.
    pub skipped: usize,
}

/// The Arrow schema of a shard (see `data-specs/shard-schema.md`).
pub fn shard_schema() -> Arc<Schema> {
    let item = |t: DataType| Arc::new(Field::new("item", t, true));
    Arc::new(Schema::new(vec![
        Field::new(schema::COL_IMAGE_ID, DataType::Utf8, false),
        Field::new(schema::COL_LABEL, DataType::Int32, false),
        Field::new(schema::COL_CONFIDENCE, DataType::Float32, false),
        Field::new(schema::COL_TOPK_CLASSES, DataType::List(item(DataType::Int32)), false),
        Field::new(schema::COL_TOPK_PROBS, DataType::List(item(DataType::Float32)), false),
        Field::new(schema::COL_TEACHER, DataType::Utf8, false),
    ]))
}

/// Reads the selftrain metadata of a shard file.
pub fn read_shard_meta(path: &Path) -> Result<ShardMeta, LabelError> {
    let fail = |message: String| LabelError::Shard { path: path.to_path_buf(), message };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let reader = SerializedFileReader::new(file).map_err(|e| fail(format!("not a readable Parquet file: {e}")))?;
    let pairs: BTreeMap<String, String> = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| kv.iter().filter_map(|e| Some((e.key.clone(), e.value.clone()?))).collect())
        .unwrap_or_default();
    Ok(ShardMeta::from_pairs(&path.display().to_string(), &pairs)?)
}

/// `part-XXXXX-of-YYYYY.skipped.jsonl`: one JSON object per image of the
/// shard that could not be used (`id`, `location`, `reason`).
pub fn skipped_file_name(index: usize, num_shards: usize) -> String {
    schema::shard_file_name(index, num_shards).replace(".parquet", ".skipped.jsonl")
}

/// Labels the rows of `corpus` that fall in the configured shard and writes
/// `out_dir/part-XXXXX-of-YYYYY.parquet`. `corpus_description` (JSON) is
/// recorded in the metadata and used to recognise a finished shard.
/// `known_skipped` are samples of the corpus already found unusable when it
/// was listed; with the images that fail to decode here, those of this shard
/// are written to [`skipped_file_name`] and counted in the outcome.
pub fn label_shard(
    teacher: &mut Teacher,
    corpus: Arc<dyn Samples>,
    known_skipped: &[Skipped],
    corpus_description: &str,
    out_dir: &Path,
    config: &LabelConfig,
    progress: &dyn Progress,
) -> Result<ShardOutcome, LabelError> {
    let started = Instant::now();
    let path = out_dir.join(schema::shard_file_name(config.shard_index, config.num_shards));
    let skipped_path = out_dir.join(skipped_file_name(config.shard_index, config.num_shards));
    if config.num_shards == 0 || config.shard_index >= config.num_shards {
        return Err(LabelError::Data(selftrain_data::DataError::Invalid(format!(
            "shard index {} is out of range: expected 0 <= index < num_shards ({})",
            config.shard_index, config.num_shards
        ))));
    }
    let in_shard = |id: &str| shard_of(id, config.num_shards) == config.shard_index;
    let rows: Vec<usize> = (0..corpus.len()).filter(|&r| in_shard(corpus.id(r))).collect();
    let mut skipped: Vec<Skipped> = known_skipped.iter().filter(|s| in_shard(&s.id)).cloned().collect();
    let p = &teacher.preprocess;
    let [c, h, w] = corpus.shape();
    if [c, h, w] != [p.channels, p.height, p.width] {
        return Err(LabelError::Teacher {
            path: teacher.path.clone(),
            message: format!("expects {}x{}x{} images, the corpus has {c}x{h}x{w}", p.channels, p.height, p.width),
        });
    }
    let topk = config.topk.clamp(1, teacher.class_names.len());
    // `num_rows` is the listed count here; the file's own count (rows that
    // decoded) is written at the end, with the skipped count.
    let mut meta = ShardMeta {
        teacher: teacher.identity.clone(),
        teacher_sha256: teacher.sha256.clone(),
        class_names: teacher.class_names.clone(),
        corpus: corpus_description.to_string(),
        shard_index: config.shard_index,
        num_shards: config.num_shards,
        num_rows: rows.len() + skipped.len(),
        topk,
        skipped_rows: 0,
    };

    if path.exists() && !config.force {
        let existing = read_shard_meta(&path);
        match existing {
            // The same job: same teacher, corpus, shard, and the same number
            // of listed samples (rows written plus rows skipped).
            Ok(existing)
                if ShardMeta {
                    num_rows: existing.num_rows + existing.skipped_rows,
                    skipped_rows: 0,
                    ..existing.clone()
                } == meta =>
            {
                progress.finish(&format!("{} already complete, kept", path.display()));
                return Ok(ShardOutcome {
                    path,
                    rows: existing.num_rows,
                    reused: true,
                    seconds: started.elapsed().as_secs_f64(),
                    images_per_second: 0.0,
                    input_wait_seconds: 0.0,
                    skipped: existing.skipped_rows,
                });
            }
            Ok(existing) => {
                return Err(LabelError::Shard {
                    path,
                    message: format!(
                        "exists from another run (teacher {}, corpus {}, {} rows); expected teacher {}, corpus {}, {} rows. \
                         Use another output folder, or force to overwrite",
                        existing.teacher, existing.corpus, existing.num_rows, meta.teacher, meta.corpus, meta.num_rows
                    ),
                });
            }
            // Not readable as a shard: left over from something else; do not
            // silently overwrite what we did not write.
            Err(e) => {
                return Err(LabelError::Shard {
                    path,
                    message: format!("exists but is not a complete selftrain shard ({e}); remove it or force"),
                });
            }
        }
    }

    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(65_536))
        .set_key_value_metadata(Some(
            meta.to_pairs()
                .into_iter()
                .filter(|(k, _)| k != schema::META_NUM_ROWS && k != schema::META_SKIPPED_ROWS)
                .map(|(k, v)| KeyValue::new(k, v))
                .collect(),
        ))
        .build();
    let out = AtomicFile::create(&path)?;
    let write_error =
        |e: parquet::errors::ParquetError| LabelError::Shard { path: path.clone(), message: e.to_string() };
    let arrow_schema = shard_schema();
    let mut writer =
        ArrowWriter::try_new(out.try_clone()?, arrow_schema.clone(), Some(properties)).map_err(write_error)?;

    let batches: Vec<Vec<usize>> = rows.chunks(config.batch_size.max(1)).map(<[usize]>::to_vec).collect();
    let normalize = Normalize { mean: p.mean.clone(), std: p.std.clone() };
    let loader_config = LoaderConfig {
        workers: config.workers.max(1),
        prefetch: 4,
        augment: selftrain_data::augment::Augment::None,
        seed: 0,
    };
    let mut loader = Loader::start(corpus.clone(), batches, normalize, &loader_config);
    let k = teacher.class_names.len();
    progress.begin(&format!("label shard {}/{}", config.shard_index, config.num_shards), rows.len() as u64);
    let mut inference_started = None;
    let mut written = 0;
    for batch in loader.by_ref() {
        inference_started.get_or_insert_with(Instant::now);
        for (row, reason) in &batch.failed {
            skipped.push(Skipped {
                id: corpus.id(*row).to_string(),
                location: corpus.location(*row),
                reason: reason.clone(),
            });
        }
        progress.advance(batch.failed.len() as u64);
        let n = batch.rows.len();
        if n == 0 {
            continue;
        }
        written += n;
        let probs = teacher.predict(batch.pixels, n)?;
        let mut ids = StringBuilder::new();
        let mut labels = Int32Builder::with_capacity(n);
        let mut confidence = Float32Builder::with_capacity(n);
        let mut classes = ListBuilder::new(Int32Builder::new());
        let mut class_probs = ListBuilder::new(Float32Builder::new());
        let mut teachers = StringBuilder::new();
        for (j, &row) in batch.rows.iter().enumerate() {
            let dist = &probs[j * k..(j + 1) * k];
            let mut order: Vec<usize> = (0..k).collect();
            // Most probable first; ties keep the lower class index first.
            order.sort_by(|&a, &b| dist[b].total_cmp(&dist[a]).then(a.cmp(&b)));
            ids.append_value(corpus.id(row));
            labels.append_value(order[0] as i32);
            confidence.append_value(dist[order[0]]);
            for &c in &order[..topk] {
                classes.values().append_value(c as i32);
                class_probs.values().append_value(dist[c]);
            }
            classes.append(true);
            class_probs.append(true);
            teachers.append_value(&teacher.identity);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids.finish()),
            Arc::new(labels.finish()),
            Arc::new(confidence.finish()),
            Arc::new(classes.finish()),
            Arc::new(class_probs.finish()),
            Arc::new(teachers.finish()),
        ];
        let record = RecordBatch::try_new(arrow_schema.clone(), columns)
            .map_err(|e| LabelError::Shard { path: path.clone(), message: e.to_string() })?;
        writer.write(&record).map_err(write_error)?;
        progress.advance(n as u64);
    }
    meta.num_rows = written;
    meta.skipped_rows = skipped.len();
    writer.append_key_value_metadata(KeyValue::new(schema::META_NUM_ROWS.to_string(), written.to_string()));
    writer.append_key_value_metadata(KeyValue::new(schema::META_SKIPPED_ROWS.to_string(), skipped.len().to_string()));
    writer.close().map_err(write_error)?;
    // The record of skipped images first, then the shard: a shard on disk
    // always has its record beside it.
    if skipped.is_empty() {
        match std::fs::remove_file(&skipped_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(LabelError::Data(selftrain_data::DataError::io(skipped_path, e)));
            }
            _ => {}
        }
    } else {
        let mut text = String::new();
        for s in &skipped {
            text.push_str(&serde_json::to_string(s).unwrap_or_default());
            text.push('\n');
        }
        selftrain_data::atomic::write_atomic(&skipped_path, text.as_bytes())?;
    }
    out.commit()?;
    let seconds = started.elapsed().as_secs_f64();
    let inference_seconds = inference_started.map_or(seconds, |t| t.elapsed().as_secs_f64());
    let outcome = ShardOutcome {
        path,
        rows: written,
        reused: false,
        seconds,
        images_per_second: written as f64 / inference_seconds.max(1e-9),
        input_wait_seconds: loader.waited().as_secs_f64(),
        skipped: skipped.len(),
    };
    progress.finish(&format!(
        "{}: {} images, {:.0} images/s{}",
        outcome.path.display(),
        outcome.rows,
        outcome.images_per_second,
        if outcome.skipped > 0 { format!(", {} skipped", outcome.skipped) } else { String::new() }
    ));
    Ok(outcome)
}
