//! Ownership and permission checks for the paths the agent trusts, and for the files it
//! writes on another user's behalf.
//!
//! The agent usually runs as root, so three kinds of path need care:
//! - Code it runs or loads: the Ray venv (run as the Ray user) and the compiled-plugin
//!   cache (loaded into the agent). Whoever can change these runs code as that user.
//!   [`check_trusted`] refuses a path that anyone but the expected owners could change.
//! - A directory it hands to another user: Ray's temp dir. [`PrivateDir::create`] makes
//!   it `0700` owned by that user, and accepts an existing one only when that user owns
//!   it and nobody else can write it.
//! - Files it writes inside such a directory: Ray's log. The directory's owner could put
//!   a symbolic or hard link there to make root write elsewhere, so
//!   [`PrivateDir::open_append`] opens relative to the directory's descriptor (a renamed
//!   or swapped path cannot redirect it), never follows a symlink (`O_NOFOLLOW`), and
//!   refuses anything but a regular file with one link.
//!
//! Invariants:
//! - Write access is judged by the mode bits and the owner. POSIX ACLs need no separate
//!   reading for that: every ACL entry other than the owner's is capped by the ACL mask,
//!   which is what the mode's group bits show, so a path no group bit lets write cannot be
//!   written through an ACL either.
//! - Search access ([`first_unsearchable`]) is judged by the mode bits alone, which an ACL
//!   can widen. It is therefore only ever used to *explain* a failure the kernel already
//!   reported, never to refuse.
//! - Nothing here changes a path it did not create or that is not already owned by the
//!   user it is meant for; a refusal names the path, what is wrong and the command that
//!   fixes it.
//!
//! Trade-off: ancestors of a checked path are judged as the kernel resolves them
//! (following symlinks), not component by component through each link's own directory;
//! a symlinked `/opt` is judged by the directory it points to.

use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::os::fd::AsFd;
use std::os::unix::fs::{fchown, DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Why a path may not be used. Every message names the path and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermError {
    #[error("{} is writable by {} (mode {mode:04o}); fix it with `chmod go-w {}`", path.display(), writers(*mode), path.display())]
    Writable { path: PathBuf, mode: u32 },
    #[error("{} is owned by {owner}, not by {expected}; fix it with `chown {fix_owner} {}` (or remove it)", path.display(), path.display())]
    Owner {
        path: PathBuf,
        /// The current owner, as `name (uid N)`.
        owner: String,
        /// Who may own it, in words.
        expected: String,
        /// The owner `chown` should set.
        fix_owner: String,
    },
    #[error("{} is a symbolic link, which the agent does not follow where another user can write; remove it", path.display())]
    Symlink { path: PathBuf },
    #[error("{} is not a directory; remove it or choose another path", path.display())]
    NotDir { path: PathBuf },
    #[error("{} is not a regular file; remove it", path.display())]
    NotRegular { path: PathBuf },
    #[error("{} has {links} hard links, so writing it would change another file too; remove it", path.display())]
    HardLinked { path: PathBuf, links: u64 },
    #[error("cannot {action} {}: {message}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        message: String,
    },
}

fn writers(mode: u32) -> &'static str {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "its group and all users",
        (true, false) => "its group",
        _ => "all users",
    }
}

fn io(path: &Path, action: &'static str, e: impl std::fmt::Display) -> PermError {
    PermError::Io {
        path: path.to_path_buf(),
        action,
        message: e.to_string(),
    }
}

/// `name (uid N)`, or `uid N` for a uid without a user.
pub fn describe_uid(uid: u32) -> String {
    match user_name(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The user name of `uid`, when the user database has one.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

fn owner_error(path: &Path, meta: &Metadata, owners: &[u32]) -> PermError {
    let names: Vec<String> = owners.iter().map(|u| describe_uid(*u)).collect();
    PermError::Owner {
        path: path.to_path_buf(),
        owner: describe_uid(meta.uid()),
        expected: names.join(" or "),
        fix_owner: owners
            .last()
            .map(|u| user_name(*u).unwrap_or_else(|| u.to_string()))
            .unwrap_or_else(|| "root".into()),
    }
}

/// Refuses `path` unless only `owners` can change it: the path (and, for a symlink,
/// what it points to) must be owned by one of them and writable by neither group nor
/// others. A missing path is `Ok` (whoever needs it reports it missing, with its fix).
/// A refusal's `chown` suggests the last of `owners`.
pub fn check_trusted(path: &Path, owners: &[u32]) -> Result<(), PermError> {
    let link = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(path, "inspect", e)),
    };
    let target = if link.file_type().is_symlink() {
        if !owners.contains(&link.uid()) {
            return Err(owner_error(path, &link, owners));
        }
        match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(path, "inspect", e)),
        }
    } else {
        link
    };
    if !owners.contains(&target.uid()) {
        return Err(owner_error(path, &target, owners));
    }
    let mode = target.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(PermError::Writable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Refuses `path` when a directory above it lets someone other than `owners` replace
/// it: one owned by another user, or writable by group or others without the sticky
/// bit (in a sticky directory, like `/tmp`, only an entry's owner can rename it).
pub fn check_ancestors(path: &Path, owners: &[u32]) -> Result<(), PermError> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            break;
        }
        let meta = std::fs::metadata(d).map_err(|e| io(d, "inspect", e))?;
        if !owners.contains(&meta.uid()) {
            return Err(owner_error(d, &meta, owners));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(PermError::Writable {
                path: d.to_path_buf(),
                mode,
            });
        }
        dir = d.parent();
    }
    Ok(())
}

/// The first directory from `/` down to `path` (inclusive) that the user `uid` with
/// `groups` may not search by its mode bits, with its mode and owner. `None` for root
/// or when every one is searchable. An ACL can grant what the bits deny: use this to
/// explain a refusal, never to refuse (see the module docs).
pub fn first_unsearchable(path: &Path, uid: u32, groups: &[u32]) -> Option<(PathBuf, u32, u32)> {
    if uid == 0 {
        return None;
    }
    let mut dirs: Vec<&Path> = path.ancestors().collect();
    dirs.reverse();
    for d in dirs {
        if d.as_os_str().is_empty() {
            continue;
        }
        let Ok(meta) = std::fs::metadata(d) else {
            return None;
        };
        if !meta.is_dir() {
            return None;
        }
        let mode = meta.mode();
        let bit = if meta.uid() == uid {
            0o100
        } else if groups.contains(&meta.gid()) {
            0o010
        } else {
            0o001
        };
        if mode & bit == 0 {
            return Some((d.to_path_buf(), mode & 0o7777, meta.uid()));
        }
    }
    None
}

/// A directory that belongs to one user (mode 0700), held open so that files are
/// created in it by descriptor, not by a path its owner could redirect.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    dir: File,
    uid: u32,
    gid: u32,
}

impl PrivateDir {
    /// `path` as a directory of `uid`:`gid`, mode 0700. Missing parents are created
    /// (0755, the agent's); a missing `path` is created and given to the user; an
    /// existing one must already be the user's and writable by nobody else (a mode
    /// that lets others read or search it is narrowed to 0700).
    pub fn create(path: &Path, uid: u32, gid: u32) -> Result<PrivateDir, PermError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| io(parent, "create", e))?;
        }
        let created = match std::fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io(path, "create", e)),
        };
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => PermError::Symlink {
                    path: path.to_path_buf(),
                },
                Some(libc::ENOTDIR) => {
                    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                        PermError::Symlink {
                            path: path.to_path_buf(),
                        }
                    } else {
                        PermError::NotDir {
                            path: path.to_path_buf(),
                        }
                    }
                }
                _ => io(path, "open", e),
            })?;
        let meta = dir.metadata().map_err(|e| io(path, "inspect", e))?;
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != uid {
            // Only a directory this call just made may be handed over; one that someone
            // else made (even a moment ago, in a shared parent) is refused.
            if !(created && meta.uid() == me) {
                return Err(owner_error(path, &meta, &[uid]));
            }
            fchown(&dir, Some(uid), Some(gid)).map_err(|e| io(path, "chown", e))?;
        }
        let mode = meta.mode() & 0o7777;
        if !created && mode & 0o022 != 0 {
            return Err(PermError::Writable {
                path: path.to_path_buf(),
                mode,
            });
        }
        if mode != 0o700 {
            dir.set_permissions(Permissions::from_mode(0o700))
                .map_err(|e| io(path, "chmod", e))?;
            if !created {
                tracing::info!(dir = %path.display(), from = format!("{mode:04o}"), "narrowed a private directory to mode 0700");
            }
        }
        Ok(PrivateDir {
            path: path.to_path_buf(),
            dir,
            uid,
            gid,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens (creating, mode 0600, owned by the directory's user) the file `name` in
    /// this directory for appending, without following a symlink.
    pub fn open_append(&self, name: &str) -> Result<File, PermError> {
        let path = self.path.join(name);
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io(&path, "open", "not a plain file name"));
        }
        let fd = nix::fcntl::openat(
            self.dir.as_fd(),
            name,
            append_flags(),
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| open_error(&path, e))?;
        let file = File::from(fd);
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        let meta = check_regular(&path, &file)?;
        if meta.uid() != self.uid {
            if meta.uid() != me {
                return Err(owner_error(&path, &meta, &[self.uid]));
            }
            fchown(&file, Some(self.uid), Some(self.gid)).map_err(|e| io(&path, "chown", e))?;
        }
        if meta.mode() & 0o077 != 0 {
            file.set_permissions(Permissions::from_mode(0o600))
                .map_err(|e| io(&path, "chmod", e))?;
        }
        Ok(file)
    }
}

fn append_flags() -> OFlag {
    // O_NONBLOCK: opening a FIFO put there instead of the file must not block the agent
    // (it has no effect on a regular file, which is all that is accepted).
    OFlag::O_WRONLY
        | OFlag::O_APPEND
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NOCTTY
        | OFlag::O_NONBLOCK
}

fn open_error(path: &Path, e: Errno) -> PermError {
    match e {
        Errno::ELOOP => PermError::Symlink {
            path: path.to_path_buf(),
        },
        Errno::ENXIO => PermError::NotRegular {
            path: path.to_path_buf(),
        },
        e => io(path, "open", e.desc()),
    }
}

fn check_regular(path: &Path, file: &File) -> Result<Metadata, PermError> {
    let meta = file.metadata().map_err(|e| io(path, "inspect", e))?;
    if !meta.is_file() {
        return Err(PermError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    if meta.nlink() > 1 {
        return Err(PermError::HardLinked {
            path: path.to_path_buf(),
            links: meta.nlink(),
        });
    }
    Ok(meta)
}

/// Opens `path` for appending (creating it, mode 0600), refusing a symlink in its place
/// and anything but a regular file with one link. For files in the agent's own
/// directories; in a directory another user owns, use [`PrivateDir::open_append`].
pub fn open_append_nofollow(path: &Path) -> Result<File, PermError> {
    let fd = nix::fcntl::open(path, append_flags(), Mode::from_bits_truncate(0o600))
        .map_err(|e| open_error(path, e))?;
    let file = File::from(fd);
    check_regular(path, &file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn me() -> u32 {
        // SAFETY: geteuid cannot fail.
        unsafe { libc::geteuid() }
    }

    fn my_gid() -> u32 {
        // SAFETY: getegid cannot fail.
        unsafe { libc::getegid() }
    }

    /// A uid that is not ours (nor root's).
    fn someone_else() -> u32 {
        if me() == 65534 {
            65533
        } else {
            65534
        }
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_path_writable_by_its_group_or_others_is_not_trusted() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("python");
        std::fs::write(&f, "").unwrap();
        for mode in [0o775, 0o757, 0o777] {
            std::fs::set_permissions(&f, Permissions::from_mode(mode)).unwrap();
            let e = check_trusted(&f, &[me()]).unwrap_err();
            assert!(matches!(e, PermError::Writable { .. }), "{mode:o}: {e}");
            assert!(
                e.to_string()
                    .contains(&format!("chmod go-w {}", f.display())),
                "{e}"
            );
        }
        std::fs::set_permissions(&f, Permissions::from_mode(0o755)).unwrap();
        check_trusted(&f, &[me()]).unwrap();
    }

    #[test]
    fn a_path_owned_by_someone_else_is_not_trusted_and_a_symlink_is_judged_by_its_target() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("ray");
        std::fs::write(&f, "").unwrap();
        std::fs::set_permissions(&f, Permissions::from_mode(0o755)).unwrap();
        let e = check_trusted(&f, &[someone_else()]).unwrap_err();
        assert!(matches!(e, PermError::Owner { .. }), "{e}");
        assert!(e.to_string().contains(&format!("uid {}", me())), "{e}");
        // A link owned by us to a file others can write is refused for the target.
        let target = d.path().join("target");
        std::fs::write(&target, "").unwrap();
        std::fs::set_permissions(&target, Permissions::from_mode(0o666)).unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            check_trusted(&link, &[me()]),
            Err(PermError::Writable { .. })
        ));
        assert_eq!(check_trusted(&d.path().join("missing"), &[me()]), Ok(()));
    }

    #[test]
    fn an_ancestor_others_can_write_is_refused_unless_sticky() {
        let d = tempfile::tempdir().unwrap();
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::create_dir(open.join("venv")).unwrap();
        std::fs::set_permissions(&open, Permissions::from_mode(0o777)).unwrap();
        let owners = [0, me()];
        let e = check_ancestors(&open.join("venv"), &owners).unwrap_err();
        assert_eq!(
            e,
            PermError::Writable {
                path: open.clone(),
                mode: 0o777
            }
        );
        std::fs::set_permissions(&open, Permissions::from_mode(0o1777)).unwrap();
        check_ancestors(&open.join("venv"), &owners).unwrap();
    }

    #[test]
    fn a_new_private_directory_is_0700_and_its_owners() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state/ray");
        let dir = PrivateDir::create(&p, me(), my_gid()).unwrap();
        assert_eq!(dir.path(), p);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o700, me()));
        // Again, on the existing directory: accepted as it is.
        PrivateDir::create(&p, me(), my_gid()).unwrap();
    }

    #[test]
    fn an_existing_temp_dir_owned_by_another_user_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ray");
        std::fs::create_dir(&p).unwrap();
        let other = someone_else();
        let e = PrivateDir::create(&p, other, other).unwrap_err();
        match &e {
            PermError::Owner { owner, .. } => {
                assert!(owner.contains(&format!("uid {}", me())), "{e}")
            }
            _ => panic!("{e}"),
        }
        assert!(e.to_string().contains(&format!("{}", p.display())), "{e}");
        // Nothing was changed on the refused directory.
        assert_eq!(std::fs::metadata(&p).unwrap().uid(), me());
    }

    #[test]
    fn an_existing_private_dir_others_can_write_is_refused_and_a_readable_one_narrowed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ray");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o777)).unwrap();
        let e = PrivateDir::create(&p, me(), my_gid()).unwrap_err();
        assert!(matches!(e, PermError::Writable { mode: 0o777, .. }), "{e}");
        std::fs::set_permissions(&p, Permissions::from_mode(0o755)).unwrap();
        PrivateDir::create(&p, me(), my_gid()).unwrap();
        assert_eq!(mode_of(&p), 0o700);
    }

    #[test]
    fn a_symlink_in_place_of_the_private_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("elsewhere");
        std::fs::create_dir(&real).unwrap();
        let p = d.path().join("ray");
        std::os::unix::fs::symlink(&real, &p).unwrap();
        let e = PrivateDir::create(&p, me(), my_gid()).unwrap_err();
        assert!(matches!(e, PermError::Symlink { .. }), "{e}");
    }

    #[test]
    fn a_symlinked_log_file_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let dir = PrivateDir::create(&d.path().join("ray"), me(), my_gid()).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("head.log")).unwrap();
        let e = dir.open_append("head.log").unwrap_err();
        assert!(matches!(e, PermError::Symlink { .. }), "{e}");
        assert!(e.to_string().contains("head.log"), "{e}");
        let e = open_append_nofollow(&dir.path().join("head.log")).unwrap_err();
        assert!(matches!(e, PermError::Symlink { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    }

    #[test]
    fn a_hard_linked_or_special_log_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = PrivateDir::create(&d.path().join("ray"), me(), my_gid()).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::fs::hard_link(&victim, dir.path().join("head.log")).unwrap();
        let e = dir.open_append("head.log").unwrap_err();
        assert_eq!(
            e,
            PermError::HardLinked {
                path: dir.path().join("head.log"),
                links: 2
            }
        );
        // A FIFO must neither be written nor block the open.
        let fifo = dir.path().join("worker.log");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let e = dir.open_append("worker.log").unwrap_err();
        assert!(matches!(e, PermError::NotRegular { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    }

    #[test]
    fn a_log_file_is_created_0600_and_appended_to() {
        let d = tempfile::tempdir().unwrap();
        let dir = PrivateDir::create(&d.path().join("ray"), me(), my_gid()).unwrap();
        for line in ["one\n", "two\n"] {
            let mut f = dir.open_append("head.log").unwrap();
            f.write_all(line.as_bytes()).unwrap();
        }
        let p = dir.path().join("head.log");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "one\ntwo\n");
        assert_eq!(mode_of(&p), 0o600);
        assert!(dir.open_append("../escape.log").is_err());
    }

    #[test]
    fn the_first_unsearchable_directory_is_named() {
        let d = tempfile::tempdir().unwrap();
        let closed = d.path().join("closed");
        std::fs::create_dir_all(closed.join("ray")).unwrap();
        std::fs::set_permissions(d.path(), Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&closed, Permissions::from_mode(0o750)).unwrap();
        let other = someone_else();
        let (dir, mode, _) = first_unsearchable(&closed.join("ray"), other, &[other]).unwrap();
        assert_eq!((dir, mode), (closed.clone(), 0o750));
        std::fs::set_permissions(&closed, Permissions::from_mode(0o751)).unwrap();
        assert_eq!(
            first_unsearchable(&closed.join("ray"), other, &[other]),
            None
        );
        assert_eq!(first_unsearchable(&closed.join("ray"), 0, &[]), None);
    }
}
