//! File-name rules, shared by meta (which enforces them) and clients (which
//! check early for a clearer message).

use crate::ErrorCode;

/// The name through which a volume's snapshots are read under its root
/// (`/VOLUME/.snapshots/NAME/...`): meta keeps it free in every volume
/// root, clients resolve paths through it.
pub const SNAPSHOTS_DIR: &str = ".snapshots";

/// The longest name a directory entry may have, in bytes (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Checks that `name` can be a directory entry: not empty, not `.` or `..`,
/// no `/` or NUL, at most [`NAME_MAX`] bytes.
///
/// # Errors
/// [`ErrorCode::Invalid`] with the reason, or [`ErrorCode::NameTooLong`].
pub fn validate(name: &str) -> Result<(), (ErrorCode, &'static str)> {
    if name.is_empty() {
        return Err((ErrorCode::Invalid, "empty file name"));
    }
    if name.len() > NAME_MAX {
        return Err((ErrorCode::NameTooLong, "file name longer than 255 bytes"));
    }
    if name == "." || name == ".." {
        return Err((
            ErrorCode::Invalid,
            "'.' and '..' cannot be created or removed",
        ));
    }
    if name.contains('/') {
        return Err((ErrorCode::Invalid, "file name contains '/'"));
    }
    if name.contains('\0') {
        return Err((ErrorCode::Invalid, "file name contains a NUL byte"));
    }
    Ok(())
}

/// Splits an absolute path into its components, ignoring empty ones and
/// `.`; `..` is refused (paths are resolved on the server without a cwd).
///
/// # Errors
/// [`ErrorCode::Invalid`] for a relative path or one that contains `..`.
pub fn components(path: &str) -> Result<Vec<&str>, (ErrorCode, &'static str)> {
    if !path.starts_with('/') {
        return Err((ErrorCode::Invalid, "path must be absolute"));
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err((ErrorCode::Invalid, "path must not contain '..'")),
            c => {
                validate(c)?;
                out.push(c);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        assert_eq!(validate("").unwrap_err().0, ErrorCode::Invalid);
        assert_eq!(validate("a/b").unwrap_err().0, ErrorCode::Invalid);
        assert_eq!(validate("a\0b").unwrap_err().0, ErrorCode::Invalid);
        assert_eq!(validate(".").unwrap_err().0, ErrorCode::Invalid);
        assert_eq!(validate("..").unwrap_err().0, ErrorCode::Invalid);
        assert_eq!(
            validate(&"x".repeat(256)).unwrap_err().0,
            ErrorCode::NameTooLong
        );
        assert!(validate(&"x".repeat(255)).is_ok());
        assert!(validate("ünïcødé name.tar").is_ok());
    }

    #[test]
    fn splits_paths() {
        assert_eq!(components("/").unwrap(), Vec::<&str>::new());
        assert_eq!(components("/a//b/./c/").unwrap(), vec!["a", "b", "c"]);
        assert!(components("a/b").is_err());
        assert!(components("/a/../b").is_err());
    }
}
