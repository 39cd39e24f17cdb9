//! A claimed validation job. The plaintext key lives only here, in a
//! zeroizing buffer, from `claim_jobs` until the vendor call returns.

use std::fmt;

use byok_core::Vendor;
use uuid::Uuid;
use zeroize::Zeroizing;

/// One row of `byok.claim_jobs`.
pub struct Job {
    pub job_id: i64,
    pub key_id: Uuid,
    pub workspace_id: Uuid,
    pub vendor: Vendor,
    /// Plaintext key; wiped when dropped. Taken out with [`Job::take_key`]
    /// for the vendor call so it is gone as soon as the request is sent.
    api_key: Option<Zeroizing<String>>,
    pub attempt: i32,
    pub lease_token: Uuid,
}

impl Job {
    pub fn new(
        job_id: i64,
        key_id: Uuid,
        workspace_id: Uuid,
        vendor: Vendor,
        api_key: Zeroizing<String>,
        attempt: i32,
        lease_token: Uuid,
    ) -> Job {
        Job {
            job_id,
            key_id,
            workspace_id,
            vendor,
            api_key: Some(api_key),
            attempt,
            lease_token,
        }
    }

    /// Moves the key out (once): the caller drops it right after the request.
    pub fn take_key(&mut self) -> Option<Zeroizing<String>> {
        self.api_key.take()
    }

    /// What the worker needs after the key is gone.
    pub fn lease(&self) -> Lease {
        Lease {
            job_id: self.job_id,
            lease_token: self.lease_token,
            vendor: self.vendor,
            workspace_id: self.workspace_id,
        }
    }
}

/// Never prints the key: `Debug` shows its mask at most, so a stray `{:?}`
/// in a log line or a panic is harmless.
impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("job_id", &self.job_id)
            .field("key_id", &self.key_id)
            .field("workspace_id", &self.workspace_id)
            .field("vendor", &self.vendor.as_str())
            .field(
                "api_key",
                &self.api_key.as_ref().map(|k| byok_core::mask::mask(k)),
            )
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// A job's identity and lease, without the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub job_id: i64,
    pub lease_token: Uuid,
    pub vendor: Vendor,
    pub workspace_id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let key = byok_core::samples::sample_key("openai", 4);
        let (run, masked) = (
            key[20..32].to_owned(),
            format!("…{}", &key[key.len() - 4..]),
        );
        let mut job = Job::new(
            7,
            Uuid::nil(),
            Uuid::nil(),
            Vendor::OpenAi,
            Zeroizing::new(key),
            1,
            Uuid::nil(),
        );
        let shown = format!("{job:?} {job:#?}");
        assert!(
            !shown.contains(&run) && !shown.contains("sk-proj"),
            "{shown}"
        );
        assert!(shown.contains(&masked), "{shown}");
        assert!(job.take_key().is_some());
        assert!(job.take_key().is_none());
        assert!(!format!("{job:?}").contains(&masked));
        assert_eq!(job.lease().job_id, 7);
    }
}
