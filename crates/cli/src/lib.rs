//! The `selftrain` command line: one subcommand per pipeline stage, plus the
//! pipeline runner. This crate alone owns the terminal: results on stdout,
//! logs and progress bars on stderr.

mod bench;
pub mod commands;
mod pipeline;
mod progress;
mod stages;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::progress::{Bars, SuspendingStderr};

/// Noisy Student self-training with ResNet-RS: train a teacher, export it to
/// ONNX, pseudo-label an unlabelled corpus into Parquet shards, filter and
/// balance them, and train a noised student.
#[derive(Debug, Parser)]
#[command(name = "selftrain", version, propagate_version = true)]
pub struct Cli {
    /// Print only results and errors: no progress bars, no info logs.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// More log detail (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a teacher (labelled images) or a student (labelled images plus
    /// filtered pseudo-labels) from a train config; saves
    /// OUT/checkpoint.safetensors and evaluates on the test split.
    Train(commands::TrainArgs),
    /// Write a checkpoint as an ONNX model (from Rust, no Python).
    Export(commands::ExportArgs),
    /// Pseudo-label an unlabelled corpus with an ONNX classifier into
    /// Parquet shards (one per scheduler task).
    Label(commands::LabelArgs),
    /// Keep confident pseudo-labels and balance classes into one Parquet file.
    Filter(commands::FilterArgs),
    /// Accuracy of a checkpoint (.safetensors) or ONNX model on a labelled split.
    Eval(commands::EvalArgs),
    /// Run a pipeline file stage by stage into a work folder (finished stages
    /// are reused).
    Run(pipeline::RunArgs),
    /// Inspect ResNet-RS models.
    #[command(subcommand)]
    Model(commands::ModelCommand),
    /// Look at and build image corpora.
    #[command(subcommand)]
    Data(commands::DataCommand),
    /// Throughput measurements used by the scripts in benches/.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Options shared by the commands that run a model.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// Where libtorch runs: auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
}

impl DeviceArgs {
    pub fn device(&self) -> anyhow::Result<tch::Device> {
        parse_device(&self.device)
    }
}

pub fn parse_device(text: &str) -> anyhow::Result<tch::Device> {
    Ok(match text {
        "auto" => tch::Device::cuda_if_available(),
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => tch::Device::Cuda(n),
            None => anyhow::bail!("device {other:?}: expected auto, cpu, cuda or cuda:N"),
        },
    })
}

/// libtorch's CUDA library is only reached through static initialisers, so
/// the linker drops it; loading it by hand makes CUDA visible. On a CPU-only
/// libtorch the call fails harmlessly.
fn load_torch_cuda() {
    // SAFETY: dlopen with a constant, NUL-terminated name; the handle is
    // deliberately kept for the life of the process.
    let handle = unsafe { libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        tracing::debug!("libtorch_cuda.so not loaded: CPU only");
    }
}

fn init_logging(cli: &Cli, bars: &Bars) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(SuspendingStderr(bars.multi()))
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let bars = Bars::new(cli.quiet);
    init_logging(&cli, &bars);
    load_torch_cuda();
    let result = match &cli.command {
        Command::Train(a) => commands::train(a, &bars),
        Command::Export(a) => commands::export(a),
        Command::Label(a) => commands::label(a, &bars),
        Command::Filter(a) => commands::filter(a),
        Command::Eval(a) => commands::eval(a),
        Command::Run(a) => pipeline::run(a, &bars),
        Command::Model(m) => commands::model(m),
        Command::Bench(b) => bench::bench(b),
        Command::Data(d) => commands::data(d),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A path argument, for messages.
pub(crate) fn show(path: &std::path::Path) -> String {
    path.display().to_string()
}
