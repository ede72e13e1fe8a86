//! Pipeline files: the full example parses into the built-ins, defaults fill the gaps, and a
//! bad file is an error naming the key, the value and what is allowed.

use super::*;

const FULL: &str = r#"
[model]
id = "deit_tiny_patch16_224"

[server]
listen = "127.0.0.1:7000"
backend = "candle-cpu"
capacity = 9
hello_timeout_s = 0.5
[server.batch]
kind = "per-split"
budget = 4
[server.tokens]
kind = "fixed"
gamma = -6

[device]
server = "127.0.0.1:7000"
id = "phone"
deadline_ms = 250
max_loss = 0.01
[device.split]
kind = "selector"
tolerance = 0.2
"#;

#[test]
fn a_full_file_sets_both_sides() {
    let p = PipelineConfig::from_toml(FULL).expect("parses");
    let server = p.server_config().expect("server");
    let policy = server.policy.build().expect("policy");
    assert_eq!(
        (policy.name().as_str(), server.capacity),
        ("per-split(B=4)", 9)
    );
    assert_eq!(server.hello_timeout, Duration::from_millis(500));
    assert_eq!(server.model_id, "deit_tiny_patch16_224");
    assert_eq!(server.codecs.families().count(), 38);
    let context = collab_core::adaptive::TokenPolicyContext {
        layers: 12,
        tokens: 197,
        protected: 1,
        batch_budget: 4,
    };
    let tokens = server.tokens.as_ref().expect("tokens").build(&context);
    assert_eq!(tokens.expect("token policy").name(), "fixed(-6)");
    let (device, strategy) = p.device_config().expect("device");
    assert_eq!(device.deadline, Duration::from_millis(250));
    assert_eq!(device.max_loss, 0.01);
    assert!(format!("{strategy:?}").contains("0.2"), "{strategy:?}");
    assert_eq!(
        p.device.as_ref().and_then(|d| d.id.as_deref()),
        Some("phone")
    );
}

#[test]
fn missing_keys_take_the_defaults() {
    let p = PipelineConfig::from_toml("[model]\nid = \"m\"\n[server]\n").expect("parses");
    let server = p.server_config().expect("server");
    let policy = server.policy.build().expect("policy");
    assert!(
        policy.name().starts_with("shared-model"),
        "{}",
        policy.name()
    );
    assert_eq!(server.capacity, ServerConfig::default().capacity);
    assert!(server.tokens.is_none());
    assert!(matches!(
        p.device_config(),
        Err(PipelineError::Missing("device"))
    ));
}

fn parse_error(text: &str) -> String {
    match PipelineConfig::from_toml(text) {
        Err(e) => e.to_string(),
        Ok(p) => match p.server_config() {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted:\n{text}"),
        },
    }
}

#[test]
fn bad_files_name_the_key_the_value_and_what_is_allowed() {
    let m = "[model]\nid = \"m\"\n";
    let e = parse_error(&format!("{m}[server.batch]\nkind = \"fifo\"\n"));
    assert!(
        e.contains("fifo") && e.contains("per-split") && e.contains("line 4"),
        "{e}"
    );
    let e = parse_error(&format!("{m}[server]\ncapacty = 3\n"));
    assert!(e.contains("capacty") && e.contains("capacity"), "{e}");
    let e = parse_error(&format!("{m}[server]\nbackend = \"cuda-magic\"\n"));
    assert!(e.contains("cuda-magic") && e.contains("candle-cpu"), "{e}");
    let e = parse_error(&format!("{m}[server]\nframe_timeout_s = -1\n"));
    assert!(
        e.contains("server.frame_timeout_s") && e.contains("positive"),
        "{e}"
    );
    let e = parse_error(&format!(
        "{m}[server.batch]\nkind = \"shared\"\nbudget = 0\n"
    ));
    assert!(
        e.contains("server.batch") && e.contains("at least 1"),
        "{e}"
    );
    let e = parse_error(&format!(
        "{m}[server]\ntoken_env = \"COLLAB_TEST_NO_SUCH_VAR\"\n"
    ));
    assert!(e.contains("server.token_env"), "{e}");
    let e = parse_error(&format!("{m}[server]\ntls_cert = \"cert.pem\"\n"));
    assert!(e.contains("both tls_cert and tls_key"), "{e}");
    let e = parse_error(&format!(
        "{m}[server]\ndevice_tokens = \"/no/such/tokens.toml\"\n"
    ));
    assert!(e.contains("server.device_tokens"), "{e}");
    let e = parse_error(&format!("{m}[server]\nmax_handshaking = 0\n"));
    assert!(e.contains("max_handshaking must be at least 1"), "{e}");
    let e = parse_error(&format!("{m}[[codecs]]\nkind = \"builtin\"\n[server]\n"));
    assert!(
        e.contains("codecs[0]") && e.contains("registered twice"),
        "{e}"
    );
    let e = parse_error("[server]\n");
    assert!(e.contains("model"), "{e}");
    let device = PipelineConfig::from_toml(&format!(
        "{m}[device]\nserver = \"127.0.0.1:1\"\ndeadline_ms = 0\n"
    ))
    .expect("parses");
    let e = device
        .device_config()
        .expect_err("zero deadline")
        .to_string();
    assert!(
        e.contains("device.deadline_ms` = 0") && e.contains("milliseconds"),
        "{e}"
    );
}
