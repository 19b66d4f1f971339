//! ONNX export of a [`ResNetRs`] in evaluation mode, written from Rust.
//!
//! libtorch has no exporter, so the graph is built here by walking the same
//! structure the tch forward pass walks: Conv (with BatchNorm folded in, or
//! kept as BatchNormalization nodes), Relu or x*Sigmoid(x), the SE gate as
//! GlobalAveragePool/Conv/Relu/Conv/Sigmoid/Mul, ResNet-D shortcuts as
//! AveragePool(ceil_mode, padding not counted)/Conv, then GlobalAveragePool,
//! Flatten and Gemm. The batch dimension is dynamic. The file carries the
//! model name, class names and expected preprocessing as metadata_props.

use std::path::Path;

use prost::Message;
use selftrain_data::atomic::write_atomic;
use selftrain_data::schema::model_meta as keys;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::checkpoint::CheckpointMeta;
use crate::config::Activation;
use crate::error::ModelError;
use crate::proto::*;
use crate::resnet_rs::{BN_EPS, BatchNorm, Conv, ResNetRs};

/// ONNX IR version and default-domain opset written. ONNX Runtime 1.30
/// accepts both; they are old enough for every current ONNX consumer.
pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;
pub const INPUT_NAME: &str = "input";

/// What the graph's single output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Logits,
    Probabilities,
}

impl OutputKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            OutputKind::Logits => "logits",
            OutputKind::Probabilities => "probabilities",
        }
    }
}

/// Where the weights go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalData {
    /// Inside the `.onnx` file unless it would pass protobuf's 2 GB limit.
    Auto,
    /// Always in a `<name>.onnx.data` file beside the model.
    Always,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Fold each BatchNorm into the preceding conv (the default); otherwise
    /// keep BatchNormalization nodes.
    pub fold_batch_norm: bool,
    pub output: OutputKind,
    /// Store weights as float16 (half the file); the graph casts them to
    /// float32 at load time, so inputs, outputs and arithmetic stay float32.
    pub fp16_weights: bool,
    pub external_data: ExternalData,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            fold_batch_norm: true,
            output: OutputKind::Logits,
            fp16_weights: false,
            external_data: ExternalData::Auto,
        }
    }
}

/// Initializer bytes above which [`ExternalData::Auto`] moves the weights
/// out of the `.onnx` file (protobuf messages must stay below 2 GiB).
pub const EXTERNAL_DATA_THRESHOLD: usize = 1 << 30;

fn values(t: &Tensor) -> Result<Vec<f64>, ModelError> {
    let t = t.detach().to_device(tch::Device::Cpu).to_kind(Kind::Double).contiguous();
    Ok(Vec::<f64>::try_from(t.reshape([-1]))?)
}

fn attr_ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: ATTR_INTS, ints: ints.to_vec(), ..Default::default() }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: ATTR_INT, i, ..Default::default() }
}

fn attr_float(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: ATTR_FLOAT, f, ..Default::default() }
}

#[derive(Default)]
struct Graph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    count: usize,
    fp16: bool,
}

impl Graph {
    fn constant(&mut self, name: &str, data: &[f64], dims: &[i64]) -> String {
        if self.fp16 {
            let stored = format!("{name}.fp16");
            let raw_data = data.iter().flat_map(|v| half::f16::from_f64(*v).to_le_bytes()).collect();
            self.initializers.push(TensorProto {
                dims: dims.to_vec(),
                data_type: DTYPE_FLOAT16,
                name: stored.clone(),
                raw_data,
                ..Default::default()
            });
            return self.named_node("Cast", &[&stored], vec![attr_int("to", DTYPE_FLOAT as i64)], name);
        }
        let raw_data = data.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: DTYPE_FLOAT,
            name: name.into(),
            raw_data,
            ..Default::default()
        });
        name.to_string()
    }

    fn node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>) -> String {
        self.count += 1;
        let output = format!("{}_{}", op.to_lowercase(), self.count);
        self.named_node(op, inputs, attribute, &output)
    }

    fn named_node(&mut self, op: &str, inputs: &[&str], attribute: Vec<AttributeProto>, output: &str) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.into(),
            attribute,
            domain: String::new(),
        });
        output.to_string()
    }

    fn conv_node(&mut self, x: &str, conv: &Conv, weight: &str, bias: Option<&str>) -> String {
        let k = conv.weight.size()[2];
        let p = conv.padding;
        let mut inputs = vec![x, weight];
        inputs.extend(bias);
        self.node(
            "Conv",
            &inputs,
            vec![
                attr_ints("kernel_shape", &[k, k]),
                attr_ints("strides", &[conv.stride, conv.stride]),
                attr_ints("pads", &[p, p, p, p]),
            ],
        )
    }

    /// A bias-free conv followed by its BatchNorm (folded or not).
    fn conv_bn(&mut self, x: &str, conv: &Conv, bn: &BatchNorm, fold: bool) -> Result<String, ModelError> {
        let w = values(&conv.weight)?;
        let dims = conv.weight.size();
        let gamma = values(&bn.weight)?;
        let beta = values(&bn.bias)?;
        let mean = values(&bn.running_mean)?;
        let var = values(&bn.running_var)?;
        if !fold {
            let wn = self.constant(&format!("{}.weight", conv.name), &w, &dims);
            let y = self.conv_node(x, conv, &wn, None);
            let c = [gamma.len() as i64];
            let names = [
                self.constant(&format!("{}.weight", bn.name), &gamma, &c),
                self.constant(&format!("{}.bias", bn.name), &beta, &c),
                self.constant(&format!("{}.running_mean", bn.name), &mean, &c),
                self.constant(&format!("{}.running_var", bn.name), &var, &c),
            ];
            let inputs = [y.as_str(), &names[0], &names[1], &names[2], &names[3]];
            return Ok(self.node("BatchNormalization", &inputs, vec![attr_float("epsilon", BN_EPS as f32)]));
        }
        let per_out = w.len() / gamma.len();
        let scale: Vec<f64> = gamma.iter().zip(&var).map(|(g, v)| g / (v + BN_EPS).sqrt()).collect();
        let folded: Vec<f64> = w.iter().enumerate().map(|(i, v)| v * scale[i / per_out]).collect();
        let bias: Vec<f64> = (0..gamma.len()).map(|o| beta[o] - mean[o] * scale[o]).collect();
        let wn = self.constant(&format!("{}.weight", conv.name), &folded, &dims);
        let bn_name = self.constant(&format!("{}.bias", conv.name), &bias, &[gamma.len() as i64]);
        Ok(self.conv_node(x, conv, &wn, Some(&bn_name)))
    }

    fn plain_conv(&mut self, x: &str, conv: &Conv) -> Result<String, ModelError> {
        let wn = self.constant(&format!("{}.weight", conv.name), &values(&conv.weight)?, &conv.weight.size());
        let bias = match &conv.bias {
            Some(b) => Some(self.constant(&format!("{}.bias", conv.name), &values(b)?, &b.size())),
            None => None,
        };
        Ok(self.conv_node(x, conv, &wn, bias.as_deref()))
    }

    fn activate(&mut self, x: &str, act: Activation) -> String {
        match act {
            Activation::Relu => self.node("Relu", &[x], vec![]),
            Activation::Silu => {
                let s = self.node("Sigmoid", &[x], vec![]);
                self.node("Mul", &[x, &s], vec![])
            }
        }
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => DimensionValue::DimValue(*v),
                None => DimensionValue::DimParam("batch".into()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type: DTYPE_FLOAT, shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}

/// Builds the ONNX model for `model` (evaluation mode), weights inline.
pub fn export_bytes(
    model: &ResNetRs,
    meta: &CheckpointMeta,
    source_sha256: &str,
    options: &ExportOptions,
) -> Result<Vec<u8>, ModelError> {
    Ok(build(model, meta, source_sha256, options)?.encode_to_vec())
}

fn build(
    model: &ResNetRs,
    meta: &CheckpointMeta,
    source_sha256: &str,
    options: &ExportOptions,
) -> Result<ModelProto, ModelError> {
    let fold = options.fold_batch_norm;
    let act = model.config.activation;
    let mut g = Graph { fp16: options.fp16_weights, ..Graph::default() };
    let mut y = INPUT_NAME.to_string();
    for (conv, bn) in &model.stem {
        let z = g.conv_bn(&y, conv, bn, fold)?;
        y = g.activate(&z, act);
    }
    for stage in &model.layers {
        for block in stage {
            let a = g.conv_bn(&y, &block.conv1, &block.bn1, fold)?;
            let a = g.activate(&a, act);
            let b = g.conv_bn(&a, &block.conv2, &block.bn2, fold)?;
            let b = g.activate(&b, act);
            let c = g.conv_bn(&b, &block.conv3, &block.bn3, fold)?;
            let s = g.node("GlobalAveragePool", &[&c], vec![]);
            let s = g.plain_conv(&s, &block.se.fc1)?;
            let s = g.node("Relu", &[&s], vec![]);
            let s = g.plain_conv(&s, &block.se.fc2)?;
            let s = g.node("Sigmoid", &[&s], vec![]);
            let c = g.node("Mul", &[&c, &s], vec![]);
            let shortcut = match &block.downsample {
                None => y.clone(),
                Some(d) => {
                    let pooled = if d.pool {
                        g.node(
                            "AveragePool",
                            &[&y],
                            vec![
                                attr_ints("kernel_shape", &[2, 2]),
                                attr_ints("strides", &[2, 2]),
                                attr_int("ceil_mode", 1),
                                attr_int("count_include_pad", 0),
                            ],
                        )
                    } else {
                        y.clone()
                    };
                    g.conv_bn(&pooled, &d.conv, &d.bn, fold)?
                }
            };
            let sum = g.node("Add", &[&c, &shortcut], vec![]);
            y = g.activate(&sum, act);
        }
    }
    let pooled = g.node("GlobalAveragePool", &[&y], vec![]);
    let flat = g.node("Flatten", &[&pooled], vec![attr_int("axis", 1)]);
    let fw = g.constant("fc.weight", &values(&model.fc_weight)?, &model.fc_weight.size());
    let fb = g.constant("fc.bias", &values(&model.fc_bias)?, &model.fc_bias.size());
    let out_name = options.output.as_str();
    match options.output {
        OutputKind::Logits => {
            g.named_node("Gemm", &[&flat, &fw, &fb], vec![attr_int("transB", 1)], out_name);
        }
        OutputKind::Probabilities => {
            let logits = g.node("Gemm", &[&flat, &fw, &fb], vec![attr_int("transB", 1)]);
            g.named_node("Softmax", &[&logits], vec![attr_int("axis", 1)], out_name);
        }
    }
    let c = &model.config;
    let p = &meta.preprocess;
    let graph = GraphProto {
        node: g.nodes,
        name: c.name.clone(),
        initializer: g.initializers,
        doc_string: String::new(),
        input: vec![value_info(INPUT_NAME, &[None, Some(c.in_channels), Some(p.height as i64), Some(p.width as i64)])],
        output: vec![value_info(out_name, &[None, Some(c.num_classes)])],
    };
    let props = [
        (keys::ONNX_MODEL_NAME, c.name.clone()),
        (keys::ONNX_CLASS_NAMES, json(&meta.class_names)),
        (keys::ONNX_PREPROCESS, json(p)),
        (keys::ONNX_OUTPUT_KIND, out_name.to_string()),
        (keys::ONNX_MODEL_CONFIG, json(c)),
        (keys::ONNX_SOURCE_SHA256, source_sha256.to_string()),
    ];
    let model_proto = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "selftrain".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        domain: String::new(),
        model_version: 1,
        doc_string: format!("{} exported by selftrain ({})", c.name, meta.role),
        graph: Some(graph),
        metadata_props: props
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key: key.into(), value })
            .collect(),
    };
    Ok(model_proto)
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serialises to JSON")
}

/// Exports to `path` (written atomically). With external data the weights go
/// to `<file name>.data` beside it, written first, so the `.onnx` file never
/// points at a missing or partial data file.
pub fn export(
    model: &ResNetRs,
    meta: &CheckpointMeta,
    source_sha256: &str,
    options: &ExportOptions,
    path: &Path,
) -> Result<(), ModelError> {
    let mut proto = build(model, meta, source_sha256, options)?;
    let fail =
        |e: selftrain_data::DataError| ModelError::Checkpoint { path: path.to_path_buf(), message: e.to_string() };
    let graph = proto.graph.as_mut().expect("built with a graph");
    let weight_bytes: usize = graph.initializer.iter().map(|t| t.raw_data.len()).sum();
    if options.external_data == ExternalData::Always || weight_bytes > EXTERNAL_DATA_THRESHOLD {
        let file_name =
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.onnx".into());
        let data_name = format!("{file_name}.data");
        let mut data = Vec::with_capacity(weight_bytes);
        for t in &mut graph.initializer {
            // Offsets aligned to 4 KiB so the runtime can map them.
            data.resize(data.len().div_ceil(4096) * 4096, 0);
            let offset = data.len();
            data.extend_from_slice(&t.raw_data);
            t.external_data = vec![
                StringStringEntryProto { key: "location".into(), value: data_name.clone() },
                StringStringEntryProto { key: "offset".into(), value: offset.to_string() },
                StringStringEntryProto { key: "length".into(), value: t.raw_data.len().to_string() },
            ];
            t.data_location = LOCATION_EXTERNAL;
            t.raw_data = Vec::new();
        }
        write_atomic(&path.with_file_name(&data_name), &data).map_err(fail)?;
    }
    write_atomic(path, &proto.encode_to_vec()).map_err(fail)
}
