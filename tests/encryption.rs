//! Encryption at rest through the real binary: nothing in the clear on disk, a wrong key
//! refuses to start and changes nothing, and `rekey` survives SIGKILL at any moment.
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // bounding waits on another process takes real time

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::Home;
use tokenbroker::testing::FakeProvider;

fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                found.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    found.sort();
    found
}

fn digests(dir: &Path) -> Vec<(PathBuf, String)> {
    files(dir)
        .into_iter()
        .map(|(path, bytes)| (path, hex::encode(Sha256::digest(bytes))))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_file_in_the_store_holds_a_token_in_the_clear() {
    let fake = FakeProvider::start().await;
    fake.set_rotation(true);
    let home = Home::new();
    let mut daemon = home
        .start(&home.config(&fake.token_url(), "", ""), &[])
        .await;
    let mut secrets = Vec::new();
    for name in ["a", "b", "c"] {
        let refresh = fake.grant(name);
        secrets.push(refresh.clone());
        daemon.import(name, &refresh);
        daemon
            .request("POST", &format!("/v1/accounts/{name}/refresh"), None)
            .await;
    }
    assert!(daemon.terminate().success());
    secrets.extend(fake.issued_access_tokens());
    secrets.extend(fake.valid_refresh_tokens());
    let on_disk = files(&home.store());
    assert!(on_disk.len() >= 3, "database, snapshot and key");
    for (path, bytes) in &on_disk {
        for secret in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds a token in the clear",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wrong_key_refuses_to_start_and_changes_nothing() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let config = home.config(&fake.token_url(), "", "");
    let mut daemon = home.start(&config, &[]).await;
    daemon.import("a", &fake.grant("a"));
    assert!(daemon.terminate().success());
    std::fs::write(home.store().join("store-key"), hex::encode([42u8; 32])).unwrap();
    let before = digests(&home.store());
    let output = home.serve_fails(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // EX_CONFIG: the key is the configuration's to fix; systemd does not restart-loop.
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("sealed with key") && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(
        digests(&home.store()),
        before,
        "not one byte of the store changed"
    );
    assert!(!home.socket().exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn rekey_killed_at_any_moment_leaves_every_account_readable() {
    let fake = FakeProvider::start().await;
    let home = Home::new();
    let config = home.config(&fake.token_url(), "", "");
    let mut daemon = home.start(&config, &[]).await;
    let names: Vec<String> = (0..40).map(|n| format!("acct-{n:02}")).collect();
    for name in &names {
        daemon.import(name, &fake.grant(name));
    }
    let tokens = |accounts: &Value| accounts["accounts"].as_array().unwrap().len();
    let mut expected = Vec::new();
    for name in &names {
        expected.push(
            daemon
                .request("GET", &format!("/v1/token/{name}"), None)
                .await
                .1["access_token"]
                .clone(),
        );
    }
    let mut keys_seen = std::collections::HashSet::new();
    for round in 0..8u64 {
        keys_seen.insert(std::fs::read(home.store().join("store-key")).unwrap());
        // Ask for a rekey and kill the daemon after a different short delay each round.
        let socket = daemon.socket.clone();
        let request = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .unix_socket(socket)
                .build()
                .unwrap();
            let _ = client.post("http://localhost/v1/admin/rekey").send().await;
        });
        // Wait until the rekey has begun (its next key is on disk, or it already finished),
        // then let it run a varying moment longer before the kill.
        let key_before = std::fs::read(home.store().join("store-key")).unwrap();
        let begun = std::time::Instant::now();
        while !home.store().join("store-key.next").exists()
            && std::fs::read(home.store().join("store-key")).unwrap() == key_before
        {
            assert!(
                begun.elapsed() < Duration::from_secs(10),
                "round {round}: the rekey never started"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_micros(round * 700));
        daemon.kill();
        request.abort();
        daemon = home.start(&config, &[]).await;
        let (_, accounts) = daemon.request("GET", "/v1/accounts", None).await;
        assert_eq!(
            tokens(&accounts),
            names.len(),
            "round {round}: every account is still there"
        );
        for (name, token) in names.iter().zip(&expected) {
            let (status, body) = daemon
                .request("GET", &format!("/v1/token/{name}"), None)
                .await;
            assert_eq!(
                (status, &body["access_token"]),
                (200, token),
                "round {round}: {name} readable"
            );
        }
        assert!(
            !home.store().join("store-key.next").exists(),
            "round {round}: an interrupted rekey is finished at start"
        );
    }
    assert!(
        keys_seen.len() > 1,
        "some of the interrupted rekeys got far enough to change the key"
    );
    // A rekey that runs to completion reports every account and changes the key.
    let output = daemon.cli(&["rekey"], None);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout)
        .contains(&format!("re-sealed {} accounts", names.len())));
    assert!(!keys_seen.contains(&std::fs::read(home.store().join("store-key")).unwrap()));
    assert_eq!(
        fake.token_calls(),
        names.len(),
        "no refresh was needed: nothing was lost"
    );
}
