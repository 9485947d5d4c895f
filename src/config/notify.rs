//! `[[notify]]`: who is told of account events, and how.

use super::raw;
use super::resolve::{read_secret, Context};
use crate::notify::{Config, Event, Target};
use crate::secret::WebhookSecret;

/// The `[[notify]]` entries, each checked; what is wrong is added to `problems`.
pub(super) fn entries(
    raw: &[raw::Notify],
    context: &Context,
    problems: &mut Vec<String>,
) -> Vec<Config> {
    raw.iter()
        .enumerate()
        .filter_map(|(index, entry)| entry_of(index, entry, context, problems))
        .collect()
}

fn entry_of(
    index: usize,
    raw: &raw::Notify,
    context: &Context,
    problems: &mut Vec<String>,
) -> Option<Config> {
    let key = |field: &str| format!("notify[{index}].{field}");
    let before = problems.len();
    let events = if raw.events.is_empty() {
        Event::ALL.to_vec()
    } else {
        raw.events
            .iter()
            .filter_map(|name| {
                let event = Event::from_name(name);
                if event.is_none() {
                    let known: Vec<_> = Event::ALL.iter().map(|e| e.as_str()).collect();
                    problems.push(format!(
                        "{}: unknown event {name:?} (one of {})",
                        key("events"),
                        known.join(", ")
                    ));
                }
                event
            })
            .collect()
    };
    let accounts = raw
        .accounts
        .iter()
        .filter_map(|pattern| {
            glob::Pattern::new(pattern)
                .map_err(|error| {
                    problems.push(format!("{}: {pattern:?}: {error}", key("accounts")));
                })
                .ok()
        })
        .collect();
    let target = match (&raw.command, &raw.webhook) {
        (Some(command), None) => {
            if command.is_empty() || command[0].trim().is_empty() {
                problems.push(format!("{}: must name a program", key("command")));
            }
            if raw.secret_file.is_some() {
                problems.push(format!("{}: only a webhook is signed", key("secret_file")));
            }
            Target::Command(command.clone())
        }
        (None, Some(url)) => {
            let url = match url.parse::<url::Url>() {
                Ok(url) => {
                    if let Err(why) = crate::provider::check_endpoint(&url) {
                        problems.push(format!("{}: {why}", key("webhook")));
                    }
                    url
                }
                Err(error) => {
                    problems.push(format!("{}: not a URL: {error}", key("webhook")));
                    return None;
                }
            };
            let secret = raw
                .secret_file
                .as_ref()
                .and_then(|file| read_secret(file, &key("secret_file"), context, problems))
                .map(|text| WebhookSecret::new(text.trim()));
            Target::Webhook { url, secret }
        }
        _ => {
            problems.push(format!(
                "{}: give exactly one of command and webhook",
                key("command")
            ));
            return None;
        }
    };
    (problems.len() == before).then_some(Config {
        events,
        accounts,
        target,
    })
}
