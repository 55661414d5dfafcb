//! `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+ for hash maps, 5.7+ for arrays): reads a whole map in a
//! few syscalls instead of two per entry (`get_next_key` + `lookup`), about six times faster
//! on a full flow map. aya has no batch operations, so this is the raw syscall behind a small
//! safe interface; callers fall back to aya's iteration on [`BatchError::Unsupported`].

use std::{
    io,
    marker::PhantomData,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

/// `bpf(2)` command number of `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's internal "operation not supported" (`ENOTSUPP`), which `bpf(2)` returns for a
/// map type without batch operations; not in libc because it is not a userspace errno.
const ENOTSUPP: i32 = 524;
/// Default buffer budget per call: keys and values of one chunk of entries.
const CHUNK_BYTES: usize = 1 << 20;
const MIN_CHUNK: usize = 64;
const MAX_CHUNK: usize = 16_384;

/// The `batch` member of `union bpf_attr`. The kernel reads only the bytes given (the rest of
/// its union is zeroed), and writes back `count`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The kernel (before 5.6) or this map type has no batch lookup: read entry by entry.
    #[error("BPF_MAP_LOOKUP_BATCH is not supported here: {0}")]
    Unsupported(io::Error),
    #[error("BPF_MAP_LOOKUP_BATCH failed: {0}")]
    Failed(io::Error),
}

/// How values are laid out: one per entry, or one per possible CPU (per-CPU maps), each CPU's
/// copy padded to 8 bytes as the kernel copies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Plain,
    PerCpu { cpus: usize },
}

/// Reads maps with keys `K` and values `V`, a chunk of entries per syscall.
#[derive(Debug, Clone, Copy)]
pub struct BatchReader<K, V> {
    layout: Layout,
    chunk: usize,
    _types: PhantomData<fn() -> (K, V)>,
}

/// The value(s) of one entry: one for a plain map, one per possible CPU for a per-CPU map.
pub struct Values<'a, V> {
    bytes: &'a [u8],
    stride: usize,
    _type: PhantomData<V>,
}

impl<V: Pod> Iterator for Values<'_, V> {
    type Item = V;

    fn next(&mut self) -> Option<V> {
        if self.bytes.len() < size_of::<V>() {
            return None;
        }
        // SAFETY: `bytes` holds at least size_of::<V>() bytes the kernel wrote for this value,
        // and V is Pod (any bit pattern is valid). The buffer is bytes, so read unaligned.
        let v = unsafe { self.bytes.as_ptr().cast::<V>().read_unaligned() };
        self.bytes = &self.bytes[self.stride.min(self.bytes.len())..];
        Some(v)
    }
}

impl<K: Pod, V: Pod> BatchReader<K, V> {
    pub fn new(layout: Layout) -> Self {
        let chunk = (CHUNK_BYTES / (size_of::<K>() + Self::value_bytes(layout)))
            .clamp(MIN_CHUNK, MAX_CHUNK);
        BatchReader { layout, chunk, _types: PhantomData }
    }

    /// Entries asked for per syscall (tests use small chunks to cross many batch boundaries).
    pub fn with_chunk(mut self, entries: usize) -> Self {
        self.chunk = entries.max(1);
        self
    }

    fn stride(layout: Layout) -> usize {
        match layout {
            Layout::Plain => size_of::<V>(),
            Layout::PerCpu { .. } => size_of::<V>().next_multiple_of(8),
        }
    }

    fn value_bytes(layout: Layout) -> usize {
        match layout {
            Layout::Plain => size_of::<V>(),
            Layout::PerCpu { cpus } => Self::stride(layout) * cpus.max(1),
        }
    }

    /// Calls `each` with every entry of the map behind `fd`; returns how many there were.
    ///
    /// Entries inserted or deleted meanwhile may or may not be seen, as with any read of a
    /// live map; a hash map is read bucket by bucket, so no entry is seen twice.
    pub fn for_each(
        &self,
        fd: BorrowedFd<'_>,
        mut each: impl FnMut(&K, Values<'_, V>),
    ) -> Result<usize, BatchError> {
        let (key_size, value_size) = (size_of::<K>(), Self::value_bytes(self.layout));
        let stride = Self::stride(self.layout);
        let mut chunk = self.chunk;
        let mut keys = vec![0u8; chunk * key_size];
        let mut values = vec![0u8; chunk * value_size];
        // The cursor is the kernel's: a bucket number (u32) for hash maps, the last key for
        // others. Room for either.
        let cursor_size = key_size.max(8);
        let (mut cursor_in, mut cursor_out) = (vec![0u8; cursor_size], vec![0u8; cursor_size]);
        let mut started = false;
        let mut total = 0;
        loop {
            let mut attr = BatchAttr {
                in_batch: if started { cursor_in.as_ptr() as u64 } else { 0 },
                out_batch: cursor_out.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: every pointer in `attr` points into a live buffer large enough for what
            // the kernel writes there: `count` keys and values, and a cursor of the map's key
            // size (or a u32 bucket number).
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    &mut attr as *mut BatchAttr,
                    size_of::<BatchAttr>() as u32,
                )
            };
            let err = (ret < 0).then(io::Error::last_os_error);
            let errno = err.as_ref().and_then(io::Error::raw_os_error);
            match errno {
                // ENOENT: the end of the map, with `count` last entries (possibly 0).
                None | Some(libc::ENOENT) => {
                    let n = (attr.count as usize).min(chunk);
                    for i in 0..n {
                        // SAFETY: the kernel wrote `n` keys of `key_size` bytes; K is Pod.
                        let key =
                            unsafe { keys.as_ptr().add(i * key_size).cast::<K>().read_unaligned() };
                        let bytes = &values[i * value_size..(i + 1) * value_size];
                        each(&key, Values { bytes, stride, _type: PhantomData });
                    }
                    total += n;
                    if errno.is_some() || n == 0 {
                        return Ok(total);
                    }
                    std::mem::swap(&mut cursor_in, &mut cursor_out);
                    started = true;
                }
                // A hash bucket holds more entries than the chunk: ask for more at once.
                Some(libc::ENOSPC) if attr.count == 0 && chunk < (1 << 20) => {
                    chunk *= 2;
                    keys.resize(chunk * key_size, 0);
                    values.resize(chunk * value_size, 0);
                }
                // Unknown command (before 5.6) or no batch operations for this map type.
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP | libc::ENOSYS) if !started => {
                    return Err(BatchError::Unsupported(
                        err.unwrap_or_else(|| io::Error::other("unsupported")),
                    ));
                }
                _ => {
                    return Err(BatchError::Failed(
                        err.unwrap_or_else(|| io::Error::other("no entries returned")),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_values_are_padded_to_8_bytes_per_cpu() {
        let r = BatchReader::<u32, [u8; 12]>::new(Layout::PerCpu { cpus: 3 });
        assert_eq!(BatchReader::<u32, [u8; 12]>::stride(r.layout), 16);
        assert_eq!(BatchReader::<u32, [u8; 12]>::value_bytes(r.layout), 48);
        assert_eq!(BatchReader::<u32, [u8; 12]>::value_bytes(Layout::Plain), 12);
    }

    #[test]
    fn values_iterate_per_cpu_copies_skipping_the_padding() {
        let mut bytes = Vec::new();
        for cpu in 0..3u32 {
            bytes.extend_from_slice(&(10 + cpu).to_ne_bytes());
            bytes.extend_from_slice(&[0xee; 4]);
        }
        let values: Vec<u32> =
            Values::<u32> { bytes: &bytes, stride: 8, _type: PhantomData }.collect();
        assert_eq!(values, vec![10, 11, 12]);
    }

    #[test]
    fn a_bad_fd_is_a_failure_not_an_unsupported_kernel() {
        // An fd that is not a map: EBADF (or EINVAL from an old kernel, which is "unsupported"
        // there too); never a panic and never a silent empty read.
        let file = std::fs::File::open("/dev/null").unwrap();
        let r = BatchReader::<u32, u64>::new(Layout::Plain)
            .for_each(std::os::fd::AsFd::as_fd(&file), |_, _| {});
        assert!(r.is_err(), "{r:?}");
    }
}
