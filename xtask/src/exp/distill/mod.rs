//! `cargo xtask exp distill`: selective feature distillation (SPEC §6) on the digits, Table
//! 5.2's comparison: AllDistill, and AllDistill followed by distillation on public samples
//! chosen at random, by per-sample probability similarity, or by prototype (k-means cluster)
//! similarity, per client, in two scenarios.
//!
//! Setting (digits, 10 classes): the teacher is frozen DeiT-Tiny (its normalised class token,
//! 192 features, on 224 px images) with a fusion head fitted on the public samples; the
//! student is a small ViT of the generic model on 32 px images (the same images averaged 7 x 7)
//! whose head outputs the teacher's 192 features. `--test-per-class` images of every class are
//! held out; each client holds `--private` images of its classes (`--clients`, by default
//! 0-4 and 5-9); the rest is the cloud's public data. Accuracy is each client's, on the test
//! images of its classes, through the fusion head on the student's features.
//!
//! Scenarios (the SPEC names two; what tells them apart here is the student's size, the one
//! knob a device's latency budget turns): `insensitive`, a 4-block, 96-wide student;
//! `sensitive`, a 2-block, 64-wide one. Each row shows the student's measured batch-1 latency.

mod report;
mod teacher;

use std::time::Instant;

use anyhow::{Context, Result, bail};
use collab_backends::candle::CandleBackend;
use collab_core::distill::Distiller;
use collab_core::fixtures;
use collab_core::model::weights::SeededRandom;
use collab_core::model::{
    EncoderConfig, Input, ModelConfig, NormPlacement, Transformer, VitConfig,
};
use collab_policies::distill::clients::{ClientShare, ClientSplit};
use collab_policies::distill::compress::{CompressionModule, code_size};
use collab_policies::distill::train::{FusionHead, distil, outputs, probabilities};
use collab_policies::distill::{PrototypeSelection, RandomSelection, SimilaritySelection};
use collab_policies::token::tasks::{self, LabelledImages};
use collab_policies::train::{TrainConfig, TrainableModel};

use crate::exp::results_dir;

/// Arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Test images per class, held out from everything.
    #[arg(long, default_value_t = 50)]
    test_per_class: usize,
    /// Private images per client.
    #[arg(long, default_value_t = 60)]
    private: usize,
    /// Each client's classes as a range `a-b`, comma-separated clients.
    #[arg(long, value_delimiter = ',', default_values_t = ["0-4".to_string(), "5-9".to_string()])]
    clients: Vec<String>,
    /// Scenarios to run (`insensitive`, `sensitive`, `tiny`).
    #[arg(long, value_delimiter = ',', default_values_t = ["insensitive".to_string(), "sensitive".to_string(), "tiny".to_string()])]
    scenarios: Vec<String>,
    /// Epochs of AllDistill over the public images.
    #[arg(long, default_value_t = 100)]
    all_epochs: usize,
    /// Epochs of the personalising distillation over the selected images.
    #[arg(long, default_value_t = 10)]
    personal_epochs: usize,
    /// Mini-batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// AdamW learning rate of AllDistill.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// AdamW learning rate of the personalising distillation.
    #[arg(long, default_value_t = 1e-3)]
    personal_lr: f64,
    /// Public images selected per private image (the paper's n).
    #[arg(long, default_value_t = 3)]
    per_sample: usize,
    /// The fewest private images behind a prototype.
    #[arg(long, default_value_t = 3)]
    group_size: usize,
    /// Compression ratios of Table 5.3 (features / values sent), for the prototype-selected
    /// student.
    #[arg(long, value_delimiter = ',', default_values_t = [1.5f64, 2.0, 3.0, 4.0, 6.0, 9.0])]
    ratios: Vec<f64>,
    /// Prototype group sizes of Figure 5.12.
    #[arg(long, value_delimiter = ',', default_values_t = [3usize, 6, 9, 12])]
    group_sizes: Vec<usize>,
    /// Epochs of each compression module's training.
    #[arg(long, default_value_t = 60)]
    compress_epochs: usize,
    /// Personalisations per scheme and client, each with its own seed (uploads, selection,
    /// data order); the rows show their mean accuracy.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Load each scenario's AllDistill student saved by an earlier run with the same
    /// settings instead of training it again.
    #[arg(long)]
    reuse_base: bool,
    /// Seed of the split, the student's initialisation and the training order.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Side of the student's images: the digits' 224 px averaged in `224 / 32 = 7` px blocks.
const DOWNSAMPLE: usize = 7;

/// A student size standing for a latency budget.
struct Scenario {
    name: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "insensitive",
        hidden: 96,
        layers: 4,
        heads: 3,
    },
    Scenario {
        name: "sensitive",
        hidden: 64,
        layers: 2,
        heads: 2,
    },
    Scenario {
        name: "tiny",
        hidden: 32,
        layers: 1,
        heads: 2,
    },
];

impl Scenario {
    fn config(&self, features: usize) -> ModelConfig {
        ModelConfig::Vit(VitConfig {
            encoder: EncoderConfig {
                hidden: self.hidden,
                layers: self.layers,
                heads: self.heads,
                intermediate: 4 * self.hidden,
                layer_norm_eps: 1e-6,
                norm: NormPlacement::Pre,
            },
            image_size: 224 / DOWNSAMPLE,
            patch_size: 8,
            channels: 3,
            num_classes: features,
        })
    }
}

/// One line of Table 5.2.
struct Row {
    scenario: &'static str,
    client: usize,
    scheme: String,
    /// The prototype group size (cluster rows).
    group: Option<usize>,
    selected: usize,
    in_classes: f64,
    upload_bytes: usize,
    accuracy: f64,
    gain: f64,
}

fn parse_clients(specs: &[String]) -> Result<Vec<Vec<usize>>> {
    specs
        .iter()
        .map(|s| {
            let (a, b) = s
                .split_once('-')
                .with_context(|| format!("client `{s}` is not a range a-b"))?;
            let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
            if a > b || b >= 10 {
                bail!("client `{s}`: need a <= b < 10");
            }
            Ok((a..=b).collect())
        })
        .collect()
}

/// Accuracy of `model` through `head` on the samples `idx` of `data`.
fn accuracy(
    model: &Transformer<CandleBackend>,
    head: &FusionHead,
    data: &LabelledImages,
    idx: &[usize],
) -> Result<f64> {
    let f = outputs(model, data, idx, 64)?;
    let labels: Vec<usize> = idx.iter().map(|&i| data.labels[i]).collect();
    Ok(head.accuracy(&f, &labels)?)
}

/// Median batch-1 forward latency of `model` in milliseconds (20 runs after 3 warm-ups).
fn latency_ms(model: &Transformer<CandleBackend>, data: &LabelledImages) -> Result<f64> {
    let (x, _) = data.batch(model.backend(), &[0])?;
    let input = Input::Images(x);
    for _ in 0..3 {
        model.forward(&input)?;
    }
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            model
                .forward(&input)
                .map(|_| t.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<collab_core::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

pub(crate) fn run(args: Args) -> Result<()> {
    let clients = parse_clients(&args.clients)?;
    let scenarios: Vec<&Scenario> =
        args.scenarios
            .iter()
            .map(|n| {
                SCENARIOS.iter().find(|s| s.name == n).with_context(|| {
                    format!("unknown scenario `{n}` (insensitive, sensitive, tiny)")
                })
            })
            .collect::<Result<_>>()?;
    let data = tasks::digits_all()?;
    let split = ClientSplit::by_class(
        &data.labels,
        &clients,
        args.test_per_class,
        args.private,
        args.seed,
    )?;
    let teacher = teacher::features(&data)?;
    let small = data.downsampled(DOWNSAMPLE)?;
    drop(data);
    let features = teacher.first().map_or(0, Vec::len);
    let public_features: Vec<Vec<f32>> = split.public.iter().map(|&i| teacher[i].clone()).collect();
    let public_labels: Vec<usize> = split.public.iter().map(|&i| small.labels[i]).collect();
    let head_cfg = TrainConfig {
        epochs: 100,
        batch: 64,
        lr: 1e-2,
        weight_decay: 1e-4,
        seed: args.seed,
        progress: false,
    };
    let head = FusionHead::fit(&public_features, &public_labels, small.classes, &head_cfg)?;
    let public_probs = probabilities(&head, &public_features)?;
    println!(
        "{} public images, {} clients with {} private images each, {} test images",
        split.public.len(),
        clients.len(),
        args.private,
        split.clients.iter().map(|c| c.test.len()).sum::<usize>()
    );
    let mut teacher_acc = Vec::new();
    for (c, share) in split.clients.iter().enumerate() {
        let f: Vec<Vec<f32>> = share.test.iter().map(|&i| teacher[i].clone()).collect();
        let l: Vec<usize> = share.test.iter().map(|&i| small.labels[i]).collect();
        let acc = head.accuracy(&f, &l)?;
        println!("teacher (DeiT-Tiny + fusion head) on client {c}: {acc:.3}");
        teacher_acc.push(acc);
    }
    let dir = results_dir()?.join("distill");
    std::fs::create_dir_all(&dir)?;
    let ckpt = fixtures::models_dir().join("distill");
    std::fs::create_dir_all(&ckpt)?;
    let (mut rows, mut groups, mut compress) = (Vec::new(), Vec::new(), Vec::new());
    let mut latencies = Vec::new();
    for scenario in &scenarios {
        let all_cfg = TrainConfig {
            epochs: args.all_epochs,
            batch: args.batch,
            lr: args.lr,
            weight_decay: 1e-4,
            seed: args.seed,
            progress: true,
        };
        let saved = ckpt.join(format!(
            "student-{}-alldistill-e{}-t{}-p{}-s{}.safetensors",
            scenario.name, args.all_epochs, args.test_per_class, args.private, args.seed
        ));
        let (base, report) = if args.reuse_base && saved.exists() {
            println!(
                "{}: AllDistill student from {}",
                scenario.name,
                saved.display()
            );
            let base = Transformer::from_safetensors(
                CandleBackend::cpu(),
                scenario.config(features),
                &saved,
            )?;
            (base, None)
        } else {
            let student = Transformer::new(
                CandleBackend::differentiable(),
                scenario.config(features),
                &SeededRandom::new(args.seed),
            )?;
            let trainable = TrainableModel::new(student)?;
            let report = distil(
                &trainable,
                &small,
                &teacher,
                &split.public,
                &all_cfg,
                &format!("{} all-distill", scenario.name),
            )?;
            let base = trainable.snapshot(CandleBackend::cpu())?;
            base.save_safetensors(&saved)?;
            (base, Some(report))
        };
        let ms = latency_ms(&base, &small)?;
        let seconds = report.as_ref().map_or(f64::NAN, |r| r.seconds);
        latencies.push((scenario.name, ms, seconds));
        if let Some(r) = &report {
            println!(
                "{}: AllDistill mse {:.4} -> {:.4} in {:.0} s",
                scenario.name,
                r.losses.first().copied().unwrap_or(f64::NAN),
                r.losses.last().copied().unwrap_or(f64::NAN),
                r.seconds
            );
        }
        println!("{}: student batch-1 latency {ms:.2} ms", scenario.name);
        let cloud = Cloud {
            head: &head,
            small: &small,
            teacher: &teacher,
            public: &split.public,
            public_probs: &public_probs,
            ckpt: &ckpt,
        };
        for (c, share) in split.clients.iter().enumerate() {
            let (t, g, k) = personalise(&args, &cloud, scenario.name, c, share, &base)?;
            rows.extend(t);
            groups.extend(g);
            compress.extend(k);
        }
    }
    report::figure_5_12(&dir, &groups)?;
    report::table_5_3(&dir, &compress)?;
    report::table_5_2(&args, &dir, &rows, &teacher_acc, &latencies)
}

/// What one client's personalisation needs.
struct Client<'a> {
    scenario: &'static str,
    index: usize,
    share: &'a ClientShare,
    /// The student's class probabilities of the client's private images (device side).
    private: Vec<Vec<f32>>,
    base_acc: f64,
}

/// The cloud's side: data, teacher targets, public images and their teacher probabilities.
struct Cloud<'a> {
    head: &'a FusionHead,
    small: &'a LabelledImages,
    teacher: &'a [Vec<f32>],
    public: &'a [usize],
    public_probs: &'a [Vec<f32>],
    ckpt: &'a std::path::Path,
}

/// Uploads, selects and distils one scheme for one client; returns its row and the
/// personalised student with the images it was distilled on.
fn run_scheme(
    args: &Args,
    cloud: &Cloud<'_>,
    client: &Client<'_>,
    base: &Transformer<CandleBackend>,
    distiller: &dyn Distiller,
    group: Option<usize>,
) -> Result<(Row, Transformer<CandleBackend>, Vec<usize>)> {
    let name = distiller.name();
    let scheme = name.split('(').next().unwrap_or(&name).to_string();
    let mut accs = Vec::with_capacity(args.repeats);
    let mut first: Option<(Transformer<CandleBackend>, Vec<usize>, usize)> = None;
    for r in 0..args.repeats.max(1) {
        // Each repeat draws its own uploads (k-means), selection (random) and data order.
        let seed = args.seed ^ (client.index as u64 + 1) ^ ((r as u64) << 16);
        let upload = distiller.upload(&client.private, seed)?;
        upload.check()?;
        let chosen: Vec<usize> = distiller
            .select(&upload, cloud.public_probs, seed)?
            .into_iter()
            .map(|j| cloud.public[j])
            .collect();
        let cfg = TrainConfig {
            epochs: args.personal_epochs,
            batch: args.batch,
            lr: args.personal_lr,
            weight_decay: 1e-4,
            seed,
            progress: false,
        };
        let personal = TrainableModel::new(base.to_backend(CandleBackend::differentiable())?)?;
        distil(&personal, cloud.small, cloud.teacher, &chosen, &cfg, &name)?;
        let model = personal.snapshot(CandleBackend::cpu())?;
        accs.push(accuracy(
            &model,
            cloud.head,
            cloud.small,
            &client.share.test,
        )?);
        if first.is_none() {
            first = Some((model, chosen, upload.bytes()));
        }
    }
    let (model, chosen, upload_bytes) = first.context("no repeat ran")?;
    let tag = group.map_or(String::new(), |g| format!("-g{g}"));
    model.save_safetensors(&cloud.ckpt.join(format!(
        "student-{}-client{}-{scheme}{tag}.safetensors",
        client.scenario, client.index
    )))?;
    let acc = accs.iter().sum::<f64>() / accs.len() as f64;
    let in_classes = share_in(&chosen, client.share, cloud.small);
    println!(
        "{} client {} {name:<16} {} selected ({:.0}% of its classes), upload {} B, \
         accuracy {acc:.3} ({:+.3}; repeats {accs:.3?})",
        client.scenario,
        client.index,
        chosen.len(),
        100.0 * in_classes,
        upload_bytes,
        acc - client.base_acc
    );
    let row = Row {
        scenario: client.scenario,
        client: client.index,
        scheme,
        group,
        selected: chosen.len(),
        in_classes,
        upload_bytes,
        accuracy: acc,
        gain: acc - client.base_acc,
    };
    Ok((row, model, chosen))
}

/// One row of Table 5.3.
struct CompressRow {
    scenario: &'static str,
    client: usize,
    ratio: f64,
    bytes: usize,
    accuracy: f64,
}

/// The rows of one client: Table 5.2 (AllDistill and each scheme), Figure 5.12 (prototype
/// group sizes) and Table 5.3 (compression of the prototype-selected student).
fn personalise(
    args: &Args,
    cloud: &Cloud<'_>,
    scenario: &'static str,
    index: usize,
    share: &ClientShare,
    base: &Transformer<CandleBackend>,
) -> Result<(Vec<Row>, Vec<Row>, Vec<CompressRow>)> {
    let base_acc = accuracy(base, cloud.head, cloud.small, &share.test)?;
    let table = vec![Row {
        scenario,
        client: index,
        scheme: "all-distill".into(),
        group: None,
        selected: cloud.public.len(),
        in_classes: share_in(cloud.public, share, cloud.small),
        upload_bytes: 0,
        accuracy: base_acc,
        gain: 0.0,
    }];
    // Device side: the student's features of the private images through the fusion head.
    let private = probabilities(cloud.head, &outputs(base, cloud.small, &share.private, 64)?)?;
    let client = Client {
        scenario,
        index,
        share,
        private,
        base_acc,
    };
    let mut table = table;
    let n = args.per_sample;
    for distiller in [
        &RandomSelection { per_sample: n } as &dyn Distiller,
        &SimilaritySelection { per_sample: n },
    ] {
        table.push(run_scheme(args, cloud, &client, base, distiller, None)?.0);
    }
    let cluster = PrototypeSelection {
        per_sample: n,
        group_size: args.group_size,
    };
    let (row, student, chosen) =
        run_scheme(args, cloud, &client, base, &cluster, Some(args.group_size))?;
    table.push(row);
    let mut groups = Vec::new();
    for &g in &args.group_sizes {
        let d = PrototypeSelection {
            per_sample: n,
            group_size: g,
        };
        groups.push(run_scheme(args, cloud, &client, base, &d, Some(g))?.0);
    }
    // Table 5.3: compression modules trained on the selected images, the student frozen.
    let train = outputs(&student, cloud.small, &chosen, 64)?;
    let train_labels: Vec<usize> = chosen.iter().map(|&i| cloud.small.labels[i]).collect();
    let test = outputs(&student, cloud.small, &share.test, 64)?;
    let test_labels: Vec<usize> = share.test.iter().map(|&i| cloud.small.labels[i]).collect();
    let features = test.first().map_or(0, Vec::len);
    let mut compress = vec![CompressRow {
        scenario,
        client: index,
        ratio: 1.0,
        bytes: 4 * features,
        accuracy: cloud.head.accuracy(&test, &test_labels)?,
    }];
    for &ratio in &args.ratios {
        let cfg = TrainConfig {
            epochs: args.compress_epochs,
            batch: args.batch,
            lr: 1e-2,
            weight_decay: 1e-4,
            seed: args.seed,
            progress: false,
        };
        let code = code_size(features, ratio);
        let m = CompressionModule::fit(&train, &train_labels, cloud.small.classes, code, &cfg)?;
        let acc = m.accuracy(&test, &test_labels)?;
        println!(
            "{scenario} client {index} compression {ratio:>4} ({code} values, {} B): \
             accuracy {acc:.3}",
            m.bytes_per_inference()
        );
        compress.push(CompressRow {
            scenario,
            client: index,
            ratio,
            bytes: m.bytes_per_inference(),
            accuracy: acc,
        });
    }
    Ok((table, groups, compress))
}

/// The share of `idx` labelled with one of the client's classes.
fn share_in(idx: &[usize], share: &ClientShare, data: &LabelledImages) -> f64 {
    let n = idx
        .iter()
        .filter(|&&i| share.classes.contains(&data.labels[i]))
        .count();
    n as f64 / idx.len().max(1) as f64
}
