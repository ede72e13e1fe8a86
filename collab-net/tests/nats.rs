//! Scale-out through a real `nats-server` (JetStream, file store, loopback): workers that are
//! `collab-server` processes killed with SIGKILL mid-run, a broker restarted mid-run, a slow
//! worker beside a fast one, and the broker's credentials, subject permissions and TLS.
//!
//! Each test needs `nats-server` (`.ci/run` installs the Debian package); without it each
//! says so on stderr and returns: the feature is then untested, not faked.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use collab_core::fixtures;
use collab_core::input::ImagePreprocess;
use collab_core::model::{ModelConfig, Transformer};
use collab_net::client::{ClientConfig, ClientError, DeviceClient, Outgoing};
use collab_net::nats::{
    Access, Broker, EmulatedGpu, EmulatedWorker, NatsConfig, NatsWorker, Role, Subjects, User,
};
use collab_net::server::ServerConfig;
use collab_net::wire::{Prediction, RemoteError, Welcome, raw_rgb8};

const MODEL: &str = "deit_tiny_patch16_224";
const WORKER_PASSWORD: &str = "worker-secret";

fn broker_or_skip(test: &str) -> bool {
    if Broker::binary().is_none() {
        // CI installs it and sets this: there a missing broker is a failure, not a skip.
        assert!(
            std::env::var_os("COLLAB_REQUIRE_NATS").is_none(),
            "{test}: nats-server is not installed and COLLAB_REQUIRE_NATS is set"
        );
        eprintln!(
            "SKIPPED {test}: nats-server is not installed (apt-get install nats-server; \
             .ci/run does)"
        );
        return false;
    }
    true
}

fn subjects() -> Subjects {
    Subjects::new("collab").expect("prefix")
}

/// Workers `worker` and devices `dev-0..n` with passwords `<name>-secret`.
fn access(devices: usize) -> Access {
    let mut users = vec![User {
        name: "worker".into(),
        password: WORKER_PASSWORD.into(),
        role: Role::Worker,
    }];
    users.extend((0..devices).map(|i| User {
        name: format!("dev-{i}"),
        password: format!("dev-{i}-secret"),
        role: Role::Device,
    }));
    Access { users }
}

fn device_nats(broker: &Broker, i: usize) -> NatsConfig {
    NatsConfig::new(broker.url()).with_credentials(format!("dev-{i}"), format!("dev-{i}-secret"))
}

/// Devices `dev-0..n`, connected through `broker` with their own credentials.
async fn connect_devices(broker: &Broker, n: usize) -> Vec<DeviceClient> {
    let mut clients = Vec::new();
    for i in 0..n {
        let name = format!("dev-{i}");
        let client = DeviceClient::connect_nats(&device_nats(broker, i), client_config(&name))
            .await
            .unwrap_or_else(|e| panic!("{name} connects: {e}"));
        clients.push(client);
    }
    clients
}

fn client_config(device: &str) -> ClientConfig {
    ClientConfig {
        device_id: device.into(),
        model_id: MODEL.into(),
        connect_timeout: Duration::from_secs(3),
        max_attempts: 20,
        ..ClientConfig::default()
    }
}

/// Server-only payloads of the first `n` ImageNet sample images (224 px crops).
fn payloads(n: usize) -> Vec<Vec<u8>> {
    let pre = ImagePreprocess::imagenet(224);
    fixtures::imagenet_sample()
        .expect("ImageNet sample")
        .iter()
        .take(n)
        .map(|s| {
            let image = image::open(&s.path).expect("image").to_rgb8();
            pre.crop_rgb(&image).expect("crop").into_raw()
        })
        .collect()
}

fn request(payload: &[u8], deadline: Duration) -> Outgoing {
    Outgoing {
        split: 0,
        codec: raw_rgb8(),
        payload: payload.to_vec(),
        budget: deadline,
        max_loss: 0.0,
        meta: None,
    }
}

/// A `collab-server` process serving DeiT-Tiny as a NATS worker.
struct WorkerProcess {
    child: Child,
    metrics: String,
}

impl WorkerProcess {
    fn start(dir: &Path, name: &str, url: &str) -> Self {
        let config = dir.join(format!("{name}.toml"));
        let ready = dir.join(format!("{name}.ready"));
        std::fs::write(
            &config,
            format!(
                "[model]\nid = \"{MODEL}\"\n\n[server]\nmetrics = \"127.0.0.1:0\"\n\
                 batch = {{ kind = \"shared\", budget = 4 }}\ncapacity = 8\n\n\
                 [nats]\nurl = \"{url}\"\nuser = \"worker\"\npassword_env = \"WORKER_PASSWORD\"\n\
                 ack_wait_s = 1.5\n"
            ),
        )
        .expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_collab-server"))
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .env("WORKER_PASSWORD", WORKER_PASSWORD)
            .env("COLLAB_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("collab-server");
        let start = Instant::now();
        let metrics = loop {
            if let Ok(addr) = std::fs::read_to_string(&ready)
                && addr.ends_with('\n')
            {
                break addr.trim().to_owned();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "worker {name} did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, metrics }
    }

    /// `collab_in_flight` from the worker's `/metrics`.
    fn in_flight(&self) -> Option<f64> {
        let mut stream = std::net::TcpStream::connect(&self.metrics).ok()?;
        use std::io::Write as _;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        text.lines()
            .find(|l| l.starts_with("collab_in_flight "))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn kill9(&mut self) {
        // SIGKILL: no graceful anything.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

type Answers = Vec<(usize, Result<Prediction, ClientError>)>;

/// `devices` clients each sending `per_device` requests (cycling the payloads), `in_flight`
/// at a time; every call's one result, with its payload index.
async fn run_devices(
    clients: &[DeviceClient],
    payloads: &Arc<Vec<Vec<u8>>>,
    per_device: usize,
    in_flight: usize,
    deadline: Duration,
    done: Arc<AtomicUsize>,
) -> Answers {
    let mut tasks = Vec::new();
    for (d, client) in clients.iter().enumerate() {
        for lane in 0..in_flight {
            let (client, payloads, done) = (client.clone(), payloads.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in (lane..per_device).step_by(in_flight) {
                    let p = (d + i) % payloads.len();
                    let r = client
                        .infer(
                            request(&payloads[p], deadline),
                            deadline + Duration::from_secs(5),
                        )
                        .await;
                    done.fetch_add(1, Ordering::Relaxed);
                    out.push((p, r));
                }
                out
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("device task"));
    }
    all
}

/// Every call succeeded, and every answer for one image names the same top class.
fn assert_all_answered(answers: &Answers, expected: usize) {
    assert_eq!(answers.len(), expected);
    let mut top: HashMap<usize, u32> = HashMap::new();
    for (p, r) in answers {
        let prediction = match r {
            Ok(p) => p,
            Err(e) => panic!("a request failed: {e}"),
        };
        let class = prediction.top.first().expect("a top class").0;
        assert_eq!(*top.entry(*p).or_insert(class), class, "image {p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_and_duplicates_nothing() {
    if !broker_or_skip("a_worker_killed_mid_run_loses_and_duplicates_nothing") {
        return;
    }
    let dir = tempdir("kill");
    let broker = Broker::start(&dir, &subjects(), &access(4), None).expect("nats-server");
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|i| WorkerProcess::start(&dir, &format!("worker-{i}"), &broker.url()))
        .collect();
    let clients = connect_devices(&broker, 4).await;
    let payloads = Arc::new(payloads(4));
    let deadline = Duration::from_secs(60);
    let run = {
        let (clients, payloads) = (clients.clone(), payloads.clone());
        tokio::spawn(async move {
            run_devices(&clients, &payloads, 16, 3, deadline, Arc::default()).await
        })
    };
    // Kill worker 0 while it holds requests (accepted, unanswered, unacknowledged).
    let start = Instant::now();
    loop {
        if workers[0].in_flight().unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "worker 0 never held a request"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    workers[0].kill9();
    let answers = run.await.expect("devices");
    assert_all_answered(&answers, 4 * 16);
    for c in &clients {
        assert_eq!(
            c.unmatched_answers(),
            0,
            "a device received a second answer"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_accepted_request() {
    if !broker_or_skip("a_broker_restart_loses_no_accepted_request") {
        return;
    }
    let dir = tempdir("restart");
    let mut broker = Broker::start(&dir, &subjects(), &access(2), None).expect("nats-server");
    let worker_nats = NatsConfig::new(broker.url()).with_credentials("worker", WORKER_PASSWORD);
    let model = Arc::new(deit_tiny());
    let worker = NatsWorker::start(
        model,
        ServerConfig {
            model_id: MODEL.into(),
            ..ServerConfig::default()
        },
        &worker_nats,
    )
    .await
    .expect("worker");
    let clients = connect_devices(&broker, 2).await;
    let payloads = Arc::new(payloads(2));
    let deadline = Duration::from_secs(60);
    let done = Arc::new(AtomicUsize::new(0));
    let run = {
        let (clients, payloads, done) = (clients.clone(), payloads.clone(), done.clone());
        tokio::spawn(async move { run_devices(&clients, &payloads, 30, 2, deadline, done).await })
    };
    // Restart (SIGKILL, then start on the same store) a third of the way through.
    while done.load(Ordering::Relaxed) < 20 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let broker = tokio::task::spawn_blocking(move || {
        broker.restart().expect("restart");
        broker
    })
    .await
    .expect("restart task");
    let before = done.load(Ordering::Relaxed);
    assert!(before < 60, "every request was answered before the restart");
    let answers = run.await.expect("devices");
    assert_all_answered(&answers, 2 * 30);
    worker.shutdown().await;
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_takes_fewer_requests() {
    if !broker_or_skip("a_slow_worker_takes_fewer_requests") {
        return;
    }
    let dir = tempdir("slow");
    let broker = Broker::start(&dir, &subjects(), &access(2), None).expect("nats-server");
    let nats = NatsConfig::new(broker.url()).with_credentials("worker", WORKER_PASSWORD);
    let gpu = |batch_ms: u64| EmulatedGpu {
        fixed: Duration::from_millis(batch_ms),
        per_item: Duration::ZERO,
        max_batch: 4,
    };
    let fast = EmulatedWorker::start(&nats, welcome(), gpu(10))
        .await
        .expect("fast");
    let slow = EmulatedWorker::start(&nats, welcome(), gpu(80))
        .await
        .expect("slow");
    let clients = connect_devices(&broker, 2).await;
    let payloads = Arc::new(vec![vec![0u8; 64]]);
    let answers = run_devices(
        &clients,
        &payloads,
        100,
        8,
        Duration::from_secs(30),
        Arc::default(),
    )
    .await;
    assert_eq!(answers.len(), 200);
    assert!(answers.iter().all(|(_, r)| r.is_ok()));
    let (f, s) = (fast.answered(), slow.answered());
    assert_eq!(f + s, 200);
    assert!(
        s * 2 < f,
        "the slow worker took {s} of 200, the fast one {f}"
    );
    fast.kill().await;
    slow.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_holds_devices_to_their_own_subjects_over_tls() {
    if !broker_or_skip("the_broker_holds_devices_to_their_own_subjects_over_tls") {
        return;
    }
    let dir = tempdir("tls");
    let (ca, cert, key) = test_certificates(&dir);
    let broker =
        Broker::start(&dir, &subjects(), &access(2), Some((&cert, &key))).expect("nats-server");
    assert!(broker.url().starts_with("tls://"));
    let nats = |user: &str, password: &str| {
        NatsConfig::new(broker.url())
            .with_credentials(user, password)
            .with_tls_ca(&ca)
    };
    let worker = EmulatedWorker::start(
        &nats("worker", WORKER_PASSWORD),
        welcome(),
        EmulatedGpu {
            fixed: Duration::from_millis(1),
            per_item: Duration::ZERO,
            max_batch: 8,
        },
    )
    .await
    .expect("worker over TLS");
    // The right device, over TLS, is served.
    let dev0 = DeviceClient::connect_nats(&nats("dev-0", "dev-0-secret"), client_config("dev-0"))
        .await
        .expect("dev-0 connects over TLS");
    let dev1 = DeviceClient::connect_nats(&nats("dev-1", "dev-1-secret"), client_config("dev-1"))
        .await
        .expect("dev-1 connects over TLS");
    dev0.infer(
        request(&[0; 8], Duration::from_secs(5)),
        Duration::from_secs(10),
    )
    .await
    .expect("dev-0 served");
    // A wrong password is refused by the broker.
    let wrong = DeviceClient::connect_nats(&nats("dev-0", "guess"), client_config("dev-0")).await;
    assert!(
        matches!(&wrong, Err(ClientError::Unreachable { last, .. }) if last.contains("uthoriz")),
        "{wrong:?}"
    );
    // Without the CA the broker's certificate is not trusted.
    let untrusted = DeviceClient::connect_nats(
        &NatsConfig::new(broker.url()).with_credentials("dev-0", "dev-0-secret"),
        client_config("dev-0"),
    )
    .await;
    assert!(untrusted.is_err(), "connected without trusting the CA");
    // A device claiming another's id with its own credentials: the broker refuses its
    // handshake subject, so no worker ever answers it.
    let mut config = client_config("dev-1");
    config.max_attempts = 2;
    config.connect_timeout = Duration::from_millis(500);
    let claimed = DeviceClient::connect_nats(&nats("dev-0", "dev-0-secret"), config).await;
    assert!(claimed.is_err(), "dev-0 passed as dev-1");
    // Raw clients as dev-0: publishing to dev-1's answers or requests, and reading dev-1's
    // answers, are refused; dev-1 receives nothing.
    let raw = async_nats::ConnectOptions::new()
        .user_and_password("dev-0".into(), "dev-0-secret".into())
        .add_root_certificates(ca.clone())
        .require_tls(true)
        .custom_inbox_prefix("_INBOX.dev-0")
        .connect(broker.url())
        .await
        .expect("raw dev-0");
    let js = async_nats::jetstream::new(raw.clone());
    let forged = js
        .publish("collab.reply.dev-1", forged_answer().into())
        .await
        .expect("sent")
        .await;
    assert!(forged.is_err(), "dev-0 stored an answer for dev-1");
    let foreign_request = js
        .publish(format!("collab.req.{MODEL}.dev-1"), vec![0u8; 8].into())
        .await
        .expect("sent")
        .await;
    assert!(foreign_request.is_err(), "dev-0 queued a request as dev-1");
    let read = js
        .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            "dev-1",
            "collab-replies",
        )
        .await;
    assert!(read.is_err(), "dev-0 opened dev-1's answers");
    // Handshakes and probes whose reply subject is not dev-0's own inbox: the worker must
    // not publish, with its rights, to dev-1's answers or to the JetStream API.
    for reply in [
        "collab.reply.dev-1".to_owned(),
        "$JS.API.STREAM.DELETE.collab-replies".to_owned(),
        format!("$JS.API.CONSUMER.DELETE.collab-req-{MODEL}.workers"),
    ] {
        for subject in [
            format!("collab.hello.{MODEL}.dev-0"),
            format!("collab.ping.{MODEL}.dev-0"),
        ] {
            raw.publish_with_reply(subject, reply.clone(), bytes::Bytes::new())
                .await
                .expect("sent");
        }
    }
    // Garbage on dev-0's own request subject (stored by the broker, then pulled): the worker
    // drops it and goes on serving.
    for junk in [vec![0xffu8; 64], vec![0u8; 3], Vec::new()] {
        js.publish(format!("collab.req.{MODEL}.dev-0"), junk.into())
            .await
            .expect("sent")
            .await
            .expect("dev-0 may queue on its own subject");
    }
    raw.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(500)).await;
    dev0.infer(
        request(&[0; 8], Duration::from_secs(5)),
        Duration::from_secs(10),
    )
    .await
    .expect("dev-0 served after its garbage");
    assert_eq!(dev1.unmatched_answers(), 0);
    dev1.infer(
        request(&[0; 8], Duration::from_secs(5)),
        Duration::from_secs(10),
    )
    .await
    .expect("dev-1 still served");
    worker.kill().await;
}

fn forged_answer() -> Vec<u8> {
    collab_net::wire::encode_frame(&collab_net::wire::Message::InferResponse(
        collab_net::wire::InferResponse {
            request_id: 1,
            outcome: Err(RemoteError::Failed("forged".into())),
        },
    ))
    .expect("encode")
}

fn welcome() -> Welcome {
    Welcome {
        model_id: MODEL.into(),
        layers: 12,
        tokens: 197,
        features: 192,
        max_frame: 8 << 20,
    }
}

fn deit_tiny() -> Transformer<collab_backends::candle::CandleBackend> {
    let path = fixtures::deit_tiny_checkpoint().expect("DeiT-Tiny fixture");
    let config = ModelConfig::preset(MODEL).expect("preset");
    Transformer::from_safetensors(collab_backends::candle::CandleBackend::cpu(), config, &path)
        .expect("DeiT-Tiny")
}

/// A fresh directory for one test's broker store, configs and certificates, removed when
/// dropped (declared first in a test, it outlives the broker and the workers using it).
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("collab-nats-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

/// A CA and a certificate for `localhost` / 127.0.0.1 signed by it, as PEM files.
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("ca.pem");
    std::fs::write(&paths.1, cert.pem()).expect("cert.pem");
    std::fs::write(&paths.2, key.serialize_pem()).expect("key.pem");
    paths
}

fn quick_gpu() -> EmulatedGpu {
    EmulatedGpu {
        fixed: Duration::from_millis(2),
        per_item: Duration::ZERO,
        max_batch: 8,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_answer_to_a_redelivered_request_never_reaches_the_device() {
    if !broker_or_skip("a_second_answer_to_a_redelivered_request_never_reaches_the_device") {
        return;
    }
    let dir = tempdir("dedup");
    let broker = Broker::start(&dir, &subjects(), &access(1), None).expect("nats-server");
    let nats = NatsConfig {
        ack_wait_s: 0.5,
        ..NatsConfig::new(broker.url()).with_credentials("worker", WORKER_PASSWORD)
    };
    // It stores every answer and acknowledges nothing: each request comes back.
    let forgetful = EmulatedWorker::start_forgetful(&nats, welcome(), quick_gpu())
        .await
        .expect("worker");
    let device = DeviceClient::connect_nats(&device_nats(&broker, 0), client_config("dev-0"))
        .await
        .expect("device connects");
    let payloads = Arc::new(vec![vec![1u8; 32]]);
    let answers = run_devices(
        std::slice::from_ref(&device),
        &payloads,
        10,
        2,
        Duration::from_secs(30),
        Arc::default(),
    )
    .await;
    assert!(answers.iter().all(|(_, r)| r.is_ok()));
    forgetful.kill().await;
    // After the ack wait the broker redelivers all ten to a worker that answers them again,
    // under the same message ids.
    let second = EmulatedWorker::start(&nats, welcome(), quick_gpu())
        .await
        .expect("worker");
    let start = Instant::now();
    while second.answered() < 10 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no redelivery: {}",
            second.answered()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for any second answer to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        device.unmatched_answers(),
        0,
        "the device received second answers"
    );
    second.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waited_past_its_deadline_is_answered_deadline_missed_unrun() {
    if !broker_or_skip("a_request_that_waited_past_its_deadline_is_answered_deadline_missed_unrun")
    {
        return;
    }
    let dir = tempdir("deadline");
    let broker = Broker::start(&dir, &subjects(), &access(1), None).expect("nats-server");
    let nats = NatsConfig::new(broker.url()).with_credentials("worker", WORKER_PASSWORD);
    let first = EmulatedWorker::start(&nats, welcome(), quick_gpu())
        .await
        .expect("worker");
    let device = DeviceClient::connect_nats(&device_nats(&broker, 0), client_config("dev-0"))
        .await
        .expect("device connects");
    first.kill().await;
    // Queued with no worker for longer than its 300 ms budget.
    let call = {
        let device = device.clone();
        tokio::spawn(async move {
            device
                .infer(
                    request(&[1; 8], Duration::from_millis(300)),
                    Duration::from_secs(20),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let late = EmulatedWorker::start(&nats, welcome(), quick_gpu())
        .await
        .expect("worker");
    let answer = call.await.expect("call");
    assert!(
        matches!(
            answer,
            Err(ClientError::Remote(RemoteError::DeadlineMissed { .. }))
        ),
        "{answer:?}"
    );
    assert_eq!(late.answered(), 0, "the expired request was computed");
    late.kill().await;
}
