//! The pid lock file `<lock_dir>/aragora_<api-port>.lock` (docs/operations.md, "Layout of an installation"): a second server on
//! the same port is refused with a clear message; a lock left by a dead process is taken over.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another aragora server (pid {pid}) is running with lock {path}; stop it first \
         (`kill -TERM {pid}`) or pick another --api-port"
    )]
    Held { pid: i32, path: PathBuf },
    #[error("cannot create lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held for the life of the server; removes the file on drop if it is still ours.
#[derive(Debug)]
pub struct PidLock {
    path: PathBuf,
    pid: u32,
}

impl PidLock {
    pub fn path_for(dir: &Path, api_port: u16) -> PathBuf {
        dir.join(format!("aragora_{api_port}.lock"))
    }

    pub fn acquire(dir: &Path, api_port: u16) -> Result<PidLock, LockError> {
        let path = Self::path_for(dir, api_port);
        let pid = std::process::id();
        let io_err = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // Two attempts: the second follows removal of a stale lock.
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(format!("{pid}\n").as_bytes())
                        .map_err(io_err)?;
                    return Ok(PidLock { path, pid });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse::<i32>().ok());
                    match holder {
                        Some(other) if other as u32 != pid && process_alive(other) => {
                            return Err(LockError::Held {
                                pid: other,
                                path: path.clone(),
                            });
                        }
                        _ => {
                            tracing::warn!(
                                path = %path.display(),
                                stale_pid = ?holder,
                                "taking over a stale lock file"
                            );
                            match std::fs::remove_file(&path) {
                                Ok(()) => {}
                                Err(e) if e.kind() == ErrorKind::NotFound => {}
                                Err(e) => return Err(io_err(e)),
                            }
                        }
                    }
                }
                Err(e) => return Err(io_err(e)),
            }
        }
        Err(io_err(std::io::Error::new(
            ErrorKind::AlreadyExists,
            "lock file keeps reappearing; is another server starting at the same time?",
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let ours = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            == Some(self.pid);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Signal 0 probes for a process without touching it; EPERM means it exists but is not ours.
fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acquire_writes_pid_and_release_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let lock = PidLock::acquire(dir.path(), 8080).unwrap();
        let text = std::fs::read_to_string(dir.path().join("aragora_8080.lock")).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        drop(lock);
        assert!(!dir.path().join("aragora_8080.lock").exists());
    }

    #[test]
    fn a_live_holder_refuses_a_second_start() {
        let dir = tempfile::tempdir().unwrap();
        // pid 1 is always alive.
        std::fs::write(dir.path().join("aragora_9000.lock"), "1\n").unwrap();
        let err = PidLock::acquire(dir.path(), 9000).unwrap_err().to_string();
        assert!(
            err.contains("pid 1") && err.contains("aragora_9000.lock"),
            "{err}"
        );
        // The other server's lock is left alone.
        assert!(dir.path().join("aragora_9000.lock").exists());
    }

    #[test]
    fn a_stale_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        // A pid far above pid_max cannot be alive.
        std::fs::write(dir.path().join("aragora_9001.lock"), "999999999\n").unwrap();
        let lock = PidLock::acquire(dir.path(), 9001).unwrap();
        let text = std::fs::read_to_string(lock.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        std::fs::write(dir.path().join("aragora_9002.lock"), "garbage").unwrap();
        assert!(PidLock::acquire(dir.path(), 9002).is_ok());
    }
}
