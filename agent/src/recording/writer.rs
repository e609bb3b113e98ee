//! Writes a recording: the header, then chunks of records. Records are encoded into one
//! reusable buffer (no allocation per event); a chunk is closed when it reaches
//! [`CHUNK_TARGET`] or when the caller flushes (once a second), and written with one `write`, so
//! a kill or a full disk loses at most the chunk being written.

use std::{
    ffi::{CString, OsString},
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use bytes::{Bytes, BytesMut};

use super::{
    format::{
        CHUNK_HEADER_LEN, CHUNK_TARGET, Header, chunk_header, encode_event, encode_header,
        encode_stats,
    },
    kernel::{KernelEncoder, Table, encode_base},
};
use crate::{
    event::Transition,
    stream::{Item, KernelTruth, Stats},
};

/// Builds chunks in memory.
pub struct Encoder {
    /// `CHUNK_HEADER_LEN` reserved bytes, then the payload.
    buf: BytesMut,
    count: u32,
    /// Kernel dumps go in as deltas against the one before.
    kernel: KernelEncoder,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        let mut buf = BytesMut::with_capacity(CHUNK_TARGET + 4096);
        buf.resize(CHUNK_HEADER_LEN, 0);
        Self {
            buf,
            count: 0,
            kernel: KernelEncoder::default(),
        }
    }

    /// Kernel dumps are written in full at least this often (of dump time); the rest are
    /// deltas.
    pub fn set_full_dump_every(&mut self, ns: u64) {
        self.kernel = KernelEncoder::new(ns);
    }

    /// A chunk holding only `k` as the base (number `seq`) of the deltas after it: what a
    /// flight-recorder capture starts with.
    pub fn base_chunk(table: &Table, seq: u64) -> Option<Bytes> {
        let mut enc = Self::new();
        encode_base(&mut enc.buf, table, seq);
        enc.count = 1;
        enc.finish()
    }

    pub fn event(&mut self, t: &Transition) {
        encode_event(&mut self.buf, t);
        self.count += 1;
    }

    pub fn kernel(&mut self, k: &KernelTruth) {
        self.kernel.encode(&mut self.buf, k);
        self.count += 1;
    }

    pub fn stats(&mut self, s: &Stats) {
        encode_stats(&mut self.buf, s);
        self.count += 1;
    }

    pub fn record(&mut self, r: &Item) {
        match r {
            Item::Event(t) => self.event(t),
            Item::Kernel(k) => self.kernel(k),
            Item::Stats(s) => self.stats(s),
            Item::End { mono_ns } => self.end(*mono_ns),
        }
    }

    pub fn end(&mut self, mono_ns: u64) {
        super::format::encode_end(&mut self.buf, mono_ns);
        self.count += 1;
    }

    /// The open chunk's size so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Takes back the last record, which started at `len` (a [`Encoder::len`] taken before it).
    fn undo(&mut self, len: usize) {
        if len < self.buf.len() && self.count > 0 {
            self.buf.truncate(len);
            self.count -= 1;
            // Had it been a kernel dump, the next delta's base would be missing from the file.
            self.kernel.forget();
        }
    }

    /// Records in the open chunk.
    pub fn pending(&self) -> u32 {
        self.count
    }

    /// The open chunk has reached its target size.
    pub fn full(&self) -> bool {
        self.buf.len() >= CHUNK_HEADER_LEN + CHUNK_TARGET
    }

    /// Closes the open chunk: its bytes, header included; `None` when it holds no record.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.count == 0 {
            return None;
        }
        let header = chunk_header(&self.buf[CHUNK_HEADER_LEN..], self.count);
        self.buf[..CHUNK_HEADER_LEN].copy_from_slice(&header);
        // A copy of exactly the chunk's size: the buffer is reused for the next one, and a chunk
        // kept in the flight recorder's ring holds no more memory than its length.
        let chunk = Bytes::copy_from_slice(&self.buf);
        self.count = 0;
        self.buf.truncate(CHUNK_HEADER_LEN);
        Some(chunk)
    }
}

/// A recording file just created, and what it replaced.
#[derive(Debug)]
pub struct Created {
    pub file: File,
    /// With `force`, the path was a symbolic link (to this target): the link was replaced, its
    /// target left alone. Worth a line: someone may have planted it.
    pub replaced_link: Option<PathBuf>,
}

/// Creates the recording `path`: a new regular file owned by the caller with mode 0600 (a
/// recording names processes and peers). An existing name is refused unless `force`; then a
/// regular file or a symbolic link is replaced, never written through: twtrace runs as root,
/// often in directories other users can write, so a link or a hard link planted at `path` must
/// not make it overwrite (or create, or chmod) the file the link points at.
pub fn create_file(path: &Path, force: bool) -> anyhow::Result<Created> {
    if !force {
        return match create_new(path) {
            Ok(file) => Ok(Created {
                file,
                replaced_link: None,
            }),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let what = match fs::symlink_metadata(path) {
                    Ok(m) if m.file_type().is_symlink() => "a symbolic link",
                    Ok(m) if m.is_dir() => "a directory",
                    _ => "a file",
                };
                anyhow::bail!(
                    "{} already exists as {what} (use --force to replace it)",
                    path.display()
                )
            }
            Err(e) => Err(anyhow::Error::new(e).context(format!("creating {}", path.display()))),
        };
    }
    // What is there decides only what is refused and what is said: the replacement itself is a
    // rename, which replaces whatever the name points to at that moment and never follows it.
    let mut replaced_link = None;
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            replaced_link = Some(fs::read_link(path).unwrap_or_default());
        }
        Ok(m) if m.is_dir() => anyhow::bail!("{} is a directory", path.display()),
        // A device, FIFO or socket (`-o /dev/null --force`) must not be replaced by a file.
        Ok(m) if !m.is_file() => anyhow::bail!(
            "{} is not a regular file; recordings are written only to regular files",
            path.display()
        ),
        _ => {}
    }
    let (file, temp) = create_temp_beside(path)?;
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(anyhow::Error::new(e).context(format!("replacing {}", path.display())));
    }
    Ok(Created {
        file,
        replaced_link,
    })
}

/// `path`'s parent directory, `.` for a bare file name.
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A new file beside `path` to be renamed over it: same directory (a rename cannot cross file
/// systems), a name other users cannot predict exactly, created as [`create_new`] does.
fn create_temp_beside(path: &Path) -> anyhow::Result<(File, PathBuf)> {
    let Some(name) = path.file_name() else {
        anyhow::bail!("{} does not name a file", path.display());
    };
    let dir = parent_of(path);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for n in 0..100u32 {
        let mut temp_name = OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}-{nanos:x}-{n}.tmp", std::process::id()));
        let temp = dir.join(temp_name);
        match create_new(&temp) {
            Ok(file) => return Ok((file, temp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("creating {}", path.display())));
            }
        }
    }
    anyhow::bail!(
        "creating {}: no free temporary name beside it",
        path.display()
    )
}

/// Creates `path`, which must not exist (not even as a dangling link: O_EXCL never follows
/// one), owned by the caller and mode 0600 whatever the umask or a default ACL would give.
fn create_new(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    exact_mode(&file, 0o600)?;
    Ok(file)
}

/// fchmod: the mode of what was opened, never of what a name points to now.
fn exact_mode(file: &File, mode: u32) -> io::Result<()> {
    file.set_permissions(fs::Permissions::from_mode(mode))
}

/// The flight recorder's capture directory, held open: captures are created relative to this
/// descriptor, so swapping the directory for a link after start-up cannot redirect them.
pub struct CaptureDir {
    fd: File,
    path: PathBuf,
}

impl CaptureDir {
    /// Opens `path`, creating it (and missing parents) mode 0700 when missing. A `path` that is
    /// a symbolic link is refused, even to a directory: as root, following a link planted by
    /// another user would write captures wherever that user chose.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let refuse_link = || {
            anyhow::anyhow!(
                "{} is a symbolic link; with --ring, -o must name a directory itself (twtrace \
                 does not write through links)",
                path.display()
            )
        };
        let created = match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => return Err(refuse_link()),
            Ok(m) if !m.is_dir() => anyhow::bail!(
                "{} is not a directory: with --ring, -o names the directory for captures",
                path.display()
            ),
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                true
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("reading {}", path.display())));
            }
        };
        let fd = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                // Replaced by a link between the check and the open.
                if e.raw_os_error() == Some(libc::ELOOP) {
                    refuse_link()
                } else {
                    anyhow::Error::new(e).context(format!("opening {}", path.display()))
                }
            })?;
        if created {
            exact_mode(&fd, 0o700).with_context(|| format!("creating {}", path.display()))?;
        }
        Ok(Self {
            fd,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `name` in the directory as [`create_new`] does: a name that exists, as a file or
    /// as a link, is [`io::ErrorKind::AlreadyExists`].
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let c_name = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a file name"))?;
        // SAFETY: the directory descriptor is open for as long as `self`, `c_name` is a valid
        // NUL-terminated string that outlives the call, and openat only reads it.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c_name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        exact_mode(&file, 0o600)?;
        Ok(file)
    }
}

/// The smallest `--max-size` that holds a recording with this header: the header and the room
/// the writer keeps for the final chunk with the end mark. Below it the file could not even be
/// marked as complete.
pub fn smallest_limit(header: &Header) -> u64 {
    encode_header(header).len() as u64 + END_RESERVE
}

/// Bytes kept free under a size limit for the final chunk holding the end mark.
const END_RESERVE: u64 = (CHUNK_HEADER_LEN + 16) as u64;

/// A recording being written to `W`.
pub struct Writer<W: Write> {
    out: W,
    enc: Encoder,
    /// Bytes written so far, header included.
    written: u64,
    /// Refuse chunks that would take the file beyond this many bytes.
    limit: Option<u64>,
    /// A chunk was refused because of `limit`.
    limit_hit: bool,
    /// Events written (in chunks that reached `out`).
    events: u64,
    events_pending: u64,
}

impl<W: Write> Writer<W> {
    /// Writes the header at once, so even a recording killed in its first second says what it is.
    /// A `limit` below [`smallest_limit`] is refused before anything is written.
    pub fn new(mut out: W, header: &Header, limit: Option<u64>) -> anyhow::Result<Self> {
        if let Some(max) = limit {
            let least = smallest_limit(header);
            anyhow::ensure!(
                max >= least,
                "a size limit of {max} B leaves no room for this recording's header and end mark \
                 ({least} B)"
            );
        }
        let head = encode_header(header);
        out.write_all(&head)
            .and_then(|()| out.flush())
            .context("writing the recording's header")?;
        Ok(Self {
            out,
            enc: Encoder::new(),
            written: head.len() as u64,
            limit,
            limit_hit: false,
            events: 0,
            events_pending: 0,
        })
    }

    /// Adds an event; writes the chunk once it is full.
    pub fn event(&mut self, t: &Transition) -> io::Result<()> {
        if self.limit_hit {
            return Ok(());
        }
        let before = self.enc.len();
        self.enc.event(t);
        if self.added(before)? {
            self.events_pending += 1;
        }
        Ok(())
    }

    /// See [`Encoder::set_full_dump_every`]; before the first dump.
    pub fn set_full_dump_every(&mut self, ns: u64) {
        self.enc.set_full_dump_every(ns);
    }

    pub fn kernel(&mut self, k: &KernelTruth) -> io::Result<()> {
        if self.limit_hit {
            return Ok(());
        }
        let before = self.enc.len();
        self.enc.kernel(k);
        self.added(before).map(drop)
    }

    pub fn stats(&mut self, s: &Stats) -> io::Result<()> {
        if self.limit_hit {
            return Ok(());
        }
        let before = self.enc.len();
        self.enc.stats(s);
        self.added(before).map(drop)
    }

    /// After a record was encoded: under a size limit, a record that would take the file past
    /// it (less the room kept for the end mark) is taken back, what fits is written and the
    /// recording is full. Otherwise a full chunk is written. False when the record was dropped.
    fn added(&mut self, before: usize) -> io::Result<bool> {
        let over = self
            .limit
            .is_some_and(|max| self.written + self.enc.len() as u64 + END_RESERVE > max);
        if over {
            self.enc.undo(before);
            self.flush()?;
            self.limit_hit = true;
            return Ok(false);
        }
        if self.enc.full() {
            self.flush()?;
        }
        Ok(true)
    }

    /// Any record (tests, replays into a new file).
    pub fn record(&mut self, r: &Item) -> io::Result<()> {
        match r {
            Item::Event(t) => self.event(t),
            Item::Kernel(k) => self.kernel(k),
            Item::Stats(s) => self.stats(s),
            Item::End { mono_ns } => self.end(*mono_ns),
        }
    }

    /// Marks a clean stop and writes the last chunk. Room for it is kept under a size limit.
    pub fn end(&mut self, mono_ns: u64) -> io::Result<()> {
        if self.limit_hit {
            // What did not fit was dropped; the end mark alone goes into the reserve.
            self.enc = Encoder::new();
            self.events_pending = 0;
        }
        self.enc.end(mono_ns);
        self.write_chunk(0)
    }

    /// Writes the open chunk, if any. With a size limit, a chunk that does not fit (leaving room
    /// for the end mark) is dropped and [`Writer::limit_reached`] turns true.
    pub fn flush(&mut self) -> io::Result<()> {
        self.write_chunk(END_RESERVE)
    }

    fn write_chunk(&mut self, reserve: u64) -> io::Result<()> {
        let pending = std::mem::take(&mut self.events_pending);
        let Some(chunk) = self.enc.finish() else {
            return Ok(());
        };
        let too_big = self
            .limit
            .is_some_and(|max| self.written + chunk.len() as u64 + reserve > max);
        if too_big || (self.limit_hit && reserve > 0) {
            self.limit_hit = true;
            return Ok(());
        }
        self.out.write_all(&chunk)?;
        self.out.flush()?;
        self.written += chunk.len() as u64;
        self.events += pending;
        Ok(())
    }

    pub fn limit_reached(&self) -> bool {
        self.limit_hit
    }

    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    pub fn events_written(&self) -> u64 {
        self.events
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _, symlink};

    use super::*;
    use crate::recording::tests::{header, read_all};

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("twtrace-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("mkdir");
            Self(dir)
        }

        fn join(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }

        /// The names in the directory, sorted.
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(&self.0)
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path)
            .expect("lstat")
            .permissions()
            .mode()
            & 0o7777
    }

    fn write_all(mut created: Created, bytes: &[u8]) {
        created.file.write_all(bytes).expect("write");
    }

    #[test]
    fn force_replaces_a_link_and_never_writes_through_it() {
        let dir = Scratch::new("writer-link");
        let target = dir.join("secret");
        fs::write(&target, b"secret").expect("write");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).expect("chmod");
        let out = dir.join("x.twr");
        symlink(&target, &out).expect("symlink");

        let e = create_file(&out, false).expect_err("a link is an existing name");
        assert_eq!(
            e.to_string(),
            format!(
                "{} already exists as a symbolic link (use --force to replace it)",
                out.display()
            )
        );
        let created = create_file(&out, true).expect("replaces the link");
        assert_eq!(created.replaced_link.as_deref(), Some(target.as_path()));
        write_all(created, b"recording");

        assert_eq!(fs::read(&target).expect("target"), b"secret");
        assert_eq!(mode(&target), 0o640);
        let meta = fs::symlink_metadata(&out).expect("lstat");
        assert!(meta.file_type().is_file());
        assert_eq!(mode(&out), 0o600);
        assert_eq!(fs::read(&out).expect("out"), b"recording");
        // The temporary name is gone: renamed over the link.
        assert_eq!(dir.names(), ["secret", "x.twr"]);
    }

    #[test]
    fn a_dangling_link_creates_nothing_at_its_target() {
        let dir = Scratch::new("writer-dangling");
        let target = dir.join("planted");
        let out = dir.join("x.twr");
        symlink(&target, &out).expect("symlink");
        assert!(create_file(&out, false).is_err());
        assert!(fs::symlink_metadata(&target).is_err(), "nothing created");
        let created = create_file(&out, true).expect("replaces the link");
        assert_eq!(created.replaced_link.as_deref(), Some(target.as_path()));
        assert!(fs::symlink_metadata(&target).is_err(), "nothing created");
        assert!(fs::symlink_metadata(&out).expect("lstat").is_file());
        assert_eq!(dir.names(), ["x.twr"]);
    }

    #[test]
    fn force_makes_an_open_file_0600_and_leaves_its_hard_links_alone() {
        let dir = Scratch::new("writer-mode");
        let out = dir.join("x.twr");
        fs::write(&out, b"old").expect("write");
        fs::set_permissions(&out, fs::Permissions::from_mode(0o666)).expect("chmod");
        let other = dir.join("other");
        fs::hard_link(&out, &other).expect("link");
        let before = fs::metadata(&out).expect("stat").ino();

        let created = create_file(&out, true).expect("replaces");
        assert!(created.replaced_link.is_none());
        write_all(created, b"new");
        assert_eq!(mode(&out), 0o600);
        assert_ne!(
            fs::metadata(&out).expect("stat").ino(),
            before,
            "a new file"
        );
        assert_eq!(fs::read(&out).expect("out"), b"new");
        assert_eq!(fs::read(&other).expect("other"), b"old");
        assert_eq!(mode(&other), 0o666);

        // Without --force a new file is 0600 too.
        let fresh = dir.join("fresh.twr");
        drop(create_file(&fresh, false).expect("creates"));
        assert_eq!(mode(&fresh), 0o600);
    }

    #[test]
    fn force_refuses_what_is_not_a_regular_file() {
        let dir = Scratch::new("writer-kinds");
        let sub = dir.join("sub");
        fs::create_dir(&sub).expect("mkdir");
        let e = create_file(&sub, true).expect_err("a directory");
        assert_eq!(e.to_string(), format!("{} is a directory", sub.display()));
        let fifo = dir.join("fifo");
        let c = CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let e = create_file(&fifo, true).expect_err("a FIFO");
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(
            fs::symlink_metadata(&fifo)
                .expect("lstat")
                .file_type()
                .is_fifo()
        );
        assert_eq!(dir.names(), ["fifo", "sub"]);
    }

    #[test]
    fn the_capture_directory_is_never_a_link_and_is_created_0700() {
        let dir = Scratch::new("writer-capdir");
        let real = dir.join("real");
        fs::create_dir(&real).expect("mkdir");
        let link = dir.join("link");
        symlink(&real, &link).expect("symlink");
        let e = CaptureDir::open(&link).err().expect("a link is refused");
        assert_eq!(
            e.to_string(),
            format!(
                "{} is a symbolic link; with --ring, -o must name a directory itself (twtrace \
                 does not write through links)",
                link.display()
            )
        );
        let file = dir.join("file");
        fs::write(&file, b"").expect("write");
        assert!(CaptureDir::open(&file).is_err());

        let missing = dir.join("a/b");
        let cap = CaptureDir::open(&missing).expect("created");
        assert_eq!(mode(&missing), 0o700);
        assert_eq!(cap.path(), missing);
        // A name taken by a link, even a dangling one, is taken: nothing is created through it.
        let planted = dir.join("planted");
        symlink(&planted, missing.join("c.twr")).expect("symlink");
        let e = cap.create_new("c.twr").expect_err("taken");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(fs::symlink_metadata(&planted).is_err());
        drop(cap.create_new("d.twr").expect("creates"));
        assert_eq!(mode(&missing.join("d.twr")), 0o600);
    }

    #[test]
    fn the_smallest_size_limit_still_holds_the_end_mark() {
        let h = header();
        let least = smallest_limit(&h);
        let e = Writer::new(Vec::new(), &h, Some(least - 1))
            .err()
            .expect("refused");
        assert!(e.to_string().contains(&format!("({least} B)")), "{e}");
        let mut w = Writer::new(Vec::new(), &h, Some(least)).expect("fits");
        w.stats(&Stats::default()).expect("write");
        w.flush().expect("write");
        assert!(w.limit_reached());
        w.end(7).expect("write");
        let bytes = w.into_inner();
        assert!(bytes.len() as u64 <= least);
        let (records, problems) = read_all(&bytes).expect("reads");
        assert_eq!(records, vec![Item::End { mono_ns: 7 }]);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
