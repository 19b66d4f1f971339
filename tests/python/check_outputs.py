"""Reads what a `selftrain run` wrote the way users do, with polars,
pyarrow, onnxruntime and safetensors, and checks it against the data.

Usage: check_outputs.py WORK_DIR DATA_DIR
Exits non-zero with a message on the first mismatch.
"""

import gzip
import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort
import polars as pl
import pyarrow.parquet as pq
from safetensors.numpy import load_file


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def main(work, data):
    work, data = pathlib.Path(work), pathlib.Path(data)
    round_dir = work / "round-1"

    # Shards: polars reads the documented schema; ids are unique.
    shards = sorted((round_dir / "shards").glob("part-*-of-*.parquet"))
    assert shards, "no shards"
    df = pl.read_parquet([str(p) for p in shards])
    expected = {
        "image_id": pl.String,
        "label": pl.Int32,
        "confidence": pl.Float32,
        "topk_classes": pl.List(pl.Int32),
        "topk_probs": pl.List(pl.Float32),
        "teacher": pl.String,
    }
    assert dict(df.schema) == expected, df.schema
    assert df["image_id"].n_unique() == df.height
    # pyarrow sees the metadata.
    rows = 0
    for p in shards:
        meta = {k.decode(): v.decode() for k, v in pq.read_metadata(p).metadata.items()}
        assert meta["selftrain.schema_version"] == "1"
        classes = json.loads(meta["selftrain.class_names"])
        assert len(classes) == 10, classes
        rows += int(meta["selftrain.num_rows"])
    assert rows == df.height

    # onnxruntime's Python API agrees with the stored pseudo-labels.
    session = ort.InferenceSession(str(round_dir / "export" / "teacher.onnx"))
    custom = session.get_modelmeta().custom_metadata_map
    pre = json.loads(custom["selftrain.preprocess"])
    images = read_idx(data / "train-images.gz")
    sample = df.sort("image_id").head(64)
    index = [int(i.split("-")[1]) for i in sample["image_id"]]
    x = images[index].astype(np.float32)[:, None] / 255.0
    x = (x - np.float32(pre["mean"][0])) / np.float32(pre["std"][0])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert (probs.argmax(1) == sample["label"].to_numpy()).all()
    diff = np.abs(probs.max(1) - sample["confidence"].to_numpy()).max()
    assert diff < 1e-4, f"confidence differs from onnxruntime by {diff}"

    # The filtered file: copy column, and the balance the report claims.
    filtered = pl.read_parquet(round_dir / "filter" / "pseudo-labels.parquet")
    assert "copy" in filtered.columns
    report = json.loads((round_dir / "filter" / "pseudo-labels.report.json").read_text())
    counts = dict(filtered.group_by("label").len().iter_rows())
    for i, c in enumerate(report["classes"]):
        assert counts.get(i, 0) == c["kept"] + c["duplicates"], (i, c, counts.get(i))
    assert (filtered["confidence"] >= report["threshold"]).all()

    # Checkpoints: safetensors with timm's key names.
    tensors = load_file(str(work / "teacher" / "checkpoint.safetensors"))
    for key in ["conv1.0.weight", "conv1.1.running_var", "maxpool.0.weight", "layer1.0.se.fc1.bias",
                "layer2.0.downsample.1.weight", "fc.weight", "bn1.num_batches_tracked"]:
        assert key in tensors, key
    assert tensors["fc.weight"].shape[0] == 10

    summary = json.loads((work / "summary.json").read_text())
    assert summary["teacher"]["test_accuracy"] is not None
    print(f"python readers agree: {df.height} shard rows, {filtered.height} filtered rows, max |p| diff {diff:.2e}")


if __name__ == "__main__":
    main(*sys.argv[1:])
