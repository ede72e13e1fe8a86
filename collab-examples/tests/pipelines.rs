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
