//! Byte offsets of the few kernel struct members the kernel program reads, looked up in the
//! running kernel's own type information (BTF, /sys/kernel/btf/vmlinux).
//!
//! The kernel program follows pointers through kernel structs (task -> files -> fdtable -> file
//! -> socket -> sock -> net) whose layout changes with the kernel version and its config. A C
//! program would have the loader patch these offsets (CO-RE relocations); Rust eBPF cannot emit
//! those relocations, so the agent reads the offsets here and hands them to the program as
//! globals before loading it.
//!
//! Why our own parser: aya-obj 0.3's `Btf` parses the file and finds a type id by name
//! (`id_by_type_name_kind`), but type lookup by id, struct members and the string table are all
//! `pub(crate)`, so a member path cannot be walked through its public API. Only the header, the
//! type section and the string section are read (format: include/uapi/linux/btf.h). Everything
//! is bounds-checked: a corrupt file gives an error, never a panic or an endless loop.

use anyhow::{Context as _, Result, bail};

/// Where the running kernel exposes its BTF (CONFIG_DEBUG_INFO_BTF).
const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets the kernel program needs; all resolved or the whole thing fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Offsets {
    /// struct sock -> __sk_common.skc_net (possible_net_t) -> .net : offset of the `struct net *`
    /// pointer inside struct sock
    pub sock_net: u32,
    /// struct net -> ns.inum (unsigned int) : offset inside struct net
    pub net_inum: u32,
    /// struct task_struct -> files (struct files_struct *)
    pub task_files: u32,
    /// struct files_struct -> fdt (struct fdtable *)
    pub files_fdt: u32,
    /// struct fdtable -> fd (struct file **)
    pub fdtable_fd: u32,
    /// struct fdtable -> max_fds (unsigned int)
    pub fdtable_max_fds: u32,
    /// struct file -> private_data (void *)
    pub file_private_data: u32,
    /// struct socket -> sk (struct sock *)
    pub socket_sk: u32,
    /// struct sock -> sk_protocol (u16)
    pub sock_protocol: u32,
    /// struct sock -> sk_type (u16)
    pub sock_type: u32,
    /// struct sock -> __sk_common.skc_flags (`sk->sk_flags`, unsigned long): read at an
    /// orphan's `FIN_WAIT2 -> CLOSE` to tell its timewait substate (docs/kernel.md).
    pub sock_flags: u32,
    /// Bit numbers in `sk_flags` of `SOCK_DEAD` (orphaned: its process closed it) and
    /// `SOCK_DONE` (the peer's FIN arrived), from `enum sock_flags`.
    pub sock_dead_bit: u32,
    pub sock_done_bit: u32,
}

/// [`Offsets`] for the running kernel, from /sys/kernel/btf/vmlinux.
///
/// The file is mapped, not read, where the kernel allows it (6.16 and later map it read-only):
/// reading it means one 5.5 MB allocation, and freeing that raises glibc's dynamic mmap
/// threshold to its size, after which the agent's large buffers come from the heap and stay
/// there. Measured with `trace --json` and 4 s of churn: VmHWM 61 MB read, 53 MB with the
/// threshold pinned (`MALLOC_MMAP_THRESHOLD_=131072`), against 52-55 MB before twtrace read BTF.
pub fn resolve() -> Result<Offsets> {
    let context = || {
        format!(
            "reading the kernel's BTF {VMLINUX} (needs a kernel built with CONFIG_DEBUG_INFO_BTF)"
        )
    };
    let file = std::fs::File::open(VMLINUX).with_context(context)?;
    match Mapped::new(&file) {
        Ok(map) => resolve_from(map.bytes()),
        Err(e) => {
            log::debug!("{VMLINUX} cannot be mapped ({e}); reading it");
            let bytes = std::fs::read(VMLINUX).with_context(context)?;
            resolve_from(&bytes)
        }
    }
}

/// A read-only private mapping of a whole file, unmapped when dropped.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn new(file: &std::fs::File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a fresh private read-only mapping of an open file; no memory of ours is
        // touched, and the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives (unmapped only in
        // drop), and the kernel's BTF never changes while the system runs.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing borrows any more.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// [`Offsets`] from a BTF file's bytes (the contents of /sys/kernel/btf/vmlinux).
pub fn resolve_from(bytes: &[u8]) -> Result<Offsets> {
    use Expect::{Pointer, U16, U32, U64};
    let btf = Btf::parse(bytes)?;
    Ok(Offsets {
        sock_net: typed_offset(&btf, "sock", &["__sk_common", "skc_net", "net"], Pointer)?,
        net_inum: typed_offset(&btf, "net", &["ns", "inum"], U32)?,
        task_files: typed_offset(&btf, "task_struct", &["files"], Pointer)?,
        files_fdt: typed_offset(&btf, "files_struct", &["fdt"], Pointer)?,
        fdtable_fd: typed_offset(&btf, "fdtable", &["fd"], Pointer)?,
        fdtable_max_fds: typed_offset(&btf, "fdtable", &["max_fds"], U32)?,
        file_private_data: typed_offset(&btf, "file", &["private_data"], Pointer)?,
        socket_sk: typed_offset(&btf, "socket", &["sk"], Pointer)?,
        sock_protocol: typed_offset(&btf, "sock", &["sk_protocol"], U16)?,
        sock_type: typed_offset(&btf, "sock", &["sk_type"], U16)?,
        sock_flags: typed_offset(&btf, "sock", &["__sk_common", "skc_flags"], U64)?,
        sock_dead_bit: flag_bit(&btf, "SOCK_DEAD")?,
        sock_done_bit: flag_bit(&btf, "SOCK_DONE")?,
    })
}

/// The bit number of `flag` in `sk->sk_flags`: its value in `enum sock_flags` (the kernel
/// tests it with `test_bit(flag, &sk->sk_flags)`), which must fit the 64-bit word read.
fn flag_bit(btf: &Btf<'_>, flag: &str) -> Result<u32> {
    let value = btf.enum_value("sock_flags", flag)?;
    match u32::try_from(value) {
        Ok(bit) if bit < 64 => Ok(bit),
        _ => bail!("kernel BTF: enum sock_flags {flag} is {value}, not a bit of a 64-bit word"),
    }
}

/// Byte offset of the member at `path` (one name per nesting level, e.g. `["__sk_common",
/// "skc_net", "net"]`) from the start of `struct struct_name`. Anonymous struct/union members are
/// looked through as C does, and typedefs/const/volatile/restrict/type tags are followed to
/// reach each level's struct. Bitfields are refused.
pub fn member_offset(btf: &Btf<'_>, struct_name: &str, path: &[&str]) -> Result<u32> {
    Ok(btf.member(struct_name, path)?.offset)
}

/// What the kernel program will read at an offset, checked so that a kernel where the member
/// changed type fails here instead of making the program read garbage.
#[derive(Clone, Copy)]
enum Expect {
    Pointer,
    U16,
    U32,
    /// An 8-byte integer (`unsigned long` on a 64-bit kernel).
    U64,
}

fn typed_offset(btf: &Btf<'_>, struct_name: &str, path: &[&str], expect: Expect) -> Result<u32> {
    let member = btf.member(struct_name, path)?;
    let ty = btf.strip(member.type_id)?;
    let ok = match expect {
        Expect::Pointer => ty.kind() == KIND_PTR,
        Expect::U16 => matches!(ty.kind(), KIND_INT | KIND_ENUM) && ty.size_or_type == 2,
        Expect::U32 => matches!(ty.kind(), KIND_INT | KIND_ENUM) && ty.size_or_type == 4,
        Expect::U64 => ty.kind() == KIND_INT && ty.size_or_type == 8,
    };
    if !ok {
        let wanted = match expect {
            Expect::Pointer => "a pointer",
            Expect::U16 => "a 2-byte integer",
            Expect::U32 => "a 4-byte integer",
            Expect::U64 => "an 8-byte integer",
        };
        bail!(
            "kernel BTF: struct {struct_name} member {} is {} (size/type {}), expected {wanted}",
            path.join("."),
            kind_name(ty.kind()),
            ty.size_or_type
        );
    }
    Ok(member.offset)
}

const MAGIC: u16 = 0xeb9f;
/// The header up to `str_len`; newer headers may be longer (`hdr_len` says).
const HEADER_LEN: usize = 24;
/// A header this long also has the layout section's offset and length.
const HEADER_WITH_LAYOUT_LEN: usize = 32;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;
/// `struct btf_member`: name_off, type, offset.
const MEMBER_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// How deep typedef/modifier chains and anonymous members may nest. The kernel's are a few
/// levels; a corrupt file could make them loop.
const MAX_DEPTH: usize = 32;
/// How many members one name search may visit, so that a corrupt file whose anonymous members
/// fan out exponentially ends with an error instead of running for hours. A real search visits
/// a few hundred.
const SEARCH_BUDGET: u32 = 1_000_000;

fn kind_name(kind: u32) -> &'static str {
    match kind {
        KIND_INT => "INT",
        KIND_PTR => "PTR",
        KIND_ARRAY => "ARRAY",
        KIND_STRUCT => "STRUCT",
        KIND_UNION => "UNION",
        KIND_ENUM => "ENUM",
        KIND_FWD => "FWD",
        KIND_TYPEDEF => "TYPEDEF",
        KIND_VOLATILE => "VOLATILE",
        KIND_CONST => "CONST",
        KIND_RESTRICT => "RESTRICT",
        KIND_FUNC => "FUNC",
        KIND_FUNC_PROTO => "FUNC_PROTO",
        KIND_VAR => "VAR",
        KIND_DATASEC => "DATASEC",
        KIND_FLOAT => "FLOAT",
        KIND_DECL_TAG => "DECL_TAG",
        KIND_TYPE_TAG => "TYPE_TAG",
        KIND_ENUM64 => "ENUM64",
        _ => "an unknown kind",
    }
}

/// The file is in the byte order of the kernel that wrote it; the magic tells which.
#[derive(Clone, Copy, Debug)]
enum Endian {
    Little,
    Big,
}

fn u32_at(bytes: &[u8], at: usize, endian: Endian) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(match endian {
        Endian::Little => u32::from_le_bytes(word),
        Endian::Big => u32::from_be_bytes(word),
    })
}

/// `base + index * size`, or None on overflow (only possible with a corrupt vlen on 32-bit).
fn element(base: usize, index: usize, size: usize) -> Option<usize> {
    base.checked_add(index.checked_mul(size)?)
}

/// A parsed BTF file: its type and string sections plus where each type's record starts.
pub struct Btf<'a> {
    endian: Endian,
    types: &'a [u8],
    strings: &'a [u8],
    /// Start of each type's record in `types`; index 0 is type id 1 (id 0 is `void`).
    starts: Vec<u32>,
    /// The ids of the structs (a tenth of the types), so a lookup by name scans only those.
    structs: Vec<u32>,
}

/// One `struct btf_type` record.
#[derive(Clone, Copy, Debug)]
struct Type {
    name_off: u32,
    info: u32,
    /// `size` for INT, ENUM, STRUCT, UNION, DATASEC, ENUM64; the referred-to type id for the rest.
    size_or_type: u32,
    /// Where the kind-specific data after the record starts in the type section.
    data: usize,
}

impl Type {
    fn kind(&self) -> u32 {
        // Bits 24-30; kernels before the layout section used 24-28 and kept 29-30 zero.
        (self.info >> 24) & 0x7f
    }

    fn vlen(&self) -> usize {
        // Bits 0-23; older kernels used 0-15 and kept 16-23 zero.
        (self.info & 0x00ff_ffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

/// A member found by name, relative to the struct it was searched in.
#[derive(Clone, Copy, Debug)]
struct Found {
    bits: u64,
    type_id: u32,
    bitfield: bool,
}

/// A resolved member path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Member {
    offset: u32,
    type_id: u32,
}

impl<'a> Btf<'a> {
    /// Checks the header and indexes the type section; strings are read when looked up.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let endian = match bytes.get(..2) {
            Some(m) if m == MAGIC.to_le_bytes() => Endian::Little,
            Some(m) if m == MAGIC.to_be_bytes() => Endian::Big,
            _ => bail!("kernel BTF: no BTF magic at the start of the file"),
        };
        let version = bytes
            .get(2)
            .copied()
            .context("kernel BTF: header truncated")?;
        if version != 1 {
            bail!("kernel BTF: version {version}, only version 1 is known");
        }
        let field = |index: usize| {
            u32_at(bytes, 4 + 4 * index, endian).context("kernel BTF: header truncated")
        };
        let hdr_len = field(0)? as usize;
        if hdr_len < HEADER_LEN {
            bail!(
                "kernel BTF: header length {hdr_len}, shorter than the {HEADER_LEN} bytes every version has"
            );
        }
        // Section offsets count from the end of the header.
        let body = bytes.get(hdr_len..).with_context(|| {
            format!("kernel BTF: header length {hdr_len} is past the end of the file")
        })?;
        let section = |off: u32, len: u32, what: &str| {
            (off as usize)
                .checked_add(len as usize)
                .and_then(|end| body.get(off as usize..end))
                .with_context(|| {
                    format!("kernel BTF: {what} section ({len} bytes at {off}) runs past the end of the file")
                })
        };
        let types = section(field(1)?, field(2)?, "type")?;
        let strings = section(field(3)?, field(4)?, "string")?;
        // Newer kernels describe each kind's record size in a layout section, so that a parser
        // can skip kinds newer than itself. Only consulted for kinds this file doesn't know.
        let layout = if hdr_len >= HEADER_WITH_LAYOUT_LEN {
            let (off, len) = (field(5)?, field(6)?);
            (len > 0).then(|| section(off, len, "layout")).transpose()?
        } else {
            None
        };

        let mut starts = Vec::with_capacity(types.len() / 24);
        let mut structs = Vec::new();
        let mut at = 0usize;
        while at < types.len() {
            // Fits: each type takes at least 12 bytes of a section whose length is a u32.
            let id = starts.len() as u32 + 1;
            let info = u32_at(types, at + 4, endian)
                .with_context(|| format!("kernel BTF: type {id} truncated"))?;
            let head = Type {
                name_off: 0,
                info,
                size_or_type: 0,
                data: 0,
            };
            let extra = extra_len(head.kind(), head.vlen(), layout).with_context(|| {
                format!(
                    "kernel BTF: type {id} has kind {}, unknown here and not described by a layout section",
                    head.kind()
                )
            })?;
            let end = (at + TYPE_LEN)
                .checked_add(extra)
                .filter(|&end| end <= types.len())
                .with_context(|| format!("kernel BTF: type {id} truncated"))?;
            // `at` < types.len(), which came from a u32 length.
            starts.push(u32::try_from(at).context("kernel BTF: type section too large")?);
            if head.kind() == KIND_STRUCT {
                structs.push(id);
            }
            at = end;
        }
        Ok(Self {
            endian,
            types,
            strings,
            starts,
            structs,
        })
    }

    fn ty(&self, id: u32) -> Result<Type> {
        let at = id
            .checked_sub(1)
            .and_then(|index| self.starts.get(index as usize))
            .copied()
            .with_context(|| format!("kernel BTF: type id {id} out of range"))?
            as usize;
        let word = |index: usize| {
            u32_at(self.types, at + 4 * index, self.endian)
                .with_context(|| format!("kernel BTF: type {id} truncated"))
        };
        Ok(Type {
            name_off: word(0)?,
            info: word(1)?,
            size_or_type: word(2)?,
            data: at + TYPE_LEN,
        })
    }

    /// Whether the string at `off` is exactly `want`. An offset outside the string section
    /// matches nothing (a corrupt name then reads as "not found").
    fn name_is(&self, off: u32, want: &[u8]) -> bool {
        self.strings
            .get(off as usize..)
            .is_some_and(|rest| rest.starts_with(want) && rest.get(want.len()) == Some(&0))
    }

    fn is_anonymous(&self, off: u32) -> bool {
        off == 0 || self.name_is(off, b"")
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn strip(&self, id: u32) -> Result<Type> {
        let mut id = id;
        for _ in 0..MAX_DEPTH {
            let ty = self.ty(id)?;
            match ty.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok(ty),
            }
        }
        bail!("kernel BTF: typedefs and qualifiers nested more than {MAX_DEPTH} deep at type {id}")
    }

    /// The ids of every struct (not forward declaration) named `name`.
    fn structs_named(&self, name: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for &id in &self.structs {
            if self.name_is(self.ty(id)?.name_off, name.as_bytes()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The member named `want` of struct/union `outer`, directly or inside its anonymous
    /// struct/union members (which is how C names them too).
    fn find_member(
        &self,
        outer: Type,
        want: &[u8],
        depth: usize,
        budget: &mut u32,
    ) -> Result<Option<Found>> {
        for index in 0..outer.vlen() {
            *budget = budget
                .checked_sub(1)
                .context("kernel BTF: member search visited too many members (a loop?)")?;
            let at = element(outer.data, index, MEMBER_LEN)
                .context("kernel BTF: member out of range")?;
            let word = |i: usize| {
                u32_at(self.types, at + 4 * i, self.endian).context("kernel BTF: member truncated")
            };
            let (name_off, type_id, raw) = (word(0)?, word(1)?, word(2)?);
            // With kind_flag set, the top 8 bits hold the bitfield size (0: not a bitfield)
            // and the rest the bit offset; without it the whole word is the bit offset, and a
            // bitfield shows in its INT type instead.
            let (bits, bitfield_size) = if outer.kind_flag() {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            if self.name_is(name_off, want) {
                let bitfield =
                    bitfield_size != 0 || (!outer.kind_flag() && self.is_int_bitfield(type_id)?);
                return Ok(Some(Found {
                    bits: u64::from(bits),
                    type_id,
                    bitfield,
                }));
            }
            if self.is_anonymous(name_off) {
                let inner = self.strip(type_id)?;
                if matches!(inner.kind(), KIND_STRUCT | KIND_UNION) {
                    if depth >= MAX_DEPTH {
                        bail!("kernel BTF: anonymous members nested more than {MAX_DEPTH} deep");
                    }
                    if let Some(found) = self.find_member(inner, want, depth + 1, budget)? {
                        return Ok(Some(Found {
                            bits: u64::from(bits) + found.bits,
                            ..found
                        }));
                    }
                }
            }
        }
        Ok(None)
    }

    /// An old-style (kind_flag unset) bitfield: its INT type is narrower than its size, or
    /// starts at a bit offset.
    fn is_int_bitfield(&self, type_id: u32) -> Result<bool> {
        let ty = self.strip(type_id)?;
        if ty.kind() != KIND_INT {
            return Ok(false);
        }
        let encoding =
            u32_at(self.types, ty.data, self.endian).context("kernel BTF: INT type truncated")?;
        let (offset, nr_bits) = ((encoding >> 16) & 0xff, encoding & 0xff);
        Ok(offset != 0 || u64::from(nr_bits) != u64::from(ty.size_or_type) * 8)
    }

    /// The value of enumerator `name` in `enum enum_name` (ENUM or ENUM64). Enums of that name
    /// that lack it are passed over; two that have it must agree.
    pub fn enum_value(&self, enum_name: &str, name: &str) -> Result<u64> {
        let mut found: Option<u64> = None;
        let mut named = false;
        for index in 0..self.starts.len() {
            // Fits: `starts` holds one entry per type of a section whose length is a u32.
            let id = index as u32 + 1;
            let ty = self.ty(id)?;
            let per_value = match ty.kind() {
                KIND_ENUM => 8,
                KIND_ENUM64 => 12,
                _ => continue,
            };
            if !self.name_is(ty.name_off, enum_name.as_bytes()) {
                continue;
            }
            named = true;
            for value_index in 0..ty.vlen() {
                let at = element(ty.data, value_index, per_value)
                    .context("kernel BTF: enumerator out of range")?;
                let word = |i: usize| {
                    u32_at(self.types, at + 4 * i, self.endian)
                        .context("kernel BTF: enumerator truncated")
                };
                if !self.name_is(word(0)?, name.as_bytes()) {
                    continue;
                }
                // An ENUM's value is 32 bits (signed or not, by kind_flag); an ENUM64's two
                // halves, low first. Only small non-negative values are used here.
                let value = if per_value == 8 {
                    u64::from(word(1)?)
                } else {
                    u64::from(word(2)?) << 32 | u64::from(word(1)?)
                };
                match found {
                    Some(previous) if previous != value => bail!(
                        "kernel BTF: two enums named {enum_name} disagree on the value of {name}"
                    ),
                    _ => found = Some(value),
                }
            }
        }
        match (found, named) {
            (Some(value), _) => Ok(value),
            (None, true) => bail!("kernel BTF: enum {enum_name} has no value {name}"),
            (None, false) => bail!("kernel BTF: no enum {enum_name}"),
        }
    }

    fn member(&self, struct_name: &str, path: &[&str]) -> Result<Member> {
        let dotted = path.join(".");
        if path.is_empty() || path.iter().any(|name| name.is_empty()) {
            bail!("kernel BTF: bad member path {dotted:?} for struct {struct_name}");
        }
        let candidates = self.structs_named(struct_name)?;
        // A kernel may have unrelated structs of the same name; the one with the path is ours.
        // Two that both have it but disagree would make any answer a guess.
        let mut found: Option<Member> = None;
        let mut first_error = None;
        for &id in &candidates {
            match self.walk(id, struct_name, path, &dotted) {
                Ok(member) => match found {
                    Some(previous) if previous.offset != member.offset => bail!(
                        "kernel BTF: {} structs named {struct_name} disagree on the offset of {dotted}",
                        candidates.len()
                    ),
                    Some(_) => {}
                    None => found = Some(member),
                },
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match (found, first_error) {
            (Some(member), _) => Ok(member),
            (None, Some(error)) => Err(error),
            (None, None) => bail!("kernel BTF: no struct {struct_name}"),
        }
    }

    fn walk(
        &self,
        struct_id: u32,
        struct_name: &str,
        path: &[&str],
        dotted: &str,
    ) -> Result<Member> {
        let mut outer = self.ty(struct_id)?;
        let mut bits = 0u64;
        let mut type_id = struct_id;
        for (level, name) in path.iter().enumerate() {
            let so_far = || path.get(..level).unwrap_or_default().join(".");
            if level > 0 {
                outer = self.strip(type_id)?;
                if !matches!(outer.kind(), KIND_STRUCT | KIND_UNION) {
                    bail!(
                        "kernel BTF: struct {struct_name} member {} is {}, not a struct or union, so it has no member {name}",
                        so_far(),
                        kind_name(outer.kind())
                    );
                }
            }
            let mut budget = SEARCH_BUDGET;
            let found = self
                .find_member(outer, name.as_bytes(), 0, &mut budget)?
                .with_context(|| {
                    format!("kernel BTF: struct {struct_name} has no member {dotted}")
                })?;
            if found.bitfield {
                bail!(
                    "kernel BTF: struct {struct_name} member {} is a bitfield, which the kernel program cannot read by offset",
                    path.get(..=level).unwrap_or_default().join(".")
                );
            }
            bits += found.bits;
            type_id = found.type_id;
        }
        if !bits.is_multiple_of(8) {
            bail!(
                "kernel BTF: struct {struct_name} member {dotted} is not byte-aligned (bit {bits})"
            );
        }
        let offset = u32::try_from(bits / 8).with_context(|| {
            format!("kernel BTF: struct {struct_name} member {dotted} offset too large")
        })?;
        Ok(Member { offset, type_id })
    }
}

/// Bytes of kind-specific data after a type's record (include/uapi/linux/btf.h); for kinds
/// newer than this file, the layout section's `info_sz + vlen * elem_sz`.
fn extra_len(kind: u32, vlen: usize, layout: Option<&[u8]>) -> Option<usize> {
    let (fixed, per_element) = match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => (4, 0),
        KIND_ARRAY => (12, 0),
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => (0, 12),
        KIND_ENUM | KIND_FUNC_PROTO => (0, 8),
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => (0, 0),
        // Kind 0 is "unknown" and never valid in a file.
        0 => return None,
        // `struct btf_layout` per kind: u8 info_sz, u8 elem_sz, u16 flags.
        _ => {
            let entry =
                layout?.get(element(0, kind as usize, 4)?..element(4, kind as usize, 4)?)?;
            (usize::from(*entry.first()?), usize::from(*entry.get(1)?))
        }
    };
    element(fixed, vlen, per_element)
}

/// A struct member as bpftool prints it: name, type id, bit offset, bitfield size.
#[cfg(test)]
type MemberRow = (String, u32, u32, u32);

#[cfg(test)]
impl Btf<'_> {
    fn type_count(&self) -> usize {
        self.starts.len()
    }

    fn name(&self, off: u32) -> String {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        String::from_utf8_lossy(&rest[..end]).into_owned()
    }

    /// Kind name, name, and for structs and unions each member's (name, type, bit offset,
    /// bitfield size), as bpftool prints them.
    fn describe(&self, id: u32) -> (&'static str, String, Vec<MemberRow>) {
        let ty = self.ty(id).unwrap();
        let mut members = Vec::new();
        if matches!(ty.kind(), KIND_STRUCT | KIND_UNION) {
            for index in 0..ty.vlen() {
                let at = ty.data + index * MEMBER_LEN;
                let word = |i: usize| u32_at(self.types, at + 4 * i, self.endian).unwrap();
                let raw = word(2);
                let (bits, size) = if ty.kind_flag() {
                    (raw & 0x00ff_ffff, raw >> 24)
                } else {
                    (raw, 0)
                };
                members.push((self.name(word(0)), word(1), bits, size));
            }
        }
        (kind_name(ty.kind()), self.name(ty.name_off), members)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, process::Command};

    use proptest::prelude::*;

    use super::*;

    /// Writes BTF files by hand: each method appends one type and returns its id.
    struct Builder {
        big_endian: bool,
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new(big_endian: bool) -> Self {
            Self {
                big_endian,
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn word(&self, value: u32) -> [u8; 4] {
            if self.big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            }
        }

        fn put(&mut self, value: u32) {
            let bytes = self.word(value);
            self.types.extend_from_slice(&bytes);
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn record(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
        ) -> u32 {
            let name_off = self.string(name);
            self.put(name_off);
            self.put(u32::from(kind_flag) << 31 | kind << 24 | vlen);
            self.put(size_or_type);
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.int_bits(name, size, size * 8)
        }

        fn int_bits(&mut self, name: &str, size: u32, bits: u32) -> u32 {
            let id = self.record(name, KIND_INT, false, 0, size);
            self.put(bits);
            id
        }

        fn modifier(&mut self, kind: u32, name: &str, to: u32) -> u32 {
            self.record(name, kind, false, 0, to)
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.modifier(KIND_PTR, "", to)
        }

        /// Members are (name, type id, raw offset word: bits, or with `kind_flag` also the
        /// bitfield size in the top byte).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.record(name, kind, kind_flag, members.len() as u32, size);
            for &(member, ty, offset) in members {
                let off = self.string(member);
                self.put(off);
                self.put(ty);
                self.put(offset);
            }
            id
        }

        /// An ENUM (8 bytes a value) or ENUM64 (12: the value's low half, then the high one).
        fn enumeration(&mut self, kind: u32, name: &str, values: &[(&str, u64)]) -> u32 {
            let size = if kind == KIND_ENUM64 { 8 } else { 4 };
            let id = self.record(name, kind, false, values.len() as u32, size);
            for &(value_name, value) in values {
                let off = self.string(value_name);
                self.put(off);
                self.put(value as u32);
                if kind == KIND_ENUM64 {
                    self.put((value >> 32) as u32);
                }
            }
            id
        }

        fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_STRUCT, name, size, false, members)
        }

        fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(KIND_UNION, name, size, false, members)
        }

        fn finish(&self) -> Vec<u8> {
            self.finish_with_layout(None)
        }

        /// With `layout`, a 32-byte header and a layout section of (info_sz, elem_sz) per kind.
        fn finish_with_layout(&self, layout: Option<&[(u8, u8)]>) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&if self.big_endian {
                MAGIC.to_be_bytes()
            } else {
                MAGIC.to_le_bytes()
            });
            out.extend_from_slice(&[1, 0]);
            let hdr_len = if layout.is_some() { 32 } else { 24 };
            let type_len = self.types.len() as u32;
            let str_len = self.strings.len() as u32;
            let mut fields = vec![hdr_len, 0, type_len, type_len, str_len];
            let layout_bytes: Vec<u8> = layout
                .unwrap_or_default()
                .iter()
                .flat_map(|&(info, elem)| [info, elem, 0, 0])
                .collect();
            if layout.is_some() {
                fields.extend([type_len + str_len, layout_bytes.len() as u32]);
            }
            for field in fields {
                out.extend_from_slice(&self.word(field));
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out.extend_from_slice(&layout_bytes);
            out
        }
    }

    /// The structs `resolve_from` walks, laid out like the kernel's but with anonymous unions,
    /// typedefs, a kind_flag struct with a bitfield and a forward declaration on the way.
    fn kernel_like(big_endian: bool) -> Vec<u8> {
        let mut b = Builder::new(big_endian);
        let uint = b.int("unsigned int", 4);
        let u64_ = b.int("long long unsigned int", 8);
        let uchar = b.int("unsigned char", 1);
        // A forward declaration of the same name comes first and must be skipped.
        b.modifier(KIND_FWD, "net", 0);
        // ns_common: inum inside an anonymous struct inside an anonymous union, at 8 + 4.
        let inner = b.strukt("", 8, &[("pad", uint, 0), ("inum", uint, 32)]);
        let anon_union = b.union("", 8, &[("", inner, 0), ("other", u64_, 0)]);
        let ns_common = b.strukt(
            "ns_common",
            16,
            &[("ns_type", u64_, 0), ("", anon_union, 64)],
        );
        let net = b.strukt(
            "net",
            64,
            &[("passive", uint, 0), ("ns", ns_common, 40 * 8)],
        );
        let net_ptr = b.ptr(net);
        // possible_net_t: a typedef of an anonymous struct holding the pointer.
        let possible = b.strukt("", 8, &[("net", net_ptr, 0)]);
        let possible_t = b.modifier(KIND_TYPEDEF, "possible_net_t", possible);
        // skc_flags shares an anonymous union with another member, as in the kernel.
        let ulong = b.int("long unsigned int", 8);
        let flags_union = b.union("", 8, &[("skc_flags", ulong, 0), ("skc_listener", u64_, 0)]);
        // sock_common has bitfields, so kind_flag is set and offsets carry a size byte.
        let sock_common = b.composite(
            KIND_STRUCT,
            "sock_common",
            136,
            true,
            &[
                ("skc_reuse", uchar, 4 << 24 | 152),
                ("skc_net", possible_t, 384),
                ("", flags_union, 768),
            ],
        );
        // sk_protocol and sk_type are typedef'd u16s, as the kernel's are.
        let ushort = b.int("short unsigned int", 2);
        let u16_ = b.modifier(KIND_TYPEDEF, "u16", ushort);
        let sock = b.strukt(
            "sock",
            784,
            &[
                ("__sk_common", sock_common, 0),
                ("sk_protocol", u16_, 532 * 8),
                ("sk_type", u16_, 534 * 8),
            ],
        );
        let sock_ptr = b.ptr(sock);
        let void_ptr = b.ptr(0);
        let file = b.strukt(
            "file",
            184,
            &[("f_mode", uint, 0), ("private_data", void_ptr, 24 * 8)],
        );
        let file_ptr = b.ptr(file);
        let file_ptr_ptr = b.ptr(file_ptr);
        let fdtable = b.strukt(
            "fdtable",
            56,
            &[("max_fds", uint, 0), ("fd", file_ptr_ptr, 64)],
        );
        let fdtable_ptr = b.ptr(fdtable);
        let files = b.strukt(
            "files_struct",
            704,
            &[("count", uint, 0), ("fdt", fdtable_ptr, 256)],
        );
        let files_ptr = b.ptr(files);
        b.strukt(
            "task_struct",
            3264,
            &[("flags", uint, 0), ("files", files_ptr, 1824 * 8)],
        );
        b.strukt(
            "socket",
            128,
            &[("state", uint, 0), ("sk", sock_ptr, 24 * 8)],
        );
        b.enumeration(
            KIND_ENUM,
            "sock_flags",
            &[("SOCK_DEAD", 0), ("SOCK_DONE", 1), ("SOCK_URGINLINE", 2)],
        );
        b.finish()
    }

    const KERNEL_LIKE: Offsets = Offsets {
        sock_net: 48,
        net_inum: 52,
        task_files: 1824,
        files_fdt: 32,
        fdtable_fd: 8,
        fdtable_max_fds: 0,
        file_private_data: 24,
        socket_sk: 24,
        sock_protocol: 532,
        sock_type: 534,
        sock_flags: 96,
        sock_dead_bit: 0,
        sock_done_bit: 1,
    };

    #[test]
    fn resolves_kernel_like_structs_in_both_byte_orders() {
        assert_eq!(resolve_from(&kernel_like(false)).unwrap(), KERNEL_LIKE);
        assert_eq!(resolve_from(&kernel_like(true)).unwrap(), KERNEL_LIKE);
    }

    #[test]
    fn looks_through_anonymous_members_typedefs_and_qualifiers() {
        let mut b = Builder::new(false);
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let inner = b.strukt("", 8, &[("w", int, 0), ("x", int, 32)]);
        let anon = b.union("", 8, &[("", inner, 0), ("y", long, 0)]);
        let holder = b.strukt("", 16, &[("pad", long, 0), ("net", long, 64)]);
        let typedef = b.modifier(KIND_TYPEDEF, "holder_t", holder);
        let volatile = b.modifier(KIND_VOLATILE, "", typedef);
        let konst = b.modifier(KIND_CONST, "", volatile);
        b.strukt(
            "outer",
            48,
            &[("a", int, 0), ("", anon, 64), ("p", konst, 256)],
        );
        let bytes = b.finish();
        let btf = Btf::parse(&bytes).unwrap();
        assert_eq!(member_offset(&btf, "outer", &["a"]).unwrap(), 0);
        assert_eq!(member_offset(&btf, "outer", &["x"]).unwrap(), 12);
        assert_eq!(member_offset(&btf, "outer", &["y"]).unwrap(), 8);
        assert_eq!(member_offset(&btf, "outer", &["p", "net"]).unwrap(), 40);
        // An anonymous member has no name to put in a path.
        assert!(member_offset(&btf, "outer", &[""]).is_err());
        assert!(member_offset(&btf, "outer", &[]).is_err());
    }

    #[test]
    fn errors_name_the_struct_and_the_member() {
        let bytes = kernel_like(false);
        let btf = Btf::parse(&bytes).unwrap();
        let error = |s: &str, path: &[&str]| member_offset(&btf, s, path).unwrap_err().to_string();
        assert_eq!(
            error("net", &["ns", "inumm"]),
            "kernel BTF: struct net has no member ns.inumm"
        );
        assert_eq!(
            error("net", &["nss", "inum"]),
            "kernel BTF: struct net has no member nss.inum"
        );
        assert_eq!(error("nett", &["ns"]), "kernel BTF: no struct nett");
        assert_eq!(
            error("task_struct", &["files", "fdt"]),
            "kernel BTF: struct task_struct member files is PTR, not a struct or union, so it has no member fdt"
        );
        // The forward declaration does not count as a struct.
        assert_eq!(member_offset(&btf, "net", &["ns", "inum"]).unwrap(), 52);
    }

    #[test]
    fn bitfields_are_refused_in_both_encodings() {
        let bytes = kernel_like(false);
        let btf = Btf::parse(&bytes).unwrap();
        let error = member_offset(&btf, "sock", &["__sk_common", "skc_reuse"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "kernel BTF: struct sock member __sk_common.skc_reuse is a bitfield, which the kernel program cannot read by offset"
        );

        // Without kind_flag, a bitfield's INT type is narrower than its size.
        let mut b = Builder::new(false);
        let four_bits = b.int_bits("unsigned int", 4, 4);
        let int = b.int("int", 4);
        b.strukt("flags", 8, &[("narrow", four_bits, 0), ("whole", int, 32)]);
        let bytes = b.finish();
        let btf = Btf::parse(&bytes).unwrap();
        assert!(
            member_offset(&btf, "flags", &["narrow"])
                .unwrap_err()
                .to_string()
                .contains("bitfield")
        );
        assert_eq!(member_offset(&btf, "flags", &["whole"]).unwrap(), 4);
    }

    #[test]
    fn resolve_checks_what_the_program_will_read() {
        let mut b = Builder::new(false);
        let int = b.int("int", 4);
        b.strukt("socket", 128, &[("sk", int, 24 * 8)]);
        let bytes = b.finish();
        let btf = Btf::parse(&bytes).unwrap();
        assert_eq!(
            typed_offset(&btf, "socket", &["sk"], Expect::Pointer)
                .unwrap_err()
                .to_string(),
            "kernel BTF: struct socket member sk is INT (size/type 4), expected a pointer"
        );
        assert_eq!(
            typed_offset(&btf, "socket", &["sk"], Expect::U32).unwrap(),
            24
        );
        assert_eq!(
            typed_offset(&btf, "socket", &["sk"], Expect::U16)
                .unwrap_err()
                .to_string(),
            "kernel BTF: struct socket member sk is INT (size/type 4), expected a 2-byte integer"
        );
    }

    #[test]
    fn same_named_structs_must_agree() {
        let mut b = Builder::new(false);
        let int = b.int("int", 4);
        b.strukt("file", 8, &[("other", int, 0)]);
        b.strukt("file", 32, &[("private_data", int, 64)]);
        let bytes = b.finish();
        let btf = Btf::parse(&bytes).unwrap();
        // Only the second has the member: it is the one.
        assert_eq!(member_offset(&btf, "file", &["private_data"]).unwrap(), 8);
        b.strukt("file", 32, &[("private_data", int, 128)]);
        let bytes = b.finish();
        let btf = Btf::parse(&bytes).unwrap();
        assert!(
            member_offset(&btf, "file", &["private_data"])
                .unwrap_err()
                .to_string()
                .contains("disagree")
        );
    }

    #[test]
    fn unknown_kinds_are_skipped_only_with_a_layout_section() {
        let mut b = Builder::new(false);
        let int = b.int("int", 4);
        // Kind 25 with 8 bytes of info and 2 elements of 4 bytes each.
        b.record("future", 25, false, 2, 0);
        b.types.extend_from_slice(&[0xaa; 16]);
        b.strukt("file", 32, &[("private_data", int, 64)]);
        let error = Btf::parse(&b.finish()).err().unwrap().to_string();
        assert_eq!(
            error,
            "kernel BTF: type 2 has kind 25, unknown here and not described by a layout section"
        );
        let mut layout = vec![(0, 0); 26];
        layout[25] = (8, 4);
        // A known kind's layout entry is not needed, nor consulted.
        layout[KIND_STRUCT as usize] = (99, 99);
        let bytes = b.finish_with_layout(Some(&layout));
        let btf = Btf::parse(&bytes).unwrap();
        assert_eq!(btf.type_count(), 3);
        assert_eq!(member_offset(&btf, "file", &["private_data"]).unwrap(), 8);
    }

    #[test]
    fn loops_in_a_corrupt_file_end_with_an_error() {
        let mut b = Builder::new(false);
        // A typedef of itself.
        let looping = b.next_id;
        b.modifier(KIND_TYPEDEF, "loop_t", looping);
        b.strukt("a", 8, &[("x", looping, 0)]);
        // A struct whose anonymous member is itself, twice: 2^32 paths without the limits.
        let own = b.next_id;
        b.strukt("b", 8, &[("", own, 0), ("", own, 0)]);
        let bytes = b.finish();
        let btf = Btf::parse(&bytes).unwrap();
        assert!(
            member_offset(&btf, "a", &["x", "y"])
                .unwrap_err()
                .to_string()
                .contains("nested")
        );
        assert!(member_offset(&btf, "b", &["missing"]).is_err());
    }

    #[test]
    fn truncated_and_garbage_files_fail_cleanly() {
        let bytes = kernel_like(false);
        for len in 0..bytes.len() {
            assert!(
                resolve_from(&bytes[..len]).is_err(),
                "truncated to {len} bytes"
            );
        }
        let error = |bytes: &[u8]| resolve_from(bytes).unwrap_err().to_string();
        assert_eq!(
            error(b""),
            "kernel BTF: no BTF magic at the start of the file"
        );
        assert_eq!(
            error(b"\x7fELF\x02\x01\x01"),
            "kernel BTF: no BTF magic at the start of the file"
        );
        let mut wrong_version = bytes.clone();
        wrong_version[2] = 2;
        assert_eq!(
            error(&wrong_version),
            "kernel BTF: version 2, only version 1 is known"
        );
        let mut short_header = bytes.clone();
        short_header[4] = 8;
        assert!(error(&short_header).contains("shorter than"));
        let mut long_types = bytes.clone();
        long_types[12] = 0xff;
        long_types[13] = 0xff;
        assert!(error(&long_types).contains("type section"));
        let mut bad_id = bytes.clone();
        // The type of "inum", the second member of the first struct (type 5, after three INTs
        // and a FWD), made a type id past the end.
        let inum_type = 24 + 3 * 16 + 12 + 12 + 12 + 4;
        bad_id[inum_type..inum_type + 4].copy_from_slice(&0xffffu32.to_le_bytes());
        assert_eq!(error(&bad_id), "kernel BTF: type id 65535 out of range");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = resolve_from(&bytes);
        }

        #[test]
        fn corrupted_files_never_panic(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            big_endian in any::<bool>(),
        ) {
            let mut bytes = kernel_like(big_endian);
            for (index, value) in flips {
                let at = index.index(bytes.len());
                bytes[at] = value;
            }
            let _ = resolve_from(&bytes);
        }
    }

    /// The running kernel's BTF, or None (with a loud note) where there is none.
    fn vmlinux() -> Option<Vec<u8>> {
        match std::fs::read(VMLINUX) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                eprintln!("SKIPPING: cannot read {VMLINUX}: {error}");
                None
            }
        }
    }

    /// bpftool's JSON dump of the kernel's BTF, or None (with a loud note) without bpftool.
    fn bpftool_types() -> Option<Vec<serde_json::Value>> {
        for bpftool in ["bpftool", "/usr/sbin/bpftool"] {
            let Ok(output) = Command::new(bpftool)
                .args(["-j", "btf", "dump", "file", VMLINUX, "format", "raw"])
                .output()
            else {
                continue;
            };
            assert!(
                output.status.success(),
                "{bpftool}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let mut dump: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            return Some(dump["types"].take().as_array().unwrap().clone());
        }
        eprintln!("SKIPPING the comparison with bpftool: no bpftool in PATH or /usr/sbin");
        None
    }

    /// An independent walk over bpftool's output, to check ours against.
    fn bpftool_offset(
        types: &HashMap<u64, &serde_json::Value>,
        struct_name: &str,
        path: &[&str],
    ) -> u64 {
        fn strip<'v>(
            types: &HashMap<u64, &'v serde_json::Value>,
            mut id: u64,
        ) -> &'v serde_json::Value {
            loop {
                let ty = types[&id];
                match ty["kind"].as_str().unwrap() {
                    "TYPEDEF" | "CONST" | "VOLATILE" | "RESTRICT" | "TYPE_TAG" => {
                        id = ty["type_id"].as_u64().unwrap();
                    }
                    _ => return ty,
                }
            }
        }
        fn find(
            types: &HashMap<u64, &serde_json::Value>,
            ty: &serde_json::Value,
            name: &str,
        ) -> Option<(u64, u64)> {
            for member in ty["members"].as_array().unwrap() {
                let (bits, type_id) = (
                    member["bits_offset"].as_u64().unwrap(),
                    member["type_id"].as_u64().unwrap(),
                );
                if member["name"] == name {
                    return Some((bits, type_id));
                }
                let inner = strip(types, type_id);
                if member["name"] == "(anon)"
                    && inner.get("members").is_some()
                    && let Some((more, id)) = find(types, inner, name)
                {
                    return Some((bits + more, id));
                }
            }
            None
        }
        let mut ty = *types
            .values()
            .find(|t| t["kind"] == "STRUCT" && t["name"] == struct_name)
            .unwrap();
        let mut bits = 0;
        for name in path {
            let (more, id) = find(types, ty, name).unwrap();
            bits += more;
            ty = strip(types, id);
        }
        assert_eq!(bits % 8, 0);
        bits / 8
    }

    /// The value of `name` in bpftool's dump of `enum enum_name`.
    fn bpftool_enum_value(types: &[serde_json::Value], enum_name: &str, name: &str) -> u64 {
        types
            .iter()
            .filter(|t| matches!(t["kind"].as_str(), Some("ENUM" | "ENUM64")))
            .filter(|t| t["name"] == enum_name)
            .flat_map(|t| t["values"].as_array().unwrap())
            .find(|v| v["name"] == name)
            .and_then(|v| v["val"].as_u64())
            .unwrap_or_else(|| panic!("enum {enum_name} value {name} in bpftool's dump"))
    }

    #[test]
    fn enum_values_are_found_in_enum_and_enum64_and_must_agree() {
        let mut b = Builder::new(false);
        b.enumeration(KIND_ENUM, "other", &[("SOCK_DONE", 7)]);
        b.enumeration(
            KIND_ENUM64,
            "sock_flags",
            &[("SOCK_DEAD", 0), ("SOCK_DONE", 1)],
        );
        b.enumeration(KIND_ENUM, "sock_flags", &[("SOCK_DONE", 1), ("BIG", 70)]);
        let bytes = b.finish();
        let btf = Btf::parse(&bytes).unwrap();
        assert_eq!(btf.enum_value("sock_flags", "SOCK_DONE").unwrap(), 1);
        assert_eq!(btf.enum_value("sock_flags", "SOCK_DEAD").unwrap(), 0);
        assert_eq!(
            btf.enum_value("sock_flags", "SOCK_NOPE")
                .unwrap_err()
                .to_string(),
            "kernel BTF: enum sock_flags has no value SOCK_NOPE"
        );
        assert_eq!(
            btf.enum_value("nope", "SOCK_DONE").unwrap_err().to_string(),
            "kernel BTF: no enum nope"
        );
        assert_eq!(
            flag_bit(&btf, "BIG").unwrap_err().to_string(),
            "kernel BTF: enum sock_flags BIG is 70, not a bit of a 64-bit word"
        );
        b.enumeration(KIND_ENUM, "sock_flags", &[("SOCK_DONE", 2)]);
        let bytes = b.finish();
        let btf = Btf::parse(&bytes).unwrap();
        assert!(
            btf.enum_value("sock_flags", "SOCK_DONE")
                .unwrap_err()
                .to_string()
                .contains("disagree")
        );
    }

    #[test]
    fn running_kernel_matches_bpftool() {
        let Some(bytes) = vmlinux() else { return };
        let offsets = resolve_from(&bytes).unwrap();
        eprintln!("{offsets:#?}");
        // Plausible for any 64-bit kernel: __sk_common is the first member of struct sock.
        assert!(
            offsets.sock_net > 0 && offsets.sock_net < 136,
            "{offsets:?}"
        );
        assert_eq!(offsets.sock_net % 8, 0);

        let Some(types) = bpftool_types() else { return };
        let btf = Btf::parse(&bytes).unwrap();
        assert_eq!(btf.type_count(), types.len());
        // Every type's kind and name, and every struct/union member, as bpftool reads them.
        for ty in &types {
            let id = ty["id"].as_u64().unwrap();
            let (kind, name, members) = btf.describe(id as u32);
            assert_eq!(ty["kind"], kind, "type {id}");
            let name = if name.is_empty() {
                "(anon)".to_string()
            } else {
                name
            };
            assert_eq!(ty["name"], name.as_str(), "type {id}");
            if let Some(theirs) = ty.get("members") {
                let theirs: Vec<MemberRow> = theirs
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        let n = |key: &str| m.get(key).map_or(0, |v| v.as_u64().unwrap() as u32);
                        let name = m["name"].as_str().unwrap();
                        let name = if name == "(anon)" {
                            String::new()
                        } else {
                            name.to_string()
                        };
                        (name, n("type_id"), n("bits_offset"), n("bitfield_size"))
                    })
                    .collect();
                assert_eq!(theirs, members, "type {id}");
            }
        }

        let by_id: HashMap<u64, &serde_json::Value> = types
            .iter()
            .map(|t| (t["id"].as_u64().unwrap(), t))
            .collect();
        let expected = Offsets {
            sock_net: bpftool_offset(&by_id, "sock", &["__sk_common", "skc_net", "net"]) as u32,
            net_inum: bpftool_offset(&by_id, "net", &["ns", "inum"]) as u32,
            task_files: bpftool_offset(&by_id, "task_struct", &["files"]) as u32,
            files_fdt: bpftool_offset(&by_id, "files_struct", &["fdt"]) as u32,
            fdtable_fd: bpftool_offset(&by_id, "fdtable", &["fd"]) as u32,
            fdtable_max_fds: bpftool_offset(&by_id, "fdtable", &["max_fds"]) as u32,
            file_private_data: bpftool_offset(&by_id, "file", &["private_data"]) as u32,
            socket_sk: bpftool_offset(&by_id, "socket", &["sk"]) as u32,
            sock_protocol: bpftool_offset(&by_id, "sock", &["sk_protocol"]) as u32,
            sock_type: bpftool_offset(&by_id, "sock", &["sk_type"]) as u32,
            sock_flags: bpftool_offset(&by_id, "sock", &["__sk_common", "skc_flags"]) as u32,
            sock_dead_bit: bpftool_enum_value(&types, "sock_flags", "SOCK_DEAD") as u32,
            sock_done_bit: bpftool_enum_value(&types, "sock_flags", "SOCK_DONE") as u32,
        };
        assert_eq!(offsets, expected);
    }
}
