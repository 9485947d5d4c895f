//! Runs the real `tokenbroker` binary in a temporary directory against a fake provider.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]
// each test binary uses part of this
// The daemon is another process: bounding our waits on it takes real elapsed time.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BINARY: &str = env!("CARGO_BIN_EXE_tokenbroker");
const START_LIMIT: Duration = Duration::from_secs(20);

/// A temporary home for one daemon: config, store, socket, logs.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("tb.sock")
    }

    pub fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// A configuration with a generic `fake` provider and the given extra TOML appended.
    /// Sections named in `extra` must not repeat ones written here.
    pub fn config(&self, token_url: &str, refresh: &str, extra: &str) -> PathBuf {
        let text = format!(
            r#"
[server]
socket = "{socket}"
http = ""

[store]
dir = "{store}"

[refresh]
{refresh}

[providers.fake]
preset = "generic"
client_id = "client"
auth_method = "none"
token_url = "{token_url}"
timeout = "2s"
{extra}
"#,
            socket = self.socket().display(),
            store = self.store().display(),
        );
        self.write("config.toml", &text)
    }

    /// Adds `line` to the `[store]` section of a configuration written by `config`.
    pub fn with_store_line(&self, config: &Path, line: &str) -> PathBuf {
        let text = std::fs::read_to_string(config)
            .unwrap()
            .replace("\n[refresh]\n", &format!("{line}\n\n[refresh]\n"));
        self.write("config-store.toml", &text)
    }

    /// Turns loopback TCP on, on a free port, in a configuration written by `config`.
    pub fn with_tcp(&self, config: &Path) -> (PathBuf, u16) {
        let port = free_port();
        let text = std::fs::read_to_string(config)
            .unwrap()
            .replace("http = \"\"", &format!("http = \"127.0.0.1:{port}\""));
        (self.write("config-tcp.toml", &text), port)
    }

    /// Starts the daemon on `token_url`'s provider `fake`, on the socket and on loopback TCP
    /// (a free port, returned), with a client `name` known by the API key `key` and allowed
    /// every account.
    pub async fn start_with_tcp_client(
        &self,
        token_url: &str,
        name: &str,
        key: &str,
    ) -> (Daemon, u16) {
        let extra = format!(
            "\n[[clients]]\nname = \"{name}\"\napi_key_sha256 = \"{}\"\naccounts = [\"*\"]\n",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(key))
        );
        let config = self.config(token_url, "", &extra);
        let (config, port) = self.with_tcp(&config);
        (self.start(&config, &[]).await, port)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts `tokenbroker serve` and waits until its socket answers `/healthz`.
    pub async fn start(&self, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let args = ["serve".as_ref(), "--config".as_ref(), config.as_os_str()];
        self.spawn(&args, env).await
    }

    /// Starts `tokenbroker serve --dev` with its socket at `self.socket()`.
    pub async fn start_dev(&self, env: &[(&str, &str)]) -> Daemon {
        let socket = self.socket().display().to_string();
        let mut env = env.to_vec();
        env.push(("TOKENBROKER__SERVER__SOCKET", &socket));
        self.spawn(&["serve".as_ref(), "--dev".as_ref()], &env)
            .await
    }

    pub async fn spawn(&self, args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Daemon {
        self.spawn_via(&[], args, env).await
    }

    /// As `spawn`, with the binary started by `wrapper` (a program and its arguments, to which
    /// the binary's path and `args` are appended), e.g. `systemd-socket-activate`.
    pub async fn spawn_via(
        &self,
        wrapper: &[&std::ffi::OsStr],
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Daemon {
        self.spawn_serving_at(&self.socket(), wrapper, args, env)
            .await
    }

    /// Starts `tokenbroker serve --dev` as a user would, with no socket setting: its socket
    /// is the per-user dev socket, under `XDG_RUNTIME_DIR` (here, `run/` in this home).
    pub async fn start_dev_as_documented(&self, env: &[(&str, &str)]) -> Daemon {
        let runtime = self.path("run").display().to_string();
        let mut env = env.to_vec();
        env.push(("XDG_RUNTIME_DIR", &runtime));
        let socket = self.path("run").join("tokenbroker-dev.sock");
        self.spawn_serving_at(&socket, &[], &["serve".as_ref(), "--dev".as_ref()], &env)
            .await
    }

    pub async fn spawn_serving_at(
        &self,
        socket: &Path,
        wrapper: &[&std::ffi::OsStr],
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = self.path(&format!("daemon-{}.log", next_log_number()));
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(BINARY);
                command
            }
            None => Command::new(BINARY),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        command
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("XDG_RUNTIME_DIR");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().unwrap();
        tokenbroker::provider::install_crypto_provider();
        // No idle pooling: the daemon closes idle connections after 5 s (its header-read
        // timeout), and reusing a pooled connection could race that close.
        let http = reqwest::Client::builder()
            .unix_socket(socket.to_owned())
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut daemon = Daemon {
            child: Some(child),
            http,
            socket: socket.to_owned(),
            log,
        };
        daemon.wait_until_serving().await;
        daemon
    }

    /// Runs `tokenbroker serve` expecting it to fail; returns its status and stderr.
    pub fn serve_fails(&self, config: &Path) -> Output {
        let mut child = Command::new(BINARY)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_bounded(&mut child, START_LIMIT);
        child.wait_with_output().unwrap()
    }
}

/// A distinct number per daemon started by this test binary, for log file names.
fn next_log_number() -> u32 {
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A free loopback port: bound, then released for the daemon to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running daemon.
pub struct Daemon {
    child: Option<Child>,
    /// One client for all requests: it opens as many connections as requests run at once.
    http: reqwest::Client,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    async fn wait_until_serving(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "tokenbroker exited with {status} while starting:\n{}",
                    self.logs()
                );
            }
            if self.socket.exists() {
                if let Ok((200, _)) = self.try_request("GET", "/healthz", None).await {
                    return;
                }
            }
            assert!(
                started.elapsed() < START_LIMIT,
                "tokenbroker did not start:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The logs once they contain `needle` (bounded): lines reach the file a few
    /// milliseconds after they are logged, from the daemon's log writer thread.
    pub async fn logged(&self, needle: &str) -> String {
        eventually(
            &format!("{needle:?} in the logs"),
            Duration::from_secs(5),
            || async { self.logs().contains(needle) },
        )
        .await;
        self.logs()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    async fn try_request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> reqwest::Result<(u16, Value)> {
        let mut request = self
            .http
            .request(method.parse().unwrap(), format!("http://localhost{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// A GET over the socket, answered as text (`/metrics`).
    pub async fn get_text(&self, path: &str) -> (u16, String, String) {
        self.get_text_accepting(path, "*/*").await
    }

    /// As `get_text`, with an `Accept` header.
    pub async fn get_text_accepting(&self, path: &str, accept: &str) -> (u16, String, String) {
        let response = self
            .http
            .get(format!("http://localhost{path}"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    /// A request over the socket (as this test's uid, which is the daemon's: an admin).
    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        match self.try_request(method, path, body).await {
            Ok(answer) => answer,
            Err(error) => panic!(
                "{method} {path} failed: {error:?}\ndaemon log:\n{}",
                self.logs()
            ),
        }
    }

    /// Runs a client command against this daemon.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(BINARY)
            .args(args)
            .env("TOKENBROKER_SOCKET", &self.socket)
            .env_remove("RUST_LOG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Imports `refresh_token` as `name` with the `fake` provider through the CLI.
    pub fn import(&self, name: &str, refresh_token: &str) {
        let output = self.cli(
            &[
                "import",
                name,
                "--provider",
                "fake",
                "--refresh-token-stdin",
            ],
            Some(refresh_token),
        );
        assert!(
            output.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// SIGTERM, then waits for the exit (bounded).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        wait_bounded(&mut child, Duration::from_secs(30))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child` to exit, failing the test if it takes longer than `limit`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it holds (bounded); for states the daemon reaches on its own.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What a test needs from outside the repository (a Debian package, root) is missing. In CI
/// (`CI` set), where `.ci/run` provides all of it, the test fails; elsewhere it is skipped,
/// saying why on stderr. The caller returns after.
#[allow(clippy::print_stderr)]
pub fn missing(what: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide what this test needs (.ci/run does): {what}"
    );
    eprintln!("skipped: {what}");
}

/// A small tmpfs mounted for one test (a disk that can be filled); unmounted when dropped.
/// Mounting needs root: outside CI a test without it is skipped, in CI it fails.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts `size` (e.g. "16m") at `path`; `None` (the test skips) where that is impossible.
    pub fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(Stdio::piped())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Self {
                path: path.to_owned(),
            }),
            other => {
                missing(&format!(
                    "cannot mount a tmpfs here (needs root): {other:?}"
                ));
                None
            }
        }
    }

    /// Fills the file system with `filler` until the disk is full; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
