//! Hygiene for the YAML files a user writes (the config and the policy), before serde sees
//! them: only a regular file of at most [`MAX_FILE_BYTES`] is read, and its YAML may not nest
//! deeper than [`MAX_DEPTH`] nor expand, through aliases, beyond [`MAX_EXPANDED_BYTES`] of text
//! or [`MAX_EXPANDED_NODES`] nodes. A careless admin (a FIFO or `/dev/zero` named as the
//! policy, a log file instead of the config) or a hostile file (an alias bomb) is refused with
//! a [`LocatedError`] instead of stalling the agent or filling its memory.

use std::{
    fmt,
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::Path,
};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::LocatedError;

/// Largest config or policy file read: far above any real one (the shipped examples are a few
/// KiB), small enough that reading and parsing it costs little.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Deepest nesting of sequences and mappings (the shipped files nest 6 deep).
pub const MAX_DEPTH: usize = 64;
/// Most scalar text (keys and values, in bytes) the document holds once every alias is
/// expanded. Without aliases a file within [`MAX_FILE_BYTES`] stays below it.
pub const MAX_EXPANDED_BYTES: usize = 2 << 20;
/// Most nodes (scalars, sequences, mappings) once every alias is expanded. A real file holds
/// a few hundred; without aliases only a file of one-byte nodes (`{a,a,a,...}`: a key and its
/// empty value per two bytes) near [`MAX_FILE_BYTES`] gets there.
pub const MAX_EXPANDED_NODES: usize = 1_000_000;

/// Reads a config or policy file: refuses what is not a regular file before reading a byte,
/// and a file above [`MAX_FILE_BYTES`]. `what` names the file in messages ("config file"),
/// `hint` says what to point at instead.
pub fn read_user_file(path: &Path, what: &str, hint: &str) -> Result<String, LocatedError> {
    let fail = |message: String, hint: String| LocatedError {
        path: path.to_owned(),
        location: None,
        message,
        hint: Some(hint),
    };
    // O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer, for ever; with it
    // the open returns at once and the file type, read from the opened descriptor (no race
    // with a rename in between), refuses it. A regular file ignores the flag.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(format!("cannot read the {what}: {e}"), hint.to_string()))?;
    let metadata = file
        .metadata()
        .map_err(|e| fail(format!("cannot read the {what}: {e}"), hint.to_string()))?;
    let file_type = metadata.file_type();
    if !file_type.is_file() {
        let kind = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO (named pipe)"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else if file_type.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(fail(
            format!("the {what} is {kind}, not a regular file"),
            format!("{hint} (a regular file)"),
        ));
    }
    let too_big = |size: u64| {
        fail(
            format!(
                "the {what} is {size} bytes, above the limit of {MAX_FILE_BYTES} bytes (1 MiB)"
            ),
            format!("{hint}; a real one is a few KiB"),
        )
    };
    if metadata.len() > MAX_FILE_BYTES {
        return Err(too_big(metadata.len()));
    }
    // The size can change between fstat and read (a file being written): read one byte more
    // than allowed, never the whole of it.
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    (&mut file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read the {what}: {e}"), hint.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = offset - before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        LocatedError {
            path: path.to_owned(),
            location: Some((line, column)),
            message: format!("the {what} is not UTF-8 text"),
            hint: Some("save it as UTF-8".into()),
        }
    })
}

/// Refuses YAML text that nests deeper than [`MAX_DEPTH`] or expands, through aliases, beyond
/// [`MAX_EXPANDED_BYTES`] or [`MAX_EXPANDED_NODES`], before it is deserialized into the real
/// types. Text above [`MAX_FILE_BYTES`] is refused without parsing it.
///
/// Why this way: serde_yaml (0.9, on unsafe-libyaml) first parses the whole document into a
/// list of events, linear in the text (libyaml's parser keeps explicit stacks, no recursion),
/// then deserializes from it; an alias replays its anchor's events each time it is used.
/// Deserializing into the real types would allocate every replay (a 1 MB string behind 2,500
/// aliases is 2.5 GB of `String`s, and serde_yaml's own repetition limit allows 100 replays
/// per event). Here the same events go through a visitor that allocates nothing: it sees the
/// scalars as borrowed text and only adds up their lengths, the nodes and the depth, and stops
/// at the first limit passed. So the check sees exactly what the deserialization would (no
/// second YAML parser with its own idea of the syntax), costs one extra parse of a small file,
/// and is bounded in time by the limits, whatever the aliases. Nesting is checked the same way,
/// below serde_yaml's own recursion limit (128), so the message can say what to do.
pub fn check_yaml(text: &str, path: &Path) -> Result<(), LocatedError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(LocatedError {
            path: path.to_owned(),
            location: None,
            message: format!(
                "the file is {} bytes, above the limit of {MAX_FILE_BYTES} bytes (1 MiB)",
                text.len()
            ),
            hint: Some("a real config or policy is a few KiB".into()),
        });
    }
    if let Some(location) = deep_flow(text) {
        return Err(LocatedError {
            path: path.to_owned(),
            location: Some(location),
            message: Refused::Depth.message(),
            hint: Some(Refused::Depth.hint()),
        });
    }
    let mut budget = Budget { nodes: 0, bytes: 0, depth: 0, refused: None };
    let result = serde_yaml::Deserializer::from_str(text)
        .next()
        .map(|document| Counter(&mut budget).deserialize(document))
        .unwrap_or(Ok(()));
    match (result, budget.refused) {
        // Only our own refusals: any other YAML error is reported, with its own wording, by
        // the deserialization into the real types that follows.
        (Err(e), Some(refused)) => Err(LocatedError {
            path: path.to_owned(),
            location: e.location().map(|l| (l.line(), l.column())),
            message: refused.message(),
            hint: Some(refused.hint()),
        }),
        _ => Ok(()),
    }
}

/// A quick look for flow collections (`[`, `{`) nested deeper than [`MAX_DEPTH`]: line and
/// column of the first bracket too deep. libyaml takes tens of microseconds a level when not
/// optimised (two seconds for 100,000 `[` in a debug build), linearly; this takes
/// nanoseconds a byte. It skips comments and quoted scalars (a quote opens one where a token
/// can start), and counts brackets elsewhere, in block context only where a token can start,
/// so it can misjudge unusual text (a quote inside a plain scalar in flow context, brackets in
/// a block scalar); it is an early exit, not the check: the walk of serde_yaml's own events in
/// [`check_yaml`] is exact, and catches whatever this lets through.
fn deep_flow(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let (mut depth, mut line, mut line_start, mut i) = (0usize, 1usize, 0usize, 0usize);
    while i < bytes.len() {
        let b = bytes[i];
        let token_start = i == 0
            || matches!(bytes[i - 1], b' ' | b'\t' | b'\n' | b'\r')
            || (depth > 0 && matches!(bytes[i - 1], b'[' | b'{' | b','));
        match b {
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            b'#' if token_start => {
                while i + 1 < bytes.len() && bytes[i + 1] != b'\n' {
                    i += 1;
                }
            }
            b'\'' | b'"' if token_start => {
                // To the closing quote ('' is an escaped ' in single quotes, \" in double).
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        // An escape: the next byte is not the closing quote (an escaped
                        // line break is not counted as a line; only locations depend on it).
                        b'\\' if b == b'"' => i += 1,
                        b'\n' => {
                            line += 1;
                            line_start = i + 1;
                        }
                        c if c == b => break,
                        _ => {}
                    }
                    i += 1;
                }
            }
            b'[' | b'{' if depth > 0 || token_start => {
                depth += 1;
                if depth > MAX_DEPTH {
                    // Columns in characters, as serde_yaml counts them.
                    let column = text[line_start..i].chars().count() + 1;
                    return Some((line, column));
                }
            }
            b']' | b'}' if depth > 0 => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Which limit the text passed.
#[derive(Debug, Clone, Copy)]
enum Refused {
    Depth,
    Nodes,
    Bytes,
}

impl Refused {
    fn message(self) -> String {
        match self {
            Refused::Depth => format!("the YAML nests more than {MAX_DEPTH} levels deep"),
            Refused::Nodes => {
                format!(
                    "the YAML expands to more than {MAX_EXPANDED_NODES} nodes (aliases expanded)"
                )
            }
            Refused::Bytes => format!(
                "the YAML expands to more than {MAX_EXPANDED_BYTES} bytes of text (aliases expanded)"
            ),
        }
    }

    fn hint(self) -> String {
        match self {
            Refused::Depth => {
                format!("write it with at most {MAX_DEPTH} levels of lists and mappings")
            }
            Refused::Nodes | Refused::Bytes => {
                "write the values out, or use fewer aliases (`*name`) to large anchors".into()
            }
        }
    }
}

struct Budget {
    nodes: usize,
    bytes: usize,
    depth: usize,
    /// Set with the error that stops the walk, so that it is told apart from serde_yaml's own.
    refused: Option<Refused>,
}

impl Budget {
    fn refuse<E: de::Error>(&mut self, refused: Refused) -> Result<(), E> {
        self.refused = Some(refused);
        Err(E::custom(refused.message()))
    }

    fn node<E: de::Error>(&mut self, bytes: usize) -> Result<(), E> {
        self.nodes += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        if self.nodes > MAX_EXPANDED_NODES {
            return self.refuse(Refused::Nodes);
        }
        if self.bytes > MAX_EXPANDED_BYTES {
            return self.refuse(Refused::Bytes);
        }
        Ok(())
    }
}

/// Walks a document, counting into the budget; allocates nothing per node.
struct Counter<'a>(&'a mut Budget);

impl<'de> DeserializeSeed<'de> for Counter<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Counter<'_> {
    fn nest<E: de::Error>(&mut self) -> Result<(), E> {
        self.0.node(0)?;
        self.0.depth += 1;
        if self.0.depth > MAX_DEPTH {
            return self.0.refuse(Refused::Depth);
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Counter<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.node(1)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.0.node(8)
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.0.node(16)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.0.node(8)
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.0.node(16)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.0.node(8)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.0.node(v.len())
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.0.node(v.len())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.node(0)
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.0.node(0)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.nest()?;
        while seq.next_element_seed(Counter(self.0))?.is_some() {}
        self.0.depth -= 1;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.nest()?;
        while map.next_key_seed(Counter(self.0))?.is_some() {
            map.next_value_seed(Counter(self.0))?;
        }
        self.0.depth -= 1;
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged value (`!tag value`): the tag is a key, the value a node.
        use de::VariantAccess as _;
        let ((), variant) = data.variant_seed(Counter(self.0))?;
        variant.newtype_variant_seed(Counter(self.0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn check(text: &str) -> Result<(), LocatedError> {
        check_yaml(text, Path::new("policy.yaml"))
    }

    #[test]
    fn ordinary_yaml_passes_with_its_aliases() {
        check("interface: br-lan\nlan_prefixes: [10.0.0.0/8]\nx: &a {b: [1, 2]}\ny: *a\n").unwrap();
        // Errors that are not about the limits are left to the real deserialization.
        check("a: [1, 2\n").unwrap();
        check("a: *undefined\n").unwrap();
        check("").unwrap();
    }

    #[test]
    fn a_megabyte_behind_2500_aliases_is_refused_at_once() {
        let mut text = format!("big: &big \"{}\"\nlist: [", "x".repeat(1_000_000));
        for _ in 0..2_500 {
            text.push_str("*big, ");
        }
        text.push_str("]\n");
        assert!(text.len() < MAX_FILE_BYTES as usize, "{}", text.len());
        let start = Instant::now();
        let e = check(&text).unwrap_err();
        // Bounded: it stops at the third expansion, having allocated nothing per alias.
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        assert_eq!(
            e.message,
            "the YAML expands to more than 2097152 bytes of text (aliases expanded)"
        );
        assert_eq!(e.path, Path::new("policy.yaml"));
        assert_eq!(e.location.map(|(line, _)| line), Some(1), "{e}");
        assert!(e.to_string().contains("hint: write the values out, or use fewer aliases"), "{e}");
    }

    #[test]
    fn a_long_list_behind_many_aliases_is_refused_by_nodes() {
        // 10,000 nodes behind 101 aliases: a 30 kB file of a million nodes, few enough jumps
        // for serde_yaml's own repetition limit (100 per event) to let it through.
        let mut text = format!("list: &list [{}]\nmore: [", "x, ".repeat(10_000));
        text.push_str(&"*list, ".repeat(101));
        text.push_str("]\n");
        let e = check(&text).unwrap_err();
        assert_eq!(e.message, "the YAML expands to more than 1000000 nodes (aliases expanded)");
        check(&text.replace(&"*list, ".repeat(101), &"*list, ".repeat(90))).unwrap();
    }

    #[test]
    fn a_hundred_thousand_brackets_are_refused_at_once() {
        let text = "[".repeat(100_000);
        let start = Instant::now();
        let e = check(&text).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        assert_eq!(e.message, "the YAML nests more than 64 levels deep");
        assert_eq!(e.location, Some((1, 65)), "{e}");
        assert!(e.to_string().contains("hint: write it with at most 64 levels"), "{e}");
        // 64 levels pass.
        check(&format!("{}1{}", "[".repeat(64), "]".repeat(64))).unwrap();
        check(&format!("{}1", "- ".repeat(63))).unwrap();
    }

    #[test]
    fn nesting_the_quick_scan_misses_is_refused_by_the_walk() {
        // Block nesting: the quick scan only counts brackets.
        let e = check(&format!("{}1", "- ".repeat(65))).unwrap_err();
        assert_eq!(
            (e.location, e.message.as_str()),
            (Some((1, 129)), "the YAML nests more than 64 levels deep")
        );
        // A quote inside a plain scalar: the quick scan takes it for a quoted scalar and skips
        // the rest of the text, libyaml does not.
        let text = format!("[a \"b, {}", "[".repeat(100));
        assert_eq!(deep_flow(&text), None);
        let e = check(&text).unwrap_err();
        assert_eq!(
            (e.location, e.message.as_str()),
            (Some((1, 71)), "the YAML nests more than 64 levels deep")
        );
    }

    #[test]
    fn text_above_the_size_limit_is_refused_unparsed() {
        let text = format!("a: \"{}\"\n", "x".repeat(MAX_FILE_BYTES as usize));
        let e = check(&text).unwrap_err();
        assert_eq!(
            e.message,
            "the file is 1048582 bytes, above the limit of 1048576 bytes (1 MiB)"
        );
    }

    fn read(path: &Path) -> Result<String, LocatedError> {
        read_user_file(path, "policy file", "point `policy:` at a policy YAML")
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("policy.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Refused at once: no writer is waited for.
        let start = Instant::now();
        let e = read(&fifo).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(e.path, fifo);
        assert_eq!(e.message, "the policy file is a FIFO (named pipe), not a regular file");
        assert_eq!(e.hint.as_deref(), Some("point `policy:` at a policy YAML (a regular file)"));

        let e = read(dir.path()).unwrap_err();
        assert_eq!(e.message, "the policy file is a directory, not a regular file");
        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.message, "the policy file is a device, not a regular file");

        let big = dir.path().join("big.yaml");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let e = read(&big).unwrap_err();
        assert_eq!(
            e.message,
            "the policy file is 1048577 bytes, above the limit of 1048576 bytes (1 MiB)"
        );
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(read(&big).unwrap().len(), MAX_FILE_BYTES as usize);

        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, b"rules:\n  - name: caf\xe9\n").unwrap();
        let e = read(&bad).unwrap_err();
        assert_eq!(
            (e.location, e.message.as_str()),
            (Some((2, 14)), "the policy file is not UTF-8 text")
        );

        let e = read(&dir.path().join("missing.yaml")).unwrap_err();
        assert!(e.message.starts_with("cannot read the policy file: No such file"), "{e}");
    }
}
