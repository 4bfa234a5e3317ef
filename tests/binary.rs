//! The `qrelay` binary as a user runs it: `serve` on built-in defaults (certificates created
//! on first start), `token`, `default-config`, a bounded exit on SIGTERM, and what it says and
//! refuses about `insecure_dev_auth`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_qrelay");
/// Every wait in this file is bounded by this.
const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn serve_creates_its_certificates_prints_how_to_connect_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--web", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(relay.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("qrelay listening on UDP 127.0.0.1:"), "{first:?}");
    // The banner ends with the documented machine-readable line.
    let ready = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "the banner has no ready line");
        if let Some(rest) = line.strip_prefix("qrelay ready ") {
            break rest.trim().to_owned();
        }
    };
    let http: std::net::SocketAddr = ready
        .split(' ')
        .find_map(|field| field.strip_prefix("http="))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("{ready:?}"));
    assert!(ready.starts_with(&format!("quic={}", first.trim().rsplit(' ').next().unwrap())));
    let health = http_get(http, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let certs = dir.path().join("certs");
    for file in ["ca.pem", "server.pem", "server.key", "token.secret", "api.key"] {
        assert!(certs.join(file).is_file(), "certs/{file} missing");
    }
    assert!(!certs.join("ca.key").exists(), "the CA key signs once and is not kept");
    for private in ["server.key", "token.secret", "api.key"] {
        assert_eq!(mode(&certs.join(private)), 0o600, "certs/{private}");
    }
    // The token command uses the secret the relay created.
    let token = Command::new(BIN)
        .args(["token", "--user", "alice", "--room", "lobby", "--ttl", "10m"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(token.status.success());
    assert_eq!(String::from_utf8(token.stdout).unwrap().trim().split('.').count(), 3, "a JWT");

    stop(&mut relay);
}

/// Runs `qrelay serve ARGS` in `dir` with logs off until its banner's first line, then stops it
/// with SIGTERM (expecting a clean exit); the first line and the rest of the banner.
fn banner_of(dir: &tempfile::TempDir, args: &[&str]) -> (String, String) {
    let mut relay = Command::new(BIN)
        .arg("serve")
        // The page listener's default port may be taken (another relay, another test).
        .args(["--web", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir.path())
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(relay.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    // The rest of the banner is written at once; stopping the relay ends the output.
    stop(&mut relay);
    let mut banner = String::new();
    stdout.read_to_string(&mut banner).unwrap();
    (first, banner)
}

/// A plain HTTP/1.1 GET; the whole answer.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, LIMIT).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Sends SIGTERM and expects a clean exit within [`LIMIT`].
fn stop(relay: &mut Child) {
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
fn insecure_dev_auth_is_said_in_the_banner_whatever_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let (first, banner) =
        banner_of(&dir, &["--listen", "127.0.0.1:0", "--no-http", "--insecure-dev-auth"]);
    assert!(first.starts_with("qrelay listening on UDP 127.0.0.1:"), "{first:?}");
    assert!(banner.contains("INSECURE DEV AUTH"), "{banner:?}");
}

#[test]
fn insecure_dev_auth_is_refused_off_loopback_without_its_second_setting() {
    let dir = tempfile::tempdir().unwrap();
    // A documentation address (RFC 5737): refused before any socket is bound.
    let output = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "192.0.2.1:4433",
            "--no-http",
            "--no-web",
            "--insecure-dev-auth",
        ])
        .current_dir(dir.path())
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--insecure-dev-auth-on-public-address"), "names the flag: {stderr}");
    assert!(!dir.path().join("certs").exists(), "refused before creating any file");
}

#[test]
fn private_files_are_made_owner_only_when_regenerated_and_loose_ones_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let loose = |file: &str, contents: &str| {
        std::fs::write(certs.join(file), contents).unwrap();
        std::fs::set_permissions(certs.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    // server.pem is missing, so the PKI is regenerated over the old 0644 server.key; the
    // token secret is kept as it is, and so is a CA key an earlier version left.
    loose("server.key", "old key");
    loose("token.secret", &"ab".repeat(32));
    loose("ca.key", "old CA key");
    let (first, banner) = banner_of(&dir, &["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    assert!(first.starts_with("qrelay listening on UDP"), "{first:?}");
    assert_eq!(mode(&certs.join("server.key")), 0o600, "regenerated: owner only");
    assert!(!banner.contains("server.key"), "{banner}");
    let warning = |file: &str| banner.lines().find(|l| l.contains("WARNING") && l.contains(file));
    let secret = warning("token.secret").unwrap_or_else(|| panic!("{banner}"));
    assert!(secret.contains("mode 644") && secret.contains("chmod 600"), "{secret}");
    assert!(warning("ca.key").is_some_and(|l| l.contains("delete it")), "{banner}");
    assert_eq!(mode(&certs.join("token.secret")), 0o644, "a warning, not a change");
}

/// The permission bits of `path`.
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
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
    // A bad room lists the characters allowed, as a bad user does; no stack trace, whatever
    // RUST_BACKTRACE says.
    for args in [["--user", "a b", "--room", "lobby"], ["--user", "alice", "--room", "a room"]] {
        let output =
            Command::new(BIN).arg("token").args(args).env("RUST_BACKTRACE", "1").output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains("bytes of letters, digits and ~!@#$%^&*()_+=-;',.<>|"), "{stderr}");
        assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

/// PROTOCOL.md section 8: the HMAC key is the bytes hex-decoded from the secret file, not the
/// hex text.
#[test]
fn tokens_are_signed_with_the_secrets_bytes_not_its_hex_text() {
    let dir = tempfile::tempdir().unwrap();
    let secret: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
    let path = dir.path().join("token.secret");
    std::fs::write(&path, format!("{}\n", hex::encode(secret))).unwrap();
    let output = Command::new(BIN)
        .args(["token", "--user", "alice", "--secret"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap();
    let claims = qrelay::auth::TokenKey::new(&secret).check(token.trim()).expect("valid");
    assert_eq!(claims.sub, "alice");
    let hex_text = qrelay::auth::TokenKey::new(hex::encode(secret).as_bytes());
    assert_eq!(hex_text.check(token.trim()), Err(qrelay::auth::TokenError::Invalid));
}

#[test]
fn default_config_is_a_valid_config_file() {
    let output = Command::new(BIN).arg("default-config").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let config: qrelay::server::ServerConfig = toml::from_str(&text).unwrap();
    assert_eq!(config, qrelay::server::ServerConfig::default());
}
