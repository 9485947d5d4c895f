//! `tokenbroker connect`: start a flow through the daemon and see it to its end, showing
//! the person what to open or type (the provider's words cleaned of terminal escapes).

use anyhow::bail;

use crate::api::types::{ConnectBody, ConnectRequest, ConnectStatusBody};

use super::client::{segment, Client};

/// Runs a connect flow to its end, printing what the person must do.
pub(super) async fn connect(
    client: &Client,
    name: &str,
    provider: &str,
    no_redirect: bool,
    device: bool,
) -> anyhow::Result<()> {
    // Listen for Ctrl-C before anything is printed, so an early one cancels the flow too.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mode = if no_redirect {
        "no_redirect"
    } else if device {
        "device"
    } else {
        "redirect"
    };
    let request = ConnectRequest {
        account: name.to_owned(),
        provider: provider.to_owned(),
        mode: Some(mode.to_owned()),
    };
    let started: ConnectBody = client
        .call(
            reqwest::Method::POST,
            "/v1/connect",
            Some(serde_json::to_value(&request)?),
        )
        .await?;
    let ticket = segment(&started.ticket);
    if let Some(url) = &started.authorize_url {
        eprintln!("1. Open this URL in a browser and approve access for {name}:");
        say!("{url}");
        eprintln!("2. Paste the code the provider shows, then press Enter:");
        let code = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await??;
        if code.trim().is_empty() {
            client
                .call_empty(reqwest::Method::DELETE, &format!("/v1/connect/{ticket}"))
                .await?;
            bail!("no code entered; nothing was connected");
        }
        let body = serde_json::json!({ "code": code.trim() });
        let status: ConnectStatusBody = client
            .call(
                reqwest::Method::POST,
                &format!("/v1/connect/{ticket}/code"),
                Some(body),
            )
            .await?;
        return connect_result(status);
    }
    if let Some(url) = &started.start_url {
        eprintln!("Open this link in a browser to connect {name} at {provider} (single use, valid until {}):", started.expires_at);
        say!("{url}");
    }
    if let (Some(code), Some(uri)) = (&started.user_code, &started.verification_uri) {
        // The provider's words: a hostile one must not reach the terminal's escape sequences.
        eprintln!(
            "On any device, go to {} and enter the code:",
            printable(uri)
        );
        say!("{}", printable(code));
        if let Some(complete) = &started.verification_uri_complete {
            eprintln!("(or open {})", printable(complete));
        }
    }
    eprintln!("Waiting for approval; press Ctrl-C to cancel.");
    loop {
        let path = format!("/v1/connect/{ticket}?wait=25");
        let poll = client.call::<ConnectStatusBody>(reqwest::Method::GET, &path, None);
        let status = tokio::select! {
            status = poll => status?,
            _ = interrupt.recv() => {
                client.call_empty(reqwest::Method::DELETE, &format!("/v1/connect/{ticket}")).await?;
                bail!("cancelled; nothing was connected");
            }
        };
        if status.status != "pending" {
            return connect_result(status);
        }
    }
}

/// `text` with what a terminal would act on (control characters, and the invisible marks
/// that reorder text) shown as `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let reorders = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
            if c.is_control() || reorders {
                '?'
            } else {
                c
            }
        })
        .collect()
}

fn connect_result(status: ConnectStatusBody) -> anyhow::Result<()> {
    match (status.status.as_str(), status.account) {
        ("connected", Some(account)) => {
            let user = printable(account.provider_user_id.as_deref().unwrap_or("unknown"));
            let expires = account.expires_at.as_deref().unwrap_or("unknown");
            say!(
                "connected {} at {} (provider user id {user}); token expires at {expires}",
                account.name,
                account.provider
            );
            Ok(())
        }
        _ => bail!(
            "not connected: {}",
            status
                .error
                .unwrap_or_else(|| "the flow ended without a result".into())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_providers_text_reaches_the_terminal_without_its_escapes() {
        assert_eq!(printable("WDJB-MJHT"), "WDJB-MJHT");
        assert_eq!(
            printable("https://evil.example/\u{1b}]0;pwned\u{7}\u{1b}[2J\r\n"),
            "https://evil.example/?]0;pwned??[2J??"
        );
        assert_eq!(printable("abc\u{202e}fed"), "abc?fed");
        assert_eq!(printable("zürich ✓"), "zürich ✓");
    }
}
