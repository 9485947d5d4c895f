//! Delivering an account's events: to every `[[notify]]` entry that wants them, on a
//! tracked task per entry, by a command (the event on stdin and in its environment) or a
//! webhook signed with HMAC-SHA256; each attempt bounded, five attempts with doubling waits,
//! at most [`MAX_IN_FLIGHT`] deliveries at once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use url::Url;

use crate::secret::WebhookSecret;
use crate::token::AccountName;

use super::{Counter, Entries, Event, Message, Target};

/// Attempts per delivery, and the wait before the first retry (doubled for each next one).
const ATTEMPTS: u32 = 5;
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// One attempt (a command's run, a webhook's answer) gets at most this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries in flight at most; further ones wait their turn.
const MAX_IN_FLIGHT: usize = 16;

/// What delivering needs: the entries in force, where the tasks go, the webhook client,
/// the counter, and the bound on deliveries in flight.
pub(super) struct Deliveries {
    entries: Arc<dyn Entries>,
    tasks: TaskTracker,
    http: reqwest::Client,
    count: Counter,
    in_flight: Arc<Semaphore>,
    cancel: CancellationToken,
}

impl Deliveries {
    pub(super) fn new(
        entries: Arc<dyn Entries>,
        tasks: TaskTracker,
        count: Counter,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            entries,
            tasks,
            http: crate::provider::outbound_client(ATTEMPT_TIMEOUT),
            count,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            cancel,
        }
    }

    /// Whether any `[[notify]]` entry is in force.
    pub(super) fn has_entries(&self) -> bool {
        !self.entries.entries().is_empty()
    }

    /// Hands `account`'s `events` to every entry that wants them, in order, on a task per
    /// entry.
    pub(super) fn send(
        &self,
        account: &AccountName,
        view: Option<&crate::broker::AccountView>,
        events: Vec<Event>,
        now: SystemTime,
    ) {
        let messages: Vec<Message> = events
            .into_iter()
            .map(|event| Message {
                event,
                account: account.to_string(),
                provider: view.map(|v| v.provider.clone()),
                status: view.map(|v| v.status.as_str().to_owned()),
                reason: view.and_then(|v| v.last_error.clone()),
                at: humantime::format_rfc3339_seconds(now).to_string(),
                expires_at: view
                    .and_then(|v| v.expires_at)
                    .map(|at| humantime::format_rfc3339_seconds(at).to_string()),
            })
            .collect();
        for message in &messages {
            tracing::info!(account = %account, event = message.event.as_str(), "account event");
        }
        for entry in self.entries.entries().iter() {
            let wanted: Vec<Message> = messages
                .iter()
                .filter(|message| entry.wants(message.event, account))
                .cloned()
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let (target, http, count, in_flight, cancel) = (
                entry.target.clone(),
                self.http.clone(),
                self.count.clone(),
                Arc::clone(&self.in_flight),
                self.cancel.clone(),
            );
            self.tasks.spawn(async move {
                let Ok(_permit) = in_flight.acquire_owned().await else {
                    return;
                };
                for message in wanted {
                    let Some(delivered) = cancel
                        .run_until_cancelled(deliver(&message, &target, &http))
                        .await
                    else {
                        return;
                    };
                    count(message.event, delivered);
                }
            });
        }
    }
}

/// Delivers `message` to `target`, retrying with backoff; whether it arrived.
async fn deliver(message: &Message, target: &Target, http: &reqwest::Client) -> bool {
    let body = serde_json::to_vec(message).expect("a message of strings always serialises");
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let outcome = match target {
            Target::Command(command) => run_command(command, message, &body).await,
            Target::Webhook { url, secret } => post(http, url, secret.as_ref(), &body).await,
        };
        match outcome {
            Ok(()) => return true,
            Err(error) => tracing::warn!(
                account = message.account,
                event = message.event.as_str(),
                target = target.label(),
                attempt,
                error,
                "notification not delivered"
            ),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    tracing::error!(
        account = message.account,
        event = message.event.as_str(),
        target = target.label(),
        "notification given up after {ATTEMPTS} attempts"
    );
    false
}

async fn run_command(command: &[String], message: &Message, body: &[u8]) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let (program, arguments) = command.split_first().ok_or("an empty command")?;
    let mut child = tokio::process::Command::new(program)
        .args(arguments)
        .env("TOKENBROKER_EVENT", message.event.as_str())
        .env("TOKENBROKER_ACCOUNT", &message.account)
        .env(
            "TOKENBROKER_STATUS",
            message.status.as_deref().unwrap_or_default(),
        )
        .env(
            "TOKENBROKER_REASON",
            message.reason.as_deref().unwrap_or_default(),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("cannot start {program}: {error}"))?;
    let run = async {
        if let Some(mut stdin) = child.stdin.take() {
            // A command that does not read its stdin is fine.
            let _ = stdin.write_all(body).await;
        }
        child.wait().await
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, run).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("{program} exited with {status}")),
        Ok(Err(error)) => Err(format!("{program}: {error}")),
        Err(_) => Err(format!(
            "{program} did not finish within {}s; killed",
            ATTEMPT_TIMEOUT.as_secs()
        )),
    }
}

async fn post(
    http: &reqwest::Client,
    url: &Url,
    secret: Option<&WebhookSecret>,
    body: &[u8],
) -> Result<(), String> {
    let mut request = http
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_vec());
    if let Some(secret) = secret {
        request = request.header("X-Tokenbroker-Signature", signature(secret, body));
    }
    match request.send().await {
        Ok(answer) if answer.status().is_success() => Ok(()),
        Ok(answer) => Err(format!("the webhook answered HTTP {}", answer.status())),
        // Without the URL, whose path may be a credential.
        Err(error) => Err(format!(
            "the webhook cannot be reached: {}",
            error.without_url()
        )),
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &WebhookSecret, body: &[u8]) -> String {
    use hmac::{KeyInit as _, Mac as _};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A webhook URL's path can be its credential: neither `Debug` nor a failed delivery's
    /// error shows it.
    #[tokio::test]
    async fn a_webhooks_path_reaches_no_log() {
        let url: Url = "http://127.0.0.1:9/services/T0/B0/secret-path-part"
            .parse()
            .unwrap();
        let target = Target::Webhook {
            url: url.clone(),
            secret: Some(WebhookSecret::new("signing-key")),
        };
        let shown = format!("{target:?}");
        assert!(
            !shown.contains("secret-path-part") && !shown.contains("signing-key"),
            "{shown}"
        );
        let http = crate::provider::outbound_client(Duration::from_secs(2));
        let error = post(&http, &url, None, b"{}").await.unwrap_err();
        assert!(!error.contains("secret-path-part"), "{error}");
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let secret = WebhookSecret::new("Jefe");
        assert_eq!(
            signature(&secret, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
