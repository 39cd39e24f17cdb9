//! Shared by the `lifecycle_*` tests: a cluster with the sidecar's and the
//! backend's LOGIN roles, and a key added and validated in one call.

use super::*;
use byok_integration::postgres::Client;
use byok_integration::{Cluster, ClusterOptions};
use uuid::Uuid;

/// A cluster with a LOGIN role for the sidecar (byok_worker) and one for the
/// backend that makes vendor calls (byok_consumer).
pub fn cluster_with(opts: ClusterOptions) -> Cluster {
    let c = Cluster::start(opts);
    create_login(&c, "sidecar", &["byok_worker"]);
    create_login(&c, "backend", &["byok_consumer"]);
    c
}

pub fn cluster() -> Cluster {
    cluster_with(ClusterOptions::default())
}

/// Add a key as superuser and validate it through the queue as the sidecar.
pub fn add_active(c: &Cluster, ws: Uuid, vendor: &str, key: &str) -> KeyInfo {
    let info =
        add_key(&mut c.client(), ws, vendor, key, None).unwrap_or_else(|e| c.fail("add_key", &e));
    let mut w = c.client_as("sidecar");
    let claims =
        claim_jobs(&mut w, "sidecar-1", 16, 60).unwrap_or_else(|e| c.fail("claim_jobs", &e));
    let mine: Vec<_> = claims.iter().filter(|cl| cl.key_id == info.id).collect();
    assert_eq!(mine.len(), 1, "the new key's job is claimable: {claims:?}");
    for cl in &claims {
        let st = finish_job(
            &mut w,
            cl.job_id,
            cl.lease_token,
            "valid",
            None,
            Some(200),
            None,
        )
        .unwrap_or_else(|e| c.fail("finish_job", &e));
        assert_eq!(st, "active");
    }
    key_by_id(&mut c.client(), ws, info.id)
}

pub fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}
