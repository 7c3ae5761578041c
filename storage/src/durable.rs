//! Durable renames and directory checks on a local file system.

use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::error::{io_err as err, StorageError};

/// Makes a directory's entries durable (new, renamed or removed files).
pub fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    let d = File::open(dir).map_err(err("open of directory", dir))?;
    d.sync_all().map_err(err("fsync of directory", dir))
}

/// Publishes a finished file: fsync its data, rename it to `to` (atomic on POSIX within one
/// file system), fsync the parent directory. A crash before the rename leaves only `from`; a
/// crash after it leaves `to` with all its bytes.
pub fn commit_rename(from: &Path, to: &Path) -> Result<(), StorageError> {
    let f = OpenOptions::new()
        .read(true)
        .open(from)
        .map_err(err("open for fsync", from))?;
    f.sync_all().map_err(err("fsync of file", from))?;
    drop(f);
    std::fs::rename(from, to).map_err(err("rename into place", to))?;
    let dir = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fsync_dir(dir)
}

/// Creates `dir` if needed and proves that files can be created, written, synced and removed in
/// it, so that a job fails before it starts instead of at its first write.
pub fn probe_writable(dir: &Path) -> Result<(), StorageError> {
    std::fs::create_dir_all(dir).map_err(err("create directory", dir))?;
    let probe = dir.join(format!(".weir-probe-{}", std::process::id()));
    let f = File::create(&probe).map_err(err("create a file in", dir))?;
    f.sync_all().map_err(err("fsync of file", &probe))?;
    drop(f);
    std::fs::remove_file(&probe).map_err(err("remove probe file", &probe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_rename_moves_file_with_contents() {
        let d = tempfile::tempdir().unwrap();
        let from = d.path().join(".a.inprogress");
        std::fs::write(&from, b"hello\n").unwrap();
        let to = d.path().join("a");
        commit_rename(&from, &to).unwrap();
        assert!(!from.exists());
        assert_eq!(std::fs::read(&to).unwrap(), b"hello\n");
    }

    #[test]
    fn commit_rename_of_missing_file_names_it() {
        let d = tempfile::tempdir().unwrap();
        let e = commit_rename(&d.path().join("nope"), &d.path().join("x")).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }

    #[test]
    fn probe_creates_dir_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("x/y");
        probe_writable(&sub).unwrap();
        assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
    }

    #[test]
    fn probe_of_unwritable_place_fails_with_path() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, b"").unwrap();
        // A directory below a regular file cannot be created.
        let e = probe_writable(&file.join("sub")).unwrap_err();
        assert!(e.to_string().contains("create directory"), "{e}");
    }
}
