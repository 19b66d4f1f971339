//! The ResNet-RS network.
//!
//! Variable names are timm's `resnetrs*` state-dict keys (`conv1.0.weight`,
//! `layer2.0.downsample.1.weight`, `fc.bias`, ...), so checkpoints move
//! between the two by name. Parameters that take no weight decay (BN scale
//! and shift, every bias) live in VarStore group 1.

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::config::{Activation, ModelConfig};

/// VarStore group of parameters that take no weight decay.
pub const NO_DECAY_GROUP: usize = 1;
pub const BN_EPS: f64 = 1e-5;
/// PyTorch convention (new = (1 - m) * old + m * batch); TF's 0.9 decay.
pub const BN_MOMENTUM: f64 = 0.1;

/// A bias-free or biased 2-D convolution.
#[derive(Debug)]
pub struct Conv {
    pub name: String,
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: i64,
    pub padding: i64,
}

impl Conv {
    fn new(p: &nn::Path, name: &str, cin: i64, cout: i64, kernel: i64, stride: i64, bias: bool) -> Conv {
        let p = p / name;
        // timm: kaiming normal, fan-out, ReLU gain.
        let init = Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        };
        let weight = p.var("weight", &[cout, cin, kernel, kernel], init);
        let bias = bias.then(|| p.set_group(NO_DECAY_GROUP).var("bias", &[cout], Init::Const(0.0)));
        Conv { name: p.components().collect::<Vec<_>>().join("."), weight, bias, stride, padding: kernel / 2 }
    }

    /// `[N, cin, H, W] -> [N, cout, H / stride, W / stride]`
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.conv2d(&self.weight, self.bias.as_ref(), [self.stride], [self.padding], [1], 1)
    }
}

/// Batch normalisation with running statistics.
#[derive(Debug)]
pub struct BatchNorm {
    pub name: String,
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

impl BatchNorm {
    fn new(p: &nn::Path, name: &str, channels: i64, zero_scale: bool) -> BatchNorm {
        let p = p / name;
        let g = p.set_group(NO_DECAY_GROUP);
        BatchNorm {
            name: p.components().collect::<Vec<_>>().join("."),
            weight: g.var("weight", &[channels], Init::Const(if zero_scale { 0.0 } else { 1.0 })),
            bias: g.var("bias", &[channels], Init::Const(0.0)),
            running_mean: p.zeros_no_train("running_mean", &[channels]),
            running_var: p.ones_no_train("running_var", &[channels]),
        }
    }

    /// Shape-preserving.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }
}

/// Squeeze-and-excitation: pool, 1x1 conv down (with bias), ReLU, 1x1 conv
/// up (with bias), sigmoid gate.
#[derive(Debug)]
pub struct SqueezeExcite {
    pub fc1: Conv,
    pub fc2: Conv,
}

impl SqueezeExcite {
    /// Shape-preserving.
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        let s = xs.mean_dim([2, 3].as_slice(), true, Kind::Float);
        let s = self.fc2.forward(&self.fc1.forward(&s).relu()).sigmoid();
        xs * s
    }
}

/// ResNet-D projection shortcut: 2x2 average pool when striding, 1x1 conv, BN.
#[derive(Debug)]
pub struct Downsample {
    pub pool: bool,
    pub conv: Conv,
    pub bn: BatchNorm,
}

#[derive(Debug)]
pub struct Bottleneck {
    pub conv1: Conv,
    pub bn1: BatchNorm,
    pub conv2: Conv,
    pub bn2: BatchNorm,
    pub conv3: Conv,
    pub bn3: BatchNorm,
    pub se: SqueezeExcite,
    pub downsample: Option<Downsample>,
    pub drop_rate: f64,
}

/// Squeeze width of the SE gate: `ratio * channels` rounded to a multiple of
/// 8, at least 8 (timm's `make_divisible`; equal to `ratio * channels` for
/// every width the family uses).
pub fn se_width(channels: i64, ratio: f64) -> i64 {
    (((channels as f64 * ratio + 4.0) as i64) / 8 * 8).max(8)
}

/// The 2x2 stride-2 average pool of ResNet-D shortcuts (ceil mode, padding
/// not counted, as timm does for odd sizes).
pub fn shortcut_pool(xs: &Tensor) -> Tensor {
    xs.avg_pool2d([2, 2], [2, 2], [0, 0], true, false, None)
}

/// Drops whole residual branches per sample with probability `rate`.
fn drop_path(xs: Tensor, rate: f64, train: bool) -> Tensor {
    if !train || rate == 0.0 {
        return xs;
    }
    let keep = 1.0 - rate;
    let n = xs.size()[0];
    let mask = Tensor::empty([n, 1, 1, 1], (xs.kind(), xs.device())).bernoulli_float_(keep);
    xs * mask / keep
}

impl Bottleneck {
    fn new(p: &nn::Path, cin: i64, width: i64, stride: i64, config: &ModelConfig, drop_rate: f64) -> Bottleneck {
        let cout = width * 4;
        let squeezed = se_width(cout, config.se_ratio);
        let downsample = (stride != 1 || cin != cout).then(|| {
            let d = p / "downsample";
            // Index 0 is the (parameter-free) pool, as in timm's Sequential.
            Downsample {
                pool: stride != 1,
                conv: Conv::new(&d, "1", cin, cout, 1, 1, false),
                bn: BatchNorm::new(&d, "2", cout, false),
            }
        });
        let se = p / "se";
        Bottleneck {
            conv1: Conv::new(p, "conv1", cin, width, 1, 1, false),
            bn1: BatchNorm::new(p, "bn1", width, false),
            conv2: Conv::new(p, "conv2", width, width, 3, stride, false),
            bn2: BatchNorm::new(p, "bn2", width, false),
            conv3: Conv::new(p, "conv3", width, cout, 1, 1, false),
            bn3: BatchNorm::new(p, "bn3", cout, true),
            se: SqueezeExcite {
                fc1: Conv::new(&se, "fc1", cout, squeezed, 1, 1, true),
                fc2: Conv::new(&se, "fc2", squeezed, cout, 1, 1, true),
            },
            downsample,
            drop_rate,
        }
    }

    /// `[N, cin, H, W] -> [N, 4 * width, H / stride, W / stride]`
    pub fn forward_t(&self, xs: &Tensor, train: bool, act: Activation) -> Tensor {
        let y = activate(&self.bn1.forward_t(&self.conv1.forward(xs), train), act);
        let y = activate(&self.bn2.forward_t(&self.conv2.forward(&y), train), act);
        let y = self.se.forward(&self.bn3.forward_t(&self.conv3.forward(&y), train));
        let y = drop_path(y, self.drop_rate, train);
        let shortcut = match &self.downsample {
            None => xs.shallow_clone(),
            Some(d) => {
                let pooled = if d.pool { shortcut_pool(xs) } else { xs.shallow_clone() };
                d.bn.forward_t(&d.conv.forward(&pooled), train)
            }
        };
        activate(&(y + shortcut), act)
    }
}

pub fn activate(xs: &Tensor, act: Activation) -> Tensor {
    match act {
        Activation::Relu => xs.relu(),
        Activation::Silu => xs.silu(),
    }
}

/// A ResNet-RS classifier.
#[derive(Debug)]
pub struct ResNetRs {
    pub config: ModelConfig,
    /// Stem convs `conv1.0`, `conv1.3`, `conv1.6` with BNs `conv1.1`,
    /// `conv1.4`, `bn1`; then the max-pool's replacement `maxpool.0` + `maxpool.1`.
    pub stem: Vec<(Conv, BatchNorm)>,
    pub layers: Vec<Vec<Bottleneck>>,
    pub fc_weight: Tensor,
    pub fc_bias: Tensor,
    /// Whether activations run in channels-last memory order
    /// ([`ResNetRs::use_channels_last`]).
    pub channels_last: bool,
}

/// The same tensor with channels-last strides: NHWC in memory, NCHW in
/// shape. libtorch picks its channels-last kernels from the strides (tch has
/// no memory-format argument), and every op after a conv keeps the order.
pub fn to_channels_last(xs: &Tensor) -> Tensor {
    xs.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

impl ResNetRs {
    /// Stores every conv weight channels-last and makes the forward pass
    /// convert its input, so the whole trunk runs in that memory order
    /// (faster training on this project's CPU, docs/benchmarks.md has the
    /// figures). Values, names and checkpoints are
    /// unchanged: saving and export read tensors as contiguous NCHW. Call it
    /// before building an optimiser over the variables, and after loading
    /// weights or before: `copy_` keeps the destination's memory order.
    pub fn use_channels_last(&mut self) {
        let convs = self.stem.iter_mut().map(|(c, _)| c).chain(self.layers.iter_mut().flatten().flat_map(|b| {
            [&mut b.conv1, &mut b.conv2, &mut b.conv3, &mut b.se.fc1, &mut b.se.fc2]
                .into_iter()
                .chain(b.downsample.as_mut().map(|d| &mut d.conv))
        }));
        for conv in convs {
            let reordered = tch::no_grad(|| to_channels_last(&conv.weight));
            conv.weight.set_data(&reordered);
        }
        self.channels_last = true;
    }

    /// Creates the variables under `p` (normally the VarStore root).
    pub fn new(p: &nn::Path, config: &ModelConfig) -> ResNetRs {
        let [s0, s1, s2] = config.stem;
        let c1 = p / "conv1";
        let first_stride = if config.small_input { 1 } else { 2 };
        let stem = vec![
            (Conv::new(&c1, "0", config.in_channels, s0, 3, first_stride, false), BatchNorm::new(&c1, "1", s0, false)),
            (Conv::new(&c1, "3", s0, s1, 3, 1, false), BatchNorm::new(&c1, "4", s1, false)),
            (Conv::new(&c1, "6", s1, s2, 3, 1, false), BatchNorm::new(p, "bn1", s2, false)),
            (Conv::new(&(p / "maxpool"), "0", s2, s2, 3, 2, false), BatchNorm::new(&(p / "maxpool"), "1", s2, false)),
        ];
        let mut cin = s2;
        let mut layers = Vec::new();
        for (stage, (&blocks, &width)) in config.blocks.iter().zip(&config.widths).enumerate() {
            let lp = p / format!("layer{}", stage + 1);
            let rate = config.stage_drop_rate(stage);
            let mut stage_blocks = Vec::new();
            for b in 0..blocks {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                stage_blocks.push(Bottleneck::new(&(&lp / b), cin, width, stride, config, rate));
                cin = width * 4;
            }
            layers.push(stage_blocks);
        }
        let fc = p / "fc";
        let fc_weight = fc.var("weight", &[config.num_classes, cin], Init::Randn { mean: 0.0, stdev: 0.01 });
        let fc_bias = fc.set_group(NO_DECAY_GROUP).var("bias", &[config.num_classes], Init::Const(0.0));
        ResNetRs { config: config.clone(), stem, layers, fc_weight, fc_bias, channels_last: false }
    }

    /// Pooled features before dropout and the classifier:
    /// `[N, in_channels, H, W] -> [N, 4 * widths[3]]`.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let act = self.config.activation;
        let mut y = if self.channels_last { to_channels_last(xs) } else { xs.shallow_clone() };
        for (conv, bn) in &self.stem {
            y = activate(&bn.forward_t(&conv.forward(&y), train), act);
        }
        for stage in &self.layers {
            for block in stage {
                y = block.forward_t(&y, train, act);
            }
        }
        y.mean_dim([2, 3].as_slice(), false, Kind::Float)
    }

    /// Logits: `[N, in_channels, H, W] -> [N, num_classes]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let f = self.features_t(xs, train).dropout(self.config.dropout, train);
        f.linear(&self.fc_weight, Some(&self.fc_bias))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelSpec;

    #[test]
    fn small_member_has_expected_shapes_and_names() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut spec = ModelSpec::named("resnet-rs-50");
        spec.depth = Some([1, 1, 1, 1]);
        spec.width = Some(0.25);
        spec.small_input = Some(true);
        let config = spec.resolve(1, 10).unwrap();
        let model = ResNetRs::new(&vs.root(), &config);
        let out = model.forward_t(&Tensor::zeros([2, 1, 28, 28], (Kind::Float, tch::Device::Cpu)), false);
        assert_eq!(out.size(), vec![2, 10]);
        let vars = vs.variables();
        for key in [
            "conv1.0.weight",
            "conv1.4.running_var",
            "bn1.bias",
            "maxpool.0.weight",
            "layer1.0.se.fc1.bias",
            "layer2.0.downsample.1.weight",
            "layer4.0.bn3.weight",
            "fc.weight",
        ] {
            assert!(vars.contains_key(key), "missing {key}");
        }
        // Zero-initialised last BN scale.
        assert_eq!(vars["layer3.0.bn3.weight"].abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}

#[cfg(test)]
mod channels_last_tests {
    use super::*;
    use crate::config::ModelSpec;

    #[test]
    fn channels_last_computes_the_same_function_and_gradients() {
        let mut spec = ModelSpec::named("resnet-rs-50");
        spec.depth = Some([1, 2, 1, 1]);
        spec.width = Some(0.125);
        spec.dropout = Some(0.0);
        let config = spec.resolve(3, 7).unwrap();
        tch::manual_seed(1);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let plain = ResNetRs::new(&vs.root(), &config);
        // Non-zero last BN scales, so every branch matters.
        tch::no_grad(|| {
            for (name, mut t) in vs.variables() {
                if name.ends_with("bn3.weight") {
                    let _ = t.fill_(0.5);
                }
            }
        });
        let mut vs2 = nn::VarStore::new(tch::Device::Cpu);
        let mut reordered = ResNetRs::new(&vs2.root(), &config);
        reordered.use_channels_last();
        vs2.copy(&vs).unwrap();
        let w = &reordered.layers[1][0].conv2.weight;
        assert_ne!(w.stride(), plain.layers[1][0].conv2.weight.stride(), "weights are stored channels-last");
        let x = Tensor::randn([2, 3, 40, 40], (Kind::Float, tch::Device::Cpu));
        for train in [false, true] {
            let a = plain.forward_t(&x, train);
            let b = reordered.forward_t(&x, train);
            let diff = f64::try_from((&a - &b).abs().max()).unwrap();
            assert!(diff < 1e-4, "train {train}: logits differ by {diff}");
            a.sum(Kind::Float).backward();
            b.sum(Kind::Float).backward();
            let (ga, gb) = (plain.stem[0].0.weight.grad(), reordered.stem[0].0.weight.grad());
            let diff = f64::try_from((ga - gb).abs().max()).unwrap();
            assert!(diff < 1e-3, "train {train}: gradients differ by {diff}");
        }
    }
}

#[cfg(test)]
mod family_tests {
    use super::*;
    use crate::config::{FAMILY, ModelSpec};

    /// timm's trainable parameter counts for 1000 classes; an exact match is
    /// the structural proof that every size is the reference network.
    #[test]
    fn every_named_size_matches_the_reference_parameter_count() {
        let expected = [
            ("resnet-rs-50", 35_691_912),
            ("resnet-rs-101", 63_618_696),
            ("resnet-rs-152", 86_621_576),
            ("resnet-rs-200", 93_209_992),
            ("resnet-rs-270", 129_861_448),
            ("resnet-rs-350", 163_956_168),
            ("resnet-rs-420", 191_891_656),
        ];
        assert_eq!(expected.len(), FAMILY.len());
        for (name, want) in expected {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let config = ModelSpec::named(name).resolve(3, 1000).unwrap();
            let _model = ResNetRs::new(&vs.root(), &config);
            let got: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
            assert_eq!(got, want, "{name}");
        }
    }
}
