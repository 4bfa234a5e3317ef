//! The `qrelay` binary as a user runs it: `serve` on built-in defaults (certificates created
//! on first start), `token`, `default-config`, and a bounded exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qrelay");
/// Every wait in this file is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn serve_creates_its_certificates_prints_how_to_connect_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(relay.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("qrelay listening on UDP 127.0.0.1:"), "{first:?}");
    for file in ["ca.pem", "ca.key", "server.pem", "server.key", "token.secret"] {
        assert!(dir.path().join("certs").join(file).is_file(), "certs/{file} missing");
    }
    // The token command uses the secret the relay created.
    let token = Command::new(BIN)
        .args(["token", "--user", "alice", "--room", "lobby", "--ttl", "10m"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(token.status.success());
    assert_eq!(String::from_utf8(token.stdout).unwrap().trim().split('.').count(), 3, "a JWT");

    let status = Command::new("kill").args(["-TERM", &relay.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + LIMIT;
    let exit = loop {
        if let Some(exit) = relay.try_wait().unwrap() {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = relay.kill();
            panic!("the relay did not exit within {LIMIT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn token_refuses_bad_input_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["token", "--user", "alice"])
        .current_dir(dir.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("qrelay serve"), "says how to create the secret: {stderr}");
    let output = Command::new(BIN)
        .args(["token", "--user", "a b"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a valid user ID"));
}

#[test]
fn default_config_is_a_valid_config_file() {
    let output = Command::new(BIN).arg("default-config").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let config: qrelay::server::ServerConfig = toml::from_str(&text).unwrap();
    assert_eq!(config, qrelay::server::ServerConfig::default());
}
