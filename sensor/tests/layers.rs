//! The agent's rooms keep the data flow one way (docs/design.md, "Modules"): a module imports
//! only rooms below its own, and the files of one room import each other without a circle.
//! Read from the source text, so a new `use` that breaks the order fails here, by name.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The rooms, low to high. Rooms on one line share a level and may not import each other.
const LAYERS: &[&[&str]] = &[
    &["types"],
    &["kernel"],
    &["accounting"],
    &["enrich"],
    &["policy"],
    &["alerting", "export"],
    &["config"],
    &["agent"],
];

fn level(room: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&room))
}

/// Every `.rs` file under `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a file below `src`: `enrich/inventory/mod.rs` → `[enrich, inventory]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file below src");
    let mut parts: Vec<String> =
        rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The first segments of every path that starts with `prefix` (`crate::` or `super::`) in
/// `code`, nested groups included: `crate::{a::X, b::{Y, Z}}` gives `a` and `b`.
fn first_segments(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        // `super::super::` and `crate::` inside a longer identifier are not what we look for.
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: after `{` or a `,` at depth 0.
            let mut depth = 0;
            let mut at_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[j..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_start = true,
                    c if at_start && (c.is_alphabetic() || c == '_') => {
                        let name: String = group[j..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        out.push(name);
                        at_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String =
                rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// The code of a file without its comments (doc links name modules without importing them).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal (a URL) is rare in imports; cut conservatively.
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Crate {
    /// Module path → the rooms (crate-level modules) it names.
    rooms: BTreeMap<Vec<String>, BTreeSet<String>>,
    /// Module path → the sibling modules (same parent) it names.
    siblings: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn read_crate(src: &Path) -> Crate {
    let files = sources(src);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(src, f)).collect();
    let mut krate = Crate { rooms: BTreeMap::new(), siblings: BTreeMap::new() };
    for file in &files {
        let module = module_of(src, file);
        if module.len() == 1 && (module[0] == "lib" || module[0] == "main") {
            continue;
        }
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let code = code_of(&text);
        let mut rooms = BTreeSet::new();
        let mut siblings = BTreeSet::new();
        let parent = &module[..module.len() - 1];
        let sibling = |name: &str| {
            let mut m = parent.to_vec();
            m.push(name.to_string());
            (m != module && modules.contains(&m)).then_some(m)
        };
        for name in first_segments(&code, "crate::") {
            if name != module[0] {
                rooms.insert(name.clone());
            }
        }
        // `crate::<own room>::<sibling>` from a file directly in a room.
        for name in first_segments(&code, &format!("crate::{}::", module[0])) {
            if module.len() == 2
                && let Some(m) = sibling(&name)
            {
                siblings.insert(m);
            }
        }
        // `super` is the module's parent: for a file directly below src, the crate (so
        // `super::x` names a room); else the parent module, whose child `x` is a sibling.
        for name in first_segments(&code, "super::") {
            if module.len() == 1 {
                rooms.insert(name);
            } else if let Some(m) = sibling(&name) {
                siblings.insert(m);
            }
        }
        krate.rooms.insert(module.clone(), rooms);
        krate.siblings.insert(module, siblings);
    }
    krate
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_room_has_a_layer() {
    let krate = read_crate(&src_dir());
    let rooms: BTreeSet<&String> = krate.rooms.keys().map(|m| &m[0]).collect();
    let unplaced: Vec<&&String> = rooms.iter().filter(|r| level(r).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "rooms not in LAYERS (add them, and to docs/design.md): {unplaced:?}"
    );
}

#[test]
fn rooms_import_only_lower_rooms() {
    let krate = read_crate(&src_dir());
    let mut wrong = Vec::new();
    for (module, rooms) in &krate.rooms {
        let Some(own) = level(&module[0]) else { continue };
        for room in rooms {
            match level(room) {
                Some(l) if l < own => {}
                _ => wrong.push(format!("{} imports crate::{room}", module.join("::"))),
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the data flow:\n{}", wrong.join("\n"));
}

#[test]
fn files_of_a_room_import_each_other_without_a_circle() {
    let krate = read_crate(&src_dir());
    // Depth-first search for a cycle in the sibling graph, reporting one per start.
    fn cycle_from(
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        node: &Vec<String>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.clone());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = cycle_from(graph, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    // Each circle once, written from its smallest module.
    let mut cycles = BTreeSet::new();
    for node in krate.siblings.keys() {
        if let Some(mut c) = cycle_from(&krate.siblings, node, &mut Vec::new(), &mut done) {
            c.pop();
            let start = c.iter().enumerate().min_by_key(|(_, m)| *m).map_or(0, |(i, _)| i);
            c.rotate_left(start);
            c.push(c[0].clone());
            done.extend(c.iter().cloned());
            cycles.insert(c.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(" → "));
        }
    }
    let cycles: Vec<String> = cycles.into_iter().collect();
    assert!(cycles.is_empty(), "import circles between files:\n{}", cycles.join("\n"));
}

#[test]
fn the_reader_sees_grouped_and_nested_imports() {
    let code = "use crate::{a::X, b::{c::Y, Z}};\nuse crate::d::e;\nlet x = my_crate::f;";
    assert_eq!(first_segments(code, "crate::"), ["a", "b", "d"]);
    assert_eq!(first_segments("use super::{x, y::Z};", "super::"), ["x", "y"]);
    assert_eq!(code_of("use a; // crate::b\n/// [`crate::c`]"), "use a; \n");
}
