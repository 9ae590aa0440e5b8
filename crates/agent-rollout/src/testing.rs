//! A throwaway PostgreSQL server for tests of the shared store (feature `testing`): `scripts/postgres` from
//! this workspace, over Debian's `postgresql`.

use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL server on a free loopback port, stopped and removed on drop.
#[derive(Debug)]
pub struct TestPostgres {
    dir: PathBuf,
    url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres")
}

impl TestPostgres {
    /// Starts one (about two seconds): `Err` with the script's message when PostgreSQL is not installed.
    pub fn start() -> Result<TestPostgres, String> {
        let nonce = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
        let dir = std::env::temp_dir().join(format!("agentctl-pg-{}-{nonce}", std::process::id()));
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .output()
            .map_err(|e| format!("{}: {e}", script().display()))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(TestPostgres { dir, url })
    }

    /// Its password (tests check that messages never show it).
    pub fn password(&self) -> &str {
        self.url
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .and_then(|(cred, _)| cred.split_once(':'))
            .map(|(_, p)| p)
            .unwrap_or_default()
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates the database `name` and returns its URL.
    pub fn database(&self, name: &str) -> Result<String, String> {
        create_database(&self.url, name)
    }
}

/// Creates the database `name` on the server of `url` (through `psql`) and returns its URL.
pub fn create_database(url: &str, name: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c"])
        .arg(format!("CREATE DATABASE \"{name}\""))
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    Ok(format!("{base}/{name}"))
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
