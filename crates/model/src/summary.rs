//! Size and cost of a configuration: parameters, multiply-adds at a
//! resolution, and the shape of each stage.

use serde::Serialize;
use tch::nn::VarStore;

use crate::config::ModelConfig;
use crate::resnet_rs::ResNetRs;

#[derive(Debug, Clone, Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub blocks: usize,
    pub channels: i64,
    pub height: i64,
    pub width: i64,
    pub multiply_adds: u64,
    pub stochastic_depth: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub num_classes: i64,
    pub resolution: i64,
    /// Trainable parameters, counted on the real network.
    pub parameters: i64,
    /// Convolution and classifier multiply-adds for one image.
    pub multiply_adds: u64,
    pub stages: Vec<StageSummary>,
}

fn conv_out(size: i64, kernel: i64, stride: i64) -> i64 {
    (size + 2 * (kernel / 2) - kernel) / stride + 1
}

struct Counter {
    h: i64,
    w: i64,
}

impl Counter {
    /// Multiply-adds of a conv on the current size; moves to the output size.
    fn conv(&mut self, cin: i64, cout: i64, kernel: i64, stride: i64) -> u64 {
        self.h = conv_out(self.h, kernel, stride);
        self.w = conv_out(self.w, kernel, stride);
        (cin * cout * kernel * kernel * self.h * self.w) as u64
    }
}

/// Summarises `config` at `resolution` x `resolution` pixels.
pub fn summarize(config: &ModelConfig, resolution: i64) -> ModelSummary {
    let vs = VarStore::new(tch::Device::Cpu);
    let _model = ResNetRs::new(&vs.root(), config);
    let parameters = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();

    let mut c = Counter { h: resolution, w: resolution };
    let [s0, s1, s2] = config.stem;
    let mut stem_macs = c.conv(config.in_channels, s0, 3, if config.small_input { 1 } else { 2 });
    stem_macs += c.conv(s0, s1, 3, 1) + c.conv(s1, s2, 3, 1) + c.conv(s2, s2, 3, 2);
    let mut stages = vec![StageSummary {
        stage: "stem".into(),
        blocks: 0,
        channels: s2,
        height: c.h,
        width: c.w,
        multiply_adds: stem_macs,
        stochastic_depth: 0.0,
    }];
    let mut cin = s2;
    for (i, (&blocks, &width)) in config.blocks.iter().zip(&config.widths).enumerate() {
        let cout = width * 4;
        let squeezed = crate::resnet_rs::se_width(cout, config.se_ratio);
        let mut macs = 0;
        for b in 0..blocks {
            let stride = if i > 0 && b == 0 { 2 } else { 1 };
            macs += c.conv(cin, width, 1, 1);
            macs += c.conv(width, width, 3, stride);
            macs += c.conv(width, cout, 1, 1);
            macs += (2 * cout * squeezed) as u64;
            if stride != 1 || cin != cout {
                // Pooled (ceil mode) to the block's output size, then 1x1.
                macs += (cin * cout * c.h * c.w) as u64;
            }
            cin = cout;
        }
        stages.push(StageSummary {
            stage: format!("layer{}", i + 1),
            blocks,
            channels: cout,
            height: c.h,
            width: c.w,
            multiply_adds: macs,
            stochastic_depth: config.stage_drop_rate(i),
        });
    }
    let head = (cin * config.num_classes) as u64;
    stages.push(StageSummary {
        stage: "head".into(),
        blocks: 0,
        channels: config.num_classes,
        height: 1,
        width: 1,
        multiply_adds: head,
        stochastic_depth: 0.0,
    });
    ModelSummary {
        name: config.name.clone(),
        num_classes: config.num_classes,
        resolution,
        parameters,
        multiply_adds: stages.iter().map(|s| s.multiply_adds).sum(),
        stages,
    }
}
