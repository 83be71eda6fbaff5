//! The on-disk cache of compiled components, so an agent restart does not recompile
//! every plugin (Cranelift takes on the order of a second per plugin; a cached load
//! takes milliseconds: see BENCHMARKS.md).
//!
//! An entry is `CACHE_DIR/NAME-WASMSHA-ENGINEKEY.cwasm`, where WASMSHA is the sha256 of
//! the component and ENGINEKEY a sha256 over wasmtime's
//! `Engine::precompile_compatibility_hash` (wasmtime's version, the engine's settings and
//! the host CPU's features). A changed plugin or a changed engine therefore misses and
//! recompiles; writing a new entry for NAME removes NAME's older entries.
//!
//! Invariants and trade-offs:
//! - An entry is the engine's `precompile_component` output followed by the sha256 of
//!   those bytes. The checksum is verified before deserializing, so a truncated or
//!   corrupted entry (a full disk, a bad block, a half-copied file) is recompiled, never
//!   loaded. Reading and hashing the entry costs about a millisecond per MB, which buys
//!   that check; it streams the file through a small buffer, so it allocates nothing the
//!   size of the entry.
//! - A checked entry is then mapped (`Component::deserialize_file`), not copied into
//!   memory: the compiled code and its metadata stay file-backed pages, and only the
//!   pages a plugin actually runs or reads become resident (a copy would make the whole
//!   entry, 0.5–0.8 MB per shipped plugin, anonymous memory for the agent's lifetime).
//!   A component compiled at load is mapped from the entry just written, for the same
//!   reason; only when that entry cannot be written is it kept in memory. Once the load
//!   is done its pages are handed back ([`release_mapped_pages`]): loading reads nearly
//!   all of an entry, a call little of it. The 32-byte
//!   checksum after the ELF image is ignored by wasmtime's reader, which locates
//!   everything from the ELF headers. An entry is replaced only by renaming a new file
//!   over it, so a mapped entry's pages never change under the agent; between the check
//!   and the mapping only the agent's own user could change the file (the next
//!   invariant), and such a user could change the agent's binary just as well.
//! - Entries are written to a temporary file in the same directory and renamed into
//!   place, so a reader never sees a half-written entry, and concurrent writers of the
//!   same entry are harmless.
//! - Deserializing runs native code compiled earlier, so the cache directory must be
//!   writable only by the agent's user: it is created mode 0700, and an existing
//!   directory that is owned by another user, or that its group or others can write, is
//!   not used ([`crate::fsperm::check_trusted`]; the plugins are compiled in memory and a
//!   warning names the directory and the fix). Anyone else who could write it could
//!   put code into the agent.
//! - The cache is an optimisation only: any failure to read or write it is logged and
//!   the component is compiled in memory instead. It never fails a load.

use std::hash::Hasher;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Where a loaded component came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "source", content = "reason")]
pub enum ComponentSource {
    /// Compiled now; stored in the cache when there is one.
    Compiled,
    /// Deserialized from a cache entry.
    Cached,
    /// A cache entry existed but could not be used (the reason); compiled now and stored.
    Recompiled(String),
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of `bytes`, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Feeds what `Hash` writes into sha256, so the key is stable across runs (std's
/// `DefaultHasher` makes no such promise).
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        unreachable!("only the sha256 state is read")
    }
}

/// The engine part of a cache key (hex, 16 digits).
pub fn engine_key(engine: &Engine) -> String {
    use std::hash::Hash;
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    hex(&h.0.finalize()[..8])
}

/// A compiled-component cache in one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

fn wt(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

impl Cache {
    /// The cache in `dir`, created (0700) if missing; `Err` says why it cannot be used.
    pub fn open(dir: &Path) -> anyhow::Result<Cache> {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
        let meta = std::fs::metadata(dir)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
        anyhow::ensure!(meta.is_dir(), "{} is not a directory", dir.display());
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        crate::fsperm::check_trusted(dir, &[me]).map_err(|e| {
            anyhow::anyhow!(
                "{e}: compiled plugin code is loaded from it into the agent, so only the agent's user ({}) may be able to write it",
                crate::fsperm::describe_uid(me)
            )
        })?;
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    /// The entry file for plugin `name` with component digest `wasm_sha`.
    pub fn entry(&self, name: &str, wasm_sha: &str, engine_key: &str) -> PathBuf {
        self.dir
            .join(format!("{name}-{wasm_sha}-{engine_key}.cwasm"))
    }

    /// Reads and checks an entry: `Ok(None)` when there is none, `Err` (the reason) when
    /// it exists but cannot be used.
    fn read(&self, engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
        match checksum_ok(path) {
            Ok(true) => {}
            Ok(false) => return Err(format!("{} fails its checksum", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(format!("{} is truncated", path.display()))
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
        // SAFETY: the file is `precompile_component` output of an engine with the same
        // compatibility hash (the file name), written by this agent into a directory only
        // its user can write, and unchanged since (the checksum); entries are replaced
        // by rename only, so the mapped file does not change afterwards (module doc).
        unsafe { Component::deserialize_file(engine, path) }
            .map(Some)
            .map_err(|e| format!("{} cannot be deserialized: {e:#}", path.display()))
    }

    /// Writes an entry atomically and removes `name`'s other entries.
    fn write(&self, path: &Path, name: &str, compiled: &[u8]) -> anyhow::Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)?;
        tmp.write_all(compiled)?;
        tmp.write_all(&Sha256::digest(compiled))?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)?;
        let prefix = format!("{name}-");
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let p = entry.path();
            let file = entry.file_name();
            let file = file.to_string_lossy();
            // NAME-<64 hex>-<16 hex>.cwasm: the digest part keeps `a` from matching `a-b`.
            let ours = file
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".cwasm"))
                .is_some_and(|rest| {
                    rest.len() == 64 + 1 + 16
                        && rest.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
                });
            if ours && p != path {
                let _ = std::fs::remove_file(&p);
            }
        }
        Ok(())
    }

    /// The component for `wasm` (digest `wasm_sha`): from the cache, or compiled and
    /// stored.
    pub fn load(
        &self,
        engine: &Engine,
        engine_key: &str,
        name: &str,
        wasm: &[u8],
        wasm_sha: &str,
    ) -> anyhow::Result<(Component, ComponentSource, bool)> {
        let path = self.entry(name, wasm_sha, engine_key);
        let source = match self.read(engine, &path) {
            Ok(Some(c)) => return Ok((c, ComponentSource::Cached, true)),
            Ok(None) => ComponentSource::Compiled,
            Err(reason) => {
                tracing::warn!(plugin = %name, %reason, "compiled plugin cache entry unusable; recompiling");
                ComponentSource::Recompiled(reason)
            }
        };
        let compiled = engine.precompile_component(wasm).map_err(wt)?;
        if let Err(e) = self.write(&path, name, &compiled) {
            tracing::warn!(plugin = %name, path = %path.display(), error = %e, "cannot write the compiled plugin cache entry");
        } else {
            // SAFETY: the entry was just written from these bytes by this engine (see
            // `read` for why mapping it is sound).
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, source, true)),
                Err(e) => {
                    tracing::warn!(plugin = %name, path = %path.display(), error = %format!("{e:#}"), "cannot map the compiled plugin cache entry just written; keeping the component in memory")
                }
            }
        }
        // SAFETY: these bytes were just produced by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled) }.map_err(wt)?;
        Ok((component, source, false))
    }
}

/// Hands back the resident pages of a component mapped from its cache entry, once its
/// load is done. Loading reads nearly all of the entry (the checksum brings it into the
/// page cache, so every fault then maps its neighbours too), while calls use a small
/// part of it. The pages are clean file pages: the kernel drops them
/// (`MADV_PAGEOUT`, Linux 5.4+; elsewhere, or on failure, nothing happens), and a call
/// faults back in, from the file, only what it runs. Never used on a component held in
/// anonymous memory, which the kernel could only move to swap.
pub(crate) fn release_mapped_pages(component: &Component) {
    let range = component.image_range();
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = (range.start as usize) & !(page - 1);
    let len = (range.end as usize).saturating_sub(start);
    if len == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the range is the component's own file mapping, which stays mapped; paging
    // out clean file pages changes no contents, only residency.
    unsafe {
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_PAGEOUT);
    }
}

/// Whether the entry at `path` ends with the sha256 of what precedes it, read through
/// a small buffer. `UnexpectedEof`: the file is too short to hold a checksum.
fn checksum_ok(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let Some(body) = len.checked_sub(32) else {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = body;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        file.read_exact(&mut buf[..want])?;
        hasher.update(&buf[..want]);
        left -= want as u64;
    }
    let mut sum = [0u8; 32];
    file.read_exact(&mut sum)?;
    Ok(hasher.finalize().as_slice() == sum)
}

/// Compiles `wasm` without a cache.
pub fn compile(engine: &Engine, wasm: &[u8]) -> anyhow::Result<Component> {
    Component::from_binary(engine, wasm).map_err(wt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_engine_key_is_stable_and_tracks_engine_settings() {
        let a = Engine::new(&wasmtime::Config::new()).unwrap();
        let b = Engine::new(&wasmtime::Config::new()).unwrap();
        assert_eq!(engine_key(&a), engine_key(&b));
        assert_eq!(engine_key(&a).len(), 16);
        let mut other = wasmtime::Config::new();
        other.cranelift_opt_level(wasmtime::OptLevel::None);
        assert_ne!(engine_key(&a), engine_key(&Engine::new(&other).unwrap()));
    }

    #[test]
    fn a_cache_directory_its_group_or_others_can_write_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        for (mode, who) in [(0o770, "its group"), (0o777, "its group and all users")] {
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Cache::open(&shared).unwrap_err().to_string();
            assert!(err.contains(&format!("writable by {who}")), "{err}");
            assert!(
                err.contains(&format!("chmod go-w {}", shared.display())),
                "{err}"
            );
        }
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o750)).unwrap();
        Cache::open(&shared).unwrap();
        let fresh = dir.path().join("a/b");
        Cache::open(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_cache_directory_owned_by_another_user_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        // Root can hand a directory to another user; anyone else finds one of root's.
        let theirs = if me == 0 {
            let d = dir.path().join("theirs");
            std::fs::create_dir(&d).unwrap();
            std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
            d
        } else {
            PathBuf::from("/")
        };
        let err = Cache::open(&theirs).unwrap_err().to_string();
        assert!(err.contains("is owned by"), "{err}");
        assert!(
            err.contains(&format!(
                "chown {}",
                crate::fsperm::user_name(me).unwrap_or(me.to_string())
            )),
            "{err}"
        );
    }

    #[test]
    fn the_checksum_covers_an_entry_larger_than_the_read_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.cwasm");
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut entry = body.clone();
        entry.extend_from_slice(&Sha256::digest(&body));
        std::fs::write(&path, &entry).unwrap();
        assert!(checksum_ok(&path).unwrap());
        // A byte changed past the first buffer's worth is caught.
        entry[150_000] ^= 1;
        std::fs::write(&path, &entry).unwrap();
        assert!(!checksum_ok(&path).unwrap());
        std::fs::write(&path, [0u8; 31]).unwrap();
        assert_eq!(
            checksum_ok(&path).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn unusable_entries_are_reported_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let engine = Engine::new(&wasmtime::Config::new()).unwrap();
        let path = dir.path().join("x.cwasm");
        assert!(matches!(cache.read(&engine, &path), Ok(None)));
        std::fs::write(&path, b"short").unwrap();
        assert!(cache
            .read(&engine, &path)
            .unwrap_err()
            .contains("truncated"));
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        assert!(cache.read(&engine, &path).unwrap_err().contains("checksum"));
        // A matching checksum over bytes that are not a compiled component.
        let mut bytes = b"not a compiled component".to_vec();
        bytes.extend_from_slice(&Sha256::digest(b"not a compiled component"));
        std::fs::write(&path, bytes).unwrap();
        assert!(cache
            .read(&engine, &path)
            .unwrap_err()
            .contains("cannot be deserialized"));
    }
}
