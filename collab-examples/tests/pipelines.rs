//! Every pipeline file under `pipelines/` parses and gives a usable server and device config,
//! so the files a user starts from never rot.

use std::path::Path;

use collab_net::pipeline::PipelineConfig;

#[test]
fn every_shipped_pipeline_file_builds_both_sides() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("pipelines folder") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.display();
        let pipeline = PipelineConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let server = pipeline
            .server_config()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        server
            .policy
            .build()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (device, strategy) = pipeline
            .device_config()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(device.deadline.as_secs_f64() > 0.0, "{name}");
        assert!(!format!("{strategy:?}").is_empty());
        checked += 1;
    }
    assert!(
        checked >= 2,
        "found {checked} pipeline files in {}",
        dir.display()
    );
}

/// The deployment files under `deploy/`: the worker's and the device's pipeline files build
/// their side and name a usable `[nats]`, and the brokers' users file grants exactly what
/// `collab_net::nats::permissions` grants (the permissions the tests run under).
#[test]
fn the_deployment_files_build_and_match_the_tested_permissions() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let check_nats = |pipeline: &PipelineConfig, name: &str| {
        let nats = pipeline
            .nats
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no [nats]"));
        nats.subjects().unwrap_or_else(|e| panic!("{name}: {e}"));
        nats.ack_wait().unwrap_or_else(|e| panic!("{name}: {e}"));
        nats.duplicate_window()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(nats.tls_ca.is_some(), "{name}: TLS off");
    };
    let worker =
        PipelineConfig::load(&deploy.join("worker.toml")).unwrap_or_else(|e| panic!("{e}"));
    worker.server_config().expect("worker.toml [server]");
    check_nats(&worker, "worker.toml");
    let device =
        PipelineConfig::load(&deploy.join("device.toml")).unwrap_or_else(|e| panic!("{e}"));
    device.device_config().expect("device.toml [device]");
    check_nats(&device, "device.toml");

    let users = std::fs::read_to_string(deploy.join("nats/users.conf")).expect("users.conf");
    let subjects = collab_net::nats::Subjects::new("collab").expect("prefix");
    for (name, role) in [
        ("worker", collab_net::nats::Role::Worker),
        ("phone-0", collab_net::nats::Role::Device),
    ] {
        let user = collab_net::nats::User {
            name: name.into(),
            password: String::new(),
            role,
        };
        let (publish, subscribe) = collab_net::nats::permissions(&subjects, &user);
        // The user's entry runs from its name to the next entry.
        let start = users
            .find(&format!("user: \"{name}\""))
            .unwrap_or_else(|| panic!("no user {name} in users.conf"));
        let entry = &users[start..];
        let entry = &entry[..entry[1..].find("{ user:").map_or(entry.len(), |e| e + 1)];
        let quoted = entry.matches('"').count() / 2 - 1; // less the user's name
        for subject in publish.iter().chain(&subscribe) {
            assert!(
                entry.contains(&format!("\"{subject}\"")),
                "users.conf: {name} lacks {subject}"
            );
        }
        assert_eq!(
            quoted,
            publish.len() + subscribe.len(),
            "users.conf grants {name} more than the tested permissions"
        );
    }
}
