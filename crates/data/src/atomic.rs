//! Write-then-rename: a file appears under its final name only when it is
//! complete, so an interrupted stage never leaves a half-written output.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::DataError;

/// A file being written under a temporary name next to its destination.
/// Dropping it without [`AtomicFile::commit`] removes the temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    temporary: PathBuf,
    destination: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    pub fn create(destination: &Path) -> Result<AtomicFile, DataError> {
        let name = destination
            .file_name()
            .ok_or_else(|| DataError::Invalid(format!("{} is not a file path", destination.display())))?
            .to_string_lossy()
            .into_owned();
        let dir = destination.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
        let temporary = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&temporary).map_err(|e| DataError::io(&temporary, e))?;
        Ok(AtomicFile { temporary, destination: destination.to_path_buf(), file: Some(file) })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is present until commit")
    }

    /// A second handle to the temporary file, for writers that take
    /// ownership of one.
    pub fn try_clone(&self) -> Result<File, DataError> {
        self.file
            .as_ref()
            .expect("file is present until commit")
            .try_clone()
            .map_err(|e| DataError::io(&self.temporary, e))
    }

    pub fn temporary_path(&self) -> &Path {
        &self.temporary
    }

    /// Flushes to disk and moves the file to its final name.
    pub fn commit(mut self) -> Result<(), DataError> {
        let file = self.file.take().expect("file is present until commit");
        file.sync_all().map_err(|e| DataError::io(&self.temporary, e))?;
        drop(file);
        std::fs::rename(&self.temporary, &self.destination).map_err(|e| DataError::io(&self.destination, e))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Writes `bytes` to `destination` atomically.
pub fn write_atomic(destination: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let mut f = AtomicFile::create(destination)?;
    let temporary = f.temporary_path().to_path_buf();
    f.file().write_all(bytes).map_err(|e| DataError::io(temporary, e))?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_file_leaves_nothing_and_committed_file_appears() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.file().write_all(b"half").unwrap();
        }
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&dest, b"whole").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"whole");
    }
}
