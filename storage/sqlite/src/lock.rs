//! The exclusive writer lock: a lock file next to the database, held with an advisory lock (`flock` on Unix,
//! `LockFileEx` on Windows) for as long as the store's writer runs.
//!
//! The store caches every channel's last seq in its writer and relies on being the only writer of the database;
//! the lock makes a second store on the same file, in this process or another one, fail at open instead of
//! corrupting the seq order. The operating system releases the lock when the process dies, so a crash leaves no
//! stale lock behind. The lock file itself stays (deleting it would race with a concurrent open); it holds the
//! process id of the last holder, for the error message.

use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::OpenError;

/// A held writer lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct WriterLock {
    _file: File,
}

/// The lock file of the database at `database`: the same path with `.lock` appended.
pub(crate) fn lock_path(database: &Path) -> PathBuf {
    let mut name = OsString::from(database.as_os_str());
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the writer lock of `database`, or fails with [`OpenError::Locked`] at once if another store holds it.
pub(crate) fn acquire(database: &Path) -> Result<WriterLock, OpenError> {
    let path = lock_path(database);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| OpenError::Io { action, path, source }
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io("open the lock file", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let holder = file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse().ok());
            return Err(OpenError::Locked { database: database.to_owned(), lock_file: path, holder });
        }
        Err(TryLockError::Error(e)) => return Err(io("lock the lock file", &path)(e)),
    }
    // Best effort: the holder's pid, for the error message of the next opener.
    let write_pid = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", std::process::id())?;
        file.flush()
    };
    if let Err(e) = write_pid(&mut file) {
        tracing::debug!(error = %e, path = %path.display(), "cannot write the pid into the lock file");
    }
    Ok(WriterLock { _file: file })
}
