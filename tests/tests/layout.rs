//! The shape of the product's code (issue 24), checked on every run:
//!
//! - no import circle between files of `gateway/src` (an import is a path
//!   that names another file's module: a `use`, or `crate::…`, `super::…`,
//!   `self::…` or a child module's name in the code; a method call is not);
//! - no arrow from `accounts/`, `session/`, `observe/` or `net/` up to
//!   `portal/`, `protocols/`, `cli/` or `server.rs`, and none from
//!   `portal/` into `session/`;
//! - no store backend named outside the store and the fleet;
//! - no file of product code over 500 lines without a line near its top
//!   that says why (`Longer than 500 lines because …`).
//!
//! Paths are read from the text (comments and the unit tests of a file
//! left out), so this needs no compiler plugin and runs in milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src` (`crate`, `crate::a`, ...).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = vec!["crate".into()];
    let comps: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        if last {
            let stem = c.trim_end_matches(".rs");
            if stem != "mod" && stem != "lib" {
                parts.push(stem.to_owned());
            }
        } else {
            parts.push(c.clone());
        }
    }
    parts
}

/// The code of a file without comments, string contents and its unit
/// tests.
fn code_of(text: &str) -> String {
    let text = &text[..test_modules_at(text)];
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i..].starts_with(b"r\"") || b[i..].starts_with(b"r#\"") {
            let hashes = if b[i + 1] == b'#' { 1 } else { 0 };
            let end: &[u8] = if hashes == 1 { b"\"#" } else { b"\"" };
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(end) {
                i += 1;
            }
            i += end.len();
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"', '\n'); lifetimes pass through.
            let close = text[i + 1..].find('\'').map_or(b.len(), |j| i + 1 + j + 1);
            i = close.max(i + 1);
            out.push_str("' '");
        } else {
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    out
}

/// Where a file's test-only modules (`#[cfg(test)] mod …`) begin: the
/// end of its product code.
fn test_modules_at(text: &str) -> usize {
    let mut at = 0;
    while let Some(i) = text[at..].find("#[cfg(test)]\n") {
        let start = at + i;
        let next = text[start..].lines().nth(1).unwrap_or("");
        if next.trim_start().starts_with("mod ") || next.contains(" mod ") {
            return start;
        }
        at = start + 1;
    }
    text.len()
}

/// `use` trees expanded into paths: `a::{b, c::d}` → `a::b`, `a::c::d`.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = tree[..open].trim().trim_end_matches("::");
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let prefix = join(prefix, head);
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &prefix, out);
    } else if !tree.is_empty() {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        out.push(join(prefix, path));
    }
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}::{b}"),
    }
}

/// Every path in `code` that starts with `crate`, `super`, `self` or one
/// of `children`.
fn paths_in(code: &str, children: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    // `use` statements (their trees may span lines).
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 4..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        expand(&rest[..end], "", &mut out);
        rest = &rest[end..];
    }
    // Inline paths.
    let bytes = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            let mut j = i;
            while j < bytes.len() && (ident(bytes[j]) || bytes[j..].starts_with(b"::")) {
                j += if bytes[j] == b':' { 2 } else { 1 };
            }
            let path = code[i..j].trim_end_matches("::");
            if path.contains("::") {
                out.push(path.to_owned());
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out.retain(|p| {
        let first = p.split("::").next().unwrap_or("");
        matches!(first, "crate" | "super" | "self") || children.contains(first)
    });
    out
}

struct House {
    /// Module path → file (relative to `gateway/src`).
    modules: BTreeMap<Vec<String>, String>,
    /// File → the files it imports.
    edges: BTreeMap<String, BTreeSet<String>>,
    lines: BTreeMap<String, (usize, String)>,
}

fn house() -> House {
    let src = workspace().join("gateway/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.ends_with("main.rs"));
    let mut modules = BTreeMap::new();
    for f in &files {
        let rel = f
            .strip_prefix(&src)
            .expect("rel")
            .to_string_lossy()
            .into_owned();
        modules.insert(module_of(&src, f), rel);
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut lines = BTreeMap::new();
    for f in &files {
        let rel = f
            .strip_prefix(&src)
            .expect("rel")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(f).expect("read");
        lines.insert(rel.clone(), (text.lines().count(), text.clone()));
        let me = module_of(&src, f);
        let children: BTreeSet<String> = modules
            .keys()
            .filter(|m| m.len() == me.len() + 1 && m.starts_with(&me))
            .map(|m| m[me.len()].clone())
            .collect();
        for path in paths_in(&code_of(&text), &children) {
            let mut abs: Vec<String> = Vec::new();
            for (k, seg) in path.split("::").enumerate() {
                match (k, seg) {
                    (0, "crate") => abs.push("crate".into()),
                    (0, "self") => abs.extend(me.iter().cloned()),
                    (0, "super") => {
                        abs.extend(me.iter().cloned());
                        abs.pop();
                    }
                    (_, "super") => {
                        abs.pop();
                    }
                    (0, child) => {
                        abs.extend(me.iter().cloned());
                        abs.push(child.to_owned());
                    }
                    (_, s) => abs.push(s.to_owned()),
                }
            }
            // The longest module the path names.
            let target = (1..=abs.len())
                .rev()
                .find_map(|n| modules.get(&abs[..n]))
                .cloned();
            if let Some(t) = target.filter(|t| *t != rel) {
                // A file declaring its children (`mod x;`) is not an import.
                edges.entry(rel.clone()).or_default().insert(t);
            }
        }
    }
    House {
        modules,
        edges,
        lines,
    }
}

/// The circles of the graph (Tarjan's strongly connected components).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.edges.get(v) {
            for w in ws {
                if !t.index.contains_key(w.as_str()) {
                    visit(t, w);
                    let l = t.low[w.as_str()].min(t.low[v]);
                    t.low.insert(v, l);
                } else if t.on.contains(w.as_str()) {
                    let l = t.index[w.as_str()].min(t.low[v]);
                    t.low.insert(v, l);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.found.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.found
}

fn area(file: &str) -> &str {
    file.split('/').next().unwrap_or(file)
}

#[test]
fn no_import_circle_between_files() {
    let h = house();
    assert!(h.modules.len() > 40, "the product's files were found");
    let found: Vec<Vec<String>> = circles(&h.edges)
        .into_iter()
        .map(|scc| {
            let mut arrows = Vec::new();
            for from in &scc {
                for to in h.edges.get(from).into_iter().flatten() {
                    if scc.contains(to) {
                        arrows.push(format!("{from} -> {to}"));
                    }
                }
            }
            arrows
        })
        .collect();
    assert!(
        found.is_empty(),
        "files that import each other (directly or around a circle): {found:#?}"
    );
}

#[test]
fn lower_layers_never_import_upper_ones() {
    let h = house();
    let lower = ["accounts", "session", "observe", "net"];
    let upper = ["portal", "protocols", "cli", "server.rs"];
    let mut wrong = Vec::new();
    for (from, tos) in &h.edges {
        for to in tos {
            let up = lower.contains(&area(from)) && upper.contains(&area(to));
            let portal_into_session = area(from) == "portal" && area(to) == "session";
            if up || portal_into_session {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "arrows up the layers: {wrong:#?}");
}

#[test]
fn no_backend_named_outside_the_store_and_the_fleet() {
    let h = house();
    let mut named = Vec::new();
    for (file, (_, text)) in &h.lines {
        let inside = file.starts_with("accounts/store/") || file.starts_with("accounts/fleet/");
        let code = code_of(text);
        let names = code.contains("redis::") || code.contains("Redis");
        if !inside && names {
            named.push(file.clone());
        }
    }
    assert!(
        named.is_empty(),
        "files outside accounts/store and accounts/fleet that name Redis: {named:?}"
    );
}

#[test]
fn long_files_say_why() {
    let ws = workspace();
    let mut long = Vec::new();
    for krate in ["gateway/src", "config/src", "proto/src", "certs/src"] {
        let mut files = Vec::new();
        rust_files(&ws.join(krate), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read");
            let code_lines = text[..test_modules_at(&text)].lines().count();
            let head: String = text.lines().take(40).collect::<Vec<_>>().join("\n");
            let rel = f
                .strip_prefix(&ws)
                .expect("in the workspace")
                .to_string_lossy()
                .into_owned();
            let too_long = code_lines > 500 && !head.contains("Longer than 500 lines because");
            if too_long {
                long.push(format!("{rel} ({code_lines} lines)"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over 500 lines (unit tests apart) without a reason at the top: {long:#?}"
    );
}
