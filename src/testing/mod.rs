//! Test support: a scripted fake OAuth provider. Compiled only for tests (`test-support`).

mod fake_provider;

pub use self::fake_provider::{FakeProvider, RecordedRequest, Reply};
