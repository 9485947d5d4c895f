//! Property tests: arbitrary input to the parsers that face the outside world never panics,
//! and garbage never turns into a token.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use proptest::prelude::*;
use tokenbroker::config::{self, Env};
use tokenbroker::provider::{parse_token_response, AnswerHeaders};

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn token_responses_never_panic_and_tokens_come_only_from_the_input(
        status in prop_oneof![Just(200u16), 100u16..600],
        header in proptest::option::of("[ -~]{0,40}"),
        date in proptest::option::of("[ -~]{0,40}"),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let headers = AnswerHeaders { retry_after: header.as_deref(), date: date.as_deref() };
        if let Ok(response) = parse_token_response(status, headers, &body, Duration::from_secs(60), &[]) {
            let token = response.access_token.expose();
            prop_assert!(!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()));
            prop_assert!(body.windows(token.len()).any(|w| w == token.as_bytes()), "the token came from the body");
            prop_assert!(response.lifetime >= Duration::from_secs(1));
        }
    }

    #[test]
    fn json_shaped_token_responses_never_panic(
        access in proptest::option::of(any::<String>()),
        expires in prop_oneof![Just(serde_json::Value::Null), any::<i64>().prop_map(serde_json::Value::from), any::<f64>().prop_map(serde_json::Value::from), any::<String>().prop_map(serde_json::Value::from)],
        error in proptest::option::of(any::<String>()),
        refresh in proptest::option::of(any::<String>()),
    ) {
        let mut body = serde_json::json!({"token_type": "bearer", "expires_in": expires});
        if let Some(access) = &access { body["access_token"] = access.clone().into(); }
        if let Some(error) = &error { body["error"] = error.clone().into(); }
        if let Some(refresh) = &refresh { body["refresh_token"] = refresh.clone().into(); }
        let answer = parse_token_response(200, AnswerHeaders::default(), body.to_string().as_bytes(), Duration::from_secs(60), &[]);
        if error.is_some() {
            prop_assert!(answer.is_err(), "a body with an error is never a token");
        }
        if let Ok(response) = answer {
            prop_assert_eq!(Some(response.access_token.expose()), access.as_deref());
        }
    }

    #[test]
    fn configuration_text_never_panics(text in "[\\[\\]a-z_.= \"0-9\\n:/-]{0,200}") {
        let dir = std::env::temp_dir();
        let _ = config::load_str(&text, "property test", &dir, &Env::new());
    }

    #[test]
    fn account_names_are_exactly_the_design_pattern(name in "\\PC{0,70}") {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        prop_assert_eq!(name.parse::<tokenbroker::token::AccountName>().is_ok(), valid);
    }
}
